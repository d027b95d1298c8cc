"""The runs page a page at a time, in headless Chromium: paging, filters, sorting and a
Compare selection that survives paging, all in the URL, back and forward included."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest
from dash_helpers import cnnviz_serve, copy_store, open_page, wait_ready

from storage import RUN_COMPLETED, RunInfo, RunWriter, open_engine

pytestmark = pytest.mark.browser

BULK = 57  # runs without iterations added to the 3 of dash_store: 60 runs, 3 pages of 25


@pytest.fixture(scope="module")
def runs_store(dash_store, tmp_path_factory):
    path = copy_store(dash_store, tmp_path_factory.mktemp("runs") / "runs.db")
    engine = open_engine(path)
    for i in range(BULK):
        writer = RunWriter.begin(
            engine, RunInfo(name=f"bulk-{i:02d}", seed=i % 4, model_name="lenet5")
        )
        writer.finish(RUN_COMPLETED)
    engine.dispose()
    return path


@pytest.fixture(scope="module")
def base(runs_store):
    with cnnviz_serve(runs_store) as url:
        yield url


def shown_runs(page) -> list[str]:
    return page.locator("table.runs-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.run)"
    )


def query(page) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def test_pages_of_runs_and_a_selection_across_them(page, base):
    open_page(page, base + "/?per=25", "table.runs-table")
    assert shown_runs(page) == [str(i) for i in range(1, 26)]
    assert "page 1 of 3 · runs 1–25 of 60" in page.inner_text(".runs-pager")

    page.locator('tr[data-run="2"] input[type=checkbox]').check()
    page.wait_for_url(re.compile(r"pick=2"))
    wait_ready(page, 'tr[data-run="2"] input:checked')
    page.locator(".pager-next").first.click()
    page.wait_for_url(re.compile(r"page=2"))
    wait_ready(page, 'tr[data-run="26"]')
    assert shown_runs(page) == [str(i) for i in range(26, 51)]
    assert query(page)["pick"] == "2"  # the tick on page 1 travels with the pages

    page.locator('tr[data-run="30"] input[type=checkbox]').check()
    page.wait_for_url(re.compile(r"pick=2%2C30"))
    wait_ready(page, 'tr[data-run="30"] input:checked')
    assert "2 runs selected: #2, #30" in page.inner_text("#runs-pick-hint")
    href = page.locator("#runs-compare").get_attribute("href")
    assert href.startswith("/compare?a=2%3A3&b=30%3A1&runs=2%2C30")

    page.go_back()  # the tick of run 30 is undone
    page.wait_for_url(
        lambda url: "30" not in (parse_qs(urlparse(url).query).get("pick") or [""])[0]
    )
    wait_ready(page, 'tr[data-run="30"] input:not(:checked)')
    page.go_back()  # page 1 again
    wait_ready(page, 'tr[data-run="1"]')
    assert shown_runs(page)[0] == "1" and query(page) == {"per": "25", "pick": "2"}
    assert list(page.problems) == []


def test_filters_and_sorting_are_in_the_url(page, base):
    open_page(page, base + "/", "table.runs-table")
    page.fill("#runs-filter-name", "bulk-1")
    page.press("#runs-filter-name", "Enter")
    page.wait_for_url(re.compile(r"name=bulk-1"))
    wait_ready(page, ".runs-filters a")  # "clear filters" appears
    expected = [str(4 + i) for i in range(BULK) if f"bulk-{i:02d}".startswith("bulk-1")]
    assert shown_runs(page) == expected
    page.get_by_role("link", name="Seed").click()
    page.wait_for_url(re.compile(r"sort=seed"))
    wait_ready(page, "th.sorted")
    assert query(page)["name"] == "bulk-1"
    seeds = page.locator("table.runs-table tbody tr td:nth-child(4)").all_inner_texts()
    assert seeds == sorted(seeds)

    # Every filter's box is wide enough for its value (at 1280 px, as the test page is).
    boxes = page.locator(".runs-filters .dash-input-container").evaluate_all(
        "boxes => boxes.map(b => [b.querySelector('input').id, b.scrollWidth, b.clientWidth])"
    )
    assert len(boxes) == 4
    assert [id for id, needed, width in boxes if needed > width] == [], boxes

    open_page(page, base + "/?model=seed-cnn&seed=1", "table.runs-table")
    assert shown_runs(page) == ["2"]
    assert "1 run match the filters" in page.inner_text(".page-subtitle").replace(
        "runs match", "run match"
    )
    assert list(page.problems) == []
