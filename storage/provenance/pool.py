"""Pooling: max pooling (each window, its winner, and the gradient routed back to the
winners of every window, overlapping ones summed) and average pooling (the window
matrices R_h, R_w and the divisor D the explainer stored)."""

from __future__ import annotations

import numpy as np

from .. import names
from ..npmath import adaptive_bounds
from .core import (
    Context,
    Missing,
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
from .windows import axis_windows, pool_window


def _batched(index, ndim: int) -> tuple[int, ...]:
    """A (C, H, W) unbatched cell as (0, C, H, W), the layout the rules work in."""
    return (0, *index) if ndim == 3 else tuple(index)


def _unbatched(index, ndim: int) -> tuple[int, ...]:
    return tuple(index[1:]) if ndim == 3 else tuple(index)


def _max_windows(kind: str, x: np.ndarray, out: np.ndarray):
    """(i, j) -> the input cells of output (i, j)'s window (padding left out: it is -inf
    and never wins), checked against every stored maximum; None when not recovered."""
    x4 = x[None] if x.ndim == 3 else x
    out4 = out[None] if out.ndim == 3 else out
    h, w = x4.shape[2:]
    if kind == "AdaptiveMaxPool2d":
        rows, cols = adaptive_bounds(h, out4.shape[2]), adaptive_bounds(w, out4.shape[3])

        def of(i, j):
            return [(r, c) for r in range(*rows[i]) for c in range(*cols[j])]

        maxima = np.array(
            [[[x4[:, :, r0:r1, c0:c1].max(axis=(2, 3)) for c0, c1 in cols] for r0, r1 in rows]]
        )[0].transpose(2, 3, 0, 1)
        return of if np.array_equal(maxima, out4) else None
    try:
        window = pool_window(x4, out4)
    except NotExplained:
        return None
    return lambda i, j: [(r, c) for r, c in window.cells(i, j) if 0 <= r < h and 0 <= c < w]


@layer_rule("MaxPool2d", "AdaptiveMaxPool2d")
def max_pool(ctx: Context, step, name, index):
    a, layer = ctx.arrays, step.layer
    out_n, arg_n = names.output(layer), names.intermediate(layer, "argmax")
    count_n = names.intermediate(layer, "route_count")
    x_name = ctx.layer_input(step)
    x = a[x_name]
    ndim, width = x.ndim, x.shape[-1]
    if name in (out_n, arg_n):
        n, c, i, j = _batched(index, ndim)
        winner = int(a[arg_n][index])
        best = term(x_name, a, _unbatched((n, c, *divmod(winner, width)), ndim))
        try:
            window_of = _max_windows(ctx.kind(layer), x, a[out_n])
        except Missing:  # the window is recovered from whole tensors; the winner is stored
            window_of = None
        if window_of is None:  # dilation or ceil mode: the stored argmax names the winner
            value = best.value if name == out_n else winner
            what = (
                f"Y{cell(index)} = X{cell(best.index)} = {fmt(best.value)}"
                if name == out_n
                else (
                    f"argmax{cell(index)} = {winner} (row {winner // width}, col {winner % width})"
                )
            )
            return prov(
                name,
                index,
                value,
                "pool",
                what + " (the window's maximum, as the stored argmax names it; the window itself "
                "could not be recovered from the shapes)",
                [best, term(arg_n, a, index)] if name == out_n else [best],
            )
        cells = window_of(i, j)
        terms = [term(x_name, a, _unbatched((n, c, *rc), ndim)) for rc in cells]
        values = ", ".join(fmt(t.value) for t in terms)
        first = cells[int(np.argmax([t.value for t in terms]))]
        flat = first[0] * width + first[1]
        if name == arg_n:
            return prov(
                name,
                index,
                flat,
                "pool-argmax",
                f"argmax over the window [{values}] = flat index {flat} (row {first[0]}, col {first[1]};"
                " the first maximum on a tie)",
                terms,
            )
        top = max(t.value for t in terms)
        return prov(
            name,
            index,
            top,
            "pool",
            f"Y{cell(index)} = max({values}) = {fmt(top)} at row {first[0]}, col {first[1]}",
            terms,
        )
    if name == count_n or ctx.is_grad_of(name, x_name, layer):
        n, c, h, w = _batched(index, ndim)
        arg = a[arg_n]
        arg4 = arg[None] if arg.ndim == 3 else arg
        routed = [
            (i, j)
            for i in range(arg4.shape[2])
            for j in range(arg4.shape[3])
            if int(arg4[n, c, i, j]) == h * width + w
        ]
        wins = [term(arg_n, a, _unbatched((n, c, i, j), ndim)) for i, j in routed]
        if name == count_n:
            return prov(
                name,
                index,
                len(routed),
                "pool-count",
                f"windows whose maximum is X{cell(index)}: {len(routed)}",
                wins,
            )
        out_grad = names.grad(out_n)
        terms = [term(out_grad, a, _unbatched((n, c, i, j), ndim)) for i, j in routed]
        total, text = sum_terms(terms)
        return prov(
            name,
            index,
            total,
            "pool-grad",
            f"dL/dX{cell(index)} = Σ over the windows it won of dL/dY = {text} = {fmt(total)}",
            terms + wins,
        )
    raise unknown(name, step)


def _divisor_rules(h, w, rh, rw, adaptive):
    """(per-row counts, per-column counts, words) for each way PyTorch sizes a window:
    the cells inside the input, or the window counting its padding (count_include_pad)."""
    yield rh.sum(axis=1), rw.sum(axis=1), "the window's cells inside the input"
    for _, bh in axis_windows(h, rh, adaptive):
        for _, bw in axis_windows(w, rw, adaptive):
            along = []
            for size, bounds in ((h, bh), (w, bw)):
                pad = max(-bounds[0][0], 0)
                along.append(np.array([min(end, size + pad) - start for start, end in bounds]))
            yield along[0], along[1], "the window's size counting padding"


@layer_rule("AvgPool2d", "AdaptiveAvgPool2d")
def avg_pool(ctx: Context, step, name, index):
    a, layer = ctx.arrays, step.layer
    out_n, d_n = names.output(layer), names.intermediate(layer, "divisor")
    x_name = ctx.layer_input(step)
    x = a[x_name]
    ndim = x.ndim
    h, w = x.shape[-2:]
    rh_n, rw_n = names.intermediate(layer, "R_h"), names.intermediate(layer, "R_w")
    rh, rw = a[rh_n], a[rw_n]
    adaptive = ctx.kind(layer).startswith("Adaptive")
    if name in (rh_n, rw_n):
        i, p = index
        size, matrix = (h, rh) if name == rh_n else (w, rw)
        found = next(axis_windows(size, np.asarray(matrix), adaptive), None)
        if found is None:
            raise NotExplained(f"the pooling windows of {layer} could not be recovered from {name}")
        words, bounds = found
        start, end = bounds[i]
        value = 1 if start <= p < end else 0
        return prov(
            name,
            index,
            value,
            "pool-window",
            f"{name.rsplit('.', 1)[-1]}[{i},{p}] = 1[{start} ≤ {p} < {end}] = {value} "
            f"(window {i} of {words})",
            [],
        )
    if name == d_n:
        i, j = index
        stored = np.asarray(a[d_n])
        for along_h, along_w, words in _divisor_rules(
            h, w, np.asarray(rh), np.asarray(rw), adaptive
        ):
            if np.array_equal(np.outer(along_h, along_w), stored):
                value = int(along_h[i]) * int(along_w[j])
                return prov(
                    name,
                    index,
                    value,
                    "pool-divisor",
                    f"D[{i},{j}] = {words} = {int(along_h[i])}·{int(along_w[j])} = {value}",
                    [],
                )
        if np.all(stored == stored.reshape(-1)[0]):
            value = int(stored.reshape(-1)[0])
            return prov(
                name, index, value, "pool-divisor", f"D[{i},{j}] = divisor_override = {value}", []
            )
        raise NotExplained(f"the divisor of {layer} could not be recovered")
    rh_cells = lambda i: [p for p in range(rh.shape[1]) if rh[i, p]]  # noqa: E731
    rw_cells = lambda j: [q for q in range(rw.shape[1]) if rw[j, q]]  # noqa: E731
    if name == out_n:
        n, c, i, j = _batched(index, ndim)
        xs = [
            term(x_name, a, _unbatched((n, c, p, q), ndim))
            for p in rh_cells(i)
            for q in rw_cells(j)
        ]
        d = term(d_n, a, (i, j))
        total, text = sum_terms(xs)
        value = total / d.value if d.value else total
        rows = [term(rh_n, a, (i, p)) for p in rh_cells(i)] + [
            term(rw_n, a, (j, q)) for q in rw_cells(j)
        ]
        return prov(
            name,
            index,
            value,
            "avg-pool",
            f"Y{cell(index)} = (Σ over window ({i},{j}) of X) / D[{i},{j}] = ({text}) / {fmt(d.value)} = {fmt(value)}",
            xs + [d] + rows,
        )
    if ctx.is_grad_of(name, x_name, layer):
        n, c, p, q = _batched(index, ndim)
        out_grad = names.grad(out_n)
        windows = [
            (i, j) for i in range(rh.shape[0]) if rh[i, p] for j in range(rw.shape[0]) if rw[j, q]
        ]
        gs = [term(out_grad, a, _unbatched((n, c, i, j), ndim)) for i, j in windows]
        ds = [term(d_n, a, (i, j)) for i, j in windows]
        total = float(sum(np.float64(g.value) / (d.value or 1.0) for g, d in zip(gs, ds)))
        text = joined([f"{fmt(g.value)}/{fmt(d.value)}" for g, d in zip(gs, ds)]) or "0"
        return prov(
            name,
            index,
            total,
            "avg-pool-grad",
            f"dL/dX{cell(index)} = Σ over the windows that cover it of dL/dY / D = {text} = {fmt(total)}",
            gs + ds,
        )
    raise unknown(name, step)
