"""Benchmark: the store for a team (issue 9), on SQLite and on PostgreSQL.

Three figures, each on a SQLite file and on a throwaway PostgreSQL server started
from Debian's `postgresql` package (tests/pg_server.py):

1. writers: `--writers` processes (default 8) each write `--iterations` (50)
   iterations of one run into one store at once, through `Store.open(..., "w")`;
   an iteration is 60 tensors and 23 steps, the shape of a seed-CNN iteration.
   Reports iterations stored / expected (lost = expected - stored), lock errors
   and wall time.
2. kills: `--kills` times (default 30), a writer process is SIGKILLed at a random
   moment 0.05-1.5 s after its run began; afterwards the store must pass the integrity check, and
   every committed iteration must be whole: all its tensors and steps, bytes that
   decode, `num_iterations` equal to the iterations stored. The dead run must read
   as `stale`.
3. load: `--clients` (default 50) HTTP clients for `--seconds` (default 60) against
   the dashboard (`--server-settings`: default `cnnviz serve` as shipped, or gunicorn
   options) while `cnnviz trace` keeps writing into the same store. Each client loops
   over the runs page, a seed-CNN iteration page and a LeNet-5 iteration page,
   POSTing the Dash page-content callback (what a browser asks for when it opens the
   page). By default clients start at random moments, pause exponentially
   distributed times (`--think` is the mean) and ask for any view of any iteration
   (`--arrivals synchronised`: all at once with fixed pauses; `--pages hot`: the same
   three pages). Reports p50/p95 per page, answers per second, errors, the 1-minute
   load average during the run, and each page's cost for one client alone (measured
   first, under the same trace; first visits apart): on a machine with few cores, 50
   clients queue behind that. `--baseline REV` serves that revision too, under the
   same load on the same store, right after this tree.

    .venv/bin/python bench/bench_store.py [--kills 30] [--seconds 60] [--only sqlite]
    .venv/bin/python bench/bench_store.py --skip writers kills --baseline 8a39736 \
        [--think 5] [--arrivals synchronised] [--pages hot]

Numbers are for the machine they run on: report the load figures with the core
count and what else was running.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402
import pg_server  # noqa: E402

from storage import RunInfo, Store  # noqa: E402
from storage.records import IterationRecord, StepRecord, TensorRecord  # noqa: E402

PYTHON = sys.executable
# One client alone walks the first of each kind's addresses round and round: its first
# visit of each is reported apart from the later ones (what a server may have kept).
ALONE_ADDRESSES = 10
# `cnnviz serve` as shipped: the default production settings (docs/team.md).
DEFAULT_SERVER = "serve"
TENSORS, STEPS = 60, 23


def make_iteration(index: int, rng: np.random.Generator) -> IterationRecord:
    tensors = [
        TensorRecord(f"t{k}", "activation", rng.standard_normal(64 + 16 * k).astype(np.float32))
        for k in range(TENSORS)
    ]
    steps = [
        StepRecord(
            "layer",
            "forward",
            f"step {k}",
            "y = x",
            "y = 1",
            inputs=[f"t{k}"],
            outputs=[f"t{k + 1}"],
            reference="bench",
            max_abs_diff=0.0,
            verified=True,
        )
        for k in range(STEPS)
    ]
    return IterationRecord(index=index, loss=float(rng.random()), tensors=tensors, steps=steps)


def writer_main(location: str, iterations: int, seed: int) -> None:
    """One writer process: a run of `iterations` iterations (0 = until killed)."""
    rng = np.random.default_rng(seed)
    with Store.open(location, mode="w") as store:
        writer = store.begin_run(RunInfo(name=f"writer-{seed}", seed=seed))
        index = 0
        while iterations == 0 or index < iterations:
            index += 1
            writer.add_iteration(make_iteration(index, rng))
        writer.finish()


def spawn_writer(location: str, iterations: int, seed: int) -> subprocess.Popen:
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/bench']\n"
        "from bench_store import writer_main\n"
        "writer_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))\n"
    )
    return subprocess.Popen(
        [PYTHON, "-c", code, str(REPO), location, str(iterations), str(seed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


# ---------------------------------------------------------------- 1. writers


def bench_writers(location: str, writers: int, iterations: int) -> dict:
    start = time.perf_counter()
    procs = [spawn_writer(location, iterations, seed) for seed in range(writers)]
    errors = []
    for proc in procs:
        _, err = proc.communicate(timeout=1800)
        if proc.returncode:
            errors.append(
                err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
            )
    wall = time.perf_counter() - start
    with Store.open(location) as store:
        runs = store.list_runs()
        stored = sum(len(store.iterations(r.id)) for r in runs)
        whole = all(r.num_iterations == iterations and r.status == "completed" for r in runs)
    expected = writers * iterations
    return dict(
        expected=expected,
        stored=stored,
        lost=expected - stored,
        errors=errors,
        runs_complete=whole,
        wall_s=round(wall, 1),
    )


# ---------------------------------------------------------------- 2. kills


def check_whole(location: str) -> tuple[bool, str]:
    with Store.open(location) as store:
        integrity = store.integrity_check()
        if integrity != "ok":
            return False, f"integrity: {integrity}"
        for run in store.list_runs():
            summaries = store.iterations(run.id)
            if run.num_iterations != len(summaries):
                return False, f"run {run.id}: {run.num_iterations} counted, {len(summaries)} stored"
            if [s.index for s in summaries] != list(range(1, len(summaries) + 1)):
                return False, f"run {run.id}: iterations not contiguous"
            if run.status not in ("stale", "completed"):
                return False, f"run {run.id}: status {run.status}"
            for summary in summaries:
                record = store.load_iteration(run.id, summary.index)
                if len(record.tensors) != TENSORS or len(record.steps) != STEPS:
                    return False, f"run {run.id} iteration {summary.index} is not whole"
                for k, tensor in enumerate(record.tensors):
                    if tensor.array.size != 64 + 16 * int(tensor.name[1:]):
                        return False, f"run {run.id} tensor {k} has the wrong size"
    return True, "ok"


def _run_count(location: str) -> int:
    with Store.open(location) as store:
        return len(store.list_runs())


def bench_kills(location: str, kills: int, rng: random.Random) -> dict:
    intact, problems, committed = 0, [], []
    Store.open(location, mode="w").close()  # the schema, so that a check can follow any kill
    for k in range(kills):
        proc = spawn_writer(location, 0, 1000 + k)
        deadline = time.monotonic() + 120
        while _run_count(location) <= k and proc.poll() is None:  # its run has begun
            if time.monotonic() > deadline:
                raise SystemExit("a writer did not begin its run within 120 s")
            time.sleep(0.02)
        time.sleep(rng.uniform(0.05, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        ok, why = check_whole(location)
        intact += ok
        if not ok:
            problems.append(f"kill {k + 1}: {why}")
    with Store.open(location) as store:
        runs = store.list_runs()
        committed = [r.num_iterations for r in runs]
        stale = sum(r.status == "stale" for r in runs)
    return dict(
        kills=kills,
        intact_after=intact,
        problems=problems[:5],
        stale_runs=stale,
        committed_iterations_total=sum(committed),
        runs_with_no_iteration=sum(c == 0 for c in committed),
    )


# ---------------------------------------------------------------- 3. load


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cnnviz(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "tracer.cli", *args], cwd=REPO, env=env, capture_output=True, text=True
    )


def build_load_store(location: str) -> dict[str, list[tuple[str, str]]]:
    """The store the dashboard serves under load, and the addresses of each kind of page
    the clients ask for: the runs page (a few sorts and filters), and every view of every
    iteration (input, each layer of each phase, what if) of the seed-CNN runs and of
    the LeNet-5 run, as the student's "next" walks them. The first address of each
    kind is the one a `--pages hot` client asks for every time."""
    for args in (
        ["--seed", "0"],
        ["--seed", "1"],
        ["--model", "lenet5", "--iterations", "3", "--seed", "0"],
    ):
        result = cnnviz("trace", "--db", location, *args)
        if result.returncode:
            raise SystemExit(f"tracing failed: {result.stderr[-2000:]}")
    from dashapp.steps import INPUT, sections, walk

    def views(store, run) -> list[tuple[str, str]]:
        layers = {layer.name: layer for layer in run.layers}
        out = []
        for it in range(1, run.num_iterations + 1):
            parts = sections(store.load_iteration(run.id, it, with_data=False).steps, layers)
            for view in walk(parts):
                search = f"?run={run.id}&it={it}"
                if view.phase != INPUT:
                    search += f"&phase={view.phase}" + (
                        f"&layer={view.layer}" if view.layer else ""
                    )
                out.append(("/iteration", search))
        return out

    with Store.open(location) as store:
        runs = [store.get_run(r.id) for r in store.list_runs()]
        seeds = [r for r in runs if r.model_name == "seed-cnn"]
        lenet = next(r for r in runs if r.model_name == "lenet5")
        seed_views = [v for run in seeds for v in views(store, run)]
        # the hot address first: iteration 2's input view, as before
        hot = ("/iteration", f"?run={seeds[0].id}&it=2")
        lenet_views = views(store, lenet)
        lenet_hot = ("/iteration", f"?run={lenet.id}&it=2")
    runs_pages = ["", "?sort=loss&order=desc", "?sort=name", "?model=seed-cnn", "?per=25"]
    return {
        "runs": [("/", search) for search in runs_pages],
        "seed iteration": [hot, *(v for v in seed_views if v != hot)],
        "lenet5 iteration": [lenet_hot, *(v for v in lenet_views if v != lenet_hot)],
    }


def page_bodies(base: str, pages: dict) -> dict[str, list[bytes]]:
    """The POST body of the Dash page-content callback for each address of each kind."""
    deps = json.loads(urllib.request.urlopen(f"{base}/_dash-dependencies", timeout=60).read())
    dep = next(d for d in deps if "_pages_content.children" in d["output"])
    outputs = [
        {"id": o.rsplit(".", 1)[0], "property": o.rsplit(".", 1)[1]}
        for o in dep["output"].strip(".").split("...")
    ]
    bodies = {}
    for label, addresses in pages.items():
        bodies[label] = []
        for path, search in addresses:
            values = {"pathname": path, "search": search, "hash": "", "href": base + path + search}
            body = dict(
                output=dep["output"],
                outputs=outputs,
                inputs=[dict(i, value=values.get(i["property"])) for i in dep["inputs"]],
                changedPropIds=[f"{dep['inputs'][0]['id']}.{dep['inputs'][0]['property']}"],
                state=[dict(s, value=None) for s in dep.get("state", [])],
            )
            bodies[label].append(json.dumps(body).encode())
    return bodies


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _server_command(settings: str, port: int) -> list[str]:
    """`serve`: `cnnviz serve` as shipped (its gunicorn settings in dashapp/server.py);
    anything else: gunicorn with those options on the same WSGI app."""
    if settings == "serve":
        return [PYTHON, "-m", "tracer.cli", "serve", "--port", str(port)]
    gunicorn = Path(PYTHON).with_name("gunicorn")
    return [str(gunicorn), *settings.split(), "--bind", f"127.0.0.1:{port}", "dashapp.wsgi:server"]


def _timed(base: str, body: bytes) -> float:
    start = time.perf_counter()
    _post(base, body)
    return time.perf_counter() - start


def _page_figures(samples: dict[str, list[float]]) -> dict:
    return {
        label: dict(
            requests=len(times),
            p50_ms=round(1000 * statistics.median(times), 1) if times else None,
            p95_ms=round(1000 * percentile(times, 0.95), 1) if times else None,
            p99_ms=round(1000 * percentile(times, 0.99), 1) if times else None,
            max_ms=round(1000 * max(times), 1) if times else None,
        )
        for label, times in samples.items()
    }


def bench_load(
    location: str,
    clients: int,
    seconds: float,
    settings: list[str],
    *,
    trees: dict[str, Path] | None = None,
    baseline_seconds: float = 15,
    think: float = 0.0,
    arrivals: str = "random",
    pages_mode: str = "spread",
    seed: int = 0,
) -> list[dict]:
    """One store, then each server setting in turn (in the order given: repeat them to
    interleave) and, for each, each tree (this checkout and a baseline: the same load
    on the same store, one after the other, in turns ABBA...: the first run on a new
    store meets colder caches), each under the same load (`load_once`)."""
    pages = build_load_store(location)
    trees = trees or {"this": REPO}
    out = []
    for turn, one in enumerate(settings):
        for name, tree in list(trees.items())[:: -1 if turn % 2 else 1]:
            result = load_once(
                location,
                pages,
                clients,
                seconds,
                one,
                baseline_seconds,
                think,
                tree=tree,
                arrivals=arrivals,
                pages_mode=pages_mode,
                seed=seed,
            )
            out.append({"tree": name, **result})
    return out


def _start_server(tree: Path, settings: str, location: str) -> tuple:
    port = free_port()
    env = dict(os.environ, CNNVIZ_DB=location, PYTHONPATH=str(tree))
    # The server's log goes to a file: a pipe nobody reads fills up and stalls it.
    log_path = Path(tempfile.mkstemp(prefix="cnnviz-gunicorn-", suffix=".log")[1])
    log = log_path.open("w")
    server = subprocess.Popen(
        _server_command(settings, port), cwd=tree, env=env, stdout=log, stderr=log, text=True
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(base + "/", timeout=10).read()
            return server, base, log, log_path
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"the server did not start: {log_path.read_text()[-2000:]}"
                ) from None
            time.sleep(0.5)


def load_once(
    location: str,
    pages: dict,
    clients: int,
    seconds: float,
    settings: str,
    baseline_seconds: float,
    think: float,
    *,
    tree: Path = REPO,
    arrivals: str = "random",
    pages_mode: str = "spread",
    seed: int = 0,
) -> dict:
    """`clients` closed-loop clients (a request, its answer, a pause, the next) for
    `seconds`, while a trace writes. Each client asks for the runs page, a seed-CNN
    iteration page and a LeNet-5 iteration page in turn.

    - `arrivals="random"` (what load generators such as Locust's `between` or wrk2 do):
      each client starts at a random moment within the first pause (or second) and
      pauses an exponentially distributed time of mean `think` between requests.
      `"synchronised"`: every client starts at once and pauses exactly `think`, so with a
      pause they arrive in waves of `clients` requests at the same instant.
    - `pages_mode="spread"`: each request is a random address of its kind (every view of
      every iteration, a few runs-page sorts), from a fixed-seed generator per client,
      so a server-side cache is measured on many pages; `"hot"`: always the first
      address of each kind (the same three pages).

    Before them, one client alone for `baseline_seconds` under the same trace, walking
    the first `ALONE_ADDRESSES` of each kind's addresses round and round (its first
    visit of an address is reported apart: nothing is kept yet): each page's own cost on this machine, which bounds what 50
    clients can get (they queue for the same cores)."""
    server, base, log, log_path = _start_server(tree, settings, location)
    trace = None
    try:
        bodies = page_bodies(base, pages)
        if pages_mode == "hot":
            bodies = {label: addresses[:1] for label, addresses in bodies.items()}
        # Every worker builds its app on its first request: warm them on other pages
        # than those measured (the not-found page), so that nothing measured is kept.
        warm = page_bodies(base, {"warm": [("/nowhere", "")]})["warm"][0]
        for _ in range(8):
            _post(base, warm)
        trace = subprocess.Popen(
            [PYTHON, "-m", "tracer.cli", "trace", "--db", location, "--epochs", "100000"],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 180
        while _writing(location) is None:  # the load starts once the trace writes
            if trace.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the background trace did not start writing")
            time.sleep(0.2)
        labels = list(bodies)
        alone: dict[str, list[float]] = {label: [] for label in bodies}
        alone_first: dict[str, list[float]] = {label: [] for label in bodies}
        stop_at = time.monotonic() + baseline_seconds
        turn = 0
        while time.monotonic() < stop_at:
            for label in labels:
                addresses = bodies[label][:ALONE_ADDRESSES]
                timed = _timed(base, addresses[turn % len(addresses)])
                (alone_first if turn < len(addresses) else alone)[label].append(timed)
            turn += 1
        written_before = _writing(location)
        samples: dict[str, list[float]] = {label: [] for label in bodies}
        asked: dict[str, set[int]] = {label: set() for label in bodies}
        errors: list[str] = []
        loads: list[float] = []
        started = time.monotonic()
        stop_at = started + seconds

        def client(k: int) -> None:
            rng = random.Random(seed * 100_003 + k)
            turn = k if arrivals == "synchronised" else rng.randrange(len(labels))
            if arrivals == "random":
                time.sleep(rng.uniform(0, think or 1.0))
            while time.monotonic() < stop_at:
                label = labels[turn % len(labels)]
                turn += 1
                pick = rng.randrange(len(bodies[label]))
                asked[label].add(pick)
                try:
                    samples[label].append(_timed(base, bodies[label][pick]))
                except Exception as exc:  # counted, not fatal
                    errors.append(f"{label}: {type(exc).__name__}: {exc}"[:200])
                if think:
                    time.sleep(rng.expovariate(1 / think) if arrivals == "random" else think)

        def sample_load() -> None:
            while time.monotonic() < stop_at:
                loads.append(os.getloadavg()[0])
                time.sleep(5)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        threads.append(threading.Thread(target=sample_load))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        written = (_writing(location) or 0) - written_before
    finally:
        if trace is not None:
            trace.send_signal(signal.SIGTERM)
            trace.wait(timeout=60)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a loaded machine: the figures are kept
            server.kill()
            server.wait()
        log.close()
    worker_timeouts = log_path.read_text().count("WORKER TIMEOUT")
    answered = sum(len(times) for times in samples.values())
    return dict(
        server_log=str(log_path),  # kept: what the server said about any errors
        worker_timeouts=worker_timeouts,
        server="cnnviz serve" if settings == "serve" else f"gunicorn {settings}",
        tree_path=str(tree),
        clients=clients,
        seconds=seconds,
        think_s=think,
        arrivals=arrivals,
        pages_asked=pages_mode,
        addresses={label: len(addresses) for label, addresses in bodies.items()},
        addresses_asked={label: len(picked) for label, picked in asked.items()},
        load_average_1min=dict(
            min=round(min(loads), 1),
            mean=round(statistics.mean(loads), 1),
            max=round(max(loads), 1),
        )
        if loads
        else None,
        trace_iterations_written_meanwhile=written,
        answers_per_s=round(answered / elapsed, 1),
        errors=len(errors),
        first_errors=errors[:3],
        one_client_alone=_page_figures(alone),
        one_client_alone_first_visit=_page_figures(alone_first),
        pages=_page_figures(samples),
    )


def _writing(location: str) -> int | None:
    """Iterations of the run being traced, once it has stored one."""
    with Store.open(location) as store:
        counts = [r.num_iterations for r in store.list_runs() if r.status == "running"]
    return counts[0] if counts and counts[0] > 0 else None


def _post(base: str, body: bytes) -> None:
    request = urllib.request.Request(
        f"{base}/_dash-update-component",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--server-settings",
        nargs="+",
        default=[DEFAULT_SERVER],
        help="'serve' (cnnviz serve as shipped) or gunicorn options, e.g. '--workers 2'; "
        "several are run in turn on one store",
    )
    parser.add_argument("--baseline-seconds", type=float, default=15)
    parser.add_argument(
        "--think", type=float, default=0.0, help="seconds between a client's requests (mean)"
    )
    parser.add_argument(
        "--arrivals",
        choices=["random", "synchronised"],
        default="random",
        help="random: random start, exponential pauses (Locust/wrk2-like); synchronised: "
        "every client at once, fixed pauses (waves of --clients requests)",
    )
    parser.add_argument(
        "--pages",
        choices=["spread", "hot"],
        default="spread",
        help="spread: any view of any iteration, a few runs-page sorts; hot: the same 3 pages",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="git revision also served, after this tree, under the same load (a worktree "
        "under bench/results/), e.g. 8a39736",
    )
    parser.add_argument("--only", choices=["sqlite", "postgresql"], default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["writers", "kills", "load"])
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill times")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    trees = {"this": REPO}
    if args.baseline:
        trees["baseline"] = baseline_tree(args.baseline)
    report: dict = {"cores": os.cpu_count(), "load_average": os.getloadavg()}
    server = None
    tmp = Path(tempfile.mkdtemp(prefix="cnnviz-bench-store-"))
    try:
        backends = ["sqlite", "postgresql"] if args.only is None else [args.only]
        if "postgresql" in backends:
            server = pg_server.PgServer().start()

        def location(name: str, backend: str) -> str:
            if backend == "sqlite":
                return str(tmp / f"{name}.db")
            return server.create_database()

        for backend in backends:
            out = report.setdefault(backend, {})
            if "writers" not in args.skip:
                out["writers"] = bench_writers(
                    location("writers", backend), args.writers, args.iterations
                )
                print(backend, "writers", json.dumps(out["writers"]), flush=True)
            if "kills" not in args.skip:
                out["kills"] = bench_kills(location("kills", backend), args.kills, rng)
                print(backend, "kills", json.dumps(out["kills"]), flush=True)
            if "load" not in args.skip:
                out["load"] = bench_load(
                    location("load", backend),
                    args.clients,
                    args.seconds,
                    args.server_settings,
                    trees=trees,
                    baseline_seconds=args.baseline_seconds,
                    think=args.think,
                    arrivals=args.arrivals,
                    pages_mode=args.pages,
                    seed=args.seed,
                )
                for one in out["load"]:
                    print(backend, "load", json.dumps(one), flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the SQLite stores: tens of MB per run
    print(json.dumps(report, indent=1))
    print_load_summary(report)


def baseline_tree(rev: str) -> Path:
    """A worktree of `rev` under bench/results/ (made once, as bench_dashboard.py does)."""
    tree = REPO / "bench" / "results" / f"baseline-{rev.replace('/', '_')}"
    if not tree.exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev],
            check=True,
            capture_output=True,
        )
    return tree


def print_load_summary(report: dict) -> None:
    """One line per load run: p50 / p95 ms of runs, seed iteration, LeNet-5 iteration."""
    for backend in ("sqlite", "postgresql"):
        runs = report.get(backend, {}).get("load", [])
        if runs:
            print(f"\n{backend}: p50 / p95 ms (runs, seed iteration, LeNet-5 iteration)")
        for one in runs:

            def cells(figures: dict, key: str) -> str:
                return " / ".join(f"{figures[k][key]}" for k in figures)

            alone = one["one_client_alone"]
            first = one["one_client_alone_first_visit"]
            print(
                f"  {one['tree']:8s} {one['arrivals']:12s} {one['pages_asked']:6s} think {one['think_s']}s"
                f" [load {one['load_average_1min']}]: "
                f"{one['clients']} clients p50 {cells(one['pages'], 'p50_ms')}, "
                f"p95 {cells(one['pages'], 'p95_ms')}; {one['answers_per_s']} answers/s, "
                f"{one['errors']} errors; alone p50 {cells(alone, 'p50_ms')}, "
                f"first visit p50 {cells(first, 'p50_ms')}"
            )


if __name__ == "__main__":
    main()
