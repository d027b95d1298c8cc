"""A LeNet-5 iteration page (about 160 heatmaps) keeps the browser responsive.

Drawn all at once, its heatmaps blocked the main thread for seconds in one task;
they are drawn as they come near the viewport, one per task
(assets/heatmap_queue.js). The test loads the page, jumps to its middle and
its end, waits until the heatmaps in view are drawn, and checks the longest main-thread task against
a generous bound (CI has two slow cores): the eager drawing exceeded it
several times over, while what is left (evaluating plotly.min.js, React
mounting the page) stays well under it.
"""

from __future__ import annotations

import numpy as np
import pytest
from dash_helpers import cnnviz_serve, graph_data

from dashapp.tensorview import matrix_view
from storage import RunStore

pytestmark = pytest.mark.browser

LONG_TASK_BOUND_MS = 1500

RECORD_LONG_TASKS = """
window.cnnvizLongTasks = [];
new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
        window.cnnvizLongTasks.push({start: Math.round(entry.startTime), ms: Math.round(entry.duration)});
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


@pytest.fixture(scope="module")
def lenet_store(tmp_path_factory):
    """One traced iteration of the built-in LeNet-5."""
    from tracer.train import run_builtin

    path = tmp_path_factory.mktemp("lenet") / "runs.db"
    run_builtin(model_name="lenet5", seed=0, iterations=1, db=path)
    return path


@pytest.fixture(scope="module")
def base(lenet_store):
    with cnnviz_serve(lenet_store) as url:
        yield url


def open_lenet_page(tab, base: str) -> None:
    """The page, rendered; its ~100 formulas go on typesetting in the background
    (waiting for all of them, as other tests do, would take most of a minute here)."""
    tab.goto(base + "/iteration?run=1&it=1")
    tab.wait_for_selector(".tensor-panel .heatmap", timeout=30_000)
    tab.wait_for_load_state("networkidle", timeout=30_000)


def test_a_lenet_page_never_blocks_the_browser_for_long(page, base):
    page.add_init_script(RECORD_LONG_TASKS)
    open_lenet_page(page, base)
    heatmaps = page.locator(".tensor-panel .heatmap")
    assert heatmaps.count() > 100
    page.wait_for_function(IN_VIEW_DRAWN, timeout=60_000)
    for fraction in (0.5, 1.0):  # jump down the page; what comes into view is drawn there
        page.evaluate("(f) => window.scrollTo(0, f * (document.documentElement.scrollHeight - innerHeight))",
                      fraction)
        page.wait_for_function(IN_VIEW_DRAWN, timeout=60_000)
    long_tasks = page.evaluate("window.cnnvizLongTasks")
    longest = max((task["ms"] for task in long_tasks), default=0)
    assert longest < LONG_TASK_BOUND_MS, f"main thread blocked for {longest} ms: {long_tasks}"
    assert list(page.problems) == []


def test_the_last_heatmap_shows_the_stored_numbers_once_scrolled_to(page, base, lenet_store):
    open_lenet_page(page, base)
    panel = page.locator(".tensor-panel:has(.heatmap)").last
    name = panel.get_attribute("data-tensor")
    with RunStore(lenet_store) as store:
        tensor = store.load_tensor(1, 1, name)
    view = matrix_view(tensor.array, tensor.shape, role=tensor.role)
    assert not panel.locator(".main-svg").count()  # far below the fold: not drawn yet
    (drawn,) = graph_data(panel, ".js-plotly-plot")
    z = [[float("nan") if v is None else v for v in row] for row in drawn["z"]]
    np.testing.assert_array_equal(np.array(z, dtype=np.float64), view.values)
    assert drawn["row0_on_top"] is True
    assert list(page.problems) == []
