"""Dropout (a random mask, scaled by 1/(1-p)) and batch normalisation (batch
statistics, x̂, γx̂+β, the running statistics, and the gradients through them).

Hyper-parameters are not stored as numbers: 1/(1-p), BatchNorm's ε and momentum are
recovered from the stored tensors, and every cell is then checked against its own.
"""

from __future__ import annotations

import numpy as np

from .. import names
from .core import Context, NotExplained, cell, dot, fmt, layer_rule, prov, sum_terms, term, unknown


def _mask_index(mask: np.ndarray, index) -> tuple[int, ...]:
    """A channel dropout stores one mask entry per (sample, channel): size-1 dims broadcast."""
    return tuple(0 if d == 1 else i for i, d in zip(index, mask.shape))


@layer_rule("Dropout", "Dropout1d", "Dropout2d", "Dropout3d")
def dropout(ctx: Context, step, name, index):
    a, layer = ctx.arrays, step.layer
    out_n, mask_n = names.output(layer), names.intermediate(layer, "mask")
    if name == mask_n:
        raise NotExplained(f"{name} is drawn at random: a given of this iteration")
    x_name = ctx.layer_input(step)
    out_grad = names.grad(out_n)
    if not ctx.has(mask_n) and mask_n not in step.outputs:  # evaluation mode or p = 0
        if name == out_n:
            t = term(x_name, a, index)
            return prov(
                name,
                index,
                t.value,
                "dropout",
                f"Y{cell(index)} = X (dropout is off) = {fmt(t.value)}",
                [t],
            )
        if ctx.is_grad_of(name, x_name, layer):
            t = term(out_grad, a, index)
            return prov(
                name,
                index,
                t.value,
                "dropout-grad",
                f"dL/dX{cell(index)} = dL/dY = {fmt(t.value)}",
                [t],
            )
        raise unknown(name, step)
    scale = _dropout_scale(a[x_name], a[mask_n], a[out_n])
    m_index = _mask_index(a[mask_n], index)
    if name == out_n:
        x, m = term(x_name, a, index), term(mask_n, a, m_index)
        value = np.float32(x.value) * np.float32(m.value) * np.float32(scale)
        text = f"x·m/(1-p) = ({fmt(x.value)})({fmt(m.value)})({fmt(scale)}) = {fmt(value)}"
        return prov(name, index, value, "dropout", f"Y{cell(index)} = {text}", [x, m])
    if ctx.is_grad_of(name, x_name, layer):
        g, m = term(out_grad, a, index), term(mask_n, a, m_index)
        value = np.float32(g.value) * np.float32(m.value) * np.float32(scale)
        text = f"dL/dY·m/(1-p) = ({fmt(g.value)})({fmt(m.value)})({fmt(scale)}) = {fmt(value)}"
        return prov(name, index, value, "dropout-grad", f"dL/dX{cell(index)} = {text}", [g, m])
    raise unknown(name, step)


def _dropout_scale(x, mask, out) -> float:
    """1/(1-p), recovered from the kept entries (p is not stored as a number)."""
    full = np.broadcast_to(mask, x.shape)
    kept = (full != 0) & (x != 0)
    if not kept.any():
        return 1.0
    return float(np.median(out[kept].astype(np.float64) / x[kept].astype(np.float64)))


@layer_rule("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
def batchnorm(ctx: Context, step, name, index):
    a, layer = ctx.arrays, step.layer
    mean_n, var_n, xhat_n = (names.intermediate(layer, k) for k in ("mean", "var", "xhat"))
    out_n = names.output(layer)
    params = ctx.params(layer)
    w_n, b_n = params.get("weight"), params.get("bias")
    x_name = ctx.layer_input(step)
    x = a[x_name]
    c = index[1] if len(index) > 1 else index[0]
    count = x.size // x.shape[1]  # M: the values each channel's statistics average over

    def channel(tensor):
        return [
            term(tensor, a, (n, c, *rest))
            for n in range(x.shape[0])
            for rest in np.ndindex(*x.shape[2:])
        ]

    batch_stats = any(mean_n in s.outputs for s in ctx.steps)  # else: running statistics
    if name == mean_n and batch_stats:
        terms = channel(x_name)
        total, text = sum_terms(terms)
        value = total / count
        return prov(
            name,
            index,
            value,
            "bn-mean",
            f"μ[{c}] = (1/{count}) Σ x[:,{c}] = ({text})/{count} = {fmt(value)}",
            terms,
        )
    if name in (mean_n, var_n) and not batch_stats:
        raise NotExplained(f"{name} is the layer's running statistic: a given of this iteration")
    mu = term(mean_n, a, (c,))
    if name == var_n:
        terms = channel(x_name)
        values = np.array([t.value for t in terms]) - mu.value
        value = float(np.mean(values**2))
        return prov(
            name,
            index,
            value,
            "bn-var",
            f"σ²[{c}] = (1/{count}) Σ (x[:,{c}] - μ)² with μ = {fmt(mu.value)} = {fmt(value)}",
            [*terms, mu],
        )
    var = term(var_n, a, (c,))
    if name in (
        names.intermediate(layer, "running_mean"),
        names.intermediate(layer, "running_var"),
    ):
        return _running(a, layer, name, c, count)

    def root_eps() -> tuple[float, float]:
        """√(σ² + ε) and ε, recovered from the whole normalised tensor (not needed by γx̂ + β)."""
        eps = _batchnorm_eps(x, a[mean_n], a[var_n], a[xhat_n])
        return float(np.sqrt(np.float64(var.value) + eps)), eps

    if name == xhat_n or (name == out_n and w_n is None):
        xi = term(x_name, a, index)
        root, eps = root_eps()
        value = (xi.value - mu.value) / root
        return prov(
            name,
            index,
            value,
            "bn-normalise",
            f"x̂{cell(index)} = (x - μ)/√(σ² + ε) = ({fmt(xi.value)} - {fmt(mu.value)})/√({fmt(var.value)} + {eps:.3g}) = {fmt(value)}",
            [xi, mu, var],
        )
    if name == out_n:
        xh, g = term(xhat_n, a, index), term(w_n, a, (c,))
        b = term(b_n, a, (c,)) if b_n else None
        value = g.value * xh.value + (b.value if b else 0.0)
        plus = f" + ({fmt(b.value)})" if b else ""
        return prov(
            name,
            index,
            value,
            "bn-affine",
            f"y{cell(index)} = γ x̂ + β = ({fmt(g.value)})({fmt(xh.value)}){plus} = {fmt(value)}",
            [g, xh] + ([b] if b else []),
        )
    g_n = names.grad(out_n)
    if b_n and ctx.is_grad_of(name, b_n, layer):
        gs = channel(g_n)
        total, text = sum_terms(gs)
        return prov(
            name, index, total, "sum", f"dL/dβ[{c}] = Σ dL/dy[:,{c}] = {text} = {fmt(total)}", gs
        )
    if w_n and ctx.is_grad_of(name, w_n, layer):
        gs, xs = channel(g_n), channel(xhat_n)
        total, text = dot(gs, xs)
        return prov(
            name,
            index,
            total,
            "bn-weight-grad",
            f"dL/dγ[{c}] = Σ dL/dy[:,{c}]·x̂[:,{c}] = {text} = {fmt(total)}",
            gs + xs,
        )
    if ctx.is_grad_of(name, x_name, layer):
        gamma = term(w_n, a, (c,)) if w_n else None
        gv = gamma.value if gamma else 1.0
        dy = term(g_n, a, index)
        root, _ = root_eps()
        if not batch_stats:
            value = gv * dy.value / root
            return prov(
                name,
                index,
                value,
                "bn-input-grad",
                f"dL/dx{cell(index)} = γ/√(σ²+ε)·dL/dy = {fmt(gv)}/{fmt(root)}·({fmt(dy.value)}) = {fmt(value)}",
                [dy, var] + ([gamma] if gamma else []),
            )
        gs, xs = channel(g_n), channel(xhat_n)
        xh = term(xhat_n, a, index)
        sum_dy = float(np.sum([t.value for t in gs]))
        sum_dy_xhat = float(np.dot([t.value for t in gs], [t.value for t in xs]))
        value = gv / (count * root) * (count * dy.value - sum_dy - xh.value * sum_dy_xhat)
        text = (
            f"γ/(M√(σ²+ε)) (M dL/dy - Σ dL/dy - x̂ Σ dL/dy·x̂) = {fmt(gv)}/({count}·{fmt(root)})"
            f" ({count}·{fmt(dy.value)} - {fmt(sum_dy)} - {fmt(xh.value)}·{fmt(sum_dy_xhat)}) = {fmt(value)}"
        )
        return prov(
            name,
            index,
            value,
            "bn-input-grad",
            f"dL/dx{cell(index)} = {text}",
            ([gamma] if gamma else []) + [dy, xh, *gs, *xs, var],
        )
    raise unknown(name, step)


def _running(a, layer, name, c, count):
    """running = (1 - m) running_before + m batch statistic (the variance unbiased, x M/(M-1))."""
    stat_n = names.intermediate(layer, "mean" if name.endswith("mean") else "var")
    before = term(names.intermediate(layer, name.rsplit(".", 1)[-1] + ".before"), a, (c,))
    stat = term(stat_n, a, (c,))
    # m is not stored as a number: recovered from the running means (and checked on each cell)
    rm, rb, mu = (
        np.asarray(a[names.intermediate(layer, k)], dtype=np.float64)
        for k in ("running_mean", "running_mean.before", "mean")
    )
    moving = np.abs(mu - rb) > 1e-6
    m = (
        float(np.median((rm[moving] - rb[moving]) / (mu[moving] - rb[moving])))
        if moving.any()
        else 0.1
    )
    factor = count / (count - 1) if stat_n.endswith("var") and count > 1 else 1.0
    value = (1 - m) * before.value + m * stat.value * factor
    unbiased = f"·{count}/{count - 1}" if factor != 1.0 else ""
    return prov(
        name,
        (c,),
        value,
        "bn-running",
        f"{name}[{c}] = (1 - m)·before + m·stat{unbiased} = (1 - {m:.3g})({fmt(before.value)}) + {m:.3g}·{fmt(stat.value)}{unbiased} = {fmt(value)}",
        [before, stat],
    )


def _batchnorm_eps(x, mean, var, xhat) -> float:
    """ε, recovered from the stored normalised values (it is not stored as a number)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    centred = x.astype(np.float64) - mean.reshape(shape)
    usable = np.abs(xhat) > 0.5
    if not usable.any():
        return 1e-5  # PyTorch's default
    estimate = (centred[usable] / xhat[usable].astype(np.float64)) ** 2
    return float(
        max(np.median(estimate - np.broadcast_to(var.reshape(shape), x.shape)[usable]), 0.0)
    )
