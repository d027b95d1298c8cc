"""Every page in headless Chromium, against `cnnviz serve` on a store traced by the real tracer.

Checks what a user sees: no console errors or failed requests, formulas typeset
by MathJax (no raw `$$`), heatmaps holding the stored numbers, both sides and
the difference on the compare page, working links and back/forward, the
not-found page, and a run named like an HTML injection shown as plain text.
"""

from __future__ import annotations

import io
import re
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from dash_helpers import (
    INJECTION,
    cnnviz_serve,
    graph_data,
    open_page,
    wait_ready,
    wait_view,
)

from dashapp.formatting import format_diff, format_matrix
from dashapp.tensorview import matrix_view
from storage import RunStore

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def base(dash_store):
    with cnnviz_serve(dash_store) as url:
        yield url


@pytest.fixture(scope="module")
def store(dash_store):
    with RunStore(dash_store) as reader:
        yield reader


def body_text(tab) -> str:
    return tab.inner_text("body")


def assert_clean(tab) -> None:
    assert list(tab.problems) == []
    assert tab.locator('img[src="x"]').count() == 0  # nothing from the store became markup


def assert_typeset(tab, at_least: int) -> None:
    assert tab.locator(".formula mjx-container").count() >= at_least
    assert "$$" not in body_text(tab)


def expected_view(tensor, lead_index=()):
    return matrix_view(tensor.array, tensor.shape, role=tensor.role, lead_index=lead_index)


def assert_heatmap_shows(drawn: dict, view) -> None:
    z = np.array(
        [[np.nan if v is None else v for v in row] for row in drawn["z"]], dtype=np.float64
    )
    np.testing.assert_array_equal(z, view.values)
    assert drawn["row0_on_top"] is True
    if view.show_text:
        expected = [
            t for row in format_matrix(view.values, view.style, view.missing) for t in row if t
        ]
        assert drawn["labels"] == expected
    else:
        assert drawn["labels"] == []


# ---------------------------------------------------------------- runs


def test_runs_page_lists_every_run_with_the_injection_as_text(page, base, store):
    open_page(page, base + "/")
    runs = store.list_runs()
    rows = page.locator("table.runs-table tbody tr")
    assert rows.count() == len(runs) == 3
    assert page.get_by_text(INJECTION, exact=True).first.is_visible()
    for run in runs:
        assert f"{run.final_loss:.4f}" in rows.nth(run.id - 1).inner_text()
    assert_clean(page)


def test_runs_sort_then_pick_two_to_compare(page, base, store):
    open_page(page, base + "/")
    page.get_by_role("link", name="Final loss").click()
    page.wait_for_url(re.compile(r"sort=loss&order=asc"))
    wait_ready(page, "th.sorted")
    by_loss = sorted(store.list_runs(), key=lambda r: r.final_loss)
    order = page.locator("table.runs-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.run)"
    )
    assert order == [str(r.id) for r in by_loss]

    compare = page.locator("#runs-compare")
    assert "disabled" in compare.get_attribute("class")
    page.locator('tr[data-run="1"] input[type=checkbox]').check()
    page.wait_for_url(re.compile(r"pick=1"))  # each tick is in the URL
    wait_ready(page, 'tr[data-run="1"] input:checked')
    page.locator('tr[data-run="2"] input[type=checkbox]').check()
    page.wait_for_url(re.compile(r"pick=1%2C2"))
    wait_ready(page, 'tr[data-run="2"] input:checked')
    page.wait_for_function(
        "!document.getElementById('runs-compare').classList.contains('disabled')"
    )
    compare.click()
    first, second = 1, 2  # ticked runs, in the order they were ticked
    page.wait_for_url(
        re.compile(rf"/compare\?a={first}%3A3&b={second}%3A3&runs={first}%2C{second}$")
    )
    wait_ready(page, "#compare-diff-graph .js-plotly-plot")
    for graph in ("#compare-a-graph", "#compare-b-graph", "#compare-diff-graph"):
        assert page.locator(graph).is_visible()
    assert_clean(page)


# ---------------------------------------------------------------- model


def test_model_page_typesets_every_layer_formula(page, base, store):
    open_page(page, base + "/model?run=1")
    run = store.get_run(1)
    assert page.locator("table.layers-table tbody tr").count() == len(run.layers)
    assert_typeset(page, sum(1 for layer in run.layers if layer.formula))
    diagram = page.locator("#model-diagram").inner_text()
    for layer in run.layers:
        assert layer.name in diagram
    assert_clean(page)


# ---------------------------------------------------------------- iteration


# What a view of the iteration page shows: its steps (number, title, check), its section
# titles, how many formulas are typeset, and where "next" leads.
VIEW_SHOWN = """() => {
    const view = document.querySelector('.iteration-view');
    const next = document.getElementById('iteration-next');
    return {
        view: view.dataset.view,
        titles: [...view.querySelectorAll('.section-title')].map((t) => t.innerText),
        cards: [...view.querySelectorAll('section.step-card')].map((c) => [
            Number(c.id.replace('step-', '')),
            c.querySelector('.step-title').innerText,
            c.querySelector('.verify').innerText,
        ]),
        typeset: view.querySelectorAll('.step-card .formula mjx-container').length,
        text: document.body.innerText,
        next: next ? next.getAttribute('href') : null,
    };
}"""


# Every step card of the view shown has both its formulas typeset (a view's formulas can
# be typeset again just after it is first ready, when a formula's markdown re-renders).
VIEW_TYPESET = """() => {
    const view = document.querySelector('.iteration-view');
    if (!view) return false;
    const cards = view.querySelectorAll('section.step-card').length;
    const typeset = view.querySelectorAll('.step-card .formula mjx-container').length;
    return typeset === 2 * cards && !document.body.innerText.includes('$$');
}"""


def test_iteration_walks_from_input_to_update_one_view_at_a_time(page, base, store):
    """The student's path: from the input, "next" through every layer of the forward
    pass, the loss, the backward pass and the update to what if; each view shows its
    steps typeset and checked, and nothing else."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    open_page(page, base + "/iteration?run=2&it=2")
    record = store.load_iteration(2, 2)
    seen, views, titles = [], [], []
    while True:
        try:
            page.wait_for_function(VIEW_TYPESET, timeout=30_000)
        except PlaywrightTimeout:
            pass  # the assertion below says what was shown
        shown = page.evaluate(VIEW_SHOWN)  # one round trip per view
        views.append(shown["view"])
        titles += shown["titles"]
        assert shown["typeset"] == 2 * len(shown["cards"]) and "$$" not in shown["text"]
        for number, title, badge in shown["cards"]:
            step = record.steps[number - 1]
            assert step.title in title
            if step.verified:
                assert badge == f"✓ matches autograd, max |Δ| = {format_diff(step.max_abs_diff)}"
            elif step.verified is None:
                assert badge == "no PyTorch counterpart (intermediate)"
            seen.append(number)
        if shown["next"] is None:
            break
        page.locator("#iteration-next").click()
        query = parse_qs(urlsplit(shown["next"]).query)
        wait_view(page, f"{query['phase'][0]}/{query.get('layer', [''])[0]}")
    assert seen == list(range(1, len(record.steps) + 1))
    assert views[0] == "input/" and views[1] == "forward/conv" and views[-1] == "whatif/"
    assert list(dict.fromkeys(titles)) == [
        "Input",
        "Forward pass",
        "Loss",
        "Backward pass",
        "Weight update",
        "What if",
    ]
    page.go_back()  # back through the walk, view by view
    page.wait_for_url(re.compile(r"phase=update&layer=fc$"))
    wait_view(page, "update/fc")
    assert_clean(page)


def test_iteration_heatmaps_show_the_stored_numbers(page, base, store):
    open_page(page, base + "/iteration?run=1&it=3&phase=backward")
    record = store.load_iteration(1, 3)
    panels = page.locator(".tensor-panel:has(.heatmap)")
    assert panels.count() > 20
    for i in range(panels.count()):
        panel = panels.nth(i)
        tensor = record.tensor(panel.get_attribute("data-tensor"))
        (drawn,) = graph_data(panel, ".js-plotly-plot")
        assert_heatmap_shows(drawn, expected_view(tensor))
    assert_clean(page)


def test_iteration_views_stepper_menu_and_back_forward(page, base):
    open_page(page, base + "/iteration?run=2&it=1&phase=backward")
    assert page.locator("h1").inner_text() == "Iteration 1 of 3"
    # another iteration keeps the phase shown
    page.locator(".iteration-stepper").get_by_role("link", name="2", exact=True).click()
    page.wait_for_url(re.compile(r"it=2&phase=backward$"))
    wait_ready(page, "h1:text-is('Iteration 2 of 3')")
    # the menu opens one layer, the stage bar one phase
    page.locator(".toc-backward .toc-layer", has_text="fc").click()
    page.wait_for_url(re.compile(r"it=2&phase=backward&layer=fc$"))
    wait_view(page, "backward/fc")
    assert page.locator(".step-card .step-layer").all_inner_texts() == ["fc · Linear"] * 3
    page.locator(".journey-stage", has_text="Loss").click()  # a phase opens on its first layer
    page.wait_for_url(re.compile(r"it=2&phase=loss&layer=loss$"))
    wait_view(page, "loss/loss")
    for url, view in (
        (r"phase=backward&layer=fc$", "backward/fc"),
        (r"it=2&phase=backward$", "backward/"),
        (r"it=1&phase=backward$", "backward/"),
    ):
        page.go_back()
        page.wait_for_url(re.compile(url))
        wait_view(page, view)
    wait_ready(page, "h1:text-is('Iteration 1 of 3')")  # the same view of iteration 1
    page.go_forward()
    wait_ready(page, "h1:text-is('Iteration 2 of 3')")
    assert page.url.endswith("it=2&phase=backward")

    # the steps of the view are anchors on the page: a jump does not rebuild it
    page.evaluate("document.querySelector('.step-card').dataset.marker = 'kept'")
    last = page.locator(".toc a.toc-step").last
    target = last.get_attribute("href")
    last.click()
    page.wait_for_url(re.compile(target + "$"))
    # Bootstrap scrolls smoothly: wait until the card has arrived at the top
    page.wait_for_function(
        f"Math.abs(document.getElementById('{target[1:]}').getBoundingClientRect().top) < 100"
    )
    assert page.evaluate("document.querySelector('.step-card').dataset.marker") == "kept"

    # another run from the picker
    page.locator("#iteration-run").click()
    # dropdown labels are plain strings: the name sits between FSI and PDI (bidi isolation)
    page.get_by_role("option", name=re.compile(r"^#1 \u2068seed-cnn-seed0\u2069, seed 0$")).click()
    page.wait_for_url(re.compile(r"\?run=1&it=1$"))
    wait_ready(page, ".page-subtitle:has-text('seed-cnn-seed0')")
    assert_clean(page)


def test_copy_as_latex_copies_the_typeset_formula(browser, base, store):
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    try:
        tab = context.new_page()
        open_page(tab, base + "/iteration?run=1&it=1&phase=backward&layer=fc")
        card = tab.locator("section.step-card").first
        number = int(card.get_attribute("id").removeprefix("step-"))
        step = store.load_iteration(1, 1).steps[number - 1]
        card.locator(".formula-row").first.locator(".copy-latex").click()
        card.locator(".copy-latex.copied").wait_for()
        assert tab.evaluate("navigator.clipboard.readText()") == " ".join(step.formula.splitlines())
    finally:
        context.close()


def test_downloads_from_the_page_are_the_stored_tensors(page, base, store):
    open_page(page, base + "/iteration?run=1&it=1")
    link = page.locator(
        '.tensor-panel[data-tensor="conv.weight"] a.download-link', has_text=".npy"
    ).first
    response = page.request.get(base + link.get_attribute("href"))
    assert response.status == 200
    array = np.load(io.BytesIO(response.body()), allow_pickle=False)
    np.testing.assert_array_equal(array, store.load_tensor(1, 1, "conv.weight").array)
    assert page.request.get(base + "/download/1/1/nope.npy").status == 404
    assert_clean(page)


# ---------------------------------------------------------------- compare


def test_compare_shows_both_sides_on_one_scale_and_their_difference(page, base, store):
    open_page(page, base + "/compare?a=1:3&b=2:3&layer=fc&role=param")
    a = store.load_tensor(1, 3, "fc.weight").array
    b = store.load_tensor(2, 3, "fc.weight").array
    (side_a,) = graph_data(page, "#compare-a-graph")
    (side_b,) = graph_data(page, "#compare-b-graph")
    (diff,) = graph_data(page, "#compare-diff-graph")
    assert_heatmap_shows(side_a, matrix_view(a))
    assert_heatmap_shows(side_b, matrix_view(b))
    np.testing.assert_array_equal(np.array(diff["z"]), b.astype(np.float64) - a)
    assert side_a["zmin"] == side_b["zmin"] and side_a["zmax"] == side_b["zmax"]
    assert side_a["zmax"] == pytest.approx(float(max(np.abs(a).max(), np.abs(b).max())))
    stats = page.locator("#compare-stats").inner_text()
    assert f"{np.abs(b.astype(np.float64) - a).max():.4g}" in stats
    # the histories overlay all three runs, the injection name as legend text
    assert len(graph_data(page, "#compare-loss")) == 3
    assert INJECTION in page.locator("#compare-loss").inner_text()
    assert_clean(page)


def test_compare_choices_live_in_the_url(page, base, store):
    open_page(page, base + "/compare?a=1:3&b=2:3&layer=fc&role=param")
    page.locator("#compare-role").get_by_text("gradient", exact=True).click()
    page.wait_for_url(re.compile(r"role=param_grad"))
    wait_ready(page, "#compare-tensor:has-text('fc.weight.grad')")
    (side_b,) = graph_data(page, "#compare-b-graph")
    assert_heatmap_shows(side_b, matrix_view(store.load_tensor(2, 3, "fc.weight.grad").array))
    page.go_back()
    wait_ready(page, "#compare-tensor:not(:has-text('fc.weight.grad'))")
    assert "role=param&" in page.url or page.url.endswith("role=param")
    (side_b,) = graph_data(page, "#compare-b-graph")
    assert_heatmap_shows(side_b, matrix_view(store.load_tensor(2, 3, "fc.weight").array))
    assert_clean(page)


# ---------------------------------------------------------------- not found


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/no/such/page", "There is no page at this address."),
        ("/iteration?run=999", "There is no run 999 in this store."),
        ("/iteration?run=1&it=42", "Run 1 has no iteration 42"),
        ("/model?run=%3Cscript%3E", "run '<script>' is not a valid number"),
        ("/compare?a=1:1&b=2:1&layer=nope", "Run 1 has no layer 'nope'."),
    ],
)
def test_unknown_addresses_get_the_not_found_page(page, base, path, message):
    response = page.goto(base + path)
    wait_ready(page)
    assert response.status == 404  # the address names nothing
    expected = (
        "HTTP 404: " + base,
        "console error: Failed to load resource: the server responded with a status of 404",
    )
    page.problems[:] = [p for p in page.problems if not p.startswith(expected)]
    assert page.locator("h1").inner_text() == "Not found"
    assert message.lower() in page.locator(".not-found-message").inner_text().lower()
    page.get_by_role("link", name="Back to the runs").click()
    page.wait_for_url(base + "/")
    wait_ready(page, "table.runs-table")
    assert page.locator("table.runs-table").is_visible()
    assert_clean(page)


def test_the_dropdown_chunk_loads_with_the_page_shell(page, base):
    """dcc.Dropdown is a lazy component: the page shell holds a hidden one
    (app.dropdown_warm_up), so dcc's dropdown chunk is loaded while a page waits for its
    content, even on a page whose content has no dropdown, and the pages' run pickers
    render with their content instead of in a task after it. The hidden one is out of
    sight and out of the accessibility tree."""
    chunks = []
    page.on("request", lambda r: chunks.append(r.url) if "async-dropdown" in r.url else None)
    page.goto(base + "/no/such/page")
    wait_ready(page, ".not-found-message")
    page.problems[:] = [p for p in page.problems if "404" not in p]  # the address is a 404
    assert (
        page.locator(".not-found-message .Select, .not-found-message .dash-dropdown").count() == 0
    )
    page.wait_for_load_state("networkidle")
    assert len(chunks) == 1
    warm = page.locator("#cnnviz-dropdown-warm-up")
    assert warm.count() == 1 and not warm.is_visible()
    assert page.get_by_role("combobox").count() == 0
    open_page(page, base + "/iteration?run=1&it=1&phase=forward", ".tensor-panel")
    picker = page.locator("#iteration-run")
    assert picker.is_visible() and "seed" in picker.inner_text().lower()
    assert_clean(page)


def test_the_navbar_marks_the_page_shown_and_moves_inside_the_app(page, base):
    """The navbar is static markup (layouts.navbar): its links move inside the app and
    the page shown is marked, as dbc.NavLink's active="exact" did."""

    def active():
        return page.locator(".app-navbar .nav-link.active").all_inner_texts()

    open_page(page, base + "/iteration?run=2&it=1&phase=backward", ".step-card")
    assert active() == ["Iteration"]
    page.evaluate("window.cnnvizSameDocument = true")
    page.locator("#nav-runs").click()
    wait_ready(page, "table.runs-table")
    assert active() == ["Runs"]
    page.go_back()
    wait_ready(page, ".step-card")
    assert active() == ["Iteration"]
    assert page.evaluate("window.cnnvizSameDocument === true")
    assert_clean(page)


@pytest.mark.parametrize(
    ("path", "ready"),
    [
        ("/iteration?run=3&it=1", ".tensor-panel"),
        ("/model?run=3", "#model-diagram .js-plotly-plot"),
        ("/compare?a=3:1&b=1:1", "#compare-norms .js-plotly-plot"),
    ],
)
def test_a_run_named_like_html_is_shown_as_text_everywhere(page, base, path, ready):
    open_page(page, base + path, ready)
    assert page.get_by_text(INJECTION, exact=False).first.is_visible()
    assert INJECTION in body_text(page)
    assert_clean(page)  # no <img src=x>, no alert dialog


def test_formulas_are_typeset_off_the_main_thread(page, base, store):
    """Formulas are typeset by MathJax in a worker (assets/formula_queue.js): MathJax is
    never loaded into the page itself, a formula added to the page is typeset in a later
    task, a formula whose TeX changes shows the new one and never the old, and every
    formula of the view ends up typeset."""
    open_page(page, base + "/iteration?run=1&it=1&phase=forward")
    record = store.load_iteration(1, 1)
    assert_typeset(
        page, 2 * sum(1 for s in record.steps if s.phase == "forward" and s.layer != "loss")
    )
    typeset_in_the_call = page.evaluate(
        """() => {
            const el = document.createElement('div');
            el.id = 'queued-formula';
            el.setAttribute('data-tex', 'x_{n}^{2}');
            document.getElementById('step-1').appendChild(el);
            return el.querySelector('mjx-container') !== null;
        }"""
    )
    assert typeset_in_the_call is False
    assert page.evaluate("typeof window.MathJax") == "undefined"
    page.wait_for_selector("#queued-formula mjx-container", timeout=10_000)
    assert page.locator("#queued-formula [data-mml-node=merror]").count() == 0
    assert page.locator("#queued-formula mjx-assistive-mml").text_content() == "xn2"
    # new TeX in the same box: the old formula is gone within the same task, before
    # anything is painted (the page's MutationObserver runs as a microtask before ours)
    emptied = page.evaluate(
        """() => {
            const el = document.getElementById('queued-formula');
            el.setAttribute('data-tex', 'y_{m}');
            return Promise.resolve().then(() => el.querySelector('mjx-container') === null);
        }"""
    )
    assert emptied is True
    page.wait_for_function(
        "document.querySelector('#queued-formula mjx-assistive-mml')?.textContent === 'ym'",
        timeout=10_000,
    )
    assert page.locator("#queued-formula mjx-container").count() == 1
    assert_clean(page)
