"""Iteration view (?run=ID&it=N): one training iteration from input to weight update.

Input (batch, labels, weights, learning rate) -> forward pass layer by layer ->
loss -> backward pass from dL/dz back to the first layer -> weight update.
Every step is a card with its general formula, the formula with this
iteration's numbers, heatmaps of what it reads and writes, and whether our
NumPy result matched PyTorch's autograd.

The page shows one part at a time, named in the URL (dashapp/steps.py, View): the
input (no `phase`), a whole phase (`&phase=backward`) or one layer of it
(`&phase=backward&layer=conv`), or the what-if section (`&phase=whatif`). The
stage bar and the side menu link those addresses, and previous/next walk them
in order, so the page builds, reads and draws only what one view holds; the
iteration's steps and tensor metadata are read once and kept (data.cached_steps).

A click on any heatmap cell shows where that number came from (storage.provenance):
the scalar computation with the real numbers, checked against the stored value,
and the cells it read outlined in the heatmaps (assets/provenance_click.js).
"""

from __future__ import annotations

import shlex
import threading
import weakref
from collections import OrderedDict

import dash
import dash_bootstrap_components as dbc
import numpy as np
from dash import ClientsideFunction, Input, Output, State, ctx, dcc, html

from dashapp import layouts, links, plain, statichtml
from dashapp.data import (
    NotFound,
    PreviousArrays,
    cached_arrays,
    cached_steps,
    current_store,
    default_run,
    parse_int,
    parse_text,
    require_run,
    require_stored,
    store_location,
)
from dashapp.formatting import format_diff, format_scalar
from dashapp.formulafit import formula_url
from dashapp.guard import page_layout
from dashapp.steps import (
    INPUT,
    WHATIF,
    Section,
    View,
    find_view,
    in_view,
    layers_of,
    neighbours,
    sections,
)
from dashapp.tensorpanel import PanelView, panel_markup, send_first_figures, views_from_query
from dashapp.whatif import whatif_section
from storage import (
    RUN_RUNNING,
    IterationRecord,
    LayerInfo,
    RunInfo,
    RunQuery,
    StepRecord,
    names,
)
from storage.provenance import NotExplained, Provenance, explain_cell

dash.register_page(
    __name__, path=links.ITERATION, name="Iteration", title="Iteration · cnnviz", order=2
)

POLL_MS = 2000

SECTION_TEXT = {
    "forward": "Each layer turns its input into its output; the matrices are this iteration's real values.",
    "loss": "The model's output (the logits) becomes probabilities, and the loss measures how far they are "
    "from the labels.",
    "backward": "The chain rule, from the gradient of the loss with respect to the logits back to the first "
    "layer's weights: each layer turns the gradient of its output into the gradients of its "
    "weights and of its input.",
    "update": "The optimizer moves every weight against its gradient.",
}


def view_link(run_id: int, index: int, view: View) -> str:
    """The address of one view of this iteration (the input's is the bare iteration)."""
    return links.iteration(
        run_id, index, phase=None if view.phase == INPUT else view.phase, layer=view.layer
    )


def side_menu(parts: list[Section], view: View, run_id: int, index: int):
    """Input -> each phase and its layers -> what if, each a link to that view; the
    steps of the view shown are listed under it, as anchors on this page.

    One component (dashapp/statichtml.py): the menu is static markup, and as Dash
    components it was about 80 of a LeNet-5 view's ~430 (each costs the commit of the
    view, and Dash's renderer looks at every one again on each later update). Its links
    move inside the app as dcc.Link does."""

    def link(target: View, label, class_name: str, title: str | None = None):
        here = " toc-current" if target == view else ""
        return statichtml.link(
            label, view_link(run_id, index, target), className=class_name + here, title=title
        )

    def section_div(entries, class_name: str = ""):
        return statichtml.tag("div", entries, className=f"toc-section{class_name}")

    items = [statichtml.tag("div", "This iteration", className="toc-title")]
    items.append(section_div(link(View(INPUT), "Input, labels, weights", "toc-view")))
    for section in parts:
        entries = [
            link(
                View(section.key),
                section.title,
                "toc-view",
                title=f"every layer of the {section.title.lower()} on one page",
            )
        ]
        for layer in layers_of(section):
            steps = [(n, s) for name, group in section.groups if name == layer for n, s in group]
            entries.append(
                link(
                    View(section.key, layer),
                    [layer, statichtml.tag("span", f" {len(steps)}", className="toc-count")],
                    "toc-layer",
                )
            )
            if view.phase == section.key and view.layer in (None, layer):
                entries += [
                    statichtml.tag(
                        "a",
                        [statichtml.tag("span", str(n), className="toc-num"), step.title],
                        href=f"#step-{n}",
                        className=f"toc-step verified-{_mark(step)}",
                    )
                    for n, step in steps
                ]
        items.append(section_div(entries, f" toc-{section.key}"))
    items.append(section_div(link(View(WHATIF), "What if", "toc-view")))
    return statichtml.html_node(
        items, element="nav", className="toc", **{"aria-label": "this iteration"}
    )


def journey(parts: list[Section], view: View, run_id: int, index: int):
    """The iteration at a glance, one link per stage: Input -> Forward -> Loss -> Backward
    -> Update (-> What if); the stage shown is marked. A phase's link opens its first
    layer, from where "next" walks on: a LeNet-5 backward pass in one view is 23 steps
    and 67 heatmaps, so the whole phase is one click further, in the side menu."""
    stages = [(View(INPUT), "Input")]
    for section in parts:
        count = sum(len(steps) for _, steps in section.groups)
        stages.append(
            (
                View(section.key, layers_of(section)[0]),
                f"{section.title} · {count} step{'s' if count != 1 else ''}",
            )
        )
    stages.append((View(WHATIF), "What if"))
    tag = statichtml.tag
    items = []
    for i, (stage, label) in enumerate(stages):
        if i:
            items.append(tag("span", "→", className="journey-arrow", aria_hidden="true"))
        here = stage.phase == view.phase
        items.append(
            statichtml.link(
                label,
                view_link(run_id, index, stage),
                className=f"journey-stage journey-{stage.phase}"
                + (" journey-current" if here else ""),
            )
        )
    # static markup, one component (dashapp/statichtml.py)
    return statichtml.html_node(
        items, element="nav", className="journey", **{"aria-label": "stages of this iteration"}
    )


def walk_nav(parts: list[Section], view: View, run_id: int, index: int, *, ids: bool):
    """Previous and next in the student's order (layer by layer from a layer; phase by
    phase from a whole phase), and where this view stands."""
    before, after = neighbours(parts, view)
    numbers = [
        n for section in in_view(parts, view) for _, steps in section.groups for n, _ in steps
    ]
    total = sum(len(steps) for section in parts for _, steps in section.groups)
    where = view.title
    if numbers:
        span = f"step {numbers[0]}" if len(numbers) == 1 else f"steps {numbers[0]}–{numbers[-1]}"
        where += f" · {span} of {total}"

    def step(target: View | None, label: str, key: str):
        if target is None:
            return statichtml.tag("span", className=f"walk-{key}")
        return statichtml.link(
            label.format(target.title),
            view_link(run_id, index, target),
            className=f"btn btn-outline-primary btn-sm walk-{key}",
            id=f"iteration-{key}" if ids else None,
        )

    # static markup, one component (dashapp/statichtml.py)
    return statichtml.html_node(
        [
            step(before, "← {}", "previous"),
            statichtml.tag("span", where, className="walk-here"),
            step(after, "{} →", "next"),
        ],
        element="nav",
        className="walk",
        **{"aria-label": "previous and next part of this iteration"},
    )


def _mark(step: StepRecord) -> str:
    return "none" if step.verified is None else ("yes" if step.verified else "no")


def panel_maker(store, record: IterationRecord, run: RunInfo, views: dict[str, PanelView]):
    """panel(tensor name, panel id) for this iteration: metadata only, the heatmap is
    fetched by the browser when it comes into view (the view's first two are sent with
    it: `_plain_view_body`); a scalar's one value is read here."""
    tensors = {t.name: t for t in record.tensors}

    def panel(name: str, panel_id: str):
        tensor = tensors.get(name)
        if tensor is None:
            return None
        scalar = None
        if len(tensor.shape) == 0:
            window = store.tensor_window(run.id, record.index, name)
            scalar = float(window.values[0, 0]) if window and window.stored.all() else None
        return panel_markup(
            tensor,
            run_id=run.id,
            index=record.index,
            aio_id=panel_id,
            view=views.get(name),
            scalar=scalar,
        )  # no click store: a click asks for the cell's provenance (provenance_click.js)

    return panel


def label_text(store, record: IterationRecord, run: RunInfo) -> str | None:
    """ "Labels of the batch: 3, 1, 4" for a batch of up to 16 labels."""
    for tensor in record.tensors:
        if tensor.role == names.ROLE_TARGET and 0 < int(np.prod(tensor.shape)) <= 16:
            window = store.tensor_window(run.id, record.index, tensor.name, rows=16, cols=16)
            values = window.values[window.stored]
            if window.dtype[1] in "iub":
                values = values.astype(np.int64)
            return "Labels of the batch: " + ", ".join(str(v) for v in values.tolist())
    return None


def input_section(record: IterationRecord, run: RunInfo, panel, labels_text):
    """What goes in: the batch, its labels, the weights before this step, the learning
    rate; one static component (dashapp/statichtml.py), its panels as markup."""

    def panels(names, key):
        made = (panel(n, f"{key}-{i}") for i, n in enumerate(names))
        return [p for p in made if p is not None]

    tag = statichtml.tag
    inputs = [t.name for t in record.tensors if t.role == names.ROLE_INPUT]
    labels = [t.name for t in record.tensors if t.role == names.ROLE_TARGET]
    weights = [t.name for t in record.tensors if t.role == names.ROLE_PARAM]
    lr = record.learning_rate if record.learning_rate is not None else run.learning_rate
    return statichtml.html_node(
        [
            tag("h2", "Input", className="section-title"),
            tag(
                "p",
                "The batch this iteration trains on, its labels, and the weights before the update.",
                className="section-lead",
            ),
            tag(
                "div",
                [
                    tag(
                        "div",
                        [
                            tag("h3", "Input data", className="h6"),
                            tag("div", panels(inputs, "input"), className="flow-items"),
                        ],
                    ),
                    tag(
                        "div",
                        [
                            tag("h3", "Labels", className="h6"),
                            tag("div", panels(labels, "labels"), className="flow-items"),
                            tag("p", labels_text, className="small text-muted")
                            if labels_text
                            else None,
                        ],
                    ),
                ],
                className="input-row",
            ),
            tag("h3", "Weights before this iteration", className="h6 mt-3"),
            tag("div", panels(weights, "weights"), className="flow-items"),
            tag(
                "p",
                [
                    "Learning rate η = ",
                    tag("strong", format_scalar(lr) if lr is not None else "not recorded"),
                    f" ({run.optimizer})" if run.optimizer else "",
                ],
                className="mt-2 mb-0",
            ),
        ],
        element="section",
        id="section-input",
        className="phase-section section-input",
    )


def step_sections(
    parts: list[Section], panel, layers: dict[str, LayerInfo], run_id: int, index: int
) -> list[html.Section]:
    out = []
    for section in parts:
        children = [
            html.H2(section.title, className="section-title"),
            html.P(SECTION_TEXT.get(section.key, ""), className="section-lead"),
        ]
        for layer, steps in section.groups:
            info = layers.get(layer)
            children.append(
                html.Div(
                    [
                        html.Code(layer, className="group-layer"),
                        html.Span(
                            f" {info.type}: {info.description}" if info else "",
                            className="group-desc",
                        ),
                    ],
                    className="layer-group-header",
                )
            )
            children += [
                layouts.step_card(
                    n,
                    step,
                    panel,
                    layer=info,
                    full_formula_src=formula_url(run_id, index, step.position),
                )
                for n, step in steps
            ]
        out.append(
            html.Section(
                children,
                id=f"section-{section.key}",
                className=f"phase-section section-{section.key}",
            )
        )
    return out


def summary(record: IterationRecord, run: RunInfo):
    checked = [s for s in record.steps if s.verified is not None]
    ok = sum(1 for s in checked if s.verified)
    worst = max((s.max_abs_diff for s in checked if s.max_abs_diff is not None), default=None)
    all_ok = ok == len(checked)
    accuracy = "" if record.accuracy is None else f"{record.accuracy:.2f}"
    # static markup, one component (dashapp/statichtml.py)
    return statichtml.html_node(
        [
            layouts.metric_markup("Loss", format_scalar(record.loss)),
            layouts.metric_markup("Accuracy", accuracy or "—"),
            layouts.metric_markup(
                "Learning rate",
                format_scalar(record.learning_rate) if record.learning_rate is not None else "—",
            ),
            layouts.metric_markup(
                "Checked against autograd",
                f"{ok} of {len(checked)} steps match",
                hint=f"largest |ours − PyTorch| = {format_diff(worst)}",
                class_name="metric-ok" if all_ok else "metric-bad",
            ),
        ],
        className="metrics",
    )


PICKER_RUNS = 50  # runs offered before typing; typing searches the store by name


def picker_runs(store, current: RunInfo) -> list:
    """The run shown and the most recent runs (the menu searches the rest by name); the
    recent ones as (id, name, seed) rows, all a label shows."""
    recent = store.recent_runs(PICKER_RUNS)
    return [current, *(r for r in recent if r.id != current.id)]


def run_picker(current: RunInfo, runs: list) -> dcc.Dropdown:
    return dcc.Dropdown(
        id="iteration-run",
        options=[{"label": layouts.run_label(r), "value": r.id} for r in runs],
        value=current.id,
        clearable=False,
        className="run-picker",
    )


def header(
    run: RunInfo, runs: list[RunInfo], index: int | None, count: int, view: View | None = None
) -> html.Div:
    title = f"Iteration {index} of {count}" if index else "Iteration"
    return html.Div(
        [
            layouts.page_header(
                title,
                subtitle=[
                    layouts.bdi(run.name, className="run-name"),
                    " · ",
                    run.model_name,
                    " · ",
                    html.Span(layouts.status_badge(run), id="iteration-status"),
                ],
                crumbs=[
                    ("Runs", links.RUNS),
                    (layouts.bdi(run.name), links.model(run.id)),
                    (f"Iteration {index or ''}", None),
                ],
                actions=[
                    dcc.Link(
                        "Model",
                        href=links.model(run.id),
                        className="btn btn-outline-secondary btn-sm",
                    ),
                    dcc.Link(
                        "Compare",
                        href=links.compare((run.id, index or 1), (run.id, max(count, 1))),
                        className="btn btn-outline-secondary btn-sm",
                    ),
                ],
            ),
            html.Div(
                [
                    html.Div(
                        [html.Span("Run", className="control-label"), run_picker(run, runs)],
                        className="control",
                    ),
                    html.Div(
                        [
                            html.Span("Iteration", className="control-label"),
                            html.Div(
                                layouts.iteration_stepper(
                                    run.id, index or 0, count, **_view_query(view or View())
                                ),
                                id="iteration-stepper",
                            ),
                        ],
                        className="control",
                    ),
                ],
                className="iteration-controls",
            ),
        ]
    )


def unexplained_note(run_id: int | None = None, location: str | None = None):
    """An iteration traced with explanation off: what is shown, and how to see it
    explained. With `run_id`, the iteration keeps its raw truth and `cnnviz explain`
    explains it; without, it was traced by a cnnviz that kept none."""
    shown = [
        html.Strong("Not explained: "),
        "this run was traced with explanation off, so below are its raw tensors as "
        "captured (inputs, outputs, gradients, parameters before and after the update) "
        "and no step is written in matrix form or checked against PyTorch yet. ",
    ]
    if run_id is None:
        how = [
            "It was traced before cnnviz kept what explaining later needs: trace it again with ",
            html.Code("cnnviz trace --explain background"),
            " (the default) or ",
            html.Code('trace(..., explain="background")'),
            " to see every step explained and verified.",
        ]
    else:
        how = [
            "To explain it, run ",
            html.Code(f"cnnviz explain {run_id} --db {shlex.quote(location or '')}"),
            " and reload this page: it explains every iteration of the run from the stored "
            "raw tensors, with no model code, into the same steps an explained trace stores. "
            "Its checks compare each step with the tensors PyTorch's autograd computed "
            "during the run, which are among the tensors stored.",
        ]
    return dbc.Alert(shown + how, color="info", className="py-2 unexplained-note")


def _view_query(view: View) -> dict:
    """phase= and layer= of a view's address (none for the input)."""
    return {"phase": None if view.phase == INPUT else view.phase, "layer": view.layer}


def _stored_steps(store, run: RunInfo, index: int) -> IterationRecord:
    """The iteration's steps and tensor metadata (no tensor bytes), read once per
    iteration: a committed iteration never changes, so moving between its phases and
    layers reads nothing again."""
    record = cached_steps(store, run.id, index)
    if record is None:
        require_stored(store, run, index)  # NotFound, saying how many are stored
        raise NotFound(f"run {run.id} has no iteration {index}")  # pragma: no cover
    return record


def _view_of(record: IterationRecord, run: RunInfo, phase, layer) -> tuple[list[Section], View]:
    """The sections of the iteration and the view the address names (NotFound if none)."""
    parts = sections(record.steps, {layer.name: layer for layer in run.layers})
    phase_name, layer_name = parse_text(phase, "phase"), parse_text(layer, "layer")
    view = find_view(parts, phase_name, layer_name)
    if view is None:
        what = (
            f"layer {layer_name!r} in its {phase_name or INPUT} phase"
            if layer_name
            else (f"phase {phase_name!r}")
        )
        raise NotFound(f"iteration {record.index} of run {run.id} has no {what}")
    return parts, view


def validate(run=None, it=None, phase=None, layer=None, **query) -> None:
    """NotFound for an unknown run, iteration, phase, layer or tensor (dashapp.status:
    HTTP 404)."""
    store = current_store()
    run_id, index = parse_int(run, "run"), parse_int(it, "iteration")
    views = views_from_query(query)
    info = require_run(store, run_id) if run_id is not None else default_run(store)
    if info is None or (index is None and not views and phase is None and layer is None):
        return
    record = _stored_steps(store, info, index or 1)
    _view_of(record, info, phase, layer)
    stored = {t.name for t in record.tensors}
    for name in views:
        if name not in stored:
            raise NotFound(f"iteration {index or 1} of run {info.id} has no tensor {name!r}")


@page_layout
def layout(run=None, it=None, phase=None, layer=None, **query):
    store = current_store()
    run_id = parse_int(run, "run")
    index = parse_int(it, "iteration")
    views = views_from_query(query)
    info = require_run(store, run_id) if run_id is not None else default_run(store)
    if info is None:
        return html.Div([layouts.page_header("Iteration"), layouts.empty_store(store_location())])
    runs = picker_runs(store, info)
    count = info.num_iterations
    polling = [
        dcc.Store(id="iteration-ref", data={"run": info.id, "it": index, "count": count}),
        dcc.Location(id="iteration-url", refresh="callback-nav"),
        dcc.Interval(id="iteration-poll", interval=POLL_MS, disabled=info.status != RUN_RUNNING),
    ]
    if count == 0:
        if index is not None:
            raise NotFound(f"run {info.id} has no iteration {index}: it has no iterations yet")
        note = (
            "This run is still being traced; its iterations appear here as they are committed."
            if info.status == RUN_RUNNING
            else "This run has no stored iterations."
        )
        return html.Div([header(info, runs, None, 0), dbc.Alert(note, color="info"), *polling])
    index = index or 1
    record = _stored_steps(store, info, index)
    parts, view = _view_of(record, info, phase, layer)
    stored = {t.name for t in record.tensors}
    for name in views:
        if name not in stored:
            raise NotFound(f"iteration {index} of run {info.id} has no tensor {name!r}")
    polling[0].data.update(it=index, **_view_query(view))
    return html.Div(
        [
            header(info, runs, index, count, view),
            *_view_body(store, record, info, parts, view, views, query),
            *polling,
            *_provenance_frame(),
        ],
        className="iteration-page",
    )


def _build_view_body(store, record, info, parts, view, views) -> list:
    """Everything below the header: what the iteration and the view hold, nothing that
    changes while the run is traced (its status, its iteration count, other runs)."""
    index = record.index
    panel = panel_maker(store, record, info, views)
    layers = {layer.name: layer for layer in info.layers}
    warnings = [
        dbc.Alert([html.Strong("Tracer warning: "), w], color="warning", className="py-2")
        for w in record.warnings
    ]
    if (info.config or {}).get("explain") == "off":
        pending = store.captured_indexes(info.id)
        if index in pending:
            warnings.insert(0, unexplained_note(info.id, store_location()))
        elif not pending and not (info.config or {}).get("explained"):
            warnings.insert(0, unexplained_note())
    if view.phase == INPUT:
        shown = [input_section(record, info, panel, label_text(store, record, info))]
    elif view.phase == WHATIF:
        shown = [whatif_section(record, info)]
    else:
        shown = step_sections(in_view(parts, view), panel, layers, info.id, index)
    return [
        summary(record, info),
        journey(parts, view, info.id, index),
        *warnings,
        dbc.Row(
            [
                dbc.Col(
                    side_menu(parts, view, info.id, index),
                    lg=3,
                    xl=2,
                    className="d-none d-lg-block toc-col",
                ),
                dbc.Col(
                    html.Div(
                        [
                            walk_nav(parts, view, info.id, index, ids=False),
                            *shown,
                            walk_nav(parts, view, info.id, index, ids=True),
                        ],
                        className="iteration-view",
                        **{"data-view": f"{view.phase}/{view.layer or ''}"},
                    ),
                    lg=9,
                    xl=10,
                    className="steps-col",
                ),
            ],
        ),
    ]


# A view's body, as the plain tree Dash sends (dashapp.plain), kept per store for the
# next reader of the same view: a committed iteration never changes. Kept only for an
# explained iteration of a run traced with explanation on (`cnnviz explain` replaces
# an unexplained one), keyed by the run's unchanging facts, the iteration, the view
# and its tensor windows; the header (status, count, the run picker) is built anew.
VIEWS_KEPT = 32
_kept_views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_kept_lock = threading.Lock()


def _view_key(record, info, view, query) -> tuple | None:
    if getattr(record, "unexplained", False) or (info.config or {}).get("explain") == "off":
        return None
    facts = (
        info.id,
        info.started_at,
        info.name,
        info.model_name,
        info.optimizer,
        info.learning_rate,
        repr(info.optimizer_settings),
        repr(info.config),
        repr(info.layers),
    )
    windows = tuple(sorted((k, str(v)) for k, v in query.items() if k.startswith("t.")))
    return (facts, record.index, view.phase, view.layer, windows)


def _plain_view_body(store, record, info, parts, view, views) -> list:
    """The view's body as the plain tree Dash sends, with its first two heatmaps' figures."""
    body = plain.tree(_build_view_body(store, record, info, parts, view, views))
    send_first_figures(store, body)
    return body


def _view_body(store, record, info, parts, view, views, query) -> list:
    key = _view_key(record, info, view, query)
    if key is None:
        return _plain_view_body(store, record, info, parts, view, views)
    with _kept_lock:
        kept = _kept_views.setdefault(store, OrderedDict())
        if key in kept:
            kept.move_to_end(key)
            return kept[key]
    body = _plain_view_body(store, record, info, parts, view, views)
    with _kept_lock:
        kept[key] = body
        while len(kept) > VIEWS_KEPT:
            kept.popitem(last=False)
    return body


@dash.callback(
    Output("iteration-run", "options"),
    Input("iteration-run", "search_value"),
    State("iteration-run", "value"),
    prevent_initial_call=True,
)
def search_runs(text, current):
    """Runs whose name contains what was typed (the shown run stays an option)."""
    if not text:
        return dash.no_update
    store = current_store()
    found = store.run_page(RunQuery(name=text, limit=PICKER_RUNS)).runs
    shown = store.get_run(int(current)) if current is not None else None
    runs = ([shown] if shown else []) + [r for r in found if not shown or r.id != shown.id]
    return [{"label": layouts.run_label(r), "value": r.id} for r in runs]


@dash.callback(
    Output("iteration-url", "href"),
    Input("iteration-run", "value"),
    State("iteration-ref", "data"),
    prevent_initial_call=True,
)
def choose_run(run_id, ref):
    """Another run: its first iteration, from the top (the old #step anchor is dropped)."""
    if run_id is None or run_id == ref["run"]:
        return dash.no_update
    return links.iteration(int(run_id), 1)


@dash.callback(
    Output("iteration-stepper", "children"),
    Output("iteration-status", "children"),
    Output("iteration-poll", "disabled"),
    Input("iteration-poll", "n_intervals"),
    State("iteration-ref", "data"),
    prevent_initial_call=True,
)
def poll(_n, ref):
    """While a run is traced: new iterations appear in the stepper; stop when it ends."""
    store = current_store()
    run = store.get_run(ref["run"])
    if run is None:
        return dash.no_update, dash.no_update, True
    count = len(store.iterations(run.id))
    view = {"phase": ref.get("phase"), "layer": ref.get("layer")}
    stepper = layouts.iteration_stepper(run.id, ref["it"] or 0, count, **view)
    return stepper, layouts.status_badge(run), run.status != RUN_RUNNING


# ---------------------------------------------------------------- provenance on click


def _provenance_frame() -> list:
    """provenance_frame() as a plain tree, built once: it never changes."""
    global _PROVENANCE_FRAME
    if _PROVENANCE_FRAME is None:
        _PROVENANCE_FRAME = plain.tree(provenance_frame())
    return _PROVENANCE_FRAME


_PROVENANCE_FRAME = None


def provenance_frame() -> list:
    """The click's address, the answer's panel, and the cells it read (for the outlines)."""
    return [
        dcc.Store(id="iteration-provenance-click"),
        dcc.Store(id="iteration-provenance-reads"),
        html.Div(id="iteration-provenance-outlined", hidden=True),
        html.Div(
            [
                html.Div(
                    [
                        html.Strong("Where this number came from"),
                        html.Button(
                            "×",
                            id="iteration-provenance-close",
                            className="btn-close-text",
                            title="close",
                        ),
                    ],
                    className="provenance-head",
                ),
                html.Div(
                    "Click any cell of any heatmap to see the computation that produced it.",
                    id="iteration-provenance",
                    className="provenance-body",
                ),
            ],
            className="provenance-panel shadow",
            id="iteration-provenance-panel",
        ),
    ]


def provenance_view(prov: Provenance) -> list:
    """The answer: the cell, the computation with its numbers, the check, what it read."""
    where = f"{prov.tensor}[{', '.join(str(i) for i in prov.index)}]"
    check = (
        f"✓ recomputed {prov.recomputed:.7g} = stored {prov.stored:.7g}"
        if prov.matches
        else f"✗ recomputed {prov.recomputed:.7g}, stored {prov.stored:.7g}"
    )
    reads = [
        html.Li(
            [
                html.Code(name),
                f": {len(cells)} cell{'s' if len(cells) != 1 else ''} ",
                html.Span(
                    ", ".join(str(list(c)) for c in cells[:6]) + (" …" if len(cells) > 6 else ""),
                    className="text-muted",
                ),
            ]
        )
        for name, cells in prov.reads().items()
    ]
    reads += [  # the optimizer's state before the step: the previous iteration's, not on this page
        html.Li(
            [html.Code(t.tensor), f" of iteration {t.iteration}: {list(t.index)} = {t.value:.7g}"]
        )
        for t in prov.terms
        if t.iteration is not None
    ]
    return [
        html.Div([html.Code(where), f" = {prov.stored:.7g}"], className="provenance-cell"),
        html.Pre(prov.formula, className="provenance-formula"),
        html.Div(
            check,
            className="verify " + ("verify-ok" if prov.matches else "verify-bad"),
            id="iteration-provenance-check",
        ),
        html.Div(
            f"Step {prov.step + 1}" if prov.step is not None else "", className="small text-muted"
        ),
        html.Ul(reads, className="provenance-reads") if reads else None,
    ]


@dash.callback(
    Output("iteration-provenance", "children"),
    Output("iteration-provenance-reads", "data"),
    Output("iteration-provenance-panel", "className"),
    Input("iteration-provenance-click", "data"),
    Input("iteration-provenance-close", "n_clicks"),
    State("iteration-ref", "data"),
    prevent_initial_call=True,
)
def provenance(click, _close, ref):
    """The computation behind the clicked cell, checked against the store."""
    closed = "provenance-panel shadow"
    if ctx.triggered_id == "iteration-provenance-close" or not click:
        return dash.no_update, {}, closed
    store = current_store()
    run = store.get_run(ref["run"])
    index = ref["it"] or 1
    record = cached_steps(store, ref["run"], index) if run is not None else None
    if record is None:
        return "This iteration is no longer in the store.", {}, closed + " open"
    try:
        prov = explain_cell(
            record,
            {layer.name: layer.type for layer in run.layers},
            str(click.get("tensor", "")),
            [int(i) for i in click.get("index", [])],
            optimizer=run.optimizer,
            settings=run.optimizer_settings,
            arrays=cached_arrays(store, run.id, index),
            previous=PreviousArrays(store, run.id, index - 1),
        )
    except (NotExplained, TypeError, ValueError) as exc:
        return html.P(str(exc), className="mb-0"), {}, closed + " open"
    reads = {name: [list(c) for c in cells] for name, cells in prov.reads().items()}
    reads.setdefault(prov.tensor, []).append(list(prov.index))
    return provenance_view(prov), reads, closed + " open"


dash.clientside_callback(
    ClientsideFunction(namespace="cnnviz_provenance", function_name="highlight"),
    Output("iteration-provenance-outlined", "children"),
    Input("iteration-provenance-reads", "data"),
    prevent_initial_call=True,
)
