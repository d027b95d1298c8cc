"""One grammar for tensor names: the builders, the one parser, and the roles.

The tracer names every tensor it stores with these builders, the store checks
names with `check`, and the dashboard reads them with `parse` (downloads
included). No torch here: storage and the dashboard import it.

The grammar, as the tracer produces it::

    call       := LAYER ["#" K]                 "conv1", "conv1#2" (K >= 2: the K-th call)
    value      := "input" [K] | "input." KEY    the model's arguments
                | "target"                      the labels (the criterion's 2nd argument)
                | call ".in" [K]                an argument of a call (K: its position)
                | call ".out" ["." PATH]        its output (PATH: in a tuple or dict output)
                | call ".value"                 the loss
                | call "." INTERMEDIATE         a matrix an explainer built ("conv1.X_col")
                | PARAM                         a parameter, by its qualified name
    tensor     := value ["#" K]                 a second tensor that got the same name
                | tensor ".grad"                dL/d(tensor)
                | tensor ".grad@" call          the part of dL/d(tensor) through one use
                | PARAM ".grad_before"          what .grad held before this iteration
                | PARAM ".next"                 the parameter after the optimizer step
                | PARAM ".update"               next - param
                | PARAM ".state." KEY           the optimizer's state ("exp_avg")

Module names come from PyTorch (`named_modules`), which forbids "." inside one
name but not "#" or "@"; the parser reads suffixes from the right, so a name
still parses as long as a layer's own name does not end like a suffix.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------- roles

# Roles a stored tensor can play. The dashboard's compare page picks tensors by role.
ROLE_INPUT = "input"  # the batch fed to the model
ROLE_TARGET = "target"  # the labels
ROLE_PARAM = "param"  # a parameter before the optimizer step
ROLE_PARAM_GRAD = "param_grad"  # dL/dparam as autograd left it in .grad
ROLE_PARAM_NEXT = "param_next"  # a parameter after the optimizer step
ROLE_UPDATE = "update"  # param_next - param
ROLE_ACTIVATION = "activation"  # a layer's output
ROLE_ACTIVATION_GRAD = "activation_grad"  # dL/d(layer output)
ROLE_INPUT_GRAD = "input_grad"  # dL/d(model input)
ROLE_INTERMEDIATE = "intermediate"  # a matrix the explainer built (X_col, mask, argmax...)
ROLE_OPTIMIZER_STATE = "optimizer_state"  # momentum buffers, Adam moments
ROLE_OUTPUT = "output"  # probabilities, predictions, loss

ROLES = (
    ROLE_INPUT,
    ROLE_TARGET,
    ROLE_PARAM,
    ROLE_PARAM_GRAD,
    ROLE_PARAM_NEXT,
    ROLE_UPDATE,
    ROLE_ACTIVATION,
    ROLE_ACTIVATION_GRAD,
    ROLE_INPUT_GRAD,
    ROLE_INTERMEDIATE,
    ROLE_OPTIMIZER_STATE,
    ROLE_OUTPUT,
)
GRADIENT_ROLES = (ROLE_PARAM_GRAD, ROLE_ACTIVATION_GRAD, ROLE_INPUT_GRAD)
WEIGHT_ROLES = (ROLE_PARAM, ROLE_PARAM_GRAD, ROLE_PARAM_NEXT, ROLE_UPDATE, ROLE_OPTIMIZER_STATE)

# ---------------------------------------------------------------- the pieces

MAX_LENGTH = 300  # the store's column width
CALL_SEP = "#"
USE_SEP = "@"
MODEL_INPUT = "input"
TARGET = "target"
OUT = "out"
IN = "in"
LOSS_VALUE = "value"
GRAD = "grad"
GRAD_BEFORE = "grad_before"
NEXT = "next"
UPDATE = "update"
STATE = "state"

# What a name is, as `parse` reads it (`TensorName.kind`).
KIND_VALUE = "value"  # a value of the forward pass, a parameter, an intermediate
KIND_GRAD = "grad"
KIND_GRAD_PART = "grad_part"
KIND_GRAD_BEFORE = "grad_before"
KIND_NEXT = "next"
KIND_UPDATE = "update"
KIND_STATE = "state"

# ---------------------------------------------------------------- builders


def child(scope: str, local: str) -> str:
    """A qualified name as PyTorch joins them: ("block", "add") -> "block.add"; no scope -> "add"."""
    return f"{scope}.{local}" if scope else local


def numbered(base: str, k: int) -> str:
    """The k-th of several with one name: 1 -> "conv1", 2 -> "conv1#2"."""
    return base if k <= 1 else f"{base}{CALL_SEP}{k}"


def model_input(position: int = 0, key: str | None = None) -> str:
    """The model's arguments: "input", "input1", ..., keyword arguments "input.KEY"."""
    if key is not None:
        return f"{MODEL_INPUT}.{key}"
    return MODEL_INPUT if position == 0 else f"{MODEL_INPUT}{position}"


def call_input(call: str, position: int = 0, count: int = 1) -> str:
    """An argument of a call: "conv1.in" for the only one, else "add.in0", "add.in1"."""
    return f"{call}.{IN}" if count == 1 else f"{call}.{IN}{position}"


def output(call: str, path: str | None = None, suffix: str = OUT) -> str:
    """A call's output: "conv1.out", or "lstm.out.1.0" inside a tuple output."""
    return f"{call}.{suffix}" if path is None else f"{call}.{suffix}.{path}"


def loss_value(loss: str) -> str:
    """The criterion's output: "loss.value"."""
    return f"{loss}.{LOSS_VALUE}"


def intermediate(call: str, suffix: str) -> str:
    """A matrix an explainer built for a call: "conv1.X_col"."""
    return f"{call}.{suffix}"


def grad(name: str) -> str:
    """dL/d(name): "conv1.out.grad", "conv1.weight.grad"."""
    return f"{name}.{GRAD}"


def grad_part(name: str, use: str) -> str:
    """The part of dL/d(name) that flows back through the call `use`: "relu.out.grad@add"."""
    return f"{name}.{GRAD}{USE_SEP}{use}"


def grad_before(param: str) -> str:
    """What param.grad held before this iteration's backward (gradient accumulation)."""
    return f"{param}.{GRAD_BEFORE}"


def next_value(param: str) -> str:
    """The parameter after the optimizer step: "conv1.weight.next"."""
    return f"{param}.{NEXT}"


def update(param: str) -> str:
    """next - param: "conv1.weight.update"."""
    return f"{param}.{UPDATE}"


def state(param: str, key: str) -> str:
    """The optimizer's state of a parameter: "conv1.weight.state.exp_avg"."""
    return f"{param}.{STATE}.{key}"


# ---------------------------------------------------------------- the parser


@dataclass(frozen=True)
class TensorName:
    """A stored name read back: what it is, and of what."""

    name: str
    kind: str  # KIND_VALUE, KIND_GRAD, ...
    of: str  # the tensor it derives from ("conv1.out" for "conv1.out.grad"); itself for values
    use: str | None = None  # KIND_GRAD_PART: the call the part flows through
    key: str | None = None  # KIND_STATE: the optimizer state's key

    @property
    def is_gradient(self) -> bool:
        return self.kind in (KIND_GRAD, KIND_GRAD_PART, KIND_GRAD_BEFORE)


_PARAM_SUFFIXES = (
    (f".{GRAD}", KIND_GRAD),
    (f".{GRAD_BEFORE}", KIND_GRAD_BEFORE),
    (f".{NEXT}", KIND_NEXT),
    (f".{UPDATE}", KIND_UPDATE),
)


def parse(name: str) -> TensorName:
    """Read a name built by the builders above. Raises ValueError for one that
    `check` refuses."""
    check(name)
    part = name.rfind(f".{GRAD}{USE_SEP}")
    if part > 0 and len(name) > part + len(GRAD) + 2:
        return TensorName(name, KIND_GRAD_PART, name[:part], use=name[part + len(GRAD) + 2 :])
    for suffix, kind in _PARAM_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return TensorName(name, kind, name[: -len(suffix)])
    marker = f".{STATE}."
    at = name.rfind(marker)
    if at > 0 and len(name) > at + len(marker):
        return TensorName(name, KIND_STATE, name[:at], key=name[at + len(marker) :])
    return TensorName(name, KIND_VALUE, name)


def split_call(call: str) -> tuple[str, int]:
    """ "conv1#2" -> ("conv1", 2); "conv1" -> ("conv1", 1)."""
    base, sep, k = call.rpartition(CALL_SEP)
    if sep and base and k.isdigit() and int(k) >= 2:
        return base, int(k)
    return call, 1


def check(name: str) -> str:
    """The name if a store can hold it and a URL can carry it, else ValueError:
    1 to MAX_LENGTH characters, printable (no control characters or newlines)."""
    if not isinstance(name, str) or not name:
        raise ValueError("a tensor name must be a non-empty string")
    if len(name) > MAX_LENGTH:
        raise ValueError(f"tensor name longer than {MAX_LENGTH} characters: {name[:40]!r}...")
    if not name.isprintable():
        raise ValueError(f"tensor name with a control character: {name!r}")
    return name


def is_valid(name: str) -> bool:
    try:
        check(name)
    except ValueError:
        return False
    return True
