"""Losses: cross-entropy (softmax, predicted class, one-hot, the loss, its gradient
p - y), NLL on log-probabilities, and the pointwise losses (MSE, L1, smooth L1, Huber,
binary cross-entropy with and without logits): each entry's term, their mean or sum,
and the gradient g·ℓ'(x, t)/N.

The reduction (mean or sum) and constants (smooth L1's β, Huber's δ) are recovered
from the stored tensors: a choice is used only if it reproduces the stored loss or
terms whole.
"""

from __future__ import annotations

import numpy as np

from .. import names
from .core import (
    Context,
    NotExplained,
    cell,
    fmt,
    joined,
    layer_rule,
    prov,
    sum_terms,
    term,
    unknown,
)


def _upstream(ctx: Context, layer: str, index=None) -> tuple[float, list]:
    """dL/d(loss value): 1 for the final scalar; what came back when the caller reduced it."""
    g_n = names.grad(names.loss_value(layer))
    if ctx.has(g_n):
        g = ctx.arrays[g_n]
        t = term(g_n, ctx.arrays, index if index is not None and g.ndim else ())
        return t.value, [t]
    return 1.0, []


def _reduction(per_entry: np.ndarray, stored, denominator: float) -> str:
    """mean, sum or none: the one that gives the stored loss."""
    stored = np.asarray(stored, dtype=np.float64)
    if stored.shape == per_entry.shape and stored.ndim > 0:
        return "none"
    total = float(per_entry.sum())
    if np.isclose(total / denominator, float(stored.reshape(-1)[0]), rtol=1e-5, atol=1e-7):
        return "mean"
    return "sum"


def _class_cells(index, size, dim=1):
    return [tuple(index[:dim]) + (k,) + tuple(index[dim + 1 :]) for k in range(size)]


@layer_rule("CrossEntropyLoss")
def cross_entropy(ctx: Context, step, name, index):
    a, layer = ctx.arrays, step.layer
    probs_n, onehot_n, pred_n = (
        names.intermediate(layer, k) for k in ("probs", "onehot", "predicted")
    )
    weights_n = names.intermediate(layer, "target_weights")
    value_n = names.loss_value(layer)
    inputs = ctx.layer_inputs(layer)
    z_name, target_n = inputs[0], (inputs[1] if len(inputs) > 1 else names.TARGET)
    z = a[z_name]
    dim = 1 if z.ndim > 1 else 0
    classes = z.shape[dim]
    if name in (probs_n, pred_n):
        full = tuple(index[:dim]) + (0,) + tuple(index[dim:]) if name == pred_n else tuple(index)
        zs = [term(z_name, a, c) for c in _class_cells(full, classes, dim)]
        zv = np.array([t.value for t in zs], dtype=np.float64)
        if name == pred_n:
            best = int(np.argmax(zv))
            return prov(
                name,
                index,
                best,
                "argmax",
                f"ŷ{cell(index)} = argmax_k z = {best} (z = {', '.join(fmt(v) for v in zv)})",
                zs,
            )
        k = index[dim]
        e = np.exp(zv - zv.max())
        p = float(e[k] / e.sum())
        return prov(
            name,
            index,
            p,
            "softmax",
            f"p{cell(index)} = e^(z_{k}) / Σ_j e^(z_j) = e^{fmt(zv[k])} / ({joined(['e^' + fmt(v) for v in zv])}) = {fmt(p)}",
            zs,
        )
    if name == onehot_n:
        y = term(target_n, a, _squeeze(index, dim))
        k = index[dim]
        value = 1.0 if int(y.value) == k else 0.0
        return prov(
            name,
            index,
            value,
            "one-hot",
            f"Y{cell(index)} = 1[y = {k}] = 1[{int(y.value)} = {k}] = {int(value)}",
            [y],
        )
    if name == weights_n:
        raise NotExplained(
            f"{name} comes from the loss's class weights and label smoothing, settings the store does not keep"
        )
    coef_n = onehot_n if not ctx.has(weights_n) else weights_n
    probs = a[probs_n]
    if name == value_n:
        coef = np.asarray(a[coef_n], dtype=np.float64)
        logp = np.log(np.asarray(probs, dtype=np.float64))
        reduction = _reduction(-(coef * logp).sum(axis=dim), a[value_n], float(coef.sum()))
        return _weighted_sum(
            ctx, name, index, coef_n, probs_n, dim, reduction, np.log, "log p", "cross-entropy"
        )
    if ctx.is_grad_of(name, z_name, layer):
        coef = np.asarray(a[coef_n], dtype=np.float64)
        logp = np.log(np.asarray(probs, dtype=np.float64))
        rows = _squeeze(index, dim)
        reduction = (
            _reduction(-(coef * logp).sum(axis=dim), a[value_n], float(coef.sum()))
            if ctx.has(value_n)
            else "mean"
        )
        scale = 1.0 / float(coef.sum()) if reduction == "mean" else 1.0
        g, gt = _upstream(ctx, layer, rows if reduction == "none" else None)
        p, y = term(probs_n, a, index), term(coef_n, a, index)
        ys = [term(coef_n, a, c) for c in _class_cells(index, classes, dim)]
        row_weight = float(sum(t.value for t in ys))
        value = (np.float64(p.value) * row_weight - y.value) * scale * g
        n_text = f"/{fmt(1 / scale)}" if scale != 1.0 else ""
        g_text = f"·{fmt(g)}" if gt else ""
        if row_weight == 1.0:
            text = f"dL/dz{cell(index)} = (p - y){n_text}{g_text} = ({fmt(p.value)} - {fmt(y.value)}){n_text}{g_text} = {fmt(value)}"
        else:
            text = f"dL/dz{cell(index)} = (p ΣA - A){n_text}{g_text} = ({fmt(p.value)}·{fmt(row_weight)} - {fmt(y.value)}){n_text}{g_text} = {fmt(value)}"
        return prov(name, index, value, "softmax-grad", text, [p, y, *gt])
    raise unknown(name, step)


def _weighted_sum(ctx, name, index, coef_n, of_n, dim, reduction, f, symbol, kind):
    """L = -(1/D) Σ A·f(x) over the rows' target entries (or one row's, reduction='none'):
    cross-entropy with f = log on the probabilities, NLL with f = identity."""
    a = ctx.arrays
    coef = np.asarray(a[coef_n], dtype=np.float64)
    picked = [c for c in np.ndindex(*coef.shape) if coef[c] != 0]
    if reduction == "none":
        picked = [c for c in picked if _squeeze(c, dim) == tuple(index)]
    xs = [term(of_n, a, c) for c in picked]
    cs = [term(coef_n, a, c) for c in picked]
    apply = f or (lambda v: v)
    total = -float(sum(np.float64(c.value) * apply(np.float64(t.value)) for c, t in zip(cs, xs)))
    written = "log " if f is not None else ""  # how f is written before each number
    parts = joined(
        [
            f"{written}{fmt(t.value)}"
            if c.value == 1
            else f"{fmt(c.value)}·{written}{fmt(t.value)}"
            for c, t in zip(cs, xs)
        ]
    )
    if reduction == "mean":
        d = float(coef.sum())
        value = total / d
        text = f"L = -(1/{fmt(d)}) Σ_n {symbol}[n, y_n] = -({parts})/{fmt(d)} = {fmt(value)}"
    else:
        value = total
        text = f"L{cell(index)} = -Σ {symbol}[n, y_n] = -({parts}) = {fmt(value)}"
    return prov(name, index, value, kind, text, xs + cs)


def _squeeze(index, dim):
    return tuple(index[:dim]) + tuple(index[dim + 1 :])


@layer_rule("NLLLoss")
def nll(ctx: Context, step, name, index):
    a, layer = ctx.arrays, step.layer
    coef_n, pred_n = (
        names.intermediate(layer, "target_weights"),
        names.intermediate(layer, "predicted"),
    )
    value_n = names.loss_value(layer)
    inputs = ctx.layer_inputs(layer)
    x_name, target_n = inputs[0], (inputs[1] if len(inputs) > 1 else names.TARGET)
    x = a[x_name]
    dim = 1 if x.ndim > 1 else 0
    classes = x.shape[dim]
    if name == pred_n:
        full = tuple(index[:dim]) + (0,) + tuple(index[dim:])
        xs = [term(x_name, a, c) for c in _class_cells(full, classes, dim)]
        best = int(np.argmax([t.value for t in xs]))
        return prov(
            name,
            index,
            best,
            "argmax",
            f"ŷ{cell(index)} = argmax_k x = {best} (x = {', '.join(fmt(t.value) for t in xs)})",
            xs,
        )
    if name == coef_n:
        y = term(target_n, a, _squeeze(index, dim))
        coef = np.asarray(a[coef_n])
        if not np.isin(coef, (0.0, 1.0)).all():
            raise NotExplained(
                f"{name} holds the loss's class weights, a setting the store does not keep"
            )
        k = index[dim]
        value = 1.0 if int(y.value) == k else 0.0
        return prov(
            name,
            index,
            value,
            "one-hot",
            f"A{cell(index)} = 1[y = {k}] = 1[{int(y.value)} = {k}] = {int(value)}",
            [y],
        )
    coef = np.asarray(a[coef_n], dtype=np.float64)
    per_row = -(coef * np.asarray(x, dtype=np.float64)).sum(axis=dim)
    reduction = _reduction(per_row, a[value_n], float(coef.sum())) if ctx.has(value_n) else "mean"
    if name == value_n:
        return _weighted_sum(ctx, name, index, coef_n, x_name, dim, reduction, None, "x", "nll")
    if ctx.is_grad_of(name, x_name, layer):
        c = term(coef_n, a, index)
        scale = 1.0 / float(coef.sum()) if reduction == "mean" else 1.0
        g, gt = _upstream(ctx, layer, _squeeze(index, dim) if reduction == "none" else None)
        value = -np.float64(c.value) * scale * g
        return prov(
            name,
            index,
            value,
            "nll-grad",
            f"dL/dx{cell(index)} = -A·g/D = -({fmt(c.value)})·{fmt(g)}·{fmt(scale)} = {fmt(value)}",
            [c, *gt],
        )
    raise unknown(name, step)


def _sp(x):
    return np.logaddexp(0.0, -x)  # softplus(-x) = -log σ(x)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _smooth_l1(d, k):
    b = k["β"]
    return np.abs(d) if b == 0 else np.where(np.abs(d) < b, 0.5 * d**2 / b, np.abs(d) - 0.5 * b)


POINTWISE = {
    # type: (ℓ(x, t, k), ℓ'(x, t, k), ℓ as text, ℓ' as text)
    "MSELoss": (lambda x, t, k: (x - t) ** 2, lambda x, t, k: 2 * (x - t), "(x - t)²", "2(x - t)"),
    "L1Loss": (
        lambda x, t, k: np.abs(x - t),
        lambda x, t, k: np.sign(x - t),
        "|x - t|",
        "sign(x - t)",
    ),
    "SmoothL1Loss": (
        lambda x, t, k: _smooth_l1(x - t, k),
        lambda x, t, k: (
            np.sign(x - t)
            if k["β"] == 0
            else np.where(np.abs(x - t) < k["β"], (x - t) / k["β"], np.sign(x - t))
        ),
        "(x-t)²/(2β) if |x-t| < β else |x-t| - β/2",
        "(x-t)/β if |x-t| < β else sign(x-t)",
    ),
    "HuberLoss": (
        lambda x, t, k: np.where(
            np.abs(x - t) < k["δ"], 0.5 * (x - t) ** 2, k["δ"] * (np.abs(x - t) - 0.5 * k["δ"])
        ),
        lambda x, t, k: np.clip(x - t, -k["δ"], k["δ"]),
        "(x-t)²/2 if |x-t| < δ else δ(|x-t| - δ/2)",
        "clip(x - t, -δ, δ)",
    ),
    "BCEWithLogitsLoss": (
        lambda x, t, k: t * _sp(x) + (1 - t) * (x + _sp(x)),
        lambda x, t, k: _sig(x) - t,
        "-[t log σ(x) + (1 - t) log(1 - σ(x))]",
        "σ(x) - t",
    ),
    "BCELoss": (
        lambda x, t, k: (
            -(t * np.maximum(np.log(x), -100.0) + (1 - t) * np.maximum(np.log1p(-x), -100.0))
        ),
        lambda x, t, k: (x - t) / np.maximum(x * (1 - x), 1e-12),
        "-[t log x + (1 - t) log(1 - x)] (each log ≥ -100)",
        "(x - t)/max(x(1 - x), 1e-12)",
    ),
}


def _pointwise_constants(kind, x, t, terms) -> dict:
    """Smooth L1's β and Huber's δ, recovered from the entry with the largest error."""
    d = np.abs(x - t).reshape(-1)
    ell = np.asarray(terms, dtype=np.float64).reshape(-1)
    key = {"SmoothL1Loss": "β", "HuberLoss": "δ"}.get(kind)
    if key is None:
        return {}
    found = [1.0]
    if d.size and d.max() > 0:
        i = int(np.argmax(d))
        if kind == "SmoothL1Loss":
            found = [2 * (d[i] - ell[i]), d[i] ** 2 / (2 * ell[i]) if ell[i] else 1.0, 1.0]
        else:
            found = [d[i] - np.sqrt(max(d[i] ** 2 - 2 * ell[i], 0.0)), 1.0]
    f = POINTWISE[kind][0]
    for v in found:
        if np.allclose(
            f(x, t, {key: v}), np.asarray(terms, dtype=np.float64), rtol=1e-5, atol=1e-6
        ):
            return {key: float(v)}
    raise NotExplained(f"the loss's {key} could not be recovered from its stored terms")


@layer_rule(*POINTWISE)
def pointwise(ctx: Context, step, name, index):
    a, layer = ctx.arrays, step.layer
    kind = ctx.kind(layer)
    f, df, f_text, df_text = POINTWISE[kind]
    terms_n, value_n = names.intermediate(layer, "terms"), names.loss_value(layer)
    x_name, t_name = ctx.layer_inputs(layer)[:2]
    x, t = np.asarray(a[x_name], dtype=np.float64), np.asarray(a[t_name], dtype=np.float64)
    k = _pointwise_constants(kind, x, t, a[terms_n])
    with_k = f" with {', '.join(f'{key} = {fmt(v)}' for key, v in k.items())}" if k else ""
    if name == terms_n:
        xi, ti = term(x_name, a, index), term(t_name, a, index)
        with np.errstate(divide="ignore"):
            value = float(f(np.float64(xi.value), np.float64(ti.value), k))
        unweighted = np.allclose(
            f(x, t, k), np.asarray(a[terms_n], dtype=np.float64), rtol=1e-5, atol=1e-6
        )
        if not unweighted:
            raise NotExplained(
                f"{name} is weighted by the loss's weight, a setting the store does not keep"
            )
        return prov(
            name,
            index,
            value,
            "loss-term",
            f"ℓ{cell(index)} = {f_text}{with_k}, x = {fmt(xi.value)}, t = {fmt(ti.value)}: {fmt(value)}",
            [xi, ti],
        )
    ell = np.asarray(a[terms_n], dtype=np.float64)
    reduction = _reduction(ell, a[value_n], float(ell.size)) if ctx.has(value_n) else "mean"
    if name == value_n:
        if reduction == "none":
            tt = term(terms_n, a, index)
            return prov(
                name,
                index,
                tt.value,
                "loss",
                f"L{cell(index)} = ℓ{cell(index)} = {fmt(tt.value)} (reduction='none')",
                [tt],
            )
        ts = [term(terms_n, a, c) for c in np.ndindex(*ell.shape)]
        total, text = sum_terms(ts)
        if reduction == "mean":
            value = total / ell.size
            return prov(
                name,
                index,
                value,
                "loss",
                f"L = (1/{ell.size}) Σ ℓ = ({text})/{ell.size} = {fmt(value)}",
                ts,
            )
        return prov(name, index, total, "loss", f"L = Σ ℓ = {text} = {fmt(total)}", ts)
    if ctx.is_grad_of(name, x_name, layer):
        xi, ti = term(x_name, a, index), term(t_name, a, index)
        g, gt = _upstream(ctx, layer, index if reduction == "none" else None)
        n = ell.size if reduction == "mean" else 1
        slope = float(df(np.float64(xi.value), np.float64(ti.value), k))
        value = g * slope / n
        n_text = f"/{n}" if n > 1 else ""
        return prov(
            name,
            index,
            value,
            "loss-grad",
            f"dL/dx{cell(index)} = g·ℓ'(x, t){n_text}, ℓ' = {df_text}{with_k}, x = {fmt(xi.value)}, t = {fmt(ti.value)}:"
            f" {fmt(g)}·{fmt(slope)}{n_text} = {fmt(value)}",
            [xi, ti, *gt],
        )
    raise unknown(name, step)
