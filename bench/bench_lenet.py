"""Benchmark: LeNet-5 (batch 64), one training iteration untraced, traced into a store,
and the floor for lossless capture (the same tensors written raw with np.save + fsync).

Prints per-iteration medians, the ratios traced/untraced and traced/floor measured
in the same run, the split of the traced time (the training step with our hooks and
copies, explain + verify, SQLite write) and the bytes stored per iteration, for full
capture (every element of every tensor) and for the lenet5 defaults of
`cnnviz trace` (at most 5000 elements per tensor).

    .venv/bin/python bench/bench_lenet.py [--iterations 10] [--threads 1]

One torch thread by default: on a machine whose cores are shared, more threads
measure the contention, not the tracer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tracer.models import BUILTIN_MODELS  # noqa: E402
from tracer.session import Trace  # noqa: E402
from tracer.train import prepare, resolve  # noqa: E402

BATCH = 64


def step(model, optimizer, criterion, x, y) -> None:
    optimizer.zero_grad()
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()


def batches(x, y, n):
    """n batches of 64, cycling through the data in order."""
    per_epoch = len(x) // BATCH
    for i in range(n):
        start = (i % per_epoch) * BATCH
        yield x[start : start + BATCH], y[start : start + BATCH]


def median_ms(samples) -> float:
    return 1000 * statistics.median(samples)


def untraced(n: int) -> list[float]:
    model, optimizer, criterion, x, y = prepare(resolve(model_name="lenet5"))
    times = []
    for xb, yb in batches(x, y, n + 3):
        start = time.perf_counter()
        step(model, optimizer, criterion, xb, yb)
        times.append(time.perf_counter() - start)
    return times[3:]  # warm-up


def traced(n: int, db: Path, max_elements: int | None):
    """Per-iteration wall times, the Trace (for its timings), and the store's size."""
    model, optimizer, criterion, x, y = prepare(resolve(model_name="lenet5"))
    times = []
    with Trace(model, optimizer, criterion, db=db, max_elements=max_elements, strict=True) as run:
        run.keep_last_record = True  # the floor writes the last record's arrays
        for xb, yb in batches(x, y, n + 1):
            start = time.perf_counter()
            with run.iteration():
                step(model, optimizer, criterion, xb, yb)
            times.append(time.perf_counter() - start)
    size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
    return times[1:], run, size


def np_save_floor(record, folder: Path, n: int) -> tuple[list[float], int]:
    """Write the arrays of one stored record with np.save, one file per iteration, fsync'd."""
    arrays = [np.ascontiguousarray(t.array) for t in record.tensors]
    times, size = [], 0
    for i in range(n):
        path = folder / f"iteration{i}.npy"
        start = time.perf_counter()
        with open(path, "wb") as handle:
            for array in arrays:
                np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        times.append(time.perf_counter() - start)
        size = path.stat().st_size
    return times, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--iterations", type=int, default=10, help="traced iterations timed (default 10)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.iterations
    default_bound = BUILTIN_MODELS["lenet5"].max_elements

    plain = median_ms(untraced(max(5 * n, 20)))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        full_times, full_run, full_size = traced(n, tmp / "full.db", None)
        bound_times, bound_run, bound_size = traced(n, tmp / "bounded.db", default_bound)
        floor_times, floor_bytes = np_save_floor(full_run.records[-1], tmp, n)
    full, bounded, floor_write = (
        median_ms(full_times),
        median_ms(bound_times),
        median_ms(floor_times),
    )
    floor = plain + floor_write  # the step itself, then its tensors written raw

    print(
        f"LeNet-5, batch {BATCH}, torch threads {args.threads}, {n} traced iterations "
        f"(medians per iteration)"
    )
    print(f"  untraced training step              {plain:9.2f} ms")
    print(
        f"  floor: step + np.save + fsync       {floor:9.2f} ms   ({floor_write:.2f} ms writing "
        f"{floor_bytes / 1e6:.2f} MB, {len(full_run.records[-1].tensors)} tensors)"
    )
    print(
        f"  traced, full capture                {full:9.2f} ms   "
        f"{full / plain:6.1f}x untraced, {full / floor:5.1f}x the floor"
    )
    print(
        f"  traced, max_elements={default_bound:<5} (default) {bounded:9.2f} ms   "
        f"{bounded / plain:6.1f}x untraced"
    )
    for label, run in (("full capture", full_run), ("default bound", bound_run)):
        count = run.stored
        capture = 1000 * run.timings["capture"] / count
        explain = 1000 * run.timings["explain"] / count
        write = 1000 * run.timings["write"] / count
        print(
            f"  split, {label:13}: step + hooks/copies {capture:8.2f} ms (hooks/copies ~{capture - plain:.2f}), "
            f"explain + verify {explain:8.2f} ms, write {write:8.2f} ms"
        )
    iterations = n + 1  # the traced runs store one warm-up iteration too
    print(
        f"  bytes per iteration: full capture {full_size / iterations / 1e6:.2f} MB, "
        f"default bound {bound_size / iterations / 1e6:.2f} MB, np.save floor {floor_bytes / 1e6:.2f} MB"
    )


if __name__ == "__main__":
    main()
