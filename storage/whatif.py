"""What if: one stored iteration recomputed with an edit, torch-free.

Two edits:

- `with_learning_rate`: the forward pass, the loss and the backward pass of an
  iteration do not depend on its learning rate, so an edited learning rate
  changes only the update: w' = w - eta d, with d the stored gradient (plain
  SGD) or the stored momentum buffer (which does not depend on eta either).
- `with_element`: one element of the input batch or of one parameter set to a new
  value, and the whole iteration recomputed from the stored givens (the input,
  the labels, the parameters before the step, the dropout masks PyTorch drew, the
  BatchNorm running statistics before the call and the optimizer's state):
  forward, loss, backward and update, with `storage.npmath`, the same math the
  tracer's explainers write out.

The element recompute first replays the iteration unedited and compares every
stored tensor with its replay; only when all agree (to float32 tolerance) is the
edit applied, so a what-if never shows numbers from math that does not
reproduce the run. A number is marked changed when the edited recompute differs
from that unedited replay (both float64, same code), and the difference shown
is to the stored run. Arrays in, arrays out: the dashboard and the tests call it.

It covers sequential models of Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten,
Dropout, Linear and CrossEntropyLoss (the seed CNN, LeNet-5, small-cnn) trained
with SGD (momentum, dampening, weight decay, Nesterov, maximize) or Adam/AdamW
(without AMSGrad). Anything else raises `NotAvailable`, which says why.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import names, npmath
from .records import IterationRecord, RunInfo

# |replay - stored| <= ATOL + RTOL * max|stored| (per tensor) counts as reproduced:
# the replay is float64 from float32 givens, the store holds PyTorch's float32.
ATOL = 1e-5
RTOL = 1e-4

SUPPORTED_LAYERS = (
    "Conv2d",
    "BatchNorm2d",
    "ReLU",
    "MaxPool2d",
    "Flatten",
    "Dropout",
    "Linear",
    "CrossEntropyLoss",
)


class NotAvailable(LookupError):
    """This what-if cannot be computed for this run; the message says why."""


@dataclass
class Changed:
    name: str  # "fc.weight.next" or "fc.weight.update"
    stored: np.ndarray
    recomputed: np.ndarray

    @property
    def difference(self) -> np.ndarray:
        return self.recomputed.astype(np.float64) - self.stored.astype(np.float64)

    @property
    def max_abs_diff(self) -> float:
        diff = self.difference
        return float(np.abs(diff).max()) if diff.size else 0.0


def with_learning_rate(
    record: IterationRecord, optimizer: str, settings: Mapping[str, object], lr: float
) -> list[Changed]:
    """The iteration's update recomputed with learning rate `lr`: w' and w' - w per parameter."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise NotAvailable(f"the learning rate must be a positive number, not {lr!r}")
    if optimizer != "SGD":
        raise NotAvailable(
            f"what-if is available for SGD runs, not {optimizer or 'this optimizer'}"
        )
    if settings.get("weight_decay") or settings.get("maximize") or settings.get("nesterov"):
        raise NotAvailable(
            "what-if is not available for SGD with weight decay, Nesterov or maximize"
        )
    arrays = {t.name: t.array for t in record.tensors if not t.truncated}
    momentum = bool(settings.get("momentum"))
    out: list[Changed] = []
    eta = np.float32(lr)
    for name in [t.name for t in record.tensors if t.name.endswith(".next")]:
        param = name.removesuffix(".next")
        direction = f"{param}.state.momentum_buffer" if momentum else f"{param}.grad"
        if param not in arrays or direction not in arrays or name not in arrays:
            raise NotAvailable(f"{param} is not stored whole in this iteration")
        w = arrays[param].astype(np.float32)
        new = w - eta * arrays[direction].astype(np.float32)  # (same shape as w)
        out.append(Changed(name, arrays[name], new))
        if f"{param}.update" in arrays:
            out.append(Changed(f"{param}.update", arrays[f"{param}.update"], new - w))
    if not out:
        raise NotAvailable("this iteration stores no weight update")
    return out


# ---------------------------------------------------------------- element edits


@dataclass
class Recomputed:
    """One tensor of the iteration after the edit, beside the stored one."""

    name: str
    phase: str  # "forward", "backward" or "update"
    stored: np.ndarray  # as stored (float32 mostly)
    baseline: np.ndarray  # the unedited replay (float64)
    value: np.ndarray  # the edited recompute (float64)

    @property
    def changed(self) -> np.ndarray:
        """Where the edit changed the number (bool, the tensor's shape)."""
        return ~_same(self.value, self.baseline)

    @property
    def num_changed(self) -> int:
        return int(self.changed.sum())

    @property
    def difference(self) -> np.ndarray:
        """Recomputed - stored, float64 (NaN against a number is NaN)."""
        return self.value.astype(np.float64) - self.stored.astype(np.float64)

    @property
    def max_abs_diff(self) -> float:
        """The largest |recomputed - stored| where the edit changed something."""
        mask = self.changed
        if not mask.any():
            return 0.0
        diff = np.abs(self.difference[mask])
        return float(np.nanmax(diff)) if not np.isnan(diff).all() else float("nan")


@dataclass
class WhatIf:
    """The iteration recomputed with one element edited."""

    tensor: str  # the edited tensor, e.g. "input" or "conv1.weight"
    index: tuple[int, ...]
    old: float  # the stored value
    new: float
    tensors: list[Recomputed]  # every recomputed tensor, in execution order
    replay_max_diff: float  # the unedited replay against the store: the math reproduces it
    warnings: list[str] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)  # tensor name -> its stored role

    def tensor_named(self, name: str) -> Recomputed:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def changed(self) -> list[Recomputed]:
        return [t for t in self.tensors if t.num_changed]


def editable(record: IterationRecord, run: RunInfo) -> list[str]:
    """Tensors a what-if may edit: the input batch and every parameter, in stored order."""
    out = []
    for t in record.tensors:
        if t.name == names.MODEL_INPUT or t.role == "param":
            out.append(t.name)
    return out


def with_element(
    record: IterationRecord,
    run: RunInfo,
    tensor: str,
    index,
    value: float,
    previous: IterationRecord | Mapping[str, np.ndarray] | None = None,
    replay: Replay | None = None,
) -> WhatIf:
    """The iteration recomputed with `tensor[index] = value` (forward, loss, backward, update).

    `previous`, the iteration before (when stored), gives the optimizer's state before
    this step exactly; without it the state is recovered from the state after the step.
    `replay`, a `Replay` of this iteration kept from an earlier call, saves its unedited
    replay (a page asks for several edits of one iteration)."""
    replay = replay if replay is not None else Replay(record, run, previous)
    if tensor not in replay.editable:
        raise NotAvailable(
            f"{tensor!r} cannot be edited: choose the input or a parameter "
            f"({', '.join(replay.editable)})"
        )
    given = replay.givens[tensor]
    index = _parse_index(index, given.shape)
    try:
        new = float(value)
    except (TypeError, ValueError):
        raise NotAvailable(f"the new value must be a number, not {value!r}") from None
    if not math.isfinite(new):
        raise NotAvailable(f"the new value must be a finite number, not {value!r}")
    baseline, worst, where = replay.baseline()
    if where is not None:
        raise NotAvailable(
            f"the NumPy recompute does not reproduce the stored {where} "
            f"(max |Δ| {worst:.3g}), so no what-if is shown for this iteration"
        )
    edited_given = given.astype(np.float64).copy()
    edited_given[index] = new
    values, warnings = replay.run({tensor: edited_given})
    record = replay.record
    out = []
    for name, (phase, _) in baseline.items():
        stored = replay.stored.get(name)
        if stored is None:
            continue
        out.append(
            Recomputed(
                name,
                phase,
                stored,
                np.asarray(baseline[name][1]).reshape(stored.shape),
                np.asarray(values[name][1]).reshape(stored.shape),
            )
        )
    return WhatIf(
        tensor=tensor,
        index=index,
        old=float(given[index]),
        new=new,
        tensors=out,
        replay_max_diff=worst,
        warnings=warnings,
        roles={t.name: t.role for t in record.tensors},
    )


def _parse_index(index, shape: tuple[int, ...]) -> tuple[int, ...]:
    """ "0, 1, 2, 3" or a sequence -> a tuple inside `shape`, or NotAvailable saying why."""
    if isinstance(index, str):
        parts = [p for p in re.split(r"[\s,\[\]()]+", index) if p]
    else:
        parts = list(index) if index is not None else []
    try:
        out = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise NotAvailable(f"the index must be whole numbers, not {index!r}") from None
    if len(out) != len(shape):
        raise NotAvailable(
            f"the index needs {len(shape)} number(s) for shape {tuple(shape)}, not {len(out)}"
        )
    if any(not 0 <= i < n for i, n in zip(out, shape)):
        raise NotAvailable(f"index {list(out)} is outside shape {tuple(shape)}")
    return out


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind != "f" or b.dtype.kind != "f":
        return a == b
    return (a == b) | (np.isnan(a) & np.isnan(b))


# ---------------------------------------------------------------- the replay


def _number(pattern: str, text: str, default=None):
    match = re.search(pattern, text)
    return match.group(1) if match else default


def _pair(pattern: str, text: str, default: tuple[int, int]) -> tuple[int, int]:
    match = re.search(pattern, text)
    return (int(match.group(1)), int(match.group(2))) if match else default


@dataclass
class _Layer:
    name: str
    type: str
    input: str  # the stored name of its (first) input
    settings: dict


class Replay:
    """A stored iteration as a plan: the layers in call order with their settings,
    the givens, and a function from edited givens to every tensor of the iteration.

    Settings are not stored as numbers: they are read from each layer's stored
    description (the tracer writes it from the module) and from the tensor shapes,
    and `check` then proves them by replaying the iteration against the store."""

    def __init__(
        self,
        record: IterationRecord,
        run: RunInfo,
        previous: IterationRecord | Mapping[str, np.ndarray] | None = None,
    ):
        """`previous`: the iteration before, as a record or as a mapping from tensor name
        to array (read lazily: only the optimizer's state is looked up in it)."""
        self.record = record
        self.run_info = run
        # The optimizer state after the previous iteration: the state before this one.
        self.before: Mapping[str, np.ndarray] = {}
        if isinstance(previous, IterationRecord):
            if previous.index == record.index - 1:
                self.before = {
                    t.name: t.array
                    for t in previous.tensors
                    if t.role == "optimizer_state" and not t.truncated
                }
        elif previous is not None:
            self.before = previous
        self.notes: list[str] = []
        self._baseline = None
        whole = {t.name: t for t in record.tensors}
        self.stored = {n: t.array for n, t in whole.items() if not t.truncated}
        self.partial = {n: t for n, t in whole.items() if t.truncated}
        self.layers = self._plan(record, run)
        self.givens = self._givens()
        self.editable = [
            n for n in editable(record, run) if n in self.givens and n not in self.partial
        ]

    # -- the plan

    def _need(self, name: str) -> np.ndarray:
        if name in self.partial:
            t = self.partial[name]
            raise NotAvailable(
                f"{name} is stored only in part ({t.array.size} of {int(np.prod(t.shape))} "
                "values): trace with --max-elements all to use the what-if"
            )
        if name not in self.stored:
            raise NotAvailable(f"this iteration does not store {name}")
        return self.stored[name]

    def _plan(self, record: IterationRecord, run: RunInfo) -> list[_Layer]:
        if not run.layers:
            raise NotAvailable("the run stores no layer list")
        first_forward: dict[str, list[str]] = {}  # a layer's first forward step reads its input
        reads: dict[str, set[str]] = {}
        for step in sorted(record.steps, key=lambda s: s.position):
            if step.phase == "forward":
                first_forward.setdefault(step.layer, list(step.inputs))
                reads.setdefault(step.layer, set()).update(step.inputs)
        out: list[_Layer] = []
        produced = {names.MODEL_INPUT}
        for layer in sorted(run.layers, key=lambda la: la.position):
            if layer.type not in SUPPORTED_LAYERS:
                raise NotAvailable(
                    f"what-if is not available for {layer.type} layers ({layer.name}): it "
                    f"recomputes {', '.join(SUPPORTED_LAYERS)} only"
                )
            if not layer.explained or layer.name not in first_forward:
                raise NotAvailable(f"layer {layer.name} has no explained forward step")
            inputs = first_forward[layer.name]
            if not inputs or inputs[0] not in produced:
                raise NotAvailable(
                    f"layer {layer.name} does not read the previous layer's output: the "
                    "what-if recomputes sequential models only"
                )
            settings = self._settings(layer.type, layer.description, layer.name)
            if layer.type == "CrossEntropyLoss":
                if names.TARGET not in reads[layer.name]:
                    raise NotAvailable("the loss reads no stored target")
            out.append(_Layer(layer.name, layer.type, inputs[0], settings))
            produced.add(names.output(layer.name))
        if out[-1].type != "CrossEntropyLoss":
            raise NotAvailable("the what-if needs the loss as the model's last layer")
        return out

    def _settings(self, kind: str, text: str, layer: str) -> dict:
        if kind == "Conv2d":
            if re.search(r"padding [a-z]", text) or re.search(r"\) \(", text):
                raise NotAvailable(f"{layer}: only numeric zero padding is recomputed ({text})")
            return {
                "stride": _pair(r"stride (\d+)x(\d+)", text, (1, 1)),
                "padding": _pair(r"padding \((\d+), (\d+)\)", text, (0, 0)),
                "dilation": _pair(r"dilation (\d+)x(\d+)", text, (1, 1)),
                "groups": int(_number(r"groups (\d+)", text, 1)),
            }
        if kind == "MaxPool2d":
            return {
                "kernel": _pair(r"window (\d+)x(\d+)", text, (0, 0)),
                "stride": _pair(r"stride (\d+)x(\d+)", text, (0, 0)),
                "padding": _pair(r"padding \((\d+), (\d+)\)", text, (0, 0)),
                "dilation": _pair(r"dilation \((\d+), (\d+)\)", text, (1, 1)),
                "ceil_mode": "ceil mode" in text,
            }
        if kind == "BatchNorm2d":
            if "cumulative average" in text:
                raise NotAvailable(f"{layer}: BatchNorm with momentum=None is not recomputed")
            return {
                "eps": float(_number(r"eps ([0-9.e+-]+)", text, "1e-05")),
                "momentum": float(_number(r"momentum ([0-9.e+-]+)", text, "0.1")),
                "running": "no running statistics" not in text,
            }
        if kind == "Flatten":
            start, end = _pair(r"dims (-?\d+)\.\.(-?\d+)", text, (1, -1))
            return {"start": start, "end": end}
        if kind == "Dropout":
            return {"p": float(_number(r"p = ([0-9.e+-]+)", text, "0.5"))}
        if kind == "CrossEntropyLoss":
            if "class weights" in text:
                raise NotAvailable(f"{layer}: class weights are not stored, so not recomputed")
            reduction = _number(r"(mean|sum|none) over the batch", text, "mean")
            if reduction == "none":
                raise NotAvailable(f"{layer}: reduction='none' is not recomputed")
            return {
                "reduction": reduction,
                "smoothing": float(_number(r"label smoothing ([0-9.e+-]+)", text, "0")),
            }
        return {}

    def _givens(self) -> dict[str, np.ndarray]:
        givens = {names.MODEL_INPUT: self._need(names.MODEL_INPUT)}
        givens[names.TARGET] = self._need(names.TARGET)
        for layer in self.layers:
            for local in ("weight", "bias"):
                name = names.child(layer.name, local)
                if name in self.stored or name in self.partial:
                    givens[name] = self._need(name)
        return givens

    # -- the run

    def baseline(self):
        """The unedited replay, checked against the store (computed once):
        -> (values, largest |Δ| to the store, the first tensor beyond tolerance or None)."""
        if self._baseline is None:
            values, _ = self.run({})
            self._baseline = (values, *self.check(values))
        return self._baseline

    def run(self, edits: Mapping[str, np.ndarray]):
        """-> ({name: (phase, value)} in execution order, warnings)."""
        g = {n: edits.get(n, v).astype(np.float64) for n, v in self.givens.items()}
        g[names.TARGET] = self.givens[names.TARGET]
        out: dict[str, tuple[str, np.ndarray]] = {}
        warnings: list[str] = list(self.notes)

        def put(phase: str, name: str, value) -> None:
            out[name] = (phase, np.asarray(value))

        values = {names.MODEL_INPUT: g[names.MODEL_INPUT]}
        saved: dict[str, dict] = {}  # per layer, what its backward needs
        for layer in self.layers:
            x = values[layer.input]
            saved[layer.name] = self._forward(layer, x, g, put, warnings)
            if layer.type != "CrossEntropyLoss":
                values[names.output(layer.name)] = out[names.output(layer.name)][1]
        # backward: the loss's gradient, then each layer from the last to the first
        grads: dict[str, np.ndarray] = {}
        param_grads: dict[str, np.ndarray] = {}
        for layer in reversed(self.layers):
            if layer.type == "CrossEntropyLoss":
                dx = saved[layer.name]["dz"]
            else:
                dy = grads[names.output(layer.name)]
                dx = self._backward(layer, dy, saved[layer.name], g, put, param_grads)
            grads[layer.input] = dx
            put("backward", names.grad(layer.input), dx)
        self._update(g, param_grads, put)
        return out, warnings

    def _forward(self, layer: _Layer, x, g, put, warnings) -> dict:
        name, s = layer.name, layer.settings
        out_name = names.output(name)
        inter = lambda suffix: names.intermediate(name, suffix)  # noqa: E731
        if layer.type == "Conv2d":
            w = g[names.child(name, "weight")]
            b = g.get(names.child(name, "bias"))
            ph, pw = s["padding"]
            xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # zeros, as the module pads
            geometry = (tuple(w.shape[2:]), s["stride"], (0, 0), s["dilation"])
            x_col, y_col, y = npmath.conv2d_forward(xp, w, b, geometry, s["groups"])
            put("forward", inter("X_col"), x_col)
            put("forward", inter("W_flat"), w.reshape(w.shape[0], -1))
            put("forward", inter("Y_col"), y_col)
            put("forward", out_name, y)
            return {"xp": xp, "w": w, "geometry": geometry, "x_shape": x.shape}
        if layer.type == "ReLU":
            a, mask = npmath.relu_forward(x)
            put("forward", out_name, a)
            put("forward", inter("mask"), mask)
            return {"z": x}
        if layer.type == "MaxPool2d":
            kernel = s["kernel"]
            stride = s["stride"] if s["stride"] != (0, 0) else kernel
            out_hw = tuple(
                npmath.pool_output_size(
                    x.shape[2 + i],
                    kernel[i],
                    stride[i],
                    s["padding"][i],
                    s["dilation"][i],
                    s["ceil_mode"],
                )
                for i in range(2)
            )
            y, src, _ = npmath.max_pool2d(x, kernel, stride, s["padding"], s["dilation"], out_hw)
            put("forward", out_name, y)
            put("forward", inter("argmax"), src)
            return {"src": src, "x_shape": x.shape}
        if layer.type == "Flatten":
            put("forward", out_name, npmath.flatten(x, s["start"], s["end"]))
            return {"x_shape": x.shape}
        if layer.type == "Linear":
            w = g[names.child(name, "weight")]
            b = g.get(names.child(name, "bias"))
            x2 = x.reshape(-1, x.shape[-1])  # (..., in) -> (N, in)
            put("forward", out_name, npmath.linear_forward(x2, w, b).reshape(*x.shape[:-1], -1))
            return {"x": x2, "w": w, "x_shape": x.shape}
        if layer.type == "Dropout":
            mask_name = inter("mask")
            if mask_name not in self.stored and mask_name not in self.partial:
                put("forward", out_name, x)  # evaluation mode or p = 0: the identity
                return {"mask": None}
            mask = self._need(mask_name).astype(np.float64).reshape(x.shape)
            y = npmath.dropout_forward(x, mask, s["p"])
            put("forward", out_name, y)
            stored_x = self.stored.get(layer.input)
            if stored_x is not None:
                # The stored mask can only tell where the stored input was non-zero (or a
                # gradient flowed); elsewhere it reads 0, which changed no number then.
                unseen = (stored_x == 0) & (mask == 0) & (x != 0)
                grad_name = names.grad(layer.input)
                if grad_name in self.stored:
                    unseen &= self.stored[grad_name] == 0
                if unseen.any():
                    warnings.append(
                        f"{name}: {int(unseen.sum())} input value(s) that were exactly 0 in the "
                        "stored run are now non-zero; PyTorch's mask there was never observed "
                        "and is taken as 'dropped'"
                    )
            return {"mask": mask}
        if layer.type == "BatchNorm2d":
            return self._batchnorm_forward(layer, x, g, put)
        if layer.type == "CrossEntropyLoss":
            labels = self.givens[names.TARGET].astype(np.int64).reshape(-1)
            z = x.reshape(-1, x.shape[-1])  # (N, C)
            coef, onehot, valid, denominator = npmath.class_coefficients(
                labels, z.shape[1], None, s["smoothing"]
            )
            p, _, per_row = npmath.cross_entropy_rows(z, coef)
            scale = (1.0 / denominator) if s["reduction"] == "mean" else 1.0
            loss = per_row.sum() * scale
            put("forward", inter("probs"), p)
            put("forward", inter("predicted"), p.argmax(axis=1))
            put("forward", names.loss_value(name), loss)
            put("forward", inter("onehot"), onehot)
            if s["smoothing"]:
                put("forward", inter("target_weights"), coef)
            dz = npmath.cross_entropy_grad(p, coef, scale, 1.0, valid)
            return {"dz": dz.reshape(x.shape)}
        raise NotAvailable(f"no recompute for {layer.type}")

    def _batchnorm_forward(self, layer: _Layer, x, g, put) -> dict:
        name, s = layer.name, layer.settings
        inter = lambda suffix: names.intermediate(name, suffix)  # noqa: E731
        gamma = g.get(names.child(name, "weight"))
        beta = g.get(names.child(name, "bias"))
        training = any(
            step.layer == name and step.title.startswith("Batch statistics")
            for step in self.record.steps
        )
        if training:
            mu, var, m = npmath.batch_stats(x)
        else:
            mu = self._need(inter("mean")).astype(np.float64)
            var = self._need(inter("var")).astype(np.float64)
            m = x.size // x.shape[1]
        invstd, xhat = npmath.batch_norm_normalise(x, mu, var, s["eps"])
        put("forward", inter("mean"), mu)
        put("forward", inter("var"), var)
        put("forward", inter("xhat"), xhat)
        y = npmath.batch_norm_affine(xhat, gamma, beta) if gamma is not None else xhat
        put("forward", names.output(name), y)
        if training and inter("running_mean.before") in self.stored:
            rm0 = self._need(inter("running_mean.before")).astype(np.float64)
            rv0 = self._need(inter("running_var.before")).astype(np.float64)
            rm, rv, _ = npmath.batch_norm_running(rm0, rv0, mu, var, m, s["momentum"])
            put("forward", inter("running_mean"), rm)
            put("forward", inter("running_var"), rv)
        return {
            "xhat": xhat,
            "invstd": invstd,
            "gamma": gamma if gamma is not None else np.ones_like(mu),
            "m": m,
            "training": training,
        }

    def _backward(self, layer: _Layer, dy, saved: dict, g, put, param_grads) -> np.ndarray:
        name = layer.name
        inter = lambda suffix: names.intermediate(name, suffix)  # noqa: E731

        def param_grad(local: str, value) -> None:
            pname = names.child(name, local)
            if pname in g:
                param_grads[pname] = value
                put("backward", names.grad(pname), value)

        if layer.type == "Conv2d":
            dy_col, dw, dx_col, dxp = npmath.conv2d_backward(
                saved["xp"], saved["w"], dy, saved["geometry"], layer.settings["groups"]
            )
            put("backward", inter("dY_col"), dy_col)
            param_grad("weight", dw)
            param_grad("bias", npmath.conv2d_bias_grad(dy))
            put("backward", inter("dX_col"), dx_col)
            h, w = saved["x_shape"][2:]
            ph, pw = layer.settings["padding"]
            return dxp[:, :, ph : ph + h, pw : pw + w]
        if layer.type == "ReLU":
            return npmath.relu_backward(saved["z"], dy)
        if layer.type == "MaxPool2d":
            dx, count = npmath.max_pool_backward(dy, saved["src"], saved["x_shape"])
            put("backward", inter("route_count"), count)
            return dx
        if layer.type == "Flatten":
            return dy.reshape(saved["x_shape"])
        if layer.type == "Linear":
            dz = dy.reshape(-1, saved["w"].shape[0])
            dw, db, dx = npmath.linear_backward(saved["x"], saved["w"], dz)
            param_grad("weight", dw)
            param_grad("bias", db)
            return dx.reshape(saved["x_shape"])
        if layer.type == "Dropout":
            if saved["mask"] is None:
                return dy
            return npmath.dropout_backward(dy, saved["mask"], layer.settings["p"])
        if layer.type == "BatchNorm2d":
            dgamma, dbeta = npmath.batch_norm_param_grads(dy, saved["xhat"])
            param_grad("weight", dgamma)
            param_grad("bias", dbeta)
            if saved["training"]:
                dx, _, _ = npmath.batch_norm_input_grad(
                    dy, saved["xhat"], saved["invstd"], saved["gamma"], saved["m"]
                )
                return dx
            return npmath.batch_norm_eval_input_grad(dy, saved["invstd"], saved["gamma"])
        raise NotAvailable(f"no recompute for {layer.type}")

    # -- the update

    def _update(self, g, param_grads, put) -> None:
        run = self.run_info
        settings = run.optimizer_settings or {}
        kind = run.optimizer
        if kind not in ("SGD", "Adam", "AdamW"):
            raise NotAvailable(
                f"what-if recomputes SGD, Adam and AdamW updates, not {kind or 'this optimizer'}"
            )
        if settings.get("amsgrad"):
            raise NotAvailable("AMSGrad's running maximum is not stored, so not recomputed")
        for param, grad in param_grads.items():
            if names.next_value(param) not in self.stored:
                continue  # the optimizer did not step this parameter (or it is not stored)
            w = g[param]
            if settings.get("maximize"):
                grad = -grad
                put("update", names.intermediate(param, "ascent_grad"), grad)
            if kind == "SGD":
                new, state = self._sgd(param, w, grad, settings)
            else:
                new, state = self._adam(param, w, grad, settings, kind)
            for state_name, value in state:
                put("update", state_name, value)
            put("update", names.next_value(param), new)
            put("update", names.update(param), new - w)

    def _sgd(self, param, w, grad, s):
        lr, mu = float(s["lr"]), float(s.get("momentum") or 0.0)
        wd, damp = float(s.get("weight_decay") or 0.0), float(s.get("dampening") or 0.0)
        direction = npmath.weight_decay_grad(grad, w, wd) if wd else grad
        state = [(names.intermediate(param, "decayed_grad"), direction)] if wd else []
        if mu:
            stored_buf = self._state_after(param, "momentum_buffer")
            stored_grad = self._stored_direction(param, wd)
            if self._first_momentum_step(param):
                prev = None
            else:
                prev = self._state_before(
                    param,
                    "momentum_buffer",
                    lambda: (stored_buf - (1 - damp) * stored_grad) / mu,
                )
            buf = npmath.momentum_buffer(prev, direction, mu, damp)
            state += [
                (names.intermediate(param, "momentum_buffer"), buf),
                (names.state(param, "momentum_buffer"), buf),
            ]
            direction = direction + mu * buf if s.get("nesterov") else buf
        return npmath.sgd_update(w, direction, lr), state

    def _adam(self, param, w, grad, s, kind):
        lr, eps = float(s["lr"]), float(s["eps"])
        b1, b2 = (float(b) for b in s["betas"])
        wd = float(s.get("weight_decay") or 0.0)
        decoupled = bool(s.get("decoupled_weight_decay", kind == "AdamW"))
        t = self._adam_step(param)
        stored_grad = self._stored_direction(param, 0.0)
        if wd and not decoupled:
            stored_grad = npmath.weight_decay_grad(stored_grad, self.givens[param], wd)
        # The moments before this step are not stored; they follow from those after.
        if t == 1:  # the state starts at zero
            m0 = v0 = np.zeros_like(w)
        else:
            m_after = self._state_after(param, "exp_avg")
            v_after = self._state_after(param, "exp_avg_sq")
            m0 = self._state_before(
                param, "exp_avg", lambda: (m_after - (1 - b1) * stored_grad) / b1
            )
            v0 = self._state_before(
                param,
                "exp_avg_sq",
                lambda: np.maximum((v_after - (1 - b2) * stored_grad**2) / b2, 0.0),
            )
        state = []
        if wd and decoupled:
            w = w * (1 - lr * wd)
            state.append((names.intermediate(param, "decayed"), w))
        elif wd:
            grad = npmath.weight_decay_grad(grad, w, wd)
            state.append((names.intermediate(param, "decayed_grad"), grad))
        m, v = npmath.adam_moments(m0, v0, grad, b1, b2)
        m_hat, v_hat, new = npmath.adam_update(w, m, v, lr, b1, b2, eps, t)
        state += [
            (names.intermediate(param, "exp_avg"), m),
            (names.intermediate(param, "exp_avg_sq"), v),
            (names.intermediate(param, "m_hat"), m_hat),
            (names.intermediate(param, "v_hat"), v_hat),
            (names.state(param, "exp_avg"), m),
            (names.state(param, "exp_avg_sq"), v),
        ]
        return new, state

    def _state_after(self, param: str, key: str) -> np.ndarray:
        for name in (names.state(param, key), names.intermediate(param, key)):
            if name in self.stored:
                return self.stored[name].astype(np.float64)
        return self._need(names.state(param, key)).astype(np.float64)

    def _state_before(self, param: str, key: str, recover) -> np.ndarray:
        """The optimizer state before this step: stored by the previous iteration, or else
        recovered from the state after it (exact up to float32 rounding of the stored
        tensors, which matters where the state is tiny: Adam's step divides by sqrt(v))."""
        name = names.state(param, key)
        if name in self.before:
            value = self.before[name]
            if isinstance(value, np.ndarray) and value.shape == self.givens[param].shape:
                return value.astype(np.float64)
        note = (
            f"iteration {self.record.index - 1} is not stored, so the optimizer state before "
            "this step is recovered from the state after it (to float32 rounding)"
        )
        if note not in self.notes:
            self.notes.append(note)
        return recover()

    def _stored_direction(self, param: str, wd: float) -> np.ndarray:
        grad = self._need(names.grad(param)).astype(np.float64)
        if self.run_info.optimizer_settings.get("maximize"):
            grad = -grad
        return (
            npmath.weight_decay_grad(grad, self._need(param).astype(np.float64), wd) if wd else grad
        )

    def _update_step(self, param: str, contains: str):
        for step in self.record.steps:
            if step.phase == "update" and contains in step.title and param in step.title:
                return step
        return None

    def _first_momentum_step(self, param: str) -> bool:
        step = self._update_step(param, "Momentum buffer")
        if step is None:
            raise NotAvailable(f"the momentum step of {param} is not stored")
        return "first step" in step.formula

    def _adam_step(self, param: str) -> int:
        step = self._update_step(param, "update of")
        t = _number(r"t = (\d+)", step.formula_values) if step is not None else None
        if t is None:
            raise NotAvailable(f"the step count of {param}'s Adam update is not stored")
        return int(t)

    # -- the proof

    def check(self, values) -> tuple[float, str | None]:
        """Every stored tensor the replay computes against its replay: -> (largest
        |Δ| relative to tolerance's scale, the first tensor beyond tolerance or None)."""
        worst = 0.0
        for name, (_, value) in values.items():
            stored = self.stored.get(name)
            if stored is None:
                continue
            ours = np.asarray(value, dtype=np.float64)
            theirs = stored.astype(np.float64)
            if ours.size != theirs.size:
                return float("inf"), name
            ours = ours.reshape(theirs.shape)
            both_nan = np.isnan(ours) & np.isnan(theirs)
            diff = np.where(both_nan, 0.0, np.abs(ours - theirs))
            if not diff.size:
                continue
            biggest = float(np.nanmax(diff)) if not np.isnan(diff).all() else float("inf")
            if np.isnan(diff).any():
                biggest = float("inf")
            scale = float(np.max(np.abs(theirs[np.isfinite(theirs)]), initial=0.0))
            if biggest > ATOL + RTOL * scale:
                return biggest, name
            worst = max(worst, biggest)
        return worst, None
