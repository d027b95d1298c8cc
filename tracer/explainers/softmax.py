"""Softmax and LogSoftmax along any dimension, with the Jacobian-vector products
written out instead of the full Jacobian.

Softmax's Jacobian is diag(p) - p p^T for each slice along `dim`, so
    dZ = J^T dP = p ⊙ (dP - <dP, p>)
and LogSoftmax's is I - 1 p^T, so
    dZ = dY - p * sum(dY).
Neither needs the C x C matrix. The slices are shown with `dim` moved last:
one row per slice.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from storage.npmath import log_softmax, softmax  # noqa: F401 (re-exported)

from .. import latex
from .base import Explainer, Functional, LayerCall, StepContext, register
from .common import f64


def softmax_dim(module, ndim: int) -> int:
    """The dimension the module normalises over; dim=None follows PyTorch's legacy rule."""
    if module.dim is not None:
        return module.dim % max(ndim, 1)
    return 0 if ndim in (0, 1, 3) else 1


def rows(array: np.ndarray, dim: int) -> np.ndarray:
    """(..., C at dim, ...) -> (slices, C): one row per slice along `dim`."""
    if array.ndim == 0:
        return array.reshape(1, 1)
    moved = np.moveaxis(array, dim, -1)
    return moved.reshape(-1, moved.shape[-1])


def _dim_words(dim: int, ndim: int) -> str:
    if ndim <= 1:
        return "over the whole vector"
    return f"along dim {dim} (each row below is one slice along dim {dim})"


def _softmax_f(input, dim=None, _stacklevel=3, dtype=None):  # noqa: A002
    """F.softmax, F.log_softmax"""


def _softmax_t(input, dim, dtype=None):  # noqa: A002
    """torch.softmax, x.softmax(), and their log_ twins"""


def _build_softmax(module_type, a, out):
    if a["dim"] is None or a["dtype"] is not None:
        return None  # the implicit dim is deprecated guesswork; a dtype casts first
    return module_type(dim=a["dim"]), [a["input"]], {}


@register(
    nn.Softmax,
    functional=[
        Functional((F.softmax,), _softmax_f, _build_softmax),
        Functional((torch.softmax, torch.Tensor.softmax), _softmax_t, _build_softmax),
    ],
)
class SoftmaxExplainer(Explainer):
    formula = r"p_k = \frac{e^{z_k}}{\sum_j e^{z_j}}"

    def per_sample(self, call) -> bool:
        return call.x.ndim >= 2 and softmax_dim(call.module, call.x.ndim) != 0

    def describe(self, module) -> str:
        return (
            f"softmax along dim {module.dim}"
            if module.dim is not None
            else "softmax (implicit dim)"
        )

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        z = f64(call.x)
        dim = softmax_dim(call.module, z.ndim)
        p = softmax(z, axis=dim) if z.ndim else np.ones_like(z)
        z_rows, p_rows = rows(z, dim), rows(p, dim)
        ctx.step(
            "Softmax",
            r"p_k = \frac{e^{z_k - m}}{\sum_j e^{z_j - m}},\quad m = \max_j z_j",
            rf"{latex.bmatrix(z_rows)} \;\Rightarrow\; {latex.bmatrix(p_rows)},"
            rf"\quad \textstyle\sum_k p_k = {latex.bmatrix(p_rows.sum(axis=1))}",
            inputs=[call.input_names[0]],
            outputs=[call.output_name],
            checks=[(p, call.output, "PyTorch softmax output")],
            note=f"Normalised {_dim_words(dim, z.ndim)}: every slice becomes positive and sums to 1. "
            "Subtracting the slice maximum m first changes nothing mathematically and keeps exp from overflowing.",
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        z = f64(call.x)
        dim = softmax_dim(call.module, z.ndim)
        p = softmax(z, axis=dim) if z.ndim else np.ones_like(z)
        dp = f64(call.grad_output)
        inner = (dp * p).sum(axis=dim, keepdims=True) if z.ndim else dp * p  # <dP, p> per slice
        dz = p * (dp - inner)
        inner_name = ctx.tensor("dot_dp_p", np.squeeze(inner, axis=dim) if z.ndim else inner)
        ctx.step(
            "Softmax backward (Jacobian-vector product)",
            r"\frac{\partial L}{\partial z} = p \odot \Big(\frac{\partial L}{\partial p} - \Big\langle \frac{\partial L}{\partial p}, p \Big\rangle\Big)",
            rf"p = {latex.bmatrix(rows(p, dim))},\quad \frac{{\partial L}}{{\partial p}} = {latex.bmatrix(rows(dp, dim))},"
            rf"\quad \langle \cdot,\cdot \rangle = {latex.bmatrix(rows(inner, dim))}"
            rf"\;\Rightarrow\; \frac{{\partial L}}{{\partial z}} = {latex.bmatrix(rows(dz, dim))}",
            inputs=[call.output_name, call.grad_output_name],
            outputs=[inner_name, call.grad_input_names[0]],
            checks=[(dz, call.grad_inputs[0], "autograd dL/dz")],
            note="The Jacobian of one slice is diag(p) - p p^T; multiplying it by dL/dp gives "
            "p ⊙ (dL/dp - <dL/dp, p>), so the C x C matrix is never formed. Adding the same "
            "constant to every dL/dp of a slice changes nothing: softmax is invariant to shifts.",
        )


@register(
    nn.LogSoftmax,
    functional=[
        Functional((F.log_softmax,), _softmax_f, _build_softmax),
        Functional((torch.log_softmax, torch.Tensor.log_softmax), _softmax_t, _build_softmax),
    ],
)
class LogSoftmaxExplainer(Explainer):
    formula = r"y_k = z_k - \log \sum_j e^{z_j}"

    def per_sample(self, call) -> bool:
        return call.x.ndim >= 2 and softmax_dim(call.module, call.x.ndim) != 0

    def describe(self, module) -> str:
        return (
            f"log-softmax along dim {module.dim}"
            if module.dim is not None
            else "log-softmax (implicit dim)"
        )

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        z = f64(call.x)
        dim = softmax_dim(call.module, z.ndim)
        y = log_softmax(z, axis=dim) if z.ndim else np.zeros_like(z)
        m = z.max(axis=dim, keepdims=True) if z.ndim else z
        lse = (m + np.log(np.exp(z - m).sum(axis=dim, keepdims=True))) if z.ndim else z
        lse_name = ctx.tensor("logsumexp", np.squeeze(lse, axis=dim) if z.ndim else lse)
        ctx.step(
            "LogSoftmax",
            r"y_k = z_k - \operatorname{LSE}(z),\quad \operatorname{LSE}(z) = m + \log \sum_j e^{z_j - m},\ m = \max_j z_j",
            rf"{latex.bmatrix(rows(z, dim))} - {latex.bmatrix(rows(lse, dim))} = {latex.bmatrix(rows(y, dim))}",
            inputs=[call.input_names[0]],
            outputs=[lse_name, call.output_name],
            checks=[(y, call.output, "PyTorch log_softmax output")],
            note=f"The log of softmax, computed {_dim_words(dim, z.ndim)} without forming the "
            "probabilities, so very negative log-probabilities stay exact instead of log(0).",
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        z = f64(call.x)
        dim = softmax_dim(call.module, z.ndim)
        p = softmax(z, axis=dim) if z.ndim else np.ones_like(z)
        dy = f64(call.grad_output)
        total = dy.sum(axis=dim, keepdims=True) if z.ndim else dy
        dz = dy - p * total
        ctx.step(
            "LogSoftmax backward",
            r"\frac{\partial L}{\partial z} = \frac{\partial L}{\partial y} - p \sum_k \frac{\partial L}{\partial y_k},\quad p = e^{y}",
            rf"{latex.bmatrix(rows(dy, dim))} - {latex.bmatrix(rows(p, dim))} \odot {latex.bmatrix(rows(total, dim))}"
            rf" = {latex.bmatrix(rows(dz, dim))}",
            inputs=[call.grad_output_name, call.output_name],
            outputs=[call.grad_input_names[0]],
            checks=[(dz, call.grad_inputs[0], "autograd dL/dz")],
            note="The Jacobian of one slice is I - 1 p^T, so the backward pass subtracts the "
            "probabilities times the slice's total upstream gradient.",
        )
