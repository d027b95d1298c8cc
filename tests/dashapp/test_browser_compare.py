"""The compare page at scale, in headless Chromium against `cnnviz serve`.

The store is written through `RunWriter` without torch: runs 1 and 2 ("wide", three
iterations) hold a 80x150 weight, so a 64x64 window has to pan; runs 3..62 are small
runs of another model, so the run pickers cannot list every run and must search.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from dash_helpers import (
    SLOW_FIGURES,
    back_then_forward_before_the_figure,
    cnnviz_serve,
    graph_data,
    open_page,
    run_callback,
    using_store,
    wait_ready,
)

from storage import (
    RUN_COMPLETED,
    IterationRecord,
    LayerInfo,
    RunInfo,
    RunWriter,
    TensorRecord,
    open_engine,
)

pytestmark = pytest.mark.browser
SHAPE = (80, 150)
SMALL_RUNS = 60


def weights(run: int, index: int) -> np.ndarray:
    return np.random.default_rng(100 * run + index).normal(size=SHAPE).astype(np.float32)


def write_run(engine, name: str, model: str, seed: int, iterations: int, shape) -> int:
    info = RunInfo(name=name, seed=seed, model_name=model, optimizer="SGD", loss_name="MSE")
    writer = RunWriter.begin(engine, info)
    layer = LayerInfo(0, "fc", "Linear", None, None, int(np.prod(shape)), "Linear", "")
    writer.set_layers([layer])
    for index in range(1, iterations + 1):
        w = weights(writer.run_id, index) if shape == SHAPE else np.ones(shape, np.float32)
        tensors = [
            TensorRecord("fc.weight", "param", w, layer="fc"),
            TensorRecord("fc.weight.grad", "param_grad", w / 10, layer="fc"),
        ]
        writer.add_iteration(IterationRecord(index, 1.0 / index, tensors, []))
    writer.finish(RUN_COMPLETED)
    return writer.run_id


@pytest.fixture(scope="module")
def compare_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("compare_page") / "runs.db"
    engine = open_engine(path)
    assert write_run(engine, "wide-a", "wide", 0, 3, SHAPE) == 1
    assert write_run(engine, "wide-b", "wide", 1, 3, SHAPE) == 2
    for k in range(SMALL_RUNS):
        write_run(engine, f"small-{k}", "small", 1000 + k, 1, (2, 2))
    engine.dispose()
    return path


@pytest.fixture(scope="module")
def base(compare_store):
    with cnnviz_serve(compare_store) as url:
        yield url


def z_of(drawn) -> np.ndarray:
    return np.array(
        [[np.nan if v is None else v for v in row] for row in drawn["z"]], dtype=np.float64
    )


def shown(page, side: str) -> np.ndarray:
    (drawn,) = graph_data(page, f"#compare-{side}-graph")
    return z_of(drawn)


# The window each of A, B and B − A names (its figure address), as [row0, col0] ...
NAMED_WINDOWS = """() => ['a', 'b', 'diff'].map((side) => {
    const slot = document.querySelector(`#compare-${side}-graph .heatmap-slot`);
    const query = new URLSearchParams(((slot && slot.getAttribute('data-src')) || '').split('?')[1]);
    return [Number(query.get('row')), Number(query.get('col'))];
})"""


def assert_window(page, row0: int, col0: int) -> None:
    """A, B and B − A all show rows row0.., columns col0.. of iterations 3 of runs 1, 2.

    Back and forward are answered in the browser after the address has changed (and
    Playwright's networkidle does not wait again for a move within the page), so this
    first waits until all three name that window, then reads what they drew."""
    page.wait_for_function(
        f"() => ({NAMED_WINDOWS})().every(([r, c]) => r === {row0} && c === {col0})"
    )
    a, b = weights(1, 3), weights(2, 3)
    window = np.s_[row0 : row0 + 64, col0 : col0 + 64]
    np.testing.assert_array_equal(shown(page, "a"), a[window])
    np.testing.assert_array_equal(shown(page, "b"), b[window])
    np.testing.assert_array_equal(
        shown(page, "diff"), b[window].astype(np.float64) - a[window].astype(np.float64)
    )


def test_the_window_is_in_the_url_and_back_and_forward_restore_it(page, base):
    open_page(page, base + "/compare?a=1:3&b=2:3&tensor=fc.weight", "#compare-diff-graph")
    assert_window(page, 0, 0)
    # A's arrow moves all three by half a window; the address says where
    page.locator(
        '.tensor-panel[data-aio="compare-a"] button[title="move the window right"]'
    ).click()
    page.wait_for_url(re.compile(r"t\.fc\.weight=%401%2C33"))
    wait_ready(page)
    assert_window(page, 0, 32)
    assert "columns 33–96 of 150" in page.locator("#compare-b-graph .tensor-caption").inner_text()
    # the page's store has A's window (the run and iteration pickers keep it)
    told = "window.dash_component_api.getLayout('compare-a-view').props.data"
    assert page.evaluate(told) == "@1,33"
    rows = page.locator('.tensor-panel[data-aio="compare-a"] .slice-control input').first
    rows.fill("17")
    rows.press("Enter")
    page.wait_for_url(re.compile(r"t\.fc\.weight=%4017%2C33"))
    wait_ready(page)
    assert_window(page, 16, 32)
    page.go_back()
    page.wait_for_url(re.compile(r"t\.fc\.weight=%401%2C33$"))
    wait_ready(page)
    assert_window(page, 0, 32)
    page.go_back()
    page.wait_for_url(re.compile(r"tensor=fc\.weight$"))
    wait_ready(page)
    assert_window(page, 0, 0)
    page.go_forward()
    page.wait_for_url(re.compile(r"t\.fc\.weight=%401%2C33$"))
    wait_ready(page)
    assert_window(page, 0, 32)
    # a link opens exactly its view (columns clamped to the last full window)
    open_page(page, base + "/compare?a=1:3&b=2:3&tensor=fc.weight&t.fc.weight=@17,120")
    assert_window(page, 16, 150 - 64)
    assert list(page.problems) == []


def test_a_late_figure_never_undoes_back_and_forward(page, base):
    """Back, then forward before A's figure for the back has come: the panels end where
    the address says (rows 17.., columns 33..), and the late figure neither leaves its
    window drawn nor adds a history entry."""
    page.add_init_script(SLOW_FIGURES)
    open_page(page, base + "/compare?a=1:3&b=2:3&tensor=fc.weight", "#compare-diff-graph")
    page.locator(
        '.tensor-panel[data-aio="compare-a"] button[title="move the window right"]'
    ).click()
    page.wait_for_url(re.compile(r"t\.fc\.weight=%401%2C33"))
    rows = page.locator('.tensor-panel[data-aio="compare-a"] .slice-control input')
    rows.first.fill("17")
    rows.first.press("Enter")
    page.wait_for_url(re.compile(r"t\.fc\.weight=%4017%2C33$"))
    assert_window(page, 16, 32)
    back_then_forward_before_the_figure(
        page,
        re.compile(r"t\.fc\.weight=%401%2C33$"),
        re.compile(r"t\.fc\.weight=%4017%2C33$"),
        "fc.weight.json?lead=&row=0&col=32&with=2%3A3",
    )
    assert page.url.endswith("t.fc.weight=%4017%2C33")
    assert page.evaluate(NAMED_WINDOWS) == [[16, 32]] * 3
    assert [rows.nth(i).input_value() for i in range(2)] == ["17", "33"]
    assert_window(page, 16, 32)
    assert "rows 17–80 of 80" in page.locator("#compare-a-graph .tensor-caption").inner_text()
    assert list(page.problems) == []


def search(page, picker: str, text: str) -> None:
    """Open a run picker and type into its search box (Dash asks the server)."""
    page.locator(picker).click()
    page.get_by_placeholder("Search").first.fill(text)


def test_the_run_picker_searches_the_store(page, base):
    open_page(page, base + "/compare?a=1:3&b=2:3", "#compare-b-run")
    page.locator("#compare-b-run").click()
    options = page.get_by_role("option")
    options.first.wait_for()
    # the runs shown and the runs of the wide model: not the 62 runs of the store
    assert options.count() == 2
    page.keyboard.press("Escape")
    search(page, "#compare-b-run", "small-41")
    found = page.get_by_role("option", name=re.compile(r"#44 .?small-41.?, seed 1041"))
    found.click()
    page.wait_for_url(re.compile(r"b=44%3A1"))
    wait_ready(page, ".compare-b .card-header:has-text('small-41')")
    # B's fc.weight is 2x2: B keeps its own panel, no difference, A still pans alone
    assert page.locator("#compare-diff-graph").count() == 0
    page.locator(
        '.tensor-panel[data-aio="compare-a"] button[title="move the window right"]'
    ).click()
    page.wait_for_url(re.compile(r"b=44%3A1.*t\.fc\.weight=%401%2C33"))
    wait_ready(page)
    (drawn,) = graph_data(page, "#compare-a-graph")
    np.testing.assert_array_equal(z_of(drawn), weights(1, 3)[:64, 32:96])
    page.go_back()
    page.wait_for_url(lambda url: "b=44%3A1" in url and "t.fc.weight" not in url)
    # a seed finds its run too
    search(page, "#compare-a-run", "1007")
    page.get_by_role("option", name=re.compile(r"#10 .?small-7.?, seed 1007")).wait_for()
    page.keyboard.press("Escape")
    page.go_back()
    page.wait_for_url(re.compile(r"b=2:3"))
    wait_ready(page, ".compare-b .card-header:has-text('wide-b')")
    assert list(page.problems) == []


def test_unknown_layer_tensor_or_view_is_404(page, base):
    for query in ("layer=nope", "tensor=nope", "t.fc.bias=@1,1", "t.fc.weight=x"):
        response = page.goto(base + "/compare?a=1:3&b=2:3&" + query)
        assert response.status == 404, query
        wait_ready(page)
        assert page.locator("h1").inner_text() == "Not found"


def test_norms_over_iterations_come_from_the_stored_summaries(dash_app, compare_store):
    compare = sys.modules["dashapp.pages.compare"]  # page modules load with an app
    with using_store(dash_app, compare_store), dash_app.server.test_request_context():
        ref = {"history": [[1, "wide-a"], [2, "wide-b"]]}
        loss, norms = run_callback(compare.draw_history, ref)
    traces = {(t["xaxis"], t["legendgroup"]): t for t in norms["data"]}
    for run, label in ((1, "wide-a"), (2, "wide-b")):
        expected = [float(np.linalg.norm(weights(run, i).astype(np.float64))) for i in (1, 2, 3)]
        weight = traces[("x", label)]
        assert weight["x"] == [1, 2, 3]
        np.testing.assert_allclose(weight["y"], expected, rtol=1e-6)
        grad = traces[("x2", label)]
        np.testing.assert_allclose(grad["y"], np.array(expected) / 10, rtol=1e-5)
    assert [t["y"] for t in loss["data"]] == [[1.0, 0.5, 1 / 3]] * 2
