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

from storage.npmath import (
    adam_moments,
    adam_update,
    momentum_buffer,
    sgd_update,
    weight_decay_grad,
)
from storage.records import ROLE_OPTIMIZER_STATE

from .. import latex
from .base import Explainer, StepContext, Unsupported, class_name, is_a, register


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
        lr, mu, wd = (
            float(g["lr"]),
            float(g.get("momentum", 0.0)),
            float(g.get("weight_decay", 0.0)),
        )
        damp, nesterov = float(g.get("dampening", 0.0)), bool(g.get("nesterov", False))
        w = call.value.astype(np.float64)
        grad = call.grad.astype(np.float64)
        sym = call.name
        eta = latex.scalar(lr)
        inputs = [call.value_name, call.grad_name]
        grad = _maximize(call, ctx, grad, inputs)
        direction = _weight_decay(call, ctx, grad, w, wd, inputs)
        if mu:
            prev = call.state_before.get("momentum_buffer")
            buf = momentum_buffer(
                None if prev is None else prev.astype(np.float64), direction, mu, damp
            )
            if prev is None:
                formula, values = (
                    r"v = g \quad\text{(first step: the buffer starts as the gradient)}",
                    (rf"v = {latex.bmatrix(latex.as_matrix(buf)[0])}"),
                )
            else:
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
        new = sgd_update(w, direction, lr)
        symbol = (
            r"\nabla_W L"
            if not (mu or wd)
            else ("g + \\mu v" if nesterov else ("v" if mu else "g"))
        )
        ctx.step(
            f"SGD update of {sym}",
            rf"W' = W - \eta\, {symbol}",
            rf"{latex.bmatrix(latex.as_matrix(w)[0])} - {eta}\,{latex.bmatrix(latex.as_matrix(direction)[0])}"
            rf" = {latex.bmatrix(latex.as_matrix(new)[0])}",
            inputs=inputs,
            outputs=[call.value_after_name],
            checks=[(new, call.value_after, f"{sym} after optimizer.step()")],
            note=f"Learning rate eta = {lr:g}."
            + (" Each entry moves against its gradient." if not mu else ""),
        )


def _mat(array) -> str:
    return latex.bmatrix(latex.as_matrix(array)[0])


def _maximize(call: UpdateCall, ctx: StepContext, grad: np.ndarray, inputs: list) -> np.ndarray:
    """maximize=True ascends: every optimizer then works on -grad (inputs is updated in place)."""
    if np.iscomplexobj(call.value):
        raise Unsupported("complex parameters")
    if not call.group.get("maximize"):
        return grad
    name = ctx.tensor("ascent_grad", -grad)
    ctx.step(
        f"Maximize: negate the gradient of {call.name}",
        r"g = -\nabla_W L",
        rf"g = {_mat(-grad)}",
        inputs=[call.grad_name],
        outputs=[name],
        note="With maximize=True the optimizer climbs the objective, so it steps along +gradient: "
        "the usual rule is applied to the negated gradient.",
    )
    inputs[:] = [call.value_name, name]
    return -grad


def _weight_decay(
    call: UpdateCall, ctx: StepContext, grad: np.ndarray, w: np.ndarray, wd: float, inputs: list
) -> np.ndarray:
    """L2 weight decay folded into the gradient, g = grad + lambda W (inputs updated in place)."""
    if not wd:
        return grad
    decayed = weight_decay_grad(grad, w, wd)
    name = ctx.tensor("decayed_grad", decayed)
    ctx.step(
        f"Weight decay on {call.name}",
        r"g = \nabla_W L + \lambda W",
        rf"{_mat(grad)} + {latex.scalar(wd)}\,{_mat(w)} = {_mat(decayed)}",
        inputs=list(inputs),
        outputs=[name],
    )
    inputs[:] = [call.value_name, name]
    return decayed


def _state(call: UpdateCall, key: str, like: np.ndarray, initial: float = 0.0) -> np.ndarray:
    """A state tensor before the step, or its initial value on the first step (state is lazy)."""
    value = call.state_before.get(key)
    if value is None:
        return np.full_like(like, initial)
    return value.astype(np.float64).reshape(like.shape)


def _step_count(call: UpdateCall) -> int:
    before = call.state_before.get("step")
    return int(np.asarray(before).reshape(-1)[0]) + 1 if before is not None else 1


def _step_check(call: UpdateCall, t: int) -> list:
    after = call.state_after.get("step")
    return (
        []
        if after is None
        else [
            (
                np.asarray(float(t)),
                np.asarray(after, dtype=np.float64).reshape(()),
                "optimizer state step",
            )
        ]
    )


@register(torch.optim.Adam, torch.optim.AdamW)
class AdamExplainer(Explainer):
    formula = (
        r"m_t = \beta_1 m_{t-1} + (1-\beta_1) g,\ v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2,\ "
        r"W' = W - \eta \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}"
    )

    def describe(self, optimizer) -> str:
        g = optimizer.param_groups[0]
        b1, b2 = g["betas"]
        parts = [f"lr={g['lr']}", f"betas=({b1}, {b2})", f"eps={g['eps']}"]
        if g.get("weight_decay"):
            parts.append(
                f"weight_decay={g['weight_decay']}"
                + (" (decoupled)" if self._decoupled(optimizer, g) else "")
            )
        if g.get("amsgrad"):
            parts.append("amsgrad")
        return f"{class_name(optimizer)}(" + ", ".join(parts) + ")"

    @staticmethod
    def _decoupled(optimizer, group) -> bool:
        if "decoupled_weight_decay" in group:
            return bool(group["decoupled_weight_decay"])
        return is_a(optimizer, "AdamW")

    def update(self, call: UpdateCall, ctx: StepContext) -> None:
        g = call.group
        name = class_name(call.optimizer) if call.optimizer is not None else "Adam"
        lr, eps, wd = float(g["lr"]), float(g["eps"]), float(g.get("weight_decay", 0.0))
        b1, b2 = (float(b) for b in g["betas"])
        amsgrad = bool(g.get("amsgrad", False))
        decoupled = self._decoupled(call.optimizer, g)
        w = call.value.astype(np.float64)
        grad = call.grad.astype(np.float64)
        sym = call.name
        inputs = [call.value_name, call.grad_name]
        grad = _maximize(call, ctx, grad, inputs)
        t = _step_count(call)
        if wd and decoupled:
            shrunk = w * (1 - lr * wd)
            name_w = ctx.tensor("decayed", shrunk)
            ctx.step(
                f"Decoupled weight decay on {sym}",
                r"W \leftarrow W\,(1 - \eta\lambda)",
                rf"{_mat(w)} \cdot {latex.scalar(1 - lr * wd)} = {_mat(shrunk)}",
                inputs=[call.value_name],
                outputs=[name_w],
                note=f"AdamW shrinks the weights directly (lambda = {wd:g}), separately from the "
                "gradient, so the decay is not rescaled by Adam's per-entry step sizes.",
            )
            w = shrunk
        elif wd:
            grad = weight_decay_grad(grad, w, wd)
            name_g = ctx.tensor("decayed_grad", grad)
            ctx.step(
                f"L2 weight decay on {sym}",
                r"g = \nabla_W L + \lambda W",
                rf"g = {_mat(grad)}",
                inputs=inputs,
                outputs=[name_g],
                note=f"Adam's weight_decay = {wd:g} adds lambda W to the gradient (L2 regularisation); "
                "it then goes through the moments like any gradient. AdamW decouples it instead.",
            )
            inputs = [call.value_name, name_g]
        m0 = _state(call, "exp_avg", w)
        v0 = _state(call, "exp_avg_sq", w)
        m, v = adam_moments(m0, v0, grad, b1, b2)
        first = t == 1
        m_name = ctx.tensor("exp_avg", m, role=ROLE_OPTIMIZER_STATE)
        ctx.step(
            f"First moment of {sym}",
            r"m_t = \beta_1 m_{t-1} + (1 - \beta_1)\, g",
            rf"{latex.scalar(b1)}\,{_mat(m0)} + {latex.scalar(1 - b1)}\,{_mat(grad)} = {_mat(m)}",
            inputs=inputs,
            outputs=[m_name],
            checks=[(m, call.state_after.get("exp_avg"), "optimizer state exp_avg")],
            note="An exponential moving average of the gradient (momentum)"
            + (
                ": on the first step m_0 = 0, so m_1 is only (1 - beta1) g -- biased towards 0."
                if first
                else "."
            ),
        )
        v_name = ctx.tensor("exp_avg_sq", v, role=ROLE_OPTIMIZER_STATE)
        ctx.step(
            f"Second moment of {sym}",
            r"v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g \odot g",
            rf"{latex.scalar(b2)}\,{_mat(v0)} + {latex.scalar(1 - b2)}\,{_mat(grad**2)} = {_mat(v)}",
            inputs=inputs,
            outputs=[v_name],
            checks=[(v, call.state_after.get("exp_avg_sq"), "optimizer state exp_avg_sq")],
            note="An exponential moving average of the squared gradient, entry by entry: a running "
            "estimate of each weight's gradient scale.",
        )
        v_used, v_used_name = v, v_name
        if amsgrad:
            vmax0 = _state(call, "max_exp_avg_sq", w)
            vmax = np.maximum(vmax0, v)
            v_used_name = ctx.tensor("max_exp_avg_sq", vmax, role=ROLE_OPTIMIZER_STATE)
            ctx.step(
                f"AMSGrad: running maximum of the second moment of {sym}",
                r"\hat v^{\max}_t = \max(\hat v^{\max}_{t-1}, v_t)",
                rf"\max\big({_mat(vmax0)}, {_mat(v)}\big) = {_mat(vmax)}",
                inputs=[v_name],
                outputs=[v_used_name],
                checks=[
                    (vmax, call.state_after.get("max_exp_avg_sq"), "optimizer state max_exp_avg_sq")
                ],
                note="AMSGrad never lets the denominator shrink, so step sizes never grow.",
            )
            v_used = vmax
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        m_hat, v_hat, new = adam_update(w, m, v_used, lr, b1, b2, eps, t)
        m_hat_name = ctx.tensor("m_hat", m_hat)
        v_hat_name = ctx.tensor("v_hat", v_hat)
        ctx.step(
            f"{name} update of {sym}",
            r"\hat m = \frac{m_t}{1 - \beta_1^t},\ \hat v = \frac{v_t}{1 - \beta_2^t},\quad"
            r" W' = W - \eta\, \frac{\hat m}{\sqrt{\hat v} + \epsilon}",
            rf"t = {t}:\ 1 - \beta_1^t = {latex.scalar(bc1)},\ 1 - \beta_2^t = {latex.scalar(bc2)},\quad "
            rf"\hat m = {_mat(m_hat)},\ \hat v = {_mat(v_hat)}\;\Rightarrow\; "
            rf"{_mat(w)} - {latex.scalar(lr)}\,{_mat(m_hat / (np.sqrt(v_hat) + eps))} = {_mat(new)}",
            inputs=[call.value_name, m_name, v_used_name],
            outputs=[m_hat_name, v_hat_name, call.value_after_name],
            checks=[
                (new, call.value_after, f"{sym} after optimizer.step()"),
                *_step_check(call, t),
            ],
            note=f"Dividing by 1 - beta^t undoes the bias of the zero-initialised moments (step t = {t}"
            + (
                ": the corrections are largest on the first steps and fade as beta^t -> 0)."
                if t <= 3
                else ")."
            )
            + " Each entry moves by about eta times sign(m̂) when gradients are consistent: "
            "the step size no longer depends on the gradient's scale.",
        )


@register(torch.optim.RMSprop)
class RMSpropExplainer(Explainer):
    formula = r"s = \alpha s + (1-\alpha) g^2,\quad W' = W - \eta\, \frac{g}{\sqrt{s} + \epsilon}"

    def describe(self, optimizer) -> str:
        g = optimizer.param_groups[0]
        parts = [f"lr={g['lr']}", f"alpha={g['alpha']}", f"eps={g['eps']}"]
        for key in ("momentum", "weight_decay"):
            if g.get(key):
                parts.append(f"{key}={g[key]}")
        if g.get("centered"):
            parts.append("centered")
        return "RMSprop(" + ", ".join(parts) + ")"

    def update(self, call: UpdateCall, ctx: StepContext) -> None:
        g = call.group
        lr, alpha, eps = float(g["lr"]), float(g["alpha"]), float(g["eps"])
        wd, mu, centered = (
            float(g.get("weight_decay", 0.0)),
            float(g.get("momentum", 0.0)),
            bool(g.get("centered")),
        )
        w = call.value.astype(np.float64)
        grad = call.grad.astype(np.float64)
        sym = call.name
        inputs = [call.value_name, call.grad_name]
        grad = _maximize(call, ctx, grad, inputs)
        t = _step_count(call)
        grad = _weight_decay(call, ctx, grad, w, wd, inputs)
        s0 = _state(call, "square_avg", w)
        s = alpha * s0 + (1 - alpha) * grad**2
        s_name = ctx.tensor("square_avg", s, role=ROLE_OPTIMIZER_STATE)
        ctx.step(
            f"Running mean of the squared gradient of {sym}",
            r"s_t = \alpha s_{t-1} + (1 - \alpha)\, g \odot g",
            rf"{latex.scalar(alpha)}\,{_mat(s0)} + {latex.scalar(1 - alpha)}\,{_mat(grad**2)} = {_mat(s)}",
            inputs=inputs,
            outputs=[s_name],
            checks=[(s, call.state_after.get("square_avg"), "optimizer state square_avg")],
            note="Each weight's step is divided by the root of this average, so weights with large "
            "gradients take smaller steps.",
        )
        var = s
        denom_inputs = [s_name]
        if centered:
            a0 = _state(call, "grad_avg", w)
            a = alpha * a0 + (1 - alpha) * grad
            var = s - a**2
            a_name = ctx.tensor("grad_avg", a, role=ROLE_OPTIMIZER_STATE)
            ctx.step(
                f"Running mean of the gradient of {sym} (centered)",
                r"a_t = \alpha a_{t-1} + (1 - \alpha)\, g,\quad s_t - a_t^2",
                rf"a = {_mat(a)},\quad s - a^2 = {_mat(var)}",
                inputs=inputs,
                outputs=[a_name],
                checks=[(a, call.state_after.get("grad_avg"), "optimizer state grad_avg")],
                note="Centered RMSprop divides by an estimate of the gradient's variance instead of its second moment.",
            )
            denom_inputs.append(a_name)
        denom = np.sqrt(var) + eps
        if mu:
            b0 = _state(call, "momentum_buffer", w)
            buf = mu * b0 + grad / denom
            b_name = ctx.tensor("momentum_buffer", buf, role=ROLE_OPTIMIZER_STATE)
            ctx.step(
                f"Momentum buffer of {sym}",
                r"b_t = \mu b_{t-1} + \frac{g}{\sqrt{s_t} + \epsilon}",
                rf"{latex.scalar(mu)}\,{_mat(b0)} + {_mat(grad / denom)} = {_mat(buf)}",
                inputs=inputs + denom_inputs,
                outputs=[b_name],
                checks=[
                    (
                        buf,
                        call.state_after.get("momentum_buffer"),
                        "optimizer state momentum_buffer",
                    )
                ],
            )
            direction, formula, used = buf, r"W' = W - \eta\, b_t", [call.value_name, b_name]
        else:
            direction = grad / denom
            formula = r"W' = W - \eta\, \frac{g}{\sqrt{s_t} + \epsilon}"
            used = inputs + denom_inputs
        new = w - lr * direction
        ctx.step(
            f"RMSprop update of {sym}",
            formula,
            rf"{_mat(w)} - {latex.scalar(lr)}\,{_mat(direction)} = {_mat(new)}",
            inputs=used,
            outputs=[call.value_after_name],
            checks=[
                (new, call.value_after, f"{sym} after optimizer.step()"),
                *_step_check(call, t),
            ],
            note=f"Learning rate eta = {lr:g}, eps = {eps:g}.",
        )


@register(torch.optim.Adagrad)
class AdagradExplainer(Explainer):
    formula = (
        r"S = S + g^2,\quad W' = W - \frac{\eta}{1 + (t-1)\,d}\, \frac{g}{\sqrt{S} + \epsilon}"
    )

    def describe(self, optimizer) -> str:
        g = optimizer.param_groups[0]
        parts = [f"lr={g['lr']}", f"eps={g['eps']}"]
        for key in ("lr_decay", "weight_decay", "initial_accumulator_value"):
            if g.get(key):
                parts.append(f"{key}={g[key]}")
        return "Adagrad(" + ", ".join(parts) + ")"

    def update(self, call: UpdateCall, ctx: StepContext) -> None:
        g = call.group
        lr, eps = float(g["lr"]), float(g["eps"])
        wd, decay = float(g.get("weight_decay", 0.0)), float(g.get("lr_decay", 0.0))
        w = call.value.astype(np.float64)
        grad = call.grad.astype(np.float64)
        sym = call.name
        inputs = [call.value_name, call.grad_name]
        grad = _maximize(call, ctx, grad, inputs)
        t = _step_count(call)
        grad = _weight_decay(call, ctx, grad, w, wd, inputs)
        s0 = _state(call, "sum", w, float(g.get("initial_accumulator_value", 0.0)))
        s = s0 + grad**2
        s_name = ctx.tensor("sum", s, role=ROLE_OPTIMIZER_STATE)
        ctx.step(
            f"Sum of squared gradients of {sym}",
            r"S_t = S_{t-1} + g \odot g",
            rf"{_mat(s0)} + {_mat(grad**2)} = {_mat(s)}",
            inputs=inputs,
            outputs=[s_name],
            checks=[(s, call.state_after.get("sum"), "optimizer state sum")],
            note="The sum only grows, so every weight's step size shrinks over training, fastest for "
            "weights with large gradients.",
        )
        clr = lr / (1 + (t - 1) * decay)
        new = w - clr * grad / (np.sqrt(s) + eps)
        ctx.step(
            f"Adagrad update of {sym}",
            r"W' = W - \frac{\eta}{1 + (t-1)\,d}\, \frac{g}{\sqrt{S_t} + \epsilon}",
            rf"t = {t},\ \tfrac{{\eta}}{{1 + (t-1) d}} = {latex.scalar(clr)}:\quad "
            rf"{_mat(w)} - {latex.scalar(clr)}\,{_mat(grad / (np.sqrt(s) + eps))} = {_mat(new)}",
            inputs=inputs + [s_name],
            outputs=[call.value_after_name],
            checks=[
                (new, call.value_after, f"{sym} after optimizer.step()"),
                *_step_check(call, t),
            ],
        )
