"""Where one number came from: the scalar computation behind one cell of a stored tensor.

Pure and torch-free (arrays in, plain records out), so the tracer, the dashboard
and the tests can all use it. Given an iteration's stored tensors and steps, the
run's layer types and optimizer settings, and one cell of a tensor a step
produced, `explain_cell` returns the computation that produced that cell, written
with the real numbers, the cells it read (for highlighting), and the value
recomputed from them, checked against the stored one.

One module per layer family, as in `tracer/explainers/`: each registers a rule per
layer type (`LAYER_RULES`) or optimizer (`OPTIMIZER_RULES`); every type with an
explainer has one (tests/storage/test_provenance_layers.py checks the registry).

- conv: im2col, W_flat, Y_col = X_col W_flat^T + b, and col2im for the input gradient;
- pool: max pooling (window and winner, padding never wins), average pooling (R_h, R_w, D);
- linear, flatten; activation: ReLU, the elementwise table, PReLU;
- softmax, losses (cross-entropy, NLL, the pointwise losses); regularise: dropout, batch norm;
- combine: x + αy, and every gradient of a tensor used more than once as the sum of its parts;
- optim: SGD, Adam/AdamW, RMSprop, Adagrad with their state.

A backward gradient is the sum over every path that reaches the cell (overlapping
pool windows, col2im overlaps, the samples of the batch, every use of a tensor).
Settings not stored as numbers (windows, ε, α, the reduction...) are recovered from
the stored tensors and used only when they reproduce them; what cannot be recovered,
and the givens (the batch, the labels, the weights at the start, random masks),
raise `NotExplained` with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import names
from ..records import IterationRecord, StepRecord
from . import activation, combine, conv, linear, loss, optim, pool, regularise, softmax  # noqa: F401
from .core import (
    LAYER_RULES,
    MAX_WRITTEN_TERMS,
    OPTIMIZER_RULES,
    Context,
    Missing,
    NotExplained,
    Prefix,
    Provenance,
    Term,
    cell,
    fmt,
    prov,
    term,
)
from .core import dot as _dot  # noqa: F401 - the old private name, kept for callers
from .windows import Window, conv_window, im2col, pool_window

__all__ = [
    "LAYER_RULES",
    "MAX_WRITTEN_TERMS",
    "OPTIMIZER_RULES",
    "NotExplained",
    "Prefix",
    "Provenance",
    "Term",
    "Window",
    "conv_window",
    "covered_types",
    "explain_cell",
    "im2col",
    "pool_window",
]

RAW = r"\text{see the stored tensors}"  # the formula of a step stored without a matrix form


def covered_types() -> set[str]:
    """Every layer type and optimizer with a provenance rule."""
    return set(LAYER_RULES) | set(OPTIMIZER_RULES)


def explain_cell(
    record: IterationRecord,
    layer_types: Mapping[str, str],
    name: str,
    index: Sequence[int],
    *,
    optimizer: str = "",
    settings: Mapping[str, object] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    previous: Mapping[str, np.ndarray] | None = None,
) -> Provenance:
    """The computation behind `record`'s tensor `name` at `index` (see the module docstring).

    `arrays` (name -> the whole tensor; a missing or truncated one is absent) replaces
    `record`'s own tensors: a page can pass a mapping that reads only the tensors
    the answer needs, with `record` loaded without data (its steps are enough).
    `previous`: the same for the iteration before (an optimizer's state before the
    step is that iteration's state after it); without it only a first step's state
    is explained."""
    if arrays is None:
        arrays = {
            t.name: Prefix(t.name, t.array, t.shape) if t.truncated else t.array
            for t in record.tensors
        }
    if name not in arrays:
        raise NotExplained(f"{name} is not stored in this iteration")
    index = tuple(int(i) for i in index)
    if isinstance(arrays[name], Prefix) and len(index) == arrays[name].ndim:
        try:
            arrays[name][index]
        except Missing as exc:
            raise NotExplained(
                f"{name}{cell(index)} is not stored: a storage bound kept its first {exc.kept} elements"
            ) from None
        except ValueError:
            pass  # out of range: said below
    if len(index) != np.ndim(arrays[name]) or any(
        not 0 <= i < d for i, d in zip(index, np.shape(arrays[name]))
    ):
        raise NotExplained(f"{name} has no cell {list(index)}")
    ctx = Context(
        arrays,
        record.steps,
        layer_types,
        optimizer,
        settings or {},
        iteration=record.index,
        learning_rate=record.learning_rate,
        previous=previous,
    )
    parsed = names.parse(name)
    if parsed.kind == names.KIND_UPDATE and ctx.has(names.next_value(parsed.of)):
        answer = _difference(ctx, name, parsed.of, index)
    else:
        step, rule = _producer(ctx, name, parsed)
        try:
            answer = rule(ctx, step, name, index)
        except Missing as exc:  # a cell it reads was left out by a storage bound
            raise NotExplained(f"{name}{cell(index)} {exc.reason()}") from None
        except KeyError as exc:  # a tensor it reads is absent
            raise NotExplained(
                f"{name}{cell(index)} reads {exc.args[0]}, which is not stored"
            ) from None
        answer.step = step.position
    answer.stored = float(arrays[name][index])
    return answer


def _producer(ctx: Context, name: str, parsed: names.TensorName):
    """The step that computed `name` and the rule that explains it."""
    if parsed.kind == names.KIND_GRAD_BEFORE or name.endswith(".before"):
        raise NotExplained(f"{name} is what the module held before this iteration: a given")
    writers = [step for step in ctx.steps if name in step.outputs]
    if parsed.kind == names.KIND_GRAD:  # a tensor used more than once: the sum of its parts
        for step in writers:
            if combine.is_sum_step(step, name):
                return step, combine.sum_of_parts
    if parsed.kind == names.KIND_GRAD_PART:  # the part of a gradient through one use
        whole = names.grad(parsed.of)
        for step in ctx.layer_steps(parsed.use or ""):
            if step.phase == "backward" and (name in step.outputs or whole in step.outputs):
                return step, _layer_rule(ctx, step)
    if writers:
        return writers[0], _rule(ctx, writers[0])
    if parsed.kind == names.KIND_STATE:
        own = names.intermediate(parsed.of, parsed.key or "")
        after = names.next_value(parsed.of)
        for step in ctx.steps:
            if step.phase == "update" and (own in step.outputs or after in step.outputs):
                return step, _rule(ctx, step)
    # A matrix an explainer built but that is only read (W_flat, dY_col, the one-hot
    # labels): the layer's first step that reads it has its rule.
    for step in ctx.steps:
        if (
            name in step.inputs
            and name.startswith(step.layer + ".")
            and name not in ctx.params(step.layer).values()
        ):
            return step, _rule(ctx, step)
    raise NotExplained(f"{name} is a given of this iteration (no step computes it)")


def _rule(ctx: Context, step: StepRecord):
    if step.phase == "update":
        if step.formula_values == RAW:
            raise NotExplained(
                f"the {ctx.optimizer or 'optimizer'} update was stored without a matrix form: {step.note}"
            )
        rule = OPTIMIZER_RULES.get(ctx.optimizer)
        if rule is None:
            raise NotExplained(f"no provenance for {ctx.optimizer or 'this optimizer'}'s update")
        return rule
    return _layer_rule(ctx, step)


def _layer_rule(ctx: Context, step: StepRecord):
    if step.formula_values == RAW:
        raise NotExplained(
            f"layer {step.layer} was stored as raw tensors, without a matrix form: {step.note}"
        )
    kind = ctx.kind(step.layer)
    rule = LAYER_RULES.get(kind)
    if rule is None:
        raise NotExplained(f"no provenance for layer type {kind or step.layer!r}")
    return rule


def _difference(ctx: Context, name: str, param: str, index) -> Provenance:
    new, old = term(names.next_value(param), ctx.arrays, index), term(param, ctx.arrays, index)
    value = np.float32(new.value) - np.float32(old.value)
    return prov(
        name,
        index,
        float(value),
        "update",
        f"Δw{cell(index)} = w' - w = {fmt(new.value)} - {fmt(old.value)} = {fmt(value)}",
        [new, old],
    )
