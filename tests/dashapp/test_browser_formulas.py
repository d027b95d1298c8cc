"""Formulas that fit, in headless Chromium at 1280 px: on the seed CNN, LeNet-5,
small-cnn and the README's example model, no typeset formula is wider than its box
(matrix columns are elided with ⋯), and the formula as stored can be expanded."""

from __future__ import annotations

import subprocess
import sys

import pytest
from dash_helpers import REPO, cnnviz_serve, copy_store, open_page, subprocess_env, wait_view

from storage import RunStore

pytestmark = pytest.mark.browser

CUT_OFF = """() => Array.from(document.querySelectorAll('.step-card .formula')).filter((f) => {
    const math = f.querySelector('mjx-container');
    return !math || math.scrollWidth > f.clientWidth + 1;
}).map((f) => f.closest('.step-card').id)"""


@pytest.fixture(scope="module")
def models_store(seed_store, tmp_path_factory):
    """Runs 1, 2: the seed CNN; 3: LeNet-5 and 4: small-cnn, one iteration each; 5: the example."""
    from tracer.train import run_builtin

    path = copy_store(seed_store, tmp_path_factory.mktemp("models") / "runs.db")
    run_builtin(model_name="lenet5", seed=0, iterations=1, db=path)
    run_builtin(model_name="small-cnn", seed=0, iterations=1, db=path)
    example = REPO / "examples" / "trace_my_model.py"
    subprocess.run(
        [sys.executable, str(example), str(path)],
        env=subprocess_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    return path


@pytest.fixture(scope="module")
def base(models_store):
    with cnnviz_serve(models_store) as url:
        yield url


@pytest.fixture
def narrow(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    tab = context.new_page()
    errors = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.errors = errors
    yield tab
    context.close()


@pytest.mark.parametrize(
    ("run", "model"), [(1, "seed-cnn"), (3, "lenet5"), (4, "small-cnn"), (5, "example")]
)
def test_no_formula_is_cut_off_at_1280_px(narrow, base, models_store, run, model):
    """Every phase of the iteration on one page (the side menu's phase links)."""
    with RunStore(models_store) as store:
        info = store.get_run(run)
    assert model == "example" or info.model_name == model
    open_page(narrow, f"{base}/iteration?run={run}&it=1", ".iteration-view")
    typeset = 0
    for phase in ("forward", "loss", "backward", "update"):
        narrow.locator(f".toc-{phase} > a.toc-view").click()
        wait_view(narrow, f"{phase}/")
        typeset += narrow.locator(".step-card .formula mjx-container").count()
        assert narrow.evaluate(CUT_OFF) == [], phase
    assert typeset >= 40
    assert narrow.errors == []


def test_an_elided_formula_expands_to_the_stored_one(narrow, base):
    open_page(narrow, f"{base}/iteration?run=3&it=1&phase=forward&layer=fc1", ".step-card")
    card = narrow.locator(".step-card:has(.formula-expand)").first
    fitted = card.locator(".formula-values mjx-container").inner_text()
    assert "⋯" in fitted
    card.locator(".formula-expand").click()
    full = card.locator(".formula-expanded mjx-container")
    full.wait_for()
    assert len(full.inner_text()) > len(fitted)  # more entries than the fitted one shows
    assert card.locator(".formula-expand").inner_text() == "hide the stored entries"
    card.locator(".formula-expand").click()
    assert card.locator(".formula-expanded").is_hidden()
    assert narrow.errors == []


# The row of every formula of a view (its label and its box): their heights, in order.
ROW_HEIGHTS = """() => Array.from(document.querySelectorAll('.step-card .formula-row'))
    .map((row) => row.getBoundingClientRect().height)"""


@pytest.mark.parametrize(("run", "phase"), [(1, "forward"), (3, "backward"), (4, "forward")])
def test_a_formula_takes_its_place_before_it_is_typeset(browser, base, run, phase):
    """The box of a formula not typeset yet is about as tall as the formula will be, so
    the page does not jump (and a heatmap below does not leave the view) when MathJax's
    answer comes: rows measured with the MathJax worker never answering, then typeset."""
    heights = []
    for typeset in (False, True):
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        tab = context.new_page()
        url = f"{base}/iteration?run={run}&it=1&phase={phase}"
        if typeset:
            open_page(tab, url, ".step-card")  # every formula typeset
        else:
            tab.route("**/_cnnviz/mathjax/**", lambda route: route.abort())
            tab.goto(url)
            tab.wait_for_selector(".step-card .formula-row")
            tab.wait_for_load_state("networkidle")
            assert tab.locator(".step-card mjx-container").count() == 0
        heights.append(tab.evaluate(ROW_HEIGHTS))
        context.close()
    before, after = heights
    assert len(before) == len(after) >= 6
    moved = [(b, a) for b, a in zip(before, after, strict=True) if abs(a - b) > max(24, 0.08 * a)]
    assert moved == [], moved


# Every formula the page sends the MathJax worker: its TeX, and whether the view's step
# cards were in the page then.
RECORD_WORKER = """
window.cnnvizAsked = [];
const post = Worker.prototype.postMessage;
Worker.prototype.postMessage = function (message) {
    if (message && message.tex !== undefined) {
        window.cnnvizAsked.push({tex: message.tex, cards: document.querySelectorAll('.step-card').length});
    }
    return post.apply(this, arguments);
};
"""


def test_a_views_first_formulas_are_typeset_while_the_view_is_built(narrow, base):
    """The callback's answer is read as it arrives: the worker has the view's first two
    formulas before React has put the view in the page; and a formula that occurs more
    than once (one general formula for every ReLU) is typeset once."""
    narrow.add_init_script(RECORD_WORKER)
    open_page(narrow, f"{base}/iteration?run=3&it=1&phase=backward", ".step-card")
    narrow.wait_for_function(
        "() => Array.from(document.querySelectorAll('.formula'))"
        ".every((f) => f.querySelector('mjx-container'))"
    )
    asked = narrow.evaluate("window.cnnvizAsked")
    first = narrow.evaluate(
        "Array.from(document.querySelectorAll('.formula-math')).slice(0, 2)"
        ".map((e) => e.getAttribute('data-tex'))"
    )
    assert [a["tex"] for a in asked[:2]] == first
    assert [a["cards"] for a in asked[:2]] == [0, 0]
    texs = narrow.evaluate(
        "Array.from(document.querySelectorAll('.formula-math')).map((e) => e.getAttribute('data-tex'))"
    )
    assert len(set(texs)) < len(texs)  # some formula occurs twice on this page
    assert sorted(a["tex"] for a in asked) == sorted(set(texs))  # each typeset once
    assert narrow.errors == []
