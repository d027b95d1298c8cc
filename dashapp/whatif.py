"""The iteration page's "What if" section: edit the learning rate, or one input or
weight element, and see the iteration recomputed (storage.whatif, no torch).

The element edit recomputes forward, loss, backward and update with the same NumPy
math the explainers wrote out (storage.npmath). The answer shows, in execution
order, every tensor of the iteration with how many of its numbers the edit changed
and the largest difference to the stored run; the changed tensors the reader picks
are drawn as the recomputed values with every changed cell outlined, beside the
difference to the stored run. Any page can place `whatif_section`; its callbacks
are registered once, here.
"""

from __future__ import annotations

import collections
import math

import dash
import dash_bootstrap_components as dbc
import numpy as np
import plotly.colors
from dash import Input, Output, State, dcc, html

from dashapp import figures, layouts
from dashapp.data import cached_arrays, cached_iteration, cached_steps, current_store
from dashapp.formatting import format_diff, format_scalar, number_style
from dashapp.tensorview import (
    MAX_COLS,
    MAX_ROWS,
    MatrixView,
    caption_of,
    lead_dims,
    matrix_view,
    plane_shape,
)
from storage import names
from storage.records import IterationRecord, RunInfo
from storage.whatif import (
    NotAvailable,
    Replay,
    WhatIf,
    editable,
    with_element,
    with_learning_rate,
)

MAX_SHOWN = 6  # changed tensors drawn by default
MAX_OUTLINES = 400  # changed cells outlined in one plane; more are left to the Δ map
MAX_LISTED = 8  # changed predictions spelled out
# The difference colours as stops: plotly.js knows no "PuOr_r" (plotly.py expands names).
DIFF_STOPS = plotly.colors.get_colorscale(figures.DIFF_SCALE)


def whatif_section(record: IterationRecord, run: RunInfo) -> html.Section:
    """Both what-ifs of one iteration: the learning rate, and one element."""
    return html.Section(
        [
            html.H2("What if", className="section-title"),
            html.P(
                "Change one number and see this iteration recomputed in NumPy, with the same "
                "math as the steps above. Every number the change reaches is marked, with its "
                "difference to the stored run.",
                className="section-lead",
            ),
            element_controls(record, run),
            dcc.Loading(html.Div(id="iteration-whatif-element-result"), type="dot"),
            html.H3("Learning rate", className="h6 mt-4"),
            html.P(
                "The forward pass, the loss and the gradients do not depend on η; only the "
                "weights after the update change.",
                className="small text-muted",
            ),
            learning_rate_controls(record, run),
            html.Div(id="iteration-whatif-result"),
        ],
        id="section-whatif",
        className="phase-section section-whatif",
    )


# ---------------------------------------------------------------- one element


def element_controls(record: IterationRecord, run: RunInfo) -> html.Div:
    choices = editable(record, run)
    first = choices[0] if choices else None
    shape = record.tensor(first).shape if first else ()
    return html.Div(
        [
            html.Span("set", className="me-1"),
            dcc.Dropdown(
                id="iteration-whatif-tensor",
                options=[{"label": name, "value": name} for name in choices],
                value=first,
                clearable=False,
                style={"width": "14rem"},
                className="d-inline-block align-middle",
            ),
            html.Span("[", className="mx-1"),
            dcc.Input(
                id="iteration-whatif-index",
                type="text",
                value=", ".join("0" for _ in shape),
                debounce=True,
                className="form-control form-control-sm d-inline-block whatif-index",
                placeholder="index, e.g. 0, 0, 1, 2",
                style={"width": "9rem"},
            ),
            html.Span("] =", className="mx-1"),
            dcc.Input(
                id="iteration-whatif-value",
                type="number",
                step="any",
                debounce=True,
                placeholder="new value",
                className="form-control form-control-sm d-inline-block whatif-value",
                style={"width": "9rem"},
            ),
            dbc.Button(
                "Recompute the iteration",
                id="iteration-whatif-element-go",
                size="sm",
                color="primary",
                className="ms-2",
            ),
            html.Div(id="iteration-whatif-element-help", className="small text-muted mt-1"),
        ],
        className="control mb-2 whatif-element",
    )


@dash.callback(
    Output("iteration-whatif-element-help", "children"),
    Output("iteration-whatif-value", "placeholder"),
    Input("iteration-whatif-tensor", "value"),
    Input("iteration-whatif-index", "value"),
    State("iteration-ref", "data"),
)
def element_help(tensor, index, ref):
    """What the chosen element holds now, so the reader knows what they change."""
    if not ref or not tensor:
        return "", "new value"
    store, it = current_store(), ref["it"] or 1
    record = cached_steps(store, ref["run"], it)  # metadata only: one tensor is read below
    try:
        stored = record.tensor(tensor)
    except (AttributeError, KeyError):
        return "", "new value"
    shape = tuple(stored.shape)
    words = f"{tensor} has shape {tuple(shape)}; indices start at 0."
    try:
        at = tuple(int(p) for p in str(index or "").replace("[", "").replace("]", "").split(","))
        array = cached_arrays(store, ref["run"], it)[tensor]
        whole = isinstance(array, np.ndarray) and array.size == int(np.prod(shape))
        value = float(array.reshape(shape)[at]) if whole and len(at) == len(shape) else None
    except (ValueError, IndexError, TypeError, KeyError):
        return words + " Give one index per dimension.", "new value"
    if value is None:
        return words, "new value"
    return f"{words} Stored value: {value:.7g}.", f"{value:.7g}"


_RESULTS: collections.OrderedDict = collections.OrderedDict()  # the last few answers
_REPLAYS: collections.OrderedDict = collections.OrderedDict()  # and iterations replayed


def _remember(cache: collections.OrderedDict, key, value, size: int):
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)
    return value


def compute(store, run_id: int, it: int, tensor: str, index: str, value) -> WhatIf:
    """The what-if, cached: picking which tensors to draw does not recompute it."""
    key = (id(store), run_id, it, tensor, str(index), str(value))
    if key in _RESULTS:
        _RESULTS.move_to_end(key)
        return _RESULTS[key]
    run = store.get_run(run_id)
    record = cached_iteration(store, run_id, it) if run is not None else None
    if record is None:
        raise NotAvailable("this iteration is no longer in the store")
    replay = _REPLAYS.get(key[:3])
    if replay is None or replay.record is not record:
        # Only the optimizer's state is read from the iteration before, on demand.
        previous = cached_arrays(store, run_id, it - 1) if it > 1 else None
        replay = _remember(_REPLAYS, key[:3], Replay(record, run, previous), 2)
    return _remember(
        _RESULTS, key, with_element(record, run, tensor, index, value, replay=replay), 8
    )


@dash.callback(
    Output("iteration-whatif-element-result", "children"),
    Input("iteration-whatif-element-go", "n_clicks"),
    State("iteration-whatif-tensor", "value"),
    State("iteration-whatif-index", "value"),
    State("iteration-whatif-value", "value"),
    State("iteration-ref", "data"),
    prevent_initial_call=True,
)
def element_whatif(_clicks, tensor, index, value, ref):
    if value is None or value == "":
        return _refusal("Type the new value first.")
    try:
        result = compute(current_store(), ref["run"], ref["it"] or 1, tensor, index, value)
    except NotAvailable as exc:
        return _refusal(f"Not available: {exc}.")
    shown = default_shown(result)
    return html.Div(
        [
            summary(result),
            *[
                dbc.Alert(w, color="warning", className="py-2 small whatif-warning")
                for w in result.warnings
            ],
            changes_table(result),
            html.Div(
                [
                    html.Span("Draw:", className="me-2 small"),
                    dcc.Dropdown(
                        id="iteration-whatif-show",
                        options=[
                            {"label": f"{t.name} ({t.num_changed} changed)", "value": t.name}
                            for t in result.changed
                        ],
                        value=shown,
                        multi=True,
                        className="flex-grow-1",
                    ),
                ],
                className="d-flex align-items-center my-2",
            ),
            html.Div(cards(result, shown), id="iteration-whatif-cards"),
        ],
        id="iteration-whatif-answer",
    )


@dash.callback(
    Output("iteration-whatif-cards", "children"),
    Input("iteration-whatif-show", "value"),
    State("iteration-whatif-tensor", "value"),
    State("iteration-whatif-index", "value"),
    State("iteration-whatif-value", "value"),
    State("iteration-ref", "data"),
    prevent_initial_call=True,
)
def redraw(shown, tensor, index, value, ref):
    try:
        result = compute(current_store(), ref["run"], ref["it"] or 1, tensor, index, value)
    except NotAvailable as exc:
        return _refusal(f"Not available: {exc}.")
    return cards(result, shown or [])


def _refusal(text: str) -> dbc.Alert:
    return dbc.Alert(text, color="warning", className="py-2", id="iteration-whatif-note")


def default_shown(result: WhatIf) -> list[str]:
    """The first changed tensors of each phase, the loss and the edited parameter's update."""
    picked: list[str] = []
    by_phase = collections.defaultdict(list)
    for t in result.changed:
        by_phase[t.phase].append(t.name)
    for phase, count in (("forward", 2), ("backward", 1), ("update", 1)):
        picked += by_phase[phase][:count]
    for name in ("loss.value", names.next_value(result.tensor)):
        if name not in picked and any(t.name == name for t in result.changed):
            picked.append(name)
    return picked[:MAX_SHOWN]


def summary(result: WhatIf) -> html.Div:
    where = ", ".join(str(i) for i in result.index)
    total = len(result.tensors)
    changed = result.changed
    numbers = sum(t.num_changed for t in changed)
    parts = [
        html.Strong(f"{result.tensor}[{where}]: {result.old:.7g} → {result.new:.7g}. "),
        f"The edit changed {numbers} number(s) in {len(changed)} of the iteration's "
        f"{total} recomputed tensors. ",
    ]
    for t in result.tensors:
        if t.name.endswith("." + names.LOSS_VALUE) and t.value.ndim == 0:
            before, after = float(t.stored), float(t.value)
            parts.append(
                html.Span(
                    f"Loss {format_scalar(before)} → {format_scalar(after)} "
                    f"(Δ {after - before:+.3g}). ",
                    className="whatif-loss",
                )
            )
        if t.name.endswith(".predicted") and t.num_changed:
            before, after = t.stored.reshape(-1), t.value.astype(np.int64).reshape(-1)
            moved = np.flatnonzero(before != after)
            listed = ", ".join(f"sample {i}: {before[i]} → {after[i]}" for i in moved[:MAX_LISTED])
            more = f" and {len(moved) - MAX_LISTED} more" if len(moved) > MAX_LISTED else ""
            parts.append(
                f"The predicted class changes for {len(moved)} of {before.size} "
                f"sample{'s' if before.size > 1 else ''} ({listed}{more}). "
            )
    parts.append(
        html.Span(
            "Unedited, this recompute reproduces every stored tensor of the iteration "
            f"(max |Δ| {format_diff(result.replay_max_diff)}).",
            className="text-muted",
        )
    )
    return html.P(parts, className="whatif-summary")


def changes_table(result: WhatIf) -> html.Details:
    rows = []
    for t in result.tensors:
        n = int(np.prod(t.value.shape, dtype=np.int64)) if t.value.ndim else 1
        rows.append(
            html.Tr(
                [
                    html.Td(t.phase),
                    html.Td(html.Code(t.name)),
                    html.Td(f"{t.num_changed} of {n}"),
                    html.Td(format_diff(t.max_abs_diff) if t.num_changed else ""),
                ],
                className="whatif-changed" if t.num_changed else "text-muted",
            )
        )
    return html.Details(
        [
            html.Summary(
                f"Every tensor of the iteration, in execution order ({len(result.changed)} changed)"
            ),
            dbc.Table(
                [
                    html.Thead(
                        html.Tr(
                            [
                                html.Th("phase"),
                                html.Th("tensor"),
                                html.Th("changed numbers"),
                                html.Th("max |recomputed − stored|"),
                            ]
                        )
                    ),
                    html.Tbody(rows),
                ],
                size="sm",
                className="whatif-table",
            ),
        ],
        open=True,
    )


def window_around_change(array, changed, role: str = "", focus: tuple | None = None):
    """The heatmap window of the plane holding `focus` (or else the first changed number),
    placed so that it shows that number: -> (view, changed cells of the window, changed
    in the plane)."""
    array = np.asarray(array, dtype=np.float64)
    shape = tuple(array.shape)
    lead = lead_dims(shape, role)
    rows, cols = plane_shape(shape)
    planes = array.reshape(-1, rows, cols)
    marks = np.asarray(changed).reshape(-1, rows, cols)
    hits = np.flatnonzero(marks.reshape(-1))
    first = int(hits[0]) if hits.size else 0
    if focus is not None and len(focus) == array.ndim:
        first = int(np.ravel_multi_index(focus, shape)) if shape else 0
    plane, rest = divmod(first, rows * cols)
    r, c = divmod(rest, cols)
    r0 = min(max(r - MAX_ROWS // 4, 0), max(rows - MAX_ROWS, 0))
    c0 = min(max(c - MAX_COLS // 4, 0), max(cols - MAX_COLS, 0))
    values = planes[plane, r0 : r0 + MAX_ROWS, c0 : c0 + MAX_COLS]
    lead_index = (
        tuple(int(i) for i in np.unravel_index(plane, tuple(d.size for d in lead))) if lead else ()
    )
    view = MatrixView(
        values=values,
        missing=np.zeros(values.shape, dtype=bool),
        style=number_style(values),
        shape=shape,
        lead=lead,
        lead_index=lead_index,
        plane=(rows, cols),
        caption=caption_of(lead, lead_index, (r0, c0), values.shape, (rows, cols)),
        origin=(r0, c0),
        role=role,
    )
    window = marks[plane, r0 : r0 + MAX_ROWS, c0 : c0 + MAX_COLS]
    return view, window, int(marks[plane].sum())


def _outlines(view, marks: np.ndarray) -> list[dict]:
    rows, cols = np.nonzero(marks)
    if len(rows) > MAX_OUTLINES:
        return []
    row0, col0 = view.origin
    return [
        dict(
            type="rect",
            x0=col0 + c - 0.5,
            x1=col0 + c + 0.5,
            y0=row0 + r - 0.5,
            y1=row0 + r + 0.5,
            line=dict(color="#111", width=2),
            fillcolor="rgba(0,0,0,0)",
        )
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True)
    ]


def cards(result: WhatIf, shown: list[str]) -> html.Div:
    out = []
    for name in shown:
        try:
            t = result.tensor_named(name)
        except KeyError:
            continue
        role = result.roles.get(t.name, "")
        # The edited tensor and its update are drawn where the edit is.
        edited = (result.tensor, names.next_value(result.tensor), names.update(result.tensor))
        focus = result.index if t.name in edited else None
        view, marks, in_plane = window_around_change(t.value, t.changed, role, focus)
        diff_view, _, _ = window_around_change(t.difference, t.changed, role, focus)
        figure = figures.heatmap_dict(view)
        outlines = _outlines(view, marks)
        figure["layout"]["shapes"] = outlines
        caption = f"{in_plane} changed in this plane" + (
            f", {int(marks.sum())} in the window shown" if int(marks.sum()) != in_plane else ""
        )
        if int(marks.sum()) > MAX_OUTLINES:
            caption += " (too many to outline; see Δ)"
        if view.caption:
            caption = f"{view.caption}; {caption}"
        out.append(
            html.Div(
                [
                    html.Div(
                        [
                            html.Code(t.name),
                            html.Span(
                                f" {t.phase}: {t.num_changed} number(s) changed, max |Δ| to "
                                f"the stored run {format_diff(t.max_abs_diff)}",
                                className="text-muted",
                            ),
                        ],
                        className="tensor-header",
                    ),
                    html.Div(
                        [
                            html.Div(
                                [
                                    html.Div(
                                        f"recomputed; changed cells outlined ({caption})",
                                        className="small text-muted",
                                    ),
                                    dcc.Graph(
                                        figure=figure,
                                        config=layouts.GRAPH_CONFIG,
                                        className="whatif-recomputed",
                                    ),
                                ]
                            ),
                            html.Div(
                                [
                                    html.Div(
                                        "Δ = recomputed − stored", className="small text-muted"
                                    ),
                                    dcc.Graph(
                                        figure=figures.heatmap_dict(
                                            diff_view,
                                            colorscale=DIFF_STOPS,
                                            colorbar=True,
                                            zrange=figures.symmetric_range(diff_view.values),
                                        ),
                                        config=layouts.GRAPH_CONFIG,
                                        className="whatif-difference",
                                    ),
                                ]
                            ),
                        ],
                        className="flow-items",
                    ),
                ],
                className="tensor-panel whatif-item",
                **{"data-whatif": t.name},
            )
        )
    return html.Div(out, className="flow-items", id="iteration-whatif-element-items")


# ---------------------------------------------------------------- learning rate


def learning_rate_controls(record: IterationRecord, run: RunInfo) -> html.Div:
    lr = record.learning_rate if record.learning_rate is not None else run.learning_rate
    return html.Div(
        [
            html.Span("learning rate η =", className="me-1"),
            dcc.Input(
                id="iteration-whatif-lr",
                type="number",
                value=lr,
                min=0,
                step="any",
                debounce=True,
                className="form-control form-control-sm whatif-lr",
                style={"width": "9rem"},
            ),
            dbc.Button(
                "Recompute",
                id="iteration-whatif-go",
                size="sm",
                color="primary",
                outline=True,
            ),
        ],
        className="control mb-2",
    )


@dash.callback(
    Output("iteration-whatif-result", "children"),
    Input("iteration-whatif-go", "n_clicks"),
    State("iteration-whatif-lr", "value"),
    State("iteration-ref", "data"),
    prevent_initial_call=True,
)
def learning_rate_whatif(_clicks, lr, ref):
    store = current_store()
    run = store.get_run(ref["run"])
    record = cached_iteration(store, ref["run"], ref["it"] or 1) if run is not None else None
    if record is None:
        return dbc.Alert("This iteration is no longer in the store.", color="warning")
    try:
        changed = with_learning_rate(record, run.optimizer, run.optimizer_settings, float(lr))
    except (NotAvailable, TypeError, ValueError) as exc:
        return _refusal(str(exc))
    out = []
    for item in changed:
        if not item.name.endswith(".next"):
            continue
        new = matrix_view(item.recomputed, item.recomputed.shape, role="param_next")
        diff = matrix_view(item.difference, item.difference.shape, role="param_next")
        lr_text = f"{float(lr):g}" if math.isfinite(float(lr)) else str(lr)
        out.append(
            html.Div(
                [
                    html.Div(
                        [
                            html.Code(item.name),
                            html.Span(
                                f" with η = {lr_text}: max |Δ| to the stored run "
                                f"{format_diff(item.max_abs_diff)}",
                                className="text-muted",
                            ),
                        ],
                        className="tensor-header",
                    ),
                    html.Div(
                        [
                            html.Div(
                                [
                                    html.Div("w′ recomputed", className="small text-muted"),
                                    dcc.Graph(
                                        figure=figures.heatmap(new), config=layouts.GRAPH_CONFIG
                                    ),
                                ]
                            ),
                            html.Div(
                                [
                                    html.Div(
                                        "Δ = recomputed − stored", className="small text-muted"
                                    ),
                                    dcc.Graph(
                                        figure=figures.difference_heatmap(diff),
                                        config=layouts.GRAPH_CONFIG,
                                    ),
                                ]
                            ),
                        ],
                        className="flow-items",
                    ),
                ],
                className="tensor-panel whatif-item",
            )
        )
    return html.Div(out, className="flow-items", id="iteration-whatif-items")
