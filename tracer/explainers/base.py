"""What an explainer receives (`LayerCall`), how it emits steps (`StepContext`),
and the registry from module type to explainer.

An explainer recomputes a layer's forward and backward in matrix form with
NumPy (float64), from the layer's captured inputs, parameters and upstream
gradient only, and hands each result to `StepContext.step` together with the
tensor PyTorch produced. The context records the largest absolute difference
and whether it is within float32 tolerance.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from storage import names
from storage.records import ROLE_INTERMEDIATE, StepRecord, TensorRecord

# |ours - torch| <= ATOL + RTOL * max|torch| counts as verified. Ours is float64
# from float32 inputs, PyTorch's is float32, so a few float32 ulps of the
# largest magnitude is the honest bound.
ATOL = 1e-5
RTOL = 1e-5


@dataclass
class LayerCall:
    """One call of one module during the traced forward pass, with what backward gave it."""

    name: str  # module qualified name; "name#2" for a second call
    module: Any  # the torch.nn.Module (explainers read its settings only)
    inputs: list[np.ndarray]  # values at call time (copied before the module ran)
    output: np.ndarray
    input_names: list[str]  # stored tensor names of inputs / output
    output_name: str
    params: dict[str, np.ndarray] = field(default_factory=dict)  # local name -> value
    param_names: dict[str, str] = field(default_factory=dict)  # local name -> stored name
    grad_output: np.ndarray | None = None  # dL/d(output) from autograd
    grad_inputs: list[np.ndarray | None] = field(default_factory=list)  # dL/d(input) from autograd
    param_grads: dict[str, np.ndarray | None] = field(default_factory=dict)  # from autograd
    grad_output_name: str | None = None
    grad_input_names: list[str | None] = field(default_factory=list)
    param_grad_names: dict[str, str] = field(default_factory=dict)
    buffers: dict[str, np.ndarray] = field(default_factory=dict)  # module buffers before the call
    buffers_after: dict[str, np.ndarray] = field(default_factory=dict)  # ... and after it
    shared_params: bool = False  # params also used by another call: .grad is a sum over calls
    training: bool = True
    # (k, N) when the call is explained on its first k samples of N only (a storage bound
    # keeps no more of its tensors); None: the whole batch.
    samples: tuple[int, int] | None = None

    @property
    def x(self) -> np.ndarray:
        return self.inputs[0]


class StepContext:
    """Collects the steps and intermediate tensors an explainer produces."""

    def __init__(self, call: LayerCall, phase: str, layer: str | None = None):
        self.call = call
        self.phase = phase
        self.layer = layer or call.name  # steps are grouped under this layer name
        self.steps: list[StepRecord] = []
        self.tensors: list[TensorRecord] = []
        self._names: set[str] = set()
        self.param_grads: dict[str, np.ndarray] = {}  # ours, for shared-parameter sums

    def tensor(self, suffix: str, array: np.ndarray, role: str = ROLE_INTERMEDIATE) -> str:
        """Store an intermediate matrix of this layer; returns its tensor name."""
        name = names.intermediate(self.call.name, suffix)
        if name not in self._names:
            self._names.add(name)
            self.tensors.append(
                TensorRecord(name=name, role=role, array=_as_stored(array), layer=self.layer)
            )
        return name

    def step(
        self,
        title: str,
        formula: str,
        values: str,
        *,
        inputs: list[str | None],
        outputs: list[str | None],
        checks: list[tuple[np.ndarray, np.ndarray | None, str]] = (),
        note: str = "",
        magnitude: float = 0.0,
    ) -> StepRecord:
        """Record a step. `checks` holds (ours, PyTorch's, what) triples.

        `magnitude` is the size of the terms a result was computed from, when it can
        be far larger than the result: terms that cancel leave float32 rounding of
        their own size in PyTorch's answer, so the tolerance scales with them.

        A check whose PyTorch tensor is None (autograd did not compute it, e.g.
        dL/dx of an input that does not require grad) is skipped and said so.
        """
        max_diff: float | None = None
        verified: bool | None = None
        references = []
        for ours, theirs, what in checks:
            if theirs is None:
                references.append(
                    what if isinstance(what, NotCompared) else f"{what}: not computed by autograd"
                )
                continue
            ours64 = np.asarray(ours, dtype=np.float64)
            # PyTorch's float32 stays float32: float64 - float32 casts it exactly, and
            # abs/max of float32 are the float64 ones' values (no copy of it needed).
            theirs64 = np.asarray(theirs)
            if theirs64.dtype not in (np.float32, np.float64):
                theirs64 = theirs64.astype(np.float64)
            if ours64.shape != theirs64.shape:
                raise AssertionError(
                    f"{self.call.name} {title}: shape {ours64.shape} vs PyTorch {theirs64.shape}"
                )
            diff = float(np.max(np.abs(ours64 - theirs64))) if ours64.size else 0.0
            if np.isnan(diff):
                both_nan = np.array_equal(np.isnan(ours64), np.isnan(theirs64))
                diff = 0.0 if both_nan else float("inf")
            finite = np.isfinite(theirs64)
            scale = float(
                np.max(np.abs(theirs64 if finite.all() else theirs64[finite]), initial=0.0)
            )
            ok = diff <= ATOL + RTOL * max(scale, magnitude)
            max_diff = diff if max_diff is None else max(max_diff, diff)
            verified = ok if verified is None else (verified and ok)
            references.append(what)
        record = StepRecord(
            layer=self.layer,
            phase=self.phase,
            title=title,
            formula=formula,
            formula_values=values,
            inputs=[n for n in inputs if n],
            outputs=[n for n in outputs if n],
            reference="; ".join(references) if references else None,
            max_abs_diff=max_diff,
            verified=verified,
            note=note,
        )
        self.steps.append(record)
        return record

    def param_grad(self, local: str, ours: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str]:
        """A check triple for dL/d(param). With shared parameters .grad sums every
        call's contribution, so a single call is checked in the final sum instead."""
        self.param_grads[local] = ours
        if self.call.samples is not None:
            k, n = self.call.samples
            return (
                ours,
                None,
                NotCompared(
                    f"dL/d{local} of the {_first(k)} of {n} only: autograd's "
                    f"{self.call.param_names[local]}.grad sums all {n} (a full check compares it)"
                ),
            )
        if self.call.shared_params:
            return ours, None, f"dL/d{local} of this call (checked in the sum over calls)"
        return (
            ours,
            self.call.param_grads.get(local),
            f"autograd {names.grad(self.call.param_names[local])}",
        )


class NotCompared(str):
    """The `what` of a check with no PyTorch tensor to compare, saying why in full."""


def _first(k: int) -> str:
    return "first sample" if k == 1 else f"first {k} samples"


def samples_note(k: int, n: int) -> str:
    """What a step explained on the kept samples says about it."""
    which = "sample 1" if k == 1 else f"samples 1-{k}"
    stored = "the sample stored" if k == 1 else "the samples stored"
    return (
        f"Checked on {which} of {n}, {stored}; a full check (full_check=True, "
        f"`cnnviz trace --full-check`) explains all {n}."
    )


def _as_stored(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == np.float64:
        return array.astype(np.float32)
    return array


class Explainer:
    """Base class: one subclass per module type, registered with `@register`.

    `forward` and `backward` append steps to the context. `describe` gives the
    one-line description and the defining formula for the architecture page.
    """

    formula: ClassVar[str] = ""

    def describe(self, module) -> str:
        return repr(module)

    def per_sample(self, call: LayerCall) -> bool:
        """Whether sample i of the output depends on sample i of the inputs only (along
        dimension 0), so that the call can be explained and checked on the first samples
        alone. False where the batch is mixed (batch statistics, a batch-mean loss)."""
        return False

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        raise NotImplementedError

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        raise NotImplementedError


_REGISTRY: dict[type, Explainer] = {}
# The same, by type name: how a plain spec (`tracer.capture.spec`) finds its explainer.
_BY_NAME: dict[str, type] = {}


@dataclass(frozen=True, eq=False)
class Functional:
    """Torch functions that compute what a module type computes (`F.conv2d` for
    nn.Conv2d), so that a call written in a forward is explained like the module.

    `signature` is a def with the functions' argument names and defaults (read from
    the function itself when None, which builtins do not allow). `build` gets the
    module type, the arguments bound by name (`Arguments`, defaults applied) and the
    output, and returns (module, [data tensors in the module's argument order],
    {param local name: tensor}), or None when these settings have no module
    equivalent (the call is then stored raw). The default is `build_like_module`;
    `settings` are fixed constructor arguments (`inplace=True` for `relu_`).
    """

    funcs: tuple[Callable, ...]
    signature: Callable | None = None
    build: Callable[..., tuple | None] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def bind(self, func: Callable, args, kwargs) -> Arguments:
        signature = _signature(self.signature or func)
        bound = signature.bind(*args, **kwargs)
        # What the caller set: torch's wrappers pass every argument on, defaults too.
        given = {
            k
            for k, v in bound.arguments.items()
            if not _is_default(v, signature.parameters[k].default)
        }
        bound.apply_defaults()
        return Arguments(bound.arguments, given=given)

    def module_for(self, module_type: type, arguments: Arguments, out) -> tuple | None:
        build = self.build or build_like_module
        return build(module_type, Arguments({**arguments, **self.settings}, arguments.given), out)


def _is_default(value, default) -> bool:
    if default is inspect.Parameter.empty:
        return False
    if value is default:
        return True
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:  # a tensor compared with a number, say
        return False


class Arguments(dict):
    """A functional call's arguments by name, defaults applied; `given`: those the
    caller passed."""

    def __init__(self, values, given: set[str]):
        super().__init__(values)
        self.given = given


def one_tensor(input):  # noqa: A002 - torch's own argument name
    """The signature of torch.relu, x.sigmoid() and other one-argument functions."""


def build_like_module(
    module_type: type, a: Arguments, out, data: tuple[str, ...] = ("input",)
) -> tuple | None:
    """The default build: the module made from the arguments it shares with the
    function (F.gelu(x, approximate="tanh") -> nn.GELU(approximate="tanh")), or None
    when the caller set an argument the module has no equivalent for."""
    accepted = set(inspect.signature(module_type.__init__).parameters) - {"self"}
    if any(k not in accepted and k not in data and k != "training" for k in a.given):
        return None
    module = module_type(**{k: v for k, v in a.items() if k in accepted})
    if "training" in a:
        module.train(bool(a["training"]))
    return module, [a[k] for k in data], {}


_FUNCTIONAL: dict[Callable, tuple[type, Functional]] = {}
_SIGNATURES: dict[Callable, inspect.Signature] = {}


def _signature(template: Callable) -> inspect.Signature:
    if template not in _SIGNATURES:
        _SIGNATURES[template] = inspect.signature(template)
    return _SIGNATURES[template]


def register(*module_types: type, functional: Iterable[Callable | Functional] = ()):
    """Class decorator: `@register(nn.Conv2d)` makes the class explain Conv2d calls;
    `functional=[F.gelu]` (or `Functional(...)` entries) also the same computation
    called as a function in a forward. The first module type is the one built."""
    forms = [f if isinstance(f, Functional) else Functional((f,)) for f in functional]

    def wrap(cls: type[Explainer]) -> type[Explainer]:
        for form in forms:  # checked before anything is registered
            for func in form.funcs:
                if func in _FUNCTIONAL and _FUNCTIONAL[func][0] is not module_types[0]:
                    raise ValueError(
                        f"{func} is already the functional form of {_FUNCTIONAL[func][0]}"
                    )
        for module_type in module_types:
            known = _BY_NAME.get(module_type.__name__)
            if known is not None and known is not module_type:
                raise ValueError(f"{known} is registered under the name {module_type.__name__}")
        instance = cls()
        for module_type in module_types:
            _REGISTRY[module_type] = instance
            _BY_NAME[module_type.__name__] = module_type
        for form in forms:
            for func in form.funcs:
                _FUNCTIONAL[func] = (module_types[0], form)
        return cls

    return wrap


def functional_form(func: Callable) -> tuple[type, Functional] | None:
    """(module type, form) for a torch function declared as a module's functional form."""
    try:
        return _FUNCTIONAL.get(func)
    except TypeError:  # an unhashable callable
        return None


def functional_forms() -> dict[Callable, type]:
    """Every declared torch function and the module type it stands for."""
    return {func: module_type for func, (module_type, _) in _FUNCTIONAL.items()}


class Unsupported(Exception):
    """An explainer cannot write this call in matrix form (an unusual setting).

    The tracer then stores the call's raw tensors and a warning naming why.
    """


def registered_class(obj) -> type | None:
    """The registered type whose explainer explains the object: its own type, or a
    registered base class whose forward it does not override (a subclass with its own
    forward is unknown math)."""
    own = type(obj)
    for cls in own.__mro__:
        if cls in _REGISTRY:
            if cls is own or getattr(own, "forward", None) is getattr(cls, "forward", None):
                return cls
            return None
    return None


def explainer_for(obj) -> Explainer | None:
    """The explainer of a module or optimizer, or of its plain spec (looked up by the
    registered type's name: nothing named by a spec is imported)."""
    from ..capture.spec import Spec

    if isinstance(obj, Spec):
        registered = _BY_NAME.get(obj.type) if isinstance(obj.type, str) else None
        return _REGISTRY.get(registered) if registered is not None else None
    registered = registered_class(obj)
    return _REGISTRY[registered] if registered is not None else None


def class_name(obj) -> str:
    """The class name of a module, an optimizer, or of the object a spec describes."""
    from ..capture.spec import Spec

    return obj.cls if isinstance(obj, Spec) else type(obj).__name__


def is_a(obj, name: str) -> bool:
    """isinstance by class name, for live objects and specs alike."""
    from ..capture.spec import Spec

    if isinstance(obj, Spec):
        return obj.is_a(name)
    return any(cls.__name__ == name for cls in type(obj).__mro__)


def as_array(value):
    """A buffer read from a module (a tensor) or from its spec (already an array)."""
    if value is None or isinstance(value, np.ndarray):
        return value
    return value.detach().cpu().numpy()


def registered_types() -> list[type]:
    return list(_REGISTRY)
