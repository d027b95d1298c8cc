"""Turn one captured iteration into stored records: tensors, then forward,
backward and update steps from the explainers, each verified against PyTorch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from storage import codec
from storage.records import (
    ROLE_ACTIVATION_GRAD,
    ROLE_INPUT_GRAD,
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
from .explainers import LayerCall, StepContext, Unsupported, UpdateCall, explainer_for

log = logging.getLogger("cnnviz")


class TraceError(RuntimeError):
    """An explainer failed in strict mode; the message names the layer."""


@dataclass
class Bounds:
    """What to keep of large tensors. Summary columns always describe the full tensor."""

    max_elements: int | None = None  # store at most this many elements per tensor (C order)
    layers: frozenset[str] | None = None  # store tensors of these layers only (None: all)

    def keep(self, record: TensorRecord) -> bool:
        return self.layers is None or record.layer is None or record.layer in self.layers


def _grad_name(name: str) -> str:
    return f"{name}.grad"


def _layer_call(call: CapturedCall, cap: CapturedIteration) -> LayerCall:
    grad_inputs = [cap.grads.get(n) for n in call.input_names]
    return LayerCall(
        name=call.name,
        module=call.module,
        inputs=call.inputs,
        output=call.output,
        input_names=call.input_names,
        output_name=call.output_name,
        params={local: cap.params[q] for local, q in call.param_names.items()},
        param_names=dict(call.param_names),
        grad_output=cap.grads.get(call.output_name) if call.output_name else None,
        grad_inputs=grad_inputs,
        param_grads={local: cap.param_grads.get(q) for local, q in call.param_names.items()},
        grad_output_name=_grad_name(call.output_name) if call.output_name else None,
        grad_input_names=[
            _grad_name(n) if g is not None else None for n, g in zip(call.input_names, grad_inputs, strict=False)
        ],
        param_grad_names={
            local: _grad_name(q) for local, q in call.param_names.items() if q in cap.param_grads
        },
        buffers=call.buffers,
        buffers_after=call.buffers_after,
        shared_params=any(cap.param_calls[q] > 1 for q in call.param_names.values()),
        training=call.training,
    )


def _raw_step(call: CapturedCall, phase: str, why: str, cap: CapturedIteration) -> StepRecord:
    """A layer with no matrix form: its tensors are stored and shown as they are."""
    kind = type(call.module).__name__
    if phase == "forward":
        inputs, outputs = call.input_names, [call.output_name]
        formula = rf"Y = \operatorname{{{kind}}}(X)"
        title = f"{kind} (no matrix form; tensors as captured)"
    else:
        inputs = [_grad_name(call.output_name)] if call.output_name else []
        outputs = [_grad_name(n) for n in call.input_names if n in cap.grads]
        formula = rf"\frac{{\partial L}}{{\partial X}} = J_{{\operatorname{{{kind}}}}}^{{\top}} \frac{{\partial L}}{{\partial Y}}"
        title = f"{kind} backward (no matrix form; autograd's gradient as captured)"
    return StepRecord(
        layer=call.name,
        phase=phase,
        title=title,
        formula=formula,
        formula_values=r"\text{see the stored tensors}",
        inputs=[n for n in inputs if n],
        outputs=[n for n in outputs if n],
        note=f"cnnviz has no matrix decomposition for {kind}: {why}",
    )


def build_iteration(
    cap: CapturedIteration,
    index: int,
    *,
    optimizer=None,
    bounds: Bounds | None = None,
    strict: bool = False,
    loss_value: float | None = None,
) -> IterationRecord:
    bounds = bounds or Bounds()
    tensors: dict[str, TensorRecord] = {}
    warnings: list[str] = []

    def add(name: str, array: np.ndarray, role: str, layer: str | None) -> None:
        if name not in tensors:
            tensors[name] = TensorRecord(name=name, role=role, array=np.asarray(array), layer=layer)

    for value in cap.values.values():
        add(value.name, value.array, value.role, value.layer)
    for name, grad in cap.grads.items():
        if cap.loss_name and name == f"{cap.loss_name}.value":
            continue  # dL/dL = 1
        role = ROLE_INPUT_GRAD if name == "input" else ROLE_ACTIVATION_GRAD
        add(_grad_name(name), grad, role, cap.values[name].layer if name in cap.values else None)
    for name, value in cap.params.items():
        layer = cap.param_layers.get(name)
        add(name, value, ROLE_PARAM, layer)
        if name in cap.param_grads:
            add(_grad_name(name), cap.param_grads[name], ROLE_PARAM_GRAD, layer)
        if name in cap.params_after:
            add(f"{name}.next", cap.params_after[name], ROLE_PARAM_NEXT, layer)
            add(f"{name}.update", cap.params_after[name] - value, ROLE_UPDATE, layer)
        for key, state in cap.state_after.get(name, {}).items():
            if state.ndim > 0:
                add(f"{name}.state.{key}", state, ROLE_OPTIMIZER_STATE, layer)

    steps: list[StepRecord] = []

    def run(call: CapturedCall, phase: str, layer_call: LayerCall, ctx_steps: list) -> None:
        explainer = explainer_for(call.module)
        why = None
        if call.error:
            why = call.error
        elif explainer is None:
            why = "no explainer is registered for this type"
        if why is None:
            ctx = StepContext(layer_call, phase)
            try:
                getattr(explainer, phase)(layer_call, ctx)
            except Unsupported as exc:
                why = f"unsupported setting: {exc}"
            except Exception as exc:
                if strict:
                    raise TraceError(
                        f"failed while explaining {phase} of layer {call.name} "
                        f"({type(call.module).__name__}): {exc}"
                    ) from exc
                why = f"explainer failed: {type(exc).__name__}: {exc}"
            else:
                for record in ctx.tensors:
                    add(record.name, record.array, record.role, record.layer)
                ctx_steps.append((call, ctx))
                for step in ctx.steps:
                    if step.verified is False:
                        warnings.append(
                            f"{call.name}: '{step.title}' differs from PyTorch by {step.max_abs_diff:.3g}"
                        )
                steps.extend(ctx.steps)
                return
        message = f"{call.name} ({type(call.module).__name__}): {why}; traced as raw tensors"
        if phase == "forward" or not any(message in w for w in warnings):
            if message not in warnings:
                warnings.append(message)
                log.warning("cnnviz: %s", message)
        steps.append(_raw_step(call, phase, why, cap))

    layer_calls = [(call, _layer_call(call, cap)) for call in cap.calls if call.output is not None or call.error]
    done: list = []
    for call, layer_call in layer_calls:
        run(call, "forward", layer_call, done)
    explained_backward: list = []
    for call, layer_call in reversed(layer_calls):
        if layer_call.grad_output is None:
            continue  # no gradient reached this call (no_grad, or not part of the loss)
        run(call, "backward", layer_call, explained_backward)

    steps.extend(_shared_param_sums(cap, explained_backward))
    steps.extend(_update_steps(cap, optimizer, tensors, warnings, strict))

    loss = loss_value
    if loss is None and cap.loss_name and f"{cap.loss_name}.value" in cap.values:
        loss = float(np.asarray(cap.values[f"{cap.loss_name}.value"].array).reshape(-1)[0])
    accuracy = _accuracy(cap)
    lr = None
    if cap.param_groups:
        lr = float(next(iter(cap.param_groups.values())).get("lr", np.nan))

    stored = _apply_bounds(tensors, bounds)
    names = {t.name for t in stored}
    for position, step in enumerate(steps):
        step.position = position
        step.inputs = [n for n in step.inputs if n in names]
        step.outputs = [n for n in step.outputs if n in names]
    return IterationRecord(
        index=index,
        loss=float("nan") if loss is None else float(loss),
        tensors=stored,
        steps=steps,
        learning_rate=lr,
        accuracy=accuracy,
        warnings=warnings,
    )


def _shared_param_sums(cap: CapturedIteration, explained: list) -> list[StepRecord]:
    """A parameter used by several calls gets .grad = the sum of every call's part."""
    from . import latex

    parts: dict[str, list[tuple[str, np.ndarray]]] = {}
    for call, ctx in explained:
        for local, grad in ctx.param_grads.items():
            if ctx.call.shared_params:
                parts.setdefault(call.param_names[local], []).append((call.name, grad))
    steps = []
    for qualified, contributions in parts.items():
        if len(contributions) != cap.param_calls[qualified]:
            continue  # some call had no explained backward; autograd's sum stands alone
        total = sum(g for _, g in contributions)
        reference = cap.param_grads.get(qualified)
        ctx = StepContext(
            LayerCall(name=qualified, module=None, inputs=[], output=np.empty(0), input_names=[], output_name=""),
            "backward",
            layer=cap.param_layers.get(qualified),
        )
        ctx.step(
            f"Sum the gradient of {qualified} over its {len(contributions)} calls",
            r"\frac{\partial L}{\partial W} = \sum_{\text{calls } c} \frac{\partial L}{\partial W}\Big|_{c}",
            " + ".join(latex.bmatrix(latex.as_matrix(g)[0]) for _, g in contributions)
            + rf" = {latex.bmatrix(latex.as_matrix(total)[0])}",
            inputs=[],
            outputs=[_grad_name(qualified)],
            checks=[(total, reference, f"autograd {qualified}.grad")],
            note="The module ran more than once in this forward pass ("
            + ", ".join(n for n, _ in contributions)
            + "); autograd adds the gradient of every use into one .grad.",
        )
        steps.extend(ctx.steps)
    return steps


def _update_steps(cap, optimizer, tensors, warnings, strict) -> list[StepRecord]:
    if optimizer is None or not cap.stepped:
        return []
    explainer = explainer_for(optimizer)
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
            value_after_name=f"{name}.next",
        )
        why = None
        if explainer is None or not hasattr(explainer, "update"):
            why = f"no explainer is registered for {type(optimizer).__name__}"
        else:
            ctx = StepContext(
                LayerCall(name=name, module=None, inputs=[], output=np.empty(0), input_names=[], output_name=""),
                "update",
                layer=layer,
            )
            try:
                explainer.update(call, ctx)
            except Unsupported as exc:
                why = f"unsupported setting: {exc}"
            except Exception as exc:
                if strict:
                    raise TraceError(f"failed while explaining the update of {name}: {exc}") from exc
                why = f"explainer failed: {type(exc).__name__}: {exc}"
            else:
                for record in ctx.tensors:
                    if record.name not in tensors:
                        tensors[record.name] = record
                steps.extend(ctx.steps)
                continue
        message = f"{name} ({type(optimizer).__name__}): {why}; update stored as raw tensors"
        if message not in warnings:
            warnings.append(message)
        steps.append(
            StepRecord(
                layer=layer or name,
                phase="update",
                title=f"{type(optimizer).__name__} update of {name} (no matrix form)",
                formula=r"W' = \operatorname{step}(W, \nabla_W L, \text{state})",
                formula_values=r"\text{see the stored tensors}",
                inputs=[name, _grad_name(name)],
                outputs=[f"{name}.next", f"{name}.update"],
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


def layer_infos(cap: CapturedIteration) -> list[LayerInfo]:
    """The model's layers in call order, for the architecture page."""
    infos = []
    for position, call in enumerate(cap.calls):
        explainer = explainer_for(call.module)
        try:
            description = explainer.describe(call.module) if explainer else repr(call.module)
        except Exception:
            description = repr(call.module)
        infos.append(
            LayerInfo(
                position=position,
                name=call.name,
                type=type(call.module).__name__,
                input_shape=tuple(call.inputs[0].shape) if call.inputs else None,
                output_shape=tuple(call.output.shape) if call.output is not None else None,
                num_params=int(sum(cap.params[q].size for q in call.param_names.values())),
                description=description.splitlines()[0] if description else "",
                formula=explainer.formula if explainer else "",
                explained=explainer is not None and call.error is None,
            )
        )
    return infos
