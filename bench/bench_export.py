"""Benchmark: `cnnviz export --html` for the seed CNN and LeNet-5 (the `cnnviz trace`
defaults: 3 and 100 iterations): file size, export time, and the load time in headless
Chromium from a file:// URL with the network off (until the formulas in view are
typeset), against the floor of the same page with no run in it (MathJax alone),
interleaved in one process. Also the time to open one iteration (build its steps and
heatmaps, typeset the formulas in view).

    .venv/bin/python bench/bench_export.py --seed-store S.db --lenet-store L.db [--repeats 5]

Each store's run 1 is exported. Prints min and median seconds and ratios to the floor.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dashapp.export import _DOCUMENT, _SCRIPT, MATHJAX, export_html  # noqa: E402
from storage import RunStore  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def floor_page(path: Path) -> None:
    """The export's frame with MathJax and no run: what any such file costs to open."""
    path.write_text(
        _DOCUMENT.format(
            title="floor",
            css="",
            body="<section><div class='tex'>\\[x\\]</div></section>",
            data="",
            mathjax=MATHJAX.read_text(encoding="utf-8"),
            script=_SCRIPT,
        ),
        encoding="utf-8",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed-store", type=Path, required=True)
    parser.add_argument("--lenet-store", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, out, True)  # the exported pages are MBs each
    files = {"floor": out / "floor.html"}
    floor_page(files["floor"])
    for label, store_path in (("seed-cnn", args.seed_store), ("lenet5", args.lenet_store)):
        with RunStore(store_path) as store:
            start = time.perf_counter()
            size = export_html(store, 1, out / f"{label}.html")
            took = time.perf_counter() - start
            its = len(store.iterations(1))
        files[label] = out / f"{label}.html"
        print(f"{label}: {its} iterations, {size / 1e6:.1f} MB, export {took:.1f} s")
    loads: dict[str, list[float]] = {k: [] for k in files}
    opens: dict[str, list[float]] = {k: [] for k in files if k != "floor"}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        for _ in range(args.repeats):
            for label, path in files.items():
                context = browser.new_context(
                    viewport={"width": 1300, "height": 1000}, offline=True
                )
                page = context.new_page()
                start = time.perf_counter()
                page.goto(path.as_uri())
                page.wait_for_selector("body[data-ready='1']", timeout=120_000)
                loads[label].append(time.perf_counter() - start)
                if label != "floor":
                    start = time.perf_counter()
                    page.click("#iteration-2 > summary")
                    page.wait_for_selector("#it2-step0")
                    page.wait_for_function(
                        "() => [...document.querySelectorAll('#it2-step0 .tex')]"
                        ".every(x => x.dataset.typeset === '1')",
                        timeout=120_000,
                    )
                    opens[label].append(time.perf_counter() - start)
                context.close()
        browser.close()
    floor_min, floor_med = min(loads["floor"]), statistics.median(loads["floor"])
    for label, times in loads.items():
        print(
            f"load {label}: min {min(times):.2f} s median {statistics.median(times):.2f} s; "
            f"/floor min {min(times) / floor_min:.2f}x median "
            f"{statistics.median(times) / floor_med:.2f}x"
        )
    for label, times in opens.items():
        print(
            f"open iteration 2 of {label}: min {min(times):.2f} s "
            f"median {statistics.median(times):.2f} s"
        )


if __name__ == "__main__":
    main()
