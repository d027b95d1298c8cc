"""The element what-if on the iteration page, in headless Chromium against `cnnviz serve`:
edit one input element, then one weight, and see the iteration recomputed with every
changed cell outlined and the difference to the stored run."""

from __future__ import annotations

import pytest
from dash_helpers import cnnviz_serve, open_page

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def base(dash_store):
    with cnnviz_serve(dash_store) as url:
        yield url


def recompute(page, index: str, value: str) -> str:
    page.fill("#iteration-whatif-index", index)
    page.press("#iteration-whatif-index", "Tab")
    page.fill("#iteration-whatif-value", value)
    page.press("#iteration-whatif-value", "Tab")
    page.click("#iteration-whatif-element-go")
    page.wait_for_function(
        "want => { const s = document.querySelector('.whatif-summary');"
        " return s && s.innerText.includes(want); }",
        arg=f"[{index}]",
    )
    return page.locator(".whatif-summary").inner_text()


def outlines(page, tensor: str) -> int:
    graph = page.locator(f'[data-whatif="{tensor}"] .whatif-recomputed .js-plotly-plot').first
    return graph.evaluate("gd => (gd.layout.shapes || []).length")


def test_editing_an_input_and_a_weight_recomputes_the_iteration(page, base):
    open_page(page, base + "/iteration?run=1&it=2&phase=whatif")
    page.locator("#section-whatif").scroll_into_view_if_needed()
    text = recompute(page, "0, 0, 1, 2", "5")
    assert "input[0, 0, 1, 2]:" in text and "→ 5." in text and "Loss " in text
    assert "reproduces every stored tensor" in text
    # the input's first consumer: one changed patch entry per window that reads it
    page.wait_for_selector('[data-whatif="conv.X_col"] .js-plotly-plot')
    assert outlines(page, "conv.X_col") >= 1
    assert page.locator(".whatif-item").count() >= 4
    changed = page.locator(".whatif-table tr.whatif-changed td:nth-child(2)").all_inner_texts()
    assert changed[0] == "conv.X_col" and "loss.value" in changed and "fc.weight.next" in changed

    # A weight of the last layer changes nothing before it.
    page.click("#iteration-whatif-tensor")
    page.get_by_role("option", name="fc.weight", exact=True).click()
    page.wait_for_function(
        "() => document.querySelector('#iteration-whatif-element-help').innerText"
        ".includes('fc.weight has shape (2, 4)')"
    )
    text = recompute(page, "1, 3", "-2")
    assert "fc.weight[1, 3]:" in text
    changed = page.locator(".whatif-table tr.whatif-changed td:nth-child(2)").all_inner_texts()
    assert changed[0] == "fc.out"  # the forward pass before fc is untouched
    assert "conv.out" not in changed and "conv.weight.grad" in changed
    assert list(page.problems) == []
