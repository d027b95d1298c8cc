"""Softmax and LogSoftmax along their dimension, and their Jacobian-vector products
(the explainer's stored <dL/dp, p> per slice, and log-sum-exp)."""

from __future__ import annotations

import numpy as np

from .. import names, npmath
from .core import Context, NotExplained, cell, fmt, joined, layer_rule, prov, term, unknown


def softmax_dim(z: np.ndarray, out: np.ndarray, log: bool) -> int:
    """The dimension normalised over: the one whose softmax of z is the stored output."""
    z64 = np.asarray(z, dtype=np.float64)
    for d in range(z64.ndim - 1, -1, -1) if z64.ndim > 1 else range(z64.ndim):
        ours = npmath.log_softmax(z64, d) if log else npmath.softmax(z64, d)
        if np.allclose(ours, np.asarray(out, dtype=np.float64), rtol=1e-4, atol=1e-6):
            return d
    raise NotExplained("the softmax dimension could not be recovered from the stored output")


def _slice(index, dim, size):
    """The cells of the slice through `index` along `dim`."""
    return [tuple(index[:dim]) + (k,) + tuple(index[dim + 1 :]) for k in range(size)]


def _squeezed(index, dim):
    return tuple(index[:dim]) + tuple(index[dim + 1 :])


@layer_rule("Softmax", "LogSoftmax")
def softmax(ctx: Context, step, name, index):
    a, layer = ctx.arrays, step.layer
    log = ctx.kind(layer) == "LogSoftmax"
    out_n = names.output(layer)
    x_name = ctx.layer_input(step)
    z = a[x_name]
    if z.ndim == 0:
        raise NotExplained("a softmax of a single number is 1 (log-softmax 0)")
    dim = softmax_dim(z, a[out_n], log)
    per_slice = (names.intermediate(layer, "dot_dp_p"), names.intermediate(layer, "logsumexp"))
    full = tuple(index[:dim]) + (0,) + tuple(index[dim:]) if name in per_slice else tuple(index)
    slice_cells = _slice(full, dim, z.shape[dim])
    k = full[dim]
    zs = [term(x_name, a, c) for c in slice_cells]
    zv = np.array([t.value for t in zs], dtype=np.float64)
    m = zv.max()
    lse = float(m + np.log(np.exp(zv - m).sum()))
    exps = joined([f"e^{fmt(v)}" for v in zv])
    if name == names.intermediate(layer, "logsumexp"):
        return prov(
            name, index, lse, "logsumexp", f"LSE{cell(index)} = log({exps}) = {fmt(lse)}", zs
        )
    if name == out_n:
        if log:
            value = float(zv[k] - lse)
            return prov(
                name,
                index,
                value,
                "log-softmax",
                f"y{cell(index)} = z_k - log Σ_j e^(z_j) = {fmt(zv[k])} - log({exps}) = {fmt(value)}",
                zs,
            )
        value = float(np.exp(zv[k] - lse))
        return prov(
            name,
            index,
            value,
            "softmax",
            f"p{cell(index)} = e^(z_k) / Σ_j e^(z_j) = e^{fmt(zv[k])} / ({exps}) = {fmt(value)}",
            zs,
        )
    out_grad = names.grad(out_n)
    if name == names.intermediate(layer, "dot_dp_p"):
        ps = [term(out_n, a, c) for c in slice_cells]
        gs = [term(out_grad, a, c) for c in slice_cells]
        value = float(sum(np.float64(p.value) * g.value for p, g in zip(ps, gs)))
        text = joined([f"({fmt(g.value)})({fmt(p.value)})" for g, p in zip(gs, ps)])
        return prov(
            name,
            index,
            value,
            "softmax-dot",
            f"<dL/dp, p>{cell(index)} = {text} = {fmt(value)}",
            gs + ps,
        )
    if ctx.is_grad_of(name, x_name, layer):
        g = term(out_grad, a, index)
        if log:
            gs = [term(out_grad, a, c) for c in slice_cells]
            y = term(out_n, a, index)
            total = float(sum(np.float64(t.value) for t in gs))
            p = float(np.exp(np.float64(y.value)))
            value = g.value - p * total
            return prov(
                name,
                index,
                value,
                "log-softmax-grad",
                f"dL/dz{cell(index)} = dL/dy - e^y Σ_k dL/dy_k = {fmt(g.value)} - e^{fmt(y.value)}·({fmt(total)}) = {fmt(value)}",
                [g, y, *gs],
            )
        p = term(out_n, a, index)
        inner = term(names.intermediate(layer, "dot_dp_p"), a, _squeezed(index, dim))
        value = np.float64(p.value) * (g.value - inner.value)
        return prov(
            name,
            index,
            value,
            "softmax-grad",
            f"dL/dz{cell(index)} = p (dL/dp - <dL/dp, p>) = ({fmt(p.value)})({fmt(g.value)} - {fmt(inner.value)}) = {fmt(value)}",
            [p, g, inner],
        )
    raise unknown(name, step)
