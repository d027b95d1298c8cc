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
