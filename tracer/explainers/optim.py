"""Optimizer updates written out per parameter, with the optimizer's state.

An update explainer gets an `UpdateCall`: one parameter's value before the
step, its gradient, the optimizer state before and after, the value after,
and the hyperparameters of its parameter group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from storage.records import ROLE_OPTIMIZER_STATE

from .. import latex
from .base import Explainer, StepContext, Unsupported, register


@dataclass
class UpdateCall:
    name: str  # the parameter's stored name, e.g. "conv.weight"
    layer: str  # the module that owns it, e.g. "conv"
    optimizer: Any
    group: dict  # hyperparameters of the parameter's group
    value: np.ndarray  # before the step
    grad: np.ndarray
    value_after: np.ndarray
    state_before: dict[str, np.ndarray] = field(default_factory=dict)
    state_after: dict[str, np.ndarray] = field(default_factory=dict)
    value_name: str = ""
    grad_name: str = ""
    value_after_name: str = ""


@register(torch.optim.SGD)
class SGDExplainer(Explainer):
    formula = r"W' = W - \eta\, \nabla_W L"

    def describe(self, optimizer) -> str:
        g = optimizer.param_groups[0]
        parts = [f"lr={g['lr']}"]
        for key in ("momentum", "dampening", "weight_decay"):
            if g.get(key):
                parts.append(f"{key}={g[key]}")
        if g.get("nesterov"):
            parts.append("nesterov")
        return "SGD(" + ", ".join(parts) + ")"

    def update(self, call: UpdateCall, ctx: StepContext) -> None:
        g = call.group
        if g.get("maximize"):
            raise Unsupported("maximize=True")
        lr, mu, wd = float(g["lr"]), float(g.get("momentum", 0.0)), float(g.get("weight_decay", 0.0))
        damp, nesterov = float(g.get("dampening", 0.0)), bool(g.get("nesterov", False))
        w = call.value.astype(np.float64)
        grad = call.grad.astype(np.float64)
        sym = call.name
        eta = latex.scalar(lr)
        direction = grad
        inputs = [call.value_name, call.grad_name]
        if wd:
            direction = grad + wd * w
            name = ctx.tensor("decayed_grad", direction)
            ctx.step(
                f"Weight decay on {sym}",
                r"g = \nabla_W L + \lambda W",
                rf"{latex.bmatrix(latex.as_matrix(grad)[0])} + {latex.scalar(wd)}\,{latex.bmatrix(latex.as_matrix(w)[0])}"
                rf" = {latex.bmatrix(latex.as_matrix(direction)[0])}",
                inputs=inputs,
                outputs=[name],
            )
            inputs = [call.value_name, name]
        if mu:
            prev = call.state_before.get("momentum_buffer")
            if prev is None:
                buf = direction.copy()
                formula, values = r"v = g \quad\text{(first step: the buffer starts as the gradient)}", (
                    rf"v = {latex.bmatrix(latex.as_matrix(buf)[0])}"
                )
            else:
                buf = mu * prev.astype(np.float64) + (1 - damp) * direction
                formula = r"v = \mu v_{\text{prev}} + (1 - \tau)\, g"
                values = (
                    rf"{latex.scalar(mu)}\,{latex.bmatrix(latex.as_matrix(prev)[0])} + {latex.scalar(1 - damp)}\,"
                    rf"{latex.bmatrix(latex.as_matrix(direction)[0])} = {latex.bmatrix(latex.as_matrix(buf)[0])}"
                )
            after = call.state_after.get("momentum_buffer")
            vname = ctx.tensor("momentum_buffer", buf, role=ROLE_OPTIMIZER_STATE)
            ctx.step(
                f"Momentum buffer of {sym}",
                formula,
                values,
                inputs=inputs,
                outputs=[vname],
                checks=[(buf, after, "optimizer state momentum_buffer")],
            )
            direction = direction + mu * buf if nesterov else buf
            inputs = [call.value_name, vname]
        new = w - lr * direction
        symbol = r"\nabla_W L" if not (mu or wd) else ("g + \\mu v" if nesterov else ("v" if mu else "g"))
        ctx.step(
            f"SGD update of {sym}",
            rf"W' = W - \eta\, {symbol}",
            rf"{latex.bmatrix(latex.as_matrix(w)[0])} - {eta}\,{latex.bmatrix(latex.as_matrix(direction)[0])}"
            rf" = {latex.bmatrix(latex.as_matrix(new)[0])}",
            inputs=inputs,
            outputs=[call.value_after_name],
            checks=[(new, call.value_after, f"{sym} after optimizer.step()")],
            note=f"Learning rate eta = {lr:g}." + (" Each entry moves against its gradient." if not mu else ""),
        )
