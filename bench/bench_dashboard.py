"""Benchmark: the dashboard at real-model and thousand-run scale (issue 8).

The store: 1,000 runs of the seed CNN and 5 LeNet-5 runs of 100 iterations each.
It is built once with the Python API in this process (a few runs traced for real,
the rest written as copies of their records through `RunWriter`, which is what a
store of many runs costs the dashboard) and cached under bench/results/, with two
more stores of 10 and 10,000 runs for the runs page's scaling.

Two trees are measured in the same run, alternating page loads: this checkout and a
baseline (`--baseline REV`, default `main`, checked out with `git worktree` under
bench/results/). For each tree:

- in headless Chromium (Playwright, Debian's /usr/bin/chromium) at 1280x1000, the
  runs page, the LeNet-5 iteration page, the seed iteration page and the compare
  page of two LeNet-5 runs: time until the formulas in view are typeset, until the
  heatmaps in view are drawn, until every formula is typeset, the longest main-thread
  task, the bytes the Dash callbacks returned, and how many typeset formulas are cut
  off (wider than their box) at 1280 px;
- in-process (a worker process per tree, Flask's test client, no network): every Dash
  callback those page loads made, replayed `--replays` times: p95 of each;
- the runs page's content callback at 10, 1,000 and 10,000 runs.

Prints each tree's figures (median over `--repeats` page loads) and the ratios
this tree / baseline.

    .venv/bin/python bench/bench_dashboard.py [--repeats 3] [--baseline main]

Needs the test extras (`pip install -e .[test]`), torch (to trace the store once) and
Chromium.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CHROMIUM = os.environ.get("CNNVIZ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 1000}
SEED_RUNS = 1000
SEEDS_TRACED = 4  # seeds 0..3 traced; the other runs are copies of their records
LENET_RUNS = 5
LENET_ITERATIONS = 100
# The runs page at these run counts. At 10 runs it shows 10 rows, from 50 runs on a full
# page of 50: 50 -> 10,000 compares the same rows shown, 10 -> 10,000 is the issue's.
SCALES = (10, 50, 1000, 10_000)

RECORD_LONG_TASKS = """
window.cnnvizLongTasks = [];
new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
        window.cnnvizLongTasks.push({start: entry.startTime, ms: entry.duration});
    }
}).observe({type: 'longtask', buffered: true});
"""

# When the heatmaps and the formulas in view are first shown, each the first
# performance.now() at which everything its selector matches in view holds `done`
# (FIRST_IN_VIEW: {selector: time}, once each has). Both are timed from the same
# frames: waited for one after the other, as until session 6, the heatmaps of a view
# with formulas could not be found drawn before its formulas were typeset.
# - A pair's optional third selector names the element whose box says where a match
#   is: a formula's row (`.formula-row`, with its label), since a formula not typeset
#   yet may have no height of its own. Until session 7 an empty formula box, 0 px tall,
#   did not count as in view, so "formulas in view" held once the first was typeset.
# - The conditions are checked in the frame that would show them: in a ResizeObserver
#   callback (run after layout, before paint) for each drawn heatmap and typeset formula
#   as it comes in, and on every animation frame (for scrolling). Until session 7 they
#   were checked on animation frames only, at the start of a frame: a heatmap drawn in
#   that frame, and painted in it, was found one frame later, and while the page's main
#   thread runs task after task that next frame can be 300 ms away.
WATCH_FIRST_IN_VIEW = """(pairs) => {
    const seen = (window.cnnvizFirstInView = {});
    const check = () => {
        for (const [selector, done, where] of pairs) {
            if (selector in seen) continue;
            const all = Array.from(document.querySelectorAll(selector)).filter((e) => {
                if (e.getClientRects().length === 0) return false;  // not rendered (hidden)
                const box = ((where && e.closest(where)) || e).getBoundingClientRect();
                return box.height > 0 && box.bottom > 0 && box.top < window.innerHeight;
            });
            if (all.length > 0 && all.every((e) => e.querySelector(done))) seen[selector] = performance.now();
        }
        return pairs.every(([selector]) => selector in seen);
    };
    const watched = pairs.map(([selector, done]) => done).join(",");
    const resized = new ResizeObserver(() => check());
    new MutationObserver((records) => {
        for (const record of records) {
            for (const node of record.addedNodes) {
                if (node.nodeType !== 1) continue;
                if (node.matches(watched)) resized.observe(node);
                for (const inner of node.querySelectorAll(watched)) resized.observe(inner);
            }
        }
    }).observe(document, {childList: true, subtree: true});
    const frame = () => { if (!check()) requestAnimationFrame(frame); };
    requestAnimationFrame(frame);
}"""
FIRST_IN_VIEW = """(pairs) => pairs.every(([selector]) => selector in (window.cnnvizFirstInView || {}))
    ? window.cnnvizFirstInView : false"""
ALL_DONE = """([selector, done]) => {
    const all = Array.from(document.querySelectorAll(selector));
    return all.length > 0 && all.every((e) => e.querySelector(done)) ? performance.now() : false;
}"""
CUT_OFF = """() => {
    let cut = 0, total = 0;
    for (const f of document.querySelectorAll('.formula')) {
        const math = f.querySelector('mjx-container');
        if (!math || f.closest('.formula-full')) continue;
        total += 1;
        const box = f.getBoundingClientRect();
        const svg = math.getBoundingClientRect();
        if (math.scrollWidth > f.clientWidth + 1 || svg.right > box.right + 1) cut += 1;
    }
    return {cut, total};
}"""


# ---------------------------------------------------------------- stores


def _copy_runs(source: Path, target: Path, run_ids: list[int], copies: list[tuple[int, str]]):
    """Write runs into `target` whose iterations are `source` runs' records."""
    from storage import RUN_COMPLETED, RunInfo, RunStore, RunWriter, open_engine

    engine = open_engine(target)
    with RunStore(source, readonly=True) as reader:
        cache = {}
        for run_id in run_ids:
            info = reader.get_run(run_id)
            records = [reader.load_iteration(run_id, i.index) for i in reader.iterations(run_id)]
            cache[run_id] = (info, records)
    for source_id, name in copies:
        info, records = cache[source_id]
        new = RunInfo(
            name=name,
            seed=info.seed,
            model_name=info.model_name,
            model_description=info.model_description.split("\n")[0],
            optimizer=info.optimizer,
            optimizer_settings=info.optimizer_settings,
            loss_name=info.loss_name,
            dataset=info.dataset,
            config=info.config,
            torch_version=info.torch_version,
            cnnviz_version=info.cnnviz_version,
        )
        writer = RunWriter.begin(engine, new)
        writer.set_layers(info.layers)
        for record in records:
            writer.add_iteration(record)
        writer.finish(RUN_COMPLETED)
    engine.dispose()


def build_stores() -> dict[int, Path]:
    """{run count: store} for 10, 1,005 (the main store) and 10,000 runs; cached."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    paths = {n: RESULTS / f"dashboard-{n}.db" for n in SCALES}
    if all(p.exists() for p in paths.values()):
        return paths
    from tracer.train import run_builtin

    start = time.perf_counter()
    traced = RESULTS / "dashboard-traced.db"
    if not traced.exists() or not paths[1000].exists():  # else: only a new scale is missing
        traced.unlink(missing_ok=True)
        for seed in range(SEEDS_TRACED):
            run_builtin(seed=seed, db=traced)  # runs 1..4
        run_builtin(model_name="lenet5", seed=0, iterations=LENET_ITERATIONS, db=traced)  # run 5
        print(
            f"traced {SEEDS_TRACED} seed runs and 1 LeNet-5 run"
            f" in {time.perf_counter() - start:.0f} s"
        )
    for count, path in paths.items():
        if path.exists() and paths[1000].exists():
            continue
        writing = path.with_suffix(".writing.db")  # renamed when whole: no half store is kept
        writing.unlink(missing_ok=True)
        seeds = SEED_RUNS if count == 1000 else count
        copies = [(1 + i % SEEDS_TRACED, f"seed-cnn-{i}") for i in range(seeds)]
        _copy_runs(traced, writing, list(range(1, SEEDS_TRACED + 1)), copies)
        if count == 1000:
            lenet = [(SEEDS_TRACED + 1, f"lenet5-{i}") for i in range(LENET_RUNS)]
            _copy_runs(traced, writing, [SEEDS_TRACED + 1], lenet)
        writing.replace(path)
        print(f"store of {count} runs written ({time.perf_counter() - start:.0f} s)")
    return paths


# ---------------------------------------------------------------- serving


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(tree: Path, db: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracer.cli", "serve", "--db", str(db), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tree,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"cnnviz serve ({tree}) exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/", timeout=5):
                return proc, url
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise SystemExit(f"cnnviz serve ({tree}) did not answer")


def store_for(tree: Path, db: Path, name: str) -> Path:
    """`db` as `tree` reads it: a copy upgraded with `cnnviz db upgrade` when the tree's
    schema is newer than the store's (the stores are written once, by the first tree)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    check = [sys.executable, "-c", f"from storage import RunStore; RunStore({str(db)!r}).close()"]
    if subprocess.run(check, env=env, cwd=tree, capture_output=True).returncode == 0:
        return db
    copy = db.with_name(f"{db.stem}-{name}.db")
    if not copy.exists():
        import sqlite3

        with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
    check[-1] = f"from storage import RunStore; RunStore({str(copy)!r}).close()"
    if subprocess.run(check, env=env, cwd=tree, capture_output=True).returncode != 0:
        # a new copy, or one upgraded for an older schema of this tree
        upgrade = [sys.executable, "-m", "tracer.cli", "db", "upgrade", "--db", str(copy)]
        subprocess.run(upgrade, env=env, cwd=tree, check=True, capture_output=True)
    return copy


def baseline_tree(rev: str) -> Path:
    tree = RESULTS / f"baseline-{rev.replace('/', '_')}"
    if not tree.exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev],
            check=True,
            capture_output=True,
        )
    return tree


# ---------------------------------------------------------------- browser


def compare_interactions(page, timeout: int) -> dict:
    """What a reader does on the compare page after it loads: pan side A's window (B
    and the difference follow), type into side B's run picker, go back. Each step
    waits for its answer; a tree without the control (the baseline) skips the step."""
    out = {}
    right = page.locator(
        '.tensor-panel[data-aio="compare-a"] button[title="move the window right"]'
    )
    if right.count():
        start = time.perf_counter()
        right.first.click()
        page.wait_for_url(lambda url: "t." in url, timeout=timeout)
        page.wait_for_load_state("networkidle", timeout=timeout)
        out["pan_ms"] = 1000 * (time.perf_counter() - start)
        page.go_back()
        page.wait_for_load_state("networkidle", timeout=timeout)
    picker = page.locator("#compare-b-run")
    if picker.count():
        picker.click()
        start = time.perf_counter()
        page.get_by_placeholder("Search").first.fill("lenet5-3")
        page.get_by_role("option", name=re.compile("lenet5-3")).first.wait_for(timeout=timeout)
        out["search_ms"] = 1000 * (time.perf_counter() - start)
        page.keyboard.press("Escape")
    return out


NEXT_VIEW_SHOWN = """(before) => {
    const view = document.querySelector('.iteration-view');
    if (!view || view.dataset.view === before) return false;
    const near = (e) => {
        if (e.getClientRects().length === 0) return false;  // not rendered (hidden)
        // a formula not typeset yet may have no height of its own: its row's (FIRST_IN_VIEW)
        const box = (e.closest('.formula-row') || e).getBoundingClientRect();
        return box.height > 0 && box.bottom > 0 && box.top < window.innerHeight;
    };
    const formulas = [...view.querySelectorAll('.formula')].filter(near);
    const heatmaps = [...view.querySelectorAll('.heatmap')].filter(near);
    return formulas.every((f) => f.querySelector('mjx-container'))
        && heatmaps.every((h) => h.querySelector('.main-svg')) ? performance.now() : false;
}"""


def iteration_interactions(page, timeout: int) -> dict:
    """A student's "next" on the iteration page: from the click until the next view's
    formulas and heatmaps in view are typeset and drawn (a tree without it skips this)."""
    out = {}
    following = page.locator("#iteration-next")
    if following.count():
        before = page.locator(".iteration-view").get_attribute("data-view")
        start = page.evaluate("performance.now()")
        following.click()
        shown = page.wait_for_function(
            NEXT_VIEW_SHOWN, arg=before, timeout=timeout, polling="raf"
        ).json_value()
        out["next_view_ms"] = shown - start
        page.wait_for_load_state("networkidle", timeout=timeout)
    return out


# The reader goes to the first step as soon as it is on the page: scrolled there from the
# page itself, in the animation frame the step appears, at once ("instant", not Bootstrap's
# smooth scrolling, whose frames move what is in view while it lasts).
SCROLL_TO_FIRST_STEP = """() => {
    const card = document.querySelector('.step-card');
    if (!card) return false;
    card.scrollIntoView({behavior: 'instant'});
    return performance.now();
}"""


def open_page(page, url: str, timeout: int, *, step: bool, how: str) -> None:
    """Go to `url`; with `step`, scroll to the first step card once it is there.

    "page" (the default): the conditions are polled in the page on every animation frame
    from the moment the navigation commits. "playwright", as sessions 2 and 3 measured:
    after the load event, Playwright waits for the step card (its polls back off to one
    every 500 ms) and then asks for a smooth scroll; each of the three moves the moment
    the heatmaps in view are found drawn by up to a few hundred milliseconds."""
    if how == "page":
        page.goto(url, wait_until="commit")
        if step:
            page.wait_for_function(SCROLL_TO_FIRST_STEP, timeout=timeout, polling="raf")
        return
    page.goto(url)
    if step:
        page.wait_for_selector(".step-card", timeout=timeout)
        page.evaluate("document.querySelector('.step-card').scrollIntoView()")


def measure_page(
    browser, url: str, *, heatmaps: bool, formulas: bool, interact=None, scroll: str = "page"
) -> dict:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.add_init_script(RECORD_LONG_TASKS)
    callbacks = []
    figures = []

    def on_response(response):
        if "/figure/" in response.url:
            figures.append("/figure/" + response.url.split("/figure/", 1)[1])
        if "_dash-update-component" in response.url:
            try:
                size = len(response.body())
            except Exception:  # the page moved on
                size = 0
            callbacks.append({"body": response.request.post_data, "bytes": size})

    page.on("response", on_response)
    out = {"url": url}
    timeout = 120_000
    wanted = {
        "formulas_in_view_ms": [".formula", "mjx-container", ".formula-row"] if formulas else None,
        "heatmaps_in_view_ms": [".heatmap", ".main-svg"] if heatmaps else None,
    }
    pairs = [pair for pair in wanted.values() if pair]
    if pairs:
        page.add_init_script(f"({WATCH_FIRST_IN_VIEW})({json.dumps(pairs)});")
    # with formulas, the first step in view: formulas and heatmaps on screen together
    open_page(
        page,
        url,
        timeout,
        step=formulas,
        how=scroll if heatmaps or formulas else "playwright",  # the runs page: as before
    )
    if pairs:
        first = page.wait_for_function(
            FIRST_IN_VIEW, arg=pairs, timeout=timeout, polling="raf"
        ).json_value()
        out.update({key: first[pair[0]] for key, pair in wanted.items() if pair})
    if not (formulas or heatmaps):
        page.wait_for_selector(".runs-table, .compare-page, .page-title", timeout=timeout)
        out["content_ms"] = page.evaluate("performance.now()")
    page.wait_for_load_state("networkidle", timeout=timeout)
    if formulas:
        out["formulas_all_ms"] = page.wait_for_function(
            ALL_DONE, arg=[".formula", "mjx-container"], timeout=timeout, polling=200
        ).json_value()
        out["formulas"] = page.evaluate(CUT_OFF)
    if interact is not None:
        out.update(interact(page, timeout))
    out["longest_task_ms"] = max(
        (t["ms"] for t in page.evaluate("window.cnnvizLongTasks")), default=0.0
    )
    out["callback_bytes"] = sum(c["bytes"] for c in callbacks)
    out["callbacks"] = [c["body"] for c in callbacks if c["body"]]
    out["figures"] = figures
    out["height_px"] = page.evaluate("document.documentElement.scrollHeight")
    out["heatmap_count"] = page.evaluate("document.querySelectorAll('.heatmap').length")
    context.close()
    return out


# ---------------------------------------------------------------- in-process callbacks


def worker(args) -> None:
    """Replay recorded callback requests in this process (run with PYTHONPATH=tree)."""
    from dashapp.app import create_app
    from dashapp.data import STORE_KEY
    from storage import RunStore

    requests = json.loads(Path(args.worker).read_text())
    app = create_app(args.db)
    client = app.server.test_client()
    client.get("/")  # the first request claims the pages' callbacks
    out = {}
    for label, bodies in requests.items():
        if label == "_figures":
            continue
        for k, body in enumerate(bodies):
            times = []
            for _ in range(args.replays):
                start = time.perf_counter()
                response = client.post(
                    "/_dash-update-component", data=body, content_type="application/json"
                )
                times.append(time.perf_counter() - start)
                assert response.status_code in (200, 204), (label, response.status_code)
            if isinstance(body, dict):  # a figure address (GET), not a callback
                continue
            outputs = json.loads(body).get("output", "?")
            out[f"{label} #{k} {outputs[:60]}"] = sorted(times)
    for label, addresses in requests.get("_figures", {}).items():
        for k, address in enumerate(addresses):
            times = []
            for _ in range(args.replays):
                start = time.perf_counter()
                response = client.get(address)
                times.append(time.perf_counter() - start)
                assert response.status_code == 200, (label, address, response.status_code)
            out[f"{label} figure #{k} {address.split('?')[0][-40:]}"] = sorted(times)
    runs_body = requests.get("runs")
    if runs_body:
        body = runs_body[0]
        stores = {n: RunStore(db, readonly=True) for n, db in zip(SCALES, args.scale_dbs)}
        scaled = {n: [] for n in SCALES}
        cpu = {n: [] for n in SCALES}
        for _ in range(3 * args.replays):  # interleaved: 10, 50, 1,000, 10,000, 10, ...
            for count, store in stores.items():
                app.server.extensions[STORE_KEY] = store
                start, start_cpu = time.perf_counter(), time.process_time()
                client.post("/_dash-update-component", data=body, content_type="application/json")
                cpu[count].append(time.process_time() - start_cpu)
                scaled[count].append(time.perf_counter() - start)
        for count, times in scaled.items():
            out[f"runs page at {count} runs"] = sorted(times)
            # CPU time of this process: what the page costs, whatever else the machine runs
            out[f"runs page at {count} runs, CPU"] = sorted(cpu[count])
    print(json.dumps(out))


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def replay(tree: Path, db: Path, scale_dbs: list[Path], requests: dict, replays: int) -> dict:
    file = RESULTS / f"requests-{tree.name}.json"
    file.write_text(json.dumps(requests))
    env = dict(os.environ, PYTHONPATH=str(tree))
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", str(file), "--db", str(db)]
    argv += ["--replays", str(replays), "--scale-dbs", *map(str, scale_dbs)]
    result = subprocess.run(argv, env=env, cwd=tree, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"callback worker failed ({tree}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- main


def pages(db: Path) -> dict[str, tuple[str, bool, bool]]:
    from storage import RunStore

    with RunStore(db) as store:
        runs = store.list_runs()
    lenet = [r.id for r in runs if r.model_name == "lenet5"]
    seed = [r.id for r in runs if r.model_name == "seed-cnn"]
    return {
        "runs": ("/", False, False),
        # the iteration page opens on the input (heatmaps, no formulas); a layer view is what
        # "next" shows (conv1's forward steps); the backward pass is the longest phase. The
        # baseline shows the whole iteration at each of these addresses.
        "lenet-iteration": (f"/iteration?run={lenet[0]}&it=50", True, False),
        "lenet-layer": (f"/iteration?run={lenet[0]}&it=50&phase=forward&layer=conv1", True, True),
        "lenet-backward": (f"/iteration?run={lenet[0]}&it=50&phase=backward", True, True),
        "seed-iteration": (f"/iteration?run={seed[0]}&it=1&phase=forward", True, True),
        "compare": (f"/compare?a={lenet[0]}:100&b={lenet[1]}:100", True, False),
        # a plane bigger than the window (fc1.weight, 120x400): panning, B and Δ following
        "compare-fc1": (f"/compare?a={lenet[0]}:100&b={lenet[1]}:90&layer=fc1", True, False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="page loads per page and tree")
    parser.add_argument("--replays", type=int, default=20, help="in-process calls per callback")
    parser.add_argument("--baseline", default="main", help="git revision of the baseline")
    parser.add_argument("--only", default="", help="comma-separated page names to measure")
    parser.add_argument(
        "--scroll",
        choices=("page", "playwright"),
        default="page",
        help="how a page with formulas is scrolled to its first step: from the page in the"
        " frame the step appears, at once (default); or as sessions 2-3 measured, Playwright"
        " waiting for the step (its polls back off to 500 ms) and a smooth scroll",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--scale-dbs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from playwright.sync_api import sync_playwright

    stores = build_stores()
    trees = {"baseline": baseline_tree(args.baseline), "this": REPO}
    dbs = {name: {1000: store_for(tree, stores[1000], name)} for name, tree in trees.items()}
    urls = pages(dbs["this"][1000])  # this tree's storage reads the store here
    if args.only:
        urls = {k: v for k, v in urls.items() if k in args.only.split(",")}
    if "runs" in urls:  # the runs page is also measured at 10 and 10,000 runs
        for name, tree in trees.items():
            dbs[name].update({n: store_for(tree, stores[n], name) for n in SCALES})
    servers = {name: serve(tree, dbs[name][1000]) for name, tree in trees.items()}
    results = {name: {page: [] for page in urls} for name in trees}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
            )
            for _ in range(args.repeats):
                for page_name, (path, heatmaps, formulas) in urls.items():
                    for name in trees:  # interleaved: baseline, this, baseline, this...
                        base = servers[name][1]
                        r = measure_page(
                            browser,
                            base + path,
                            heatmaps=heatmaps,
                            formulas=formulas,
                            scroll=args.scroll,
                            interact=compare_interactions
                            if page_name.startswith("compare")
                            else iteration_interactions
                            if page_name == "lenet-layer"
                            else None,
                        )
                        results[name][page_name].append(r)
            browser.close()
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a loaded machine: the measurements are kept
                proc.kill()
                proc.wait()
    (RESULTS / "dashboard-pages.json").write_text(json.dumps(results))

    callbacks = {}
    for name, tree in trees.items():
        requests = {page: results[name][page][0]["callbacks"] for page in urls}
        requests["_figures"] = {page: results[name][page][0]["figures"] for page in urls}
        scale_dbs = [dbs[name].get(n, dbs[name][1000]) for n in SCALES]
        callbacks[name] = replay(tree, dbs[name][1000], scale_dbs, requests, args.replays)

    keys = (
        "content_ms",
        "formulas_in_view_ms",
        "heatmaps_in_view_ms",
        "formulas_all_ms",
        "longest_task_ms",
        "pan_ms",
        "search_ms",
        "next_view_ms",
        "callback_bytes",
        "height_px",
        "heatmap_count",
    )
    print(
        f"\nBrowser, {VIEWPORT['width']} px wide, median of {args.repeats} loads (baseline -> this, ratio)"
    )
    for page_name in urls:
        print(f"  {page_name}: {urls[page_name][0]}")
        for key in keys:
            values = {
                name: [r[key] for r in results[name][page_name] if key in r] for name in trees
            }
            if not values["this"] or not values["baseline"]:
                if values["this"]:  # the baseline has no such step
                    print(f"    {key:22s} {'-':>12s} -> {statistics.median(values['this']):12.0f}")
                continue
            b = statistics.median(values["baseline"])
            t = statistics.median(values["this"])
            ratio = f"{t / b:.2f}" if b else "-"
            print(
                f"    {key:22s} {b:12.0f} -> {t:12.0f}   x{ratio}  (min {min(values['this']):.0f})"
            )
        for name in trees:
            f = results[name][page_name][0].get("formulas")
            if f:
                print(f"    cut-off formulas ({name}): {f['cut']} of {f['total']}")
    for name in trees:
        print(
            f"\nIn-process callbacks ({name}), {args.replays} calls each: p95 / median / max ms"
            " (max: the first call, before anything is cached)"
        )
        for label, times in callbacks[name].items():
            print(
                f"  {label:80s} {1000 * p95(times):8.1f} {1000 * statistics.median(times):8.1f}"
                f" {1000 * max(times):8.1f}"
            )
    if "runs" not in urls:
        return
    print(
        "\nRuns page callback, median (min) ms at 10 / 50 / 1,000 / 10,000 runs; 10,000 / 10"
        " (10 rows shown against 50) and 10,000 / 50 (50 rows each) ratios of medians (mins)"
    )
    for name in trees:
        for kind in ("", ", CPU"):
            times = [callbacks[name][f"runs page at {n} runs{kind}"] for n in SCALES]
            med = [statistics.median(t) for t in times]
            low = [min(t) for t in times]
            print(
                f"  {name + (' CPU' if kind else ' wall'):13s} "
                + " / ".join(f"{1000 * m:.1f} ({1000 * lo:.1f})" for m, lo in zip(med, low))
                + f"   x{med[3] / med[0]:.2f} ({low[3] / low[0]:.2f})"
                + f"   x{med[3] / med[1]:.2f} ({low[3] / low[1]:.2f})"
            )


if __name__ == "__main__":
    main()
