"""Benchmark: peak memory of traced runs against untraced ones, and what the capture
costs the training thread, for this checkout and a baseline checkout, interleaved.

Peak memory: each (checkout, model, mode) is a whole built-in run in a subprocess of
its own (`VmHWM`, the resident high-water mark), rounds interleaved so that a busy
machine slows every variant alike. `plain` is the untraced run of the same model,
seed and iterations. Reported: min and median over the rounds, the ratio of medians
to `plain` of the same checkout, and the issue's target, 1.2 x untraced plus the
queue bound (`--queue-bytes`, this checkout's default; the baseline bounded the queue
in iterations only).

Training-thread capture cost (`--capture`): in one subprocess per checkout and model,
a plain step (on a copy of the model, no hooks attached) and a captured step
(cnnviz's hooks, copies and `Capture.finish`, the hand-off's input, no worker
running) alternate; CPU time of the thread
(`time.thread_time`), min and median, and the ratio of medians. That is what the
training thread itself pays, whatever the worker does.

    git archive 8a39736 | tar -x -C /tmp/base       # a baseline checkout
    .venv/bin/python bench/bench_memory.py --baseline /tmp/base [--models lenet5,resnet18-cifar]
        [--modes background,off] [--rounds 2] [--capture 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parents[1])
ITERATIONS = {"lenet5": 40, "resnet18-cifar": 8}  # enough for the queue to fill

_CHILD = r"""
import json, os, sys, tempfile, time
tree, mode, model, iterations = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, tree)
from tracer.train import one_torch_thread, prepare, resolve, train
config = resolve(model_name=model, iterations=iterations)
out = {}
with one_torch_thread():
    m, o, c, x, y = prepare(config)
    if mode == "plain":
        train(m, o, c, x, y, config)
    elif mode == "capture":
        from tracer.capture import Capture
        b = config.batch_size
        batches = [(x[i : i + b], y[i : i + b]) for i in range(0, config.samples - b + 1, b)]
        import copy
        # The plain step runs on a copy of the model without cnnviz's hooks attached.
        m2 = copy.deepcopy(m)
        o2 = type(o)(m2.parameters(), **o.defaults)
        capture = Capture(m, o, c).attach()
        capture.active = False
        def step(xb, yb, m=m2, o=o2):
            o.zero_grad(); c(m(xb), yb).backward(); o.step()
        def captured(xb, yb):
            capture.start(); step(xb, yb, m, o)
            try:
                return capture.finish(settle=False)  # as Trace does: the worker settles
            except TypeError:
                return capture.finish()
        held, plain, traced = [], [], []
        for i in range(iterations + 2):
            xb, yb = batches[i % len(batches)]
            t0 = time.thread_time(); step(xb, yb); plain.append(time.thread_time() - t0)
            t0 = time.thread_time(); cap = captured(xb, yb); traced.append(time.thread_time() - t0)
            held.append(cap); del held[:-2]; del cap  # as if two were still in the queue
        out.update(plain=plain[2:], traced=traced[2:])
    else:
        from tracer.session import Trace
        with tempfile.TemporaryDirectory() as tmp:
            with Trace(m, o, c, db=os.path.join(tmp, "m.db"), max_elements=config.max_elements,
                       explain=mode) as run:
                train(m, o, c, x, y, config, run)
            budget = getattr(run._pipeline, "budget", None)
            out["bound"] = getattr(run, "queue_bytes", None)
            out["held_peak"] = budget.peak if budget is not None else None
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
out["peak_mib"] = int(hwm.split()[1]) / 1024
print(json.dumps(out))
"""


def child(tree: str, mode: str, model: str, iterations: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, tree, mode, model, str(iterations)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def mm(values: list[float]) -> str:
    return f"{min(values):8.1f} / {statistics.median(values):8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="a baseline checkout's directory")
    parser.add_argument("--models", default="lenet5,resnet18-cifar")
    parser.add_argument("--modes", default="background,off", help="explain modes traced")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--capture", type=int, default=0, help="captured steps per capture-cost child (0: skip)"
    )
    parser.add_argument("--no-memory", action="store_true", help="only the capture cost")
    args = parser.parse_args()
    trees = {"new": HERE} | ({"base": args.baseline} if args.baseline else {})
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    modes = ["plain"] + [m.strip() for m in args.modes.split(",") if m.strip()]
    peaks: dict[tuple, list[float]] = {}
    held: dict[tuple, list[float]] = {}
    bound = None
    costs: dict[tuple, list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for model in models:
            for label, tree in trees.items():
                if not args.no_memory:
                    for mode in modes:
                        out = child(tree, mode, model, ITERATIONS.get(model, 20))
                        peaks.setdefault((label, model, mode), []).append(out["peak_mib"])
                        if out.get("held_peak") is not None:
                            held.setdefault((label, model, mode), []).append(
                                out["held_peak"] / 2**20
                            )
                            bound = out["bound"]
                if args.capture:
                    out = child(tree, "capture", model, args.capture)
                    costs.setdefault((label, model), []).append(
                        (statistics.median(out["plain"]), statistics.median(out["traced"]))
                    )
    if peaks:
        print(
            f"peak resident memory (VmHWM), MiB, min / median over {args.rounds} rounds; "
            f"iterations: {ITERATIONS}"
        )
        if bound:
            print(f"queue bound (this checkout's default): {bound / 2**20:.0f} MiB")
        for model in models:
            for label in trees:
                base = statistics.median(peaks[(label, model, "plain")])
                for mode in modes:
                    values = peaks[(label, model, mode)]
                    line = f"  {model:15} {label:5} {mode:11} {mm(values)}"
                    if mode != "plain":
                        line += f"   x{statistics.median(values) / base:5.2f} untraced"
                        if label == "new" and bound:
                            target = 1.2 * base + bound / 2**20
                            line += f"   target {target:7.1f} ({'met' if max(values) <= target else 'NOT met'})"
                        if (label, model, mode) in held:
                            line += (
                                f"   copies held at most {max(held[(label, model, mode)]):.0f} MiB"
                            )
                    print(line)
    if costs:
        print(
            "training thread CPU per step (thread_time), capture only (hooks, copies, finish), "
            "ms: median of each round's per-step medians; ratio of medians"
        )
        for model in models:
            for label in trees:
                pairs = costs[(label, model)]
                plain = [1000 * p for p, _ in pairs]
                traced = [1000 * t for _, t in pairs]
                ratios = [t / p for p, t in pairs]
                print(
                    f"  {model:15} {label:5} plain {mm(plain)}  captured {mm(traced)}  "
                    f"x plain min {min(ratios):.2f} median {statistics.median(ratios):.2f}"
                )


if __name__ == "__main__":
    main()
