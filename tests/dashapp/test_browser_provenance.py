"""Provenance on click on the iteration page, in headless Chromium against `cnnviz serve`:
a click on a heatmap cell shows the computation with the real numbers, checked
against the stored value, and outlines the cells it read."""

from __future__ import annotations

import pytest
from dash_helpers import cnnviz_serve, open_page

from storage import RunStore

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def base(dash_store):
    with cnnviz_serve(dash_store) as url:
        yield url


def click_cell(page, tensor: str, row: int, col: int) -> None:
    slot = page.locator(f'.heatmap-slot[data-tensor="{tensor}"]').first
    slot.scroll_into_view_if_needed()
    page.wait_for_function(
        "name => { const s = document.querySelector(`.heatmap-slot[data-tensor='${name}']`);"
        " return s && s._cnnvizShown !== undefined && s._cnnvizClick; }",
        arg=tensor,
    )
    x, y = slot.evaluate(
        """(gd, rc) => { const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
           const r = gd.getBoundingClientRect();
           return [r.left + xa._offset + xa.l2p(rc[1]), r.top + ya._offset + ya.l2p(rc[0])]; }""",
        [row, col],
    )
    page.mouse.click(x, y)


def outlined(page, tensor: str) -> list[list[float]]:
    """The (row, column) centres of the cells outlined in `tensor`'s heatmap."""
    return page.locator(f'.heatmap-slot[data-tensor="{tensor}"]').first.evaluate(
        "gd => (gd.layout.shapes || []).map(s => [(s.y0 + s.y1) / 2, (s.x0 + s.x1) / 2])"
    )


def test_a_click_on_a_conv_output_shows_patch_times_kernel_plus_bias(page, base, dash_store):
    with RunStore(dash_store) as store:
        record = store.load_iteration(1, 2)
    stored = float(record.tensor("conv.Y_col").array[4, 0])
    open_page(page, base + "/iteration?run=1&it=2&phase=forward&layer=conv")
    click_cell(page, "conv.Y_col", 4, 0)
    page.wait_for_selector("#iteration-provenance-check")
    text = page.locator("#iteration-provenance").inner_text()
    assert text.startswith(f"conv.Y_col[4, 0] = {stored:.7g}")
    assert "Σ_k X_col[4,k]·W_flat[0,k] + b[0]" in text
    assert page.locator("#iteration-provenance-check").inner_text().startswith("✓ recomputed")
    # a heatmap drawn later (it comes near the viewport) gets its outlines when drawn
    page.locator('.heatmap-slot[data-tensor="conv.X_col"]').first.scroll_into_view_if_needed()
    page.wait_for_function(
        "() => { const s = document.querySelector(`.heatmap-slot[data-tensor='conv.X_col']`);"
        " return s.layout && s.layout.shapes && s.layout.shapes.length === 4; }"
    )
    assert outlined(page, "conv.X_col") == [[4, k] for k in range(4)]
    assert outlined(page, "conv.W_flat") == [[0, k] for k in range(4)]
    assert list(page.problems) == []


def test_a_click_on_a_gradient_sums_its_paths_and_close_clears(page, base, dash_store):
    open_page(page, base + "/iteration?run=1&it=1&phase=backward&layer=fc")
    click_cell(page, "fc.weight.grad", 1, 2)
    page.wait_for_selector("#iteration-provenance-check")
    text = page.locator("#iteration-provenance").inner_text()
    assert "dL/dW[1,2] = Σ_n dL/dz[n,1]·x[n,2]" in text
    assert "✓ recomputed" in text
    page.click("#iteration-provenance-close")
    page.wait_for_selector(".provenance-panel:not(.open)", state="attached")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.heatmap-slot[data-tensor]')]"
        ".every(s => !s.layout || !(s.layout.shapes || []).length)"
    )
    assert list(page.problems) == []
