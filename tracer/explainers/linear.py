"""Linear: z = W x + b and its three gradients.

For a single sample the formulas use column vectors, as in textbooks; for a
batch of N the rows of X are samples and Z = X W^T + b.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from storage.npmath import linear_backward, linear_forward

from .. import latex
from .base import Explainer, Functional, LayerCall, StepContext, register

d = r"\partial L"


def _linear(input, weight, bias=None):  # noqa: A002
    """F.linear"""


def _build_linear(module_type, a, out):
    w, b = a["weight"], a["bias"]
    module = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    return module, [a["input"]], {k: t for k, t in (("weight", w), ("bias", b)) if t is not None}


@register(nn.Linear, functional=[Functional((F.linear,), _linear, _build_linear)])
class LinearExplainer(Explainer):
    formula = r"z = W x + b"

    def per_sample(self, call) -> bool:
        return call.x.ndim >= 2  # each row x_n on its own

    def describe(self, module: nn.Linear) -> str:
        bias = "" if module.bias is not None else ", no bias"
        return f"fully connected, {module.in_features} -> {module.out_features} features{bias}"

    @staticmethod
    def _flat(call: LayerCall):
        x = call.x.astype(np.float64)
        return x.reshape(-1, x.shape[-1])  # (..., in) -> (N, in)

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        x = self._flat(call)
        w = call.params["weight"].astype(np.float64)  # (out, in)
        b = call.params["bias"].astype(np.float64) if "bias" in call.params else None
        z = linear_forward(x, w, b)  # (N, in) -> (N, out)
        bias_names = [call.param_names.get("bias")]
        if x.shape[0] == 1:
            formula = r"z = W x" + (" + b" if b is not None else "")
            values = rf"{latex.bmatrix(w)} {latex.bmatrix(x[0])}"
            values += rf" + {latex.bmatrix(b)}" if b is not None else ""
            values += rf" = {latex.bmatrix(z[0])}"
        else:
            formula = r"Z = X W^{\top}" + (" + \\mathbf{1} b^{\\top}" if b is not None else "")
            values = rf"{latex.bmatrix(x)} {latex.bmatrix(w.T)}"
            values += rf" + {latex.row_vector(b)}" if b is not None else ""
            values += rf" = {latex.bmatrix(z)}"
        ctx.step(
            "Linear layer",
            formula,
            values,
            inputs=[call.input_names[0], call.param_names["weight"], *bias_names],
            outputs=[call.output_name],
            checks=[(z.reshape(call.output.shape), call.output, "PyTorch linear output")],
            note="Row k of W holds the weights of output unit k."
            + (
                " Each row of X is one sample; b is added to every row."
                if x.shape[0] > 1
                else " As in textbooks, x and z are written as columns here; the stored tensors "
                "(and their heatmaps) hold them as 1-row matrices, one row per sample."
            ),
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        x = self._flat(call)
        w = call.params["weight"].astype(np.float64)
        dz = call.grad_output.astype(np.float64).reshape(-1, w.shape[0])  # (N, out)
        dw, db, dx = linear_backward(x, w, dz)  # (out, in), (out,), (N, in)
        single = x.shape[0] == 1
        if single:
            dw_formula = rf"\frac{{{d}}}{{\partial W}} = \frac{{{d}}}{{\partial z}}\, x^{{\top}}"
            dw_values = rf"{latex.bmatrix(dz[0])} {latex.row_vector(x[0])} = {latex.bmatrix(dw)}"
        else:
            dw_formula = (
                rf"\frac{{{d}}}{{\partial W}} = \Big(\frac{{{d}}}{{\partial Z}}\Big)^{{\top}} X"
            )
            dw_values = rf"{latex.bmatrix(dz.T)} {latex.bmatrix(x)} = {latex.bmatrix(dw)}"
        ctx.step(
            "Gradient of the weights",
            dw_formula,
            dw_values,
            inputs=[call.grad_output_name, call.input_names[0]],
            outputs=[call.param_grad_names.get("weight")],
            checks=[ctx.param_grad("weight", dw)],
            note="An outer product: entry (k, j) is the upstream gradient of unit k times input j"
            + ("." if single else ", summed over the samples of the batch."),
        )
        if "bias" in call.params:
            ctx.step(
                "Gradient of the bias",
                rf"\frac{{{d}}}{{\partial b}} = "
                + (
                    rf"\frac{{{d}}}{{\partial z}}"
                    if single
                    else rf"\sum_n \frac{{{d}}}{{\partial Z_{{n,:}}}}"
                ),
                rf"\frac{{{d}}}{{\partial b}} = {latex.bmatrix(db)}",
                inputs=[call.grad_output_name],
                outputs=[call.param_grad_names.get("bias")],
                checks=[ctx.param_grad("bias", db)],
            )
        if single:
            dx_formula = rf"\frac{{{d}}}{{\partial x}} = W^{{\top}} \frac{{{d}}}{{\partial z}}"
            dx_values = rf"{latex.bmatrix(w.T)} {latex.bmatrix(dz[0])} = {latex.bmatrix(dx[0])}"
        else:
            dx_formula = rf"\frac{{{d}}}{{\partial X}} = \frac{{{d}}}{{\partial Z}}\, W"
            dx_values = rf"{latex.bmatrix(dz)} {latex.bmatrix(w)} = {latex.bmatrix(dx)}"
        ctx.step(
            "Gradient of the input",
            dx_formula,
            dx_values,
            inputs=[call.grad_output_name, call.param_names["weight"]],
            outputs=[call.grad_input_names[0]],
            checks=[(dx.reshape(call.x.shape), call.grad_inputs[0], "autograd dL/dx")],
            note="This is what flows back to the previous layer.",
        )
