"""Linear (z = W x + b, and its three gradients) and Flatten (a row-major reshape)."""

from __future__ import annotations

import numpy as np

from .. import names
from .core import Context, affine, cell, dot, fmt, layer_rule, prov, sum_terms, term, unknown


@layer_rule("Linear")
def linear(ctx: Context, step, name, index):
    a, layer = ctx.arrays, step.layer
    w_n = ctx.param(layer, "weight")
    b_n = ctx.params(layer).get("bias")
    out_n = names.output(layer)
    x_name = ctx.layer_input(step)
    w = a[w_n]
    lead = tuple(index[:-1])  # (n,) or more leading dims: the weight acts on the last one
    if name == out_n:
        k = index[-1]
        ws = [term(w_n, a, (k, j)) for j in range(w.shape[1])]
        xs = [term(x_name, a, (*lead, j)) for j in range(w.shape[1])]
        total, text, terms = affine(ws, xs, a, b_n, k)
        plus_b = f" + b[{k}]" if b_n else ""
        return prov(
            name,
            index,
            total,
            "linear",
            f"z{cell(index)} = W[{k},:]·x[{','.join(map(str, lead))},:]{plus_b} = {text} = {fmt(total)}",
            terms,
        )
    g_n = names.grad(out_n)
    g = a[g_n]
    rows = list(np.ndindex(*g.shape[:-1]))  # every sample (and leading position)
    if ctx.is_grad_of(name, w_n, layer):
        k, j = index
        gs = [term(g_n, a, (*r, k)) for r in rows]
        xs = [term(x_name, a, (*r, j)) for r in rows]
        total, text = dot(gs, xs)
        return prov(
            name,
            index,
            total,
            "linear-weight-grad",
            f"dL/dW[{k},{j}] = Σ_n dL/dz[n,{k}]·x[n,{j}] = {text} = {fmt(total)}",
            gs + xs,
        )
    if b_n and ctx.is_grad_of(name, b_n, layer):
        (k,) = index
        gs = [term(g_n, a, (*r, k)) for r in rows]
        total, text = sum_terms(gs)
        return prov(
            name, index, total, "sum", f"dL/db[{k}] = Σ_n dL/dz[n,{k}] = {text} = {fmt(total)}", gs
        )
    if ctx.is_grad_of(name, x_name, layer):
        j = index[-1]
        gs = [term(g_n, a, (*lead, k)) for k in range(w.shape[0])]
        ws = [term(w_n, a, (k, j)) for k in range(w.shape[0])]
        total, text = dot(gs, ws)
        return prov(
            name,
            index,
            total,
            "linear-input-grad",
            f"dL/dx{cell(index)} = Σ_k dL/dz[{','.join(map(str, lead))},k]·W[k,{j}] = {text} = {fmt(total)}",
            gs + ws,
        )
    raise unknown(name, step)


@layer_rule("Flatten")
def flatten(ctx: Context, step, name, index):
    """A reshape keeps the row-major order: entry k of the output is entry k of the input."""
    a = ctx.arrays
    x_name = ctx.layer_input(step)
    out_n = names.output(step.layer)
    if name == out_n or ctx.is_grad_of(name, x_name, step.layer):
        forward = name == out_n
        src_n, dst_n = (x_name, out_n) if forward else (names.grad(out_n), name)
        k = int(np.ravel_multi_index(index, a[dst_n].shape))
        src = np.unravel_index(k, a[src_n].shape)
        t = term(src_n, a, src)
        text = (
            f"x{cell(index)} = A{cell(t.index)} = {fmt(t.value)}"
            if forward
            else f"dL/dA{cell(index)} = dL/dx{cell(t.index)} = {fmt(t.value)}"
        )
        return prov(name, index, t.value, "reshape", text + f" (entry {k} in row-major order)", [t])
    raise unknown(name, step)
