"""Layout builders are pure functions from records to components; store text stays text."""

from __future__ import annotations

import numpy as np
import pytest
from dash import dcc, html
from dash_helpers import INJECTION, as_component, components, formulas_in, text_of

from dashapp import layouts, links, statichtml
from dashapp.tensorpanel import PanelView, TensorPanel, figure_url, panel_markup
from storage import StepRecord, TensorRecord


def make_step(**changes) -> StepRecord:
    fields = dict(
        layer="fc",
        phase="forward",
        title="Linear layer",
        formula=r"z = W x + b",
        formula_values=r"\begin{bmatrix}1.0000\end{bmatrix}",
        inputs=["fc.weight"],
        outputs=["fc.out"],
        reference="PyTorch linear output",
        max_abs_diff=3.62e-8,
        verified=True,
        note="Row k of W.",
    )
    fields.update(changes)
    return StepRecord(**fields)


TENSORS = {
    "fc.weight": TensorRecord(
        "fc.weight", "param", np.array([[0.5, -1.0]], dtype=np.float32), layer="fc"
    ),
    "fc.out": TensorRecord("fc.out", "activation", np.array([[2.0]], dtype=np.float32), layer="fc"),
}


def panels_of(tensors, run_id=1, index=2):
    """The `panel` argument of step_card: a panel's markup per stored tensor."""

    def panel(name, panel_id):
        if name not in tensors:
            return None
        return panel_markup(tensors[name], run_id=run_id, index=index, aio_id=panel_id)

    return panel


def test_math_markdown_keeps_a_formula_in_one_display_block():
    assert layouts.math_markdown(r"z = W x") == "$$\nz = W x\n$$"
    # no way to close the block early and put Markdown or HTML after it
    sneaky = "x $$\n\n<img src=x onerror=alert(1)> [link](javascript:alert(1))\n$$ y"
    body = layouts.math_markdown(sneaky).split("\n")
    assert len(body) == 3 and body[0] == body[2] == "$$"
    assert "$$" not in body[1].replace(r"\$", "")
    # MathJax macros that make links or load code are shown, not run
    assert r"\href" not in layouts.math_markdown(r"\href{javascript:alert(1)}{x} + \require{html}")


@pytest.mark.parametrize(
    ("verified", "diff", "text", "mark"),
    [
        (True, 3.62e-8, "✓ matches autograd, max |Δ| = 3.6e-08", "yes"),
        (False, 0.25, "✗ differs from autograd, max |Δ| = 2.5e-01", "no"),
        (None, None, "no PyTorch counterpart (intermediate)", "none"),
    ],
)
def test_verified_badge(verified, diff, text, mark):
    step = make_step(verified=verified, max_abs_diff=diff)
    assert layouts.verified_text(step)[0] == text
    card = as_component(layouts.step_card(5, step, panels_of(TENSORS)))
    assert card.id == "step-5"
    assert getattr(card, "data-verified") == mark


def test_step_card_shows_title_both_formulas_tensors_check_and_note():
    card = layouts.step_card(7, make_step(), panels_of(TENSORS))
    assert formulas_in(card) == ["z = W x + b", "\\begin{bmatrix}1.0000\\end{bmatrix}"]
    assert not components(card, dcc.Markdown)  # typeset by MathJax in a worker instead
    text = text_of(card)
    for expected in (
        "Linear layer",
        "General formula",
        "Row k of W.",
        "PyTorch linear output",
        "→ writes",
    ):
        assert expected in text
    panels = components(card, html.Div, "tensor-panel")
    assert [getattr(p, "data-tensor") for p in panels] == ["fc.weight", "fc.out"]
    slots = components(card, html.Div, "heatmap-slot")  # figures are fetched when in view
    assert getattr(slots[0], "data-src") == figure_url(1, 2, "fc.weight", PanelView())
    links_ = [a.href for a in components(card, html.A)]
    assert (
        links.download(1, 2, "fc.weight", "npy") in links_
        and links.download(1, 2, "fc.out", "csv") in links_
    )


def test_store_text_never_reaches_markdown():
    evil = TensorRecord(INJECTION, "activation", np.ones((1, 1), dtype=np.float32), layer=INJECTION)
    step = make_step(
        layer=INJECTION,
        title=INJECTION,
        note=INJECTION,
        reference=INJECTION,
        inputs=[INJECTION],
        outputs=[],
    )
    card = layouts.step_card(1, step, panels_of({INJECTION: evil}, index=1))
    for tex in formulas_in(card):
        assert INJECTION not in tex
    assert text_of(card).count(INJECTION) >= 4  # shown, as text, in title, layer, name, note
    page = layouts.not_found(f"there is no run {INJECTION}")
    assert not formulas_in(page)


def test_scalar_tensors_show_their_number():
    loss = TensorRecord("loss.value", "output", np.array(0.7576, dtype=np.float32), layer="loss")
    panel = TensorPanel(loss, run_id=1, index=1, aio_id="p", scalar=0.7576)
    assert not components(panel, dcc.Graph) and not components(panel, html.Div, "heatmap-slot")
    assert components(panel, html.Div, "tensor-scalar")[0].children == "0.7576"


def test_nd_tensors_get_one_selector_per_leading_axis_longer_than_one():
    act = TensorRecord(
        "conv.out", "activation", np.zeros((4, 1, 3, 3), dtype=np.float32), layer="conv"
    )
    panel = TensorPanel(act, run_id=1, index=1, aio_id="p")
    inputs = components(panel, dcc.Input)
    assert [(i.min, i.max, i.value) for i in inputs] == [("1", "4", "1")]
    assert 'data-axis="0"' in panel.children[0]["props"]["html"]  # the sample's axis


def test_iteration_stepper_links_every_nearby_iteration():
    nav = layouts.iteration_stepper(run_id=3, current=1, count=3)
    hrefs = [link.href for link in components(nav, dcc.Link)]
    assert hrefs == [links.iteration(3, i) for i in (1, 2, 3)] + [links.iteration(3, 2)]
    assert "‹ previous" in text_of(nav)  # shown, but not a link on the first iteration
    active = [a for a in components(nav, dcc.Link) if "active" in (a.className or "").split()]
    assert [text_of(a) for a in active] == ["1"]
    long = layouts.iteration_stepper(run_id=1, current=50, count=100, window=2)
    assert text_of(long).split() == [
        "‹",
        "previous",
        "1",
        "…",
        "48",
        "49",
        "50",
        "51",
        "52",
        "…",
        "100",
        "next",
        "›",
    ]
    assert "no iterations" in text_of(layouts.iteration_stepper(1, 0, 0))


def test_not_found_says_what_and_links_back():
    page = layouts.not_found("there is no run 9 in this store")
    assert "There is no run 9 in this store." in text_of(page)
    assert components(page, dcc.Link)[0].href == links.RUNS


def test_empty_store_says_how_to_create_a_run():
    text = text_of(layouts.empty_store("/data/runs.db"))
    assert "cnnviz trace --db /data/runs.db" in text and "cnnviz demo --db /data/runs.db" in text


def _matrix(rows: int, cols: int) -> str:
    body = r" \\ ".join(" & ".join(f"{i + j / 10:.1f}" for j in range(cols)) for i in range(rows))
    return rf"\begin{{bmatrix}}{body}\end{{bmatrix}}"


def static(markup):
    """Markup from dashapp.statichtml, read as the components it shows."""
    return as_component(statichtml.html_node([markup]))


def expand_buttons(block) -> list:
    """The "show every stored entry" buttons (each formula also has its copy button)."""
    return [b for b in components(block, html.Button) if "formula-expand" in b.className]


def test_a_formula_only_broken_in_two_lines_offers_no_stored_entries(seed_store):
    """The seed page's im2col: too wide for one line, whole on two. Nothing was left out,
    so there is nothing more to show."""
    from storage import RunStore

    with RunStore(seed_store) as store:
        step = store.load_iteration(1, 1, with_data=False).steps[0]
    assert step.title.startswith("Unfold input patches")
    block = static(layouts.fitted_formula(step.formula_values, "/formula/1/1/0.tex"))
    assert not expand_buttons(block)
    (tex,) = formulas_in(block)
    assert r"\begin{gathered}" in tex  # broken in two, nothing elided
    assert r"\cdots" not in tex


def test_an_elided_formula_offers_every_stored_entry():
    latex = rf"W = {_matrix(2, 60)}"
    block = static(layouts.fitted_formula(latex, "/formula/1/1/3.tex"))
    (button,) = expand_buttons(block)
    assert button.children == "show every stored entry"
    assert r"\cdots" in formulas_in(block)[0]
