"""dL/d(input) computed by the worker instead of by autograd during the step.

The gradient with respect to the model's input is the reference for the first
layer's input-gradient step; the plain training step never needs it. When the
first layer is a convolution, autograd computing it is the largest single cost of
tracing on CPU: on LeNet-5 (a 1-channel 32x32 input) PyTorch's convolution
backward for the input takes about 5.7 ms, against 0.7 ms for the forward and 0.8
ms for the weight and bias gradients.

That gradient depends only on tensors the capture keeps anyway: dL/dY of the
convolution, its weight and its settings. So the worker can ask PyTorch for it
afterwards, with the very function autograd calls (`aten.convolution_backward`),
on the host copies of the same tensors, off the training thread.

That this gives autograd's gradient is not assumed: on the first traced iteration
autograd computes it as before, the same function is called on the captured
tensors, and only if the two arrays are bitwise equal does the capture leave it to
the worker from the next iteration on (`Capture._input_grad_later`). Otherwise
(another first layer, an input used twice, a GPU, a padding mode the function does
not do) autograd keeps computing it, as before.
"""

from __future__ import annotations

import numpy as np
import torch

from storage import names

from .records import CapturedCall, CapturedIteration

_CONVOLUTIONS = {"Conv1d": 1, "Conv2d": 2, "Conv3d": 3}
# How the check of the first layer's input gradient says where PyTorch's array came from.
COMPUTED_BY = (
    "aten.convolution_backward, the function autograd calls, on the stored dL/dY, X and W "
    "after the step; equal to autograd's bit for bit on the first traced iteration"
)


def input_consumer(calls: list[CapturedCall], input_name: str) -> CapturedCall | None:
    """The one call that uses the model input, if it is a convolution whose input
    gradient `conv_input_grad` computes; None otherwise (no call, several, another kind)."""
    users = [c for c in calls if input_name in c.input_names]
    if len(users) != 1:
        return None
    call = users[0]
    spec = call.module
    if (
        spec is None
        or call.op is not None
        or call.error
        or spec.type not in _CONVOLUTIONS
        or call.input_names[0] != input_name
        or input_name in call.input_names[1:]
    ):
        return None
    settings = spec.settings
    if settings.get("transposed") or settings.get("padding_mode", "zeros") != "zeros":
        return None
    if isinstance(settings.get("padding"), str):
        return None  # "same" / "valid": the module pads on its own
    return call


def conv_input_grad(call: CapturedCall, cap: CapturedIteration) -> np.ndarray | None:
    """dL/d(input) of a convolution call from the captured dL/dY, input and weight,
    by `aten.convolution_backward` (what autograd calls); None if one is missing."""
    spec = call.module
    x = call.inputs[0] if call.inputs else None
    dy = cap.grads.get(call.output_name) if call.output_name else None
    weight = cap.params.get(call.param_names.get("weight", ""))
    if spec is None or x is None or dy is None or weight is None:
        return None
    settings = spec.settings
    dims = _CONVOLUTIONS[spec.type]
    bias = cap.params.get(call.param_names.get("bias", ""))
    with torch.no_grad():
        dx, _, _ = torch.ops.aten.convolution_backward(
            torch.from_numpy(dy),
            torch.from_numpy(x),
            torch.from_numpy(weight),
            list(bias.shape) if bias is not None else None,
            list(settings["stride"]),  # tuples: nn.Conv*d stores them so
            list(settings["padding"]),
            list(settings["dilation"]),
            False,
            [0] * dims,
            int(settings["groups"]),
            [True, False, False],
        )
    return dx.numpy()


def fill_input_grad(cap: CapturedIteration) -> None:
    """Compute the input gradient the capture left to the worker (`input_grad_from`),
    in place; what cannot be computed is noted as a problem of the iteration."""
    input_name = cap.input_grad_from
    if input_name is None:
        return
    cap.input_grad_from = None
    call = input_consumer(cap.calls, input_name)
    if call is None:
        cap.problems.append(
            f"{names.grad(input_name)}: not computed (the model input was the input of one "
            "convolution in the first traced iteration, not in this one)"
        )
        return
    array = conv_input_grad(call, cap)
    if array is None:
        return  # no backward reached the convolution: autograd would have given none either
    cap.grads[input_name] = array
    cap.computed_grads[input_name] = COMPUTED_BY
