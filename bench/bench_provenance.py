"""Benchmark: the server's answer time for a provenance click on a LeNet-5 iteration.

What the iteration page's callback does per click (dashapp/pages/iteration.py):
read the run, the iteration's steps (no tensor bytes), `storage.provenance.explain_cell`
reading only the tensors the answer needs. Cells are
drawn at random from every tensor of the iteration that is stored whole (the
lenet5 defaults keep 5000 elements per tensor; bigger tensors are truncated and
their cells have no provenance), clicks alternate between nothing cached (the
first click on a page) and the page's caches, interleaved in one process. Prints p50, p95
and max in ms, and how many cells had an answer.

    .venv/bin/python bench/bench_provenance.py --store L.db [--clicks 300]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dashapp.data import cached_arrays, cached_steps  # noqa: E402
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
        whole = [t for t in record.tensors if not t.truncated and t.array.size]
        print(
            f"{len(whole)} of {len(record.tensors)} tensors stored whole; "
            f"{args.clicks} clicks on random cells of them"
        )
        times: dict[str, list[float]] = {"fresh read": [], "cached": []}
        answered = 0
        for click in range(args.clicks):
            tensor = rng.choice(whole)
            index = tuple(rng.randrange(d) for d in tensor.array.shape)
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
                )
                answered += mode == "cached"
            except NotExplained:
                pass
            times[mode].append(1000 * (time.perf_counter() - start))
        for mode, samples in times.items():
            samples.sort()
            p95 = samples[int(0.95 * (len(samples) - 1))]
            print(
                f"{mode}: p50 {statistics.median(samples):.1f} ms, p95 {p95:.1f} ms, "
                f"max {samples[-1]:.1f} ms"
            )
        print(f"cells with an answer: {answered} of {len(times['cached'])}")


if __name__ == "__main__":
    main()
