"""Elementwise activations: forward value and local derivative side by side."""

from __future__ import annotations

import numpy as np
from torch import nn

from .. import latex
from .base import Explainer, LayerCall, StepContext, register


def _slot(where: str) -> str:
    return f"_{{{where}}}" if where else ""


@register(nn.ReLU)
class ReLUExplainer(Explainer):
    formula = r"A = \max(0, Z)"

    def describe(self, module) -> str:
        return "rectified linear unit, elementwise max(0, z)" + (
            " (in place)" if getattr(module, "inplace", False) else ""
        )

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        z = call.x.astype(np.float64)
        mask = (z > 0).astype(np.float32)
        a = np.maximum(z, 0.0)
        mask_name = ctx.tensor("mask", mask)
        z_view, where = latex.as_matrix(z)
        ctx.step(
            "ReLU",
            r"A = \max(0, Z), \qquad M = \mathbb{1}[Z > 0]",
            rf"Z{_slot(where)} = {latex.bmatrix(z_view)} \;\Rightarrow\; "
            rf"A = {latex.bmatrix(latex.as_matrix(a)[0])}, \quad M = {latex.bmatrix(latex.as_matrix(mask)[0])}",
            inputs=[call.input_names[0]],
            outputs=[call.output_name, mask_name],
            checks=[(a, call.output, "PyTorch relu output")],
            note="Negative entries become 0. The mask M remembers where Z was positive; "
            "backward uses it.",
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        z = call.x.astype(np.float64)
        mask = (z > 0).astype(np.float64)
        da = call.grad_output.astype(np.float64)
        dz = da * mask
        zeros = int((z == 0).sum())
        ctx.step(
            "ReLU backward",
            r"\frac{\partial L}{\partial Z} = \frac{\partial L}{\partial A} \odot \mathbb{1}[Z > 0]",
            rf"{latex.bmatrix(latex.as_matrix(da)[0])} \odot {latex.bmatrix(latex.as_matrix(mask)[0])}"
            rf" = {latex.bmatrix(latex.as_matrix(dz)[0])}",
            inputs=[call.grad_output_name, f"{call.name}.mask"],
            outputs=[call.grad_input_names[0]],
            checks=[(dz, call.grad_inputs[0], "autograd dL/dZ")],
            note="Gradient passes where Z > 0 and stops where the unit was off."
            + (
                f" {zeros} entr{'y is' if zeros == 1 else 'ies are'} exactly 0: PyTorch's "
                "derivative there is 0, and so is ours."
                if zeros
                else ""
            ),
        )
