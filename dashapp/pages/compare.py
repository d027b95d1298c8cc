"""Compare (?a=RUN:IT&b=RUN:IT&layer=conv&role=param_grad&tensor=...&runs=1,2,3):
one tensor of one layer in two (run, iteration) selections side by side, on one
colour scale, with their difference; below, loss and per-layer weight and
gradient norms over iterations with the runs overlaid (seed sensitivity).

The page costs what it shows, at any number of runs and any tensor size:
- the run pickers hold a few runs and search the store as one types (name, model,
  id or seed; `RunStore.find_runs`), so no list of every run is built;
- each side and the difference are tensor panels (dashapp.tensorpanel): the page
  holds figure addresses, and only the window in view is read
  (`RunStore.tensor_window`). Side A's controls move the window of all three, and
  the window is in the URL (`t.<tensor>=SAMPLE,CHANNEL@ROW,COLUMN`);
- the numbers over the full tensors (max |Δ|, ‖Δ‖₂, cosine) read that one tensor
  of each side, never the rest of the iteration;
- the charts over iterations come from the stored summaries in one query each, as
  plain figure dicts, in their own callback after the page is shown.

"First divergence" finds the first iteration and step where the two runs differ
(storage.diverge) and opens the page there (&first=1 says so above the heatmaps).

Every control writes the URL; the page is rebuilt from it, so a comparison
is a link and the browser's back button undoes a choice.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, ctx, dcc, html

from dashapp import figures, layouts, links
from dashapp.data import (
    NotFound,
    current_store,
    parse_int_list,
    parse_selection,
    require_run,
    store_location,
)
from dashapp.formatting import format_shape
from dashapp.guard import page_layout
from dashapp.tensorpanel import (
    PanelView,
    TensorPanel,
    views_from_query,
)
from dashapp.tensorview import MAX_COLS, MAX_ROWS
from storage import RunInfo, RunQuery, RunStore, TensorRecord, names
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
PICKER_RUNS = 20  # runs a picker offers for what was typed
ITERATION_OPTIONS = 200  # a run with more iterations offers some and searches the rest
# The layer entry of tensors that belong to no layer (input, labels, input gradient);
# parentheses never occur in a module's qualified name.
MODEL_LEVEL = "(model)"
# Tensor panel ids: A has the window controls; B and the difference follow it when
# the shapes agree ("compare-b"); a B of another shape has its own ("compare-b-own").
PANEL_A, PANEL_B, PANEL_B_OWN, PANEL_DIFF = (
    "compare-a",
    "compare-b",
    "compare-b-own",
    "compare-diff",
)
# A's window as the URL writes it, from assets/tensor_panel.js (the address bar's `t.`
# key is written by the browser, which Dash does not see).
PANEL_A_VIEW = "compare-a-view"


def comparable(tensors: list[TensorRecord]) -> dict[str, dict[str, list[str]]]:
    """layer -> role -> tensor names, for the tensors that belong to a layer."""
    table: dict[str, dict[str, list[str]]] = {}
    for t in tensors:
        if t.role not in ROLE_ORDER:
            continue
        table.setdefault(t.layer or MODEL_LEVEL, {}).setdefault(t.role, []).append(t.name)
    return table


def choose(
    tensors: list[TensorRecord],
    run: RunInfo,
    index: int,
    layer: str | None,
    role: str | None,
    tensor: str | None,
) -> tuple[str, str, str, list[str]]:
    """(layer, role, tensor name, notes): the URL's choice, or a sensible default.

    An unknown layer or tensor is NotFound; a role or tensor the layer does not have
    falls back to one it has, with a note saying so."""
    table = comparable(tensors)
    order = [layer.name for layer in run.layers if layer.name in table] + [
        n for n in table if n not in {x.name for x in run.layers}
    ]
    if not order:
        raise NotFound(f"run {run.id} iteration {index} has no layer tensors to compare")
    named = next((t for t in tensors if t.name == tensor), None) if tensor is not None else None
    if tensor is not None and named is None:
        raise NotFound(f"run {run.id} iteration {index} has no tensor {tensor!r}")
    if named is not None and named.role in ROLE_ORDER:
        # A tensor named alone says its layer and role.
        layer = layer or named.layer or MODEL_LEVEL
        role = role or named.role
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


def last_iteration(store: RunStore, run: RunInfo) -> int:
    indices = store.iteration_indices(run.id)
    return indices[-1] if indices else 1


def default_selections(store: RunStore, picked: list[int] | None):
    """A: the first picked run (or the first run), last iteration; B: the next one."""
    order = [run for run in (store.get_run(i) for i in (picked or [])[:2]) if run is not None]
    if not order:
        order = store.find_runs(RunQuery(limit=2))
    first = order[0]
    second = order[1] if len(order) > 1 else first
    a = (first.id, last_iteration(store, first))
    if second.id == first.id:
        indices = store.iteration_indices(first.id)
        b = (first.id, indices[0] if len(indices) > 1 else a[1])
    else:
        b = (second.id, last_iteration(store, second))
    return a, b


@functools.lru_cache(maxsize=32)
def _tensor_records(store: RunStore, run_id: int, index: int) -> tuple[TensorRecord, ...]:
    """A stored iteration's tensors never change once committed: kept for the next view.
    KeyError (not kept) when the run does not store it yet."""
    tensors = store.tensor_records(run_id, index)
    if tensors is None:
        raise KeyError(index)
    return tuple(tensors)


def require_tensors(store: RunStore, run: RunInfo, index: int) -> list[TensorRecord]:
    """The iteration's tensors without bytes; NotFound when the run does not store it."""
    try:
        tensors = _tensor_records(store, run.id, index)
    except KeyError:
        tensors = None
    if tensors is None:
        count = run.num_iterations
        stored = (
            f"it has {count} iteration{'s' if count != 1 else ''}"
            if count
            else "it has no iterations yet"
        )
        raise NotFound(f"run {run.id} has no iteration {index}: {stored}")
    return list(tensors)


class Choice(NamedTuple):
    """What the address compares, resolved against the store (no tensor bytes read).
    (A NamedTuple: Dash Pages runs this module before it is in sys.modules, which
    dataclasses need.)"""

    run_a: RunInfo
    run_b: RunInfo
    sel_a: tuple[int, int]
    sel_b: tuple[int, int]
    tensors_a: list[TensorRecord]
    layer: str
    role: str
    name: str
    notes: list[str]
    ta: TensorRecord
    tb: TensorRecord | None
    picked: list[int] | None

    @property
    def same_shape(self) -> bool:
        return self.tb is not None and tuple(self.tb.shape) == tuple(self.ta.shape)


def resolve(store: RunStore, a=None, b=None, layer=None, role=None, tensor=None, runs=None):
    """The address's choice, or NotFound for anything it names that the store lacks."""
    for name, value in (("layer", layer), ("role", role), ("tensor", tensor)):
        if isinstance(value, list):
            raise NotFound(f"the address gives {name} more than once")
    picked = parse_int_list(runs, "runs")
    sel_a, sel_b = parse_selection(a, "side A"), parse_selection(b, "side B")
    if sel_a is None or sel_b is None:
        default_a, default_b = default_selections(store, picked)
        sel_a, sel_b = sel_a or default_a, sel_b or default_b
    run_a, run_b = require_run(store, sel_a[0]), require_run(store, sel_b[0])
    tensors_a = require_tensors(store, run_a, sel_a[1])
    tensors_b = require_tensors(store, run_b, sel_b[1])
    layer, role, name, notes = choose(
        tensors_a, run_a, sel_a[1], layer or None, role or None, tensor or None
    )
    ta = next(t for t in tensors_a if t.name == name)
    tb = next((t for t in tensors_b if t.name == name), None)
    return Choice(run_a, run_b, sel_a, sel_b, tensors_a, layer, role, name, notes, ta, tb, picked)


# ---------------------------------------------------------------- numbers over the full tensors


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


def compared(ta: TensorRecord, tb: TensorRecord) -> tuple[figures.DifferenceStats, str | None]:
    """The statistics over every stored value of two equally shaped tensors, and a note
    when a store size bound kept only the first values."""
    a, b = ta.array.reshape(-1), tb.array.reshape(-1)
    note = None
    if a.size != b.size or ta.truncated or tb.truncated:
        n = min(a.size, b.size)
        a, b = a[:n], b[:n]
        note = f"over the {n} stored values (a store size bound kept only the first ones)"
    return figures.difference_stats(a, b), note


@functools.lru_cache(maxsize=32)
def stored_comparison(
    store: RunStore, a: tuple[int, int], b: tuple[int, int], name: str
) -> tuple[figures.DifferenceStats, str | None]:
    """`compared` for the tensor `name` of two stored iterations: reads that one tensor's
    bytes of each side (a committed iteration never changes, so it is kept)."""
    ta, tb = store.load_tensor(*a, name), store.load_tensor(*b, name)
    if ta is None or tb is None:
        raise NotFound(f"tensor {name} is not stored in both iterations")
    return compared(ta, tb)


def stats_block(ta: TensorRecord, tb: TensorRecord, stats=None) -> html.Div:
    """How far apart A and B are over the full tensors. `stats`: (DifferenceStats, note)
    already computed; otherwise computed from the records' arrays."""
    if tuple(ta.shape) != tuple(tb.shape):
        return dbc.Alert(
            f"The shapes differ ({format_shape(ta.shape)} and {format_shape(tb.shape)}): "
            "there is no element-wise difference.",
            color="warning",
        )
    stats, note = stats if stats is not None else compared(ta, tb)
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
        figure=figures.difference_bars_dict(stats),
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


def difference_line(stats: figures.DifferenceStats, numel: int) -> str:
    return (
        f"max |Δ| {stats.max_abs:.4g} · ‖Δ‖₂ {stats.l2:.4g} "
        f"(over {'all ' if stats.count == numel else ''}{stats.count:,} values)"
    )


# ---------------------------------------------------------------- the three panels


def _stored_min(ta: TensorRecord, tb: TensorRecord) -> TensorRecord:
    """A record whose stored count is the smaller of both: a difference cell exists
    where both sides store a value (size bounds keep a prefix)."""
    counts = [n for n in (ta.stored_numel, tb.stored_numel) if n is not None]
    return TensorRecord(
        name=ta.name,
        role=ta.role,
        array=ta.array,
        layer=ta.layer,
        shape=tuple(ta.shape),
        summary=ta.summary,
        stored_numel=min(counts) if counts else None,
    )


def side_card(label: str, run: RunInfo, index: int, body, side: str) -> dbc.Card:
    title = html.Div(
        [
            html.Span(label, className="side-label"),
            dcc.Link(
                layouts.bdi(run.name), href=links.iteration(run.id, index), className="run-name"
            ),
            html.Span(f" · iteration {index}", className="text-muted"),
        ]
    )
    return dbc.Card(
        [dbc.CardHeader(title), dbc.CardBody(body, id=f"compare-{side}-graph")],
        className=f"compare-side compare-{side} shadow-sm",
    )


def scalar_of(store: RunStore, selection: tuple[int, int], name: str) -> float | None:
    """The value of a 0-D tensor (a loss), read as a one-element window."""
    window = store.tensor_window(*selection, name, rows=1, cols=1)
    if window is None or not window.stored.any():
        return None
    return float(window.values.reshape(-1)[0])


def panels(store: RunStore, choice: Choice, view: PanelView, stats) -> list:
    (ra, ia), (rb, ib) = choice.sel_a, choice.sel_b
    same = choice.same_shape
    scalars = {}
    if len(choice.ta.shape) == 0:  # a panel shows a scalar's value itself
        scalars["a"] = scalar_of(store, choice.sel_a, choice.name)
        if same:
            scalars["b"] = scalar_of(store, choice.sel_b, choice.name)
            both = (scalars["a"], scalars["b"])
            scalars["diff"] = None if None in both else both[1] - both[0]
    cards = [
        side_card(
            "A",
            choice.run_a,
            ia,
            TensorPanel(
                choice.ta,
                run_id=ra,
                index=ia,
                aio_id=PANEL_A,
                view=view,
                view_store=PANEL_A_VIEW,  # navigate keeps the window
                click_store=False,  # this page does not listen to clicks on cells
                figure_query={"with": links.selection(rb, ib)} if same else None,
                scalar=scalars.get("a"),
            ),
            "a",
        )
    ]
    if choice.tb is None:
        body = dbc.Alert(
            f"run {rb} iteration {ib} has no tensor {choice.name}",
            color="warning",
            className="mb-0",
        )
    else:
        body = TensorPanel(
            choice.tb,
            run_id=rb,
            index=ib,
            aio_id=PANEL_B if same else PANEL_B_OWN,
            view=view,
            click_store=False,
            follows=PANEL_A if same else None,
            figure_query={"with": links.selection(ra, ia)} if same else None,
            scalar=scalars.get("b"),
        )
    cards.append(side_card("B", choice.run_b, ib, body, "b"))
    if same:
        numel = math.prod(int(d) for d in choice.ta.shape)
        diff = TensorPanel(
            _stored_min(choice.ta, choice.tb),
            run_id=rb,
            index=ib,
            aio_id=PANEL_DIFF,
            view=view,
            click_store=False,
            follows=PANEL_A,
            figure_query={"minus": links.selection(ra, ia)},
            summary=difference_line(stats[0], numel) if stats is not None else "",
            downloads=False,
            scalar=scalars.get("diff"),
        )
        cards.append(
            dbc.Card(
                [
                    dbc.CardHeader(
                        html.Div(
                            [
                                html.Span("Δ = B − A", className="side-label"),
                                html.Span(
                                    " own colour scale, over this window",
                                    className="text-muted small",
                                ),
                            ]
                        )
                    ),
                    dbc.CardBody(diff, id="compare-diff-graph"),
                ],
                className="compare-side compare-diff shadow-sm",
            )
        )
    return [dbc.Col(card, lg=4) for card in cards]


# ---------------------------------------------------------------- choosing


def run_option(run: RunInfo) -> dict:
    model = f" · {run.model_name}" if run.model_name else ""
    return {"label": layouts.run_label(run) + model, "value": run.id}


def run_dropdown(component_id: str, runs: list[RunInfo], value, *, multi=False) -> dcc.Dropdown:
    seen, options = set(), []
    for run in runs:
        if run.id not in seen:
            seen.add(run.id)
            options.append(run_option(run))
    return dcc.Dropdown(
        id=component_id,
        options=options,
        value=value,
        multi=multi,
        clearable=multi,
        placeholder="type a name, model, seed or run id",
        className="runs-picker" if multi else "run-picker",
        debounce=False,
    )


def iteration_options(indices: list[int], current: int, text: str | None = None) -> list[dict]:
    """Every stored iteration, or for a long run the first, the last and those around
    the current one, plus those whose number starts with what was typed."""
    if len(indices) <= ITERATION_OPTIONS and not text:
        shown = indices
    elif text:
        typed = text.strip()
        shown = [i for i in indices if str(i).startswith(typed)][:ITERATION_OPTIONS]
    else:
        at = indices.index(current) if current in indices else 0
        near = indices[max(at - 50, 0) : at + 50]
        shown = sorted({*indices[:50], *near, *indices[-50:]})
    if current not in shown:
        shown = sorted({*shown, current})
    return [{"label": f"iteration {i}", "value": i} for i in shown]


def controls(store: RunStore, choice: Choice, chosen_runs: list[RunInfo]) -> dbc.Card:
    offered = [choice.run_a, choice.run_b, *chosen_runs]

    def side(label, key, run, sel):
        return dbc.Col(
            [
                html.Div(label, className="side-label mb-1"),
                run_dropdown(f"compare-{key}-run", offered, sel[0]),
                dcc.Dropdown(
                    id=f"compare-{key}-it",
                    options=iteration_options(store.iteration_indices(run.id), sel[1]),
                    value=sel[1],
                    clearable=False,
                    className="mt-1",
                ),
            ],
            md=4,
        )

    table = comparable(choice.tensors_a)
    roles = [r for r in ROLE_ORDER if r in table[choice.layer]]
    what = dbc.Col(
        [
            html.Div("Tensor on both sides", className="side-label mb-1"),
            dcc.Dropdown(
                id="compare-layer",
                options=[{"label": n, "value": n} for n in table],
                value=choice.layer,
                clearable=False,
            ),
            dbc.RadioItems(
                id="compare-role",
                options=[{"label": layouts.ROLE_LABELS[r], "value": r} for r in roles],
                value=choice.role,
                inline=True,
                className="mt-1 role-radio",
            ),
            dcc.Dropdown(
                id="compare-tensor",
                options=[{"label": n, "value": n} for n in table[choice.layer][choice.role]],
                value=choice.name,
                clearable=False,
                className="mt-1",
            ),
        ],
        md=4,
    )
    return dbc.Card(
        dbc.CardBody(
            [
                dbc.Row(
                    [
                        side("A", "a", choice.run_a, choice.sel_a),
                        side("B", "b", choice.run_b, choice.sel_b),
                        what,
                    ],
                    className="g-3",
                ),
                divergence_entry(choice.run_a, choice.run_b),
            ]
        ),
        className="mb-3 shadow-sm compare-controls",
    )


def search_runs(text, values) -> list[dict] | None:
    """The chosen runs, then up to PICKER_RUNS runs whose name or model contains what
    was typed, or whose id or seed it is; None when nothing was typed."""
    if not text or not text.strip():
        return None
    store = current_store()
    kept = [v for v in (values if isinstance(values, list) else [values]) if v is not None]
    runs = [r for r in (store.get_run(int(v)) for v in kept) if r is not None]
    runs += store.find_runs(RunQuery(text=text, limit=PICKER_RUNS))
    seen, options = set(), []
    for run in runs:
        if run.id not in seen:
            seen.add(run.id)
            options.append(run_option(run))
    return options


def _search_callback(component_id: str):
    @dash.callback(
        Output(component_id, "options"),
        Input(component_id, "search_value"),
        State(component_id, "value"),
        prevent_initial_call=True,
    )
    def search(text, value):
        options = search_runs(text, value)
        return dash.no_update if options is None else options

    search.__name__ = f"search_{component_id.replace('-', '_')}"
    return search


search_a = _search_callback("compare-a-run")
search_b = _search_callback("compare-b-run")
search_history = _search_callback("compare-runs")


def _iteration_search(side: str):
    @dash.callback(
        Output(f"compare-{side}-it", "options"),
        Input(f"compare-{side}-it", "search_value"),
        State(f"compare-{side}-it", "value"),
        State("compare-ref", "data"),
        prevent_initial_call=True,
    )
    def search(text, value, ref):
        indices = current_store().iteration_indices(int(ref[side][0]))
        if len(indices) <= ITERATION_OPTIONS or not text or not text.strip().isdigit():
            return dash.no_update
        return iteration_options(indices, value, text)

    search.__name__ = f"search_iterations_{side}"
    return search


search_iterations_a = _iteration_search("a")
search_iterations_b = _iteration_search("b")


# ---------------------------------------------------------------- over iterations


def history_section(chosen: list[RunInfo]) -> html.Section:
    picker = run_dropdown("compare-runs", chosen, [r.id for r in chosen], multi=True)
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
            dcc.Loading(
                [
                    dcc.Graph(id="compare-loss", config=layouts.GRAPH_CONFIG),
                    dcc.Graph(id="compare-norms", config=layouts.GRAPH_CONFIG),
                ],
                type="dot",
                delay_show=300,
            ),
        ],
        className="phase-section history-section",
    )


def history_figures(store: RunStore, legend: list[tuple[int, str]]) -> tuple[dict, dict]:
    """(loss, norms) over iterations of the runs of `legend` ((run id, label) in order),
    from stored summaries alone: one query for the losses and one for every weight's and
    gradient's L2 norm. The norms are kept per set of runs and their stored iterations:
    they change only when a run stores another iteration."""
    ids = [run_id for run_id, _ in legend]
    styled = [(run_id, label, figures.run_color(i)) for i, (run_id, label) in enumerate(legend)]
    loss = {run_id: figures.Series(label, color) for run_id, label, color in styled}
    for run_id, index, value in store.loss_history(ids):
        series = loss.get(run_id)
        if series is not None:
            series.x.append(int(index))
            series.y.append(figures.finite_or_none(value))
    stored = tuple((run_id, tuple(s.x)) for run_id, s in loss.items())
    norms = _norms(store, tuple(styled), stored)
    return figures.loss_dict(list(loss.values())), norms


@functools.lru_cache(maxsize=16)
def _norms(store: RunStore, styled: tuple, stored: tuple) -> dict:
    """The norms figure of these runs (`stored`: their stored iterations, the cache key)."""
    rows = store.summary_history(
        [r for r, _, _ in styled], [names.ROLE_PARAM, names.ROLE_PARAM_GRAD]
    )
    return figures.norms_dict(figures.norm_panels(rows, list(styled)))


@dash.callback(
    Output("compare-loss", "figure"),
    Output("compare-norms", "figure"),
    Input("compare-ref", "data"),
)
def draw_history(ref):
    """The charts over iterations, after the page is shown."""
    if not ref:
        raise dash.exceptions.PreventUpdate
    return history_figures(current_store(), [tuple(item) for item in ref["history"]])


def chosen_runs(store: RunStore, choice: Choice) -> list[RunInfo]:
    """The runs of the charts over iterations: those the address picks, else up to
    MAX_DEFAULT_RUNS runs of A's model; A and B always."""
    if choice.picked:
        runs = [r for r in (store.get_run(i) for i in choice.picked) if r is not None]
    else:
        query = RunQuery(model=choice.run_a.model_name, limit=MAX_DEFAULT_RUNS)
        runs = store.find_runs(query)
    ids = {r.id for r in runs}
    for run in (choice.run_b, choice.run_a):
        if run.id not in ids:
            runs.insert(0, run)
            ids.add(run.id)
    return runs


# ---------------------------------------------------------------- first divergence


def divergence_link(report: DivergenceReport) -> str | None:
    """The compare page at a divergence (both runs, that iteration, that tensor, the
    window holding the largest difference), or None when there is nothing to open."""
    d = report.divergence
    if d is None or d.role not in ROLE_ORDER or d.tensor.startswith("("):
        return None
    if "only in run B" in d.reason:
        return None  # the page picks its tensors from side A
    views = None
    if d.index:
        index = list(d.index)
        row, col = (index[-2], index[-1]) if len(index) >= 2 else (index[0], 0)
        lead = index[:-2] if len(index) > 2 else []
        view = PanelView(
            lead=tuple(lead), row0=max(row - MAX_ROWS // 2, 0), col0=max(col - MAX_COLS // 2, 0)
        )
        views = {d.tensor: view.to_url()}
    return links.compare(
        (report.run_a, d.iteration),
        (report.run_b, d.iteration),
        layer=d.layer or MODEL_LEVEL,
        role=d.role,
        tensor=d.tensor,
        first=True,
        views=views,
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


# ---------------------------------------------------------------- the page


def panel_view(choice: Choice, query: dict, slice_text) -> PanelView:
    """The window of the address: `t.<tensor>`, else the old `slice=` (a plane)."""
    views = views_from_query(query)
    if choice.name in views:
        return views[choice.name]
    lead = parse_int_list(slice_text, "slice") or []
    return PanelView(lead=tuple(i - 1 for i in lead))


def validate(a=None, b=None, layer=None, role=None, tensor=None, runs=None, slice=None, **query):
    """NotFound for a side, layer, tensor or view the store does not hold (dashapp.status:
    HTTP 404), checked as the page checks it, without reading tensor bytes."""
    store = current_store()
    if not store.find_runs(RunQuery(limit=1)):
        return
    choice = resolve(store, a, b, layer, role, tensor, runs)
    views = views_from_query(query)
    unknown = [n for n in views if n != choice.name]
    if unknown:
        raise NotFound(f"the compared tensor is {choice.name}, not {unknown[0]}")
    panel_view(choice, query, slice)


@page_layout
def layout(
    a=None, b=None, layer=None, role=None, tensor=None, runs=None, slice=None, first=None, **query
):
    store = current_store()
    if not store.find_runs(RunQuery(limit=1)):
        return html.Div([layouts.page_header("Compare"), layouts.empty_store(store_location())])
    choice = resolve(store, a, b, layer, role, tensor, runs)
    view = panel_view(choice, query, slice)
    unknown = [n for n in views_from_query(query) if n != choice.name]
    if unknown:
        raise NotFound(f"the compared tensor is {choice.name}, not {unknown[0]}")
    stats = (
        stored_comparison(store, tuple(choice.sel_a), tuple(choice.sel_b), choice.name)
        if choice.same_shape
        else None
    )
    history = chosen_runs(store, choice)
    label = layouts.ROLE_LABELS.get(choice.role, choice.role)
    (ra, ia), (rb, ib) = choice.sel_a, choice.sel_b
    page = [
        layouts.page_header(
            "Compare",
            subtitle=[
                html.Code(choice.name),
                f" ({label}, {format_shape(choice.ta.shape)}): A = run {ra} iteration {ia}, "
                f"B = run {rb} iteration {ib}",
            ],
            crumbs=[("Runs", links.RUNS), ("Compare", None)],
        ),
        controls(store, choice, history),
        divergence_banner(first_divergence(store.engine, ra, rb))
        if first == "1" and ra != rb
        else None,
        *[dbc.Alert(n, color="info", className="py-2") for n in choice.notes],
        html.P(
            "A and B share one colour scale over both full tensors; the difference has its own. "
            "A's controls move the window of all three.",
            className="text-muted small",
        ),
        dbc.Row(panels(store, choice, view, stats), className="g-3 mb-3"),
        stats_block(choice.ta, choice.tb, stats) if choice.tb is not None else None,
        history_section(history),
        dcc.Location(id="compare-url", refresh="callback-nav"),
        dcc.Store(id=PANEL_A_VIEW, data=_url_view(view)),
        dcc.Store(
            id="compare-ref",
            data={
                "a": list(choice.sel_a),
                "b": list(choice.sel_b),
                "layer": choice.layer,
                "role": choice.role,
                "tensor": choice.name,
                "runs": choice.picked,
                "history": [[r.id, layouts.run_label(r)] for r in history],
            },
        ),
    ]
    return html.Div(page, className="compare-page")


def _url_view(view: PanelView) -> str:
    """A panel's view as the URL writes it; "" for the first window of the first plane."""
    return "" if view == PanelView(lead=tuple(0 for _ in view.lead)) else view.to_url()


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
    State("compare-ref", "data"),
    State(PANEL_A_VIEW, "data"),
    prevent_initial_call=True,
)
def navigate(a_run, a_it, b_run, b_it, layer, role, tensor, runs, ref, shown):
    """Every control rewrites the query string; the page is rebuilt from it. The window
    stays where it was while the tensor stays the same."""
    trigger = ctx.triggered_id
    store = current_store()
    if a_run is None or b_run is None:
        raise dash.exceptions.PreventUpdate  # a cleared picker: wait for a choice

    def last(run_id):
        indices = store.iteration_indices(int(run_id))
        return indices[-1] if indices else 1

    if trigger == "compare-a-run":
        a_it = last(a_run)
    if trigger == "compare-b-run":
        b_it = last(b_run)
    if trigger in ("compare-layer", "compare-role"):
        tensor = None
    if trigger == "compare-layer":
        role = ref["role"]  # kept when the new layer has it, else the page picks one
    views = None
    if tensor == ref["tensor"] and shown:
        views = {tensor: shown}
    url = links.compare(
        (a_run, a_it),
        (b_run, b_it),
        layer=layer,
        role=role,
        tensor=tensor,
        runs=runs if (trigger == "compare-runs" or ref.get("runs")) else None,
        views=views,
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
