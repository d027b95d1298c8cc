"""Dropout: the random mask the module actually drew, read back from its input
and output, and the 1/(1-p) scaling that keeps the expected activation unchanged.

In training, Y = X ⊙ M / (1-p) with M ~ Bernoulli(1-p). The capture does not
replay PyTorch's random generator: M is recovered from the numbers, since an
entry with X ≠ 0 was kept exactly when Y ≠ 0. Where X = 0 the output is 0
either way, so the forward pass cannot tell; the backward pass can
(dL/dX = dL/dY ⊙ M / (1-p)), so those entries of M are read from autograd's
gradient where it is non-zero, said so in the note, and left out of the check.
Entries that neither pass can tell have no effect on any number and are shown as 0.

Dropout1d/2d/3d draw one mask entry per channel: the same rule applies to each
whole channel.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from storage import names
from storage.npmath import dropout_backward, dropout_forward

from .. import latex
from .base import Explainer, LayerCall, StepContext, Unsupported, register
from .common import f64, mat, named


class DropoutExplainer(Explainer):
    formula = r"Y = \frac{1}{1-p}\, X \odot M,\quad M_{k} \sim \operatorname{Bernoulli}(1-p)"
    channel_rank: int | None = None  # Dropout{1,2,3}d: expected input rank

    def per_sample(self, call) -> bool:
        return True  # one mask entry per element (or per sample and channel)

    def describe(self, module) -> str:
        what = "channels" if self.channel_rank else "entries"
        return f"dropout, p = {module.p:g} ({what} zeroed in training, identity in eval)"

    def _axes(self, x: np.ndarray) -> tuple[int, ...]:
        """Axes that share one mask entry: none for Dropout, the spatial ones per channel."""
        if self.channel_rank is None:
            return ()
        if x.ndim != self.channel_rank:
            raise Unsupported(
                f"{x.ndim}-D input to a channel dropout expecting {self.channel_rank}-D"
            )
        return tuple(range(2, x.ndim))

    def _active(self, call: LayerCall) -> bool:
        return call.training and call.module.p > 0

    def _mask(self, call: LayerCall):
        """(mask broadcastable to X, entries read from the output, entries read from autograd)."""
        x, y = call.x, call.output
        axes = self._axes(x)
        known = (x != 0).any(axis=axes, keepdims=True) if axes else x != 0
        kept = (y != 0).any(axis=axes, keepdims=True) if axes else y != 0
        mask = (kept & known).astype(np.float64)
        from_grad = np.zeros_like(known)
        dx, dy = call.grad_inputs[0] if call.grad_inputs else None, call.grad_output
        if dx is not None and dy is not None and call.module.p < 1:
            # dL/dX = dL/dY * M/(1-p): where dL/dY ≠ 0, dL/dX ≠ 0 exactly when M = 1.
            flows = (dy != 0).any(axis=axes, keepdims=True) if axes else dy != 0
            passed = (dx != 0).any(axis=axes, keepdims=True) if axes else dx != 0
            from_grad = ~known & flows
            mask = np.where(from_grad, passed, mask).astype(np.float64)
        return mask, known, from_grad

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        p = float(call.module.p)
        x = f64(call.x)
        if not self._active(call):
            why = "evaluation mode" if not call.training else "p = 0"
            ctx.step(
                f"Dropout ({why}: identity)",
                r"Y = X",
                named("Y", x),
                inputs=[call.input_names[0]],
                outputs=[call.output_name],
                checks=[(x, call.output, "PyTorch dropout output")],
                note=(
                    "In evaluation mode dropout does nothing: the 1/(1-p) scaling during training "
                    "already made the expected activation equal to the input."
                    if not call.training
                    else "With p = 0 no entry is dropped and the scale 1/(1-p) is 1."
                ),
            )
            return
        mask, known, from_grad = self._mask(call)
        full = np.broadcast_to(mask, x.shape)
        # p = 1: PyTorch multiplies by 0 (so -0 and NaN propagate alike)
        y = dropout_forward(x, mask, p)
        scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
        scale_tex = r"0" if p >= 1 else latex.scalar(scale)
        mask_name = ctx.tensor(
            "mask",
            np.asarray(mask, dtype=np.float32).reshape(
                mask.shape if self.channel_rank else x.shape
            ),
        )
        kept = float(mask.mean()) if mask.size else 0.0
        undetermined = int((~known & ~from_grad).sum())
        ctx.step(
            "Dropout (training): mask and scaling",
            r"Y = \frac{1}{1-p}\, X \odot M" if p < 1 else r"Y = 0 \quad (p = 1)",
            rf"p = {latex.scalar(p)},\ \tfrac{{1}}{{1-p}} = {scale_tex},\quad {named('X', x)},\ "
            rf"M = {mat(full.astype(np.int64))} \;\Rightarrow\; Y = {mat(y)}",
            inputs=[call.input_names[0]],
            outputs=[mask_name, call.output_name],
            checks=[(y, call.output, "PyTorch dropout output")],
            note=(
                "With p = 1 every entry is dropped and the output is all zeros."
                if p >= 1
                else f"The mask M was drawn by PyTorch: each {'channel' if self.channel_rank else 'entry'} "
                f"is kept with probability 1-p = {1 - p:g} (here {kept:.0%} were kept). It is read back "
                "from the numbers: a non-zero input was kept exactly when its output is non-zero. "
                f"Kept entries are multiplied by 1/(1-p) = {scale:.4g} so that the expected output "
                "equals the input, which is why evaluation mode can skip dropout entirely."
                + (
                    f" {int(from_grad.sum())} mask entr{'y' if from_grad.sum() == 1 else 'ies'} had "
                    "input exactly 0, so the output cannot show them; they are read from "
                    "autograd's gradient instead (see the backward step)."
                    if from_grad.any()
                    else ""
                )
                + (
                    f" {undetermined} entr{'y' if undetermined == 1 else 'ies'} had input 0 and "
                    "no gradient: whether they were dropped changes no number, and M shows 0."
                    if undetermined
                    else ""
                )
            ),
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        p = float(call.module.p)
        dy = f64(call.grad_output)
        theirs = call.grad_inputs[0] if call.grad_inputs else None
        if not self._active(call):
            ctx.step(
                "Dropout backward (identity)",
                r"\frac{\partial L}{\partial X} = \frac{\partial L}{\partial Y}",
                named(r"\frac{\partial L}{\partial X}", dy),
                inputs=[call.grad_output_name],
                outputs=[call.grad_input_names[0]],
                checks=[(dy, theirs, "autograd dL/dX")],
                note="The gradient passes through unchanged.",
            )
            return
        mask, known, from_grad = self._mask(call)
        full = np.broadcast_to(mask, dy.shape)
        scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
        dx = dropout_backward(dy, mask, p)
        check = (dx, theirs, "autograd dL/dX")
        if theirs is not None and from_grad.any():
            # Entries whose mask came from autograd's gradient would check it against itself.
            independent = np.broadcast_to(~from_grad, dy.shape)
            check = (
                dx[independent],
                theirs[independent],
                f"autograd dL/dX at the {int(independent.sum())} entries whose mask the forward pass showed",
            )
        ctx.step(
            "Dropout backward: the same mask and scale",
            r"\frac{\partial L}{\partial X} = \frac{1}{1-p}\, \frac{\partial L}{\partial Y} \odot M",
            rf"\tfrac{{1}}{{1-p}} = {latex.scalar(scale)},\quad {mat(dy)} \odot {mat(full.astype(np.int64))} = {mat(dx)}",
            inputs=[call.grad_output_name, names.intermediate(call.name, "mask")],
            outputs=[call.grad_input_names[0]],
            checks=[check],
            note="Dropout is a fixed elementwise scaling once M is drawn, so the gradient is scaled "
            "by the same M/(1-p): dropped entries get no gradient."
            + (
                f" For the {int(from_grad.sum())} mask entr{'y' if from_grad.sum() == 1 else 'ies'} whose "
                "input was exactly 0 the mask was read from this gradient, so those entries are not "
                "counted in the check."
                if from_grad.any()
                else ""
            ),
        )


@register(nn.Dropout, functional=[F.dropout])
class PlainDropoutExplainer(DropoutExplainer):
    pass


@register(nn.Dropout1d, functional=[F.dropout1d])
class Dropout1dExplainer(DropoutExplainer):
    channel_rank = 3


@register(nn.Dropout2d, functional=[F.dropout2d])
class Dropout2dExplainer(DropoutExplainer):
    channel_rank = 4


@register(nn.Dropout3d, functional=[F.dropout3d])
class Dropout3dExplainer(DropoutExplainer):
    channel_rank = 5
