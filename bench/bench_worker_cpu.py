"""Benchmark: the background worker's CPU per iteration, this checkout against another.

What the worker does for each captured iteration (build the record: explain, verify,
summarise; then write it: `RunWriter.add_iteration`), timed with `time.process_time`
so that other people's jobs on a shared machine count less than in wall time. Two
processes, one per checkout (`--baseline DIR`, e.g. `git worktree add /tmp/base
8a39736`), each capture the same LeNet-5 iterations once, then build and write one
iteration in turn, alternating which goes first, so that both see the same machine.
Reported per mode: median build and write, and each pair's ratio (this / baseline),
min and median.

    .venv/bin/python bench/bench_worker_cpu.py --baseline /tmp/base [--rounds 12]
        [--modes default/background,default/off,full/off,full/background]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
MODES = {  # bound (elements per tensor; None: every element), explain
    "default/background": (5000, True),
    "default/off": (5000, False),
    "full/off": (None, False),
    "full/background": (None, True),
}


def child(root: str, captured: int = 6) -> None:
    """Serve one checkout: read a mode per line, build and write one iteration, answer
    'build_s write_s'."""
    sys.path.insert(0, root)
    import tempfile
    import time

    import torch
    from threadpoolctl import threadpool_limits

    from storage import RunInfo, RunWriter, open_engine
    from tracer.assemble import Bounds, build_record, layer_infos
    from tracer.capture import Capture
    from tracer.train import prepare, resolve

    torch.set_num_threads(1)
    threadpool_limits(1)  # as built-in runs: NumPy on one thread
    config = resolve(model_name="lenet5")
    model, optimizer, criterion, x, y = prepare(config)
    capture = Capture(model, optimizer, criterion).attach()
    caps = []
    try:
        for i in range(captured):
            start = (i * config.batch_size) % (len(x) - config.batch_size)
            xb, yb = x[start : start + config.batch_size], y[start : start + config.batch_size]
            capture.start()
            optimizer.zero_grad()
            criterion(model(xb), yb).backward()
            optimizer.step()
            caps.append(capture.finish())
    finally:
        capture.detach()
    folder = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, folder, True)  # the stores are tens of MB
    writers = {}
    for label in MODES:
        engine = open_engine(os.path.join(folder, label.replace("/", "-") + ".db"))
        writers[label] = RunWriter.begin(engine, RunInfo(name=label))
        writers[label].set_layers(layer_infos(caps[0]))
    print("ready", flush=True)
    index = 0
    for line in sys.stdin:
        label = line.strip()
        bound, explain = MODES[label]
        index += 1
        started = time.process_time()
        record = build_record(
            caps[index % captured],
            index,
            None,
            bounds=Bounds(max_elements=bound),
            explain=explain,
            optimizer=optimizer,
        )
        built = time.process_time()
        writers[label].add_iteration(record)
        print(f"{built - started} {time.process_time() - built}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the other checkout's root")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--modes", default="default/background,default/off,full/off")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}; modes: {', '.join(MODES)}")
    trees = {"baseline": str(Path(args.baseline).resolve()), "this": str(HERE)}
    procs = {
        name: subprocess.Popen(
            [sys.executable, __file__, "--child", root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name, root in trees.items()
    }
    try:
        for proc in procs.values():
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("a checkout failed to start (see above)")
        times = {(name, m): [] for name in trees for m in modes}
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for mode in modes:
                order = ("baseline", "this") if round_ % 2 == 0 else ("this", "baseline")
                for name in order:
                    procs[name].stdin.write(mode + "\n")
                    procs[name].stdin.flush()
                    build, write = map(float, procs[name].stdout.readline().split())
                    if round_:
                        times[(name, mode)].append((build, write))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    print(
        f"worker CPU per LeNet-5 iteration (process_time, build + write), {args.rounds} rounds,"
        f" iterations interleaved; baseline {trees['baseline']}, this {trees['this']}"
    )
    for mode in modes:
        base, this = times[("baseline", mode)], times[("this", mode)]
        ratios = [sum(t) / sum(b) for t, b in zip(this, base, strict=True)]

        def ms(series, k):
            return 1000 * statistics.median(s[k] for s in series)

        print(
            f"  {mode:20} baseline {ms(base, 0):6.1f} + {ms(base, 1):6.1f} ms,  "
            f"this {ms(this, 0):6.1f} + {ms(this, 1):6.1f} ms (build + write, medians);  "
            f"this / baseline per pair min {min(ratios):.2f} median {statistics.median(ratios):.2f}"
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
