"""Elementwise sum z = x + y: forward, and a backward that hands dz to both operands,
summed back over the dimensions that broadcasting stretched.

`Add` is also a module: the tracer uses it for `x + y`, `torch.add` and `x += y`
written in a forward (residual connections), and a model may use it directly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import latex
from .base import Explainer, Functional, LayerCall, StepContext, register


class Add(nn.Module):
    """z = x + alpha * y, or z = x + alpha * constant when there is no second tensor."""

    def __init__(self, alpha: float = 1.0, constant: float | None = None):
        super().__init__()
        self.alpha = alpha
        self.constant = constant

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.add(x, self.constant if y is None else y, alpha=self.alpha)

    def extra_repr(self) -> str:
        parts = [] if self.alpha == 1 else [f"alpha={self.alpha}"]
        if self.constant is not None:
            parts.append(f"constant={self.constant}")
        return ", ".join(parts)


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum a gradient of the broadcast shape back to an operand's `shape`: over the
    leading dimensions the operand did not have, and over those where it had size 1
    (each of its entries was used once per position it was stretched over)."""
    extra = grad.ndim - len(shape)
    g = grad.sum(axis=tuple(range(extra))) if extra > 0 else grad
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _view(array: np.ndarray) -> str:
    return latex.bmatrix(latex.as_matrix(array)[0])


def _where(array: np.ndarray) -> str:
    where = latex.as_matrix(array)[1]
    return f"_{{{where}}}" if where else ""


def _add(input, other, *, alpha=1):  # noqa: A002
    """torch.add, x + y, x += y, x.add_(y)"""


def _build_add(module_type, a, out):
    x, other, alpha = a["input"], a["other"], a["alpha"]
    if torch.is_tensor(other):
        return Add(alpha=alpha), [x, other], {}
    if isinstance(other, (int, float)) and not isinstance(other, bool):
        return Add(alpha=alpha, constant=float(other)), [x], {}
    return None


_ADDS = (
    torch.add,
    torch.Tensor.add,
    torch.Tensor.add_,
    torch.Tensor.__add__,
    torch.Tensor.__radd__,
    torch.Tensor.__iadd__,
)


@register(Add, functional=[Functional(_ADDS, _add, _build_add)])
class AddExplainer(Explainer):
    formula = r"Z = X + Y"

    def per_sample(self, call) -> bool:
        return True  # element by element

    def describe(self, module: Add) -> str:
        scale = "" if module.alpha == 1 else f"{module.alpha:g} * "
        if module.constant is not None:
            return f"add the constant {scale}{module.constant:g} to every entry"
        return f"elementwise sum x + {scale}y (broadcasting the smaller operand)"

    @staticmethod
    def _operands(call: LayerCall):
        module: Add = call.module
        x = call.inputs[0].astype(np.float64)
        if len(call.inputs) > 1:
            y = call.inputs[1].astype(np.float64)
        else:
            y = np.asarray(module.constant, dtype=np.float64)
        return x, y, float(module.alpha)

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        x, y, alpha = self._operands(call)
        z = x + alpha * y
        a = "" if alpha == 1 else rf"{latex.scalar(alpha)}\,"
        if len(call.inputs) == 1:
            formula = rf"Z = X + {a}c"
            values = rf"{_view(x)} + {a}{latex.scalar(float(y))} = {_view(z)}"
            note = "The same number is added to every entry."
        else:
            formula = rf"Z = X + {a}Y"
            values = rf"X{_where(x)} = {_view(x)},\quad Y{_where(y)} = {_view(y)}"
            values += rf"\;\Rightarrow\; Z{_where(z)} = {_view(z)}"
            note = "Entries at the same position are added."
            if x.shape != y.shape:
                note += (
                    f" The shapes differ, {tuple(x.shape)} and {tuple(y.shape)}: the operand with "
                    f"fewer entries is repeated (broadcast) to {tuple(z.shape)} first."
                )
            if call.input_names[0] == call.input_names[1]:
                note += " Both operands are the same tensor."
        ctx.step(
            "Elementwise sum",
            formula,
            values,
            inputs=list(dict.fromkeys(call.input_names)),
            outputs=[call.output_name],
            checks=[(z.reshape(call.output.shape), call.output, "PyTorch add output")],
            note=note,
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        x, y, alpha = self._operands(call)
        dz = call.grad_output.astype(np.float64)
        dx = unbroadcast(dz, x.shape)
        d = r"\frac{\partial L}{\partial Z}"
        if len(call.inputs) > 1 and call.input_names[0] == call.input_names[1]:
            # x + x: autograd adds both uses into one gradient of x.
            total = dx + alpha * unbroadcast(dz, y.shape)
            ctx.step(
                "Sum backward: both operands are the same tensor",
                rf"\frac{{\partial L}}{{\partial X}} = (1 + \alpha)\, {d}",
                rf"(1 + {latex.scalar(alpha)})\, {_view(dz)} = {_view(total)}",
                inputs=[call.grad_output_name],
                outputs=[call.grad_input_names[0]],
                checks=[(total, call.grad_inputs[0], "autograd dL/dX")],
                note="X appears twice in the sum, so it receives the upstream gradient twice.",
            )
            return
        self._operand_step(ctx, call, "X", 0, dz, dx, 1.0)
        if len(call.inputs) > 1:
            self._operand_step(ctx, call, "Y", 1, dz, alpha * unbroadcast(dz, y.shape), alpha)

    @staticmethod
    def _operand_step(ctx, call, symbol, position, dz, grad, alpha) -> None:
        d = r"\frac{\partial L}{\partial Z}"
        scale = "" if alpha == 1 else rf"{latex.scalar(alpha)}\,"
        reduced = grad.shape != dz.shape
        if reduced:
            formula = rf"\frac{{\partial L}}{{\partial {symbol}}} = {scale}\sum_{{\text{{broadcast axes}}}} {d}"
            note = (
                f"{symbol} was broadcast from {tuple(grad.shape)} to {tuple(dz.shape)}, so each of its "
                "entries collects the upstream gradient of every position it was copied to."
            )
        else:
            formula = rf"\frac{{\partial L}}{{\partial {symbol}}} = {scale}{d}"
            note = "The derivative of a sum with respect to each term is 1: the gradient passes through unchanged."
        ctx.step(
            f"Sum backward to {symbol} ({call.input_names[position]})",
            formula,
            rf"\frac{{\partial L}}{{\partial {symbol}}}{_where(grad)} = {_view(grad)}",
            inputs=[call.grad_output_name],
            outputs=[call.grad_input_names[position]],
            checks=[(grad, call.grad_inputs[position], f"autograd dL/d{symbol}")],
            note=note,
        )
