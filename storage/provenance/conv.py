"""Conv2d: im2col, the kernel as a matrix, Y_col = X_col W_flat^T + b, and back.

Every backward gradient is the sum over every path: the weight gradient over every
patch of the batch, the input gradient over every patch that copied the pixel
(col2im overlaps)."""

from __future__ import annotations

import itertools

import numpy as np

from .. import names
from .core import Context, affine, cell, dot, fmt, layer_rule, prov, sum_terms, term, unknown
from .windows import conv_window


@layer_rule("Conv2d")
def conv(ctx: Context, step, name, index):
    a, layer = ctx.arrays, step.layer
    x_col_n, w_flat_n, y_col_n = (
        names.intermediate(layer, k) for k in ("X_col", "W_flat", "Y_col")
    )
    dy_col_n, dx_col_n = names.intermediate(layer, "dY_col"), names.intermediate(layer, "dX_col")
    out_n = names.output(layer)
    weight_n = ctx.param(layer, "weight")
    bias_n = ctx.params(layer).get("bias")
    weight = a[weight_n]
    o_ch = weight.shape[0]
    if name == w_flat_n:
        o, k = index
        src = (o, *np.unravel_index(k, weight.shape[1:]))
        t = term(weight_n, a, src)
        return prov(
            name, index, t.value, "reshape", f"W_flat[{o},{k}] = W{cell(src)} = {fmt(t.value)}", [t]
        )
    if name == y_col_n:
        r, o = index
        xs = [term(x_col_n, a, (r, k)) for k in range(a[x_col_n].shape[1])]
        ws = [term(w_flat_n, a, (o, k)) for k in range(a[w_flat_n].shape[1])]
        total, text, terms = affine(xs, ws, a, bias_n, o)
        plus_b = f" + b[{o}]" if bias_n else ""
        return prov(
            name,
            index,
            total,
            "conv",
            f"Y_col[{r},{o}] = Σ_k X_col[{r},k]·W_flat[{o},k]{plus_b} = {text} = {fmt(total)}",
            terms,
        )
    if name == out_n:
        n, o, i, j = index
        oh, ow = a[out_n].shape[2:]
        r = (n * oh + i) * ow + j
        t = term(y_col_n, a, (r, o))
        return prov(
            name,
            index,
            t.value,
            "reshape",
            f"Y{cell(index)} = Y_col[{r},{o}] = {fmt(t.value)}",
            [t],
        )
    x_name = ctx.layer_input(step)
    out_grad = names.grad(out_n)
    if name == x_col_n:
        x = a[x_name]
        window = conv_window(x, a[x_col_n], weight.shape[2:], a[out_n].shape[2:])
        r, k = index
        oh, ow = window.out_size(*x.shape[2:])
        n, rest = divmod(r, oh * ow)
        i, j = divmod(rest, ow)
        c, pos = divmod(k, window.kernel[0] * window.kernel[1])
        src = window.cells(i, j)[pos]
        if not (0 <= src[0] < x.shape[2] and 0 <= src[1] < x.shape[3]):
            return prov(name, index, 0.0, "im2col", f"X_col[{r},{k}] is padding: 0", [])
        t = term(x_name, a, (n, c, *src))
        return prov(
            name,
            index,
            t.value,
            "im2col",
            f"X_col[{r},{k}] = X[{n},{c},{src[0]},{src[1]}] = {fmt(t.value)}",
            [t],
        )
    if name == dy_col_n:
        r, o = index
        oh, ow = a[out_grad].shape[2:]
        n, rest = divmod(r, oh * ow)
        t = term(out_grad, a, (n, o, *divmod(rest, ow)))
        return prov(
            name,
            index,
            t.value,
            "reshape",
            f"dY_col[{r},{o}] = dL/dY{cell(t.index)} = {fmt(t.value)}",
            [t],
        )
    if ctx.is_grad_of(name, weight_n, layer):
        o, k = index[0], int(np.ravel_multi_index(index[1:], weight.shape[1:]))
        rows = a[dy_col_n].shape[0]
        gs = [term(dy_col_n, a, (r, o)) for r in range(rows)]
        xs = [term(x_col_n, a, (r, k)) for r in range(rows)]
        total, text = dot(gs, xs)
        return prov(
            name,
            index,
            total,
            "conv-weight-grad",
            f"dL/dW{cell(index)} = Σ_r dY_col[r,{o}]·X_col[r,{k}] = {text} = {fmt(total)}",
            gs + xs,
        )
    if bias_n and ctx.is_grad_of(name, bias_n, layer):
        (o,) = index
        g = a[out_grad]
        terms = [
            term(out_grad, a, (n, o, i, j))
            for n in range(g.shape[0])
            for i in range(g.shape[2])
            for j in range(g.shape[3])
        ]
        total, text = sum_terms(terms)
        return prov(
            name,
            index,
            total,
            "sum",
            f"dL/db[{o}] = Σ_n,i,j dL/dY[n,{o},i,j] = {text} = {fmt(total)}",
            terms,
        )
    if name == dx_col_n:
        r, k = index
        gs = [term(dy_col_n, a, (r, o)) for o in range(o_ch)]
        ws = [term(w_flat_n, a, (o, k)) for o in range(o_ch)]
        total, text = dot(gs, ws)
        return prov(
            name,
            index,
            total,
            "conv-input-grad",
            f"dX_col[{r},{k}] = Σ_o dY_col[{r},o]·W_flat[o,{k}] = {text} = {fmt(total)}",
            gs + ws,
        )
    if ctx.is_grad_of(name, x_name, layer):
        x = a[x_name]
        window = conv_window(x, a[x_col_n], weight.shape[2:], a[out_n].shape[2:])
        n, c, h, w = index
        oh, ow = window.out_size(*x.shape[2:])
        terms = []
        per = window.kernel[0] * window.kernel[1]
        for i, j in itertools.product(range(oh), range(ow)):
            for pos, src in enumerate(window.cells(i, j)):
                if src == (h, w):
                    terms.append(term(dx_col_n, a, ((n * oh + i) * ow + j, c * per + pos)))
        total, text = sum_terms(terms)
        return prov(
            name,
            index,
            total,
            "col2im",
            f"dL/dX{cell(index)} = Σ over the patches that copied it of dX_col = {text} = {fmt(total)}",
            terms,
        )
    raise unknown(name, step)
