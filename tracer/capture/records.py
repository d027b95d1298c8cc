"""The record types one traced iteration is captured into, and `to_numpy`, the one
way a tensor becomes an array.

A captured iteration is plain data: NumPy arrays, names, numbers, and plain specs
of the modules and the optimizer (`tracer.capture.spec`), with no torch object in
it. So the background worker, a worker process, `cnnviz explain` (which reads it
back from a store, `tracer.rawtruth`) and tests all take the same record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .spec import ModuleSpec, OptimizerSpec

# dtypes NumPy holds as they are (float16, bfloat16... are widened to float32).
NUMPY_DTYPES = frozenset(
    {
        torch.float32,
        torch.float64,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    }
)


def cpu_view(tensor: torch.Tensor) -> np.ndarray | None:
    """A NumPy view of a CPU tensor's memory (no copy), or None for a tensor on another
    device, of another layout, or of a dtype NumPy lacks.

    Made without a torch operator: each operator call (`detach`, `to`) lets go of the
    GIL, and while the tracer's worker thread runs Python the training thread can wait
    up to a switch interval (5 ms) to get it back. Reading the tensor's attributes and
    `numpy(force=True)` (a detached view, made in C++) keep it."""
    if (
        tensor.device.type != "cpu"
        or tensor.layout != torch.strided
        or tensor.dtype not in NUMPY_DTYPES
        or tensor.is_quantized
    ):
        return None
    try:
        return tensor.numpy(force=True)  # (a conjugate or negative view is resolved: a copy)
    except Exception:  # a tensor without storage (fake, functional)
        return None


def to_numpy(tensor: torch.Tensor) -> np.ndarray | None:
    """A detached CPU copy (never a view of live memory), or None for a tensor a
    store cannot hold (complex, meta, fake)."""
    view = cpu_view(tensor)
    if view is not None:
        return view.copy()
    try:
        t = tensor.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.is_quantized:
            t = t.dequantize()
        if t.is_complex() or t.device.type == "meta":
            return None
        if t.dtype.is_floating_point and t.dtype not in (torch.float32, torch.float64):
            t = t.float()  # float16, bfloat16, float8: NumPy has no (or no exact) dtype for them
        return t.to("cpu", copy=True).numpy()
    except Exception:
        return None


@dataclass
class CapturedCall:
    """One call of a leaf module, of the criterion, or of a functional op in a forward."""

    name: str  # "conv1", "conv1#2" for a second call, "block.add" for a functional call
    # The spec of the module, or of the module equivalent to a functional call (its
    # settings and buffers, as plain data); None: no equivalent.
    module: ModuleSpec | None
    kind: str  # what is shown as the layer's type: "Conv2d", "ReLU", or the op, "torch.cat"
    input_names: list[str]
    inputs: list[np.ndarray | None]
    output_name: str | None = None  # the single tensor output an explainer works on
    output: np.ndarray | None = None
    output_names: list[str] = field(default_factory=list)  # every tensor output (tuples, dicts)
    param_names: dict[str, str] = field(default_factory=dict)  # local -> qualified
    buffers: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # e.g. BatchNorm running stats, before
    buffers_after: dict[str, np.ndarray] = field(default_factory=dict)  # ... and after the call
    training: bool = True
    error: str | None = None  # why it cannot be explained (tuple output, lost input, ...)
    op: str | None = None  # the functional call, e.g. "torch.relu"; None for module calls


@dataclass
class CapturedValue:
    name: str
    array: np.ndarray
    role: str
    layer: str | None


@dataclass
class CapturedIteration:
    calls: list[CapturedCall]
    values: dict[str, CapturedValue]  # forward tensors by name
    grads: dict[str, np.ndarray]  # gradient of each named tensor, by the tensor's name
    params: dict[str, np.ndarray]  # parameter values at forward time
    param_grads: dict[str, np.ndarray]  # .grad when optimizer.step() ran (or at the end)
    params_after: dict[str, np.ndarray]
    state_before: dict[str, dict[str, np.ndarray]]
    state_after: dict[str, dict[str, np.ndarray]]
    param_groups: dict[str, dict[str, Any]]
    param_layers: dict[str, str]
    param_calls: Counter  # how many calls used each parameter
    loss_name: str | None
    stepped: bool
    steps_taken: int = 0  # optimizer.step() calls seen in the iteration
    # What this iteration's backward passes added to each .grad (a hook on the
    # parameter sees the gradient before it is accumulated), and, where .grad
    # held more than that at the step (no zero_grad, gradient accumulation),
    # the part that was there before.
    grad_increments: dict[str, np.ndarray] = field(default_factory=dict)
    grads_at_start: dict[str, np.ndarray] = field(default_factory=dict)
    # .grad = grad_scale x this iteration's gradient at the step (gradient clipping)
    grad_scale: float | None = None
    problems: list[str] = field(default_factory=list)  # what the hooks could not capture
    optimizer: OptimizerSpec | None = None  # at the first optimizer.step() of the iteration
    nbytes: int = 0  # the host copies taken for it, in bytes (what the queue's bound counts)
    # Whether grad_scale, grads_at_start and their problem are worked out (`settle`).
    settled: bool = True
    # The model input whose gradient the capture left to the worker (`inputgrad`):
    # `settle` computes it into `grads`.
    input_grad_from: str | None = None
    # Gradients in `grads` that PyTorch computed after the step, not autograd during it:
    # name -> how (said on the steps checked against them).
    computed_grads: dict[str, str] = field(default_factory=dict)

    def settle(self) -> CapturedIteration:
        """Work out what the capture left to the worker: what the parameter gradients
        say (clipping, accumulation; `Capture.finish(settle=False)`) and the input's
        gradient (`inputgrad.fill_input_grad`)."""
        if not self.settled:
            from .optimizer import settle_grads

            settle_grads(self)
        if self.input_grad_from is not None:
            from .inputgrad import fill_input_grad

            fill_input_grad(self)
        return self


def iter_tensors(obj, path: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """(path, tensor) for every tensor in nested tuples, lists and dicts, in order.

    Paths join keys and positions with dots: (out, (h, c)) gives "0", "1.0", "1.1".
    """
    if torch.is_tensor(obj):
        yield path, obj
    elif depth < 6 and isinstance(obj, (tuple, list)):
        for i, item in enumerate(obj):
            yield from iter_tensors(item, f"{path}.{i}" if path else str(i), depth + 1)
    elif depth < 6 and isinstance(obj, dict):
        for key, item in obj.items():
            yield from iter_tensors(item, f"{path}.{key}" if path else str(key), depth + 1)
