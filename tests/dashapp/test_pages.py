"""Page layouts and callbacks, called in-process on a store traced by the real tracer."""

from __future__ import annotations

import json
import re
import sys
from urllib.parse import urlencode

import numpy as np
import pytest
from dash import dcc, html
from dash_helpers import (
    INJECTION,
    clone_run,
    components,
    copy_store,
    drawn_z,
    formulas_in,
    run_callback,
    text_of,
    using_store,
)

from dashapp import links, whatif
from dashapp.tensorview import matrix_view
from storage import RunStore


@pytest.fixture(scope="module")
def pages(dash_app):
    """The page modules Dash Pages imported for `dash_app`."""

    class Pages:
        runs = sys.modules["dashapp.pages.runs"]
        model = sys.modules["dashapp.pages.model"]
        iteration = sys.modules["dashapp.pages.iteration"]
        compare = sys.modules["dashapp.pages.compare"]
        not_found = sys.modules["dashapp.pages.not_found_404"]

    return Pages


@pytest.fixture
def request_ctx(dash_app):
    with dash_app.server.test_request_context():
        yield


@pytest.fixture(scope="module")
def store(dash_store):
    with RunStore(dash_store) as reader:
        yield reader


def assert_not_found(layout, *words):
    text = text_of(layout)
    assert "Not found" in text, text
    for word in words:
        assert word.lower() in text.lower(), text
    assert components(layout, dcc.Link)[0].href == links.RUNS


# ---------------------------------------------------------------- runs


def test_runs_lists_every_run_with_its_facts(pages, store, request_ctx):
    layout = pages.runs.layout()
    rows = components(layout, html.Tr)[1:]
    runs = store.list_runs()
    assert [getattr(r, "data-run") for r in rows] == [str(r.id) for r in runs]
    text = text_of(layout)
    for run in runs:
        assert run.name in text and f"{run.final_loss:.4f}" in text
    assert INJECTION in text  # the name, as text
    assert components(layout, dcc.Interval)[0].disabled  # nothing is running


@pytest.mark.parametrize(
    ("sort", "order"), [("loss", "desc"), ("loss", "asc"), ("name", "asc"), ("seed", "desc")]
)
def test_runs_sort_by_any_column(pages, store, request_ctx, sort, order):
    key = {
        "loss": lambda r: r.final_loss,
        "name": lambda r: r.name.lower(),
        "seed": lambda r: r.seed,
    }[sort]
    expected = [str(r.id) for r in sorted(store.list_runs(), key=key, reverse=order == "desc")]
    rows = components(pages.runs.layout(sort=sort, order=order), html.Tr)[1:]
    assert [getattr(r, "data-run") for r in rows] == expected


def test_runs_ignores_an_unknown_sort(pages, request_ctx):
    rows = components(pages.runs.layout(sort="<b>", order="sideways"), html.Tr)[1:]
    assert [getattr(r, "data-run") for r in rows] == ["1", "2", "3"]


def test_runs_empty_store_says_how_to_create_one(pages, dash_app, tmp_path, request_ctx):
    empty = tmp_path / "empty.db"
    empty.touch()
    with using_store(dash_app, empty):
        for layout in (
            pages.runs.layout(),
            pages.iteration.layout(),
            pages.model.layout(),
            pages.compare.layout(),
        ):
            assert f"cnnviz trace --db {empty}" in text_of(layout)


def test_picking_runs_keeps_the_selection_in_the_url(pages, request_ctx):
    ids = [{"type": "runs-pick", "run": i} for i in (1, 2, 3)]
    view = pages.runs._stored(pages.runs.parse_view({"sort": "loss", "pick": "9"}))
    href = pages.runs.pick_runs([True, False, True], ids, view)
    assert href == links.runs("loss", "asc", pick="9,1,3")  # run 9 is on another page
    unticked = pages.runs._stored(pages.runs.parse_view({"pick": "1,3"}))
    assert pages.runs.pick_runs([False, False, True], ids, unticked) == links.runs(pick="3")


def test_two_picked_runs_link_to_their_comparison(pages, request_ctx):
    layout = pages.runs.layout(pick="1,3")
    compare = [c for c in components(layout, dcc.Link) if getattr(c, "id", None) == "runs-compare"][
        0
    ]
    assert compare.href == links.compare((1, 3), (3, 3), runs=[1, 3])
    assert "disabled" not in compare.className
    assert "2 runs selected" in text_of(layout)
    one = pages.runs.layout(pick="1")
    assert (
        "disabled"
        in [c for c in components(one, dcc.Link) if getattr(c, "id", None) == "runs-compare"][
            0
        ].className
    )
    boxes = {
        c.id["run"]: c.value for c in components(layout) if isinstance(getattr(c, "id", None), dict)
    }
    assert boxes == {1: True, 2: False, 3: True}


def test_runs_page_filters_and_pages(pages, store, request_ctx):
    layout = pages.runs.layout(per="25", seed="1")
    rows = components(layout, html.Tr)[1:]
    assert [getattr(r, "data-run") for r in rows] == [
        str(r.id) for r in store.list_runs() if r.seed == 1
    ]
    assert "1 run match the filters" in text_of(layout).replace("runs match", "run match")
    href = pages.runs.filter_runs(
        "seed-cnn", None, 0, " x ", "", "2026-13-01", pages.runs._stored(pages.runs.parse_view({}))
    )
    assert href == links.runs(model="seed-cnn", seed=0, name="x")  # a bad date is ignored
    assert_not_found(pages.runs.layout(seed="one"), "seed")
    assert_not_found(pages.runs.layout(**{"from": "yesterday"}), "date")


def test_runs_refresh_keeps_the_ticks_and_stops_when_nothing_runs(pages, request_ctx):
    view = pages.runs._stored(pages.runs.parse_view({"sort": "loss", "order": "desc", "pick": "2"}))
    table, stop = pages.runs.refresh(5, view)
    boxes = {
        c.id["run"]: c.value
        for c in components(table)
        if getattr(c, "id", None) and isinstance(c.id, dict)
    }
    assert boxes == {1: False, 2: True, 3: False}
    assert stop is True


# ---------------------------------------------------------------- iteration


def query_of(href: str) -> dict:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(href).query))


def walk_views(pages, **query) -> list:
    """Every view of an iteration, from the first, following each view's "next" link."""
    shown = [pages.iteration.layout(**query)]
    while nxt := [
        c for c in components(shown[-1], dcc.Link) if getattr(c, "id", None) == "iteration-next"
    ]:
        shown.append(pages.iteration.layout(**query_of(nxt[0].href)))
        assert len(shown) < 100
    return shown


def test_iteration_walks_every_step_in_order_with_its_check(pages, store, request_ctx):
    """Input, then each layer of the forward pass, the loss, the backward pass and the
    update, then what if: one view at a time, every step once, in order."""
    record = store.load_iteration(1, 2)
    shown = walk_views(pages, run="1", it="2")
    views = [components(v, html.Div, "iteration-view")[0] for v in shown]
    assert [getattr(v, "data-view") for v in views] == [
        "input/",
        *[f"forward/{layer}" for layer in ("conv", "relu", "pool", "flatten", "fc")],
        "loss/loss",
        *[f"backward/{layer}" for layer in ("loss", "fc", "flatten", "pool", "relu", "conv")],
        "update/conv",
        "update/fc",
        "whatif/",
    ]
    cards = [c for v in shown for c in components(v, html.Section, "step-card")]
    assert [c.id for c in cards] == [f"step-{n}" for n in range(1, len(record.steps) + 1)]
    for card, step in zip(cards, record.steps, strict=True):
        assert step.title in text_of(card)
        mark = "none" if step.verified is None else ("yes" if step.verified else "no")
        assert getattr(card, "data-verified") == mark
        assert len(formulas_in(card)) == 2  # general formula, with numbers
    sections = [
        s.id
        for v in shown
        for s in components(v, html.Section)
        if (s.id or "").startswith("section-")
    ]
    assert list(dict.fromkeys(sections)) == [
        "section-input",
        "section-forward",
        "section-loss",
        "section-backward",
        "section-update",
        "section-whatif",
    ]
    # previous goes back the same way; the menu links every layer of every phase
    first_back = [
        c for c in components(shown[1], dcc.Link) if getattr(c, "id", None) == "iteration-previous"
    ]
    assert first_back[0].href == "/iteration?run=1&it=2"
    menu = [
        c.href for c in components(shown[0], dcc.Link) if "toc-layer" in getattr(c, "className", "")
    ]
    layer_views = [getattr(v, "data-view").split("/") for v in views[1:-1]]
    assert menu == [links.iteration(1, 2, phase=p, layer=name) for p, name in layer_views]
    assert all("Iteration 2 of 3" in text_of(v) for v in shown)


def test_iteration_shows_one_phase_and_its_steps_only(pages, store, request_ctx):
    record = store.load_iteration(1, 1)
    backward = [s for s in record.steps if s.phase == "backward"]
    layout = pages.iteration.layout(run="1", it="1", phase="backward")
    cards = components(layout, html.Section, "step-card")
    assert [components(c, html.H4)[0].children for c in cards] == [s.title for s in backward]
    toc = [a.href for a in components(layout, html.A) if (a.href or "").startswith("#step-")]
    assert toc == [c.id.replace("step-", "#step-") for c in cards]
    nxt = [c for c in components(layout, dcc.Link) if getattr(c, "id", None) == "iteration-next"]
    assert nxt[0].href == "/iteration?run=1&it=1&phase=update"  # phase by phase
    stages = [
        c.href
        for c in components(layout, dcc.Link)
        if "journey-stage" in getattr(c, "className", "")
    ]
    assert stages == [
        "/iteration?run=1&it=1",
        "/iteration?run=1&it=1&phase=forward&layer=conv",  # a phase opens on its first layer
        "/iteration?run=1&it=1&phase=loss&layer=loss",
        "/iteration?run=1&it=1&phase=backward&layer=loss",
        "/iteration?run=1&it=1&phase=update&layer=conv",
        "/iteration?run=1&it=1&phase=whatif",
    ]
    stepper = [c.href for c in components(layout, dcc.Link) if c.children == "2"]
    assert stepper == ["/iteration?run=1&it=2&phase=backward"]  # same phase, next iteration


def test_iteration_heatmaps_hold_the_stored_values(pages, dash_app, store, request_ctx):
    """The page reads no whole tensor; each slot's figure address serves the stored values."""
    layout = pages.iteration.layout(run="2", it="3")
    record = store.load_iteration(2, 3)
    panels = components(layout, html.Div, "tensor-panel")
    assert panels
    client = dash_app.server.test_client()
    for panel in panels:
        tensor = record.tensor(getattr(panel, "data-tensor"))
        slots = components(panel, html.Div, "heatmap-slot")
        if not slots:
            continue
        response = client.get(getattr(slots[0], "data-src"))
        assert response.status_code == 200
        expected = matrix_view(tensor.array, tensor.shape, role=tensor.role).values
        np.testing.assert_array_equal(drawn_z(response.get_data(as_text=True)), expected)


@pytest.mark.parametrize("view", [{}, {"phase": "forward", "layer": "conv"}, {"phase": "backward"}])
def test_a_view_sends_its_first_two_figures_as_the_figure_route_answers_them(
    pages, dash_app, store, request_ctx, view
):
    """The first two heatmaps of a view come with it (the browser draws them without
    asking); each is the figure route's answer for its slot's address, the stored
    values; the slots further down are left to the route."""
    layout = pages.iteration.layout(run="2", it="3", **view)
    slots = components(layout, html.Div, "heatmap-slot")
    assert len(slots) > 2
    record = store.load_iteration(2, 3)
    client = dash_app.server.test_client()
    for slot in slots[:2]:
        src = getattr(slot, "data-src")
        assert getattr(slot, "data-sent-src") == src
        sent = json.loads(getattr(slot, "data-sent-figure"))
        response = client.get(src)
        assert response.status_code == 200
        assert sent == response.get_json()
        name = src.split("/")[4].split(".json")[0]
        tensor = record.tensor(name)
        expected = matrix_view(tensor.array, tensor.shape, role=tensor.role).values
        np.testing.assert_array_equal(drawn_z(getattr(slot, "data-sent-figure")), expected)
    assert not any(hasattr(slot, "data-sent-figure") for slot in slots[2:])


def test_iteration_defaults_to_the_latest_run(pages, request_ctx):
    assert "Iteration 1 of 3" in text_of(pages.iteration.layout())
    assert INJECTION in text_of(pages.iteration.layout())  # run 3's name, as text


@pytest.mark.parametrize(
    ("query", "words"),
    [
        (dict(run="999"), ["no run 999"]),
        (dict(run="abc"), ["'abc' is not a valid number"]),
        (dict(run="1", it="0"), ["'0' is not a valid number"]),
        (dict(run="1", it="99"), ["run 1 has no iteration 99", "3 iterations"]),
        (dict(run=["1", "2"]), ["more than once"]),
        (dict(run="1", it="1", phase="sideways"), ["no phase 'sideways'"]),
        (dict(run="1", it="1", phase="forward", layer="nope"), ["no layer 'nope'"]),
        (dict(run="1", it="1", layer="conv"), ["no layer 'conv' in its input phase"]),
        (dict(run="1", it="1", phase=["loss", "update"]), ["more than once"]),
    ],
)
def test_iteration_unknown_things_are_not_found(pages, request_ctx, query, words):
    assert_not_found(pages.iteration.layout(**query), *words)


def test_iteration_ignores_unknown_query_parameters(pages, request_ctx):
    assert "Iteration 1 of 3" in text_of(pages.iteration.layout(run="1", it="1", utm_source="x"))


def test_iteration_of_a_run_still_being_traced(pages, dash_app, dash_store, tmp_path, request_ctx):
    live = copy_store(dash_store, tmp_path / "live.db")
    run_id, writer = clone_run(live, 1, name="live", seed=5, iterations=0, finish=False)
    try:
        with using_store(dash_app, live):
            layout = pages.iteration.layout(run=str(run_id))
            assert "still being traced" in text_of(layout)
            assert components(layout, dcc.Interval)[0].disabled is False
            with RunStore(dash_store) as source:
                writer.add_iteration(source.load_iteration(1, 1))
            stepper, status, stop = pages.iteration.poll(1, {"run": run_id, "it": None})
            assert [link.children for link in components(stepper, dcc.Link)] == ["1"]
            assert status.children == "running" and stop is False
            writer.finish()
            _, status, stop = pages.iteration.poll(2, {"run": run_id, "it": 1})
            assert status.children == "completed" and stop is True
    finally:
        writer.engine.dispose()


def test_choosing_another_run_goes_to_its_first_iteration(pages):
    assert pages.iteration.choose_run(2, {"run": 1, "it": 3}) == "/iteration?run=2&it=1"
    assert pages.iteration.choose_run(1, {"run": 1, "it": 3}) is not None  # dash.no_update


def test_a_panel_moves_its_window_and_plane(pages, dash_app, tmp_path, request_ctx):
    """A panel's controls work in the browser (assets/tensor_panel.js) within the limits
    the panel names; each window's figure carries the caption shown under it."""
    import json as json_

    from dashapp import tensorpanel
    from storage import RunInfo, RunWriter, TensorRecord, open_engine
    from storage.records import IterationRecord

    path = tmp_path / "nd.db"
    engine = open_engine(path)
    writer = RunWriter.begin(engine, RunInfo(name="nd"))
    values = np.arange(4 * 3 * 100 * 90, dtype=np.float32).reshape(4, 3, 100, 90)
    record = TensorRecord("x.out", "activation", values, layer="x")
    writer.add_iteration(IterationRecord(1, 0.5, [record], []))
    writer.finish()
    engine.dispose()
    panel = tensorpanel.TensorPanel(
        record, run_id=1, index=1, aio_id="p", view=tensorpanel.PanelView((3, 2), 80, 30)
    )
    limits = json_.loads(getattr(panel, "data-limits"))
    assert limits == {"lead": [4, 3], "rows": 100, "cols": 90, "window": [64, 64]}
    markup = str(panel.children[0]["props"]["html"])
    for axis, value in (("0", 4), ("1", 3), ("row", 37), ("col", 27)):  # clamped, 1-based
        assert f'value="{value}" data-axis="{axis}"' in markup
    client = dash_app.server.test_client()
    with using_store(dash_app, path):
        for query, caption, window in (
            (
                "lead=2,1&row=0&col=0",
                "sample 3 of 4; channel 2 of 3; rows 1–64 of 100; columns 1–64 of 90",
                np.s_[2, 1, :64, :64],
            ),
            (
                "lead=2,1&row=36&col=26",
                "sample 3 of 4; channel 2 of 3; rows 37–100 of 100; columns 27–90 of 90",
                np.s_[2, 1, 36:100, 26:90],
            ),
        ):
            answer = client.get(f"/figure/1/1/x.out.json?{query}").get_data(as_text=True)
            assert json_.loads(answer)["caption"] == caption
            np.testing.assert_array_equal(drawn_z(answer), values[window])


def test_a_view_in_the_url_opens_that_window(pages, dash_app, store, request_ctx):
    layout = pages.iteration.layout(run="1", it="1", **{"t.conv.out": "1,1@1,1"})
    assert components(layout, html.Div, "tensor-panel")
    assert_not_found(pages.iteration.layout(run="1", it="1", **{"t.nope": "@1,1"}), "nope")
    assert_not_found(pages.iteration.layout(run="1", it="1", **{"t.conv.out": "x"}), "view")
    client = dash_app.server.test_client()
    assert client.get("/iteration?run=1&it=1").status_code == 200
    assert client.get("/compare?a=1:1&b=2:1").status_code == 200
    for address in (
        "/iteration?run=999",
        "/iteration?run=1&it=99",
        "/iteration?run=1&it=1&t.nope=@1,1",
        "/iteration?run=1&it=1&phase=sideways",
        "/iteration?run=1&phase=forward&layer=nope",
        "/model?run=999",
        "/compare?a=1:1&b=999:1",
        "/compare?a=1:99",
        "/?seed=x",
        "/no-such-page",
        "/figure/1/1/nope.json",
        "/figure/1/1/conv.weight.json?row=1,2",
        "/figure/1/1/conv.weight.json?col=%C2%B2",
        "/figure/1/1/conv.weight.json?lead=0,x",
        "/figure/18446744073709551616/1/conv.weight.json",
        "/formula/18446744073709551616/1/0.tex",
        "/formula/1/18446744073709551616/0.tex",
        "/formula/1/1/18446744073709551616.tex",
        "/_cnnviz/mathjax/nope.js",
        "/_cnnviz/mathjax/../bundle.py",
        "/_cnnviz/mathjax/%2e%2e/%2e%2e/bundle.py",
        "/_cnnviz/mathjax/LICENSE",
    ):
        assert client.get(address).status_code == 404, address


def test_the_mathjax_worker_and_every_component_it_loads_are_served(dash_app):
    """Formulas are typeset by MathJax in a worker (assets/formula_queue.js) that loads
    its components from the dashboard itself, all in one script: each one it names must
    be there, in the order asked."""
    client = dash_app.server.test_client()
    worker = client.get("/_cnnviz/mathjax/worker.js")
    assert worker.status_code == 200 and worker.mimetype == "application/javascript"
    source = worker.get_data(as_text=True)
    load = re.search(r"COMPONENTS = \[(.*?)\];", source, re.S).group(1)  # what it loads
    names = re.findall(r'"([^"]+)"', load)
    assert "core" in names and "[tex]/ams" in names and "output/svg" in names
    files = []
    for name in ["startup", *names]:
        path = name.replace("[tex]/", "input/tex/extensions/") + ".js"
        response = client.get("/_cnnviz/mathjax/" + path)
        assert response.status_code == 200, path
        assert response.mimetype == "application/javascript" and len(response.get_data()) > 1000
        files.append(response.get_data())
    together = client.get("/_cnnviz/mathjax/components.js?load=" + ",".join(["startup", *names]))
    assert together.status_code == 200 and together.mimetype == "application/javascript"
    assert together.get_data() == b"\n;\n".join(files)
    for load in ("core,../../bundle", "core,nope", "/etc/passwd", ""):
        assert client.get("/_cnnviz/mathjax/components.js?load=" + load).status_code == 404


# ---------------------------------------------------------------- model


def test_model_lists_layers_with_shapes_formulas_and_a_diagram(pages, store, request_ctx):
    layout = pages.model.layout(run="2")
    run = store.get_run(2)
    rows = components(layout, html.Tr)[1:]
    assert [getattr(r, "data-layer") for r in rows] == [layer.name for layer in run.layers]
    assert formulas_in(layout) == [layer.formula for layer in run.layers if layer.formula]
    diagram = components(layout, dcc.Graph)[0].figure
    assert len(diagram.layout.shapes) == len(run.layers) + 1  # + the input
    assert f"{sum(layer.num_params for layer in run.layers)} parameters" in text_of(layout)
    assert_not_found(pages.model.layout(run="42"), "no run 42")


# ---------------------------------------------------------------- compare


def panel_values(dash_app, layout, aio_id: str) -> tuple[np.ndarray, dict]:
    """What a tensor panel of a layout draws: its figure address, fetched as the browser
    fetches it (z, and the trace for the colour range)."""
    (panel,) = [
        c
        for c in components(layout, html.Div, "tensor-panel")
        if c.to_plotly_json()["props"].get("data-aio") == aio_id
    ]
    (slot,) = components(panel, html.Div, "heatmap-slot")
    body = dash_app.server.test_client().get(getattr(slot, "data-src")).get_data(as_text=True)
    return drawn_z(body), json.loads(body)["data"][0]


def test_compare_defaults_put_two_runs_side_by_side(pages, dash_app, store, request_ctx):
    layout = pages.compare.layout()
    a = store.load_tensor(1, 3, "conv.weight").array
    b = store.load_tensor(2, 3, "conv.weight").array
    za, trace_a = panel_values(dash_app, layout, "compare-a")
    zb, trace_b = panel_values(dash_app, layout, "compare-b")
    zd, _ = panel_values(dash_app, layout, "compare-diff")
    np.testing.assert_array_equal(za, a[0, 0])
    np.testing.assert_array_equal(zb, b[0, 0])
    np.testing.assert_allclose(zd, b[0, 0].astype(np.float64) - a[0, 0])
    # one colour scale for both sides, over both full tensors
    assert (trace_a["zmin"], trace_a["zmax"]) == (trace_b["zmin"], trace_b["zmax"])
    assert trace_a["zmax"] == pytest.approx(max(np.abs(a).max(), np.abs(b).max()))
    delta = b.astype(np.float64) - a
    text = text_of(layout)
    assert f"{np.abs(delta).max():.4g}" in text and f"{np.linalg.norm(delta):.4g}" in text
    cosine = float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert f"{cosine:.6f}" in text
    # the histories overlay every run of the same model, drawn after the page
    (ref,) = [c for c in components(layout, dcc.Store) if c.id == "compare-ref"]
    loss, norms = pages.compare.draw_history(ref.data)
    assert len(loss["data"]) == 3
    assert {t["xaxis"] for t in norms["data"]} == {"x", "x2", "x3", "x4", "x5", "x6", "x7", "x8"}


def test_compare_any_role_and_iteration(pages, dash_app, store, request_ctx):
    layout = pages.compare.layout(a="1:1", b="1:3", layer="fc", role="param_grad")
    np.testing.assert_array_equal(
        panel_values(dash_app, layout, "compare-a")[0],
        store.load_tensor(1, 1, "fc.weight.grad").array,
    )
    np.testing.assert_array_equal(
        panel_values(dash_app, layout, "compare-b")[0],
        store.load_tensor(1, 3, "fc.weight.grad").array,
    )


def test_compare_reads_no_whole_iteration(pages, store, request_ctx, monkeypatch):
    """The page reads tensor metadata and one tensor of each side, never an iteration."""

    def refuse(*args, **kwargs):
        raise AssertionError("the compare page loaded a whole iteration")

    monkeypatch.setattr(type(store), "load_iteration", refuse)
    pages.compare.stored_comparison.cache_clear()
    text = text_of(pages.compare.layout(a="1:2", b="2:2", layer="fc", role="param"))
    assert "max |Δ|" in text


def test_compare_shows_a_scalar_and_its_difference(pages, store, request_ctx):
    from dashapp.formatting import format_scalar

    layout = pages.compare.layout(a="1:1", b="2:1", tensor="loss.value")
    a = float(store.load_tensor(1, 1, "loss.value").array)
    b = float(store.load_tensor(2, 1, "loss.value").array)
    scalars = [c.children for c in components(layout, html.Div, "tensor-scalar")]
    assert scalars == [format_scalar(a), format_scalar(b), format_scalar(b - a)]


def test_compare_falls_back_to_a_role_the_layer_has(pages, request_ctx):
    text = text_of(pages.compare.layout(a="1:1", b="2:1", layer="relu", role="param"))
    assert "layer relu has no weight" in text and "relu.out" in text


def test_compare_a_tensor_named_alone_says_its_layer(pages, request_ctx):
    text = text_of(pages.compare.layout(a="1:1", b="2:1", tensor="fc.weight.grad"))
    assert "fc.weight.grad" in text and "not a" not in text


@pytest.mark.parametrize(
    ("query", "words"),
    [
        (dict(a="1:1", b="2:1", layer="nope"), ["no layer 'nope'"]),
        (dict(a="1:1", b="2:1", tensor="nope"), ["no tensor 'nope'"]),
        (dict(a="1:1", b="2:1", **{"t.fc.bias": "@1,1"}), ["not fc.bias"]),
        (dict(a="1:1", b="2:1", **{"t.conv.weight": "x"}), ["view"]),
        (dict(a="1-1"), ["RUN:ITERATION"]),
        (dict(a="1:99"), ["run 1 has no iteration 99"]),
        (dict(b="77:1"), ["no run 77"]),
        (dict(runs="1,x"), ["comma-separated"]),
    ],
)
def test_compare_unknown_things_are_not_found(pages, dash_app, request_ctx, query, words):
    assert_not_found(pages.compare.layout(**query), *words)
    address = links.compare() + "?" + urlencode(query)
    assert dash_app.server.test_client().get(address).status_code == 404, address


def test_compare_controls_write_the_url(pages, request_ctx):
    ref = {
        "a": [1, 3],
        "b": [2, 3],
        "layer": "conv",
        "role": "param",
        "tensor": "conv.weight",
        "runs": None,
    }
    args = [1, 3, 2, 3, "conv", "param", "conv.weight", [2, 1, 3]]
    search = run_callback(
        pages.compare.navigate,
        *[*args[:2], 3, 2, *args[4:]],
        ref,
        [],
        triggered="compare-b-run.value",
    )
    assert search == "?a=1%3A3&b=3%3A3&layer=conv&role=param&tensor=conv.weight"
    search = run_callback(
        pages.compare.navigate,
        *[*args[:4], "fc", *args[5:]],
        ref,
        [],
        triggered="compare-layer.value",
    )
    assert search == "?a=1%3A3&b=2%3A3&layer=fc&role=param"  # the tensor is the new layer's
    search = run_callback(
        pages.compare.navigate, *args[:7], [1, 2], ref, [], triggered="compare-runs.value"
    )
    assert search.endswith("&runs=1%2C2")
    # A's window (told by its panel, assets/tensor_panel.js) stays while the tensor does
    search = run_callback(
        pages.compare.navigate,
        *[*args[:3], 2, *args[4:]],
        ref,
        "@1,33",
        triggered="compare-b-it.value",
    )
    assert search.endswith("&tensor=conv.weight&t.conv.weight=%401%2C33")


def test_compare_run_search_finds_name_model_seed_and_id(pages, request_ctx):
    labels = lambda text: [o["label"] for o in pages.compare.search_runs(text, [1])]  # noqa: E731
    assert labels("seed-cnn")[0].startswith("#1 ")  # the chosen run comes first
    assert any("seed 7" in label for label in labels("7"))  # run 3 has seed 7
    assert [label.split()[0] for label in labels("2")] == ["#1", "#2"]  # id 2
    assert labels("no such run") == [labels("seed-cnn")[0]]
    assert pages.compare.search_runs("", [1]) is None


def test_not_found_page(pages, request_ctx):
    assert_not_found(pages.not_found.layout(), "no page at this address")


def test_compare_explains_a_gradient_that_vanished(pages, store, request_ctx):
    """A side that is all zeros (seed 1's conv gradient after its ReLU died) gets a note
    saying why the cosine is undefined and what a zero gradient means."""
    import dataclasses

    grad = store.load_tensor(1, 2, "conv.weight.grad")
    vanished = dataclasses.replace(grad, array=np.zeros_like(grad.array))
    text = text_of(pages.compare.stats_block(grad, vanished))
    assert "B is all zeros, so the cosine similarity is undefined." in text
    assert "nothing flowed back to this tensor" in text
    weights = store.load_tensor(1, 2, "conv.weight")
    zero_weights = dataclasses.replace(weights, array=np.zeros_like(weights.array))
    text = text_of(pages.compare.stats_block(zero_weights, zero_weights))
    assert "A and B are all zeros" in text and "flowed back" not in text
    assert "all zeros" not in text_of(pages.compare.stats_block(grad, grad))


def test_compare_does_not_call_a_diverged_tensor_zero(pages, store, request_ctx):
    """inf against NaN (two diverged runs) has no cosine because the values are not
    finite, not because a side is zero."""
    import dataclasses

    grad = store.load_tensor(1, 2, "conv.weight.grad")
    inf = dataclasses.replace(grad, array=np.full_like(grad.array, np.inf))
    nan = dataclasses.replace(grad, array=np.full_like(grad.array, np.nan))
    for a, b in ((inf, nan), (grad, nan), (inf, grad)):
        text = text_of(pages.compare.stats_block(a, b))
        assert "undefined (NaN or inf values)" in text
        assert "zero" not in text
    assert "nan" not in text_of(pages.compare.stats_block(grad, grad)).lower().split()


def test_a_run_whose_writer_died_is_stale_and_not_polled(
    pages, dash_app, dash_store, tmp_path, request_ctx
):
    import sqlite3
    import subprocess

    live = copy_store(dash_store, tmp_path / "dead.db")
    run_id, writer = clone_run(live, 1, name="dead", seed=5, iterations=1, finish=False)
    writer.engine.dispose()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that has exited (and been reaped): the writer is dead
    with sqlite3.connect(live) as conn:
        conn.execute("UPDATE runs SET writer_pid = ? WHERE id = ?", (gone.pid, run_id))
    conn.close()
    with using_store(dash_app, live) as store:
        assert store.get_run(run_id).status == "stale"
        layout = pages.iteration.layout(run=str(run_id))
        assert "still being traced" not in text_of(layout)
        assert components(layout, dcc.Interval)[0].disabled is True
        _, status, stop = pages.iteration.poll(1, {"run": run_id, "it": None})
        assert status.children == "stale" and stop is True


def test_an_unexplained_iteration_shows_its_raw_tensors_and_says_how_to_explain(
    pages, dash_app, tmp_path, request_ctx
):
    from tracer.train import run_builtin

    path = tmp_path / "off.db"
    run = run_builtin(seed=0, iterations=1, db=path, explain="off")
    with using_store(dash_app, path):
        layout = pages.iteration.layout(run=str(run.run_id), it="1")
        forward = text_of(pages.iteration.layout(run=str(run.run_id), it="1", phase="forward"))
        backward = text_of(pages.iteration.layout(run=str(run.run_id), it="1", phase="backward"))
    text = text_of(layout)
    assert "Not explained:" in text and "this run was traced with explanation off" in text
    assert f"cnnviz explain {run.run_id} --db {path}" in text
    assert "Not explained:" in forward and "Not explained:" in backward  # on every view
    assert "conv.out" in forward and "fc.weight.grad" in backward  # the raw tensors are there
    assert "not explained; tensors as captured" in forward
    # Explained, the note is gone and the steps are checked.
    from tracer.explain import explain_run

    explain_run(str(path), run.run_id)
    with using_store(dash_app, path):
        forward = text_of(pages.iteration.layout(run=str(run.run_id), it="1", phase="forward"))
    assert "Not explained:" not in forward and "not explained; tensors as captured" not in forward


def test_iteration_whatif_recomputes_the_update_for_another_learning_rate(pages, request_ctx):
    layout = pages.iteration.layout(run="1", it="2", phase="whatif")
    assert [c for c in components(layout, html.Section) if c.id == "section-whatif"]
    ref = {"run": 1, "it": 2, "count": 3}
    result = run_callback(
        whatif.learning_rate_whatif, 1, 0.5, ref, triggered="iteration-whatif-go.n_clicks"
    )
    names = [c.children for c in components(result, html.Code)]
    assert names == ["conv.weight.next", "conv.bias.next", "fc.weight.next", "fc.bias.next"]
    assert len(components(result, dcc.Graph)) == 8
    refused = run_callback(
        whatif.learning_rate_whatif, 1, -1, ref, triggered="iteration-whatif-go.n_clicks"
    )
    assert "positive number" in refused.children


def test_iteration_whatif_of_one_element_marks_what_changed(pages, request_ctx):
    ref = {"run": 1, "it": 2, "count": 3}
    go = "iteration-whatif-element-go.n_clicks"
    result = run_callback(whatif.element_whatif, 1, "input", "0, 0, 1, 2", 5.0, ref, triggered=go)
    text = text_of(result)
    assert "input[0, 0, 1, 2]:" in text and "→ 5." in text and "Loss " in text
    assert "reproduces every stored tensor" in text
    table = components(result, html.Tbody)[0]
    phases = [row.children[0].children for row in table.children]
    assert phases == sorted(phases, key=["forward", "backward", "update"].index)
    changed = [row for row in table.children if row.className == "whatif-changed"]
    assert len(changed) > 10  # through the loss and back to every update
    shown = components(result, dcc.Dropdown)[0].value
    assert "loss.value" in shown and len(components(result, dcc.Graph)) == 2 * len(shown)
    # Every changed cell drawn is outlined: the edited input's consumer shows one box per cell.
    first = components(result, dcc.Graph)[0].figure
    assert first["layout"]["shapes"]
    # Picking other tensors redraws from the cached answer.
    redrawn = run_callback(whatif.redraw, ["fc.weight.next"], "input", "0, 0, 1, 2", 5.0, ref)
    assert [c.children for c in components(redrawn, html.Code)] == ["fc.weight.next"]
    for value, index, words in ((None, "0,0,1,2", "Type the new value"), (1.0, "0,9", "needs 4")):
        refused = run_callback(whatif.element_whatif, 1, "input", index, value, ref, triggered=go)
        assert words in text_of(refused)
    help_text, placeholder = run_callback(whatif.element_help, "fc.weight", "1, 3", ref)
    assert "shape (2, 4)" in help_text and "Stored value" in help_text and placeholder


def test_provenance_panel_names_the_cells_read_from_the_previous_iteration(pages):
    """An optimizer's state before the step is the previous iteration's: the panel lists
    it with its iteration (it is not on this page, so it is not outlined)."""
    from storage.provenance import Provenance, Term

    prov = Provenance(
        tensor="fc.weight.exp_avg",
        index=(0, 1),
        stored=0.5,
        recomputed=0.5,
        kind="adam-moment",
        formula="m_t[0,1] = ...",
        terms=[
            Term("fc.weight.state.exp_avg", (0, 1), 0.25, iteration=1),
            Term("fc.weight.grad", (0, 1), 2.75),
        ],
        step=3,
    )
    text = " ".join(text_of(html.Div(pages.iteration.provenance_view(prov))).split())
    assert "fc.weight.grad : 1 cell [0, 1]" in text
    assert "fc.weight.state.exp_avg of iteration 1: [0, 1] = 0.25" in text
    assert "✓ recomputed 0.5 = stored 0.5" in text
    assert list(prov.reads()) == ["fc.weight.grad"]


def test_the_page_loads_regenerator_runtime_where_dash_loads_babel_polyfill(dash_app):
    """Dash's first script, @babel/polyfill (a long task to evaluate), is answered with
    regenerator-runtime, the one part of it Dash's own scripts call (dashapp/bundle.py);
    every browser test then runs the pages on it."""
    client = dash_app.server.test_client()
    shell = client.get("/").get_data(as_text=True)
    (src,) = re.findall(r'src="([^"]*/deps/polyfill@[^"]*)"', shell)
    response = client.get(src)
    assert response.status_code == 200 and response.mimetype == "application/javascript"
    assert response.headers["X-Cnnviz-Bundle"] == "regenerator-runtime"
    assert "regeneratorRuntime = runtime" in response.get_data(as_text=True)
    react = re.findall(r'src="([^"]*/deps/react@[^"]*)"', shell)[0]
    assert "X-Cnnviz-Bundle" not in client.get(react).headers  # everything else is Dash's own


def test_only_the_iteration_page_asks_for_plotly_in_its_head(dash_app):
    """Its views draw heatmaps as soon as they are shown: plotly.js is fetched and compiled
    from the top of the shell (dashapp/bundle.py); the other pages load it when they
    first draw one."""
    client = dash_app.server.test_client()
    shell = client.get("/iteration?run=1&it=1").get_data(as_text=True)
    head = shell.split("</head>")[0]
    (src,) = re.findall(r'<script async data-cnnviz-plotly src="([^"]+)"', head)
    response = client.get(src)
    assert response.status_code == 200
    assert response.headers["X-Cnnviz-Bundle"] == "plotly.js heatmap-bar"
    for other in ("/", "/model?run=1", "/compare?a=1:1&b=2:1"):
        assert "data-cnnviz-plotly" not in client.get(other).get_data(as_text=True), other


def test_a_kept_view_is_never_out_of_date(pages, dash_app, dash_store, tmp_path, request_ctx):
    """The body of a view is kept for the next reader (its iteration never changes); the
    header around it, the count, the status and the run picker, is read anew."""
    live = copy_store(dash_store, tmp_path / "live.db")
    run_id, writer = clone_run(live, 1, name="live", seed=5, iterations=1, finish=False)
    with RunStore(dash_store) as source:
        second = source.load_iteration(1, 2)
    with using_store(dash_app, live) as store:
        first = pages.iteration.layout(run=str(run_id), it="1", phase="forward")
        assert "Iteration 1 of 1" in text_of(first)
        assert components(first, dcc.Interval)[0].disabled is False  # polled while traced
        assert len(pages.iteration._kept_views[store]) == 1
        writer.add_iteration(second)
        clone_run(live, 2, name="newer", seed=6)  # a new run, offered by the picker
        writer.finish()
        again = pages.iteration.layout(run=str(run_id), it="1", phase="forward")
        text = text_of(again)
        assert "Iteration 1 of 2" in text and "completed" in text
        assert components(again, dcc.Interval)[0].disabled is True
        picker = components(again, dcc.Dropdown)[0]
        assert any("newer" in o["label"] for o in picker.options)
        body = text_of(first).split("Loss", 1)[1]
        assert text.split("Loss", 1)[1] == body  # the same steps, numbers and checks
        assert len(pages.iteration._kept_views[store]) == 1
