"""Hooks that capture one training iteration without changing the user's loop.

Forward pre-hooks copy each leaf module's inputs and parameters before it runs
(so an in-place module cannot overwrite what we saw), forward hooks copy its
outputs, tensor hooks catch the gradient that flows back into every captured
tensor, and optimizer step pre/post hooks catch parameters, gradients and
optimizer state around the update. Handles are kept and removed in `detach`.

Calls made in a `forward` outside any leaf module (`torch.relu(x)`, `x + y`,
`torch.flatten(x, 1)`, `F.max_pool2d`...) are seen by a `TorchFunctionMode`
that is active only while the root model's forward runs. Those with an
equivalent module (torch.relu -> nn.ReLU(), see `EQUIVALENTS`) are explained
by that module's explainer; the others are stored as raw tensors.

Tensors are identified by (python id, version counter): an in-place op bumps
the version, so the same tensor object before and after `ReLU(inplace=True)`
gets two names. The gradient hook of a name is registered when the name is
given, i.e. before any later in-place change, and PyTorch delivers to such a
hook the gradient with respect to the value the tensor had then (hooks
registered after an in-place op get the gradient of the new value). So
"conv.out.grad" is dL/d(conv output) even when an in-place ReLU overwrote that
output, and "relu.out.grad" is dL/d(ReLU output). Live tensors are kept
referenced until the iteration ends so that ids are not reused.

Nothing here may raise into the user's forward or backward: a tensor that
cannot be copied is left out, and a call that cannot be read is marked with
an error (it is then stored as raw tensors with a warning).
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack, resolve_name

from .explainers.elementwise import Add


def to_numpy(tensor: torch.Tensor) -> np.ndarray | None:
    """A detached CPU copy (never a view of live memory), or None for a tensor a
    store cannot hold (complex, meta, fake)."""
    try:
        t = tensor.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.is_quantized:
            t = t.dequantize()
        if t.is_complex() or t.device.type == "meta":
            return None
        if t.dtype.is_floating_point and t.dtype not in (torch.float32, torch.float64):
            t = t.float()  # float16, bfloat16, float8: NumPy has no (or no exact) dtype for them
        return t.to("cpu", copy=True).numpy()
    except Exception:
        return None


@dataclass
class CapturedCall:
    """One call of a leaf module, of the criterion, or of a functional op in a forward."""

    name: str  # "conv1", "conv1#2" for a second call, "block.add" for a functional call
    module: (
        nn.Module | None
    )  # the module, or the module equivalent to a functional call; None: no equivalent
    kind: str  # what is shown as the layer's type: "Conv2d", "ReLU", or the op, "torch.cat"
    input_names: list[str]
    inputs: list[np.ndarray | None]
    output_name: str | None = None  # the single tensor output an explainer works on
    output: np.ndarray | None = None
    output_names: list[str] = field(default_factory=list)  # every tensor output (tuples, dicts)
    param_names: dict[str, str] = field(default_factory=dict)  # local -> qualified
    buffers: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # e.g. BatchNorm running stats, before
    buffers_after: dict[str, np.ndarray] = field(default_factory=dict)  # ... and after the call
    training: bool = True
    error: str | None = None  # why it cannot be explained (tuple output, lost input, ...)
    op: str | None = None  # the functional call, e.g. "torch.relu"; None for module calls


@dataclass
class CapturedValue:
    name: str
    array: np.ndarray
    role: str
    layer: str | None


@dataclass
class CapturedIteration:
    calls: list[CapturedCall]
    values: dict[str, CapturedValue]  # forward tensors by name
    grads: dict[str, np.ndarray]  # gradient of each named tensor, by the tensor's name
    params: dict[str, np.ndarray]  # parameter values at forward time
    param_grads: dict[str, np.ndarray]  # .grad when optimizer.step() ran (or at the end)
    params_after: dict[str, np.ndarray]
    state_before: dict[str, dict[str, np.ndarray]]
    state_after: dict[str, dict[str, np.ndarray]]
    param_groups: dict[str, dict[str, Any]]
    param_layers: dict[str, str]
    param_calls: Counter  # how many calls used each parameter
    loss_name: str | None
    stepped: bool
    steps_taken: int = 0  # optimizer.step() calls seen in the iteration
    # What this iteration's backward passes added to each .grad (a hook on the
    # parameter sees the gradient before it is accumulated), and, where .grad
    # held more than that at the step (no zero_grad, gradient accumulation),
    # the part that was there before.
    grad_increments: dict[str, np.ndarray] = field(default_factory=dict)
    grads_at_start: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what the hooks could not capture


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


class Capture:
    """Attach to a model (and optionally its criterion and optimizer)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        criterion: nn.Module | None = None,
        *,
        input_grad: bool = True,
        loss_name: str = "loss",
        functional: bool = True,
    ):
        self.model = model
        self.optimizer = optimizer
        self.criterion = criterion if isinstance(criterion, nn.Module) else None
        self.input_grad = input_grad
        self.loss_name = loss_name
        self.param_names = {id(p): name for name, p in model.named_parameters()}
        self.param_layers = {}
        for module_name, module in model.named_modules():
            for _local, p in module.named_parameters(recurse=False):
                self.param_layers[id(p)] = module_name or type(module).__name__.lower()
        self.module_names = {
            name or type(m).__name__.lower() for name, m in model.named_modules()
        } | {loss_name}
        self._recorder = _FunctionRecorder(self) if functional else None
        self._handles: list[Any] = []
        self._tensor_handles: list[Any] = []
        self.active = False
        self._busy = False  # our own code is running inside the user's forward
        self._leaf_depth = 0
        self._root_depth = 0
        self._mode_entered = False
        self._scopes: list[str] = []
        self._reset()

    # ------------------------------------------------------------ lifecycle

    def attach(self) -> Capture:
        try:
            for name, module in self.model.named_modules():
                qualified = name or type(module).__name__.lower()
                if next(module.children(), None) is None:
                    self._hook_module(module, qualified)
                else:
                    self._hook_scope(module, name)
            if self.criterion is not None:
                self._hook_module(self.criterion, self.loss_name)
            self._handles.append(
                self.model.register_forward_pre_hook(
                    self._root_pre_hook, prepend=True, with_kwargs=True
                )
            )
            self._handles.append(
                self.model.register_forward_hook(self._root_post_hook, always_call=True)
            )
            for name, p in self.model.named_parameters():
                if p.requires_grad:
                    self._handles.append(p.register_hook(self._increment_hook(name)))
            if self.optimizer is not None:
                self._handles.append(self.optimizer.register_step_pre_hook(self._step_pre_hook))
                self._handles.append(self.optimizer.register_step_post_hook(self._step_post_hook))
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        for handle in self._handles + self._tensor_handles:
            handle.remove()
        self._handles.clear()
        self._tensor_handles.clear()
        self._exit_mode()
        self.active = False
        self._reset()

    def _increment_hook(self, name: str) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            if not self.active:
                return
            array = to_numpy(grad)
            if array is None:
                return
            previous = self._grad_increments.get(name)
            self._grad_increments[name] = array if previous is None else previous + array

        return hook

    def _grads_before(self) -> dict[str, np.ndarray]:
        before = {}
        for name, increment in self._grad_increments.items():
            total = self._param_grads.get(name)
            if (
                total is not None
                and total.shape == increment.shape
                and not np.array_equal(total, increment)
            ):
                before[name] = total - increment
        return before

    def start(self) -> None:
        self._reset()
        self.active = True

    def finish(self) -> CapturedIteration:
        self.active = False
        self._exit_mode()  # the forward raised a BaseException that skipped our post hook
        if not self._stepped:
            # No optimizer step seen (no optimizer given, or none called): take .grad as it is.
            for p in self.model.parameters():
                name = self.param_names[id(p)]
                if p.grad is not None and name in self._params:
                    self._store_param_grad(name, p.grad)
        for handle in self._tensor_handles:
            handle.remove()
        self._tensor_handles.clear()
        captured = CapturedIteration(
            calls=self._calls,
            values=self._values,
            grads=self._grads,
            params=self._params,
            param_grads=self._param_grads,
            grad_increments=self._grad_increments,
            grads_at_start=self._grads_before(),
            params_after=self._params_after,
            state_before=self._state_before,
            state_after=self._state_after,
            param_groups=self._param_groups,
            param_layers={
                self.param_names[k]: v
                for k, v in self.param_layers.items()
                if k in self.param_names
            },
            param_calls=self._param_calls,
            loss_name=self.loss_name if self.criterion is not None else None,
            stepped=self._stepped,
            steps_taken=self._steps_taken,
            problems=self._problems,
        )
        self._reset()
        return captured

    def _reset(self) -> None:
        self._calls: list[CapturedCall] = []
        self._values: dict[str, CapturedValue] = {}
        self._grads: dict[str, np.ndarray] = {}
        self._keys: dict[tuple[int, int], str] = {}
        self._keep: list[torch.Tensor] = []
        self._hooked: set[str] = set()  # names given (a hook or not)
        self._grad_hooked: set[str] = set()  # names whose gradient is hooked
        self._pending: dict[int, list[CapturedCall]] = {}
        self._call_count: Counter = Counter()
        self._params: dict[str, np.ndarray] = {}
        self._param_calls: Counter = Counter()
        self._param_grads: dict[str, np.ndarray] = {}
        self._grad_increments: dict[str, np.ndarray] = {}
        self._params_after: dict[str, np.ndarray] = {}
        self._state_before: dict[str, dict[str, np.ndarray]] = {}
        self._state_after: dict[str, dict[str, np.ndarray]] = {}
        self._param_groups: dict[str, dict[str, Any]] = {}
        self._problems: list[str] = []
        self._stepped = False
        self._steps_taken = 0
        self._leaf_depth = 0
        self._root_depth = 0
        self._scopes = []

    @contextmanager
    def _ours(self, where: str) -> Iterator[None]:
        """Run our own bookkeeping: invisible to the function recorder, and never
        raising into the user's code (what fails is noted as a problem)."""
        was = self._busy
        self._busy = True
        try:
            yield
        except Exception as exc:
            self._problem(f"{where}: {type(exc).__name__}: {exc}")
        finally:
            self._busy = was

    def _problem(self, message: str) -> None:
        message = message.splitlines()[0] if message else message
        if message not in self._problems:
            self._problems.append(message)

    # ------------------------------------------------------------ the function mode

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

    # ------------------------------------------------------------ naming

    def _key(self, tensor: torch.Tensor) -> tuple[int, int]:
        return (id(tensor), tensor._version)

    def _unique(self, name: str) -> str:
        if name not in self._values and name not in self._hooked:
            return name
        k = 2
        while f"{name}#{k}" in self._values or f"{name}#{k}" in self._hooked:
            k += 1
        return f"{name}#{k}"

    def _name(self, tensor: torch.Tensor, name: str, role: str, layer: str | None) -> str:
        """Record a forward tensor under `name` (or return the name it already has)."""
        key = self._key(tensor)
        if key in self._keys:
            known = self._keys[key]
            if known not in self._grad_hooked and tensor.requires_grad:
                # Named while it did not require grad (inside a custom autograd
                # Function's forward, say) and joined the graph since: same version,
                # so a hook registered now still receives the gradient of that value.
                self._hook_grad(tensor, known)
            return known
        name = self._unique(name)
        self._keys[key] = name
        self._keep.append(tensor)
        array = to_numpy(tensor)
        if array is not None:
            self._values[name] = CapturedValue(name, array, role, layer)
        else:
            self._problem(f"{name}: a {tensor.dtype} tensor is not stored")
        self._hook_grad(tensor, name)
        return name

    def _array(self, name: str) -> np.ndarray | None:
        value = self._values.get(name)
        return value.array if value is not None else None

    def _hook_grad(self, tensor: torch.Tensor, name: str) -> None:
        self._hooked.add(name)
        if not tensor.requires_grad or name in self._grad_hooked:
            return
        self._grad_hooked.add(name)

        def save(grad: torch.Tensor) -> None:
            if self.active and grad is not None:
                array = to_numpy(grad)
                if array is not None:
                    self._grads[name] = array

        try:
            self._tensor_handles.append(tensor.register_hook(save))
        except RuntimeError as exc:  # e.g. a view created in no_grad mode
            self._problem(f"{name}: gradient not captured ({exc})")

    # ------------------------------------------------------------ hooks

    def _root_pre_hook(self, module, args, kwargs):
        if not self.active or _in_backward():
            return None
        self._root_depth += 1
        if self._root_depth > 1:
            return None  # the model calls itself
        changed = None
        with self._ours("model input"):
            args, kwargs, changed = self._name_inputs(args, kwargs)
        self._enter_mode()
        return (args, kwargs) if changed else None

    def _name_inputs(self, args, kwargs):
        """Name the model's tensor arguments "input", "input1"... (kwargs: "input.KEY").

        The first floating-point input that does not require grad is replaced by
        a copy that does, so that autograd computes dL/d(input) to check the first
        layer against; parameters' gradients are unchanged by it. The copy is a
        clone of a fresh leaf, not the leaf itself, so an in-place first layer
        still works (in-place ops on a leaf that requires grad are an error).
        """
        args, kwargs, changed = list(args), dict(kwargs), False
        position = 0
        slots = [(args, i) for i in range(len(args))] + [(kwargs, k) for k in kwargs]
        for container, slot in slots:
            tensor = container[slot]
            if not torch.is_tensor(tensor):
                continue
            if self._key(tensor) in self._keys:
                continue  # the model called on its own output again
            if (
                not changed
                and self.input_grad
                and tensor.is_floating_point()
                and not tensor.requires_grad
                and torch.is_grad_enabled()
            ):
                tensor = tensor.detach().requires_grad_(True).clone()
                container[slot] = tensor
                changed = True
            if container is kwargs:
                name = f"input.{slot}"
            else:
                name = "input" if position == 0 else f"input{position}"
                position += 1
            self._name(tensor, name, "input", None)
        return tuple(args), kwargs, changed

    def _root_post_hook(self, module, args, output):
        if self._root_depth == 0 or _in_backward():
            return None
        self._root_depth -= 1
        if self._root_depth == 0:
            self._exit_mode()
        return None

    def _hook_scope(self, module: nn.Module, name: str) -> None:
        """A container: functional calls in its forward are named after it."""

        def pre_hook(mod, args):
            if self.active and not _in_backward():
                self._scopes.append(name)

        def post_hook(mod, args, output):
            if self.active and not _in_backward() and self._scopes and self._scopes[-1] == name:
                self._scopes.pop()

        self._handles.append(module.register_forward_pre_hook(pre_hook))
        self._handles.append(module.register_forward_hook(post_hook, always_call=True))

    def _hook_module(self, module: nn.Module, name: str) -> None:
        # Calls made while autograd runs backward are recomputations (activation
        # checkpointing), not the model's forward: the forward already recorded them.
        def pre_hook(mod, args, kwargs):
            if self.active and not _in_backward():
                self._leaf_depth += 1
                with self._ours(f"before {name}"):
                    self._before(mod, name, args, kwargs)

        def post_hook(mod, args, kwargs, output):
            if self.active and not _in_backward():
                self._leaf_depth = max(0, self._leaf_depth - 1)
                with self._ours(f"after {name}"):
                    self._after(mod, output)

        self._handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        self._handles.append(
            module.register_forward_hook(post_hook, with_kwargs=True, always_call=True)
        )

    def _call_name(self, base: str) -> str:
        self._call_count[base] += 1
        count = self._call_count[base]
        return base if count == 1 else f"{base}#{count}"

    def _before(self, module: nn.Module, base_name: str, args, kwargs) -> None:
        name = self._call_name(base_name)
        is_loss = module is self.criterion
        tensors = [t for _, t in _tensors(args)] + [t for _, t in _tensors(kwargs)]
        call = CapturedCall(
            name=name, module=module, kind=type(module).__name__, input_names=[], inputs=[]
        )
        # Registered before anything can fail, so that the post hook finds it.
        self._pending.setdefault(id(module), []).append(call)
        self._calls.append(call)
        for position, tensor in enumerate(tensors):
            if is_loss and position == 1:
                default, role = "target", "target"
            else:
                default = f"{name}.in" if len(tensors) == 1 else f"{name}.in{position}"
                role = "activation"
            if id(tensor) in self.param_names:
                continue  # a parameter passed as an argument is recorded as a parameter below
            layer = None if role == "target" else name  # the labels are data, like the input
            call.input_names.append(self._name(tensor, default, role, layer))
            call.inputs.append(self._array(call.input_names[-1]))
        if any(a is None for a in call.inputs):
            call.error = "an input could not be copied"
        call.training = module.training
        for local, p in module.named_parameters(recurse=False):
            self._use_param(call, local, p)
        call.buffers = {
            local: a
            for local, b in module.named_buffers(recurse=False)
            if b is not None and (a := to_numpy(b)) is not None
        }

    def _use_param(self, call: CapturedCall, local: str, p: torch.Tensor) -> None:
        qualified = self.param_names.get(id(p), f"{call.name}.{local}")
        call.param_names[local] = qualified
        self._param_calls[qualified] += 1
        if qualified not in self._params:
            array = to_numpy(p)
            if array is not None:
                self._params[qualified] = array

    def _after(self, module: nn.Module, output) -> None:
        stack = self._pending.get(id(module))
        if not stack:
            return
        call = stack.pop()
        call.buffers_after = {
            local: a
            for local, b in module.named_buffers(recurse=False)
            if b is not None and (a := to_numpy(b)) is not None
        }
        is_loss = module is self.criterion
        self._name_outputs(
            call, output, "output" if is_loss else "activation", "value" if is_loss else "out"
        )

    def _name_outputs(self, call: CapturedCall, output, role: str, suffix: str) -> None:
        found = list(_tensors(output))
        if not found:
            call.error = call.error or (
                "did not return (raised an exception)"
                if output is None
                else f"returned {type(output).__name__}, not a tensor"
            )
            return
        single = len(found) == 1 and torch.is_tensor(output)
        for path, tensor in found:
            default = f"{call.name}.{suffix}" if single else f"{call.name}.{suffix}.{path}"
            # A fresh name even when the module returned its input modified in place:
            # the version counter moved, so _name records the new value.
            call.output_names.append(self._name(tensor, default, role, call.name))
        if single:
            call.output_name = call.output_names[0]
            call.output = self._array(call.output_name)
            if call.output is None:
                call.error = call.error or "its output could not be copied"
        else:
            what = type(output).__name__
            call.error = call.error or f"returned a {what} of {len(found)} tensors"
            # Keep the first tensor as "the" output so that the layer has a shape to show.
            call.output_name = call.output_names[0]
            call.output = self._array(call.output_name)

    # ------------------------------------------------------------ functional calls

    def _functional(self, func, args, kwargs):
        """A torch function called in a forward outside any leaf module."""
        found = [t for _, t in _tensors((args, kwargs))]
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
        base = f"{scope}.{_short(op)}" if scope else _short(op)
        if base in self.module_names:
            base += "_fn"
        name = self._call_name(base)
        call = CapturedCall(name=name, module=None, kind=op, input_names=[], inputs=[], op=op)
        data = _data(self, found)
        for position, tensor in enumerate(data):
            default = f"{name}.in" if len(data) == 1 else f"{name}.in{position}"
            call.input_names.append(self._name(tensor, default, "activation", name))
            call.inputs.append(self._array(call.input_names[-1]))
        for tensor in found:
            if id(tensor) in self.param_names:
                qualified = self.param_names[id(tensor)]
                self._use_param(call, qualified, tensor)
        return call

    def _close_functional(self, func, args, kwargs, found, versions, out, call) -> None:
        if getattr(func, "__name__", "") == "__setitem__":
            out = args[0]  # x[i] = v changes x in place and returns None
        outputs = [t for _, t in _tensors(out)]
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
        self._name_outputs(call, out, "activation", "out")
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

    # ------------------------------------------------------------ optimizer

    def _store_param_grad(self, name: str, grad: torch.Tensor) -> None:
        array = to_numpy(grad)
        if array is not None:
            self._param_grads[name] = array

    def _step_pre_hook(self, optimizer, args, kwargs):
        if not self.active:
            return
        with self._ours("before optimizer.step()"):
            self._steps_taken += 1
            if self._stepped:
                return  # a second step in one iteration: keep the values before the first
            self._stepped = True
            for group in optimizer.param_groups:
                settings = {k: v for k, v in group.items() if k != "params"}
                for p in group["params"]:
                    name = self.param_names.get(id(p))
                    if name is None:
                        continue
                    self._param_groups[name] = settings
                    if p.grad is not None:
                        self._store_param_grad(name, p.grad)
                    if name not in self._params and (array := to_numpy(p)) is not None:
                        self._params[name] = array
                    self._state_before[name] = _state(optimizer, p)

    def _step_post_hook(self, optimizer, args, kwargs):
        if not self.active:
            return
        with self._ours("after optimizer.step()"):
            for group in optimizer.param_groups:
                for p in group["params"]:
                    name = self.param_names.get(id(p))
                    if name is None:
                        continue
                    array = to_numpy(p)
                    if array is not None:
                        self._params_after[name] = array
                    self._state_after[name] = _state(optimizer, p)


def _in_backward() -> bool:
    """Whether autograd's engine is running a backward pass in this thread."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current is not None and current() != -1


def _state(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> dict[str, np.ndarray]:
    state = {}
    for key, value in optimizer.state.get(p, {}).items():
        if torch.is_tensor(value):
            array = to_numpy(value)
        elif isinstance(value, (bool, int, float)):
            array = np.asarray(value)
        else:
            continue
        if array is not None:
            state[str(key)] = array
    return state


def _data(capture: Capture, found: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors of a call that are not parameters of the model, each once."""
    seen, data = set(), []
    for t in found:
        if id(t) not in capture.param_names and id(t) not in seen:
            seen.add(id(t))
            data.append(t)
    return data


def _tensors(obj, path: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """(path, tensor) for every tensor in nested tuples, lists and dicts, in order.

    Paths join keys and positions with dots: (out, (h, c)) gives "0", "1.0", "1.1".
    """
    if torch.is_tensor(obj):
        yield path, obj
    elif depth < 6 and isinstance(obj, (tuple, list)):
        for i, item in enumerate(obj):
            yield from _tensors(item, f"{path}.{i}" if path else str(i), depth + 1)
    elif depth < 6 and isinstance(obj, dict):
        for key, item in obj.items():
            yield from _tensors(item, f"{path}.{key}" if path else str(key), depth + 1)


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
