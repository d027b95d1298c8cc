"""Benchmark: the server's answer time for a provenance click on a stored iteration
(LeNet-5; also ResNet-18).

What the iteration page's callback does per click (dashapp/pages/iteration.py):
read the run, the iteration's steps (no tensor bytes), `storage.provenance.explain_cell`
reading only the tensors the answer needs (and the previous iteration's optimizer
state, when asked). Cells are drawn at random from the stored cells of every tensor
of the iteration (the lenet5 defaults keep the first 5000 elements of each tensor: a
truncated tensor's kept cells can be clicked too), clicks alternate between nothing
cached (the first click on a page) and the page's caches, interleaved in one process.
Prints p50, p95 and max in ms, how many cells had an answer, and the commonest
reasons for the others.

    .venv/bin/python bench/bench_provenance.py --store L.db [--clicks 300]
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dashapp.data import PreviousArrays, cached_arrays, cached_steps  # noqa: E402
from storage import RunStore  # noqa: E402
from storage.provenance import NotExplained, explain_cell  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--clicks", type=int, default=300)
    parser.add_argument("--iteration", type=int, default=2)
    args = parser.parse_args()
    rng = random.Random(0)
    with RunStore(args.store) as store:
        record = store.load_iteration(1, args.iteration)
        clickable = [t for t in record.tensors if t.array.size]
        whole = sum(not t.truncated for t in clickable)
        print(
            f"{whole} of {len(record.tensors)} tensors stored whole, the others truncated; "
            f"{args.clicks} clicks on random stored cells of them"
        )
        reasons: collections.Counter = collections.Counter()
        times: dict[str, list[float]] = {"fresh read": [], "cached": []}
        answered = 0
        for click in range(args.clicks):
            tensor = rng.choice(clickable)
            flat = rng.randrange(tensor.array.size)  # a stored cell: the first elements
            index = tuple(int(i) for i in np.unravel_index(flat, tensor.shape))
            mode = "fresh read" if click % 2 == 0 else "cached"
            if mode == "fresh read":
                cached_steps.cache_clear()
                cached_arrays.cache_clear()
            start = time.perf_counter()
            run = store.get_run(1)
            rec = cached_steps(store, 1, args.iteration)
            try:
                explain_cell(
                    rec,
                    {layer.name: layer.type for layer in run.layers},
                    tensor.name,
                    index,
                    optimizer=run.optimizer,
                    settings=run.optimizer_settings,
                    arrays=cached_arrays(store, 1, args.iteration),
                    previous=PreviousArrays(store, 1, args.iteration - 1),
                )
                answered += mode == "cached"
            except NotExplained as exc:
                if mode == "cached":
                    reasons[_shape_of(str(exc))] += 1
            times[mode].append(1000 * (time.perf_counter() - start))
        for mode, samples in times.items():
            samples.sort()
            p95 = samples[int(0.95 * (len(samples) - 1))]
            print(
                f"{mode}: p50 {statistics.median(samples):.1f} ms, p95 {p95:.1f} ms, "
                f"max {samples[-1]:.1f} ms"
            )
        print(f"cells with an answer: {answered} of {len(times['cached'])}")
        for reason, count in reasons.most_common(4):
            print(f"  {count}: {reason}")


def _shape_of(reason: str) -> str:
    """A reason without its cell indices, to count alike ones together."""
    return re.sub(r"\[[0-9,]+\]", "[..]", re.sub(r"first \d+", "first N", reason))


if __name__ == "__main__":
    main()
