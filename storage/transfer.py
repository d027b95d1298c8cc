"""Copy a run from one store into another, record by record, through the public API.

What `cnnviz demo --from` uses: the Docker image has no torch, so it carries the
three demo runs traced at build time in a store of their own and copies those its
volume lacks. Every tensor (bytes, full shape, summaries), step and layer is read
with `RunStore` and written with `RunWriter`, one transaction per iteration as the
tracer writes; the copy gets a new id, the source's start time and its status.
"""

from __future__ import annotations

from .records import RUN_COMPLETED
from .store import RunStore, RunWriter, StoreError, open_writer_engine


def copy_run(source: RunStore, run_id: int, target_location: str) -> int:
    """Copy run `run_id` of `source` into the store at `target_location`; return its new id."""
    info = source.get_run(run_id)
    if info is None:
        raise StoreError(f"{source.location} has no run {run_id}")
    engine = open_writer_engine(target_location)
    try:
        writer = RunWriter.begin(engine, info)  # gives info a new id: the target's
        writer.set_layers(info.layers)
        for summary in source.iterations(run_id):
            writer.add_iteration(source.load_iteration(run_id, summary.index))
        writer.finish(info.status if info.status else RUN_COMPLETED, info.error)
        return writer.run_id
    finally:
        engine.dispose()
