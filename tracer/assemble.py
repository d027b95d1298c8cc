"""Turn one captured iteration into stored records: tensors, then forward,
backward and update steps from the explainers, each verified against PyTorch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from storage import codec, names
from storage.records import (
    ROLE_ACTIVATION_GRAD,
    ROLE_INPUT,
    ROLE_INPUT_GRAD,
    ROLE_INTERMEDIATE,
    ROLE_OPTIMIZER_STATE,
    ROLE_PARAM,
    ROLE_PARAM_GRAD,
    ROLE_PARAM_NEXT,
    ROLE_UPDATE,
    IterationRecord,
    LayerInfo,
    StepRecord,
    TensorRecord,
)

from .capture import CapturedCall, CapturedIteration
from .capture.spec import OptimizerSpec, optimizer_spec
from .explainers import LayerCall, StepContext, Unsupported, UpdateCall, explainer_for
from .explainers.base import NotCompared, class_name, samples_note

log = logging.getLogger("cnnviz")


class TraceError(RuntimeError):
    """An explainer failed in strict mode; the message names the layer."""


# The note on the steps of an iteration traced with explain="off", until `cnnviz
# explain` explains it.
NOT_EXPLAINED = (
    "not explained yet: traced with explanation off (raw tensors only); "
    "`cnnviz explain RUN --db STORE` explains it later from the stored raw tensors, "
    "with the same steps and checks as tracing with explanation on"
)


@dataclass
class Bounds:
    """What to keep of large tensors. Summary columns always describe the full tensor."""

    max_elements: int | None = None  # store at most this many elements per tensor (C order)
    layers: frozenset[str] | None = None  # store tensors of these layers only (None: all)
    # With max_elements, a call whose samples are independent (conv, linear, ReLU,
    # pooling...) is explained and checked on the samples stored only; True: all of them.
    full_check: bool = False

    def keep(self, record: TensorRecord) -> bool:
        return self.layers is None or record.layer is None or record.layer in self.layers


def _grad_name(name: str) -> str:
    return names.grad(name)


def _layer_call(
    call: CapturedCall, cap: CapturedIteration, shared: dict[str, set[str]]
) -> LayerCall:
    """What the explainer sees. An input that several calls use (`shared`: name ->
    calls using it) gets autograd's total gradient as reference, which is not this
    call's part: `_CallContext` sets such checks aside for the sum over the uses."""
    grad_inputs = [cap.grads.get(n) for n in call.input_names]
    grad_input_names = []
    for n, g in zip(call.input_names, grad_inputs, strict=True):
        if g is None:
            grad_input_names.append(None)
        elif n in shared:
            grad_input_names.append(_part_name(n, call.name))
        else:
            grad_input_names.append(_grad_name(n))
    return LayerCall(
        name=call.name,
        module=call.module,
        inputs=call.inputs,
        output=call.output,
        input_names=call.input_names,
        output_name=call.output_name,
        params={local: cap.params[q] for local, q in call.param_names.items() if q in cap.params},
        param_names=dict(call.param_names),
        grad_output=cap.grads.get(call.output_name) if call.output_name else None,
        grad_inputs=grad_inputs,
        param_grads={local: _grad_of_iteration(cap, q) for local, q in call.param_names.items()},
        grad_output_name=_grad_name(call.output_name) if call.output_name else None,
        grad_input_names=grad_input_names,
        param_grad_names={
            local: _grad_name(q) for local, q in call.param_names.items() if q in cap.param_grads
        },
        buffers=call.buffers,
        buffers_after=call.buffers_after,
        shared_params=any(cap.param_calls[q] > 1 for q in call.param_names.values()),
        training=call.training,
    )


def _part_name(name: str, call_name: str) -> str:
    """The part of dL/d(name) that flows back through one of the calls using it."""
    return names.grad_part(name, call_name)


class _CallContext(StepContext):
    """A StepContext that sets aside the checks of inputs used by several calls.

    Autograd's gradient of such an input is the sum over every call that used it,
    so one call's part cannot be compared with it. The explainer's result for that
    input is kept in `input_parts` (by input name) and checked in the sum instead
    (`_fan_out_sum`); the explainer passes autograd's array itself as reference,
    which is how the check is recognised.
    """

    def __init__(
        self,
        call: LayerCall,
        phase: str,
        shared: dict[str, set[str]],
        computed: dict[str, str] | None = None,
    ):
        super().__init__(call, phase)
        # Gradients PyTorch computed after the step rather than autograd during it
        # (`tracer.capture.inputgrad`): id of the reference array -> how. (The arrays
        # are the call's own: a storage bound cuts them.)
        computed = computed or {}
        self.computed = {
            id(g): computed[n]
            for n, g in zip(call.input_names, call.grad_inputs, strict=True)
            if g is not None and n in computed
        }
        self.shared_refs = {
            id(g): (n, len(shared[n]))
            for n, g in zip(call.input_names, call.grad_inputs, strict=True)
            if g is not None and n in shared
        }
        self.input_parts: dict[str, np.ndarray] = {}

    def step(self, title, formula, values, *, inputs, outputs, checks=(), note="", magnitude=0.0):
        kept, deferred = [], {}
        for ours, theirs, what in checks:
            by = self.computed.get(id(theirs)) if theirs is not None else None
            if by is not None and what.startswith("autograd "):
                what = f"PyTorch {what.removeprefix('autograd ')} ({by})"
            hit = self.shared_refs.get(id(theirs)) if theirs is not None else None
            if hit is None:
                kept.append((ours, theirs, what))
                continue
            name, uses = hit
            self.input_parts[name] = np.asarray(ours)
            kept.append((ours, None, what))
            deferred[f"{what}: not computed by autograd"] = (
                f"{what}: this call's part, checked in the sum over the {uses} uses of {name}"
            )
        record = super().step(
            title,
            formula,
            values,
            inputs=inputs,
            outputs=outputs,
            checks=kept,
            note=note,
            magnitude=magnitude,
        )
        if deferred and record.reference:
            for old, new in deferred.items():
                record.reference = record.reference.replace(old, new)
        return record


def _raw_step(
    call: CapturedCall, phase: str, why: str, cap: CapturedIteration, *, later: bool = False
) -> StepRecord:
    """A call with no matrix form: its tensors are stored and shown as they are.
    `later`: the call was not explained because explanation was off; `why` says so."""
    what_form = "not explained" if later else "no matrix form"
    kind = call.kind
    symbol = kind.rsplit(".", 1)[-1].strip("_").replace("_", r"\_") or "f"
    params = list(call.param_names.values())
    outputs = call.output_names or ([call.output_name] if call.output_name else [])
    if phase == "forward":
        inputs = call.input_names + params
        formula = rf"Y = \operatorname{{{symbol}}}(X)"
        title = f"{kind} ({what_form}; tensors as captured)"
    else:
        inputs = [_grad_name(n) for n in outputs if n in cap.grads]
        outputs = [_grad_name(n) for n in call.input_names if n in cap.grads]
        outputs += [_grad_name(q) for q in params if q in cap.param_grads]
        formula = rf"\frac{{\partial L}}{{\partial X}} = J_{{\operatorname{{{symbol}}}}}^{{\top}} \frac{{\partial L}}{{\partial Y}}"
        title = f"{kind} backward ({what_form}; autograd's gradient as captured)"
    what = f"the functional call {call.op}" if call.op else kind
    return StepRecord(
        layer=call.name,
        phase=phase,
        title=title,
        formula=formula,
        formula_values=r"\text{see the stored tensors}",
        inputs=list(dict.fromkeys(n for n in inputs if n)),
        outputs=list(dict.fromkeys(n for n in outputs if n)),
        note=why if later else f"cnnviz has no matrix decomposition for {what}: {why}",
    )


def build_iteration(
    cap: CapturedIteration,
    index: int,
    *,
    optimizer=None,
    bounds: Bounds | None = None,
    strict: bool = False,
    loss_value: float | None = None,
    explain: bool = True,
    why: str | None = None,
) -> IterationRecord:
    """The stored record of one captured iteration.

    `strict` turns an explainer's failure into a TraceError (tests); otherwise the
    call is stored as raw tensors with a warning. `explain=False` stores every call
    as raw tensors: the fallback when building a record failed (with a warning
    per call), or, with `why` saying so, a trace with explanation off (no
    warnings: nothing failed).
    """
    raw_reason = why
    bounds = bounds or Bounds()
    tensors: dict[str, TensorRecord] = {}
    warnings: list[str] = [f"capture: {p}" for p in cap.problems]

    def add(name: str, array: np.ndarray, role: str, layer: str | None) -> None:
        if name not in tensors:
            tensors[name] = TensorRecord(name=name, role=role, array=np.asarray(array), layer=layer)

    for value in cap.values.values():
        add(value.name, value.array, value.role, value.layer)
    for name, grad in cap.grads.items():
        if cap.loss_name and name == names.loss_value(cap.loss_name):
            continue  # dL/dL = 1
        role = (
            ROLE_INPUT_GRAD
            if cap.values.get(name) and cap.values[name].role == ROLE_INPUT
            else ROLE_ACTIVATION_GRAD
        )
        add(_grad_name(name), grad, role, cap.values[name].layer if name in cap.values else None)
    for name, value in cap.params.items():
        layer = cap.param_layers.get(name)
        add(name, value, ROLE_PARAM, layer)
        if name in cap.param_grads:
            add(_grad_name(name), cap.param_grads[name], ROLE_PARAM_GRAD, layer)
        if name in cap.grads_at_start:
            add(names.grad_before(name), cap.grads_at_start[name], ROLE_INTERMEDIATE, layer)
            warnings.append(
                f"{name}: .grad held more than this iteration's backward added (no zero_grad, "
                f"or gradient accumulation); {names.grad_before(name)} is the rest, and the backward "
                "checks compare this iteration's contribution"
            )
        if name in cap.params_after:
            add(names.next_value(name), cap.params_after[name], ROLE_PARAM_NEXT, layer)
            if cap.params_after[name].shape == value.shape and value.dtype.kind == "f":
                add(names.update(name), cap.params_after[name] - value, ROLE_UPDATE, layer)
        for key, state in cap.state_after.get(name, {}).items():
            if state.ndim > 0:
                add(names.state(name, key), state, ROLE_OPTIMIZER_STATE, layer)

    steps: list[StepRecord] = []
    shared = _shared_inputs(cap)
    computed = cap.computed_grads

    def warn(message: str) -> None:
        if message not in warnings:
            warnings.append(message)

    def run(call: CapturedCall, phase: str, layer_call: LayerCall, explained: list) -> None:
        explainer = explainer_for(call.module) if call.module is not None else None
        why = None
        if not explain and raw_reason:
            steps.append(_raw_step(call, phase, raw_reason, cap, later=True))
            return
        if not explain:
            why = "not explained (building the matrix form of this iteration failed)"
        elif call.error:
            why = call.error
        elif explainer is None:
            why = "no explainer is registered for " + (
                "this operation" if call.module is None else f"{call.kind}"
            )
        if why is None:
            ctx = _CallContext(layer_call, phase, shared, computed)
            try:
                getattr(explainer, phase)(layer_call, ctx)
            except Unsupported as exc:
                why = f"unsupported setting: {exc}"
            except Exception as exc:
                if strict:
                    raise TraceError(
                        f"failed while explaining {phase} of layer {call.name} ({call.kind}): {exc}"
                    ) from exc
                why = f"explainer failed: {type(exc).__name__}: {exc}"
            else:
                for record in ctx.tensors:
                    add(record.name, record.array, record.role, record.layer)
                for name, part in ctx.input_parts.items():
                    add(
                        _part_name(name, call.name),
                        part.astype(np.float32),
                        ROLE_ACTIVATION_GRAD,
                        call.name,
                    )
                explained.append((call, ctx))
                for step in ctx.steps:
                    if step.verified is False:
                        warn(
                            f"{call.name}: '{step.title}' differs from PyTorch by {step.max_abs_diff:.3g}"
                        )
                if layer_call.samples is not None:
                    for step in ctx.steps:
                        step.note = _join(step.note, samples_note(*layer_call.samples))
                steps.extend(ctx.steps)
                return
        what = (
            f"{call.kind}, called as {call.op}" if call.op and call.op != call.kind else call.kind
        )
        warn(f"{call.name} ({what}): {why}; traced as raw tensors")
        steps.append(_raw_step(call, phase, why, cap))

    calls = [call for call in cap.calls if call.output is not None or call.error]
    layer_calls = [
        (call, _kept_samples(_layer_call(call, cap, shared), call, bounds)) for call in calls
    ]
    sliced = {call.name for call, layer_call in layer_calls if layer_call.samples is not None}
    for call, layer_call in layer_calls:
        run(call, "forward", layer_call, [])
    # Backward in reverse call order. A tensor or parameter that several calls used
    # gets its sum step as soon as the last of them (the first in forward order)
    # is done, before anything reads its total gradient.
    input_parts: dict[str, list[tuple[str, np.ndarray]]] = {}
    param_parts: dict[str, list[tuple[str, np.ndarray]]] = {}
    param_users = _param_users(cap)
    done: set[str] = set()
    for call, layer_call in reversed(layer_calls):
        explained: list = []
        if any(n in cap.grads for n in call.output_names or [call.output_name]):
            run(call, "backward", layer_call, explained)
        # else: no gradient reached this call (no_grad, or not part of the loss)
        for _, ctx in explained:
            for name, part in ctx.input_parts.items():
                input_parts.setdefault(name, []).append((call.name, part))
            if layer_call.shared_params:
                for local, part in ctx.param_grads.items():
                    qualified = call.param_names[local]
                    add(
                        _part_name(qualified, call.name),
                        np.asarray(part, dtype=np.float32),
                        ROLE_PARAM_GRAD,
                        cap.param_layers.get(qualified),
                    )
                    param_parts.setdefault(qualified, []).append((call.name, part))
        done.add(call.name)
        for name in dict.fromkeys(call.input_names):
            if name in shared and shared[name] <= done:
                steps.extend(_fan_out_sum(cap, name, shared[name], input_parts.get(name, [])))
        for qualified in dict.fromkeys(call.param_names.values()):
            users = param_users.get(qualified, set())
            if len(users) > 1 and users <= done:
                steps.extend(
                    _param_sum(
                        cap, qualified, users, param_parts.get(qualified, []), users & sliced
                    )
                )

    steps.extend(_update_steps(cap, optimizer, tensors, warn, strict, explain, raw_reason))

    loss = loss_value
    loss_tensor = names.loss_value(cap.loss_name) if cap.loss_name else None
    if loss is None and loss_tensor in cap.values:
        loss = float(np.asarray(cap.values[loss_tensor].array).reshape(-1)[0])
    accuracy = _accuracy(cap)
    lr = None
    if cap.param_groups:
        lr = next(iter(cap.param_groups.values())).get("lr")
        lr = float(lr) if isinstance(lr, (int, float)) else None

    stored = _apply_bounds(tensors, bounds)
    kept = {t.name for t in stored}
    for position, step in enumerate(steps):
        step.position = position
        step.inputs = [n for n in step.inputs if n in kept]
        step.outputs = [n for n in step.outputs if n in kept]
    return IterationRecord(
        index=index,
        loss=float("nan") if loss is None else float(loss),
        tensors=stored,
        steps=steps,
        learning_rate=lr,
        accuracy=accuracy,
        warnings=warnings,
    )


def build_record(
    cap: CapturedIteration,
    index: int,
    loss: float | None,
    *,
    bounds: Bounds | None = None,
    strict: bool = False,
    explain: bool = True,
    optimizer=None,
) -> IterationRecord:
    """The record a trace stores for one captured iteration, inline, in the worker, or
    later in `cnnviz explain`. `explain=False`: the raw tensors, with the raw truth to
    explain them later (`record.capture`). A bug in the matrix form never costs the
    iteration: it is stored as raw tensors with a warning (`strict` raises instead)."""
    options = dict(optimizer=optimizer, bounds=bounds, strict=strict, loss_value=loss)
    if not explain:
        from .rawtruth import pack

        record = build_iteration(cap, index, explain=False, why=NOT_EXPLAINED, **options)
        record.capture = pack(cap, record.tensors, loss)
        return record
    try:
        return build_iteration(cap, index, **options)
    except TraceError:
        raise
    except Exception as exc:
        if strict:
            raise
        record = build_iteration(cap, index, explain=False, **options)
        record.warnings.insert(0, f"building the matrix form failed ({type(exc).__name__}: {exc})")
        return record


def _shared_inputs(cap: CapturedIteration) -> dict[str, set[str]]:
    """Tensors with a gradient that two or more calls read: name -> the calls.

    A call that returned its input itself (an identity) does not count as a use:
    the tensor flows through it unchanged.
    """
    users: dict[str, set[str]] = {}
    for call in cap.calls:
        for name in call.input_names:
            if name in call.output_names:
                continue
            users.setdefault(name, set()).add(call.name)
    return {name: who for name, who in users.items() if len(who) > 1 and name in cap.grads}


def _param_users(cap: CapturedIteration) -> dict[str, set[str]]:
    users: dict[str, set[str]] = {}
    for call in cap.calls:
        for qualified in call.param_names.values():
            users.setdefault(qualified, set()).add(call.name)
    return users


def _sum_step(
    name, layer, contributions, reference, title, formula, note, unchecked=None
) -> list[StepRecord]:
    """`unchecked`: why the sum has no PyTorch counterpart (it sums the stored samples only)."""
    from . import latex

    total = sum(np.asarray(g, dtype=np.float64) for _, g in contributions)
    ctx = StepContext(
        LayerCall(
            name=name, module=None, inputs=[], output=np.empty(0), input_names=[], output_name=""
        ),
        "backward",
        layer=layer or name,
    )
    ctx.step(
        title,
        formula,
        " + ".join(latex.bmatrix(latex.as_matrix(g)[0]) for _, g in contributions)
        + rf" = {latex.bmatrix(latex.as_matrix(total)[0])}",
        inputs=[_part_name(name, who) for who, _ in contributions],
        outputs=[_grad_name(name)],
        checks=[(total, reference, unchecked or f"autograd dL/d({name})")],
        note=note,
    )
    return ctx.steps


def _fan_out_sum(cap, name: str, users: set[str], contributions) -> list[StepRecord]:
    """A tensor read by several calls: dL/dX is the sum of every call's part."""
    if {who for who, _ in contributions} != users:
        return []  # a user had no explained backward: autograd's total stands alone
    reference = cap.grads.get(name)
    note = (
        f"{name} is read by "
        + ", ".join(who for who, _ in contributions)
        + "; autograd adds the gradient coming back through each of them."
    )
    # Some uses were explained on the stored samples only: sum those samples.
    k = min(np.shape(part)[0] if np.ndim(part) else 0 for _, part in contributions)
    n = np.shape(reference)[0] if reference is not None and np.ndim(reference) else None
    if n is not None and 0 < k < n:
        contributions = [(who, np.asarray(part)[:k]) for who, part in contributions]
        reference = np.asarray(reference)[:k]
        note = _join(note, samples_note(k, n))
    return _sum_step(
        name,
        cap.values[name].layer if name in cap.values else None,
        contributions,
        reference,
        f"Sum the gradient of {name} over its {len(contributions)} uses",
        r"\frac{\partial L}{\partial X} = \sum_{\text{uses } u} \frac{\partial L}{\partial X}\Big|_{u}",
        note,
    )


def _grad_of_iteration(cap: CapturedIteration, qualified: str) -> np.ndarray | None:
    """What this iteration's backward added to .grad: PyTorch's reference for our dL/dW."""
    if qualified in cap.grads_at_start or (
        cap.grad_scale is not None and qualified in cap.grad_increments
    ):
        return cap.grad_increments[qualified]
    return cap.param_grads.get(qualified)


def _param_sum(
    cap, qualified: str, users: set[str], contributions, sliced=frozenset()
) -> list[StepRecord]:
    """A parameter used by several calls gets .grad = the sum of every call's part.
    `sliced`: users explained on their stored samples only (the sum is then partial)."""
    if {who for who, _ in contributions} != users:
        return []  # some call had no explained backward; autograd's sum stands alone
    unchecked = None
    if sliced:
        unchecked = NotCompared(
            f"dL/d({qualified}) over the stored samples of {', '.join(sorted(sliced))} only: "
            "autograd's .grad sums every sample (a full check compares it)"
        )
    return _sum_step(
        qualified,
        cap.param_layers.get(qualified),
        contributions,
        _grad_of_iteration(cap, qualified),
        f"Sum the gradient of {qualified} over its {len(contributions)} calls",
        r"\frac{\partial L}{\partial W} = \sum_{\text{calls } c} \frac{\partial L}{\partial W}\Big|_{c}",
        "The parameter was used more than once in this forward pass ("
        + ", ".join(who for who, _ in contributions)
        + "); autograd adds the gradient of every use into one .grad.",
        unchecked,
    )


def _update_steps(cap, optimizer, tensors, warn, strict, explain=True, raw_reason=None):
    """`optimizer`: the spec captured at the step (`cap.optimizer`); a live optimizer
    given instead (an older caller) is read as its spec."""
    if cap.optimizer is not None:
        optimizer = cap.optimizer
    elif optimizer is not None and not isinstance(optimizer, OptimizerSpec):
        optimizer = optimizer_spec(optimizer)
    if optimizer is None or not cap.stepped:
        return []
    explainer = explainer_for(optimizer)
    kind = class_name(optimizer)
    steps: list[StepRecord] = []
    for name in cap.params_after:
        if name not in cap.param_grads:
            continue  # no gradient: the optimizer skipped it
        layer = cap.param_layers.get(name)
        call = UpdateCall(
            name=name,
            layer=layer,
            optimizer=optimizer,
            group=cap.param_groups.get(name, {}),
            value=cap.params[name],
            grad=cap.param_grads[name],
            value_after=cap.params_after[name],
            state_before=cap.state_before.get(name, {}),
            state_after=cap.state_after.get(name, {}),
            value_name=name,
            grad_name=_grad_name(name),
            value_after_name=names.next_value(name),
        )
        why = None
        if not explain:
            why = raw_reason or "not explained (building the matrix form of this iteration failed)"
        elif cap.steps_taken > 1:
            why = (
                f"optimizer.step() ran {cap.steps_taken} times in this iteration; "
                "the stored update spans all of them"
            )
        elif explainer is None or not hasattr(explainer, "update"):
            why = f"no explainer is registered for {kind}"
        else:
            ctx = StepContext(
                LayerCall(
                    name=name,
                    module=None,
                    inputs=[],
                    output=np.empty(0),
                    input_names=[],
                    output_name="",
                ),
                "update",
                layer=layer,
            )
            try:
                explainer.update(call, ctx)
            except Unsupported as exc:
                why = f"unsupported setting: {exc}"
            except Exception as exc:
                if strict:
                    raise TraceError(
                        f"failed while explaining the update of {name}: {exc}"
                    ) from exc
                why = f"explainer failed: {type(exc).__name__}: {exc}"
            else:
                for record in ctx.tensors:
                    if record.name not in tensors:
                        tensors[record.name] = record
                steps.extend(ctx.steps)
                continue
        if explain or not raw_reason:
            warn(f"{name} ({kind}): {why}; update stored as raw tensors")
        steps.append(
            StepRecord(
                layer=layer or name,
                phase="update",
                title=f"{kind} update of {name} "
                + ("(not explained)" if not explain and raw_reason else "(no matrix form)"),
                formula=r"W' = \operatorname{step}(W, \nabla_W L, \text{state})",
                formula_values=r"\text{see the stored tensors}",
                inputs=[name, _grad_name(name)],
                outputs=[names.next_value(name), names.update(name)]
                + [names.state(name, k) for k in cap.state_after.get(name, {})],
                note=why,
            )
        )
    return steps


def _accuracy(cap: CapturedIteration) -> float | None:
    if not cap.loss_name:
        return None
    for call in cap.calls:
        if call.name == cap.loss_name and len(call.inputs) >= 2:
            logits, target = call.inputs[0], call.inputs[1]
            if logits.ndim == 2 and target.ndim == 1 and target.dtype.kind in "iu":
                return float((logits.argmax(axis=1) == target).mean())
    return None


def _join(note: str, more: str) -> str:
    return f"{note} {more}" if note else more


def _kept_samples(layer_call: LayerCall, call: CapturedCall, bounds: Bounds) -> LayerCall:
    """The call cut to the samples a storage bound keeps, where its samples are independent.

    `max_elements` stores the first elements of each tensor in C order, i.e. its first
    samples: explaining and checking those samples checks every stored number of the
    call's tensors, at k/N of the cost. Parameter gradients sum over all samples, so
    theirs are explained for the kept samples and not compared (`full_check` compares).
    """
    if bounds.max_elements is None or bounds.full_check or call.module is None:
        return layer_call
    out = layer_call.output
    if out is None or np.ndim(out) == 0 or out.shape[0] <= 1:
        return layer_call
    explainer = explainer_for(call.module)
    if explainer is None or call.error or not explainer.per_sample(layer_call):
        return layer_call
    n = out.shape[0]

    def batched(a) -> bool:  # an input broadcast along the batch has fewer dimensions or N=1
        return a is not None and a.ndim >= out.ndim and a.shape[0] == n

    sizes = [a.size // n for a in (out, *layer_call.inputs) if batched(a) and a.size]
    k = max(-(-bounds.max_elements // size) for size in sizes) if sizes else n
    if k >= n:
        return layer_call

    def cut(a):
        return a[:k] if batched(a) else a

    return replace(
        layer_call,
        inputs=[cut(a) for a in layer_call.inputs],
        output=out[:k],
        grad_output=cut(layer_call.grad_output),
        grad_inputs=[cut(g) for g in layer_call.grad_inputs],
        samples=(k, n),
    )


def _apply_bounds(tensors: dict[str, TensorRecord], bounds: Bounds) -> list[TensorRecord]:
    out = []
    for record in tensors.values():
        if not bounds.keep(record):
            continue
        if bounds.max_elements is not None and record.array.size > bounds.max_elements:
            record.summary = codec.summarize(record.array)  # of the full tensor
            record.shape = tuple(record.array.shape)
            record.array = np.ascontiguousarray(record.array).reshape(-1)[: bounds.max_elements]
        out.append(record)
    return out


def layer_infos(cap: CapturedIteration, *, explained: bool = True) -> list[LayerInfo]:
    """The model's layers in call order, for the architecture page. `explained=False`:
    the run was traced with explanation off (no layer is explained, yet)."""
    infos = []
    for position, call in enumerate(cap.calls):
        explainer = explainer_for(call.module) if call.module is not None else None
        try:
            description = explainer.describe(call.module) if explainer else repr(call.module)
        except Exception:
            description = repr(call.module)
        if call.op:
            description = (
                f"{description} (functional call {call.op})"
                if call.module is not None
                else f"functional call {call.op}"
            )
        infos.append(
            LayerInfo(
                position=position,
                name=call.name,
                type=call.kind,
                input_shape=tuple(call.inputs[0].shape)
                if call.inputs and call.inputs[0] is not None
                else None,
                output_shape=tuple(call.output.shape) if call.output is not None else None,
                num_params=int(
                    sum(cap.params[q].size for q in call.param_names.values() if q in cap.params)
                ),
                description=description.splitlines()[0] if description else "",
                formula=explainer.formula if explainer else "",
                explained=explained and explainer is not None and call.error is None,
            )
        )
    return infos
