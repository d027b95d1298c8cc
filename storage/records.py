"""Plain domain records that cross the tracer -> storage -> dashapp boundary.

Only NumPy and the standard library live here: the storage layer and the
dashboard must work without torch. ORM rows never leave `storage`; callers get
these dataclasses instead.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The roles live with the tensor-name grammar; re-exported here for existing imports.
from .names import (  # noqa: E402, F401
    ROLE_ACTIVATION,
    ROLE_ACTIVATION_GRAD,
    ROLE_INPUT,
    ROLE_INPUT_GRAD,
    ROLE_INTERMEDIATE,
    ROLE_OPTIMIZER_STATE,
    ROLE_OUTPUT,
    ROLE_PARAM,
    ROLE_PARAM_GRAD,
    ROLE_PARAM_NEXT,
    ROLE_TARGET,
    ROLE_UPDATE,
    ROLES,
)

PHASES = ("forward", "backward", "update")

RUN_RUNNING = "running"
RUN_COMPLETED = "completed"
RUN_FAILED = "failed"
RUN_INTERRUPTED = "interrupted"
# Never stored: how a reader shows a `running` run whose writer is gone (same host,
# dead pid, PostgreSQL lease released) or whose heartbeat is older than
# `storage.store.STALE_AFTER`.
RUN_STALE = "stale"


@dataclass
class TensorRecord:
    """One named tensor of one iteration.

    `array` holds what is stored. When a storage bound truncated it, `shape` is
    still the full tensor's shape, `array` is its first `array.size` elements in
    C order, and the summary statistics describe the full tensor.
    """

    name: str  # unique within the iteration, e.g. "conv1.weight.grad"
    role: str  # one of ROLES
    array: np.ndarray
    layer: str | None = None  # the module's qualified name, None for model-level tensors
    shape: tuple[int, ...] | None = None  # full shape; defaults to array.shape
    summary: dict[str, float] | None = None  # filled by storage when None
    id: int | None = None  # the database id once stored
    stored_numel: int | None = None  # elements stored (fewer under a size bound); set on read

    def __post_init__(self) -> None:
        if self.shape is None:
            self.shape = tuple(int(d) for d in self.array.shape)

    @property
    def truncated(self) -> bool:
        return int(np.prod(self.shape, dtype=np.int64)) != int(self.array.size)


@dataclass
class StepRecord:
    """One forward, backward or update step written out in matrix form.

    `formula` is the general LaTeX; `formula_values` the same with the real
    numbers. `max_abs_diff` is the largest |ours - PyTorch's| over the tensors
    the step produced, and `verified` says it was within tolerance. A step with
    no PyTorch counterpart (an intermediate matrix) has `reference` None.
    """

    layer: str
    phase: str  # one of PHASES
    title: str
    formula: str
    formula_values: str
    inputs: list[str] = field(default_factory=list)  # tensor names read
    outputs: list[str] = field(default_factory=list)  # tensor names produced
    reference: str | None = None  # what it was checked against, in words
    max_abs_diff: float | None = None
    verified: bool | None = None
    note: str = ""  # prose shown under the step (ties, accumulation, ...)
    position: int = 0  # order within the iteration, set by the tracer


@dataclass
class CaptureRecord:
    """The raw truth of an unexplained iteration (see `tracer.rawtruth`): the capture
    manifest, plain JSON-ready data, and the captured arrays that the iteration's
    tensors do not hold whole, by the keys the manifest uses."""

    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class IterationRecord:
    index: int  # 1-based
    loss: float
    tensors: list[TensorRecord]
    steps: list[StepRecord]
    learning_rate: float | None = None
    accuracy: float | None = None
    warnings: list[str] = field(default_factory=list)
    created_at: dt.datetime | None = None
    # Traced with explanation off: what `cnnviz explain` needs to explain it later.
    capture: CaptureRecord | None = None
    # Read back: the iteration keeps its raw truth, so `cnnviz explain` will replace it.
    unexplained: bool = False

    def tensor(self, name: str) -> TensorRecord:
        for record in self.tensors:
            if record.name == name:
                return record
        raise KeyError(name)


@dataclass
class LayerInfo:
    """One layer of the traced model, in call order."""

    position: int
    name: str  # qualified module name, e.g. "features.0"
    type: str  # class name, e.g. "Conv2d"
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    num_params: int
    description: str  # one line, e.g. "Conv2d(1 -> 1, kernel 2x2, stride 1)"
    formula: str  # LaTeX defining the layer
    explained: bool = True  # False: no matrix decomposition, raw tensors only


@dataclass
class RunInfo:
    name: str
    seed: int | None = None
    model_name: str = ""
    model_description: str = ""
    optimizer: str = ""
    optimizer_settings: dict[str, Any] = field(default_factory=dict)
    loss_name: str = ""
    dataset: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    torch_version: str = ""
    cnnviz_version: str = ""
    status: str = RUN_RUNNING
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    final_loss: float | None = None
    num_iterations: int = 0
    error: str | None = None
    layers: list[LayerInfo] = field(default_factory=list)
    id: int | None = None
    divergence: str | None = None  # "NaN at iteration k": the first non-finite loss
    writer_host: str | None = None
    writer_pid: int | None = None
    heartbeat_at: dt.datetime | None = None  # the writer's last commit

    @property
    def status_text(self) -> str:
        """The status as people should read it: a run whose loss went to NaN did not
        complete in any useful sense."""
        if self.divergence is None:
            return self.status
        if self.status == RUN_COMPLETED:
            return f"diverged ({self.divergence})"
        return f"{self.status}, diverged ({self.divergence})"

    @property
    def learning_rate(self) -> float | None:
        value = self.optimizer_settings.get("lr")
        return float(value) if value is not None else None


@dataclass
class RunQuery:
    """One page of the runs list: filters, sort order and the page's bounds.

    Every filter is optional; `name` matches a case-insensitive substring, the
    dates bound `started_at` (inclusive, whole days in UTC)."""

    offset: int = 0
    limit: int = 50
    sort: str = "id"  # a key of storage.paging.RUN_SORTS
    descending: bool = False
    model: str | None = None
    seed: int | None = None
    status: str | None = None
    name: str | None = None
    started_from: dt.date | None = None
    started_to: dt.date | None = None
    # What a run picker's user typed: the name or the model contains it (any case), or
    # it is the run's id or seed.
    text: str | None = None


@dataclass
class RunPage:
    """The runs of one page, how many runs match the filters, and what can be filtered on."""

    runs: list[RunInfo]
    total: int  # runs matching the filters, on all pages
    models: list[str]  # every model name in the store
    statuses: list[str]  # every status in the store
    any_running: bool  # some run in the store is still being traced


@dataclass
class TensorWindow:
    """A window of one (rows, cols) plane of a stored tensor, read without the rest.

    The plane is the tensor's last two axes at the 0-based `lead` indices of the
    others; a 1-D tensor is one column, a scalar 1x1 (as the formulas print them).
    `tensor` has the metadata and the summary over the full tensor, and an empty array."""

    tensor: TensorRecord
    lead: tuple[int, ...]  # 0-based index of the plane along the leading axes
    row0: int  # 0-based first row of the window
    col0: int  # 0-based first column
    plane: tuple[int, int]  # (rows, cols) of the whole plane
    values: np.ndarray  # (rows, cols) of the window, float64; NaN where not stored
    stored: np.ndarray  # bool, same shape: False where the store holds no value (size bound)
    dtype: str  # the stored NumPy dtype, e.g. "<f4"
