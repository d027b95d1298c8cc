"""CrossEntropyLoss as softmax then negative log-likelihood, and its gradient (p - y)/N."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from storage.records import ROLE_OUTPUT

from .. import latex
from .base import Explainer, LayerCall, StepContext, Unsupported, register


def softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)  # subtracting the max changes nothing but overflow
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _check(module: nn.CrossEntropyLoss, call: LayerCall):
    if module.weight is not None:
        raise Unsupported("class weights")
    if module.label_smoothing:
        raise Unsupported("label smoothing")
    if module.reduction not in ("mean", "sum"):
        raise Unsupported(f"reduction={module.reduction!r}")
    if len(call.inputs) < 2 or call.inputs[1].dtype.kind not in "iu" or call.x.ndim != 2:
        raise Unsupported("targets that are not class indices, or logits that are not (N, C)")
    if (call.inputs[1] == module.ignore_index).any():
        raise Unsupported("targets equal to ignore_index")


@register(nn.CrossEntropyLoss)
class CrossEntropyExplainer(Explainer):
    formula = r"L = -\frac{1}{N}\sum_{n} \log \operatorname{softmax}(z_n)_{y_n}"

    def describe(self, module: nn.CrossEntropyLoss) -> str:
        return f"softmax + negative log-likelihood, {module.reduction} over the batch"

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        module: nn.CrossEntropyLoss = call.module
        _check(module, call)
        z = call.x.astype(np.float64)  # (N, C) logits
        y = call.inputs[1].astype(np.int64)  # (N,) class indices
        n = z.shape[0]
        p = softmax(z)
        probs_name = ctx.tensor("probs", p, role=ROLE_OUTPUT)
        pred_name = ctx.tensor("predicted", p.argmax(axis=1).astype(np.int64), role=ROLE_OUTPUT)
        ctx.step(
            "Softmax: logits to probabilities",
            r"p_{n,k} = \frac{e^{z_{n,k}}}{\sum_j e^{z_{n,j}}}",
            rf"z = {latex.bmatrix(z if n > 1 else z[0])} \;\Rightarrow\; p = {latex.bmatrix(p if n > 1 else p[0])}"
            rf",\quad \hat y = {latex.bmatrix(p.argmax(axis=1)) if n > 1 else int(p[0].argmax())}",
            inputs=[call.input_names[0]],
            outputs=[probs_name, pred_name],
            checks=[(p, torch.softmax(torch.from_numpy(call.x), dim=1).numpy(), "torch.softmax of the logits")],
            note="Each row of probabilities sums to 1; the predicted class is the largest.",
        )
        picked = p[np.arange(n), y]
        mean = module.reduction == "mean"
        loss = -np.log(picked).sum() / (n if mean else 1)
        terms = " ".join(
            f"{'-' if k == 0 else '+'} \\log {latex.scalar(v)}" for k, v in enumerate(picked[:6])
        ) + (r" + \cdots" if n > 6 else "")
        scale = (rf"\frac{{1}}{{{n}}}" if n > 1 else "") if mean else ""
        ctx.step(
            "Cross-entropy loss",
            (r"L = -\frac{1}{N} \sum_{n=1}^{N} \log p_{n, y_n}" if mean else r"L = -\sum_{n} \log p_{n,y_n}"),
            rf"y = {latex.bmatrix(y) if n > 1 else int(y[0])},\quad L = {scale}\big({terms}\big) = {latex.scalar(loss)}",
            inputs=[probs_name, call.input_names[1]],
            outputs=[call.output_name],
            checks=[(np.asarray(loss).reshape(call.output.shape), call.output, "PyTorch loss value")],
            note="Only the probability of the true class enters the loss."
            + (f" The mean over the batch divides by N = {n}." if mean and n > 1 else ""),
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        module: nn.CrossEntropyLoss = call.module
        z = call.x.astype(np.float64)
        y = call.inputs[1].astype(np.int64)
        n, k = z.shape
        p = softmax(z)
        onehot = np.eye(k)[y]
        upstream = float(np.asarray(call.grad_output, dtype=np.float64).reshape(-1)[0])
        factor = upstream / (n if module.reduction == "mean" else 1)
        dz = (p - onehot) * factor
        onehot_name = ctx.tensor("onehot", onehot.astype(np.float32))
        scale = rf"\frac{{1}}{{{n}}}" if module.reduction == "mean" and n > 1 else ""
        ctx.step(
            "Gradient of the loss with respect to the logits",
            r"\frac{\partial L}{\partial z} = \frac{1}{N}\big(p - \operatorname{onehot}(y)\big)",
            rf"{scale}\Big({latex.bmatrix(p if n > 1 else p[0])} - {latex.bmatrix(onehot if n > 1 else onehot[0])}\Big)"
            rf" = {latex.bmatrix(dz if n > 1 else dz[0])}",
            inputs=[f"{call.name}.probs", onehot_name],
            outputs=[call.grad_input_names[0]],
            checks=[(dz, call.grad_inputs[0], "autograd dL/dz")],
            note="Softmax and cross-entropy together have this simple gradient: the predicted "
            "probabilities minus the one-hot target"
            + (f", divided by the batch size N = {n} because the loss is a mean." if n > 1 and module.reduction == "mean" else "."),
        )
