"""Functional interception: calls made in a `forward` outside any leaf module
(`torch.relu(x)`, `x + y`, `torch.flatten(x, 1)`, `F.max_pool2d`...) are seen
by a `TorchFunctionMode` that is active only while the root model's forward
runs. Those declared as a module's functional form beside its explainer
(`@register(nn.ReLU, functional=[F.relu, ...])`) are explained by that
explainer; the others are stored as raw tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.overrides import TorchFunctionMode, resolve_name

from storage import names
from storage.names import ROLE_ACTIVATION

from ..explainers import functional_form
from . import torchapi
from .records import CapturedCall, iter_tensors
from .spec import module_spec

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
            or capture._inside_function()  # a custom autograd.Function's own ops
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
        innermost = torchapi.mode_is_innermost(self._recorder)
        if innermost is None or innermost:  # None: torch cannot say; a `with` restores ours
            self._recorder.__exit__(None, None, None)
            self._mode_entered = False
        elif not torchapi.mode_is_active(self._recorder):
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
        self._function_outputs(found)
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
            call.module = module_spec(module)
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
    entry = functional_form(func)  # F.elu(x, 1.0, True): inplace given by position
    if entry is not None and args and len(args) > 1:
        try:
            return entry[1].bind(func, args, kwargs).get("inplace") is True
        except TypeError:
            return False
    return False


def _equivalent(capture: Capture, func, args, kwargs, call: CapturedCall, found, out):
    """(module, data inputs, params, training) standing for a functional call, or None.

    The functional forms are declared beside their explainers
    (`@register(nn.GELU, functional=[F.gelu])`)."""
    entry = functional_form(func)
    if entry is None or not torch.is_tensor(out):
        return None
    module_type, form = entry
    arguments = form.bind(func, args, kwargs)
    if not torch.is_tensor(arguments.get("input")):
        return None  # e.g. torch.add(2, x)
    built = form.module_for(module_type, arguments, out)
    if built is None:
        return None
    module, inputs, params = built
    if any(id(p) not in capture.param_names for p in params.values()):
        return None  # a computed weight, not a parameter of the model: raw
    if any(id(t) in capture.param_names for t in inputs):
        return None  # a parameter as data (e.g. relu(self.weight)): raw
    training = module.training if "training" in arguments else capture.model.training
    return module, inputs, params, training
