"""The backward pass of a LeNet-5 iteration (about 70 heatmaps) draws its heatmaps lazily.

Drawn all at once, its heatmaps blocked the main thread for seconds in one task;
they are now drawn as they come near the viewport, one per task
(assets/heatmap_queue.js). These tests check that behaviour: what is near the
viewport is drawn, what is far from it is not (yet), and a heatmap scrolled to
shows the stored numbers. How long the browser is blocked is measured by
bench/bench_iteration_page.py, not here: wall-clock bounds in a test fail on a
busy machine.
"""

from __future__ import annotations

import numpy as np
import pytest
from dash_helpers import WAIT_MS, cnnviz_serve, graph_data, open_page

from dashapp.tensorview import matrix_view
from storage import RunStore

pytestmark = pytest.mark.browser

DRAWN = """() => Array.from(document.querySelectorAll('.tensor-panel .heatmap'))
    .filter((h) => h.querySelector('.main-svg')).length"""

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
    tab.goto(base + "/iteration?run=1&it=1&phase=backward")
    tab.wait_for_selector(".tensor-panel .heatmap", timeout=WAIT_MS)
    tab.wait_for_load_state("networkidle", timeout=WAIT_MS)


def test_heatmaps_are_drawn_as_they_come_near_the_viewport(page, base):
    open_lenet_page(page, base)
    total = page.locator(".tensor-panel .heatmap").count()
    assert total > 40
    page.locator(".tensor-panel .heatmap").first.scroll_into_view_if_needed()
    page.wait_for_function(IN_VIEW_DRAWN, timeout=60_000)
    drawn_at_top = page.evaluate(DRAWN)
    assert 0 < drawn_at_top < total // 4  # the rest waits until it comes near the viewport
    panels = page.locator(".tensor-panel:has(.heatmap)")
    for at in (panels.count() // 2, panels.count() - 1):  # jump down; what is there is drawn
        panels.nth(at).scroll_into_view_if_needed()
        panels.nth(at).locator(".main-svg").first.wait_for(timeout=60_000)
    assert page.evaluate(DRAWN) > drawn_at_top
    assert page.evaluate(DRAWN) < total  # what was passed over is not drawn on the way
    assert list(page.problems) == []


def test_the_last_heatmap_shows_the_stored_numbers_once_scrolled_to(page, base, lenet_store):
    """The last layer of the backward pass, its formulas typeset (the layout settled)."""
    open_page(page, base + "/iteration?run=1&it=1&phase=backward&layer=conv1", ".tensor-panel")
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


PUSHED_SLOT = """(src) => {
    // a slot 200 px below the viewport (near: queued, its figure fetched), moved 900 px
    // below it in the same frame, after it was queued: as a formula typeset above it does
    const slot = document.createElement('div');
    slot.className = 'heatmap-slot pushed-slot';
    const below = (px) => `${window.scrollY + window.innerHeight + px}px`;
    slot.style.cssText = `position:absolute;left:0;width:120px;height:120px;top:${below(200)}`;
    slot.setAttribute('data-src', src);
    document.body.appendChild(slot);
    // the page's MutationObserver queued its scan first: this frame callback runs after it
    queueMicrotask(() => requestAnimationFrame(() => { slot.style.top = below(900); }));
}"""


def test_a_heatmap_pushed_down_after_it_was_queued_is_still_drawn(page, base):
    """Formulas typeset above a queued heatmap push it out of the margin where heatmaps
    are drawn; its figure is fetched already, so it is drawn while the page is idle,
    without waiting for the reader to scroll to it."""
    open_lenet_page(page, base)
    src = page.locator(".tensor-panel .heatmap-slot[data-src]").last.get_attribute("data-src")
    page.evaluate("window.scrollTo({top: 0, behavior: 'instant'})")
    page.evaluate(PUSHED_SLOT, src)
    page.locator(".pushed-slot .main-svg").first.wait_for(timeout=WAIT_MS)
    box = page.locator(".pushed-slot").bounding_box()
    assert box["y"] > 1000 + 600  # drawn outside the viewport and its margin
    assert page.evaluate("window.scrollY") == 0
    assert list(page.problems) == []


TWO_SLOTS = """(src) => {
    for (let i = 0; i < 2; i++) {
        const slot = document.createElement('div');
        slot.className = 'heatmap-slot twin-slot';
        slot.style.cssText = `position:absolute;left:${i * 130}px;width:120px;height:120px;`
            + `top:${window.scrollY + 100}px`;
        slot.setAttribute('data-src', src);
        document.body.appendChild(slot);
    }
}"""


def test_two_heatmaps_of_the_same_figure_ask_for_it_once(page, base):
    """A figure shown twice in view (a LeNet-5 conv1 view shows X_col in two steps) is
    fetched once, and both heatmaps are drawn from it."""
    open_lenet_page(page, base)
    src = page.locator(".tensor-panel .heatmap-slot[data-src]").last.get_attribute("data-src")
    asked = []
    page.on("request", lambda r: asked.append(r.url) if r.url.endswith(src) else None)
    page.evaluate("window.scrollTo({top: 0, behavior: 'instant'})")
    page.evaluate(TWO_SLOTS, src)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.twin-slot')].every((s) => s.querySelector('.main-svg'))",
        timeout=WAIT_MS,
    )
    assert len(asked) == 1
    assert list(page.problems) == []


def test_the_first_two_heatmaps_of_a_view_are_drawn_without_a_request(page, base, lenet_store):
    """They come with the view (tensorpanel.send_first_figures) and show the stored
    numbers, and so does the other heatmap of the same address (X_col, in two steps);
    the next ones are asked for; a panel moved to another plane asks for its figure."""
    asked = []
    page.on("request", lambda r: asked.append(r.url) if "/figure/" in r.url else None)
    open_page(page, base + "/iteration?run=1&it=1&phase=forward&layer=conv1", ".tensor-panel")
    panels = page.locator(".tensor-panel:has(.heatmap-slot)")
    first = [panels.nth(i) for i in range(2)]
    sources = [panel.locator(".heatmap-slot").get_attribute("data-src") for panel in first]
    with RunStore(lenet_store) as store:
        for panel in first:
            assert panel.locator(".heatmap-slot").get_attribute("data-sent-figure")
            (drawn,) = graph_data(panel, ".heatmap")
            tensor = store.load_tensor(1, 1, panel.get_attribute("data-tensor"))
            view = matrix_view(tensor.array, tensor.shape, role=tensor.role)
            z = [[float("nan") if v is None else v for v in row] for row in drawn["z"]]
            np.testing.assert_array_equal(np.array(z, dtype=np.float64), view.values)
    page.wait_for_load_state("networkidle", timeout=WAIT_MS)
    assert not [url for url in asked if url.endswith(tuple(sources))]
    assert panels.count() > 2 and asked  # the next ones in view are fetched
    # a panel with a plane to choose: its next plane is fetched, not the sent figure shown
    panel = first[0] if first[0].locator(".slice-input").count() else first[1]
    slot = panel.locator(".heatmap-slot")
    before = slot.get_attribute("data-src")
    panel.locator(".slice-input input").first.fill("2")
    panel.locator(".slice-input input").first.press("Enter")
    page.wait_for_function(
        "([el, before]) => el.getAttribute('data-src') !== before",
        arg=[slot.element_handle(), before],
    )
    graph_data(panel, ".heatmap")  # drawn with the figure its address names now
    assert [url for url in asked if url.endswith(slot.get_attribute("data-src"))]
    assert list(page.problems) == []


def test_plotly_that_failed_to_load_from_the_head_is_asked_for_again(page, base):
    """The iteration page's shell asks for plotly.js in its <head>
    (bundle.load_plotly_early); when that request fails, the heatmaps ask again."""
    failed = []

    def fail_once(route):
        if failed:
            route.continue_()
        else:
            failed.append(route.request.url)
            route.abort()

    page.route("**/plotly.min.js", fail_once)
    open_page(page, base + "/iteration?run=1&it=1", ".tensor-panel")
    page.wait_for_function(IN_VIEW_DRAWN, timeout=WAIT_MS)
    assert len(failed) == 1
    # the failure itself ("Failed to load resource", the aborted request) and nothing else
    assert [p for p in page.problems if "plotly" not in p and "Failed to load" not in p] == []
