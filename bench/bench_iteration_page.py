"""Benchmark: how long the heaviest LeNet-5 iteration view, the whole backward pass
(`&phase=backward`, the most heatmaps on one page), blocks the browser.

Traces one LeNet-5 iteration (the `cnnviz trace --model lenet5` defaults), serves
it with `cnnviz serve`, and opens the iteration page in headless Chromium
(Playwright, with Debian's /usr/bin/chromium). A PerformanceObserver records
every main-thread task over 50 ms while the page loads, and while it jumps to
the middle and to the end of the page and waits there for the heatmaps in view.

The baseline, measured afterwards in the same browser on the same page: all its
heatmaps drawn at once in one task, as dcc.Graph drew them before they were
drawn lazily (assets/heatmap_queue.js). Prints, per page load and as medians,
the longest task and the total blocking time (the sum over long tasks of their
time beyond 50 ms) of the whole visit (loading plotly.js, rendering the page,
typesetting formulas, drawing the heatmaps that came into view) and of the
baseline, which draws heatmaps only; and the ratios visit / baseline.

    .venv/bin/python bench/bench_iteration_page.py [--repeats 3]

Needs the test extras (`pip install -e .[test]`, done by scripts/test.sh) and Chromium.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHROMIUM = os.environ.get("CNNVIZ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

RECORD_LONG_TASKS = """
window.cnnvizLongTasks = [];
new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
        window.cnnvizLongTasks.push({start: entry.startTime, ms: entry.duration});
    }
}).observe({type: 'longtask', buffered: true});
"""

IN_VIEW_DRAWN = """() => {
    const inView = Array.from(document.querySelectorAll('.tensor-panel .heatmap')).filter((h) => {
        const box = h.getBoundingClientRect();
        return box.bottom > 0 && box.top < window.innerHeight;
    });
    return inView.length > 0 && inView.every((h) => h.querySelector('.main-svg'));
}"""

# Every heatmap's figure drawn into a fresh element, all in one task of the page
# (scheduled with setTimeout: what DevTools evaluates is not reported as a long task).
DRAW_ALL_AT_ONCE = """() => new Promise((resolve) => {
  const scheduled = performance.now();
  setTimeout(() => {
    const slots = Array.from(document.querySelectorAll('.heatmap-slot[data-figure]'));
    const box = document.createElement('div');
    document.body.appendChild(box);
    for (const slot of slots) {
        const figure = JSON.parse(slot.getAttribute('data-figure'));
        const config = JSON.parse(slot.getAttribute('data-config') || '{}');
        const target = document.createElement('div');
        box.appendChild(target);
        window.Plotly.newPlot(target, figure.data || [], figure.layout || {}, config);
    }
    resolve({count: slots.length, scheduled: scheduled});
  }, 0);
})"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"cnnviz serve exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise SystemExit(f"cnnviz serve did not answer on {url}")


def blocking(tasks: list[dict]) -> tuple[float, float]:
    """The longest task and the total blocking time, in ms."""
    return max((t["ms"] for t in tasks), default=0.0), sum(max(t["ms"] - 50, 0) for t in tasks)


def measure(browser, url: str) -> dict:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.add_init_script(RECORD_LONG_TASKS)
    page.goto(url)
    page.wait_for_selector(".tensor-panel .heatmap", timeout=60_000)
    page.wait_for_load_state("networkidle", timeout=60_000)
    page.wait_for_function(IN_VIEW_DRAWN, timeout=60_000)
    for fraction in (0.5, 1.0):
        page.evaluate(
            "(f) => window.scrollTo(0, f * (document.documentElement.scrollHeight - innerHeight))",
            fraction,
        )
        page.wait_for_function(IN_VIEW_DRAWN, timeout=60_000)
    lazy = page.evaluate("window.cnnvizLongTasks")
    drawn = page.evaluate("""() => Array.from(document.querySelectorAll('.tensor-panel .heatmap'))
        .filter((h) => h.querySelector('.main-svg')).length""")
    marker = page.evaluate(DRAW_ALL_AT_ONCE)
    page.wait_for_timeout(1000)  # the long-task entry arrives after the task ends
    eager = [
        t for t in page.evaluate("window.cnnvizLongTasks") if t["start"] >= marker["scheduled"]
    ]
    context.close()
    return {
        "lazy": blocking(lazy),
        "eager": blocking(eager),
        "heatmaps": marker["count"],
        "drawn": drawn,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="page loads measured (default 3)")
    args = parser.parse_args()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit(
            "bench_iteration_page: needs playwright (pip install -e .[test])"
        ) from None
    if not Path(CHROMIUM).exists():
        raise SystemExit(
            f"bench_iteration_page: no Chromium at {CHROMIUM} (apt-get install chromium)"
        )

    from tracer.train import run_builtin

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "runs.db"
        run_builtin(model_name="lenet5", seed=0, iterations=1, db=db)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tracer.cli", "serve", "--db", str(db), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/", proc)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
                )
                results = [
                    measure(browser, f"http://127.0.0.1:{port}/iteration?run=1&it=1&phase=backward")
                    for _ in range(args.repeats)
                ]
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    print(
        f"LeNet-5 iteration page, {results[0]['heatmaps']} heatmaps, headless Chromium, "
        f"{args.repeats} page loads"
    )
    for i, r in enumerate(results, 1):
        print(
            f"  load {i}: whole visit ({r['drawn']} heatmaps drawn lazily): "
            f"longest task {r['lazy'][0]:5.0f} ms, blocking {r['lazy'][1]:5.0f} ms | "
            f"all heatmaps at once: longest {r['eager'][0]:5.0f} ms, blocking {r['eager'][1]:5.0f} ms"
        )
    lazy_longest = statistics.median(r["lazy"][0] for r in results)
    eager_longest = statistics.median(r["eager"][0] for r in results)
    lazy_blocking = statistics.median(r["lazy"][1] for r in results)
    eager_blocking = statistics.median(r["eager"][1] for r in results)
    print(
        f"  medians: longest task    whole visit {lazy_longest:5.0f} ms, all heatmaps at once "
        f"{eager_longest:5.0f} ms, ratio {lazy_longest / eager_longest:.2f}"
    )
    print(
        f"           total blocking  whole visit {lazy_blocking:5.0f} ms, all heatmaps at once "
        f"{eager_blocking:5.0f} ms, ratio {lazy_blocking / eager_blocking:.2f}"
    )


if __name__ == "__main__":
    main()
