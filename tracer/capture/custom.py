"""Custom autograd Functions: a `torch.autograd.Function` subclass is one unit.

Its forward is the user's own code and its backward need not be the derivative
of that forward (a straight-through estimator rounds forward and passes the
gradient through unchanged), so the ops inside it are not explained as layers:
the Function is stored raw, under its class name, with its inputs, outputs and
gradients, and a warning names it.

- While a Function's forward runs (autograd runs it with grad mode off), calls in
  it are not recorded: `running_function` finds its `forward` frame. The first
  such call opens the Function's call with the tensors the forward was given,
  before it can change them.
- Its outputs are recognised by their `grad_fn`, a node of the Function's own
  backward class, when the next call, the criterion or the model's return takes
  them; a Function whose forward made no torch call gets its inputs from that node.
"""

from __future__ import annotations

import inspect
from types import CodeType

import torch
from torch.autograd.function import BackwardCFunction

from storage import names
from storage.names import ROLE_ACTIVATION

from .records import CapturedCall, iter_tensors

# forward code -> its Function class, and "forward" codes that are no Function's.
_FORWARDS: dict[CodeType, type] = {}
_NOT_FORWARDS: set[CodeType] = set()


def running_function():
    """(frame, Function class) of the custom autograd.Function whose forward runs in
    this thread (the outermost, when one calls another), or None.

    Found by the code of the frames named "forward": `Function.apply` is Python in
    some torch releases and C++ in others, the user's `forward` is always Python."""
    if torch.is_grad_enabled():
        return None  # autograd runs a Function's forward with grad mode off
    found = None
    frame = inspect.currentframe()
    while frame is not None:
        code = frame.f_code
        if code.co_name == "forward" and code not in _NOT_FORWARDS:
            cls = _function_of(code)
            if cls is not None:
                found = (frame, cls)
        frame = frame.f_back
    return found


def _function_of(code: CodeType) -> type | None:
    if code not in _FORWARDS:
        for cls in _subclasses(torch.autograd.Function):
            forward = inspect.getattr_static(cls, "forward", None)
            forward = getattr(forward, "__func__", forward)  # a staticmethod
            if getattr(forward, "__code__", None) is not None:
                _FORWARDS.setdefault(forward.__code__, cls)
    if code in _FORWARDS:
        return _FORWARDS[code]
    _NOT_FORWARDS.add(code)  # a module's forward, say: not looked up again
    return None


def _subclasses(cls: type) -> list[type]:
    found, todo = [], list(cls.__subclasses__())
    while todo:
        sub = todo.pop()
        found.append(sub)
        todo.extend(sub.__subclasses__())
    return found


def _forward_arguments(frame) -> list[torch.Tensor]:
    """The tensors a Function's forward was given (its arguments, ctx excluded)."""
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount
    values = [frame.f_locals.get(n) for n in code.co_varnames[:count]]
    if code.co_flags & inspect.CO_VARARGS:
        values.append(frame.f_locals.get(code.co_varnames[count]))
    return [t for _, t in iter_tensors(tuple(values))]


def _function_class(node) -> tuple[str, str]:
    """(class name, qualified name) of the Function behind a backward node."""
    cls = getattr(type(node), "_forward_cls", None)
    if cls is not None:
        return cls.__name__, f"{cls.__module__}.{cls.__qualname__}"
    name = type(node).__name__.removesuffix("Backward")
    return name, name


def _why(kind: str) -> str:
    return (
        f"a custom torch.autograd.Function ({kind}): its backward is its own code, not "
        "the derivative of the ops in its forward, so it is stored as its inputs, outputs "
        "and gradients"
    )


class CustomFunctionHooks:
    """The part of `Capture` that turns custom autograd Functions into one call each."""

    def _inside_function(self) -> bool:
        """Whether a custom Function's forward is running: its calls are not the model's.
        The first call in it opens the Function's own call."""
        running = running_function()
        if running is None:
            return False
        frame, cls = running
        if frame is not self._function_frame:
            tensors = _forward_arguments(frame)
            with self._ours(f"before {cls.__name__}.apply"):
                self._function_outputs(tensors)  # an earlier Function's output fed to this one
                self._open_function(cls, tensors)
            self._function_frame = frame  # held until the Function's output is taken
        return True

    def _open_function(self, cls: type, tensors: list[torch.Tensor]) -> None:
        """Open the Function's call with the tensors `apply` was given."""
        call = self._new_function_call(cls.__name__, f"{cls.__module__}.{cls.__qualname__}")
        data = [t for t in tensors if id(t) not in self.param_names]
        for position, tensor in enumerate(data):
            default = names.call_input(call.name, position, len(data))
            call.input_names.append(self._name(tensor, default, ROLE_ACTIVATION, call.name))
            call.inputs.append(self._array(call.input_names[-1]))
        for tensor in tensors:
            if id(tensor) in self.param_names:
                self._use_param(call, self.param_names[id(tensor)], tensor)
        self._open_functions.append((cls, call))

    def _new_function_call(self, kind: str, qualified: str) -> CapturedCall:
        scope = self._scopes[-1] if self._scopes else ""
        name = self._call_name(names.child(scope, kind))
        call = CapturedCall(
            name=name,
            module=None,
            kind=kind,
            input_names=[],
            inputs=[],
            op=f"{qualified}.apply",
            error=_why(kind),
        )
        call.training = self.model.training
        self._calls.append(call)
        return call

    def _function_outputs(self, tensors) -> None:
        """Name the outputs of custom Functions among `tensors` (about to be read by a
        call, the criterion or the model's caller) as those Functions' outputs."""
        self._function_frame = None  # any Function that ran has returned
        for tensor in tensors:
            if not torch.is_tensor(tensor) or self._key(tensor) in self._keys:
                continue
            node = tensor.grad_fn
            if not isinstance(node, BackwardCFunction):
                continue
            call = self._function_nodes.get(id(node))
            if call is None:
                call = self._claim_function_call(node)
            nr = getattr(tensor, "output_nr", 0)
            name = names.output(call.name, None if nr == 0 else str(nr))
            call.output_names.append(self._name(tensor, name, ROLE_ACTIVATION, call.name))
            if call.output_name is None:
                call.output_name = call.output_names[-1]
                call.output = self._array(call.output_name)

    def _claim_function_call(self, node) -> CapturedCall:
        """The open call of this node's Function class, or a new one whose inputs are
        the named tensors the node's backward hands gradients to."""
        kind, qualified = _function_class(node)
        cls = getattr(type(node), "_forward_cls", None)
        for position, (open_cls, call) in enumerate(self._open_functions):
            if open_cls is cls:
                del self._open_functions[position]
                self._function_nodes[id(node)] = call
                return call
        call = self._new_function_call(kind, qualified)
        for next_node, nr in node.next_functions:
            variable = getattr(next_node, "variable", None)  # AccumulateGrad: a leaf
            if variable is not None and id(variable) in self.param_names:
                self._use_param(call, self.param_names[id(variable)], variable)
                continue
            if variable is not None and self._key(variable) in self._keys:
                name = self._keys[self._key(variable)]
            else:
                name = self._node_names.get((id(next_node), nr))
            if name is not None:
                call.input_names.append(name)
                call.inputs.append(self._array(name))
        self._function_nodes[id(node)] = call
        return call
