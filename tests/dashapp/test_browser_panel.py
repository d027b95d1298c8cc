"""The tensor panel in headless Chromium: any window of any tensor, the window in the
URL (a link opens it, back and forward step through views), colour scales that say
what the numbers are, NaN and infinite cells drawn as such, and 404s for addresses
that name nothing."""

from __future__ import annotations

import re

import numpy as np
import pytest
from dash_helpers import (
    SLOW_FIGURES,
    back_then_forward_before_the_figure,
    cnnviz_serve,
    graph_data,
    open_page,
    wait_ready,
)

from storage import (
    IterationRecord,
    RunInfo,
    RunWriter,
    StepRecord,
    TensorRecord,
    open_engine,
)

pytestmark = pytest.mark.browser

rng = np.random.default_rng(0)
WEIGHT = rng.standard_normal((120, 400)).astype(np.float32)
WEIGHT[0, 1], WEIGHT[1, 0], WEIGHT[2, 2] = np.nan, np.inf, -np.inf
BATCH = rng.standard_normal((3, 2, 100, 90)).astype(np.float32)
LABELS = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int64)
PROBS = rng.uniform(0.05, 0.15, (8, 10)).astype(np.float32)


@pytest.fixture(scope="module")
def panel_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("panel") / "runs.db"
    engine = open_engine(path)
    writer = RunWriter.begin(engine, RunInfo(name="panels", model_name="hand-made"))
    tensors = [
        TensorRecord("x", "input", BATCH),
        TensorRecord("y", "target", LABELS),
        TensorRecord("fc.weight", "param", WEIGHT, layer="fc"),
        TensorRecord("p", "activation", PROBS, layer="softmax"),
    ]
    step = StepRecord("softmax", "forward", "Softmax", "p = e^z", "p", ["x"], ["p"])
    writer.add_iteration(IterationRecord(1, 0.5, tensors, [step]))
    writer.finish()
    engine.dispose()
    return path


@pytest.fixture(scope="module")
def base(panel_store):
    with cnnviz_serve(panel_store) as url:
        yield url


def z_of(drawn) -> np.ndarray:
    return np.array(
        [[np.nan if v is None else v for v in row] for row in drawn["z"]], dtype=np.float64
    )


def weight_panel(page):
    return page.locator('.tensor-panel[data-tensor="fc.weight"]').first


def test_pan_a_window_keeps_it_in_the_url_and_back_returns(page, base):
    open_page(page, base + "/iteration?run=1&it=1", ".tensor-panel")
    panel = weight_panel(page)
    drawn = graph_data(panel, ".js-plotly-plot")[0]
    np.testing.assert_array_equal(z_of(drawn)[3:], WEIGHT[3:64, :64])
    assert drawn["y"][0] == 0 and drawn["x"][-1] == 63

    panel.get_by_title("move the window down").click()
    page.wait_for_url(re.compile(r"t\.fc\.weight=%4033%2C1"))
    panel.locator(".tensor-caption:text-is('rows 33–96 of 120; columns 1–64 of 400')").wait_for()
    drawn = graph_data(panel, ".js-plotly-plot")[0]
    np.testing.assert_array_equal(z_of(drawn), WEIGHT[32:96, :64])
    assert drawn["y"][0] == 32  # rows are labelled with their index in the tensor

    columns = panel.locator(".slice-control input[type=number]").nth(1)
    columns.fill("390")
    columns.press("Enter")
    page.wait_for_url(re.compile(r"t\.fc\.weight=%4033%2C337"))  # clamped: the last 64
    panel.locator(".tensor-caption:text-is('rows 33–96 of 120; columns 337–400 of 400')").wait_for()
    np.testing.assert_array_equal(
        z_of(graph_data(panel, ".js-plotly-plot")[0]), WEIGHT[32:96, 336:]
    )

    page.go_back()
    page.wait_for_url(re.compile(r"t\.fc\.weight=%4033%2C1$"))
    wait_ready(page, ".tensor-panel")
    panel = weight_panel(page)
    panel.locator(".tensor-caption:text-is('rows 33–96 of 120; columns 1–64 of 400')").wait_for()
    np.testing.assert_array_equal(z_of(graph_data(panel, ".js-plotly-plot")[0]), WEIGHT[32:96, :64])
    page.go_forward()
    page.wait_for_url(re.compile(r"%2C337$"))
    wait_ready(page, ".tensor-panel")
    weight_panel(page).locator(
        ".tensor-caption:text-is('rows 33–96 of 120; columns 337–400 of 400')"
    ).wait_for()
    assert list(page.problems) == []


def test_a_late_figure_never_undoes_back_and_forward(page, base):
    """Back, then forward before the figure of the back's window has come: the panel ends
    on the address's window (its heatmap and its caption), and neither the late figure
    nor the back and forward add a history entry."""
    page.add_init_script(SLOW_FIGURES)
    open_page(page, base + "/iteration?run=1&it=1&t.fc.weight=@33,1", ".tensor-panel")
    panel = weight_panel(page)
    columns = panel.locator(".slice-control input[type=number]").nth(1)
    columns.fill("337")
    columns.press("Enter")
    page.wait_for_url(re.compile(r"t\.fc\.weight=%4033%2C337$"))
    wait_ready(page)
    back_then_forward_before_the_figure(
        page,
        re.compile(r"t\.fc\.weight=@33,1$"),
        re.compile(r"%2C337$"),
        "fc.weight.json?lead=&row=32&col=0",
    )
    assert page.url.endswith("t.fc.weight=%4033%2C337")
    panel = weight_panel(page)
    assert panel.locator(".tensor-caption").inner_text() == (
        "rows 33–96 of 120; columns 337–400 of 400"
    )
    np.testing.assert_array_equal(
        z_of(graph_data(panel, ".js-plotly-plot")[0]), WEIGHT[32:96, 336:]
    )
    assert panel.locator("input[data-axis=col]").input_value() == "337"
    assert list(page.problems) == []


def test_a_link_opens_exactly_that_view(page, base):
    open_page(
        page, base + "/iteration?run=1&it=1&t.fc.weight=@57,300&t.x=3,2@37,1", ".tensor-panel"
    )
    drawn = graph_data(weight_panel(page), ".js-plotly-plot")[0]
    np.testing.assert_array_equal(z_of(drawn), WEIGHT[56:120, 299:363])
    batch = page.locator('.tensor-panel[data-tensor="x"]').first
    np.testing.assert_array_equal(
        z_of(graph_data(batch, ".js-plotly-plot")[0]), BATCH[2, 1, 36:100, :64]
    )
    assert "sample 3 of 3; channel 2 of 2; rows 37–100 of 100" in batch.inner_text()
    assert list(page.problems) == []


def test_colour_scales_and_special_cells(page, base):
    open_page(page, base + "/iteration?run=1&it=1", ".tensor-panel")
    weight = graph_data(weight_panel(page), ".js-plotly-plot")
    assert weight[0]["scale"] == "diverging" and weight[0]["zmin"] == -weight[0]["zmax"]
    special = weight[1]  # NaN and ±inf are cells of their own, labelled
    assert special["text"][0][1] == "NaN" and special["text"][1][0] == "inf"
    assert special["text"][2][2] == "-inf" and special["text"][0][0] == ""
    labels = graph_data(page.locator('.tensor-panel[data-tensor="y"]').first, ".js-plotly-plot")[0]
    assert labels["scale"] == "categorical"
    assert labels["labels"] == [str(v) for v in LABELS]
    page.locator(".journey-stage", has_text="Forward pass").click()  # the softmax's output
    wait_ready(page, ".iteration-view[data-view='forward/softmax'] .tensor-panel[data-tensor='p']")
    probs = graph_data(page.locator('.tensor-panel[data-tensor="p"]').first, ".js-plotly-plot")[0]
    assert probs["scale"] == "sequential"
    assert probs["zmin"] == pytest.approx(PROBS.min()) and probs["zmax"] == pytest.approx(
        PROBS.max()
    )
    assert list(page.problems) == []


def test_addresses_that_name_nothing_answer_404(page, base):
    for address in (
        "/iteration?run=1&it=1&t.nope=@1,1",
        "/iteration?run=1&it=2",
        "/iteration?run=7",
        "/nowhere",
    ):
        response = page.goto(base + address)
        assert response.status == 404, address
        page.locator(".not-found").wait_for()
    response = page.goto(base + "/iteration?run=1&it=1&t.fc.weight=@57,300")
    assert response.status == 200


def test_the_partial_plotly_bundle_draws_every_figure(page, base):
    bundles = []
    page.on(
        "response",
        lambda r: (
            bundles.append((r.headers.get("x-cnnviz-bundle"), len(r.body())))
            if r.url.endswith("plotly.min.js")
            else None
        ),
    )
    open_page(page, base + "/iteration?run=1&it=1", ".tensor-panel")
    graph_data(weight_panel(page), ".js-plotly-plot")
    assert bundles and all(b == ("plotly.js heatmap-bar", bundles[0][1]) for b in bundles)
    assert bundles[0][1] < 1_300_000  # the full bundle is 4.8 MB, the cartesian one 1.5 MB
    assert len(bundles) == 1  # the one the shell's <head> asks for, not a second copy
    open_page(page, base + "/compare", ".js-plotly-plot")  # heatmaps, lines and bars
    page.locator("#compare-diff-graph .js-plotly-plot .main-svg").first.wait_for()
    assert list(page.problems) == []


def test_the_numbers_step_and_stay_within_the_tensor(page, base):
    """A sample's − and + step through the planes and stop at the last; a number past the
    end shows the last plane; a number cleared shows the plane it showed."""
    open_page(page, base + "/iteration?run=1&it=1", ".tensor-panel")
    batch = page.locator('.tensor-panel[data-tensor="x"]').first
    sample = batch.locator("input[data-axis='0']")
    channel = batch.locator("input[data-axis='1']")
    plus = batch.locator(".slice-control:has(input[data-axis='0']) button[data-step='1']")
    plus.click()
    page.wait_for_url(re.compile(r"t\.x=2%2C1%401%2C1$"))
    batch.locator(
        ".tensor-caption:text-is('sample 2 of 3; channel 1 of 2; rows 1–64 of 100; "
        "columns 1–64 of 90')"
    ).wait_for()
    np.testing.assert_array_equal(
        z_of(graph_data(batch, ".js-plotly-plot")[0]), BATCH[1, 0, :64, :64]
    )
    plus.click()
    plus.click()  # past the last sample: stays there
    page.wait_for_url(re.compile(r"t\.x=3%2C1%401%2C1$"))
    assert sample.input_value() == "3"
    channel.fill("9")
    channel.press("Enter")
    page.wait_for_url(re.compile(r"t\.x=3%2C2%401%2C1$"))
    assert channel.input_value() == "2"
    sample.fill("")
    sample.press("Enter")
    assert sample.input_value() == "3"
    batch.locator(
        ".tensor-caption:text-is('sample 3 of 3; channel 2 of 2; rows 1–64 of 100; "
        "columns 1–64 of 90')"
    ).wait_for()
    np.testing.assert_array_equal(
        z_of(graph_data(batch, ".js-plotly-plot")[0]), BATCH[2, 1, :64, :64]
    )
    page.go_back()
    page.wait_for_url(re.compile(r"t\.x=3%2C1%401%2C1$"))
    batch.locator(
        ".tensor-caption:text-is('sample 3 of 3; channel 1 of 2; rows 1–64 of 100; "
        "columns 1–64 of 90')"
    ).wait_for()
    assert channel.input_value() == "1"
    assert list(page.problems) == []
