"""Optimizer updates, entry by entry, with the optimizer's state: SGD (momentum,
dampening, Nesterov, weight decay, maximize), Adam and AdamW (both moments, bias
corrections, AMSGrad, coupled or decoupled weight decay), RMSprop (centered,
momentum) and Adagrad.

Hyper-parameters come from the run's optimizer settings (its first parameter group)
and the iteration's learning rate. The state before the step is the previous
iteration's state after it (`Context.previous`); on the first step it is the
optimizer's initial value, recognised when it reproduces the stored state whole.
"""

from __future__ import annotations

import math

import numpy as np

from .. import names
from .core import Context, NotExplained, Term, cell, fmt, optimizer_rule, prov, term, unknown

# Tensors the update explainers build for a parameter p: "p.<suffix>".
SUFFIXES = (
    "ascent_grad",
    "decayed_grad",
    "decayed",
    "momentum_buffer",
    "exp_avg",
    "exp_avg_sq",
    "max_exp_avg_sq",
    "m_hat",
    "v_hat",
    "square_avg",
    "grad_avg",
    "sum",
)


def split(name: str) -> tuple[str, str] | None:
    """ "conv.weight.exp_avg" -> ("conv.weight", "exp_avg"); ".next" -> (param, "next")."""
    parsed = names.parse(name)
    if parsed.kind == names.KIND_NEXT:
        return parsed.of, "next"
    if parsed.kind == names.KIND_STATE:
        return parsed.of, parsed.key or ""
    for suffix in SUFFIXES:
        if name.endswith("." + suffix):
            return name[: -len(suffix) - 1], suffix
    return None


class Update:
    """One parameter's update: its settings, and reading its cells."""

    def __init__(self, ctx: Context, param: str, index):
        self.ctx, self.p, self.index = ctx, param, tuple(index)
        s = ctx.settings
        self.lr = float(ctx.learning_rate if ctx.learning_rate is not None else s.get("lr", 0.0))
        self.wd = float(s.get("weight_decay") or 0.0)

    def t(self, key: str) -> Term:
        return term(key, self.ctx.arrays, self.index)

    def own(self, suffix: str) -> str:
        return names.intermediate(self.p, suffix)

    def has(self, suffix: str) -> bool:
        return self.ctx.has(self.own(suffix))

    def gradient(self) -> Term:
        """g: the gradient the rule uses (negated for maximize, plus λW for L2 decay)."""
        for suffix in ("decayed_grad", "ascent_grad"):
            if self.has(suffix):
                return self.t(self.own(suffix))
        return self.t(names.grad(self.p))

    def previous_state(self, key: str) -> Term | None:
        """The state after the previous iteration's step, when that iteration is given."""
        state_n = names.state(self.p, key)
        try:
            arr = self.ctx.previous[state_n] if self.ctx.previous is not None else None
        except KeyError:
            arr = None
        if arr is None:
            return None
        return Term(state_n, self.index, float(arr[self.index]), iteration=self.ctx.iteration - 1)

    def before(
        self, key: str, initial: float, after: np.ndarray, recurrence
    ) -> tuple[Term | float, str]:
        """The state before the step: the previous iteration's, or the initial value
        when the stored state is exactly what the first step makes from it."""
        prev = self.previous_state(key)
        if prev is not None:
            return prev, f"{key} after iteration {self.ctx.iteration - 1}"
        first = recurrence(np.full(after.shape, initial, dtype=np.float64))
        if np.allclose(first, np.asarray(after, dtype=np.float64), rtol=1e-5, atol=1e-8):
            return initial, "its initial value: this is its first step"
        raise NotExplained(
            f"{self.p}'s {key} before this step is the state after the previous iteration, "
            "which is not stored"
        )


def _value(v) -> float:
    return v.value if isinstance(v, Term) else float(v)


def _terms(*items) -> list[Term]:
    return [i for i in items if isinstance(i, Term)]


def _prep(ctx: Context, u: Update, suffix: str, name: str, index):
    """ascent_grad, decayed_grad and AdamW's decayed weight: shared by every optimizer."""
    if suffix == "ascent_grad":
        g = u.t(names.grad(u.p))
        return prov(
            name,
            index,
            -g.value,
            "maximize",
            f"g{cell(index)} = -dL/dW = {fmt(-g.value)} (maximize)",
            [g],
        )
    if suffix == "decayed_grad":
        g = u.t(u.own("ascent_grad")) if u.has("ascent_grad") else u.t(names.grad(u.p))
        w = u.t(u.p)
        value = np.float64(g.value) + u.wd * w.value
        return prov(
            name,
            index,
            value,
            "weight-decay",
            f"g{cell(index)} = ∇W + λW = {fmt(g.value)} + {fmt(u.wd)}·({fmt(w.value)}) = {fmt(value)}",
            [g, w],
        )
    if suffix == "decayed":
        w = u.t(u.p)
        value = np.float64(w.value) * (1 - u.lr * u.wd)
        return prov(
            name,
            index,
            value,
            "decoupled-decay",
            f"W{cell(index)} ← W(1 - ηλ) = ({fmt(w.value)})(1 - {fmt(u.lr)}·{fmt(u.wd)}) = {fmt(value)}",
            [w],
        )
    return None


def _explain_update(rule):
    """Every optimizer rule: the torch state "p.state.KEY" is explained like ours "p.KEY"
    (the same number; torch's is the stored reference), and the shared pieces first."""

    def wrapped(ctx: Context, step, name, index):
        found = split(name)
        if found is None:
            raise unknown(name, step)
        param, suffix = found
        u = Update(ctx, param, index)
        own = names.intermediate(param, suffix)
        if names.parse(name).kind == names.KIND_STATE:
            if suffix not in SUFFIXES or not ctx.has(own):
                raise NotExplained(f"{name} is the optimizer's own state; no step writes it out")
            answer = rule(ctx, u, suffix, own, index)
            answer.tensor = name
            answer.formula += f"  (PyTorch's {suffix}; ours is {own})"
            return answer
        return _prep(ctx, u, suffix, name, index) or rule(ctx, u, suffix, name, index)

    return wrapped


@optimizer_rule("SGD")
@_explain_update
def sgd(ctx: Context, u: Update, suffix, name, index):
    s = ctx.settings
    mu, damp = float(s.get("momentum") or 0.0), float(s.get("dampening") or 0.0)
    nesterov = bool(s.get("nesterov"))
    g = u.gradient()
    if suffix == "momentum_buffer":
        after = ctx.arrays[name]
        grads = np.asarray(ctx.arrays[g.tensor], dtype=np.float64)
        first_words = "the buffer starts as the gradient: this is its first step"
        first = u.previous_state("momentum_buffer") is None
        if first and np.allclose(after, grads, rtol=1e-6, atol=1e-9):
            return prov(
                name,
                index,
                g.value,
                "momentum",
                f"v{cell(index)} = g = {fmt(g.value)} ({first_words})",
                [g],
            )
        prev, words = u.before(
            "momentum_buffer", 0.0, after, lambda v0: mu * v0 + (1 - damp) * grads
        )
        value = mu * _value(prev) + (1 - damp) * np.float64(g.value)
        return prov(
            name,
            index,
            value,
            "momentum",
            f"v{cell(index)} = μ v_prev + (1 - τ) g = {fmt(mu)}·({fmt(_value(prev))}) + {fmt(1 - damp)}·({fmt(g.value)})"
            f" = {fmt(value)}  (v_prev: {words})",
            _terms(prev) + [g],
        )
    if suffix == "next":
        w = u.t(u.p)
        if mu:
            v = (
                u.t(u.own("momentum_buffer"))
                if u.has("momentum_buffer")
                else u.t(names.state(u.p, "momentum_buffer"))
            )
            direction = np.float64(g.value) + mu * v.value if nesterov else np.float64(v.value)
            used, symbol = (
                ([g, v], f"(g + μv) = ({fmt(g.value)} + {fmt(mu)}·{fmt(v.value)})")
                if nesterov
                else ([v], f"v = {fmt(v.value)}")
            )
        else:
            direction, used, symbol = np.float64(g.value), [g], f"g = {fmt(g.value)}"
        value = np.float32(w.value) - np.float32(u.lr) * np.float32(direction)
        sym = "(g + μv)" if mu and nesterov else ("v" if mu else "g")
        return prov(
            name,
            index,
            value,
            "sgd",
            f"w' = w - η {sym} = {fmt(w.value)} - {u.lr:g} × ({fmt(direction)}) = {fmt(value)}  ({symbol})",
            [w, *used],
        )
    raise NotExplained(f"no provenance for {name} in an SGD update")


def _adam_t(ctx: Context, u: Update, b1: float, b2: float) -> int:
    """The step count t, from the bias correction the stored m̂ = m/(1 - β1^t) shows
    (or v̂ = v/(1 - β2^t)); one count for every parameter, so any of them may show it."""
    params = [u.p] + [
        n[: -len(".m_hat")] for n in ctx.arrays if n.endswith(".m_hat") and n != u.own("m_hat")
    ]
    for param in params:
        for moment, corrected, beta in (("exp_avg", "m_hat", b1), ("exp_avg_sq", "v_hat", b2)):
            try:
                m = np.asarray(ctx.arrays[names.intermediate(param, moment)], dtype=np.float64)
                m_hat = np.asarray(
                    ctx.arrays[names.intermediate(param, corrected)], dtype=np.float64
                )
            except KeyError:
                continue
            used = np.abs(m_hat) > 1e-12
            if not used.any():
                continue
            bc = float(np.median(m[used] / m_hat[used]))
            if 0 < bc < 1:
                return max(1, round(math.log(1 - bc) / math.log(beta)))
    raise NotExplained(f"the step count of {u.p}'s Adam update could not be recovered")


@optimizer_rule("Adam", "AdamW")
@_explain_update
def adam(ctx: Context, u: Update, suffix, name, index):
    s = ctx.settings
    b1, b2 = (float(b) for b in s.get("betas", (0.9, 0.999)))
    eps = float(s.get("eps", 1e-8))
    g = u.gradient()
    grads = np.asarray(ctx.arrays[g.tensor], dtype=np.float64)
    if suffix in ("exp_avg", "exp_avg_sq"):
        beta, square = (b1, False) if suffix == "exp_avg" else (b2, True)
        t = _adam_t(ctx, u, b1, b2)
        gg = grads**2 if square else grads
        if t == 1:
            prev, words = 0.0, "0 before the first step (t = 1)"
        else:
            prev, words = u.before(
                suffix, 0.0, ctx.arrays[name], lambda v0: beta * v0 + (1 - beta) * gg
            )
        gv = np.float64(g.value) ** 2 if square else np.float64(g.value)
        value = beta * _value(prev) + (1 - beta) * gv
        sym = ("v", "g²") if square else ("m", "g")
        return prov(
            name,
            index,
            value,
            "adam-moment",
            f"{sym[0]}_t{cell(index)} = β {sym[0]}_(t-1) + (1 - β) {sym[1]} = {fmt(beta)}·({fmt(_value(prev))}) + {fmt(1 - beta)}·({fmt(gv)})"
            f" = {fmt(value)}  ({sym[0]}_(t-1): {words}; g = {fmt(g.value)})",
            _terms(prev) + [g],
        )
    if suffix == "max_exp_avg_sq":
        v = u.t(u.own("exp_avg_sq"))
        v_all = np.asarray(ctx.arrays[u.own("exp_avg_sq")], dtype=np.float64)
        prev, words = u.before(suffix, 0.0, ctx.arrays[name], lambda v0: np.maximum(v0, v_all))
        value = max(_value(prev), v.value)
        return prov(
            name,
            index,
            value,
            "amsgrad",
            f"v̂max{cell(index)} = max(v̂max_(t-1), v_t) = max({fmt(_value(prev))}, {fmt(v.value)}) = {fmt(value)}  ({words})",
            _terms(prev) + [v],
        )
    t = _adam_t(ctx, u, b1, b2)
    if suffix in ("m_hat", "v_hat"):
        source = (
            "exp_avg"
            if suffix == "m_hat"
            else ("max_exp_avg_sq" if u.has("max_exp_avg_sq") else "exp_avg_sq")
        )
        beta = b1 if suffix == "m_hat" else b2
        x = u.t(u.own(source))
        bc = 1 - beta**t
        value = np.float64(x.value) / bc
        return prov(
            name,
            index,
            value,
            "adam-bias-correction",
            f"{suffix}{cell(index)} = {source}/(1 - β^t) = {fmt(x.value)}/(1 - {fmt(beta)}^{t}) = {fmt(x.value)}/{fmt(bc)} = {fmt(value)}",
            [x],
        )
    if suffix == "next":
        w = u.t(u.own("decayed")) if u.has("decayed") else u.t(u.p)
        m_hat, v_hat = u.t(u.own("m_hat")), u.t(u.own("v_hat"))
        step = u.lr * np.float64(m_hat.value) / (math.sqrt(max(v_hat.value, 0.0)) + eps)
        value = np.float64(w.value) - step
        return prov(
            name,
            index,
            value,
            "adam",
            f"w' = w - η m̂/(√v̂ + ε) = {fmt(w.value)} - {u.lr:g}·{fmt(m_hat.value)}/(√{fmt(v_hat.value)} + {eps:g})"
            f" = {fmt(w.value)} - {fmt(step)} = {fmt(value)}  (t = {t})",
            [w, m_hat, v_hat],
        )
    raise NotExplained(f"no provenance for {name} in an Adam update")


@optimizer_rule("RMSprop")
@_explain_update
def rmsprop(ctx: Context, u: Update, suffix, name, index):
    s = ctx.settings
    alpha, eps = float(s.get("alpha", 0.99)), float(s.get("eps", 1e-8))
    mu, centered = float(s.get("momentum") or 0.0), bool(s.get("centered"))
    g = u.gradient()
    grads = np.asarray(ctx.arrays[g.tensor], dtype=np.float64)
    if suffix in ("square_avg", "grad_avg"):
        gg = grads**2 if suffix == "square_avg" else grads
        prev, words = u.before(
            suffix, 0.0, ctx.arrays[name], lambda v0: alpha * v0 + (1 - alpha) * gg
        )
        gv = np.float64(g.value) ** (2 if suffix == "square_avg" else 1)
        value = alpha * _value(prev) + (1 - alpha) * gv
        return prov(
            name,
            index,
            value,
            "rmsprop-average",
            f"{suffix}{cell(index)} = α·prev + (1 - α)·{'g²' if suffix == 'square_avg' else 'g'} = {fmt(alpha)}·({fmt(_value(prev))}) + "
            f"{fmt(1 - alpha)}·({fmt(gv)}) = {fmt(value)}  (prev: {words})",
            _terms(prev) + [g],
        )

    def denominator():
        sq = u.t(u.own("square_avg"))
        var, used = np.float64(sq.value), [sq]
        if centered:
            avg = u.t(u.own("grad_avg"))
            var, used = var - np.float64(avg.value) ** 2, used + [avg]
        return math.sqrt(max(var, 0.0)) + eps, used

    if suffix == "momentum_buffer":
        denom, used = denominator()
        sq_all = np.asarray(ctx.arrays[u.own("square_avg")], dtype=np.float64)
        var_all = sq_all - (
            np.asarray(ctx.arrays[u.own("grad_avg")], dtype=np.float64) ** 2 if centered else 0.0
        )
        prev, words = u.before(
            suffix, 0.0, ctx.arrays[name], lambda b0: mu * b0 + grads / (np.sqrt(var_all) + eps)
        )
        value = mu * _value(prev) + np.float64(g.value) / denom
        return prov(
            name,
            index,
            value,
            "rmsprop-momentum",
            f"b{cell(index)} = μ b_prev + g/(√s + ε) = {fmt(mu)}·({fmt(_value(prev))}) + {fmt(g.value)}/{fmt(denom)} = {fmt(value)}  (b_prev: {words})",
            _terms(prev) + [g, *used],
        )
    if suffix == "next":
        w = u.t(u.p)
        if mu:
            b = u.t(u.own("momentum_buffer"))
            direction, used, text = np.float64(b.value), [b], "b"
        else:
            denom, used = denominator()
            direction = np.float64(g.value) / denom
            used, text = [g, *used], f"g/(√s + ε), g = {fmt(g.value)}, √s + ε = {fmt(denom)}"
        value = np.float64(w.value) - u.lr * direction
        return prov(
            name,
            index,
            value,
            "rmsprop",
            f"w' = w - η·{text.split(',')[0]} = {fmt(w.value)} - {u.lr:g}·({fmt(direction)}) = {fmt(value)}"
            + (f"  ({text.split(', ', 1)[1]})" if ", " in text else ""),
            [w, *used],
        )
    raise NotExplained(f"no provenance for {name} in an RMSprop update")


@optimizer_rule("Adagrad")
@_explain_update
def adagrad(ctx: Context, u: Update, suffix, name, index):
    s = ctx.settings
    eps, decay = float(s.get("eps", 1e-10)), float(s.get("lr_decay") or 0.0)
    initial = float(s.get("initial_accumulator_value") or 0.0)
    g = u.gradient()
    grads = np.asarray(ctx.arrays[g.tensor], dtype=np.float64)
    if suffix == "sum":
        prev, words = u.before("sum", initial, ctx.arrays[name], lambda s0: s0 + grads**2)
        value = _value(prev) + np.float64(g.value) ** 2
        return prov(
            name,
            index,
            value,
            "adagrad-sum",
            f"S{cell(index)} = S_prev + g² = {fmt(_value(prev))} + ({fmt(g.value)})² = {fmt(value)}  (S_prev: {words})",
            _terms(prev) + [g],
        )
    if suffix == "next":
        w, acc = u.t(u.p), u.t(u.own("sum"))
        if decay:
            raise NotExplained(
                "Adagrad's lr_decay needs the step count, which the store does not keep"
            )
        value = np.float64(w.value) - u.lr * np.float64(g.value) / (
            math.sqrt(max(acc.value, 0.0)) + eps
        )
        return prov(
            name,
            index,
            value,
            "adagrad",
            f"w' = w - η g/(√S + ε) = {fmt(w.value)} - {u.lr:g}·{fmt(g.value)}/(√{fmt(acc.value)} + {eps:g}) = {fmt(value)}",
            [w, g, acc],
        )
    raise NotExplained(f"no provenance for {name} in an Adagrad update")
