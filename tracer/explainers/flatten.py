"""Flatten: a reshape, forward and backward, with its index mapping."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from storage.npmath import flatten

from .. import latex
from .base import Explainer, Functional, LayerCall, StepContext, register
from .common import sub


def _indices(merged_dims: int) -> str:
    """The subscript of A that the index rule k = ... reads."""
    return {1: "i", 2: "i,j", 3: "c,i,j"}.get(merged_dims, r"i_1,\ldots,i_D")


def _flatten(input, start_dim=0, end_dim=-1):  # noqa: A002
    """torch.flatten, x.flatten()"""


def _reshape(input, *shape, **_kw):  # noqa: A002
    """x.view(...), x.reshape(...), torch.reshape(x, shape)"""


def _build_reshape(module_type, a, out):
    """x.view(N, -1) and friends are a Flatten when they merge one run of dimensions."""
    shape, new = tuple(a["input"].shape), tuple(out.shape)
    if shape == new and shape:
        return nn.Flatten(0, 0), [a["input"]], {}
    for start in range(len(shape)):
        for end in range(start + 1, len(shape)):
            merged = shape[:start] + (math.prod(shape[start : end + 1]),) + shape[end + 1 :]
            if merged == new:
                return nn.Flatten(start, end), [a["input"]], {}
    return None


@register(
    nn.Flatten,
    functional=[
        Functional((torch.flatten, torch.Tensor.flatten), _flatten),
        Functional(
            (torch.Tensor.view, torch.Tensor.reshape, torch.reshape), _reshape, _build_reshape
        ),
    ],
)
class FlattenExplainer(Explainer):
    formula = r"x_{k} = A_{c,i,j},\quad k = c\,HW + i\,W + j"

    def per_sample(self, call) -> bool:
        return call.x.ndim >= 2 and call.module.start_dim % call.x.ndim != 0

    def describe(self, module: nn.Flatten) -> str:
        return f"reshape dims {module.start_dim}..{module.end_dim} into one (row-major order)"

    def _shapes(self, call: LayerCall):
        module: nn.Flatten = call.module
        shape = call.x.shape
        start = module.start_dim % len(shape)
        end = module.end_dim % len(shape)
        return shape, start, end

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        shape, start, end = self._shapes(call)
        new_shape = shape[:start] + (int(np.prod(shape[start : end + 1])),) + shape[end + 1 :]
        out = flatten(call.x, start, end)  # the same values, shape new_shape
        inner = shape[start : end + 1]
        index_rule = {
            1: r"k = i",
            2: r"k = i\,W + j",
            3: r"k = c\,HW + i\,W + j",
        }.get(len(inner), r"k = \textstyle\sum_d i_d \prod_{e > d} n_e")
        a_view, where = latex.as_matrix(call.x)
        out_view, out_where = latex.as_matrix(out)
        ctx.step(
            "Flatten",
            rf"x_k = A_{{{_indices(len(inner))}}},\quad {index_rule}",
            rf"A{sub(where)} = {latex.bmatrix(a_view)} \;\Rightarrow\; "
            rf"x{sub(out_where)} = {latex.bmatrix(out_view)}",
            inputs=[call.input_names[0]],
            outputs=[call.output_name],
            checks=[(out, call.output, "PyTorch flatten output")],
            note=f"Shape {tuple(shape)} becomes {tuple(new_shape)}: dims {start}..{end} merge into one, "
            f"read row by row (row-major), so element {tuple(0 for _ in inner)} of the merged dims is "
            f"x_0 and the last is x_{int(np.prod(inner)) - 1}. No number changes.",
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        shape, start, end = self._shapes(call)
        indices = _indices(end - start + 1)
        dx = call.grad_output.reshape(shape)
        dx_view, where = latex.as_matrix(dx)
        ctx.step(
            "Unflatten the gradient",
            rf"\frac{{\partial L}}{{\partial A_{{{indices}}}}} = \frac{{\partial L}}{{\partial x_k}}"
            r"\quad\text{(the inverse reshape)}",
            rf"\frac{{\partial L}}{{\partial A}}{sub(where)} = {latex.bmatrix(dx_view)}",
            inputs=[call.grad_output_name],
            outputs=[call.grad_input_names[0]],
            checks=[(dx, call.grad_inputs[0], "autograd dL/dA")],
            note="Each gradient entry goes back to the position its value came from.",
        )
