"""Elementwise activations: forward value and local derivative side by side.

Every elementwise layer has the same backward, dL/dZ = dL/dA ⊙ f'(Z): only
the function and its derivative differ, so each layer below is one small class
giving f, f' and their LaTeX (a table, one row per layer type). The local
derivative f'(Z) is stored as "<layer>.slope" so that the product can be read
entry by entry. ReLU keeps its own 0/1 mask under "<layer>.mask".

At kinks PyTorch picks one side; the classes below pick the same one
(ReLU, LeakyReLU: the left side at 0; Hardtanh: 0 at both ends).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from storage import names
from storage.npmath import relu_backward, relu_forward, sigmoid

from .. import latex
from .base import Explainer, Functional, LayerCall, StepContext, is_a, one_tensor, register
from .common import f64, mat, named, sub

_erf = np.vectorize(math.erf, otypes=[np.float64])


# Signatures of the builtin functional forms (inspect cannot read them).
def _gelu(input, approximate="none"):  # noqa: A002
    """F.gelu"""


def _softplus(input, beta=1.0, threshold=20.0):  # noqa: A002
    """F.softplus"""


def _leaky_relu_(input, negative_slope=0.01):  # noqa: A002
    """F.leaky_relu_"""


def _hardtanh_(input, min_val=-1.0, max_val=1.0):  # noqa: A002
    """F.hardtanh_"""


def _elu_(input, alpha=1.0):  # noqa: A002
    """F.elu_"""


def _prelu(input, weight):  # noqa: A002
    """F.prelu"""


def _relu6(a):
    """F.relu6(x, inplace) is nn.ReLU6, a Hardtanh from 0 to 6."""
    return nn.ReLU6(inplace=a["inplace"]), [a["input"]], {}


def _build_prelu(module_type, a, out):
    weight = a["weight"]
    return nn.PReLU(weight.numel(), device="meta"), [a["input"]], {"weight": weight}


@register(
    nn.ReLU,
    functional=[
        F.relu,
        Functional((torch.relu, torch.Tensor.relu), one_tensor),
        Functional(
            (torch.relu_, torch.Tensor.relu_, F.relu_), one_tensor, settings={"inplace": True}
        ),
    ],
)
class ReLUExplainer(Explainer):
    formula = r"A = \max(0, Z)"

    def per_sample(self, call) -> bool:
        return True  # element by element

    def describe(self, module) -> str:
        return "rectified linear unit, elementwise max(0, z)" + (
            " (in place)" if getattr(module, "inplace", False) else ""
        )

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        z = f64(call.x)
        a, mask = relu_forward(z)  # mask: 0/1 int8, stored as integers like the formula shows them
        mask_name = ctx.tensor("mask", mask)
        z_view, where = latex.as_matrix(z)
        ctx.step(
            "ReLU",
            r"A = \max(0, Z), \qquad M = \mathbb{1}[Z > 0]",
            rf"Z{sub(where)} = {latex.bmatrix(z_view)} \;\Rightarrow\; "
            rf"A = {mat(a)}, \quad M = {mat(mask.astype(np.int64))}",
            inputs=[call.input_names[0]],
            outputs=[call.output_name, mask_name],
            checks=[(a, call.output, "PyTorch relu output")],
            note="Negative entries become 0. The mask M remembers where Z was positive; "
            "backward uses it.",
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        z = f64(call.x)
        mask = (z > 0).astype(np.float64)
        da = f64(call.grad_output)
        dz = relu_backward(z, da)
        zeros = int((z == 0).sum())
        ctx.step(
            "ReLU backward",
            r"\frac{\partial L}{\partial Z} = \frac{\partial L}{\partial A} \odot \mathbb{1}[Z > 0]",
            rf"{mat(da)} \odot {mat(mask.astype(np.int64))} = {mat(dz)}",
            inputs=[call.grad_output_name, names.intermediate(call.name, "mask")],
            outputs=[call.grad_input_names[0]],
            checks=[(dz, call.grad_inputs[0], "autograd dL/dZ")],
            note="Gradient passes where Z > 0 and stops where the unit was off."
            + (
                f" {zeros} entr{'y is' if zeros == 1 else 'ies are'} exactly 0: PyTorch's "
                "derivative there is 0, and so is ours."
                if zeros
                else ""
            ),
        )


class ElementwiseExplainer(Explainer):
    """A = f(Z) entry by entry; backward multiplies by f'(Z) entry by entry."""

    title: ClassVar[str] = ""
    formula: ClassVar[str] = ""  # A = f(Z)
    derivative: ClassVar[str] = ""  # f'(Z), as LaTeX
    why: ClassVar[str] = ""  # one sentence for the forward note
    why_backward: ClassVar[str] = ""  # one sentence for the backward note

    def per_sample(self, call) -> bool:
        return True  # element by element

    def value(self, z: np.ndarray, module) -> np.ndarray:
        raise NotImplementedError

    def slope(self, z: np.ndarray, module) -> np.ndarray:
        raise NotImplementedError

    def settings(self, module) -> str:
        """The layer's constants as LaTeX, e.g. \\alpha = 0.01 (empty if none)."""
        return ""

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        z = f64(call.x)
        a = self.value(z, call.module)
        constants = self.settings(call.module)
        ctx.step(
            self.title,
            self.formula,
            (rf"{constants},\quad " if constants else "")
            + rf"{named('Z', z)} \;\Rightarrow\; A = {mat(a)}",
            inputs=[call.input_names[0]],
            outputs=[call.output_name],
            checks=[(a, call.output, f"PyTorch {type(call.module).__name__} output")],
            note=self.why,
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        z = f64(call.x)
        slope = self.slope(z, call.module)  # f'(Z), same shape as Z
        da = f64(call.grad_output)
        dz = da * slope
        slope_name = ctx.tensor("slope", slope)
        ctx.step(
            f"{self.title} backward",
            rf"\frac{{\partial L}}{{\partial Z}} = \frac{{\partial L}}{{\partial A}} \odot f'(Z),"
            rf"\qquad f'(Z) = {self.derivative}",
            rf"{mat(da)} \odot {mat(slope)} = {mat(dz)}",
            inputs=[call.grad_output_name, call.input_names[0]],
            outputs=[slope_name, call.grad_input_names[0]],
            checks=[(dz, call.grad_inputs[0], "autograd dL/dZ")],
            note="Each entry depends on its own input only, so the Jacobian is diagonal and "
            "the backward pass is an elementwise product with the local derivative f'(Z) "
            f"(stored as {slope_name}). " + self.why_backward,
        )


@register(
    nn.LeakyReLU,
    functional=[
        F.leaky_relu,
        Functional((F.leaky_relu_,), _leaky_relu_, settings={"inplace": True}),
    ],
)
class LeakyReLUExplainer(ElementwiseExplainer):
    title = "LeakyReLU"
    formula = r"A = \begin{cases} Z & Z > 0 \\ \alpha Z & Z \le 0 \end{cases}"
    derivative = r"\begin{cases} 1 & Z > 0 \\ \alpha & Z \le 0 \end{cases}"
    why = "Negative inputs are scaled by a small slope alpha instead of cut to 0, so they keep a gradient."
    why_backward = "At exactly Z = 0 PyTorch uses the slope alpha, and so do we."

    def describe(self, module) -> str:
        return f"leaky ReLU, slope {module.negative_slope:g} for negative inputs"

    def settings(self, module) -> str:
        return rf"\alpha = {latex.scalar(module.negative_slope)}"

    def value(self, z, module):
        return np.where(z > 0, z, module.negative_slope * z)

    def slope(self, z, module):
        return np.where(z > 0, 1.0, float(module.negative_slope))


@register(
    nn.Hardtanh,
    functional=[
        F.hardtanh,
        Functional((F.hardtanh_,), _hardtanh_, settings={"inplace": True}),
        Functional((F.relu6,), build=lambda t, a, out: _relu6(a)),
    ],
)
class HardtanhExplainer(ElementwiseExplainer):
    title = "Hardtanh"
    formula = r"A = \min(\max(Z, a), b)"
    derivative = r"\mathbb{1}[a < Z < b]"
    why = "Inputs are clipped to the interval [a, b]; ReLU6 is the case a = 0, b = 6."
    why_backward = "Where the input was clipped (including exactly at a or b) the gradient is 0, as in PyTorch."

    def describe(self, module) -> str:
        name = "ReLU6" if is_a(module, "ReLU6") else "hard tanh"
        return f"{name}, clip to [{module.min_val:g}, {module.max_val:g}]"

    def settings(self, module) -> str:
        return rf"a = {latex.scalar(module.min_val)},\ b = {latex.scalar(module.max_val)}"

    def value(self, z, module):
        return np.clip(z, module.min_val, module.max_val)

    def slope(self, z, module):
        return ((z > module.min_val) & (z < module.max_val)).astype(np.float64)


@register(
    nn.Sigmoid,
    functional=[Functional((torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid), one_tensor)],
)
class SigmoidExplainer(ElementwiseExplainer):
    title = "Sigmoid"
    formula = r"A = \sigma(Z) = \frac{1}{1 + e^{-Z}}"
    derivative = r"\sigma(Z)\,\big(1 - \sigma(Z)\big)"
    why = "Squashes every input into (0, 1)."
    why_backward = "The derivative is at most 0.25 (at Z = 0) and vanishes for large |Z|: saturated units pass almost no gradient."

    def describe(self, module) -> str:
        return "logistic sigmoid, elementwise 1 / (1 + exp(-z))"

    def value(self, z, module):
        return sigmoid(z)

    def slope(self, z, module):
        s = sigmoid(z)
        return s * (1.0 - s)


@register(nn.Tanh, functional=[Functional((torch.tanh, torch.Tensor.tanh, F.tanh), one_tensor)])
class TanhExplainer(ElementwiseExplainer):
    title = "Tanh"
    formula = r"A = \tanh(Z)"
    derivative = r"1 - \tanh^2(Z)"
    why = "Squashes every input into (-1, 1), centred on 0."
    why_backward = "The derivative is 1 at Z = 0 and vanishes for large |Z|."

    def describe(self, module) -> str:
        return "hyperbolic tangent, elementwise"

    def value(self, z, module):
        return np.tanh(z)

    def slope(self, z, module):
        return 1.0 - np.tanh(z) ** 2


@register(nn.ELU, functional=[F.elu, Functional((F.elu_,), _elu_, settings={"inplace": True})])
class ELUExplainer(ElementwiseExplainer):
    title = "ELU"
    formula = r"A = \begin{cases} Z & Z > 0 \\ \alpha (e^{Z} - 1) & Z \le 0 \end{cases}"
    derivative = r"\begin{cases} 1 & Z > 0 \\ \alpha e^{Z} & Z \le 0 \end{cases}"
    why = "Like ReLU for positive inputs; negative inputs curve smoothly towards -alpha."
    why_backward = ""

    def describe(self, module) -> str:
        return f"exponential linear unit, alpha {module.alpha:g}"

    def settings(self, module) -> str:
        return rf"\alpha = {latex.scalar(module.alpha)}"

    def value(self, z, module):
        return np.where(z > 0, z, module.alpha * np.expm1(np.minimum(z, 0.0)))

    def slope(self, z, module):
        return np.where(z > 0, 1.0, module.alpha * np.exp(np.minimum(z, 0.0)))


@register(nn.SiLU, functional=[F.silu])
class SiLUExplainer(ElementwiseExplainer):
    title = "SiLU"
    formula = r"A = Z\,\sigma(Z)"
    derivative = r"\sigma(Z)\big(1 + Z (1 - \sigma(Z))\big)"
    why = "Sigmoid-weighted linear unit (swish): the input gated by its own sigmoid."
    why_backward = "Product rule: sigma(Z) + Z sigma'(Z)."

    def describe(self, module) -> str:
        return "SiLU (swish), elementwise z * sigmoid(z)"

    def value(self, z, module):
        return z * sigmoid(z)

    def slope(self, z, module):
        s = sigmoid(z)
        return s * (1.0 + z * (1.0 - s))


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_KAPPA = 0.044715


@register(nn.GELU, functional=[Functional((F.gelu,), _gelu)])
class GELUExplainer(ElementwiseExplainer):
    title = "GELU"
    formula = r"A = Z\,\Phi(Z),\quad \Phi(Z) = \tfrac12\big(1 + \operatorname{erf}(Z/\sqrt2)\big)"
    derivative = r"\Phi(Z) + Z\,\varphi(Z),\quad \varphi(Z) = \tfrac{1}{\sqrt{2\pi}} e^{-Z^2/2}"
    why = "Gaussian error linear unit: the input weighted by the probability that a standard normal is below it."
    why_backward = "Product rule: Phi(Z) + Z phi(Z)."

    def describe(self, module) -> str:
        approx = " (tanh approximation)" if module.approximate == "tanh" else ""
        return f"GELU, elementwise z * Phi(z){approx}"

    def settings(self, module) -> str:
        return r"\text{tanh approximation}" if module.approximate == "tanh" else ""

    @staticmethod
    def _inner(z):
        return _SQRT_2_OVER_PI * (z + _KAPPA * z**3)

    def value(self, z, module):
        if module.approximate == "tanh":
            return 0.5 * z * (1.0 + np.tanh(self._inner(z)))
        return 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0)))

    def slope(self, z, module):
        if module.approximate == "tanh":
            t = np.tanh(self._inner(z))
            return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t**2) * _SQRT_2_OVER_PI * (
                1.0 + 3 * _KAPPA * z**2
            )
        cdf = 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))
        pdf = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
        return cdf + z * pdf


@register(nn.Softplus, functional=[Functional((F.softplus,), _softplus)])
class SoftplusExplainer(ElementwiseExplainer):
    title = "Softplus"
    formula = r"A = \begin{cases} \tfrac{1}{\beta}\log(1 + e^{\beta Z}) & \beta Z \le t \\ Z & \beta Z > t \end{cases}"
    derivative = r"\begin{cases} \sigma(\beta Z) & \beta Z \le t \\ 1 & \beta Z > t \end{cases}"
    why = "A smooth ReLU; above the threshold t it is replaced by the identity, as PyTorch does, to avoid overflow."
    why_backward = "Its derivative is the sigmoid of beta Z."

    def describe(self, module) -> str:
        return f"softplus, beta {module.beta:g}, threshold {module.threshold:g}"

    def settings(self, module) -> str:
        return rf"\beta = {latex.scalar(module.beta)},\ t = {latex.scalar(module.threshold)}"

    def value(self, z, module):
        bz = module.beta * z
        return np.where(bz > module.threshold, z, np.logaddexp(0.0, bz) / module.beta)

    def slope(self, z, module):
        bz = module.beta * z
        return np.where(bz > module.threshold, 1.0, sigmoid(bz))


@register(nn.Identity)
class IdentityExplainer(ElementwiseExplainer):
    title = "Identity"
    formula = r"A = Z"
    derivative = r"1"
    why = "Passes its input through unchanged (a placeholder layer)."
    why_backward = "The gradient passes through unchanged."

    def describe(self, module) -> str:
        return "identity (passes the input through)"

    def value(self, z, module):
        return z

    def slope(self, z, module):
        return np.ones_like(z)


@register(nn.PReLU, functional=[Functional((F.prelu,), _prelu, _build_prelu)])
class PReLUExplainer(Explainer):
    formula = r"A = \begin{cases} Z & Z > 0 \\ a_c Z & Z \le 0 \end{cases}"

    def per_sample(self, call) -> bool:
        return call.x.ndim >= 2  # (N, C, ...): one slope per channel

    def describe(self, module: nn.PReLU) -> str:
        n = module.num_parameters
        return "parametric ReLU, " + (
            "one learned slope" if n == 1 else f"{n} learned slopes (one per channel)"
        )

    @staticmethod
    def _slope(call: LayerCall) -> np.ndarray:
        """The learned slope broadcast to the input: one number, or one per channel (dim 1)."""
        a = f64(call.params["weight"])
        z = call.x
        if a.size == 1 or z.ndim < 2:
            return a.reshape((1,) * z.ndim) if a.size == 1 else a.reshape(-1)
        return a.reshape((1, -1) + (1,) * (z.ndim - 2))

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        z = f64(call.x)
        a = self._slope(call)
        out = np.where(z > 0, z, a * z)
        ctx.step(
            "PReLU",
            self.formula,
            rf"a = {latex.row_vector(call.params['weight'])},\quad {named('Z', z)} \;\Rightarrow\; A = {mat(out)}",
            inputs=[call.input_names[0], call.param_names["weight"]],
            outputs=[call.output_name],
            checks=[(out, call.output, "PyTorch prelu output")],
            note="Like LeakyReLU, but the negative slope is a parameter that training learns"
            + (", one per channel." if call.params["weight"].size > 1 else "."),
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        z = f64(call.x)
        a = self._slope(call)
        da = f64(call.grad_output)
        neg = z <= 0
        dz = np.where(neg, a * da, da)
        per_entry = np.where(neg, z * da, 0.0)  # dL/da contribution of every entry
        w = call.params["weight"]
        if w.size == 1:
            dw = np.asarray(per_entry.sum()).reshape(w.shape)
        elif z.ndim >= 2:
            dw = per_entry.sum(axis=tuple(i for i in range(z.ndim) if i != 1))
        else:
            dw = per_entry
        ctx.step(
            "PReLU: gradient of the slopes",
            r"\frac{\partial L}{\partial a_c} = \sum_{Z \le 0 \text{ in channel } c} Z\, \frac{\partial L}{\partial A}",
            rf"\frac{{\partial L}}{{\partial a}} = {latex.row_vector(dw)}",
            inputs=[call.grad_output_name, call.input_names[0]],
            outputs=[call.param_grad_names.get("weight")],
            checks=[ctx.param_grad("weight", dw)],
            note="Only entries on the negative side used the slope, so only they contribute.",
        )
        ctx.step(
            "PReLU backward",
            r"\frac{\partial L}{\partial Z} = \frac{\partial L}{\partial A} \odot \begin{cases} 1 & Z > 0 \\ a_c & Z \le 0 \end{cases}",
            rf"{mat(da)} \;\Rightarrow\; {mat(dz)}",
            inputs=[call.grad_output_name, call.param_names["weight"]],
            outputs=[call.grad_input_names[0]],
            checks=[(dz, call.grad_inputs[0], "autograd dL/dZ")],
        )
