"""Functional interception: calls made in a `forward` outside any leaf module
(`torch.relu(x)`, `x + y`, `torch.flatten(x, 1)`, `F.max_pool2d`...) are seen
by a `TorchFunctionMode` that is active only while the root model's forward
runs. Those with an equivalent module (torch.relu -> nn.ReLU(), see
`EQUIVALENTS`) are explained by that module's explainer; the others are stored
as raw tensors.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack, resolve_name

from storage import names
from storage.names import ROLE_ACTIVATION

from ..explainers.elementwise import Add
from .records import CapturedCall, iter_tensors

if TYPE_CHECKING:
    from .core import Capture


class _FunctionRecorder(TorchFunctionMode):
    """Sees every torch function called while the root model's forward runs and
    hands the ones made outside leaf modules to `Capture._functional`.

    PyTorch pops the mode while `__torch_function__` runs, so the call we make
    here, and everything our recording code does, is not seen again.
    """

    def __init__(self, capture: Capture):
        super().__init__()
        self.capture = capture

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        capture = self.capture
        if (
            capture._leaf_depth
            or capture._busy
            or not capture.active
            or func in _PASS_THROUGH
            or getattr(func, "__name__", "") == "__get__"  # properties: .shape, .grad, .T ...
        ):
            return func(*args, **kwargs)
        return capture._functional(func, args, kwargs)


class FunctionalHooks:
    """The part of `Capture` that records functional calls."""

    def _enter_mode(self) -> None:
        if self._recorder is not None and not self._mode_entered:
            self._recorder.__enter__()
            self._mode_entered = True

    def _exit_mode(self) -> None:
        if not self._mode_entered:
            return
        stack = _get_current_function_mode_stack()
        if stack and stack[-1] is self._recorder:
            self._recorder.__exit__(None, None, None)
            self._mode_entered = False
        elif self._recorder not in stack:
            self._mode_entered = False
        # else: a mode the user entered inside forward is above ours and still
        # active; ours leaves when the user's does not come back -- leaving it
        # pushed is safer than popping theirs.

    # ------------------------------------------------------------ functional calls

    def _functional(self, func, args, kwargs):
        """A torch function called in a forward outside any leaf module."""
        found = [t for _, t in iter_tensors((args, kwargs))]
        if not found or not any(t.is_floating_point() for t in found):
            return func(*args, **kwargs)  # bookkeeping on integer tensors, or no tensor at all
        call = None
        if _modifies_input(func, args, kwargs):
            # The inputs are named (copied, and their gradient hooked) before the
            # op overwrites the first of them.
            with self._ours(f"before {_op_name(func)}"):
                call = self._open_functional(func, found)
        versions = [t._version for t in found]
        out = func(*args, **kwargs)
        with self._ours(f"after {_op_name(func)}"):
            self._close_functional(func, args, kwargs, found, versions, out, call)
        return out

    def _open_functional(self, func, found: list[torch.Tensor]) -> CapturedCall:
        op = _op_name(func)
        scope = self._scopes[-1] if self._scopes else ""
        base = names.child(scope, _short(op))
        if base in self.module_names:
            base += "_fn"
        name = self._call_name(base)
        call = CapturedCall(name=name, module=None, kind=op, input_names=[], inputs=[], op=op)
        data = _data(self, found)
        for position, tensor in enumerate(data):
            default = names.call_input(name, position, len(data))
            call.input_names.append(self._name(tensor, default, ROLE_ACTIVATION, name))
            call.inputs.append(self._array(call.input_names[-1]))
        for tensor in found:
            if id(tensor) in self.param_names:
                qualified = self.param_names[id(tensor)]
                self._use_param(call, qualified, tensor)
        return call

    def _close_functional(self, func, args, kwargs, found, versions, out, call) -> None:
        if getattr(func, "__name__", "") == "__setitem__":
            out = args[0]  # x[i] = v changes x in place and returns None
        outputs = [t for _, t in iter_tensors(out)]
        if call is None:
            if not outputs or all(self._key(t) in self._keys for t in outputs):
                return  # returned what it was given (x.contiguous(), .float() of a float...)
            changed = [t for t, v in zip(found, versions, strict=True) if t._version != v]
            call = self._open_functional(func, found)
            if changed:
                call.error = "changed an input in place; its value before the call was not captured"
                # _open_functional named those inputs with their new values: not honest as inputs.
                call.inputs = [None] * len(call.inputs)
        self._calls.append(call)
        call.training = self.model.training
        self._name_outputs(call, out, ROLE_ACTIVATION, names.OUT)
        if call.error:
            return
        if any(a is None for a in call.inputs):
            call.error = "an input could not be copied"
            return
        try:
            equivalent = _equivalent(self, func, args, kwargs, call, found, out)
        except Exception as exc:  # a settings combination our table does not read
            equivalent = None
            self._problem(f"{call.name}: no equivalent module ({type(exc).__name__}: {exc})")
        if equivalent is not None:
            module, inputs, params, training = equivalent
            by_id = {id(t): n for t, n in zip(_data(self, found), call.input_names, strict=True)}
            call.module = module
            call.kind = type(module).__name__
            call.training = training
            call.input_names = [by_id[id(t)] for t in inputs]  # in the module's argument order
            call.inputs = [self._array(n) for n in call.input_names]
            call.param_names = {local: self.param_names[id(p)] for local, p in params.items()}


def _data(capture: Capture, found: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors of a call that are not parameters of the model, each once."""
    seen, data = set(), []
    for t in found:
        if id(t) not in capture.param_names and id(t) not in seen:
            seen.add(id(t))
            data.append(t)
    return data


# ---------------------------------------------------------------- functional calls


# Torch functions that are bookkeeping, not computation: never recorded.
_PASS_THROUGH = {
    torch.Tensor.detach,
    torch.Tensor.detach_,
    torch.Tensor.requires_grad_,
    torch.Tensor.retain_grad,
    torch.Tensor.register_hook,
    torch.Tensor.backward,
    torch.Tensor.size,
    torch.Tensor.dim,
    torch.Tensor.numel,
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__len__,
    torch.Tensor.__repr__,
    torch.Tensor.__format__,
    torch.Tensor.__bool__,
    torch.Tensor.__index__,
    torch.Tensor.data_ptr,
    torch.Tensor.untyped_storage,
    torch.Tensor.is_contiguous,
    torch.Tensor.is_floating_point,
}


def _op_name(func) -> str:
    try:
        return resolve_name(func) or getattr(func, "__name__", repr(func))
    except Exception:
        return getattr(func, "__name__", repr(func))


def _short(op: str) -> str:
    """torch.nn.functional.relu -> relu; torch.Tensor.__iadd__ -> iadd; add_ stays add_."""
    last = op.rsplit(".", 1)[-1]
    if last.startswith("__") and last.endswith("__"):
        last = last[2:-2]
    return last or "op"


def _modifies_input(func, args, kwargs) -> bool:
    """Whether the call overwrites its first argument (x.add_(y), x += y, x[i] = v, inplace=True)."""
    name = getattr(func, "__name__", "")
    if name.startswith("__i") or name == "__setitem__":
        return True
    if name.endswith("_") and not name.endswith("__"):
        return True
    if kwargs.get("inplace") is True:
        return True
    return func is F.relu and len(args) > 1 and args[1] is True


# --- the table: torch function -> the module that computes the same thing --------------
#
# Each row is (signature template, builder). The template names the arguments as
# the function takes them; the builder gets them bound (defaults applied) and
# returns (module, [data tensors in the module's input order], {param local name:
# tensor}) or None when the settings have no equivalent (the call is then raw).


def _x(input):  # noqa: A002 - torch's own argument names
    return locals()


def _relu(input, inplace=False):  # noqa: A002
    return locals()


def _flatten(input, start_dim=0, end_dim=-1):  # noqa: A002
    return locals()


def _max_pool2d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):  # noqa: A002
    return locals()


def _avg_pool2d(
    input,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):  # noqa: A002
    return locals()


def _linear(input, weight, bias=None):  # noqa: A002
    return locals()


def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    return locals()


def _add(input, other, *, alpha=1):  # noqa: A002
    return locals()


def _dropout(input, p=0.5, training=True, inplace=False):  # noqa: A002
    return locals()


def _leaky_relu(input, negative_slope=0.01, inplace=False):  # noqa: A002
    return locals()


def _softmax(input, dim=None, _stacklevel=3, dtype=None):  # noqa: A002
    return locals()


def _reshape(input, *shape, **_kw):  # noqa: A002
    return {"input": input}


def _params(*pairs) -> dict[str, torch.Tensor] | None:
    """Parameters of a functional call; None when one is not a parameter of the model."""
    return {local: t for local, t in pairs if t is not None}


def _build_flatten(a, out):
    return nn.Flatten(a["start_dim"], a["end_dim"]), [a["input"]], {}


def _build_reshape(a, out):
    """x.view(N, -1) and friends are a Flatten when they merge one run of dimensions."""
    shape, new = tuple(a["input"].shape), tuple(out.shape)
    if shape == new and shape:
        return nn.Flatten(0, 0), [a["input"]], {}
    for start in range(len(shape)):
        for end in range(start + 1, len(shape)):
            merged = shape[:start] + (math.prod(shape[start : end + 1]),) + shape[end + 1 :]
            if merged == new:
                return nn.Flatten(start, end), [a["input"]], {}
    return None


def _build_max_pool2d(a, out):
    if a["return_indices"]:
        return None
    stride = a["stride"] or None  # torch.max_pool2d's default stride is [], meaning the kernel size
    module = nn.MaxPool2d(
        a["kernel_size"], stride, a["padding"], a["dilation"], ceil_mode=a["ceil_mode"]
    )
    return module, [a["input"]], {}


def _build_avg_pool2d(a, out):
    module = nn.AvgPool2d(
        a["kernel_size"],
        a["stride"] or None,
        a["padding"],
        a["ceil_mode"],
        a["count_include_pad"],
        a["divisor_override"],
    )
    return module, [a["input"]], {}


def _build_linear(a, out):
    w, b = a["weight"], a["bias"]
    module = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    return module, [a["input"]], _params(("weight", w), ("bias", b))


def _build_conv2d(a, out):
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
    return module, [a["input"]], _params(("weight", w), ("bias", b))


def _build_add(a, out):
    x, other, alpha = a["input"], a["other"], a["alpha"]
    if torch.is_tensor(other):
        return Add(alpha=alpha), [x, other], {}
    if isinstance(other, (int, float)) and not isinstance(other, bool):
        return Add(alpha=alpha, constant=float(other)), [x], {}
    return None


def _build_dropout(a, out):
    module = nn.Dropout(a["p"])
    module.train(bool(a["training"]))
    return module, [a["input"]], {}


def _build_softmax(cls):
    def build(a, out):
        if a["dim"] is None or a["dtype"] is not None:
            return None
        return cls(dim=a["dim"]), [a["input"]], {}

    return build


def _unary(cls, **settings):
    def build(a, out):
        return cls(**settings), [a["input"]], {}

    return build


EQUIVALENTS: dict[Callable, tuple[Callable, Callable]] = {
    torch.relu: (_x, _unary(nn.ReLU)),
    torch.relu_: (_x, _unary(nn.ReLU, inplace=True)),
    torch.Tensor.relu: (_x, _unary(nn.ReLU)),
    torch.Tensor.relu_: (_x, _unary(nn.ReLU, inplace=True)),
    F.relu: (_relu, lambda a, out: (nn.ReLU(inplace=a["inplace"]), [a["input"]], {})),
    F.relu_: (_x, _unary(nn.ReLU, inplace=True)),
    torch.flatten: (_flatten, _build_flatten),
    torch.Tensor.flatten: (_flatten, _build_flatten),
    torch.Tensor.view: (_reshape, _build_reshape),
    torch.Tensor.reshape: (_reshape, _build_reshape),
    torch.reshape: (_reshape, _build_reshape),
    F.max_pool2d: (_max_pool2d, _build_max_pool2d),
    torch.max_pool2d: (_max_pool2d, _build_max_pool2d),
    F.avg_pool2d: (_avg_pool2d, _build_avg_pool2d),
    F.linear: (_linear, _build_linear),
    F.conv2d: (_conv2d, _build_conv2d),
    torch.conv2d: (_conv2d, _build_conv2d),
    torch.add: (_add, _build_add),
    torch.Tensor.add: (_add, _build_add),
    torch.Tensor.add_: (_add, _build_add),
    torch.Tensor.__add__: (_add, _build_add),
    torch.Tensor.__radd__: (_add, _build_add),
    torch.Tensor.__iadd__: (_add, _build_add),
    F.dropout: (_dropout, _build_dropout),
    torch.sigmoid: (_x, _unary(nn.Sigmoid)),
    torch.Tensor.sigmoid: (_x, _unary(nn.Sigmoid)),
    F.sigmoid: (_x, _unary(nn.Sigmoid)),
    torch.tanh: (_x, _unary(nn.Tanh)),
    torch.Tensor.tanh: (_x, _unary(nn.Tanh)),
    F.tanh: (_x, _unary(nn.Tanh)),
    F.leaky_relu: (
        _leaky_relu,
        lambda a, out: (nn.LeakyReLU(a["negative_slope"]), [a["input"]], {}),
    ),
    F.softmax: (_softmax, _build_softmax(nn.Softmax)),
    torch.softmax: (_softmax, _build_softmax(nn.Softmax)),
    torch.Tensor.softmax: (_softmax, _build_softmax(nn.Softmax)),
    F.log_softmax: (_softmax, _build_softmax(nn.LogSoftmax)),
    torch.log_softmax: (_softmax, _build_softmax(nn.LogSoftmax)),
    torch.Tensor.log_softmax: (_softmax, _build_softmax(nn.LogSoftmax)),
}

_SIGNATURES: dict[Callable, inspect.Signature] = {}


def _equivalent(capture: Capture, func, args, kwargs, call: CapturedCall, found, out):
    """(module, data inputs, params, training) standing for a functional call, or None."""
    row = EQUIVALENTS.get(func)
    if row is None or not torch.is_tensor(out):
        return None
    template, build = row
    signature = _SIGNATURES.setdefault(template, inspect.signature(template))
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    if not torch.is_tensor(arguments.get("input")):
        return None  # e.g. torch.add(2, x)
    built = build(arguments, out)
    if built is None:
        return None
    module, inputs, params = built
    if any(id(p) not in capture.param_names for p in params.values()):
        return None  # a computed weight, not a parameter of the model: raw
    if any(id(t) in capture.param_names for t in inputs):
        return None  # a parameter as data (e.g. relu(self.weight)): raw
    training = module.training if isinstance(module, nn.Dropout) else capture.model.training
    return module, inputs, params, training
