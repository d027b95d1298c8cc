"""Where one number came from: the scalar computation behind one cell of a stored tensor.

Pure and torch-free (arrays in, plain records out), so the tracer, the dashboard
and the tests can all use it. Given an iteration's stored tensors and steps, the
run's layer types and optimizer settings, and one cell of a tensor a step
produced, `explain_cell` returns the computation that produced that cell, written
with the real numbers, the cells it read (for highlighting), and the value
recomputed from them, checked against the stored one:

- a convolution output: its X_col row times the flattened kernel, summed, plus the bias;
- im2col: the input cell (or padding zero) a patch entry copies;
- max pooling: the window and its winner (the argmax);
- a linear output: the weight row times x, plus the bias;
- softmax, the cross-entropy loss and its gradient: their own formulas;
- a backward gradient: the sum over every path that reaches the cell (overlapping
  pool windows, col2im overlaps, every sample of the batch);
- an SGD update: w - eta g (with momentum: w - eta v, v from the stored state).

Windows (kernel, stride, padding) are not stored as numbers; they are recovered
from the shapes and checked against the stored im2col matrix or pooling output,
and a cell whose window cannot be recovered says so instead of guessing.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .records import IterationRecord, StepRecord


class NotExplained(LookupError):
    """No provenance for this cell (a layer type or step without one); says why."""


@dataclass
class Term:
    tensor: str
    index: tuple[int, ...]
    value: float


@dataclass
class Provenance:
    tensor: str
    index: tuple[int, ...]
    stored: float  # the value in the store
    recomputed: float  # from the terms below
    kind: str  # "conv", "linear", "pool", ...
    formula: str  # the computation with the real numbers, as text
    terms: list[Term] = field(default_factory=list)  # every cell read, in order
    step: int | None = None  # position of the step that produced the tensor

    @property
    def matches(self) -> bool:
        scale = 1.0 + sum(abs(t.value) for t in self.terms)
        if np.isnan(self.stored) or np.isnan(self.recomputed):
            return bool(np.isnan(self.stored) and np.isnan(self.recomputed))
        return abs(self.recomputed - self.stored) <= 1e-5 * scale

    def reads(self) -> dict[str, list[tuple[int, ...]]]:
        """tensor name -> the cells of it this computation read (to highlight them)."""
        out: dict[str, list[tuple[int, ...]]] = {}
        for t in self.terms:
            out.setdefault(t.tensor, []).append(t.index)
        return out


# ---------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return (
            (h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1,
            (w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1,
        )

    def cells(self, i: int, j: int) -> list[tuple[int, int] | None]:
        """Input (row, col) of each kernel position of output (i, j); None in the padding."""
        out = []
        for a, b in itertools.product(range(self.kernel[0]), range(self.kernel[1])):
            r = i * self.stride[0] - self.padding[0] + a
            c = j * self.stride[1] - self.padding[1] + b
            out.append((r, c))
        return out


def _candidates(h, w, oh, ow, kernel=None):
    kernels = [kernel] if kernel else [(a, b) for a in range(1, h + 1) for b in range(1, w + 1)]
    for k in kernels:
        for s0, s1 in itertools.product(range(1, max(k[0], 1) + 2), range(1, max(k[1], 1) + 2)):
            for p0, p1 in itertools.product(range(k[0] // 2 + 1), range(k[1] // 2 + 1)):
                window = Window(k, (s0, s1), (p0, p1))
                if window.out_size(h, w) == (oh, ow):
                    yield window


def im2col(x: np.ndarray, window: Window) -> np.ndarray:
    """(N, C, H, W) -> (N*OH*OW, C*KH*KW), rows in (n, i, j) order, columns in (c, a, b)."""
    n, c, h, w = x.shape
    oh, ow = window.out_size(h, w)
    ph, pw = window.padding
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = window.kernel
    sh, sw = window.stride
    cols = np.empty((n, oh, ow, c, kh, kw), dtype=x.dtype)
    for a in range(kh):
        for b in range(kw):
            cols[:, :, :, :, a, b] = padded[
                :, :, a : a + sh * (oh - 1) + 1 : sh, b : b + sw * (ow - 1) + 1 : sw
            ].transpose(0, 2, 3, 1)
    return cols.reshape(n * oh * ow, c * kh * kw)


def conv_window(x: np.ndarray, x_col: np.ndarray, kernel: tuple[int, int], out_hw) -> Window:
    """The convolution's window: the one whose im2col of x is the stored X_col."""
    for window in _candidates(x.shape[2], x.shape[3], *out_hw, kernel=kernel):
        if np.array_equal(im2col(x, window), x_col):
            return window
    raise NotExplained("the convolution's stride and padding could not be recovered")


def pool_window(x: np.ndarray, out: np.ndarray) -> Window:
    """The max pooling window: the one whose window maxima are the stored output."""
    for window in _candidates(x.shape[2], x.shape[3], out.shape[2], out.shape[3]):
        if window.padding != (0, 0):
            continue  # padding would need -inf cells; the built-in models use none
        cols = im2col(x.reshape(-1, 1, *x.shape[2:]), window)
        if np.array_equal(cols.max(axis=1).reshape(out.shape), out):
            return window
    raise NotExplained("the pooling window could not be recovered")


# ---------------------------------------------------------------- helpers


def _f(value) -> str:
    return f"{float(value):.6g}"


# Sums longer than this are written with their first and last terms (a LeNet-5 fc1
# output has 400); every term is still computed, and listed in `Provenance.terms`.
MAX_WRITTEN_TERMS = 12


def _joined(parts: Sequence[str]) -> str:
    if len(parts) <= MAX_WRITTEN_TERMS:
        return " + ".join(parts)
    head, tail = parts[: MAX_WRITTEN_TERMS - 2], parts[-2:]
    return " + ".join([*head, f"… ({len(parts) - len(head) - len(tail)} more terms)", *tail])


def _dot(terms_a: Sequence[Term], terms_b: Sequence[Term]) -> tuple[float, str]:
    total = np.float64(0)
    for a, b in zip(terms_a, terms_b):
        total += np.float64(a.value) * np.float64(b.value)
    text = _joined([f"({_f(a.value)})({_f(b.value)})" for a, b in zip(terms_a, terms_b)])
    return float(total), text


def _affine(left, right, arrays, bias: str, k: int) -> tuple[float, str, list[Term]]:
    """Σ left·right + bias[k] (no bias term when the layer has none)."""
    total, text = _dot(left, right)
    terms = [*left, *right]
    if bias in arrays:
        b = _term(bias, arrays, (k,))
        total += b.value
        text += f" + ({_f(b.value)})"
        terms.append(b)
    return total, text, terms


def _term(name: str, arrays: Mapping[str, np.ndarray], index) -> Term:
    index = tuple(int(i) for i in index)
    return Term(name, index, float(arrays[name][index]))


def _sum_terms(terms: Sequence[Term]) -> tuple[float, str]:
    total = float(np.sum([np.float64(t.value) for t in terms])) if terms else 0.0
    return total, (_joined([_f(t.value) for t in terms]) or "0")


# ---------------------------------------------------------------- the rules


@dataclass
class Context:
    """What a rule may read: the iteration's arrays and steps, layer types, settings."""

    arrays: Mapping[str, np.ndarray]
    steps: Sequence[StepRecord]
    layer_types: Mapping[str, str]
    optimizer: str = ""
    settings: Mapping[str, object] = field(default_factory=dict)

    def producer(self, name: str) -> StepRecord:
        for step in self.steps:
            if name in step.outputs:
                return step
        # A matrix an explainer built but that is only read (W_flat, dY_col, the one-hot
        # labels): the layer's first step that reads it has its rule.
        for step in self.steps:
            if (
                name in step.inputs
                and name.startswith(step.layer + ".")
                and (name.rsplit(".", 1)[-1] not in ("weight", "bias"))
            ):
                return step
        raise NotExplained(f"{name} is a given of this iteration (no step computes it)")

    def layer_input(self, step: StepRecord, exclude: Sequence[str] = ()) -> str:
        """The tensor the layer's forward pass read (not one of its own parameters)."""
        skip = set(exclude)
        for candidate in self.steps:
            if candidate.layer != step.layer or candidate.phase != "forward":
                continue
            for name in candidate.inputs:
                if name not in skip and not name.startswith(step.layer + "."):
                    return name
        raise NotExplained(f"layer {step.layer} has no stored input")


def explain_cell(
    record: IterationRecord,
    layer_types: Mapping[str, str],
    name: str,
    index: Sequence[int],
    *,
    optimizer: str = "",
    settings: Mapping[str, object] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> Provenance:
    """The computation behind `record`'s tensor `name` at `index` (see the module docstring).

    `arrays` (name -> the whole tensor; a missing or truncated one is absent) replaces
    `record`'s own tensors: a page can pass a mapping that reads only the tensors
    the answer needs, with `record` loaded without data (its steps are enough)."""
    if arrays is None:
        arrays = {t.name: t.array for t in record.tensors if not t.truncated}
    if name not in arrays:
        raise NotExplained(f"{name} is not stored whole in this iteration")
    index = tuple(int(i) for i in index)
    if len(index) != arrays[name].ndim or any(
        not 0 <= i < d for i, d in zip(index, arrays[name].shape)
    ):
        raise NotExplained(f"{name} has no cell {list(index)}")
    ctx = Context(arrays, record.steps, layer_types, optimizer, settings or {})
    if name.endswith(".update") and name.removesuffix(".update") + ".next" in arrays:
        return _difference(ctx, name, index)
    step = ctx.producer(name)
    kind = layer_types.get(step.layer, "")
    if step.phase == "update":
        rule = _update
    else:
        rule = _RULES.get(kind)
        if rule is None:
            raise NotExplained(f"no provenance for layer type {kind or step.layer!r} yet")
    try:
        prov = rule(ctx, step, name, index)
    except KeyError as exc:  # a tensor it reads is truncated by a storage bound, or absent
        raise NotExplained(
            f"{name}[{', '.join(map(str, index))}] reads {exc.args[0]}, which is not stored whole"
        ) from None
    prov.step = step.position
    prov.stored = float(arrays[name][index])
    return prov


def _difference(ctx: Context, name: str, index) -> Provenance:
    param = name.removesuffix(".update")
    new, old = _term(f"{param}.next", ctx.arrays, index), _term(param, ctx.arrays, index)
    value = np.float32(new.value) - np.float32(old.value)
    prov = _prov(
        name,
        index,
        float(value),
        "update",
        f"Δw = w' - w = {_f(new.value)} - {_f(old.value)} = {_f(value)}",
        [new, old],
    )
    prov.stored = float(ctx.arrays[name][index])
    return prov


def _prov(name, index, value, kind, formula, terms) -> Provenance:
    return Provenance(
        tensor=name,
        index=index,
        stored=float("nan"),
        recomputed=float(value),
        kind=kind,
        formula=formula,
        terms=list(terms),
    )


def _conv(ctx: Context, step: StepRecord, name: str, index) -> Provenance:
    a, layer = ctx.arrays, step.layer
    x_col_n, w_flat_n, y_col_n = f"{layer}.X_col", f"{layer}.W_flat", f"{layer}.Y_col"
    out_n, bias_n, weight_n = f"{layer}.out", f"{layer}.bias", f"{layer}.weight"
    dy_col_n, dx_col_n = f"{layer}.dY_col", f"{layer}.dX_col"
    weight = a[weight_n]
    o_ch = weight.shape[0]
    if name == w_flat_n:
        o, k = index
        src = (o, *np.unravel_index(k, weight.shape[1:]))
        t = _term(weight_n, a, src)
        return _prov(
            name, index, t.value, "reshape", f"W_flat[{o},{k}] = W{list(src)} = {_f(t.value)}", [t]
        )
    if name == y_col_n:
        r, o = index
        xs = [_term(x_col_n, a, (r, k)) for k in range(a[x_col_n].shape[1])]
        ws = [_term(w_flat_n, a, (o, k)) for k in range(a[w_flat_n].shape[1])]
        total, text, terms = _affine(xs, ws, a, bias_n, o)
        return _prov(
            name,
            index,
            total,
            "conv",
            f"Y_col[{r},{o}] = Σ_k X_col[{r},k]·W_flat[{o},k] + b[{o}] = {text} = {_f(total)}",
            terms,
        )
    if name == out_n:
        n, o, i, j = index
        oh, ow = a[out_n].shape[2:]
        r = (n * oh + i) * ow + j
        t = _term(y_col_n, a, (r, o))
        return _prov(
            name,
            index,
            t.value,
            "reshape",
            f"Y[{n},{o},{i},{j}] = Y_col[{r},{o}] = {_f(t.value)}",
            [t],
        )
    x_name = ctx.layer_input(step)
    if name == x_col_n:
        x = a[x_name]
        window = conv_window(x, a[x_col_n], weight.shape[2:], a[out_n].shape[2:])
        r, k = index
        oh, ow = window.out_size(*x.shape[2:])
        n, rest = divmod(r, oh * ow)
        i, j = divmod(rest, ow)
        c, pos = divmod(k, window.kernel[0] * window.kernel[1])
        cell = window.cells(i, j)[pos]
        if not (0 <= cell[0] < x.shape[2] and 0 <= cell[1] < x.shape[3]):
            return _prov(name, index, 0.0, "im2col", f"X_col[{r},{k}] is padding: 0", [])
        t = _term(x_name, a, (n, c, *cell))
        return _prov(
            name,
            index,
            t.value,
            "im2col",
            f"X_col[{r},{k}] = X[{n},{c},{cell[0]},{cell[1]}] = {_f(t.value)}",
            [t],
        )
    if name == dy_col_n:
        r, o = index
        g = a[f"{out_n}.grad"]
        oh, ow = g.shape[2:]
        n, rest = divmod(r, oh * ow)
        t = _term(f"{out_n}.grad", a, (n, o, *divmod(rest, ow)))
        return _prov(
            name,
            index,
            t.value,
            "reshape",
            f"dY_col[{r},{o}] = dL/dY{list(t.index)} = {_f(t.value)}",
            [t],
        )
    if name == f"{weight_n}.grad":
        o, k = index[0], int(np.ravel_multi_index(index[1:], weight.shape[1:]))
        rows = a[dy_col_n].shape[0]
        gs = [_term(dy_col_n, a, (r, o)) for r in range(rows)]
        xs = [_term(x_col_n, a, (r, k)) for r in range(rows)]
        total, text = _dot(gs, xs)
        return _prov(
            name,
            index,
            total,
            "conv-weight-grad",
            f"dL/dW{list(index)} = Σ_r dY_col[r,{o}]·X_col[r,{k}] = {text} = {_f(total)}",
            gs + xs,
        )
    if name == f"{bias_n}.grad":
        (o,) = index
        g = a[f"{out_n}.grad"]
        terms = [
            _term(f"{out_n}.grad", a, (n, o, i, j))
            for n in range(g.shape[0])
            for i in range(g.shape[2])
            for j in range(g.shape[3])
        ]
        total, text = _sum_terms(terms)
        return _prov(
            name,
            index,
            total,
            "sum",
            f"dL/db[{o}] = Σ_n,i,j dL/dY[n,{o},i,j] = {text} = {_f(total)}",
            terms,
        )
    if name == dx_col_n:
        r, k = index
        gs = [_term(dy_col_n, a, (r, o)) for o in range(o_ch)]
        ws = [_term(w_flat_n, a, (o, k)) for o in range(o_ch)]
        total, text = _dot(gs, ws)
        return _prov(
            name,
            index,
            total,
            "conv-input-grad",
            f"dX_col[{r},{k}] = Σ_o dY_col[{r},o]·W_flat[o,{k}] = {text} = {_f(total)}",
            gs + ws,
        )
    if name == f"{x_name}.grad":
        x = a[x_name]
        window = conv_window(x, a[x_col_n], weight.shape[2:], a[out_n].shape[2:])
        n, c, h, w = index
        oh, ow = window.out_size(*x.shape[2:])
        terms = []
        per = window.kernel[0] * window.kernel[1]
        for i, j in itertools.product(range(oh), range(ow)):
            for pos, cell in enumerate(window.cells(i, j)):
                if cell == (h, w):
                    terms.append(_term(dx_col_n, a, ((n * oh + i) * ow + j, c * per + pos)))
        total, text = _sum_terms(terms)
        return _prov(
            name,
            index,
            total,
            "col2im",
            f"dL/dX{list(index)} = Σ over the patches that copied it of dX_col = {text} = {_f(total)}",
            terms,
        )
    raise NotExplained(f"no provenance for {name} in {step.title!r}")


def _relu(ctx, step, name, index):
    a, layer = ctx.arrays, step.layer
    out_n, mask_n = f"{layer}.out", f"{layer}.mask"
    if name == f"{out_n}.grad":
        raise NotExplained(f"{name} is produced by the next layer")
    x_name = ctx.layer_input(step)
    if name in (out_n, mask_n):
        t = _term(x_name, a, index)
        if name == mask_n:
            value = 1.0 if t.value > 0 else 0.0
            return _prov(
                name,
                index,
                value,
                "relu-mask",
                f"M{list(index)} = 1[Z > 0] = 1[{_f(t.value)} > 0] = {int(value)}",
                [t],
            )
        value = max(0.0, t.value)
        return _prov(
            name, index, value, "relu", f"A{list(index)} = max(0, {_f(t.value)}) = {_f(value)}", [t]
        )
    if name == f"{x_name}.grad":
        g, m = _term(f"{out_n}.grad", a, index), _term(mask_n, a, index)
        value = g.value * m.value
        return _prov(
            name,
            index,
            value,
            "relu-grad",
            f"dL/dZ{list(index)} = dL/dA·M = ({_f(g.value)})({_f(m.value)}) = {_f(value)}",
            [g, m],
        )
    raise NotExplained(f"no provenance for {name} in {step.title!r}")


def _pool(ctx, step, name, index):
    a, layer = ctx.arrays, step.layer
    out_n, arg_n, count_n = f"{layer}.out", f"{layer}.argmax", f"{layer}.route_count"
    x_name = ctx.layer_input(step)
    x = a[x_name]
    width = x.shape[-1]
    if name in (out_n, arg_n):
        n, c, i, j = index
        window = pool_window(x, a[out_n])
        cells = window.cells(i, j)
        terms = [_term(x_name, a, (n, c, *cell)) for cell in cells]
        winner = int(a[arg_n][index])
        best = _term(x_name, a, (n, c, *divmod(winner, width)))
        values = ", ".join(_f(t.value) for t in terms)
        if name == arg_n:
            flat = [r * width + col for r, col in cells]
            first = flat[int(np.argmax([t.value for t in terms]))]
            return _prov(
                name,
                index,
                first,
                "pool-argmax",
                f"argmax over the window [{values}] = flat index {first} (row {first // width}, col {first % width})",
                terms,
            )
        return _prov(
            name,
            index,
            max(t.value for t in terms),
            "pool",
            f"Y[{n},{c},{i},{j}] = max({values}) = {_f(best.value)} at row {winner // width}, col {winner % width}",
            terms,
        )
    if name in (f"{x_name}.grad", count_n):
        n, c, h, w = index
        arg = a[arg_n]
        routed = [
            (i, j)
            for i in range(arg.shape[2])
            for j in range(arg.shape[3])
            if int(arg[n, c, i, j]) == h * width + w
        ]
        wins = [_term(arg_n, a, (n, c, i, j)) for i, j in routed]
        if name == count_n:
            return _prov(
                name,
                index,
                len(routed),
                "pool-count",
                f"windows whose maximum is X[{n},{c},{h},{w}]: {len(routed)}",
                wins,
            )
        terms = [_term(f"{out_n}.grad", a, (n, c, i, j)) for i, j in routed]
        total, text = _sum_terms(terms)
        return _prov(
            name,
            index,
            total,
            "pool-grad",
            f"dL/dX{list(index)} = Σ over the windows it won of dL/dY = {text} = {_f(total)}",
            terms + wins,
        )
    raise NotExplained(f"no provenance for {name} in {step.title!r}")


def _flatten(ctx, step, name, index):
    a = ctx.arrays
    x_name = ctx.layer_input(step)
    out_n = f"{step.layer}.out"
    if name == out_n:
        n, k = index
        src = (n, *np.unravel_index(k, a[x_name].shape[1:]))
        t = _term(x_name, a, src)
        return _prov(
            name, index, t.value, "reshape", f"x[{n},{k}] = A{list(t.index)} = {_f(t.value)}", [t]
        )
    if name == f"{x_name}.grad":
        n, rest = index[0], index[1:]
        k = int(np.ravel_multi_index(rest, a[x_name].shape[1:]))
        t = _term(f"{out_n}.grad", a, (n, k))
        return _prov(
            name,
            index,
            t.value,
            "reshape",
            f"dL/dA{list(index)} = dL/dx[{n},{k}] = {_f(t.value)}",
            [t],
        )
    raise NotExplained(f"no provenance for {name} in {step.title!r}")


def _linear(ctx, step, name, index):
    a, layer = ctx.arrays, step.layer
    w_n, b_n, out_n = f"{layer}.weight", f"{layer}.bias", f"{layer}.out"
    x_name = ctx.layer_input(step, exclude=(w_n, b_n))
    w = a[w_n]
    if name == out_n:
        n, k = index
        ws = [_term(w_n, a, (k, j)) for j in range(w.shape[1])]
        xs = [_term(x_name, a, (n, j)) for j in range(w.shape[1])]
        total, text, terms = _affine(ws, xs, a, b_n, k)
        return _prov(
            name,
            index,
            total,
            "linear",
            f"z[{n},{k}] = W[{k},:]·x[{n},:] + b[{k}] = {text} = {_f(total)}",
            terms,
        )
    g_n = f"{out_n}.grad"
    g = a[g_n]
    if name == f"{w_n}.grad":
        k, j = index
        gs = [_term(g_n, a, (n, k)) for n in range(g.shape[0])]
        xs = [_term(x_name, a, (n, j)) for n in range(g.shape[0])]
        total, text = _dot(gs, xs)
        return _prov(
            name,
            index,
            total,
            "linear-weight-grad",
            f"dL/dW[{k},{j}] = Σ_n dL/dz[n,{k}]·x[n,{j}] = {text} = {_f(total)}",
            gs + xs,
        )
    if name == f"{b_n}.grad":
        (k,) = index
        gs = [_term(g_n, a, (n, k)) for n in range(g.shape[0])]
        total, text = _sum_terms(gs)
        return _prov(
            name, index, total, "sum", f"dL/db[{k}] = Σ_n dL/dz[n,{k}] = {text} = {_f(total)}", gs
        )
    if name == f"{x_name}.grad":
        n, j = index
        gs = [_term(g_n, a, (n, k)) for k in range(w.shape[0])]
        ws = [_term(w_n, a, (k, j)) for k in range(w.shape[0])]
        total, text = _dot(gs, ws)
        return _prov(
            name,
            index,
            total,
            "linear-input-grad",
            f"dL/dx[{n},{j}] = Σ_k dL/dz[{n},k]·W[k,{j}] = {text} = {_f(total)}",
            gs + ws,
        )
    raise NotExplained(f"no provenance for {name} in {step.title!r}")


def _cross_entropy(ctx, step, name, index):
    a, layer = ctx.arrays, step.layer
    probs_n, onehot_n, pred_n = f"{layer}.probs", f"{layer}.onehot", f"{layer}.predicted"
    value_n = f"{layer}.value"
    if name in (probs_n, pred_n):
        z_name = ctx.layer_input(step)
        n = index[0]
        zs = [_term(z_name, a, (n, k)) for k in range(a[z_name].shape[1])]
        z = np.array([t.value for t in zs], dtype=np.float64)
        if name == pred_n:
            best = int(np.argmax(z))
            return _prov(
                name,
                index,
                best,
                "argmax",
                f"ŷ[{n}] = argmax_k z[{n},k] = {best} (z = {', '.join(_f(v) for v in z)})",
                zs,
            )
        k = index[1]
        e = np.exp(z - z.max())
        p = float(e[k] / e.sum())
        return _prov(
            name,
            index,
            p,
            "softmax",
            f"p[{n},{k}] = e^{{z_{k}}} / Σ_j e^{{z_j}} = e^{_f(z[k])} / ({' + '.join('e^' + _f(v) for v in z)}) = {_f(p)}",
            zs,
        )
    if name == value_n:
        target = a["target"] if "target" in a else None
        if target is None:
            raise NotExplained("the labels are not stored")
        probs = a[probs_n]
        terms = [_term(probs_n, a, (n, int(target[n]))) for n in range(probs.shape[0])]
        values = np.array([t.value for t in terms], dtype=np.float64)
        loss = float(-np.log(values).mean())
        return _prov(
            name,
            index,
            loss,
            "cross-entropy",
            f"L = -(1/{len(terms)}) Σ_n log p[n, y_n] = -mean(log({', '.join(_f(v) for v in values)})) = {_f(loss)}",
            terms,
        )
    if name == onehot_n:
        n, k = index
        y = _term("target", a, (n,))
        value = 1.0 if int(y.value) == k else 0.0
        return _prov(
            name,
            index,
            value,
            "one-hot",
            f"Y[{n},{k}] = 1[y_{n} = {k}] = 1[{int(y.value)} = {k}] = {int(value)}",
            [y],
        )
    if name.endswith(".grad"):
        n, k = index
        batch = a[probs_n].shape[0]
        p, y = _term(probs_n, a, (n, k)), _term(onehot_n, a, (n, k))
        value = (np.float64(p.value) - y.value) / batch
        return _prov(
            name,
            index,
            value,
            "softmax-grad",
            f"dL/dz[{n},{k}] = (p - y)/N = ({_f(p.value)} - {_f(y.value)})/{batch} = {_f(value)}",
            [p, y],
        )
    raise NotExplained(f"no provenance for {name} in {step.title!r}")


def _update(ctx, step, name, index):
    a = ctx.arrays
    if not name.endswith(".next"):
        raise NotExplained(f"no provenance for {name} in {step.title!r}")
    param = name.removesuffix(".next")
    lr = ctx.settings.get("lr")
    if ctx.optimizer != "SGD" or lr is None:
        raise NotExplained(f"no provenance for {ctx.optimizer or 'this optimizer'}'s update yet")
    if ctx.settings.get("weight_decay") or ctx.settings.get("maximize"):
        raise NotExplained("no provenance for SGD with weight decay or maximize yet")
    w = _term(param, a, index)
    momentum = float(ctx.settings.get("momentum") or 0.0)
    direction_name = f"{param}.state.momentum_buffer" if momentum else f"{param}.grad"
    if direction_name not in a:
        raise NotExplained(f"{direction_name} is not stored")
    g = _term(direction_name, a, index)
    value = np.float32(w.value) - np.float32(lr) * np.float32(g.value)
    symbol = "v" if momentum else "g"
    return _prov(
        name,
        index,
        float(value),
        "sgd",
        f"w' = w - η {symbol} = {_f(w.value)} - {lr:g} × ({_f(g.value)}) = {_f(value)}",
        [w, g],
    )


def _dropout(ctx, step, name, index):
    a, layer = ctx.arrays, step.layer
    out_n, mask_n = f"{layer}.out", f"{layer}.mask"
    if name == mask_n:
        raise NotExplained(f"{name} is drawn at random: a given of this iteration")
    x_name = ctx.layer_input(step)
    scale = _dropout_scale(a[x_name], a[mask_n], a[out_n])
    if name == out_n:
        x, m = _term(x_name, a, index), _term(mask_n, a, index)
        value = np.float32(x.value) * np.float32(m.value) * np.float32(scale)
        text = f"x·m/(1-p) = ({_f(x.value)})({_f(m.value)})({_f(scale)}) = {_f(value)}"
        return _prov(name, index, value, "dropout", f"Y{list(index)} = {text}", [x, m])
    if name == f"{x_name}.grad":
        g, m = _term(f"{out_n}.grad", a, index), _term(mask_n, a, index)
        value = np.float32(g.value) * np.float32(m.value) * np.float32(scale)
        text = f"dL/dY·m/(1-p) = ({_f(g.value)})({_f(m.value)})({_f(scale)}) = {_f(value)}"
        return _prov(name, index, value, "dropout-grad", f"dL/dX{list(index)} = {text}", [g, m])
    raise NotExplained(f"no provenance for {name} in {step.title!r}")


def _dropout_scale(x, mask, out) -> float:
    """1/(1-p), recovered from the kept entries (p is not stored as a number)."""
    kept = (mask != 0) & (x != 0)
    if not kept.any():
        return 1.0
    return float(np.median(out[kept].astype(np.float64) / x[kept].astype(np.float64)))


def _batchnorm(ctx, step, name, index):
    a, layer = ctx.arrays, step.layer
    mean_n, var_n, xhat_n, out_n = (f"{layer}.{k}" for k in ("mean", "var", "xhat", "out"))
    w_n, b_n = f"{layer}.weight", f"{layer}.bias"
    x_name = ctx.layer_input(step)
    x = a[x_name]
    c = index[1] if len(index) > 1 else index[0]
    count = x.size // x.shape[1]  # M: the values each channel's statistics average over

    def channel(tensor):
        return [
            _term(tensor, a, (n, c, *rest))
            for n in range(x.shape[0])
            for rest in np.ndindex(*x.shape[2:])
        ]

    if name == mean_n:
        terms = channel(x_name)
        total, text = _sum_terms(terms)
        value = total / count
        return _prov(
            name,
            index,
            value,
            "bn-mean",
            f"μ[{c}] = (1/{count}) Σ x[:,{c}] = ({text})/{count} = {_f(value)}",
            terms,
        )
    mu = _term(mean_n, a, (c,))
    if name == var_n:
        terms = channel(x_name)
        values = np.array([t.value for t in terms]) - mu.value
        value = float(np.mean(values**2))
        return _prov(
            name,
            index,
            value,
            "bn-var",
            f"σ²[{c}] = (1/{count}) Σ (x[:,{c}] - μ)² with μ = {_f(mu.value)} = {_f(value)}",
            [*terms, mu],
        )
    var = _term(var_n, a, (c,))
    if name in (f"{layer}.running_mean", f"{layer}.running_var"):
        return _running(a, layer, name, c, count)
    eps = _batchnorm_eps(x, a[mean_n], a[var_n], a[xhat_n])
    root = float(np.sqrt(np.float64(var.value) + eps))
    if name == xhat_n:
        xi = _term(x_name, a, index)
        value = (xi.value - mu.value) / root
        return _prov(
            name,
            index,
            value,
            "bn-normalise",
            f"x̂{list(index)} = (x - μ)/√(σ² + ε) = ({_f(xi.value)} - {_f(mu.value)})/√({_f(var.value)} + {eps:.3g}) = {_f(value)}",
            [xi, mu, var],
        )
    if name == out_n:
        xh, g, b = _term(xhat_n, a, index), _term(w_n, a, (c,)), _term(b_n, a, (c,))
        value = g.value * xh.value + b.value
        return _prov(
            name,
            index,
            value,
            "bn-affine",
            f"y{list(index)} = γ x̂ + β = ({_f(g.value)})({_f(xh.value)}) + ({_f(b.value)}) = {_f(value)}",
            [g, xh, b],
        )
    g_n = f"{out_n}.grad"
    if name in (f"{w_n}.grad", f"{b_n}.grad"):
        gs = channel(g_n)
        if name == f"{b_n}.grad":
            total, text = _sum_terms(gs)
            return _prov(
                name, index, total, "sum", f"dL/dβ[{c}] = Σ dL/dy[:,{c}] = {text} = {_f(total)}", gs
            )
        xs = channel(xhat_n)
        total, text = _dot(gs, xs)
        return _prov(
            name,
            index,
            total,
            "bn-weight-grad",
            f"dL/dγ[{c}] = Σ dL/dy[:,{c}]·x̂[:,{c}] = {text} = {_f(total)}",
            gs + xs,
        )
    if name == f"{x_name}.grad":
        gs, xs = channel(g_n), channel(xhat_n)
        gamma = _term(w_n, a, (c,))
        dy, xh = _term(g_n, a, index), _term(xhat_n, a, index)
        sum_dy = float(np.sum([t.value for t in gs]))
        sum_dy_xhat = float(np.dot([t.value for t in gs], [t.value for t in xs]))
        value = gamma.value / (count * root) * (count * dy.value - sum_dy - xh.value * sum_dy_xhat)
        text = (
            f"γ/(M√(σ²+ε)) (M dL/dy - Σ dL/dy - x̂ Σ dL/dy·x̂) = {_f(gamma.value)}/({count}·{_f(root)})"
            f" ({count}·{_f(dy.value)} - {_f(sum_dy)} - {_f(xh.value)}·{_f(sum_dy_xhat)}) = {_f(value)}"
        )
        return _prov(
            name,
            index,
            value,
            "bn-input-grad",
            f"dL/dx{list(index)} = {text}",
            [gamma, dy, xh, *gs, *xs, var],
        )
    raise NotExplained(f"no provenance for {name} in {step.title!r}")


def _running(a, layer, name, c, count) -> Provenance:
    """running = (1 - m) running_before + m batch statistic (the variance unbiased, x M/(M-1))."""
    stat_n = f"{layer}.mean" if name.endswith("mean") else f"{layer}.var"
    before = _term(f"{name}.before", a, (c,))
    stat = _term(stat_n, a, (c,))
    # m is not stored as a number: recovered from the running means (and checked on each cell)
    rm, rb, mu = (
        a[f"{layer}.{k}"].astype(np.float64)
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
    return _prov(
        name,
        (c,),
        value,
        "bn-running",
        f"{name}[{c}] = (1 - m)·before + m·stat{unbiased} = (1 - {m:.3g})({_f(before.value)}) + {m:.3g}·{_f(stat.value)}{unbiased} = {_f(value)}",
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


_RULES = {
    "Dropout": _dropout,
    "BatchNorm2d": _batchnorm,
    "Conv2d": _conv,
    "ReLU": _relu,
    "MaxPool2d": _pool,
    "Flatten": _flatten,
    "Linear": _linear,
    "CrossEntropyLoss": _cross_entropy,
}
