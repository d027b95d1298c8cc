"""MaxPool2d: windows, their maxima and argmaxes; backward routes each gradient
to its window's argmax and accumulates where overlapping windows share one.

Ties: PyTorch's CPU kernel scans a window row by row and keeps the first
strictly greater value, so the first maximum in row-major order wins; a NaN
wins over any number. np.argmax makes the same choice (first occurrence, NaN
first), so our routing equals autograd's.
"""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from .. import latex
from .base import Explainer, LayerCall, StepContext, Unsupported, register
from .conv import im2col


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def pool_output_size(size, kernel, stride, padding, dilation, ceil_mode) -> int:
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def _settings(module: nn.MaxPool2d, x_shape):
    kernel = _pair(module.kernel_size)
    stride = _pair(module.stride if module.stride is not None else module.kernel_size)
    padding = _pair(module.padding)
    dilation = _pair(module.dilation)
    if getattr(module, "return_indices", False):
        raise Unsupported("return_indices=True")
    out = tuple(
        pool_output_size(x_shape[2 + i], kernel[i], stride[i], padding[i], dilation[i], module.ceil_mode)
        for i in range(2)
    )
    return kernel, stride, padding, dilation, out


def windows(x, kernel, stride, padding, dilation, out_hw, pad_value):
    """(N, C, H, W) -> (N, C, OH, OW, KH*KW) window values and (OH, OW, KH*KW) flat input index.

    Extra rows/columns beyond the padded input (ceil_mode) are filled with pad_value,
    and their index is -1 so that nothing is ever routed there.
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh, ow = out_hw
    need_h = (oh - 1) * sh + dh * (kh - 1) + 1
    need_w = (ow - 1) * sw + dw * (kw - 1) + 1
    extra_h = max(0, need_h - (h + 2 * ph))
    extra_w = max(0, need_w - (w + 2 * pw))
    planes = x.reshape(n * c, 1, h, w)
    padded = np.pad(
        planes, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)), constant_values=pad_value
    )
    cols, _ = im2col(padded, kernel, stride, (0, 0), dilation)  # (N*C*OH'*OW', KH*KW)
    oh_all = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow_all = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    vals = cols.reshape(n, c, oh_all, ow_all, kh * kw)[:, :, :oh, :ow]
    # The same unfolding of the positions tells which input element each window entry is.
    index = np.arange(h * w, dtype=np.float64).reshape(1, 1, h, w)
    index = np.pad(index, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)), constant_values=-1)
    idx_cols, _ = im2col(index, kernel, stride, (0, 0), dilation)
    idx = idx_cols.reshape(oh_all, ow_all, kh * kw)[:oh, :ow].astype(np.int64)
    return vals, idx


@register(nn.MaxPool2d)
class MaxPool2dExplainer(Explainer):
    formula = r"Y_{i,j} = \max_{(p,q) \in \Omega_{i,j}} X_{p,q}"

    def describe(self, module: nn.MaxPool2d) -> str:
        k = _pair(module.kernel_size)
        s = _pair(module.stride if module.stride is not None else module.kernel_size)
        overlap = " (overlapping windows)" if s[0] < k[0] or s[1] < k[1] else ""
        return f"max pooling, window {k[0]}x{k[1]}, stride {s[0]}x{s[1]}{overlap}"

    def _route(self, call: LayerCall):
        kernel, stride, padding, dilation, out_hw = _settings(call.module, call.x.shape)
        x = call.x.astype(np.float64)
        vals, idx = windows(x, kernel, stride, padding, dilation, out_hw, -np.inf)
        arg = np.argmax(vals, axis=-1)  # first maximum in row-major window order, as PyTorch
        y = np.take_along_axis(vals, arg[..., None], axis=-1)[..., 0]
        src = np.take_along_axis(
            np.broadcast_to(idx, vals.shape), arg[..., None], axis=-1
        )[..., 0]  # (N, C, OH, OW): flat input index of each window's maximum
        return y, src, vals, out_hw

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        y, src, vals, (oh, ow) = self._route(call)
        w_in = call.x.shape[3]
        argmax_name = ctx.tensor("argmax", src)
        positions = [(i, j) for i in range(oh) for j in range(ow)]
        lines = []
        for i, j in positions[:6]:
            win = vals[0, 0, i, j].reshape(_pair(call.module.kernel_size))
            r, c = divmod(int(src[0, 0, i, j]), w_in)
            lines.append(
                rf"Y_{{{i},{j}}} &= \max {latex.bmatrix(win)} = {latex.scalar(y[0, 0, i, j])}"
                rf" \quad\text{{at }} X_{{{r},{c}}}"
            )
        if len(positions) > 6:
            lines.append(r"&\vdots")
        where = latex.as_matrix(call.x)[1]
        ctx.step(
            "Max pooling: each window, its maximum and where it is",
            r"Y_{i,j} = \max_{(p,q) \in \Omega_{i,j}} X_{p,q}, \qquad"
            r" (p^*,q^*)_{i,j} = \operatorname{argmax}_{(p,q) \in \Omega_{i,j}} X_{p,q}",
            latex.aligned(*lines)
            + rf"\;\Rightarrow\; Y{'_{' + where + '}' if where else ''} = {latex.bmatrix(latex.as_matrix(y)[0])}",
            inputs=[call.input_names[0]],
            outputs=[call.output_name, argmax_name],
            checks=[(y, call.output, "PyTorch max_pool2d output")],
            note="Omega_ij is the window of output (i, j). If several entries tie for the maximum, "
            "the first in row-major order is chosen, as PyTorch does; the argmax tensor stores "
            "each window's choice as a flat index into the input plane.",
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        y, src, _, (oh, ow) = self._route(call)
        dy = call.grad_output.astype(np.float64)
        n, c, h, w = call.x.shape
        dx = np.zeros((n * c, h * w))
        count = np.zeros((n * c, h * w))
        flat_src = src.reshape(n * c, -1)
        flat_dy = dy.reshape(n * c, -1)
        for plane in range(n * c):
            # np.add.at accumulates repeated indices: overlapping windows that chose
            # the same input element all send their gradient there.
            np.add.at(dx[plane], flat_src[plane], flat_dy[plane])
            np.add.at(count[plane], flat_src[plane], 1.0)
        dx = dx.reshape(n, c, h, w)
        count = count.reshape(n, c, h, w)
        count_name = ctx.tensor("route_count", count.astype(np.int32))
        # Spell out the sums for the first plane: which windows feed which input element.
        terms: dict[int, list[tuple[int, int]]] = {}
        for i in range(oh):
            for j in range(ow):
                terms.setdefault(int(src[0, 0, i, j]), []).append((i, j))
        lines = []
        for flat in sorted(terms, key=lambda k: (-len(terms[k]), k))[:6]:
            r, col = divmod(flat, w)
            parts = terms[flat]
            symbolic = " + ".join(rf"\tfrac{{\partial L}}{{\partial Y_{{{i},{j}}}}}" for i, j in parts)
            numbers = " + ".join(latex.scalar(dy[0, 0, i, j]) for i, j in parts)
            line = rf"\tfrac{{\partial L}}{{\partial X_{{{r},{col}}}}} &= {symbolic} = {numbers}"
            if len(parts) > 1:
                line += rf" = {latex.scalar(dx[0, 0, r, col])}"
            lines.append(line)
        accumulated = int((count[0, 0] > 1).sum())
        dx_view, where = latex.as_matrix(dx)
        ctx.step(
            "Max pooling backward: route to the argmax, accumulate overlaps",
            r"\frac{\partial L}{\partial X_{p,q}} = \sum_{(i,j):\ (p^*,q^*)_{i,j} = (p,q)}"
            r" \frac{\partial L}{\partial Y_{i,j}}",
            latex.aligned(*lines)
            + rf"\;\Rightarrow\; \frac{{\partial L}}{{\partial X}}{'_{' + where + '}' if where else ''} = {latex.bmatrix(dx_view)},"
            rf"\quad \text{{windows per element}} = {latex.bmatrix(latex.as_matrix(count)[0].astype(np.int64))}",
            inputs=[call.grad_output_name, f"{call.name}.argmax"],
            outputs=[call.grad_input_names[0], count_name],
            checks=[(dx, call.grad_inputs[0], "autograd dL/dX")],
            note="Every window sends its gradient to the one input element that was its maximum; "
            "all other elements get 0. "
            + (
                f"Here {accumulated} element(s) won more than one overlapping window, so their "
                "gradients add up (the sums above)."
                if accumulated
                else "No element won more than one window here, so nothing accumulates."
            ),
        )
