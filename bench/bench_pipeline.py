"""Benchmark: what tracing costs against what capturing costs, variants interleaved in one process.

Variants (each a block of `--block` iterations per round, rounds interleaved so that
a busy machine slows every variant alike):

  plain          the training step alone
  floor          the step, then np.save + fsync of the raw captured arrays (the cost of
                 keeping the tensors, and nothing else)
  cnnviz B/E     a traced step at bound B (default: the model's max_elements, full: every
                 element) with explanation E (inline, background, off)
  tensorboard    the step, then SummaryWriter.add_histogram of every parameter and gradient,
                 flushed (only when the optional `tensorboard` package is installed)
  torchlens      the step through torchlens.trace with every activation and its gradient
                 saved (save_grads=True), then torchlens.save of the trace with its
                 activations and gradients (only when the optional `torchlens` package is
                 installed; torch functions are unwrapped after each trace, so the other
                 variants run unwrapped)

The comparators are an optional extra: pip install -c constraints/cpu.txt -e ".[bench]".

For each: the training-thread time per iteration (inside `trace.iteration()`, hand-off
and backpressure included) and the end-to-end time per iteration (from opening the run
until its last iteration is committed), as min and median over the rounds, and the
ratios of medians against `plain` and `floor` measured in the same rounds.

Then the store's write speed against raw sqlite3 executemany of the same BLOBs (MB/s,
interleaved), and, with --memory, peak resident memory of whole runs in subprocesses.

With --sustained N, one run of N steps at the default bound, explained in the
background, between two blocks of N plain steps, for each k of --every (every k-th
step traced): the training thread's mean time per step over the whole run and over
its second half. Once the queue is full the loop waits for the worker, so a long
run's pace is what the worker costs per traced iteration, spread over k steps. Means,
not medians: a traced step and the untraced steps between count alike.

    .venv/bin/python bench/bench_pipeline.py [--model lenet5] [--rounds 5] [--block 3]
        [--variants plain,floor,default/background,...] [--memory 30]
        [--sustained 80 --every 1,8]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# CNNVIZ_BENCH_TREE=DIR measures the tracer and store of another checkout (a baseline
# commit: git worktree add /tmp/base 8a39736) with this bench, so that both are measured
# the same way; alternate the two runs.
TREE = os.environ.get("CNNVIZ_BENCH_TREE") or str(Path(__file__).resolve().parents[1])
sys.path.insert(0, TREE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tracer import pipeline  # noqa: E402
from tracer.models import BUILTIN_MODELS  # noqa: E402
from tracer.session import Trace  # noqa: E402
from tracer.train import prepare, resolve  # noqa: E402

MODES = ("inline", "background", "off")

# perf_counter() when RunWriter.add_iteration last returned (in any thread): the end of
# "until the last iteration is committed", before the run's close (status row, and the
# WAL checkpoint SQLite runs when the writer's last connection closes).
_LAST_COMMIT = [0.0]


def _watch_commits() -> None:
    from storage import RunWriter

    add = RunWriter.add_iteration
    if getattr(add, "watched", False):
        return

    def add_iteration(self, record):
        add(self, record)
        _LAST_COMMIT[0] = time.perf_counter()

    add_iteration.watched = True
    RunWriter.add_iteration = add_iteration


def step(model, optimizer, criterion, x, y) -> None:
    optimizer.zero_grad()
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    if x.is_cuda:
        torch.cuda.synchronize()  # a step is timed until its kernels are done


class Workload:
    """One model, optimizer and data, stepping through batches in order forever."""

    def __init__(self, model_name: str, batch: int | None, device: str = "cpu"):
        options = {"batch_size": batch} if batch else {}
        config = resolve(model_name=model_name, **options)
        self.config = config
        self.model, self.optimizer, self.criterion, self.x, self.y = prepare(config)
        if device != "cpu":  # the parameters move in place: the optimizer keeps them
            self.model.to(device)
            self.x, self.y = self.x.to(device), self.y.to(device)
        self.batch = config.batch_size
        self.position = 0

    def next_batch(self):
        if self.position + self.batch > len(self.x):
            self.position = 0
        start = self.position
        self.position += self.batch
        return self.x[start : start + self.batch], self.y[start : start + self.batch]

    def step(self) -> None:
        step(self.model, self.optimizer, self.criterion, *self.next_batch())


def _trace_supports_explain() -> bool:
    import inspect

    return "explain" in inspect.signature(Trace.__init__).parameters


def plain_steps(work: Workload, count: int) -> list[float]:
    """Seconds of each of `count` plain steps."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        work.step()
        times.append(time.perf_counter() - started)
    return times


def traced_steps(work: Workload, run: Trace, count: int) -> list[float]:
    """Seconds of each of `count` steps inside `run.iteration()` (hand-off included)."""
    times = []
    for _ in range(count):
        xb, yb = work.next_batch()
        started = time.perf_counter()
        with run.iteration():
            step(work.model, work.optimizer, work.criterion, xb, yb)
        times.append(time.perf_counter() - started)
    return times


def run_plain(work: Workload, block: int) -> tuple[float, float]:
    times = plain_steps(work, block)
    return sum(times) / block, sum(times) / block


def run_traced(
    work: Workload,
    block: int,
    db: Path,
    bound: int | None,
    mode: str,
    synchronous_copies: bool = False,
    **more,
) -> tuple[float, float, Trace]:
    options = {"explain": mode, **more} if _trace_supports_explain() else {}
    _watch_commits()
    started = time.perf_counter()
    with Trace(
        work.model, work.optimizer, work.criterion, db=db, max_elements=bound, **options
    ) as run:
        run.keep_last_record = True  # the write bench takes a full-capture record
        if synchronous_copies:  # the CPU path's copies on CUDA too, to compare
            run._capture._copies.asynchronous = False
        inside = sum(traced_steps(work, run, block))
    total = time.perf_counter() - started
    run.bench_committed = (_LAST_COMMIT[0] - started) / block
    return inside / block, total / block, run


def run_traced_in_process(
    work: Workload,
    block: int,
    db: Path,
    bound: int | None,
    mode: str,
    synchronous_copies: bool = False,
    **more,
) -> tuple[float, float, Trace]:
    """`run_traced` with the worker as a process of its own (`worker="process"`): the
    captured iterations are pickled to it, and it explains and writes them."""
    started = time.perf_counter()
    with Trace(
        work.model,
        work.optimizer,
        work.criterion,
        db=db,
        max_elements=bound,
        explain=mode,
        worker="process",
        **more,
    ) as run:
        if synchronous_copies:
            run._capture._copies.asynchronous = False
        inside = sum(traced_steps(work, run, block))
    total = time.perf_counter() - started
    return inside / block, total / block, run


def run_sustained(
    work: Workload, iterations: int, db: Path, bound: int | None, every: int = 1
) -> dict:
    """One long traced run (every `every`-th step traced) between two blocks of plain
    steps: seconds per step."""

    plain = plain_steps(work, iterations)
    options = {"max_elements": bound, "explain": "background", "every": every}
    with Trace(work.model, work.optimizer, work.criterion, db=db, **options) as run:
        traced = traced_steps(work, run, iterations)
        queue = run.queue_size
    plain += plain_steps(work, iterations)
    return {"plain": plain, "traced": traced, "queue": queue, "every": every}


def raw_arrays(work: Workload) -> list[np.ndarray]:
    """The arrays a full raw capture keeps: every captured tensor, no explainer intermediates."""
    from tracer.assemble import build_iteration
    from tracer.capture import Capture

    capture = Capture(work.model, work.optimizer, work.criterion).attach()
    try:
        capture.start()
        work.step()
        cap = capture.finish()
    finally:
        capture.detach()
    record = build_iteration(cap, 1, optimizer=work.optimizer, explain=False)
    return [np.ascontiguousarray(t.array) for t in record.tensors]


def run_floor(work: Workload, block: int, arrays: list[np.ndarray], folder: Path):
    total = 0.0
    for i in range(block):
        started = time.perf_counter()
        work.step()
        path = folder / f"floor{i}.npy"
        with open(path, "wb") as handle:
            for array in arrays:
                np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        total += time.perf_counter() - started
    return total / block, total / block


def run_tensorboard(work: Workload, block: int, writer, counter: list[int]):
    total = 0.0
    for _ in range(block):
        started = time.perf_counter()
        work.step()
        counter[0] += 1
        for name, p in work.model.named_parameters():
            writer.add_histogram(name, p, counter[0])
            if p.grad is not None:
                writer.add_histogram(f"{name}.grad", p.grad, counter[0])
        writer.flush()
        total += time.perf_counter() - started
    return total / block, total / block


def run_torchlens(work: Workload, block: int, folder: Path):
    import warnings

    import torchlens
    from torchlens.options import CaptureOptions

    options = CaptureOptions(save_grads=True, unwrap_when_done=True, verbose=False)
    total = 0.0
    for i in range(block):
        xb, yb = work.next_batch()
        started = time.perf_counter()
        work.optimizer.zero_grad()
        trace = torchlens.trace(work.model, xb, capture=options)
        loss = work.criterion(trace[trace.output_layers[0]].out, yb)
        trace.log_backward(loss)
        work.optimizer.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "embeds a custom module attribute" notices
            torchlens.save(
                trace,
                folder / f"torchlens{i}",
                include_outs=True,
                include_grads=True,
                overwrite=True,
            )
        total += time.perf_counter() - started
    return total / block, total / block


def speed_of(writes, label: str) -> float:
    return next(speed for name, speed, _, _ in writes if name == label)


def stats(samples: list[float]) -> tuple[float, float]:
    return 1000 * min(samples), 1000 * statistics.median(samples)


# ---------------------------------------------------------------- store writes


def write_speed(record, folder: Path, rounds: int) -> list[tuple[str, float, float, list]]:
    """MB/s of RunWriter.add_iteration against raw sqlite3 executemany of the same BLOBs,
    in a WAL database with SQLite's default checkpoint policy (what one writes by hand)
    and with the store's own (`WAL_AUTOCHECKPOINT_PAGES`); the order within a round
    alternates. Also each round's store / raw speed ratio."""
    from storage import RunInfo, RunWriter, open_engine
    from storage.store import WAL_AUTOCHECKPOINT_PAGES

    # Every BLOB the store writes: the tensors, and with explanation off the raw truth.
    arrays = [(t.name, t.array) for t in record.tensors]
    if getattr(record, "capture", None) is not None:
        arrays += list(record.capture.arrays.items())
    blobs = [(name, np.ascontiguousarray(a).tobytes()) for name, a in arrays]
    megabytes = sum(len(b) for _, b in blobs) / 1e6
    engine = open_engine(folder / "writes.db")
    writer = RunWriter.begin(engine, RunInfo(name="write-bench"))
    raws = []
    for name, checkpoint in (("raw.db", None), ("raw-policy.db", WAL_AUTOCHECKPOINT_PAGES)):
        raw = sqlite3.connect(folder / name, isolation_level=None)
        raw.execute("PRAGMA journal_mode = WAL")
        raw.execute("PRAGMA synchronous = NORMAL")
        if checkpoint is not None:
            raw.execute(f"PRAGMA wal_autocheckpoint = {checkpoint}")
        raw.execute(
            "CREATE TABLE blobs (id INTEGER PRIMARY KEY, iteration INTEGER, name TEXT, data BLOB)"
        )
        raws.append(raw)

    def store_write(i):
        record.index = 1000 + i
        writer.add_iteration(record)

    def raw_write(raw, i):
        raw.execute("BEGIN IMMEDIATE")
        raw.executemany(
            "INSERT INTO blobs (iteration, name, data) VALUES (?, ?, ?)",
            [(i, name, b) for name, b in blobs],
        )
        raw.execute("COMMIT")

    writes = [store_write, lambda i: raw_write(raws[0], i), lambda i: raw_write(raws[1], i)]
    times: list[list[float]] = [[] for _ in writes]
    for i in range(rounds):
        order = range(len(writes)) if i % 2 == 0 else reversed(range(len(writes)))
        for k in order:
            started = time.perf_counter()
            writes[k](i)
            times[k].append(time.perf_counter() - started)
    for raw in raws:
        raw.close()
    engine.dispose()
    labels = (
        "cnnviz store (add_iteration)",
        "raw sqlite3 executemany",
        "raw, the store's checkpoint policy",
    )
    return [
        (
            label,
            megabytes / statistics.median(series),
            megabytes,
            [r / s for s, r in zip(times[0], series)],
        )
        for label, series in zip(labels, times, strict=True)
    ]


# ---------------------------------------------------------------- peak memory

_MEMORY_CHILD = """
import sys, tempfile, os
sys.path.insert(0, {root!r})
from tracer.train import resolve, prepare, train, run_builtin, one_torch_thread
mode, model, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "plain":
    config = resolve(model_name=model, iterations=iterations)
    with one_torch_thread():
        m, o, c, x, y = prepare(config)
        train(m, o, c, x, y, config)
else:
    options = {{"explain": mode}} if mode != "today" else {{}}
    with tempfile.TemporaryDirectory() as tmp:
        run_builtin(model_name=model, iterations=iterations, db=os.path.join(tmp, "m.db"), **options)
# VmHWM, not ru_maxrss: ru_maxrss carries the parent's peak across fork and exec.
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(int(hwm.split()[1]) / 1024)
"""


def peak_memory(model: str, iterations: int, modes: list[str]) -> list[tuple[str, float]]:
    script = _MEMORY_CHILD.format(root=TREE)
    out = []
    for mode in modes:
        result = subprocess.run(
            [sys.executable, "-c", script, mode, model, str(iterations)],
            capture_output=True,
            text=True,
            check=True,
        )
        out.append((mode, float(result.stdout.strip().splitlines()[-1])))
    return out


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the model and data on it)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the model's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=3, help="iterations per variant per round")
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated: plain, floor, tensorboard, torchlens, BOUND/MODE with BOUND "
        "default|full and MODE inline|background|off, optionally followed by :niceK (the "
        "worker thread at niceness K; default tracer.pipeline.WORKER_NICENESS) and :noinput "
        "(input_grad=False: autograd does not compute dL/d(input)) and :synccopies (on CUDA, "
        "synchronous host copies instead of the side stream's), and MODE@process for the "
        "worker process (background, off) (default: all that apply)",
    )
    parser.add_argument(
        "--writes", type=int, default=15, help="rounds of the write bench (0: skip)"
    )
    parser.add_argument(
        "--memory", type=int, default=0, help="iterations per peak-memory subprocess (0: skip)"
    )
    parser.add_argument(
        "--sustained",
        type=int,
        default=0,
        help="steps of one long default-bound run, against as many plain steps (0: skip)",
    )
    parser.add_argument(
        "--every",
        default="1",
        help="comma-separated: a --sustained run for each, tracing every k-th step (e.g. 1,8)",
    )
    args = parser.parse_args()
    niceness = pipeline.WORKER_NICENESS
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # as built-in runs do: the NumPy explainers on one thread too
    except ImportError:
        pass

    spec = BUILTIN_MODELS[args.model]
    default_bound = spec.max_elements
    modes = MODES if _trace_supports_explain() else ("inline",)
    variants = ["plain", "floor"]
    variants += [f"{b}/{m}" for b in ("default", "full") for m in modes]
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:
        SummaryWriter = None
    if SummaryWriter is not None:
        variants.append("tensorboard")
    try:
        import torchlens  # noqa: F401
    except Exception:
        pass
    else:
        variants.append("torchlens")
    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]

    work = Workload(args.model, args.batch, args.device)
    training: dict[str, list[float]] = {v: [] for v in variants}
    end_to_end: dict[str, list[float]] = {v: [] for v in variants}
    committed: dict[str, list[float]] = {v: [] for v in variants}  # until the last commit
    last_runs: dict[str, Trace] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        arrays = raw_arrays(work)
        floor_mb = sum(a.nbytes for a in arrays) / 1e6
        writer = SummaryWriter(str(tmp / "tb")) if "tensorboard" in variants else None
        counter = [0]
        for _ in range(2):
            work.step()  # warm-up
        for _ in range(args.rounds):
            for variant in variants:
                if variant == "plain":
                    inside, total = run_plain(work, args.block)
                elif variant == "floor":
                    inside, total = run_floor(work, args.block, arrays, tmp)
                elif variant == "tensorboard":
                    inside, total = run_tensorboard(work, args.block, writer, counter)
                elif variant == "torchlens":
                    inside, total = run_torchlens(work, args.block, tmp)
                else:
                    bound_name, mode = variant.split("/")
                    mode, _, worker = mode.partition("@")
                    mode, *flags = mode.split(":")
                    nice = [int(f[4:]) for f in flags if f.startswith("nice")]
                    more = {"input_grad": False} if "noinput" in flags else {}
                    more["synchronous_copies"] = "synccopies" in flags
                    bound = default_bound if bound_name == "default" else None
                    db = tmp / f"{variant.replace('/', '-').replace(':', '-')}.db"
                    pipeline.WORKER_NICENESS = nice[0] if nice else niceness
                    traced = run_traced_in_process if worker == "process" else run_traced
                    inside, total, run = traced(work, args.block, db, bound, mode, **more)
                    pipeline.WORKER_NICENESS = niceness
                    last_runs[variant] = run
                    if getattr(run, "bench_committed", None) is not None:
                        committed[variant].append(run.bench_committed)
                training[variant].append(inside)
                end_to_end[variant].append(total)
        sizes = {
            v: sum(
                p.stat().st_size for p in tmp.glob(f"{v.replace('/', '-').replace(':', '-')}.db*")
            )
            for v in last_runs
        }
        if "tensorboard" in variants:
            writer.flush()
            sizes["tensorboard"] = sum(
                p.stat().st_size for p in (tmp / "tb").rglob("*") if p.is_file()
            )
        if "torchlens" in variants:  # the last round's bundles, one per iteration of a block
            sizes["torchlens"] = sum(
                p.stat().st_size for p in tmp.glob("torchlens*/**/*") if p.is_file()
            )
        if writer is not None:
            writer.close()
        full_record = next(
            (r.records[-1] for v, r in last_runs.items() if v.startswith("full") and r.records),
            None,
        )
        writes = (
            write_speed(full_record, tmp, args.writes)
            if args.writes and full_record is not None
            else []
        )
        sustained = [
            run_sustained(work, args.sustained, tmp / f"sustained-{k}.db", default_bound, int(k))
            for k in (args.every.split(",") if args.sustained else [])
        ]

    plain = statistics.median(end_to_end["plain"]) if "plain" in variants else None
    floor = statistics.median(end_to_end["floor"]) if "floor" in variants else None
    print(f"code measured: {TREE}")
    print(
        f"{args.model}, batch {work.batch}, 1 torch thread, {args.rounds} rounds x {args.block} "
        f"iterations per variant, interleaved; ms per iteration (min / median over rounds)"
    )
    print(f"floor arrays: {len(arrays)} arrays, {floor_mb:.2f} MB per iteration")
    header = f"{'variant':22} {'training thread':>19} {'end to end':>19}   ratios of medians (training / end to end)"
    print(header)
    for variant in variants:
        t_min, t_med = stats(training[variant])
        e_min, e_med = stats(end_to_end[variant])
        ratios = []
        for label, base in (("plain", plain), ("floor", floor)):
            if base and variant not in ("plain",):
                ratios.append(f"{t_med / 1000 / base:5.2f}x / {e_med / 1000 / base:5.2f}x {label}")
        print(
            f"{variant:22} {t_min:8.2f} / {t_med:8.2f} {e_min:8.2f} / {e_med:8.2f}   "
            + ",  ".join(ratios)
        )
    print(
        "per-round ratios (each round's variant / plain or floor of the same round), min / median:"
    )
    for variant in variants:
        if variant in ("plain", "floor"):
            continue
        parts = []
        for label in ("plain", "floor"):
            if label not in variants:
                continue
            columns = [("training", training), ("end to end", end_to_end)]
            if committed[variant]:
                columns.append(("to last commit", committed))
            for what, series in columns:
                ratios = [v / b for v, b in zip(series[variant], end_to_end[label], strict=False)]
                parts.append(f"{what} {min(ratios):.2f} / {statistics.median(ratios):.2f}x {label}")
        print(f"  {variant:20} " + ";  ".join(parts))
    for variant, run in last_runs.items():
        stored = max(run.stored, 1)
        split = ", ".join(f"{k} {1000 * v / stored:.1f} ms" for k, v in run.timings.items())
        per_iteration = sizes[variant] / (args.rounds * args.block)
        print(f"  {variant:20} per stored iteration: {split}; {per_iteration / 1e6:.2f} MB stored")
    if "tensorboard" in sizes:
        per_iteration = sizes["tensorboard"] / (args.rounds * args.block)
        print(f"  {'tensorboard':20} {per_iteration / 1e6:.3f} MB of event file per iteration")
    if "torchlens" in sizes:
        per_iteration = sizes["torchlens"] / args.block
        print(f"  {'torchlens':20} {per_iteration / 1e6:.2f} MB of bundle per iteration")
    if writes:
        print(f"store writes of one full-capture iteration, {args.writes} rounds:")
        for label, speed, megabytes, _ in writes:
            print(f"  {label:36} {speed:8.1f} MB/s ({megabytes:.2f} MB per iteration)")
        for label, _, _, ratios in writes[1:]:
            print(
                f"  store / {label}: ratio of medians {writes[0][1] / speed_of(writes, label):.2f}, "
                f"per round min {min(ratios):.2f} median {statistics.median(ratios):.2f}"
            )
    for one in sustained:
        base = statistics.mean(one["plain"])
        steps = one["traced"]
        half = steps[len(steps) // 2 :]
        print(
            f"one run of {args.sustained} steps at the default bound, background, every "
            f"{one['every']}. step traced (a queue of {one['queue']} traced iterations), "
            f"against {args.sustained} plain steps before and after; mean ms per step:"
        )
        print(
            f"  plain {1000 * base:7.2f};  the whole run {1000 * statistics.mean(steps):7.2f} "
            f"({statistics.mean(steps) / base:5.2f}x);  its second half "
            f"{1000 * statistics.mean(half):7.2f} ({statistics.mean(half) / base:5.2f}x)"
        )
    if args.memory:
        modes_mem = ["plain"] + (list(modes) if _trace_supports_explain() else ["today"])
        print(f"peak resident memory, {args.memory} iterations at the model's defaults:")
        results = peak_memory(args.model, args.memory, modes_mem)
        base = results[0][1]
        for mode, mib in results:
            print(f"  {mode:12} {mib:8.1f} MiB  {mib / base:5.2f}x plain")


if __name__ == "__main__":
    main()
