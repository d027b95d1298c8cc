"""The pieces every provenance rule shares: the answer (`Provenance`, `Term`), what a
rule may read (`Context`), the rule tables, and the helpers that compute a sum or a
product from stored cells while writing it out with the real numbers.

Sums are computed in float64 from the float32 cells; an answer `matches` when it is
within float32 rounding of the stored value, scaled by the size of the terms.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import names
from ..records import StepRecord


class NotExplained(LookupError):
    """No provenance for this cell (a given, or a tensor it needs is not stored); says why."""


class Missing(KeyError):
    """A rule read a cell (or all) of a tensor that a storage bound truncated."""

    def __init__(self, name: str, index: tuple[int, ...] | None = None, kept: int = 0):
        super().__init__(name)
        self.name, self.index, self.kept = name, index, kept

    def reason(self) -> str:
        if self.index is None:
            return f"reads all of {self.name}, which is not stored whole"
        return (
            f"reads {self.name}{cell(self.index)}, beyond the first {self.kept} elements a "
            "storage bound kept"
        )


class Prefix:
    """A tensor a storage bound truncated: the store kept its first elements in C order.

    A kept cell reads as in the whole array; another cell raises `Missing`, and so does
    any use of the whole tensor (np.asarray, slices), so a rule explains every cell whose
    terms were all kept and says which term was not for the others."""

    def __init__(self, name: str, stored: np.ndarray, shape):
        self.name = name
        self.flat = np.asarray(stored).reshape(-1)
        self.shape = tuple(int(d) for d in shape)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.dtype = self.flat.dtype

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        if len(index) != self.ndim or not all(isinstance(i, (int, np.integer)) for i in index):
            raise Missing(self.name)
        flat = int(np.ravel_multi_index(tuple(int(i) for i in index), self.shape))
        if flat >= self.flat.size:
            raise Missing(self.name, tuple(int(i) for i in index), self.flat.size)
        return self.flat[flat]

    def __array__(self, dtype=None, copy=None):
        raise Missing(self.name)

    def __getattr__(self, attr):  # reshape, astype, max...: whole-array uses
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise Missing(self.name)

    def __len__(self) -> int:
        return self.shape[0]


@dataclass
class Term:
    tensor: str
    index: tuple[int, ...]
    value: float
    # The iteration the cell belongs to when it is not the one explained (an optimizer's
    # state before the step is the previous iteration's state after it); None: this one.
    iteration: int | None = None


@dataclass
class Provenance:
    tensor: str
    index: tuple[int, ...]
    stored: float  # the value in the store
    recomputed: float  # from the terms below
    kind: str  # "conv", "linear", "pool", ...
    formula: str  # the computation with the real numbers, as text
    terms: list[Term] = field(default_factory=list)  # every cell read, in order
    step: int | None = None  # position of the step that produced the tensor

    @property
    def matches(self) -> bool:
        scale = 1.0 + sum(abs(t.value) for t in self.terms if np.isfinite(t.value))
        if np.isnan(self.stored) or np.isnan(self.recomputed):
            return bool(np.isnan(self.stored) and np.isnan(self.recomputed))
        if np.isinf(self.stored) or np.isinf(self.recomputed):
            return bool(self.stored == self.recomputed)
        return abs(self.recomputed - self.stored) <= 1e-5 * scale

    def reads(self) -> dict[str, list[tuple[int, ...]]]:
        """tensor name -> the cells of it this computation read (to highlight them).
        Cells of another iteration are not highlighted on this one's page."""
        out: dict[str, list[tuple[int, ...]]] = {}
        for t in self.terms:
            if t.iteration is None:
                out.setdefault(t.tensor, []).append(t.index)
        return out


# ---------------------------------------------------------------- what a rule reads


@dataclass
class Context:
    """What a rule may read: the iteration's arrays and steps, layer types, settings."""

    arrays: Mapping[str, np.ndarray]
    steps: Sequence[StepRecord]
    layer_types: Mapping[str, str]
    optimizer: str = ""
    settings: Mapping[str, object] = field(default_factory=dict)
    iteration: int = 0  # the explained iteration's index
    learning_rate: float | None = None  # the iteration's, when a scheduler changed it
    # The previous iteration's tensors (optimizer state before this step), when stored.
    previous: Mapping[str, np.ndarray] | None = None

    def kind(self, layer: str) -> str:
        """The layer type of a step's layer; "conv#2" (a second call) is conv's type."""
        if layer in self.layer_types:
            return self.layer_types[layer]
        return self.layer_types.get(names.split_call(layer)[0], "")

    @functools.cached_property
    def _by_layer(self) -> dict[str, list[StepRecord]]:
        out: dict[str, list[StepRecord]] = {}
        for step in self.steps:
            out.setdefault(step.layer, []).append(step)
        return out

    @functools.cached_property
    def _mentioned(self) -> set[str]:
        """Every tensor name some step reads or writes (kept or not)."""
        return {n for step in self.steps for n in (*step.inputs, *step.outputs)}

    def layer_steps(self, layer: str) -> list[StepRecord]:
        return self._by_layer.get(layer, [])

    def forward_steps(self, layer: str) -> list[StepRecord]:
        return [s for s in self.layer_steps(layer) if s.phase == "forward"]

    def layer_inputs(self, layer: str) -> list[str]:
        """The tensors the layer's forward pass read that are not its own (parameters,
        intermediates), in the order its steps list them."""
        out: list[str] = []
        params = set(self.params(layer).values())
        for step in self.forward_steps(layer):
            for name in step.inputs:
                if name in params or name.startswith(layer + ".") or name in out:
                    continue
                out.append(name)
        return out

    def layer_input(self, step: StepRecord) -> str:
        """The (first) tensor the layer's forward pass read."""
        inputs = self.layer_inputs(step.layer)
        if not inputs:
            raise NotExplained(f"layer {step.layer} has no stored input")
        return inputs[0]

    def params(self, layer: str) -> dict[str, str]:
        """local name -> the stored parameter a layer reads ("weight" -> "conv.weight").
        A second call "conv#2" reads the module's own parameters, "conv.weight"."""
        base = names.split_call(layer)[0]
        out = {}
        for local in ("weight", "bias"):
            qualified = names.child(base, local)
            if (
                qualified in self.arrays
                or qualified in self._mentioned
                or names.grad(qualified) in self._mentioned
            ):
                out[local] = qualified
        return out

    def param(self, layer: str, local: str) -> str:
        try:
            return self.params(layer)[local]
        except KeyError:
            raise NotExplained(f"layer {layer} has no stored {local}") from None

    def has(self, name: str) -> bool:
        try:
            return name in self.arrays
        except Exception:  # a lazily read mapping that could not read it
            return False

    def is_grad_of(self, name: str, of: str, layer: str) -> bool:
        """name is dL/d(of) as this layer's backward wrote it: the whole gradient, or the
        part through this call when `of` has several uses."""
        return name in (names.grad(of), names.grad_part(of, layer))


Rule = Callable[[Context, StepRecord, str, tuple[int, ...]], "Provenance"]

# layer type name ("Conv2d") -> its rule; optimizer name ("Adam") -> its rule. Filled by
# the family modules with `layer_rule` / `optimizer_rule`.
LAYER_RULES: dict[str, Rule] = {}
OPTIMIZER_RULES: dict[str, Rule] = {}


def layer_rule(*types: str):
    def wrap(rule: Rule) -> Rule:
        for t in types:
            LAYER_RULES[t] = rule
        return rule

    return wrap


def optimizer_rule(*types: str):
    def wrap(rule: Rule) -> Rule:
        for t in types:
            OPTIMIZER_RULES[t] = rule
        return rule

    return wrap


# ---------------------------------------------------------------- writing it out


def fmt(value) -> str:
    return f"{float(value):.6g}"


# Sums longer than this are written with their first and last terms (a LeNet-5 fc1
# output has 400); every term is still computed, and listed in `Provenance.terms`.
MAX_WRITTEN_TERMS = 12


def joined(parts: Sequence[str], sep: str = " + ") -> str:
    if len(parts) <= MAX_WRITTEN_TERMS:
        return sep.join(parts)
    head, tail = parts[: MAX_WRITTEN_TERMS - 2], parts[-2:]
    return sep.join([*head, f"… ({len(parts) - len(head) - len(tail)} more terms)", *tail])


def dot(terms_a: Sequence[Term], terms_b: Sequence[Term]) -> tuple[float, str]:
    total = np.float64(0)
    for a, b in zip(terms_a, terms_b):
        total += np.float64(a.value) * np.float64(b.value)
    text = joined([f"({fmt(a.value)})({fmt(b.value)})" for a, b in zip(terms_a, terms_b)])
    return float(total), text


def affine(left, right, arrays, bias: str | None, k: int) -> tuple[float, str, list[Term]]:
    """Σ left·right + bias[k] (no bias term when the layer has none)."""
    total, text = dot(left, right)
    terms = [*left, *right]
    if bias is not None and bias in arrays:
        b = term(bias, arrays, (k,))
        total += b.value
        text += f" + ({fmt(b.value)})"
        terms.append(b)
    return total, text, terms


def term(name: str, arrays: Mapping[str, np.ndarray], index) -> Term:
    index = tuple(int(i) for i in index)
    return Term(name, index, float(arrays[name][index]))


def sum_terms(terms: Sequence[Term]) -> tuple[float, str]:
    total = float(np.sum([np.float64(t.value) for t in terms])) if terms else 0.0
    return total, (joined([fmt(t.value) for t in terms]) or "0")


def prov(name, index, value, kind, formula, terms) -> Provenance:
    return Provenance(
        tensor=name,
        index=tuple(index),
        stored=float("nan"),
        recomputed=float(value),
        kind=kind,
        formula=formula,
        terms=list(terms),
    )


def cell(index) -> str:
    return "[" + ",".join(str(int(i)) for i in index) + "]"


def unknown(name: str, step: StepRecord) -> NotExplained:
    return NotExplained(f"no provenance for {name} in {step.title!r}")
