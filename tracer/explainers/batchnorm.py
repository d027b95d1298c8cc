"""BatchNorm1d/2d/3d: per-channel statistics, normalisation, scale and shift,
the running-statistics update, and the backward pass through the batch mean
and variance.

Channels are dim 1; the statistics of a channel run over every other axis
(the batch and the spatial positions), M = N*H*W values for BatchNorm2d.

Training (or no running statistics):
    mu = mean(x), var = mean((x - mu)^2)   (biased, as used for normalising)
    x̂ = (x - mu) / sqrt(var + eps),  y = gamma x̂ + beta
    running_mean <- (1 - f) running_mean + f mu
    running_var  <- (1 - f) running_var  + f var * M/(M-1)   (unbiased)
    f = momentum, or 1/num_batches_tracked when momentum is None
    dx = gamma/(M sigma) * (M dy - sum(dy) - x̂ sum(dy x̂))
Evaluation with running statistics: mu, var are the buffers, constants for
autograd, so dx = gamma dy / sqrt(running_var + eps).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from storage import names
from storage.npmath import (
    batch_norm_affine,
    batch_norm_eval_input_grad,
    batch_norm_input_grad,
    batch_norm_normalise,
    batch_norm_param_grads,
    batch_norm_running,
    batch_stats,
    channel_axes,
    per_channel,
)

from .. import latex
from .base import Explainer, LayerCall, StepContext, Unsupported, register
from .common import channel_vector, f64, mat, named


class BatchNormExplainer(Explainer):
    formula = r"y = \gamma\, \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta"

    def describe(self, module) -> str:
        parts = [f"batch normalisation over {module.num_features} channels, eps {module.eps:g}"]
        if module.track_running_stats:
            parts.append(
                "momentum "
                + ("cumulative average" if module.momentum is None else f"{module.momentum:g}")
            )
        else:
            parts.append("no running statistics")
        if not module.affine:
            parts.append("no affine gamma/beta")
        return ", ".join(parts)

    @staticmethod
    def _state(call: LayerCall):
        """What the call normalised with: batch statistics or the running ones."""
        module = call.module
        x = f64(call.x)
        if x.ndim < 2:
            raise Unsupported(f"{x.ndim}-D input")
        has_running = "running_mean" in call.buffers and "running_var" in call.buffers
        use_batch = call.training or not has_running
        axes = channel_axes(x)
        if use_batch:
            mu, var, m = batch_stats(x)  # (C,), (C,) biased, values per channel
        else:
            mu = f64(call.buffers["running_mean"])
            var = f64(call.buffers["running_var"])
            m = int(np.prod([x.shape[a] for a in axes]))
        invstd, xhat = batch_norm_normalise(x, mu, var, module.eps)  # (C,), like x
        return x, axes, m, use_batch, mu, var, invstd, xhat

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        module = call.module
        x, axes, m, batch_stats, mu, var, invstd, xhat = self._state(call)
        eps = module.eps
        gamma = f64(call.params["weight"]) if "weight" in call.params else None
        beta = f64(call.params["bias"]) if "bias" in call.params else None
        tx = torch.from_numpy(np.ascontiguousarray(call.x))
        mean_name = ctx.tensor("mean", mu)
        var_name = ctx.tensor("var", var)
        if batch_stats:
            ref_var, ref_mean = torch.var_mean(tx, dim=axes, correction=0)
            ctx.step(
                "Batch statistics per channel",
                r"\mu_c = \frac{1}{M} \sum_{n,i,j} x_{n,c,i,j},\quad "
                r"\sigma^2_c = \frac{1}{M} \sum_{n,i,j} (x_{n,c,i,j} - \mu_c)^2",
                rf"M = {m},\quad {named('x', x)} \;\Rightarrow\; \mu = {channel_vector(mu)},\ "
                rf"\sigma^2 = {channel_vector(var)}",
                inputs=[call.input_names[0]],
                outputs=[mean_name, var_name],
                checks=[
                    (mu, ref_mean.numpy(), "torch.var_mean of the input, mean"),
                    (var, ref_var.numpy(), "torch.var_mean of the input, biased variance"),
                ],
                note=f"Each channel is normalised with the mean and variance of its own {m} values "
                "in this batch (all samples and positions). The variance divides by M, not M-1: "
                "this is the variance the normalisation uses."
                + (
                    ""
                    if call.training
                    else " (Evaluation mode, but this layer keeps no running statistics.)"
                ),
            )
        xhat_name = ctx.tensor("xhat", xhat)
        # PyTorch's own normalisation without gamma/beta, as the reference for x̂.
        ref_xhat = F.batch_norm(
            tx,
            None if batch_stats else torch.from_numpy(call.buffers["running_mean"]),
            None if batch_stats else torch.from_numpy(call.buffers["running_var"]),
            training=batch_stats,
            eps=eps,
        ).numpy()
        norm_checks = [(xhat, ref_xhat, "torch batch_norm without gamma/beta")]
        if gamma is None:
            norm_checks.append((xhat, call.output, "PyTorch batch_norm output"))
        stats_words = "batch" if batch_stats else "running"
        ctx.step(
            "Normalise" + ("" if batch_stats else " with the running statistics"),
            r"\hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}",
            (
                ""
                if batch_stats
                else rf"\mu = {channel_vector(mu)},\ \sigma^2 = {channel_vector(var)},\ "
            )
            + rf"\epsilon = {latex.scalar(eps)},\quad \tfrac{{1}}{{\sqrt{{\sigma^2+\epsilon}}}} = {channel_vector(invstd)}"
            + r"\;\Rightarrow\; "
            + named(r"\hat x", xhat),
            inputs=[call.input_names[0], mean_name, var_name],
            outputs=[xhat_name] + ([call.output_name] if gamma is None else []),
            checks=norm_checks,
            note=f"Subtracting the {stats_words} mean and dividing by the {stats_words} standard "
            "deviation gives every channel mean 0 and variance 1"
            + (
                " over this batch"
                if batch_stats
                else " (approximately, if the batch resembles the running statistics)"
            )
            + "; eps keeps the division safe when a channel is constant."
            + ("" if gamma is not None else " With affine=False this is the output."),
        )
        if gamma is not None:
            y = batch_norm_affine(xhat, gamma, beta)
            ctx.step(
                "Scale and shift",
                r"y = \gamma_c\, \hat x + \beta_c",
                rf"\gamma = {channel_vector(gamma)},\ \beta = {channel_vector(beta)}"
                rf"\;\Rightarrow\; {named('y', y)}",
                inputs=[xhat_name, call.param_names["weight"], call.param_names.get("bias")],
                outputs=[call.output_name],
                checks=[(y, call.output, "PyTorch batch_norm output")],
                note="The learned gamma and beta can undo the normalisation if that helps: the layer "
                "chooses each channel's scale and offset instead of inheriting them from the previous layer.",
            )
        if call.training and module.track_running_stats and "running_mean" in call.buffers:
            self._running_update(call, ctx, mu, var, m)

    def _running_update(self, call, ctx, mu, var, m) -> None:
        module = call.module
        before_n = int(np.asarray(call.buffers.get("num_batches_tracked", 0)))
        after_n = before_n + 1
        if module.momentum is None:
            factor = 1.0 / after_n
            f_tex = rf"f = \tfrac{{1}}{{t}} = \tfrac{{1}}{{{after_n}}}"
            f_words = f"With momentum=None this is a cumulative average: f = 1/t with t = {after_n} batches seen"
        else:
            factor = float(module.momentum)
            f_tex = rf"f = {latex.scalar(factor)}"
            f_words = f"The momentum is f = {factor:g}"
        if m < 2:
            raise Unsupported("a channel with a single value has no unbiased variance")
        rm0, rv0 = f64(call.buffers["running_mean"]), f64(call.buffers["running_var"])
        rm, rv, unbiased = batch_norm_running(rm0, rv0, mu, var, m, factor)
        after = call.buffers_after
        checks = [
            (rm, after.get("running_mean"), "running_mean buffer after the call"),
            (rv, after.get("running_var"), "running_var buffer after the call"),
        ]
        if "num_batches_tracked" in after:
            checks.append(
                (
                    np.asarray(after_n),
                    after["num_batches_tracked"],
                    "num_batches_tracked after the call",
                )
            )
        before_mean = ctx.tensor("running_mean.before", rm0)
        before_var = ctx.tensor("running_var.before", rv0)
        rm_name = ctx.tensor("running_mean", rm)
        rv_name = ctx.tensor("running_var", rv)
        ctx.step(
            "Update the running statistics",
            r"\hat\mu \leftarrow (1-f)\,\hat\mu + f\,\mu,\quad "
            r"\hat\sigma^2 \leftarrow (1-f)\,\hat\sigma^2 + f\, \frac{M}{M-1}\sigma^2",
            rf"{f_tex},\ M = {m}:\quad \hat\mu = {latex.scalar(1 - factor)}\,{channel_vector(rm0)} + "
            rf"{latex.scalar(factor)}\,{channel_vector(mu)} = {channel_vector(rm)},\quad "
            rf"\hat\sigma^2 = {latex.scalar(1 - factor)}\,{channel_vector(rv0)} + {latex.scalar(factor)}\,"
            rf"{channel_vector(unbiased)} = {channel_vector(rv)}",
            inputs=[
                before_mean,
                before_var,
                names.intermediate(call.name, "mean"),
                names.intermediate(call.name, "var"),
            ],
            outputs=[rm_name, rv_name],
            checks=checks,
            note=f"Evaluation mode will normalise with these running estimates instead of batch "
            f"statistics. {f_words}. The running variance uses the unbiased batch variance "
            f"(times M/(M-1) = {m}/{m - 1}), unlike the normalisation above. "
            "Checked against the module's buffers after the call.",
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        x, axes, m, batch_stats, mu, var, invstd, xhat = self._state(call)
        dy = f64(call.grad_output)
        gamma = f64(call.params["weight"]) if "weight" in call.params else np.ones_like(mu)
        g = per_channel(gamma, x.ndim)
        if "weight" in call.params:
            dgamma, dbeta = batch_norm_param_grads(dy, xhat)
            checks = [ctx.param_grad("weight", dgamma)]
            outputs = [call.param_grad_names.get("weight")]
            if "bias" in call.params:
                checks.append(ctx.param_grad("bias", dbeta))
                outputs.append(call.param_grad_names.get("bias"))
            ctx.step(
                "Gradients of gamma and beta",
                r"\frac{\partial L}{\partial \gamma_c} = \sum_{n,i,j} \frac{\partial L}{\partial y}\, \hat x,"
                r"\quad \frac{\partial L}{\partial \beta_c} = \sum_{n,i,j} \frac{\partial L}{\partial y}",
                rf"\frac{{\partial L}}{{\partial \gamma}} = {channel_vector(dgamma)},\quad "
                rf"\frac{{\partial L}}{{\partial \beta}} = {channel_vector(dbeta)}",
                inputs=[call.grad_output_name, names.intermediate(call.name, "xhat")],
                outputs=outputs,
                checks=checks,
                note="gamma multiplies x̂ and beta is added at every position of its channel, so their "
                "gradients sum over the batch and the positions.",
            )
        shift = per_channel(invstd, x.ndim)
        if batch_stats:
            dx, sum_dy, sum_dy_xhat = batch_norm_input_grad(dy, xhat, invstd, gamma, m)
            ctx.step(
                "Gradient of the input through the batch statistics",
                r"\frac{\partial L}{\partial x} = \frac{\gamma_c}{M \sqrt{\sigma_c^2 + \epsilon}}"
                r"\Big(M \frac{\partial L}{\partial y} - \sum \frac{\partial L}{\partial y} - "
                r"\hat x \sum \frac{\partial L}{\partial y} \hat x\Big)",
                rf"M = {m},\ \tfrac{{\gamma}}{{\sqrt{{\sigma^2+\epsilon}}}} = {channel_vector(gamma * invstd)},\ "
                rf"\textstyle\sum \tfrac{{\partial L}}{{\partial y}} = {channel_vector(sum_dy)},\ "
                rf"\textstyle\sum \tfrac{{\partial L}}{{\partial y}}\hat x = {channel_vector(sum_dy_xhat)}"
                + r"\;\Rightarrow\; "
                + named(r"\frac{\partial L}{\partial x}", dx),
                inputs=[call.grad_output_name, names.intermediate(call.name, "xhat")],
                outputs=[call.grad_input_names[0]],
                checks=[(dx, call.grad_inputs[0] if call.grad_inputs else None, "autograd dL/dx")],
                # The three terms nearly cancel when a channel has few values (with two,
                # dL/dx is 0 up to epsilon): PyTorch's float32 keeps rounding of the terms.
                magnitude=float(
                    np.max(
                        np.abs(g * shift / m)
                        * (m * np.abs(dy) + np.abs(sum_dy) + np.abs(xhat * sum_dy_xhat))
                    )
                ),
                note="Every x of a channel moved that channel's mean and variance, so besides the direct "
                "path gamma dy / sigma there are two corrections: the mean of dy is removed (shifting "
                "all inputs equally changes nothing after normalisation) and so is the part of dy along "
                "x̂ (scaling all inputs changes nothing either). Sums run over the batch and positions.",
            )
        else:
            dx = batch_norm_eval_input_grad(dy, invstd, gamma)
            ctx.step(
                "Gradient of the input (running statistics are constants)",
                r"\frac{\partial L}{\partial x} = \frac{\gamma_c}{\sqrt{\hat\sigma_c^2 + \epsilon}}\, \frac{\partial L}{\partial y}",
                rf"\tfrac{{\gamma}}{{\sqrt{{\hat\sigma^2+\epsilon}}}} = {channel_vector(gamma * invstd)},\quad "
                rf"{mat(dy)} \;\Rightarrow\; {mat(dx)}",
                inputs=[call.grad_output_name],
                outputs=[call.grad_input_names[0]],
                checks=[(dx, call.grad_inputs[0] if call.grad_inputs else None, "autograd dL/dx")],
                note="In evaluation mode the mean and variance are fixed buffers, so the layer is an "
                "affine map per channel and its gradient is a per-channel scale.",
            )


@register(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
class BatchNormNdExplainer(BatchNormExplainer):
    pass
