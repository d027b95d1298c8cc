"""Conv2d as im2col: a patch matrix times the flattened kernel, and its backward.

Forward:  X_col = im2col(X)            # (N, C, H, W) -> (N*OH*OW, C/G*KH*KW), one row per output position
          Y_col = X_col W_flat^T + b   # W (OC, C/G, KH, KW) -> W_flat (OC, C/G*KH*KW)
          Y = reshape(Y_col)           # (N*OH*OW, OC) -> (N, OC, OH, OW)
Backward: dW_flat = dY_col^T X_col,  db = sum of dY,  dX = col2im(dY_col W_flat)
Groups split channels into G independent convolutions, one product each.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from storage.npmath import (
    NP_PAD_MODES,
    conv2d_backward,
    conv2d_bias_grad,
    conv2d_forward,
    pad_index,
    pad_input,
    unpad_grad,
)

from .. import latex
from .base import Explainer, Functional, LayerCall, StepContext, Unsupported, register
from .common import named, sub


def _torch_unfold(x, kernel, stride, pads, dilation, mode="zeros") -> np.ndarray:
    """PyTorch's own patch matrix, to check ours: F.pad then F.unfold,
    (N, C*KH*KW, L) -> (N*L, C*KH*KW)."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t[None] if t.dim() == 3 else t
    if any(pads):
        top, bottom, left, right = pads
        t = F.pad(t, (left, right, top, bottom), mode="constant" if mode == "zeros" else mode)
    cols = F.unfold(t, kernel, dilation=dilation, padding=0, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]).numpy()


def _settings(module: nn.Conv2d):
    """kernel, stride, (top, bottom, left, right) padding, dilation, padding mode."""
    kernel, dilation = tuple(module.kernel_size), tuple(module.dilation)
    if module.padding == "valid":
        pads = (0, 0, 0, 0)
    elif module.padding == "same":
        # The total d*(k-1) is split with the odd one out at the bottom/right, as PyTorch does.
        total = [dilation[i] * (kernel[i] - 1) for i in range(2)]
        pads = (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    elif isinstance(module.padding, str):
        raise Unsupported(f"padding={module.padding!r}")
    else:
        ph, pw = module.padding
        pads = (ph, ph, pw, pw)
    if module.padding_mode != "zeros" and module.padding_mode not in NP_PAD_MODES:
        raise Unsupported(f"padding_mode={module.padding_mode!r}")
    return kernel, tuple(module.stride), pads, dilation, module.padding_mode


def _batched(x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        return x[None]  # an unbatched (C, H, W) input is one sample
    if x.ndim != 4:
        raise Unsupported(f"input of rank {x.ndim}")
    return x


def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """F.conv2d, torch.conv2d"""


def _build_conv2d(module_type, a, out):
    w, b = a["weight"], a["bias"]
    module = nn.Conv2d(
        w.shape[1] * a["groups"],
        w.shape[0],
        tuple(w.shape[2:]),
        a["stride"],
        a["padding"],
        a["dilation"],
        a["groups"],
        bias=b is not None,
        device="meta",
    )
    return module, [a["input"]], {k: t for k, t in (("weight", w), ("bias", b)) if t is not None}


@register(nn.Conv2d, functional=[Functional((F.conv2d, torch.conv2d), _conv2d, _build_conv2d)])
class Conv2dExplainer(Explainer):
    formula = r"Y_{n,o} = b_o + \sum_{c}\sum_{i,j} W_{o,c,i,j}\, X_{n,c,\,s h + d i,\; s w + d j}"

    def per_sample(self, call) -> bool:
        return call.x.ndim == 4  # (N, C, H, W); an unbatched (C, H, W) mixes nothing but has no N

    def describe(self, module: nn.Conv2d) -> str:
        k, s, p, d = module.kernel_size, module.stride, module.padding, module.dilation
        extra = f", stride {s[0]}x{s[1]}" if s != (1, 1) else ""
        extra += f", padding {p}" if p not in ((0, 0), "valid") else ""
        extra += (
            f" ({module.padding_mode})"
            if module.padding_mode != "zeros" and p not in ((0, 0), "valid")
            else ""
        )
        extra += f", dilation {d[0]}x{d[1]}" if d != (1, 1) else ""
        extra += f", groups {module.groups}" if module.groups != 1 else ""
        extra += "" if module.bias is not None else ", no bias"
        return (
            f"2-D convolution, {module.in_channels} -> {module.out_channels} channels, "
            f"kernel {k[0]}x{k[1]}{extra}"
        )

    @staticmethod
    def _padded(call: LayerCall):
        """The input padded as the module pads it, and the map back to the input."""
        kernel, stride, pads, dilation, mode = _settings(call.module)
        x = _batched(call.x.astype(np.float64))  # (N, C, H, W)
        index = pad_index(x.shape[2], x.shape[3], pads, mode)
        xp = pad_input(x, index) if any(pads) else x  # (N, C, H+top+bottom, W+left+right)
        return x, xp, index, (kernel, stride, (0, 0), dilation), pads, mode

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        module: nn.Conv2d = call.module
        x, xp, _, geometry, pads, mode = self._padded(call)
        kernel, stride, _, dilation = geometry
        w = call.params["weight"].astype(np.float64)  # (OC, C/G, KH, KW)
        b = call.params["bias"].astype(np.float64) if "bias" in call.params else None
        n, groups, oc = x.shape[0], module.groups, w.shape[0]
        cg, ocg = x.shape[1] // groups, oc // groups
        # (N, C, H', W') -> X_col (N*OH*OW, C*KH*KW), Y_col (N*OH*OW, OC), Y (N, OC, OH, OW)
        x_col, y_col, y = conv2d_forward(xp, w, b, geometry, groups)
        oh, ow = y.shape[2:]
        x_col_name = ctx.tensor("X_col", x_col)
        w_flat_all = w.reshape(oc, -1)
        w_flat_name = ctx.tensor("W_flat", w_flat_all)
        y_col_name = ctx.tensor("Y_col", y_col)
        if any(pads):
            top, bottom, left, right = pads
            kind = {"zeros": "zero", "replicate": "replicate (edge copy)"}.get(mode, mode)
            pad_note = (
                f" after {kind} padding ({top} row(s) on top, {bottom} at the bottom, "
                f"{left} column(s) left, {right} right)"
            )
            shown = named("X_{pad}", xp)
        else:
            pad_note = ""
            shown = named("X", x)
        ctx.step(
            "Unfold input patches (im2col)",
            r"X_{col} = \mathrm{im2col}(X)",
            rf"{shown} \;\Rightarrow\; X_{{col}} = {latex.bmatrix(x_col)}",
            inputs=[call.input_names[0]],
            outputs=[x_col_name],
            checks=[
                (
                    x_col,
                    _torch_unfold(call.x, kernel, stride, pads, dilation, mode),
                    "torch F.pad + F.unfold",
                )
            ],
            note=(
                f"Each row of X_col is one {kernel[0]}x{kernel[1]} window of the input{pad_note}, "
                f"taken with stride {stride}"
                + (
                    f" and dilation {dilation} (the window skips {dilation[0] - 1} row(s) / {dilation[1] - 1} column(s) between taps)"
                    if dilation != (1, 1)
                    else ""
                )
                + f"; there is one row per output position ({n} sample(s) x {oh}x{ow} positions "
                f"= {x_col.shape[0]} rows)"
                + (
                    f". With {groups} groups the columns come in {groups} blocks of {cg} channel(s) each"
                    if groups > 1
                    else ""
                )
                + "."
            ),
        )
        bias_tex = " + b" if b is not None else ""
        if b is None:
            bias_val = ""
        elif oc == 1:  # a scalar bias: "- 0.19", not "+ -0.19"
            bias_val = (" - " if b[0] < 0 else " + ") + latex.scalar(abs(b[0]))
        else:
            bias_val = " + " + latex.row_vector(b)
        if groups == 1:
            product = rf"{latex.bmatrix(x_col)} {latex.bmatrix(w_flat_all.T)}"
            formula = r"Y_{col} = X_{col}\, W_{flat}^{\top}" + bias_tex
        else:
            product = rf"\Big[\, X_{{col}}^{{(g)}} (W_{{flat}}^{{(g)}})^{{\top}} \,\Big]_{{g=1..{groups}}}"
            formula = r"Y_{col}^{(g)} = X_{col}^{(g)}\, (W_{flat}^{(g)})^{\top}" + bias_tex
        ctx.step(
            "Convolution as one matrix product",
            formula,
            rf"{product}{bias_val} = {latex.bmatrix(y_col)}",
            inputs=[x_col_name, w_flat_name, call.param_names.get("bias")],
            outputs=[y_col_name],
            checks=[
                (
                    y_col,
                    call.output.reshape(n, oc, oh, ow).transpose(0, 2, 3, 1).reshape(-1, oc),
                    "PyTorch conv2d output, as rows",
                )
            ],
            note="W_flat holds one flattened kernel per output channel"
            + (
                f"; group g multiplies its own {cg} input channel(s) by its own {ocg} kernel(s), "
                "so the product is block-diagonal across groups"
                if groups > 1
                else ""
            )
            + (
                "; the bias is added to every row."
                if b is not None
                else "; this layer has no bias."
            ),
        )
        y_view, y_where = latex.as_matrix(y)
        ctx.step(
            "Reshape to the output feature map",
            r"Y = \operatorname{reshape}(Y_{col},\ N \times C_{out} \times H_{out} \times W_{out})",
            rf"Y{sub(y_where)} = {latex.bmatrix(y_view)}",
            inputs=[y_col_name],
            outputs=[call.output_name],
            checks=[(y.reshape(call.output.shape), call.output, "PyTorch conv2d output")],
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        module: nn.Conv2d = call.module
        x, xp, index, geometry, pads, mode = self._padded(call)
        w = call.params["weight"].astype(np.float64)
        n, groups, oc = x.shape[0], module.groups, w.shape[0]
        dy = call.grad_output.astype(np.float64)
        dy = dy.reshape((n,) + dy.shape[-3:])  # (N, OC, OH, OW)
        # -> dY_col (N*OH*OW, OC), dW (OC, C/G, KH, KW), dX_col, dL/dX_pad (N, C, H', W')
        dy_col, dw, dx_col, dxp = conv2d_backward(xp, w, dy, geometry, groups)
        dx = unpad_grad(dxp, x.shape, index) if any(pads) else dxp
        x_col_name = f"{call.name}.X_col"
        dy_col_name = ctx.tensor("dY_col", dy_col)
        dw_view, dw_where = latex.as_matrix(dw)
        ctx.step(
            "Gradient of the kernel",
            r"\frac{\partial L}{\partial W_{flat}} = \Big(\frac{\partial L}{\partial Y_{col}}\Big)^{\top} X_{col}",
            rf"{latex.bmatrix(dy_col.T)} X_{{col}} = {latex.bmatrix(dw.reshape(oc, -1))}"
            rf"\;\Rightarrow\; \frac{{\partial L}}{{\partial W}}{sub(dw_where)} = {latex.bmatrix(dw_view)}",
            inputs=[dy_col_name, x_col_name],
            outputs=[call.param_grad_names.get("weight")],
            checks=[ctx.param_grad("weight", dw)],
            note="Each kernel entry collects, over every output position, the upstream gradient "
            "times the input value that entry multiplied in the forward pass"
            + (
                " (per group: a kernel only sees its own group's columns of X_col)."
                if groups > 1
                else "."
            ),
        )
        if "bias" in call.params:
            db = conv2d_bias_grad(dy)
            ctx.step(
                "Gradient of the bias",
                r"\frac{\partial L}{\partial b_o} = \sum_{n,i,j} \frac{\partial L}{\partial Y_{n,o,i,j}}",
                rf"\frac{{\partial L}}{{\partial b}} = {latex.bmatrix(db)}",
                inputs=[call.grad_output_name],
                outputs=[call.param_grad_names.get("bias")],
                checks=[ctx.param_grad("bias", db)],
                note="The bias is added at every output position, so its gradient is the sum of the upstream gradient over them.",
            )
        dx_col_name = ctx.tensor("dX_col", dx_col)
        dx_view, dx_where = latex.as_matrix(dx)
        unpad = ""
        if any(pads):
            unpad = (
                " The entries that landed on zero padding are dropped."
                if mode == "zeros"
                else f" The entries that landed on {mode} padding are added back onto the input "
                "positions that padding copied."
            )
        ctx.step(
            "Gradient of the input (col2im)",
            r"\frac{\partial L}{\partial X} = \mathrm{col2im}\Big(\frac{\partial L}{\partial Y_{col}}\, W_{flat}\Big)",
            rf"\frac{{\partial L}}{{\partial X_{{col}}}} = {latex.bmatrix(dx_col)}"
            rf"\;\Rightarrow\; \frac{{\partial L}}{{\partial X}}{sub(dx_where)} = {latex.bmatrix(dx_view)}",
            inputs=[dy_col_name, f"{call.name}.W_flat"],
            outputs=[dx_col_name, call.grad_input_names[0] if call.grad_input_names else None],
            checks=[
                (
                    dx.reshape(call.x.shape),
                    call.grad_inputs[0] if call.grad_inputs else None,
                    "autograd dL/dX",
                )
            ],
            note="col2im adds each row of dL/dX_col back onto the input window it came from; "
            "input positions covered by several windows accumulate their contributions."
            + unpad
            + " This equals a full convolution of dL/dY with the 180-degree rotated kernel.",
        )
