"""Where paths meet: the elementwise sum z = x + αy (residual connections), and the
gradient of a tensor or parameter used more than once, which is the sum over its
uses of the part that came back through each (`X.grad = Σ_u X.grad@u`)."""

from __future__ import annotations

import numpy as np

from .. import names
from .core import (
    Context,
    Missing,
    cell,
    fmt,
    layer_rule,
    prov,
    sum_terms,
    term,
    unknown,
)


def _operand_index(index, shape) -> tuple[int, ...]:
    """The cell of a broadcast operand that output cell `index` read."""
    lead = len(index) - len(shape)
    return tuple(0 if d == 1 else i for i, d in zip(index[lead:], shape))


def _recover_alpha(x, y, z) -> float:
    x, y, z = (np.asarray(v, dtype=np.float64) for v in (x, y, z))
    y = np.broadcast_to(y, z.shape)
    used = np.abs(y) > 1e-6
    if not used.any():
        return 1.0
    alpha = float(np.median((z - np.broadcast_to(x, z.shape))[used] / y[used]))
    return 1.0 if abs(alpha - 1.0) < 1e-4 else alpha


def _recover_form(a, out_n, x_n, y_n) -> tuple[str, float, float]:
    """("two", α, _) for x + αy, ("same", α, _) for x + αx, ("constant", 1, c) for x + c,
    recovered from the whole stored tensors (none of them is a stored number)."""
    z = np.asarray(a[out_n], dtype=np.float64)
    x = np.asarray(a[x_n], dtype=np.float64)
    if y_n is not None:
        return "two", _recover_alpha(x, a[y_n], z), 0.0
    diff = z - np.broadcast_to(x, z.shape)
    if np.allclose(diff, diff.reshape(-1)[0], rtol=1e-5, atol=1e-6):
        return "constant", 1.0, float(np.median(diff))
    return "same", _recover_alpha(x, x, z), 0.0  # x + αx: both operands are one tensor


@layer_rule("Add")
def add(ctx: Context, step, name, index):
    a, layer = ctx.arrays, step.layer
    out_n = names.output(layer)
    inputs = ctx.layer_inputs(layer)
    x_n = inputs[0]
    y_n = inputs[1] if len(inputs) > 1 else None
    constant = alpha = 1.0
    try:
        form, alpha, constant = _recover_form(a, out_n, x_n, y_n)
    except Missing:  # truncated: the forward step's formula says whether α is 1
        formulas = {s.formula for s in ctx.forward_steps(layer)}
        if "Z = X + Y" not in formulas or y_n is None:
            raise
        form = "two"
    out_grad = names.grad(out_n)
    scaled = lambda v: "" if v == 1.0 else f"{fmt(v)}·"  # noqa: E731
    if name == out_n:
        xi = term(x_n, a, _operand_index(index, a[x_n].shape))
        if form == "constant":
            value = np.float64(xi.value) + constant
            return prov(
                name,
                index,
                value,
                "add",
                f"Z{cell(index)} = X + c = {fmt(xi.value)} + {fmt(constant)} = {fmt(value)}",
                [xi],
            )
        if form == "same":
            value = (1 + alpha) * np.float64(xi.value)
            return prov(
                name,
                index,
                value,
                "add",
                f"Z{cell(index)} = X + {scaled(alpha)}X = {fmt(xi.value)} + {scaled(alpha)}{fmt(xi.value)} = {fmt(value)}",
                [xi],
            )
        yi = term(y_n, a, _operand_index(index, a[y_n].shape))
        value = np.float64(xi.value) + alpha * yi.value
        return prov(
            name,
            index,
            value,
            "add",
            f"Z{cell(index)} = X{cell(xi.index)} + {scaled(alpha)}Y{cell(yi.index)} = {fmt(xi.value)} + {scaled(alpha)}({fmt(yi.value)}) = {fmt(value)}",
            [xi, yi],
        )
    for operand, factor in (
        (x_n, 1.0 if form != "same" else 1.0 + alpha),
        (y_n, alpha if form == "two" else None),
    ):
        if operand is None or not ctx.is_grad_of(name, operand, layer):
            continue
        shape = a[operand].shape
        g = a[out_grad]
        cells = [c for c in np.ndindex(*g.shape) if _operand_index(c, shape) == tuple(index)]
        gs = [term(out_grad, a, c) for c in cells]
        total, text = sum_terms(gs)
        value = factor * total
        what = (
            f"Σ over the {len(cells)} positions it was broadcast to of dL/dZ = {text}"
            if len(cells) > 1
            else f"dL/dZ{cell(cells[0])} = {text}"
        )
        return prov(
            name,
            index,
            value,
            "add-grad",
            f"dL/d{'X' if operand == x_n else 'Y'}{cell(index)} = {scaled(factor)}{what} = {fmt(value)}"
            + (" (X is both operands)" if form == "same" else ""),
            gs,
        )
    raise unknown(name, step)


def is_sum_step(step, name: str) -> bool:
    """The step that adds up the parts of `name` (a gradient of a tensor used more than once)."""
    parsed = names.parse(name)
    if parsed.kind != names.KIND_GRAD or name not in step.outputs or not step.inputs:
        return False
    return all(
        (p := names.parse(i)).kind == names.KIND_GRAD_PART and p.of == parsed.of
        for i in step.inputs
    )


def sum_of_parts(ctx: Context, step, name, index):
    parts = [term(i, ctx.arrays, index) for i in step.inputs]
    total, text = sum_terms(parts)
    uses = [names.parse(p.tensor).use for p in parts]
    return prov(
        name,
        index,
        total,
        "sum-of-uses",
        f"dL/d{names.parse(name).of}{cell(index)} = Σ over its {len(parts)} uses ({', '.join(uses)}) = {text} = {fmt(total)}",
        parts,
    )
