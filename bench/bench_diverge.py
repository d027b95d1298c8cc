"""Benchmark: the first divergence between two LeNet-5 runs of 100 iterations.

The store holds three LeNet-5 runs from one seed (the `cnnviz trace --model lenet5`
defaults, 100 iterations): run 1, run 2 identical to it, and run 3 with one weight
nudged by 1e-3 after iteration 90. Two searches are timed, interleaved in one
process:

- `storage.diverge.first_divergence` (summary columns first, then the stored bytes
  compared inside SQLite, decoding only the pairs that differ);
- the baseline: load both runs iteration by iteration (`RunStore.load_iteration`)
  and compare every tensor in NumPy, in execution order, stopping at the first
  difference.

on the identical pair (1, 2: every byte must be read) and the late divergence (1, 3).
A third variant searches across two stores: run B read from a copy of the store
file (`--db-b`, two machines' stores), where the bytes are compared here instead
of inside SQLite. Prints min and median seconds and the ratios baseline / ours.

    .venv/bin/python bench/bench_diverge.py [--store /tmp/lenet_diverge.db] [--repeats 5]

The store is built on first use (three traces of 100 LeNet-5 iterations: minutes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from storage import RunStore  # noqa: E402
from storage.diverge import first_divergence  # noqa: E402

ITERATIONS = 100
NUDGED_AFTER = 90


def build(path: Path) -> None:
    import torch

    from tracer.session import Trace
    from tracer.train import one_torch_thread, prepare, resolve, train

    for name, nudge in (("lenet-a", False), ("lenet-b", False), ("lenet-nudged", True)):
        config = resolve(model_name="lenet5", seed=0, iterations=ITERATIONS)
        model, optimizer, criterion, x, y = prepare(config)
        done = []

        def after(model=model, nudge=nudge, done=done):
            done.append(1)
            if nudge and len(done) == NUDGED_AFTER:
                with torch.no_grad():
                    model.fc2.weight[0, 0] += 1e-3

        with (
            one_torch_thread(),
            Trace(
                model, optimizer, criterion, db=path, name=name, seed=0, max_elements=5000
            ) as run,
        ):
            train(model, optimizer, criterion, x, y, config, run, after)
        print(f"traced run {run.run_id} {name}", flush=True)


def brute_force(store: RunStore, run_a: int, run_b: int):
    """The baseline: every tensor of both runs loaded and compared in NumPy."""
    index = 1
    while True:
        rec_a, rec_b = store.load_iteration(run_a, index), store.load_iteration(run_b, index)
        if rec_a is None or rec_b is None:
            return None if rec_a is None and rec_b is None else (index, "(iteration)")
        order: dict[str, int] = {}
        for step in rec_a.steps:
            for name in step.inputs:
                order.setdefault(name, 2 * step.position)
            for name in step.outputs:
                order.setdefault(name, 2 * step.position + 1)
        tensors_b = {t.name: t for t in rec_b.tensors}
        ranked = sorted(enumerate(rec_a.tensors), key=lambda it: order.get(it[1].name, 1 << 40))
        for _, ta in ranked:
            tb = tensors_b.get(ta.name)
            if tb is None or not np.array_equal(ta.array, tb.array):
                return index, ta.name
        index += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, default=Path("/tmp/lenet_diverge.db"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not args.store.exists():
        build(args.store)
    size = args.store.stat().st_size
    other = args.store.with_suffix(".b.db")
    if not other.exists():
        import shutil

        shutil.copyfile(args.store, other)
    with RunStore(args.store) as store, RunStore(other) as store_b:
        print(f"store {args.store}: {size / 1e6:.0f} MB, runs {[r.id for r in store.list_runs()]}")
        times: dict[str, list[float]] = {}
        answers = {}
        for _ in range(args.repeats):
            for pair in ((1, 2), (1, 3)):
                for method in ("sql", "two stores", "baseline"):
                    start = time.perf_counter()
                    if method != "baseline":
                        engine_b = store_b.engine if method == "two stores" else None
                        report = first_divergence(store.engine, *pair, engine_b=engine_b)
                        answer = (
                            None
                            if report.identical
                            else (report.divergence.iteration, report.divergence.tensor)
                        )
                    else:
                        answer = brute_force(store, *pair)
                    times.setdefault(f"{pair} {method}", []).append(time.perf_counter() - start)
                    answers.setdefault(pair, set()).add(answer)
        for pair, found in answers.items():
            print(f"runs {pair}: first divergence {found}")
            assert len(found) == 1, "the two searches disagree"
        for pair in ((1, 2), (1, 3)):
            base = times[f"{pair} baseline"]
            for method in ("sql", "two stores"):
                ours = times[f"{pair} {method}"]
                print(
                    f"runs {pair} {method}: ours min {min(ours):.3f} s median "
                    f"{statistics.median(ours):.3f} s; baseline min {min(base):.3f} s median "
                    f"{statistics.median(base):.3f} s; baseline/ours min "
                    f"{min(base) / min(ours):.1f}x median "
                    f"{statistics.median(base) / statistics.median(ours):.1f}x"
                )


if __name__ == "__main__":
    main()
