"""Compare (?a=RUN:IT&b=RUN:IT&layer=conv&role=param_grad&tensor=...&runs=1,2,3):
one tensor of one layer in two (run, iteration) selections side by side, on one
colour scale, with their difference; below, loss and per-layer weight and
gradient norms over iterations with the runs overlaid (seed sensitivity).

"First divergence" finds the first iteration and step where the two runs differ
(storage.diverge) and opens the page there (&first=1 says so above the heatmaps).

Every control writes the URL; the page is rebuilt from it, so a comparison
is a link and the browser's back button undoes a choice.
"""

from __future__ import annotations

import math

import dash
import dash_bootstrap_components as dbc
from dash import ALL, Input, Output, State, ctx, dcc, html

from dashapp import figures, layouts, links
from dashapp.data import (
    NotFound,
    current_store,
    parse_int_list,
    parse_selection,
    require_iteration,
    require_run,
    require_stored,
    store_location,
)
from dashapp.formatting import format_shape
from dashapp.guard import page_layout
from dashapp.tensorview import difference_view, matrix_view
from storage import IterationRecord, RunInfo, RunStore, TensorRecord, names
from storage.diverge import DivergeError, DivergenceReport, first_divergence

dash.register_page(__name__, path=links.COMPARE, name="Compare", title="Compare · cnnviz", order=3)

# The roles a comparison offers, in the order the control lists them.
ROLE_ORDER = (
    names.ROLE_PARAM,
    names.ROLE_PARAM_GRAD,
    names.ROLE_ACTIVATION,
    names.ROLE_ACTIVATION_GRAD,
    names.ROLE_UPDATE,
    names.ROLE_PARAM_NEXT,
    names.ROLE_INTERMEDIATE,
    names.ROLE_OPTIMIZER_STATE,
    names.ROLE_OUTPUT,
    names.ROLE_INPUT,
    names.ROLE_INPUT_GRAD,
    names.ROLE_TARGET,
)
MAX_DEFAULT_RUNS = 10
# The layer entry of tensors that belong to no layer (input, labels, input gradient);
# parentheses never occur in a module's qualified name.
MODEL_LEVEL = "(model)"


def comparable(record: IterationRecord) -> dict[str, dict[str, list[str]]]:
    """layer -> role -> tensor names, for the tensors that belong to a layer."""
    table: dict[str, dict[str, list[str]]] = {}
    for t in record.tensors:
        if t.role not in ROLE_ORDER:
            continue
        table.setdefault(t.layer or MODEL_LEVEL, {}).setdefault(t.role, []).append(t.name)
    return table


def choose(
    record: IterationRecord, run: RunInfo, layer: str | None, role: str | None, tensor: str | None
) -> tuple[str, str, str, list[str]]:
    """(layer, role, tensor name, notes): the URL's choice, or a sensible default.

    An unknown layer is NotFound; a role or tensor the layer does not have falls
    back to one it has, with a note saying so."""
    table = comparable(record)
    order = [layer.name for layer in run.layers if layer.name in table] + [
        n for n in table if n not in {x.name for x in run.layers}
    ]
    if not order:
        raise NotFound(f"run {run.id} iteration {record.index} has no layer tensors to compare")
    notes = []
    if layer is None:
        layer = next((n for n in order if names.ROLE_PARAM in table[n]), order[0])
    elif layer not in table:
        raise NotFound(f"run {run.id} has no layer {layer!r}")
    roles = [r for r in ROLE_ORDER if r in table[layer]]
    if role not in roles:
        if role is not None:
            notes.append(
                f"layer {layer} has no {layouts.ROLE_LABELS.get(role, role)}; showing its "
                f"{layouts.ROLE_LABELS[roles[0]]} instead"
            )
        role = roles[0]
    candidates = table[layer][role]
    if tensor not in candidates:
        if tensor is not None:
            notes.append(
                f"{tensor} is not a {layouts.ROLE_LABELS[role]} of layer {layer}; "
                f"showing {candidates[0]}"
            )
        tensor = candidates[0]
    return layer, role, tensor, notes


def default_selections(store: RunStore, runs: list[RunInfo], picked: list[int] | None):
    """A: the first picked run (or the first run), last iteration; B: the next one."""
    by_id = {r.id: r for r in runs}
    order = [i for i in (picked or []) if i in by_id] or [r.id for r in runs]
    first = by_id[order[0]]
    second = by_id[order[1]] if len(order) > 1 else first
    a = (first.id, max(first.num_iterations, 1))
    if second.id == first.id:
        b = (first.id, 1 if first.num_iterations > 1 else a[1])
    else:
        b = (second.id, max(second.num_iterations, 1))
    return a, b


def zero_note(role: str, a_is_zero: bool, b_is_zero: bool) -> str | None:
    """Why a side can be all zeros (a gradient that vanished), or None if neither is."""
    sides = [side for side, zero in (("A", a_is_zero), ("B", b_is_zero)) if zero]
    if not sides:
        return None
    text = f"{' and '.join(sides)} {'is' if len(sides) == 1 else 'are'} all zeros, so the cosine similarity is undefined."
    if role in names.GRADIENT_ROLES:
        text += (
            " A gradient that is exactly zero means nothing flowed back to this tensor in that iteration:"
            " for example, a ReLU that outputs 0 for the whole batch passes no gradient to the layers before"
            " it, and gives the layers after it an all-zero input, so their weight gradients are zero too."
            " Weights with a zero gradient stop changing (see the norms below)."
        )
    return text


def cosine_undefined(stats: figures.DifferenceStats) -> str:
    """Why there is no cosine: a side holds NaN or inf (a diverged run), or is all zeros."""
    if not (math.isfinite(stats.norm_a) and math.isfinite(stats.norm_b)):
        return "undefined (NaN or inf values)"
    return "undefined (a zero tensor)"


def stats_block(ta: TensorRecord, tb: TensorRecord) -> html.Div:
    if tuple(ta.shape) != tuple(tb.shape):
        return dbc.Alert(
            f"The shapes differ ({format_shape(ta.shape)} and {format_shape(tb.shape)}): "
            "there is no element-wise difference.",
            color="warning",
        )
    a, b = ta.array.reshape(-1), tb.array.reshape(-1)
    note = None
    if a.size != b.size or ta.truncated or tb.truncated:
        n = min(a.size, b.size)
        a, b = a[:n], b[:n]
        note = f"over the {n} stored values (a store size bound kept only the first ones)"
    stats = figures.difference_stats(a, b)
    cosine = f"{stats.cosine:.6f}" if stats.cosine is not None else cosine_undefined(stats)
    zero = zero_note(ta.role, stats.norm_a == 0, stats.norm_b == 0)
    metrics = html.Div(
        [
            layouts.metric(
                "max |Δ|", f"{stats.max_abs:.4g}", hint="largest element-wise difference"
            ),
            layouts.metric("‖Δ‖₂", f"{stats.l2:.4g}", hint="L2 norm of B − A"),
            layouts.metric("cosine similarity", cosine, hint="1 = same direction, −1 = opposite"),
            layouts.metric(
                "‖A‖₂ · ‖B‖₂",
                f"{stats.norm_a:.4g} · {stats.norm_b:.4g}",
                hint=f"over {stats.count} values",
            ),
        ],
        className="metrics",
        id="compare-stats",
    )
    bars = dcc.Graph(
        id="compare-bars",
        figure=figures.difference_bars(stats),
        config=layouts.GRAPH_CONFIG,
        className="compare-bars",
    )
    return dbc.Row(
        [
            dbc.Col(
                [
                    html.H2("How far apart", className="h6"),
                    metrics,
                    html.P(note, className="small text-muted") if note else None,
                    dbc.Alert(zero, color="info", className="py-2 small", id="compare-zero")
                    if zero
                    else None,
                ],
                lg=6,
            ),
            dbc.Col(bars, lg=6),
        ],
        className="mb-3 align-items-center",
    )


def side_card(
    label: str,
    run: RunInfo,
    index: int,
    tensor: TensorRecord | None,
    view,
    zrange,
    missing_message: str | None,
    side: str,
) -> dbc.Card:
    title = html.Div(
        [
            html.Span(label, className="side-label"),
            dcc.Link(
                layouts.bdi(run.name), href=links.iteration(run.id, index), className="run-name"
            ),
            html.Span(f" · iteration {index}", className="text-muted"),
        ]
    )
    if tensor is None:
        body = dbc.Alert(missing_message, color="warning", className="mb-0")
    else:
        body = html.Div(
            [
                html.Div(
                    [
                        html.Code(tensor.name),
                        html.Span(format_shape(tensor.shape), className="tensor-shape"),
                    ],
                    className="tensor-header",
                ),
                dcc.Graph(
                    id=f"compare-{side}-graph",
                    figure=figures.heatmap(view, zrange=zrange, colorbar=True),
                    config=layouts.GRAPH_CONFIG,
                    className="heatmap",
                ),
                html.Div(view.caption, className="tensor-caption"),
                html.Div(
                    [
                        html.A(
                            f".{fmt}",
                            href=links.download(run.id, index, tensor.name, fmt),
                            download="",
                            className="download-link",
                        )
                        for fmt in links.DOWNLOAD_FORMATS
                    ],
                    className="tensor-downloads",
                ),
            ]
        )
    return dbc.Card(
        [dbc.CardHeader(title), dbc.CardBody(body)],
        className=f"compare-side compare-{side} shadow-sm",
    )


def history_section(store: RunStore, runs: list[RunInfo], chosen: list[int]) -> html.Div:
    by_id = {r.id: r for r in runs}
    legend = [
        (rid, layouts.run_label(by_id[rid]), figures.run_color(i)) for i, rid in enumerate(chosen)
    ]
    loss_series = []
    for rid, label, color in legend:
        its = store.iterations(rid)
        loss_series.append(
            figures.Series(label, color, [i.index for i in its], [i.loss for i in its])
        )
    rows = store.tensor_history(chosen, roles=[names.ROLE_PARAM, names.ROLE_PARAM_GRAD])
    pairs = figures.norm_panels(rows, legend)
    picker = dcc.Dropdown(
        id="compare-runs",
        options=[{"label": layouts.run_label(r), "value": r.id} for r in runs],
        value=chosen,
        multi=True,
        className="runs-picker",
    )
    return html.Section(
        [
            html.H2("Across iterations", className="section-title"),
            html.P(
                "Loss, and the L2 norm of every weight and its gradient, iteration by iteration: runs that "
                "differ only in their seed drift apart here.",
                className="section-lead",
            ),
            html.Div(
                [html.Span("Runs", className="control-label"), picker], className="control mb-2"
            ),
            dcc.Graph(
                id="compare-loss",
                figure=figures.loss_figure(loss_series),
                config=layouts.GRAPH_CONFIG,
            ),
            dcc.Graph(
                id="compare-norms", figure=figures.norms_figure(pairs), config=layouts.GRAPH_CONFIG
            ),
        ],
        className="phase-section history-section",
    )


def divergence_link(report: DivergenceReport) -> str | None:
    """The compare page at a divergence (both runs, that iteration, that tensor, the
    slice holding the largest difference), or None when there is nothing to open."""
    d = report.divergence
    if d is None or d.role not in ROLE_ORDER or d.tensor.startswith("("):
        return None
    if "only in run B" in d.reason:
        return None  # the page picks its tensors from side A
    lead = len(d.index) - 2 if d.index is not None and len(d.index) > 2 else 0
    return links.compare(
        (report.run_a, d.iteration),
        (report.run_b, d.iteration),
        layer=d.layer or MODEL_LEVEL,
        role=d.role,
        tensor=d.tensor,
        index=[i + 1 for i in d.index[:lead]] if lead else None,
        first=True,
    )


def divergence_banner(report: DivergenceReport) -> dbc.Alert:
    """The answer in one line, with where the largest difference is."""
    d = report.divergence
    if d is None:
        return dbc.Alert(
            report.summary() + ".", color="success", className="py-2", id="compare-first"
        )
    lines = [
        html.Strong("First divergence: "),
        f"runs {report.run_a} and {report.run_b} first differ at {d.where()}.",
        html.Br(),
        html.Code(d.tensor),
        f" {d.reason}",
    ]
    if d.max_abs_diff is not None:
        at = "" if d.index is None else f" at [{', '.join(str(i) for i in d.index)}]"
        lines.append(
            f": the largest difference is {d.max_abs_diff:.3g}{at} "
            f"(A {d.value_a:.9g}, B {d.value_b:.9g}); "
            + (
                "1 stored value differs"
                if d.differing == 1
                else f"{d.differing} stored values differ"
            )
            + ". Everything before it is "
            + ("bitwise identical." if report.atol == 0 else f"within {report.atol:g}.")
        )
    return dbc.Alert(lines, color="warning", className="py-2", id="compare-first")


def divergence_entry(run_a: RunInfo, run_b: RunInfo) -> html.Div:
    """The button that looks for the first divergence of the two runs."""
    if run_a.id == run_b.id:
        return html.Div()
    return html.Div(
        [
            dbc.Button(
                "First divergence",
                id="compare-diverge",
                color="primary",
                outline=True,
                size="sm",
                className="me-2",
            ),
            html.Span(
                f"the first iteration and step where run {run_a.id} and run {run_b.id} differ "
                "(bit for bit), opened here with the difference",
                className="text-muted small",
            ),
            html.Div(id="compare-diverge-result", className="mt-2"),
        ],
        className="mt-3 compare-diverge",
    )


def controls(runs, store, a, b, layer, role, tensor, table, slice_lead) -> dbc.Card:
    def iteration_options(run_id):
        return [
            {"label": f"iteration {i.index}", "value": i.index} for i in store.iterations(run_id)
        ]

    run_options = [{"label": layouts.run_label(r), "value": r.id} for r in runs]

    def side(label, key, sel):
        return dbc.Col(
            [
                html.Div(label, className="side-label mb-1"),
                dcc.Dropdown(
                    id=f"compare-{key}-run", options=run_options, value=sel[0], clearable=False
                ),
                dcc.Dropdown(
                    id=f"compare-{key}-it",
                    options=iteration_options(sel[0]),
                    value=sel[1],
                    clearable=False,
                    className="mt-1",
                ),
            ],
            md=4,
        )

    roles = [r for r in ROLE_ORDER if r in table[layer]]
    what = dbc.Col(
        [
            html.Div("Tensor on both sides", className="side-label mb-1"),
            dcc.Dropdown(
                id="compare-layer",
                options=[{"label": n, "value": n} for n in table],
                value=layer,
                clearable=False,
            ),
            dbc.RadioItems(
                id="compare-role",
                options=[{"label": layouts.ROLE_LABELS[r], "value": r} for r in roles],
                value=role,
                inline=True,
                className="mt-1 role-radio",
            ),
            dcc.Dropdown(
                id="compare-tensor",
                options=[{"label": n, "value": n} for n in table[layer][role]],
                value=tensor,
                clearable=False,
                className="mt-1",
            ),
            layouts.slice_selectors(
                slice_lead, lambda axis: {"type": "compare-slice", "axis": axis}
            )
            if slice_lead is not None
            else None,
        ],
        md=4,
    )
    by_id = {r.id: r for r in runs}
    return dbc.Card(
        dbc.CardBody(
            [
                dbc.Row([side("A", "a", a), side("B", "b", b), what], className="g-3"),
                divergence_entry(by_id[a[0]], by_id[b[0]]),
            ]
        ),
        className="mb-3 shadow-sm compare-controls",
    )


def validate(a=None, b=None, runs=None, **_query) -> None:
    """NotFound for a side that names an unknown run or iteration (dashapp.status: HTTP 404)."""
    store = current_store()
    parse_int_list(runs, "runs")
    for value, what in ((a, "side A"), (b, "side B")):
        selection = parse_selection(value, what)
        if selection is not None:
            require_stored(store, require_run(store, selection[0]), selection[1])


@page_layout
def layout(
    a=None, b=None, layer=None, role=None, tensor=None, runs=None, slice=None, first=None, **_query
):
    store = current_store()
    all_runs = store.list_runs()
    if not all_runs:
        return html.Div([layouts.page_header("Compare"), layouts.empty_store(store_location())])
    for name, value in (("layer", layer), ("role", role), ("tensor", tensor)):
        if isinstance(value, list):
            raise NotFound(f"the address gives {name} more than once")
    picked = parse_int_list(runs, "runs")
    sel_a, sel_b = parse_selection(a, "side A"), parse_selection(b, "side B")
    default_a, default_b = default_selections(store, all_runs, picked)
    sel_a, sel_b = sel_a or default_a, sel_b or default_b
    run_a, run_b = require_run(store, sel_a[0]), require_run(store, sel_b[0])
    rec_a = require_iteration(store, run_a, sel_a[1])
    rec_b = require_iteration(store, run_b, sel_b[1])
    layer, role, name, notes = choose(rec_a, run_a, layer or None, role or None, tensor or None)
    ta = rec_a.tensor(name)
    try:
        tb = rec_b.tensor(name)
    except KeyError:
        tb = None
    lead_index = [i - 1 for i in (parse_int_list(slice, "slice") or [])]
    view_a = matrix_view(ta.array, ta.shape, role=role, lead_index=lead_index)
    same_shape = tb is not None and tuple(tb.shape) == tuple(ta.shape)
    view_b = (
        matrix_view(tb.array, tb.shape, role=role, lead_index=lead_index)
        if tb is not None
        else None
    )
    zrange = figures.symmetric_range(view_a.values, *([view_b.values] if same_shape else []))
    missing = f"run {run_b.id} iteration {sel_b[1]} has no tensor {name}" if tb is None else None

    if picked:
        chosen = [i for i in picked if i in {r.id for r in all_runs}]
    else:
        same_model = [r.id for r in all_runs if r.model_name == run_a.model_name]
        chosen = same_model[:MAX_DEFAULT_RUNS]
    for rid in (run_b.id, run_a.id):
        if rid not in chosen:
            chosen.insert(0, rid)

    label = layouts.ROLE_LABELS.get(role, role)
    heatmaps = [
        dbc.Col(side_card("A", run_a, sel_a[1], ta, view_a, zrange, None, "a"), lg=4),
        dbc.Col(
            side_card(
                "B", run_b, sel_b[1], tb, view_b, zrange if same_shape else None, missing, "b"
            ),
            lg=4,
        ),
    ]
    if same_shape:
        diff = difference_view(view_a, view_b)
        heatmaps.append(
            dbc.Col(
                dbc.Card(
                    [
                        dbc.CardHeader(
                            html.Div(
                                [
                                    html.Span("Δ = B − A", className="side-label"),
                                    html.Span(" own colour scale", className="text-muted small"),
                                ]
                            )
                        ),
                        dbc.CardBody(
                            [
                                dcc.Graph(
                                    id="compare-diff-graph",
                                    figure=figures.difference_heatmap(diff),
                                    config=layouts.GRAPH_CONFIG,
                                    className="heatmap",
                                ),
                                html.Div(diff.caption, className="tensor-caption"),
                            ]
                        ),
                    ],
                    className="compare-side compare-diff shadow-sm",
                ),
                lg=4,
            )
        )
    page = [
        layouts.page_header(
            "Compare",
            subtitle=[
                html.Code(name),
                f" ({label}, {format_shape(ta.shape)}): A = run {run_a.id} iteration {sel_a[1]}, "
                f"B = run {run_b.id} iteration {sel_b[1]}",
            ],
            crumbs=[("Runs", links.RUNS), ("Compare", None)],
        ),
        controls(
            all_runs,
            store,
            sel_a,
            sel_b,
            layer,
            role,
            name,
            comparable(rec_a),
            view_a if view_a.lead else None,
        ),
        divergence_banner(first_divergence(store.engine, run_a.id, run_b.id))
        if first == "1" and run_a.id != run_b.id
        else None,
        *[dbc.Alert(n, color="info", className="py-2") for n in notes],
        html.P(
            "A and B share one colour scale (blue negative, white zero, red positive); the difference "
            "has its own.",
            className="text-muted small",
        ),
        dbc.Row(heatmaps, className="g-3 mb-3"),
        stats_block(ta, tb) if tb is not None else None,
        history_section(store, all_runs, chosen),
        dcc.Location(id="compare-url", refresh="callback-nav"),
        dcc.Store(
            id="compare-ref",
            data={
                "a": list(sel_a),
                "b": list(sel_b),
                "layer": layer,
                "role": role,
                "tensor": name,
                "runs": chosen if picked else None,
                "slice": [i + 1 for i in view_a.lead_index],
            },
        ),
    ]
    return html.Div(page, className="compare-page")


@dash.callback(
    Output("compare-url", "search"),
    Input("compare-a-run", "value"),
    Input("compare-a-it", "value"),
    Input("compare-b-run", "value"),
    Input("compare-b-it", "value"),
    Input("compare-layer", "value"),
    Input("compare-role", "value"),
    Input("compare-tensor", "value"),
    Input("compare-runs", "value"),
    Input({"type": "compare-slice", "axis": ALL}, "value"),
    State("compare-ref", "data"),
    prevent_initial_call=True,
)
def navigate(a_run, a_it, b_run, b_it, layer, role, tensor, runs, slices, ref):
    """Every control rewrites the query string; the page is rebuilt from it."""
    trigger = ctx.triggered_id
    store = current_store()

    def last_iteration(run_id):
        its = store.iterations(run_id)
        return its[-1].index if its else 1

    if trigger == "compare-a-run":
        a_it = last_iteration(a_run)
    if trigger == "compare-b-run":
        b_it = last_iteration(b_run)
    slice_index = [v for v in slices if v is not None] or None
    if trigger in ("compare-layer", "compare-role"):
        tensor, slice_index = None, None
    if trigger == "compare-layer":
        role = ref["role"]  # kept when the new layer has it, else the page picks one
    if trigger == "compare-tensor":
        slice_index = None
    url = links.compare(
        (a_run, a_it),
        (b_run, b_it),
        layer=layer,
        role=role,
        tensor=tensor,
        runs=runs if (trigger == "compare-runs" or ref.get("runs")) else None,
        index=[int(v) for v in slice_index] if slice_index else None,
    )
    search = url.partition("?")[2]
    return f"?{search}" if search else ""


@dash.callback(
    Output("compare-url", "search", allow_duplicate=True),
    Output("compare-diverge-result", "children"),
    Input("compare-diverge", "n_clicks"),
    State("compare-ref", "data"),
    prevent_initial_call=True,
)
def find_divergence(n_clicks, ref):
    """Open the page where the two runs first differ; say so when they never do."""
    if not n_clicks:
        raise dash.exceptions.PreventUpdate
    store = current_store()
    try:
        report = first_divergence(store.engine, ref["a"][0], ref["b"][0])
    except DivergeError as exc:
        return dash.no_update, dbc.Alert(str(exc), color="warning", className="py-2 mb-0")
    target = divergence_link(report)
    if target is None:
        return dash.no_update, divergence_banner(report)
    return "?" + target.partition("?")[2], None
