"""`cnnviz explain RUN`: explain, afterwards, a run traced with explanation off.

A run traced with `explain="off"` stores each iteration's raw tensors and, beside
them, its raw truth (`tracer.rawtruth`): the capture manifest and the captured
arrays the tensors do not hold whole. Explaining later reads that back into the
same `CapturedIteration` the training thread handed off, and builds the record
exactly as a trace with explanation on would have (`assemble.build_record`, with
the run's own bounds), in this process, with no model code and no torch modules.

The checks are the same checks. Inline or later, the explainers recompute every
step in NumPy from the captured inputs and compare the result with the tensors
PyTorch computed; those tensors are stored in the raw truth as autograd left them
(activations, `.grad`s, the parameters after `optimizer.step()`), so what a step
is checked against is autograd's own numbers, whether autograd ran a second ago
or last week.

Each iteration is replaced in one transaction, raw truth included: an explain
that is interrupted leaves every iteration either explained or still raw with its
raw truth, and running it again explains the rest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from storage.records import RUN_RUNNING
from storage.store import Store, StoreError

from .assemble import Bounds, build_record, layer_infos
from .rawtruth import RawTruthError, unpack


class ExplainError(StoreError):
    """A run that cannot be explained: one line saying why; nothing was written."""


@dataclass
class ExplainResult:
    run_id: int
    explained: int  # iterations explained by this call
    checked: int  # steps compared with PyTorch's tensors
    verified: int  # ... and within tolerance


def bounds_of(config: dict) -> Bounds:
    """The storage bounds a run was traced with, from its stored config."""
    layers = config.get("layers")
    return Bounds(
        max_elements=config.get("max_elements"),
        layers=frozenset(layers) if layers else None,
        full_check=bool(config.get("full_check", False)),
    )


def explain_run(
    db: str,
    run_id: int,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> ExplainResult:
    """Explain every unexplained iteration of run `run_id` in store `db`, one
    transaction each. Raises `ExplainError` (nothing written) for a run that cannot be."""
    from threadpoolctl import threadpool_limits

    with Store.open(db) as reader:  # read-only: a missing store is not created
        _check(reader, db, run_id)
    store = Store.open(db, mode="w")  # a read-only store fails here, with one line
    try:
        # NumPy's BLAS on one thread, as in built-in traces (`train.one_torch_thread`):
        # the order of a float64 sum depends on how many threads share it, and so the
        # stored differences and summaries are the same to the last bit.
        with threadpool_limits(limits=1):
            return _explain(store, db, run_id, progress)
    finally:
        store.close()


def _check(store: Store, db: str, run_id: int) -> None:
    """ExplainError unless the run has iterations to explain and is not being traced."""
    info = store.get_run(run_id)
    if info is None:
        raise ExplainError(f"there is no run {run_id} in {db}")
    config = dict(info.config or {})
    mode = config.get("explain", "inline")
    pending = store.captured_indexes(run_id)
    if not pending:
        if mode != "off":
            raise ExplainError(
                f"run {run_id} was traced with explanation on ({mode}): it is explained already"
            )
        if config.get("explained"):
            raise ExplainError(
                f"run {run_id} is explained already (`cnnviz explain` ran on {config['explained']})"
            )
        if not store.iterations(run_id):
            raise ExplainError(f"run {run_id} has no stored iterations to explain")
        raise ExplainError(
            f"run {run_id} was traced with explanation off by an older cnnviz that kept "
            "no capture manifest, so it cannot be explained later; trace it again"
        )
    if info.status == RUN_RUNNING:
        raise ExplainError(
            f"run {run_id} is still being traced; explain it once it has finished "
            "(or `cnnviz runs --prune-stale` if its writer died)"
        )


def _explain(store: Store, db: str, run_id: int, progress) -> ExplainResult:
    _check(store, db, run_id)
    config = dict(store.get_run(run_id).config or {})
    pending = store.captured_indexes(run_id)
    bounds = bounds_of(config)
    first = min(it.index for it in store.iterations(run_id))
    writer = store.writer(run_id)
    checked = verified = 0
    for done, index in enumerate(pending, start=1):
        loaded = store.load_capture(run_id, index)
        if loaded is None:  # explained meanwhile by another `cnnviz explain`
            continue
        manifest, arrays, tensors = loaded
        try:
            cap, loss = unpack(manifest, arrays, tensors)
        except (RawTruthError, KeyError, TypeError, ValueError) as exc:
            raise ExplainError(
                f"run {run_id} iteration {index}: its raw truth cannot be read ({exc})"
            ) from exc
        record = build_record(cap, index, loss, bounds=bounds, explain=True)
        last = done == len(pending)
        if last:
            config["explained"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        writer.replace_iteration(
            record,
            layers=layer_infos(cap, explained=True) if index == first else None,
            config=config if last else None,
        )
        steps = [s for s in record.steps if s.verified is not None]
        checked += len(steps)
        verified += sum(1 for s in steps if s.verified)
        if progress is not None:
            progress(done, len(pending))
    return ExplainResult(run_id, len(pending), checked, verified)
