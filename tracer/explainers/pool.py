"""Pooling layers.

Max pooling (MaxPool2d, AdaptiveMaxPool2d): windows, their maxima and
argmaxes; backward routes each gradient to its window's argmax and accumulates
where overlapping windows share one.

Ties: PyTorch's CPU kernels scan a window row by row and keep the first
strictly greater value, so the first maximum in row-major order wins. np.argmax
makes the same choice (first occurrence), so our routing equals autograd's.

Average pooling (AvgPool2d, AdaptiveAvgPool2d) is linear and separable: a
0/1 matrix R_h (OH x H) says which input rows each window covers, R_w
(OW x W) which columns, and D (OH x OW) what each window sum is divided by, so
    Y = (R_h X R_w^T) ⊘ D          and          dX = R_h^T (dY ⊘ D) R_w.
The transpose in the backward is where overlapping windows accumulate.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from storage import names
from storage.npmath import (
    adaptive_avg_matrices,
    adaptive_bounds,
    adaptive_max_pool2d,
    avg_pool_backward,
    avg_pool_forward,
    avg_pool_matrices,
    max_pool2d,
    max_pool_backward,
    pool_output_size,
)

from .. import latex
from .base import (
    Explainer,
    Functional,
    LayerCall,
    StepContext,
    Unsupported,
    build_like_module,
    is_a,
    register,
)
from .common import f64, named, pair, sub


def as_batched(x: np.ndarray) -> np.ndarray:
    """(C, H, W) unbatched input -> (1, C, H, W); (N, C, H, W) unchanged."""
    if x.ndim == 3:
        return x[None]
    if x.ndim != 4:
        raise Unsupported(f"input of rank {x.ndim} (expected (N, C, H, W) or (C, H, W))")
    return x


def _max_settings(module: nn.MaxPool2d, x_shape):
    kernel = pair(module.kernel_size)
    stride = pair(module.stride if module.stride is not None else module.kernel_size)
    padding = pair(module.padding)
    dilation = pair(module.dilation)
    if getattr(module, "return_indices", False):
        raise Unsupported("return_indices=True")
    out = tuple(
        pool_output_size(
            x_shape[2 + i], kernel[i], stride[i], padding[i], dilation[i], module.ceil_mode
        )
        for i in range(2)
    )
    return kernel, stride, padding, dilation, out


def _adaptive_out(module, x_shape) -> tuple[int, int]:
    size = module.output_size
    size = (size, size) if isinstance(size, int) or size is None else tuple(size)
    return tuple(x_shape[2 + i] if size[i] is None else int(size[i]) for i in range(2))


class MaxPoolExplainer(Explainer):
    """Shared steps of max pooling; subclasses say where the windows are."""

    kind = "max_pool2d"

    def per_sample(self, call) -> bool:
        return call.x.ndim == 4

    def route(self, x: np.ndarray, module):
        """-> y (N, C, OH, OW), src (N, C, OH, OW) flat input index of each maximum,
        and a function giving the window of output (i, j) of plane 0 as a 2-D array."""
        raise NotImplementedError

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        x = as_batched(f64(call.x))
        y, src, window_of = self.route(x, call.module)
        oh, ow = y.shape[2:]
        w_in = x.shape[3]
        argmax_name = ctx.tensor("argmax", src.reshape(call.output.shape))
        positions = [(i, j) for i in range(oh) for j in range(ow)]
        lines = []
        for i, j in positions[:6]:
            r, c = divmod(int(src[0, 0, i, j]), w_in)
            lines.append(
                rf"Y_{{{i},{j}}} &= \max {latex.bmatrix(window_of(i, j))} = {latex.scalar(y[0, 0, i, j])}"
                rf" \quad\text{{at }} X_{{{r},{c}}}"
            )
        if len(positions) > 6:
            lines.append(r"&\vdots")
        where = latex.as_matrix(x)[1]
        ctx.step(
            "Max pooling: each window, its maximum and where it is",
            r"Y_{i,j} = \max_{(p,q) \in \Omega_{i,j}} X_{p,q}, \qquad"
            r" (p^*,q^*)_{i,j} = \operatorname{argmax}_{(p,q) \in \Omega_{i,j}} X_{p,q}",
            latex.aligned(*lines)
            + rf"\;\Rightarrow\; Y{sub(where)} = {latex.bmatrix(latex.as_matrix(y)[0])}",
            inputs=[call.input_names[0]],
            outputs=[call.output_name, argmax_name],
            checks=[(y.reshape(call.output.shape), call.output, f"PyTorch {self.kind} output")],
            note="Omega_ij is the window of output (i, j)"
            + (
                ", padded with -infinity so padding never wins"
                if getattr(call.module, "padding", 0) not in (0, (0, 0))
                else ""
            )
            + ". If several entries tie for the maximum, the first in row-major order is chosen, "
            "as PyTorch does; the argmax tensor stores each window's choice as a flat index into "
            "the input plane.",
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        x = as_batched(f64(call.x))
        y, src, _ = self.route(x, call.module)
        oh, ow = y.shape[2:]
        dy = f64(call.grad_output).reshape(y.shape)
        w = x.shape[3]
        # Each window's gradient goes to its argmax; overlapping windows accumulate.
        dx, count = max_pool_backward(dy, src, x.shape)  # (N, C, H, W) each
        count_name = ctx.tensor("route_count", count.reshape(call.x.shape).astype(np.int32))
        # Spell out the sums for the first plane: which windows feed which input element.
        terms: dict[int, list[tuple[int, int]]] = {}
        for i in range(oh):
            for j in range(ow):
                terms.setdefault(int(src[0, 0, i, j]), []).append((i, j))
        lines = []
        for flat in sorted(terms, key=lambda k: (-len(terms[k]), k))[:6]:
            r, col = divmod(flat, w)
            parts = terms[flat]
            symbolic = " + ".join(
                rf"\tfrac{{\partial L}}{{\partial Y_{{{i},{j}}}}}" for i, j in parts[:4]
            )
            numbers = " + ".join(latex.scalar(dy[0, 0, i, j]) for i, j in parts[:4])
            if len(parts) > 4:
                symbolic += r" + \cdots"
                numbers += r" + \cdots"
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
            + rf"\;\Rightarrow\; \frac{{\partial L}}{{\partial X}}{sub(where)} = {latex.bmatrix(dx_view)},"
            rf"\quad \text{{windows per element}} = {latex.bmatrix(latex.as_matrix(count)[0].astype(np.int64))}",
            inputs=[call.grad_output_name, names.intermediate(call.name, "argmax")],
            outputs=[call.grad_input_names[0], count_name],
            checks=[(dx.reshape(call.x.shape), call.grad_inputs[0], "autograd dL/dX")],
            note="Every window sends its gradient to the one input element that was its maximum; "
            "all other elements get 0. "
            + (
                f"Here {accumulated} element(s) won more than one overlapping window (counted in "
                "the plane shown), so their gradients add up (the sums above)."
                if accumulated
                else "No element of the plane shown won more than one window, so nothing accumulates there."
            ),
        )


def _max_pool2d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):  # noqa: A002
    """F.max_pool2d, torch.max_pool2d"""


def _build_max_pool2d(module_type, a, out):
    if a["return_indices"]:
        return None
    stride = a["stride"] or None  # torch.max_pool2d's default stride is [], meaning the kernel size
    module = nn.MaxPool2d(
        a["kernel_size"], stride, a["padding"], a["dilation"], ceil_mode=a["ceil_mode"]
    )
    return module, [a["input"]], {}


@register(
    nn.MaxPool2d,
    functional=[Functional((F.max_pool2d, torch.max_pool2d), _max_pool2d, _build_max_pool2d)],
)
class MaxPool2dExplainer(MaxPoolExplainer):
    formula = r"Y_{i,j} = \max_{(p,q) \in \Omega_{i,j}} X_{p,q}"

    def describe(self, module: nn.MaxPool2d) -> str:
        k = pair(module.kernel_size)
        s = pair(module.stride if module.stride is not None else module.kernel_size)
        overlap = " (overlapping windows)" if s[0] < k[0] or s[1] < k[1] else ""
        extra = f", padding {pair(module.padding)}" if pair(module.padding) != (0, 0) else ""
        extra += f", dilation {pair(module.dilation)}" if pair(module.dilation) != (1, 1) else ""
        extra += ", ceil mode" if module.ceil_mode else ""
        return f"max pooling, window {k[0]}x{k[1]}, stride {s[0]}x{s[1]}{extra}{overlap}"

    def route(self, x, module):
        kernel, stride, padding, dilation, out_hw = _max_settings(module, x.shape)
        # first maximum in row-major window order, as PyTorch
        y, src, vals = max_pool2d(x, kernel, stride, padding, dilation, out_hw)
        return y, src, lambda i, j: vals[0, 0, i, j].reshape(kernel)


def _adaptive_max_pool2d(input, output_size, return_indices=False):  # noqa: A002
    """F.adaptive_max_pool2d"""


def _build_adaptive_max_pool2d(module_type, a, out):
    return None if a["return_indices"] else build_like_module(module_type, a, out)


@register(
    nn.AdaptiveMaxPool2d,
    functional=[
        Functional((F.adaptive_max_pool2d,), _adaptive_max_pool2d, _build_adaptive_max_pool2d)
    ],
)
class AdaptiveMaxPool2dExplainer(MaxPoolExplainer):
    formula = r"Y_{i,j} = \max_{p \in [\lfloor iH/H' \rfloor, \lceil (i+1)H/H' \rceil),\ q \in [\ldots)} X_{p,q}"
    kind = "adaptive_max_pool2d"

    def describe(self, module) -> str:
        return f"adaptive max pooling to {module.output_size}"

    def route(self, x, module):
        if getattr(module, "return_indices", False):
            raise Unsupported("return_indices=True")
        h, w = x.shape[2:]
        oh, ow = _adaptive_out(module, x.shape)
        rows, cols = adaptive_bounds(h, oh), adaptive_bounds(w, ow)
        y, src = adaptive_max_pool2d(x, (oh, ow))
        return y, src, lambda i, j: x[0, 0, rows[i][0] : rows[i][1], cols[j][0] : cols[j][1]]


def _avg_matrices(module, x_shape):
    """R_h (OH, H), R_w (OW, W) window-membership matrices and the divisor map D (OH, OW)."""
    if is_a(module, "AdaptiveAvgPool2d"):
        return adaptive_avg_matrices(x_shape, _adaptive_out(module, x_shape))
    return avg_pool_matrices(
        x_shape,
        pair(module.kernel_size),
        pair(module.stride if module.stride is not None else module.kernel_size),
        pair(module.padding),
        module.ceil_mode,
        module.count_include_pad,
        module.divisor_override,
    )


class AvgPoolExplainer(Explainer):
    kind = "avg_pool2d"

    def per_sample(self, call) -> bool:
        return call.x.ndim == 4

    def divisor_words(self, module) -> str:
        raise NotImplementedError

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        x = as_batched(f64(call.x))
        rh, rw, divisor = _avg_matrices(call.module, x.shape)
        y = avg_pool_forward(x, rh, rw, divisor)  # (R_h X R_w^T) ⊘ D per plane
        # All three hold whole numbers (memberships, window sizes, divisor_override).
        rh_i, rw_i, d_i = rh.astype(np.int32), rw.astype(np.int32), divisor.astype(np.int32)
        rh_name = ctx.tensor("R_h", rh_i)
        rw_name = ctx.tensor("R_w", rw_i)
        d_name = ctx.tensor("divisor", d_i)
        ctx.step(
            "Average pooling as matrix products",
            r"Y_{n,c} = \big(R_h\, X_{n,c}\, R_w^{\top}\big) \oslash D,\quad"
            r" (R_h)_{i,p} = \mathbb{1}[p \in \text{rows of window } i],\ "
            r"(R_w)_{j,q} = \mathbb{1}[q \in \text{cols of window } j]",
            rf"R_h = {latex.bmatrix(rh_i)},\quad R_w = {latex.bmatrix(rw_i)},\quad D = {latex.bmatrix(d_i)}"
            rf"\;\Rightarrow\; \Big({latex.bmatrix(rh_i)} {latex.bmatrix(latex.as_matrix(x)[0])} {latex.bmatrix(rw_i.T)}\Big)"
            rf" \oslash D = {named('Y', y)}",
            inputs=[call.input_names[0]],
            outputs=[rh_name, rw_name, d_name, call.output_name],
            checks=[(y.reshape(call.output.shape), call.output, f"PyTorch {self.kind} output")],
            note="Every pooling window is a block of rows times a block of columns, so two 0/1 "
            "matrices describe all of them (rows of R_h that share a 1 are overlapping windows). "
            "R_h X R_w^T sums each window; dividing entrywise by D makes the sums averages. "
            + self.divisor_words(call.module)
            + " The same R_h, R_w, D serve every sample and channel.",
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        x = as_batched(f64(call.x))
        rh, rw, divisor = _avg_matrices(call.module, x.shape)
        dy = f64(call.grad_output).reshape(x.shape[:2] + divisor.shape)
        scaled, dx = avg_pool_backward(dy, rh, rw, divisor)  # R_h^T (dY ⊘ D) R_w per plane
        shared = int(((rh.sum(axis=0) > 1)[:, None] | (rw.sum(axis=0) > 1)[None, :]).sum())
        ctx.step(
            "Average pooling backward",
            r"\frac{\partial L}{\partial X_{n,c}} = R_h^{\top} \Big(\frac{\partial L}{\partial Y_{n,c}} \oslash D\Big) R_w",
            rf"{latex.bmatrix(rh.T.astype(np.int32))} {latex.bmatrix(latex.as_matrix(scaled)[0])} {latex.bmatrix(rw.astype(np.int32))}"
            " = " + named(r"\frac{\partial L}{\partial X}", dx),
            inputs=[
                names.intermediate(call.name, "R_h"),
                call.grad_output_name,
                names.intermediate(call.name, "divisor"),
                names.intermediate(call.name, "R_w"),
            ],
            outputs=[call.grad_input_names[0]],
            checks=[(dx.reshape(call.x.shape), call.grad_inputs[0], "autograd dL/dX")],
            note="Each window hands every input it covers an equal share 1/D of its gradient. "
            + (
                f"{shared} input position(s) lie in more than one window here; the transposes "
                "add their shares up."
                if shared
                else "No input lies in two windows here."
            )
            + (
                " Inputs in no window get 0."
                if (rh.sum(axis=0) == 0).any() or (rw.sum(axis=0) == 0).any()
                else ""
            ),
        )


def _avg_pool2d(
    input,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):  # noqa: A002
    """F.avg_pool2d"""


def _build_avg_pool2d(module_type, a, out):
    module = nn.AvgPool2d(
        a["kernel_size"],
        a["stride"] or None,
        a["padding"],
        a["ceil_mode"],
        a["count_include_pad"],
        a["divisor_override"],
    )
    return module, [a["input"]], {}


@register(nn.AvgPool2d, functional=[Functional((F.avg_pool2d,), _avg_pool2d, _build_avg_pool2d)])
class AvgPool2dExplainer(AvgPoolExplainer):
    formula = r"Y_{i,j} = \frac{1}{D_{i,j}} \sum_{(p,q) \in \Omega_{i,j}} X_{p,q}"

    def describe(self, module) -> str:
        k = pair(module.kernel_size)
        s = pair(module.stride if module.stride is not None else module.kernel_size)
        extra = f", padding {pair(module.padding)}" if pair(module.padding) != (0, 0) else ""
        extra += ", ceil mode" if module.ceil_mode else ""
        extra += (
            ", padding not counted"
            if not module.count_include_pad and pair(module.padding) != (0, 0)
            else ""
        )
        extra += f", divisor {module.divisor_override}" if module.divisor_override else ""
        return f"average pooling, window {k[0]}x{k[1]}, stride {s[0]}x{s[1]}{extra}"

    def divisor_words(self, module) -> str:
        if module.divisor_override:
            return f"divisor_override sets every divisor to {module.divisor_override}."
        if module.count_include_pad:
            return (
                "D counts the zero padding inside a window (count_include_pad=True), "
                "but not the part of a ceil_mode window beyond the padding."
            )
        return "D counts only the real input positions of a window (count_include_pad=False)."


@register(nn.AdaptiveAvgPool2d, functional=[F.adaptive_avg_pool2d])
class AdaptiveAvgPool2dExplainer(AvgPoolExplainer):
    formula = r"Y_{i,j} = \frac{1}{|\Omega_{i,j}|} \sum_{(p,q) \in \Omega_{i,j}} X_{p,q}"
    kind = "adaptive_avg_pool2d"

    def describe(self, module) -> str:
        return f"adaptive average pooling to {module.output_size}"

    def divisor_words(self, module) -> str:
        return (
            "Window i covers rows floor(i H / OH) up to ceil((i+1) H / OH), so windows can "
            "differ in size and overlap; D is each window's size."
        )
