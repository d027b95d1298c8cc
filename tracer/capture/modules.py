"""Module hooks: forward pre-hooks copy each leaf module's inputs and
parameters before it runs (so an in-place module cannot overwrite what we
saw), forward hooks copy its outputs; containers give their name to the
functional calls made in their forward; hooks on the root model name the
model's inputs and switch the functional recorder on and off.
"""

from __future__ import annotations

import torch
from torch import nn

from storage import names
from storage.names import ROLE_ACTIVATION, ROLE_INPUT, ROLE_OUTPUT, ROLE_TARGET

from . import torchapi
from .records import CapturedCall, iter_tensors
from .spec import module_spec


class ModuleHooks:
    """The part of `Capture` that hooks the model's modules."""

    def _in_backward(self, *, root: bool = False) -> bool:
        """Whether autograd runs a backward now (a module call is then activation
        checkpointing's recomputation). Without torch's answer: whether a gradient
        hook fired since the forward began; the root model's own call always starts
        a forward (nobody recomputes the whole model in its backward)."""
        running = torchapi.graph_task_running()
        if running is not None:
            return running
        return False if root else self._backward_seen

    def _root_pre_hook(self, module, args, kwargs):
        if not self.active or self._in_backward(root=True):
            return None
        if self._root_depth == 0:
            self._backward_seen = False  # a new forward
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
        Once the worker is known to compute the same gradient (`inputgrad`), the
        input is left as it is.
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
            wanted = (
                not changed
                and self._input_named is None
                and self.input_grad
                and tensor.is_floating_point()
                and not tensor.requires_grad
                and torch.is_grad_enabled()
            )
            if wanted and not self._input_grad_later:
                tensor = tensor.detach().requires_grad_(True).clone()
                container[slot] = tensor
                changed = True
            if container is kwargs:
                name = names.model_input(key=slot)
            else:
                name = names.model_input(position)
                position += 1
            name = self._name(tensor, name, ROLE_INPUT, None)
            if wanted:
                # the worker computes its gradient (`inputgrad`), or autograd does
                self._input_named = (name, tensor.device.type, changed)
        return tuple(args), kwargs, changed

    def _root_post_hook(self, module, args, output):
        if self._root_depth == 0 or self._in_backward(root=True):
            return None
        self._root_depth -= 1
        if self._root_depth == 0:
            with self._ours("model output"):
                self._function_outputs([t for _, t in iter_tensors(output)])
            self._exit_mode()
        return None

    def _hook_scope(self, module: nn.Module, name: str) -> None:
        """A container: functional calls in its forward are named after it."""

        def pre_hook(mod, args):
            if self.active and not self._in_backward():
                self._scopes.append(name)

        def post_hook(mod, args, output):
            if (
                self.active
                and not self._in_backward()
                and self._scopes
                and self._scopes[-1] == name
            ):
                self._scopes.pop()

        self._handles.append(module.register_forward_pre_hook(pre_hook))
        self._handles.append(module.register_forward_hook(post_hook, always_call=True))

    def _hook_module(self, module: nn.Module, name: str) -> None:
        # Calls made while autograd runs backward are recomputations (activation
        # checkpointing), not the model's forward: the forward already recorded them.
        # The function recorder records nothing inside a leaf module, so it is left
        # while one runs: otherwise every torch call of the module and of our own
        # copies there would pass through its Python `__torch_function__` (half the
        # capture's own cost on LeNet-5).
        def pre_hook(mod, args, kwargs):
            if self.active and not self._in_backward() and not self._inside_function():
                self._leaf_depth += 1
                if self._leaf_depth == 1:
                    self._exit_mode()
                with self._ours(f"before {name}"):
                    self._before(mod, name, args, kwargs)

        def post_hook(mod, args, kwargs, output):
            if self.active and not self._in_backward() and not self._inside_function():
                self._leaf_depth = max(0, self._leaf_depth - 1)
                with self._ours(f"after {name}"):
                    self._after(mod, output)
                if self._leaf_depth == 0 and self._root_depth > 0:
                    self._enter_mode()  # back in the model's own forward

        self._handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        self._handles.append(
            module.register_forward_hook(post_hook, with_kwargs=True, always_call=True)
        )

    def _call_name(self, base: str) -> str:
        self._call_count[base] += 1
        count = self._call_count[base]
        return names.numbered(base, count)

    def _before(self, module: nn.Module, base_name: str, args, kwargs) -> None:
        name = self._call_name(base_name)
        is_loss = module is self.criterion
        tensors = [t for _, t in iter_tensors(args)] + [t for _, t in iter_tensors(kwargs)]
        self._function_outputs(tensors)  # a custom Function's output, taken by this call
        call = CapturedCall(
            name=name, module=None, kind=type(module).__name__, input_names=[], inputs=[]
        )
        # Registered before anything can fail, so that the post hook finds it.
        self._pending.setdefault(id(module), []).append(call)
        self._calls.append(call)
        for position, tensor in enumerate(tensors):
            if is_loss and position == 1:
                default, role = names.TARGET, ROLE_TARGET
            else:
                default = names.call_input(name, position, len(tensors))
                role = ROLE_ACTIVATION
            if id(tensor) in self.param_names:
                continue  # a parameter passed as an argument is recorded as a parameter below
            layer = None if role == ROLE_TARGET else name  # the labels are data, like the input
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
            if b is not None and (a := self._copy(b)) is not None
        }
        call.module = module_spec(module, call.buffers)

    def _use_param(self, call: CapturedCall, local: str, p: torch.Tensor) -> None:
        qualified = self.param_names.get(id(p), names.child(call.name, local))
        call.param_names[local] = qualified
        self._param_calls[qualified] += 1
        if qualified not in self._params:
            array = self._copy(p)
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
            if b is not None and (a := self._copy(b)) is not None
        }
        is_loss = module is self.criterion
        self._name_outputs(
            call,
            output,
            ROLE_OUTPUT if is_loss else ROLE_ACTIVATION,
            names.LOSS_VALUE if is_loss else names.OUT,
        )

    def _name_outputs(self, call: CapturedCall, output, role: str, suffix: str) -> None:
        found = list(iter_tensors(output))
        if not found:
            call.error = call.error or (
                "did not return (raised an exception)"
                if output is None
                else f"returned {type(output).__name__}, not a tensor"
            )
            return
        single = len(found) == 1 and torch.is_tensor(output)
        for path, tensor in found:
            default = names.output(call.name, None if single else path, suffix)
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
