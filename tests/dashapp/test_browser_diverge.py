"""The compare page's "First divergence" entry, in headless Chromium against `cnnviz serve`.

The store is the dashboard store (run 1 seed 0, run 2 seed 1, run 3 a copy of
run 1) plus run 4: a copy of run 1 whose fc.weight in iteration 2 is nudged by
1e-3 in one element, written without torch.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from dash_helpers import cnnviz_serve, copy_store, graph_data, open_page, wait_ready

from storage import RUN_COMPLETED, RunStore, RunWriter, open_engine
from storage.diverge import Divergence, DivergenceReport

pytestmark = pytest.mark.browser
NUDGE = 1e-3


@pytest.fixture(scope="module")
def store_path(dash_store, tmp_path_factory):
    path = copy_store(dash_store, tmp_path_factory.mktemp("diverge_page") / "runs.db")
    with RunStore(path) as reader:
        info = reader.get_run(1)
        records = [reader.load_iteration(1, i.index) for i in reader.iterations(1)]
    tensor = records[1].tensor("fc.weight")
    tensor.array = tensor.array.copy()
    tensor.array[0, 0] += np.float32(NUDGE)
    tensor.summary = None  # recomputed from the nudged values
    info.name = "nudged"
    engine = open_engine(path)
    writer = RunWriter.begin(engine, info)
    writer.set_layers(info.layers)
    for record in records:
        writer.add_iteration(record)
    writer.finish(RUN_COMPLETED)
    engine.dispose()
    assert writer.run_id == 4
    return path


@pytest.fixture(scope="module")
def base(store_path):
    with cnnviz_serve(store_path) as url:
        yield url


def test_first_divergence_opens_the_compare_view_there(page, base, store_path):
    open_page(page, base + "/compare?a=1:3&b=4:3", "#compare-diverge")
    page.click("#compare-diverge")
    page.wait_for_url(re.compile(r"first=1"))
    wait_ready(page, "#compare-first")
    assert "a=1%3A2&b=4%3A2&layer=fc&role=param&tensor=fc.weight" in page.url
    banner = page.locator("#compare-first").inner_text()
    assert "runs 1 and 4 first differ at iteration 2, step 6 (fc forward: Linear layer)" in banner
    assert "fc.weight differs: the largest difference is 0.001 at [0, 0]" in banner
    assert "1 stored value differs" in banner
    (diff,) = graph_data(page, "#compare-diff-graph")
    z = np.array(diff["z"])
    assert z[0, 0] == pytest.approx(NUDGE, rel=1e-3)
    z[0, 0] = 0
    assert not z.any()
    assert list(page.problems) == []


def test_identical_runs_say_so_in_place(page, base):
    open_page(page, base + "/compare?a=1:3&b=3:3", "#compare-diverge")
    page.click("#compare-diverge")
    page.wait_for_selector("#compare-diverge-result .alert")
    text = page.locator("#compare-diverge-result").inner_text()
    assert "runs 1 and 3 are bitwise identical over 3 iterations" in text
    assert "first=1" not in page.url
    assert list(page.problems) == []


def test_one_run_on_both_sides_offers_no_search(page, base):
    open_page(page, base + "/compare?a=1:3&b=1:1", "#compare-a-graph")
    assert page.locator("#compare-diverge").count() == 0


def test_divergence_link_picks_the_slice_of_the_largest_difference(dash_app):
    from dashapp.pages.compare import divergence_link  # page modules load with an app

    found = Divergence(
        iteration=7,
        tensor="conv1.out",
        reason="differs",
        role="activation",
        layer="conv1",
        index=(3, 2, 10, 4),
    )
    report = DivergenceReport(run_a=1, run_b=2, atol=0, iterations=7, tensors=9, divergence=found)
    # the window holding the largest difference: sample 4, channel 3, from row/column 1
    assert divergence_link(report) == (
        "/compare?a=1%3A7&b=2%3A7&layer=conv1&role=activation&tensor=conv1.out&first=1"
        "&t.conv1.out=4%2C3%401%2C1"
    )
    found.index = (3, 2, 100, 90)  # a window around the element in a bigger plane
    assert divergence_link(report).endswith("&t.conv1.out=4%2C3%4069%2C59")
    found.layer, found.tensor, found.role, found.index = None, "input", "input", (0, 0, 1, 1)
    assert "layer=%28model%29&role=input&tensor=input" in divergence_link(report)
    found.reason = "is only in run B"
    assert divergence_link(report) is None
    report.divergence = None
    assert divergence_link(report) is None
