"""Benchmark: the seed CNN, one training iteration untraced vs traced into a store.

Prints per-iteration medians and their ratios against the untraced iteration
measured in the same run, the split of the traced time (hooks/copies, matrix
explanations + verification, SQLite write), and the bytes stored per iteration.

    .venv/bin/python bench/bench_seed.py [--iterations 200]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from storage import RunInfo, RunWriter, open_engine  # noqa: E402
from tracer.assemble import build_iteration  # noqa: E402
from tracer.capture import Capture  # noqa: E402
from tracer.models import SeedCNN, bars_4x4  # noqa: E402
from tracer.session import Trace  # noqa: E402


def setup(seed=0):
    torch.manual_seed(seed)
    model = SeedCNN()
    x, y = bars_4x4(1, seed)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return model, x, y, criterion, optimizer


def step(model, x, y, criterion, optimizer):
    optimizer.zero_grad()
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()


def median_ms(samples):
    return 1000 * statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    n = args.iterations
    torch.set_num_threads(1)

    model, x, y, criterion, optimizer = setup()
    for _ in range(20):
        step(model, x, y, criterion, optimizer)  # warm-up
    untraced = []
    for _ in range(n):
        t0 = time.perf_counter()
        step(model, x, y, criterion, optimizer)
        untraced.append(time.perf_counter() - t0)

    # The traced iteration, split into its three parts.
    model, x, y, criterion, optimizer = setup()
    capture = Capture(model, optimizer, criterion).attach()
    tmp = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, tmp, True)  # the stores are tens of MB
    engine = open_engine(Path(tmp) / "split.db")
    writer = RunWriter.begin(engine, RunInfo(name="bench"))
    hooks, explain, write = [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        capture.start()
        step(model, x, y, criterion, optimizer)
        captured = capture.finish()
        t1 = time.perf_counter()
        record = build_iteration(captured, i + 1, optimizer=optimizer)
        t2 = time.perf_counter()
        writer.add_iteration(record)
        t3 = time.perf_counter()
        hooks.append(t1 - t0)
        explain.append(t2 - t1)
        write.append(t3 - t2)
    capture.detach()
    engine.dispose()

    # The public API end to end, and what it stores.
    model, x, y, criterion, optimizer = setup()
    db = Path(tmp) / "full.db"
    traced = []
    with Trace(model, optimizer, criterion, db=db) as run:
        for _ in range(n):
            t0 = time.perf_counter()
            with run.iteration():
                step(model, x, y, criterion, optimizer)
            traced.append(time.perf_counter() - t0)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tensor_bytes = conn.execute("SELECT SUM(length(data)) FROM tensor_data").fetchone()[0]
        json_bytes = conn.execute("SELECT SUM(length(elements)) FROM tensor_data").fetchone()[0]
        tensors, steps = conn.execute(
            "SELECT (SELECT COUNT(*) FROM tensors), (SELECT COUNT(*) FROM steps)"
        ).fetchone()
    file_bytes = os.path.getsize(db)

    base = median_ms(untraced)
    print(f"seed CNN, {n} iterations each, 1 thread (medians per iteration)")
    print(f"  untraced                      {base:8.3f} ms   1.0x")
    print(
        f"  traced, end to end (Trace)    {median_ms(traced):8.3f} ms  {median_ms(traced) / base:5.1f}x"
    )
    print(
        f"    hooks + tensor copies       {median_ms(hooks):8.3f} ms  {median_ms(hooks) / base:5.1f}x"
    )
    print(
        f"    explain + verify (NumPy)    {median_ms(explain):8.3f} ms  {median_ms(explain) / base:5.1f}x"
    )
    print(
        f"    SQLite write (1 txn)        {median_ms(write):8.3f} ms  {median_ms(write) / base:5.1f}x"
    )
    print(
        f"  stored per iteration: {tensors / n:.0f} tensors, {steps / n:.0f} steps, "
        f"{tensor_bytes / n:,.0f} B raw tensor bytes, {json_bytes / n:,.0f} B JSON copies, "
        f"{file_bytes / n:,.0f} B of file (everything, with formulas and indexes)"
    )


if __name__ == "__main__":
    main()
