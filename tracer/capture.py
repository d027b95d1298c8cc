"""Hooks that capture one training iteration without changing the user's loop.

Forward pre-hooks copy each leaf module's inputs and parameters before it runs
(so an in-place module cannot overwrite what we saw), forward hooks copy its
output, tensor hooks catch the gradient that flows back into every captured
tensor, and optimizer step pre/post hooks catch parameters, gradients and
optimizer state around the update. Handles are kept and removed in `detach`.

Tensors are identified by (python id, version counter): an in-place op bumps
the version, so the same tensor object before and after `ReLU(inplace=True)`
gets two names. Live tensors are kept referenced until the iteration ends so
that ids are not reused.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A detached CPU copy (never a view of live memory)."""
    tensor = tensor.detach()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.to("cpu", copy=True).numpy()


@dataclass
class CapturedCall:
    name: str
    module: nn.Module
    input_names: list[str]
    inputs: list[np.ndarray]
    output_name: str | None = None
    output: np.ndarray | None = None
    param_names: dict[str, str] = field(default_factory=dict)  # local -> qualified
    buffers: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. BatchNorm running stats, before
    buffers_after: dict[str, np.ndarray] = field(default_factory=dict)  # ... and after the call
    training: bool = True
    error: str | None = None  # a non-tensor output and the like


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
        self._handles: list[Any] = []
        self._tensor_handles: list[Any] = []
        self.active = False
        self._reset()

    # ------------------------------------------------------------ lifecycle

    def attach(self) -> Capture:
        leaves = [
            (name, m) for name, m in self.model.named_modules() if next(m.children(), None) is None
        ]
        for name, module in leaves:
            qualified = name or type(module).__name__.lower()
            self._hook_module(module, qualified)
        if self.criterion is not None:
            self._hook_module(self.criterion, self.loss_name)
        self._handles.append(
            self.model.register_forward_pre_hook(self._root_pre_hook, prepend=True)
        )
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(self._step_pre_hook))
            self._handles.append(self.optimizer.register_step_post_hook(self._step_post_hook))
        return self

    def detach(self) -> None:
        for handle in self._handles + self._tensor_handles:
            handle.remove()
        self._handles.clear()
        self._tensor_handles.clear()
        self.active = False
        self._reset()

    def start(self) -> None:
        self._reset()
        self.active = True

    def finish(self) -> CapturedIteration:
        self.active = False
        if not self._stepped:
            # No optimizer step seen (no optimizer given, or none called): take .grad as it is.
            for p in self.model.parameters():
                name = self.param_names[id(p)]
                if p.grad is not None and name in self._params:
                    self._param_grads[name] = to_numpy(p.grad)
        for handle in self._tensor_handles:
            handle.remove()
        self._tensor_handles.clear()
        captured = CapturedIteration(
            calls=self._calls,
            values=self._values,
            grads=self._grads,
            params=self._params,
            param_grads=self._param_grads,
            params_after=self._params_after,
            state_before=self._state_before,
            state_after=self._state_after,
            param_groups=self._param_groups,
            param_layers={self.param_names[k]: v for k, v in self.param_layers.items() if k in self.param_names},
            param_calls=self._param_calls,
            loss_name=self.loss_name if self.criterion is not None else None,
            stepped=self._stepped,
        )
        self._reset()
        return captured

    def _reset(self) -> None:
        self._calls: list[CapturedCall] = []
        self._values: dict[str, CapturedValue] = {}
        self._grads: dict[str, np.ndarray] = {}
        self._keys: dict[tuple[int, int], str] = {}
        self._keep: list[torch.Tensor] = []
        self._hooked: set[str] = set()
        self._pending: dict[int, list[CapturedCall]] = {}
        self._call_count: Counter = Counter()
        self._params: dict[str, np.ndarray] = {}
        self._param_calls: Counter = Counter()
        self._param_grads: dict[str, np.ndarray] = {}
        self._params_after: dict[str, np.ndarray] = {}
        self._state_before: dict[str, dict[str, np.ndarray]] = {}
        self._state_after: dict[str, dict[str, np.ndarray]] = {}
        self._param_groups: dict[str, dict[str, Any]] = {}
        self._stepped = False

    # ------------------------------------------------------------ naming

    def _key(self, tensor: torch.Tensor) -> tuple[int, int]:
        return (id(tensor), tensor._version)

    def _name(self, tensor: torch.Tensor, name: str, role: str, layer: str | None) -> str:
        """Record a forward tensor under `name` (or return the name it already has)."""
        key = self._key(tensor)
        if key in self._keys:
            return self._keys[key]
        self._keys[key] = name
        self._keep.append(tensor)
        self._values[name] = CapturedValue(name, to_numpy(tensor), role, layer)
        self._hook_grad(tensor, name)
        return name

    def _hook_grad(self, tensor: torch.Tensor, name: str) -> None:
        if not tensor.requires_grad or name in self._hooked:
            return
        self._hooked.add(name)

        def save(grad: torch.Tensor) -> None:
            if self.active:
                self._grads[name] = to_numpy(grad)

        self._tensor_handles.append(tensor.register_hook(save))

    # ------------------------------------------------------------ hooks

    def _root_pre_hook(self, module, args):
        if not self.active or not args:
            return None
        first = args[0]
        if not (torch.is_tensor(first) and first.is_floating_point()):
            return None
        if self._key(first) in self._keys:
            return None  # the model called on its own output again
        if self.input_grad and not first.requires_grad and torch.is_grad_enabled():
            # A leaf copy that requires grad gives autograd's dL/dX of the input to
            # check the first layer against; parameters' gradients are unchanged.
            first = first.detach().requires_grad_(True)
        self._name(first, "input", "input", None)
        return (first, *args[1:])

    def _hook_module(self, module: nn.Module, name: str) -> None:
        def pre_hook(mod, args):
            if self.active:
                self._before(mod, name, args)

        def post_hook(mod, args, output):
            if self.active:
                self._after(mod, output)

        self._handles.append(module.register_forward_pre_hook(pre_hook))
        self._handles.append(module.register_forward_hook(post_hook))

    def _before(self, module: nn.Module, base_name: str, args) -> None:
        self._call_count[base_name] += 1
        count = self._call_count[base_name]
        name = base_name if count == 1 else f"{base_name}#{count}"
        is_loss = module is self.criterion
        tensors = [a for a in args if torch.is_tensor(a)]
        input_names, inputs = [], []
        for position, tensor in enumerate(tensors):
            if is_loss and position == 1:
                default, role = "target", "target"
            else:
                default = f"{name}.in" if len(tensors) == 1 else f"{name}.in{position}"
                role = "activation"
            input_names.append(self._name(tensor, default, role, name))
            inputs.append(self._values[input_names[-1]].array)
        call = CapturedCall(name=name, module=module, input_names=input_names, inputs=inputs)
        call.training = module.training
        for local, p in module.named_parameters(recurse=False):
            qualified = self.param_names.get(id(p), f"{name}.{local}")
            call.param_names[local] = qualified
            self._param_calls[qualified] += 1
            if qualified not in self._params:
                self._params[qualified] = to_numpy(p)
        call.buffers = {
            local: to_numpy(b) for local, b in module.named_buffers(recurse=False) if b is not None
        }
        self._pending.setdefault(id(module), []).append(call)
        self._calls.append(call)

    def _after(self, module: nn.Module, output) -> None:
        stack = self._pending.get(id(module))
        if not stack:
            return
        call = stack.pop()
        call.buffers_after = {
            local: to_numpy(b) for local, b in module.named_buffers(recurse=False) if b is not None
        }
        tensor = output if torch.is_tensor(output) else None
        if tensor is None and isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
            tensor = output[0]
            call.error = f"returned a {type(output).__name__}; only its first tensor is traced"
        if tensor is None:
            call.error = f"returned {type(output).__name__}, not a tensor"
            return
        role = "output" if module is self.criterion else "activation"
        suffix = "value" if module is self.criterion else "out"
        # A fresh name even when the module returned its input modified in place:
        # the version counter moved, so _name records the new value.
        call.output_name = self._name(tensor, f"{call.name}.{suffix}", role, call.name)
        call.output = self._values[call.output_name].array

    def _step_pre_hook(self, optimizer, args, kwargs):
        if not self.active:
            return
        self._stepped = True
        for group in optimizer.param_groups:
            settings = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                name = self.param_names.get(id(p))
                if name is None:
                    continue
                self._param_groups[name] = settings
                if p.grad is not None:
                    self._param_grads[name] = to_numpy(p.grad)
                self._params.setdefault(name, to_numpy(p))
                self._state_before[name] = _state(optimizer, p)

    def _step_post_hook(self, optimizer, args, kwargs):
        if not self.active:
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                name = self.param_names.get(id(p))
                if name is None:
                    continue
                self._params_after[name] = to_numpy(p)
                self._state_after[name] = _state(optimizer, p)


def _state(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> dict[str, np.ndarray]:
    return {
        key: to_numpy(value) if torch.is_tensor(value) else np.asarray(value)
        for key, value in optimizer.state.get(p, {}).items()
        if torch.is_tensor(value) or isinstance(value, (int, float))
    }
