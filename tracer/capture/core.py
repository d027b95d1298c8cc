"""`Capture`: attaches the hooks of one traced model and turns what they see
into a `CapturedIteration`.

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

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from storage import names

from .copies import HostCopies
from .custom import CustomFunctionHooks
from .functional import FunctionalHooks, _FunctionRecorder
from .modules import ModuleHooks
from .optimizer import OptimizerHooks
from .records import CapturedCall, CapturedIteration, CapturedValue
from .spec import OptimizerSpec


class Capture(ModuleHooks, FunctionalHooks, CustomFunctionHooks, OptimizerHooks):
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
        input_grad_later: bool = False,
    ):
        self.model = model
        self.optimizer = optimizer
        self.criterion = criterion if isinstance(criterion, nn.Module) else None
        self.input_grad = input_grad
        # Whether the worker computes dL/d(input) instead of autograd (`inputgrad`):
        # None until the first traced iteration shows it gives autograd's array.
        self._input_grad_later: bool | None = None if input_grad_later else False
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
        # Host copies: synchronous on CPU; on CUDA non_blocking into pinned memory on a
        # side stream, waited for in finish() before the iteration is handed off.
        self._copies = HostCopies()
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
            # A criterion that is also a submodule (a LightningModule's loss_fn) is
            # hooked once, as the criterion.
            criterion = {id(m) for m in self.criterion.modules()} if self.criterion else set()
            for name, module in self.model.named_modules():
                if id(module) in criterion:
                    continue
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
        self._copies.buffers.clear()  # (arrays still in use keep their own buffers)
        self._exit_mode()
        self.active = False
        self._reset()

    def start(self) -> None:
        self._reset()
        self._copies.take_nbytes()  # count this iteration's copies from here
        self._copies.buffers.next_iteration()
        self.active = True

    def finish(self, *, settle: bool = True) -> CapturedIteration:
        """The captured iteration. `settle=False` leaves working out what the
        parameter gradients say (clipping, accumulation: NumPy passes over them) to
        whoever takes it, the worker (`CapturedIteration.settle`)."""
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
        self._copies.wait()  # every copy is in host memory before anything reads it
        captured = CapturedIteration(
            calls=self._calls,
            values=self._values,
            grads=self._grads,
            params=self._params,
            param_grads=self._param_grads,
            grad_increments=self._grad_increments,
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
            optimizer=self._optimizer_spec,
            nbytes=self._copies.take_nbytes(),
            settled=False,
        )
        if self._input_named is not None:
            name, device, by_autograd = self._input_named
            if not by_autograd:
                captured.input_grad_from = name
            elif self._input_grad_later is None and device == "cpu":
                self._input_grad_later = self._same_input_grad(captured, name)
        self._reset()
        return captured.settle() if settle else captured

    def _same_input_grad(self, captured: CapturedIteration, name: str) -> bool | None:
        """Whether `inputgrad` gives autograd's dL/d(input) of this iteration bitwise
        (None: this iteration cannot tell, e.g. it was abandoned before its backward)."""
        from .inputgrad import conv_input_grad, input_consumer

        theirs = captured.grads.get(name)
        call = input_consumer(captured.calls, name)
        if call is None:
            return False
        if theirs is None:
            return None
        try:
            ours = conv_input_grad(call, captured)
        except Exception:  # noqa: BLE001 - autograd keeps computing it
            return False
        if ours is None:
            return None
        return ours.dtype == theirs.dtype and np.array_equal(ours, theirs)

    def _reset(self) -> None:
        self._input_named: tuple[str, str, bool] | None = None  # (name, device, by autograd)
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
        self._optimizer_spec: OptimizerSpec | None = None  # at the first optimizer.step()
        self._leaf_depth = 0
        self._root_depth = 0
        self._scopes = []
        self._backward_seen = False  # a gradient hook fired (see ModuleHooks._in_backward)
        self._stepping = False  # inside the first optimizer.step() of the iteration
        self._backward_in_step = False  # ... and a backward ran in it (a closure)
        # Custom autograd Functions (see custom.py)
        self._function_frame = None  # the Function.apply frame whose call is open
        self._open_functions: list[tuple[type, CapturedCall]] = []  # outputs not yet seen
        self._function_nodes: dict[int, CapturedCall] = {}  # id(grad_fn node) -> call
        self._node_names: dict[tuple[int, int], str] = {}  # (id(grad_fn), output_nr) -> name

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

    # ------------------------------------------------------------ naming

    def _key(self, tensor: torch.Tensor) -> tuple[int, int]:
        return (id(tensor), tensor._version)

    def _unique(self, name: str) -> str:
        if name not in self._values and name not in self._hooked:
            return name
        k = 2
        while names.numbered(name, k) in self._values or names.numbered(name, k) in self._hooked:
            k += 1
        return names.numbered(name, k)

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
        if tensor.grad_fn is not None:
            self._node_names[(id(tensor.grad_fn), getattr(tensor, "output_nr", 0))] = name
        array = self._copy(tensor)
        if array is not None:
            self._values[name] = CapturedValue(name, array, role, layer)
        else:
            self._problem(f"{name}: a {tensor.dtype} tensor is not stored")
        self._hook_grad(tensor, name)
        return name

    def _copy(self, tensor: torch.Tensor) -> np.ndarray | None:
        """The host copy of a tensor (see `copies`): filled once `finish()` has waited."""
        return self._copies.copy(tensor)

    def _array(self, name: str) -> np.ndarray | None:
        value = self._values.get(name)
        return value.array if value is not None else None

    def _hook_grad(self, tensor: torch.Tensor, name: str) -> None:
        self._hooked.add(name)
        if not tensor.requires_grad or name in self._grad_hooked:
            return
        self._grad_hooked.add(name)

        def save(grad: torch.Tensor) -> None:
            self._backward_seen = True
            if self.active and grad is not None:
                array = self._copy(grad)
                if array is not None:
                    self._grads[name] = array

        try:
            self._tensor_handles.append(tensor.register_hook(save))
        except RuntimeError as exc:  # e.g. a view created in no_grad mode
            self._problem(f"{name}: gradient not captured ({exc})")
