"""The raw truth of an iteration traced with explanation off, and back.

`pack` turns a `CapturedIteration` into a `CaptureRecord`: a JSON manifest (the
calls in order with their module specs, the optimizer's spec and parameter groups,
every name, role and flag the explainers read) and the captured arrays. An array
that the iteration's stored tensors already hold whole, byte for byte, is named
by its tensor (`["t", name]`); any other (a tensor a storage bound truncated,
optimizer state before the step, module buffers) is stored apart under a short key
(`["a", key]`). `unpack` rebuilds the same `CapturedIteration` from the manifest,
those arrays and the stored tensors, so that `cnnviz explain` runs the explainers
on exactly what the training thread captured, with no model code: an array used in
several places (a call's input and the value it names) comes back as one array.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from storage.records import CaptureRecord, TensorRecord

from .capture.records import CapturedCall, CapturedIteration, CapturedValue
from .capture.spec import ModuleSpec, OptimizerSpec

FORMAT = 1  # the manifest's own version; `unpack` refuses others


class RawTruthError(ValueError):
    """A manifest this cnnviz cannot read back."""


def _number(value: float | None) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    return value


def _from_number(value: Any) -> float | None:
    if isinstance(value, dict):
        return float(value["float"])
    return value


class _Packer:
    def __init__(self, stored: list[TensorRecord]):
        # The arrays stored whole under a tensor name, by identity.
        self.whole = {
            id(t.array): t.name
            for t in stored
            if not t.truncated and np.asarray(t.array).dtype.kind in "biuf"
        }
        self.refs: dict[int, list] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.keep: list[np.ndarray] = []  # ids stay unique while packing

    def ref(self, array: np.ndarray | None) -> list | None:
        if array is None:
            return None
        key = id(array)
        if key not in self.refs:
            self.keep.append(array)
            if key in self.whole:
                self.refs[key] = ["t", self.whole[key]]
            else:
                name = f"a{len(self.arrays)}"
                self.arrays[name] = np.asarray(array)
                self.refs[key] = ["a", name]
        return self.refs[key]

    def table(self, arrays: dict[str, np.ndarray]) -> dict[str, list | None]:
        return {k: self.ref(v) for k, v in arrays.items()}


def pack(
    cap: CapturedIteration, stored: list[TensorRecord], loss_value: float | None
) -> CaptureRecord:
    """The raw truth of `cap`; `stored`: the tensors its iteration stores (after bounds)."""
    p = _Packer(stored)
    calls = []
    for call in cap.calls:
        module = None
        if call.module is not None:
            module = call.module.to_json()
            module["arrays"] = {k: p.ref(call.module.arrays[k]) for k in module["arrays"]}
        calls.append(
            dict(
                name=call.name,
                kind=call.kind,
                op=call.op,
                module=module,
                input_names=list(call.input_names),
                inputs=[p.ref(a) for a in call.inputs],
                output_name=call.output_name,
                output=p.ref(call.output),
                output_names=list(call.output_names),
                param_names=dict(call.param_names),
                buffers=p.table(call.buffers),
                buffers_after=p.table(call.buffers_after),
                training=bool(call.training),
                error=call.error,
            )
        )
    manifest = dict(
        format=FORMAT,
        loss_value=_number(loss_value),
        calls=calls,
        values=[[v.name, v.role, v.layer, p.ref(v.array)] for v in cap.values.values()],
        grads=p.table(cap.grads),
        params=p.table(cap.params),
        param_grads=p.table(cap.param_grads),
        params_after=p.table(cap.params_after),
        grad_increments=p.table(cap.grad_increments),
        grads_at_start=p.table(cap.grads_at_start),
        state_before={name: p.table(state) for name, state in cap.state_before.items()},
        state_after={name: p.table(state) for name, state in cap.state_after.items()},
        param_groups={
            name: {k: _json_value(v) for k, v in group.items()}
            for name, group in cap.param_groups.items()
        },
        param_layers=dict(cap.param_layers),
        param_calls=dict(cap.param_calls),
        loss_name=cap.loss_name,
        stepped=bool(cap.stepped),
        steps_taken=int(cap.steps_taken),
        grad_scale=_number(cap.grad_scale),
        problems=list(cap.problems),
        optimizer=cap.optimizer.to_json() if cap.optimizer is not None else None,
        computed_grads=dict(cap.computed_grads),
    )
    return CaptureRecord(manifest=manifest, arrays=p.arrays)


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, tuple):
        return {"tuple": [_json_value(v) for v in value]}
    return value


def _from_json_value(value: Any) -> Any:
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_from_json_value(v) for v in value["tuple"])
    if isinstance(value, dict):
        return _from_number(value)
    return value


def unpack(
    manifest: dict, arrays: dict[str, np.ndarray], tensors: dict[str, np.ndarray]
) -> tuple[CapturedIteration, float | None]:
    """(the captured iteration, the loss the training loop gave) from a stored manifest,
    its arrays and the iteration's tensors stored whole."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RawTruthError(
            f"capture manifest format {manifest.get('format')!r} (this cnnviz reads {FORMAT})"
            if isinstance(manifest, dict)
            else "the capture manifest is not a JSON object"
        )
    cache: dict[tuple, np.ndarray] = {}

    def get(ref) -> np.ndarray | None:
        if ref is None:
            return None
        where, key = ref
        if (where, key) not in cache:
            source = tensors if where == "t" else arrays if where == "a" else None
            if source is None or key not in source:
                raise RawTruthError(f"the capture manifest names a missing array {key!r}")
            cache[(where, key)] = source[key]
        return cache[(where, key)]

    def table(refs: dict) -> dict[str, np.ndarray]:
        return {k: get(v) for k, v in refs.items()}

    calls = []
    for c in manifest["calls"]:
        module = None
        if c["module"] is not None:
            spec = dict(c["module"])
            refs = spec["arrays"]
            spec["arrays"] = list(refs)
            module = ModuleSpec.from_json(spec, {k: get(v) for k, v in refs.items()})
        calls.append(
            CapturedCall(
                name=c["name"],
                module=module,
                kind=c["kind"],
                input_names=list(c["input_names"]),
                inputs=[get(r) for r in c["inputs"]],
                output_name=c["output_name"],
                output=get(c["output"]),
                output_names=list(c["output_names"]),
                param_names=dict(c["param_names"]),
                buffers=table(c["buffers"]),
                buffers_after=table(c["buffers_after"]),
                training=bool(c["training"]),
                error=c["error"],
                op=c["op"],
            )
        )
    m = manifest
    cap = CapturedIteration(
        calls=calls,
        values={
            name: CapturedValue(name, get(ref), role, layer)
            for name, role, layer, ref in m["values"]
        },
        grads=table(m["grads"]),
        params=table(m["params"]),
        param_grads=table(m["param_grads"]),
        params_after=table(m["params_after"]),
        state_before={name: table(state) for name, state in m["state_before"].items()},
        state_after={name: table(state) for name, state in m["state_after"].items()},
        param_groups={
            name: {k: _from_json_value(v) for k, v in group.items()}
            for name, group in m["param_groups"].items()
        },
        param_layers=dict(m["param_layers"]),
        param_calls=Counter(m["param_calls"]),
        loss_name=m["loss_name"],
        stepped=bool(m["stepped"]),
        steps_taken=int(m["steps_taken"]),
        grad_increments=table(m["grad_increments"]),
        grads_at_start=table(m["grads_at_start"]),
        grad_scale=_from_number(m["grad_scale"]),
        problems=list(m["problems"]),
        optimizer=OptimizerSpec.from_json(m["optimizer"]) if m["optimizer"] else None,
        computed_grads=dict(m.get("computed_grads", {})),  # stores from before it
    )
    return cap, _from_number(m["loss_value"])
