"""Runs: every run in the store, sortable by any column (?sort=loss&order=desc);
tick two or more to compare them. Refreshes while a run is still being traced."""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import ALL, Input, Output, State, dcc, html

from dashapp import layouts, links
from dashapp.data import current_store, store_location
from dashapp.formatting import format_scalar
from dashapp.guard import page_layout
from storage import RUN_RUNNING, RunInfo

dash.register_page(__name__, path=links.RUNS, name="Runs", title="Runs · cnnviz", order=0)

POLL_MS = 2000

# (query value, header text, sort key); None sorts last whatever the order.
COLUMNS = (
    ("id", "#", lambda r: r.id),
    ("name", "Name", lambda r: r.name.lower()),
    ("seed", "Seed", lambda r: r.seed),
    ("model", "Model", lambda r: r.model_name.lower()),
    ("lr", "Learning rate", lambda r: r.learning_rate),
    ("status", "Status", lambda r: r.status),
    ("iterations", "Iterations", lambda r: r.num_iterations),
    ("loss", "Final loss", lambda r: r.final_loss),
    ("created", "Created (UTC)", lambda r: r.started_at),
)
SORT_KEYS = {key: fn for key, _, fn in COLUMNS}


def sort_runs(runs: list[RunInfo], sort: str | None, order: str | None) -> list[RunInfo]:
    key = SORT_KEYS.get(sort or "id", SORT_KEYS["id"])
    present = [r for r in runs if key(r) is not None]
    absent = [r for r in runs if key(r) is None]
    return sorted(present, key=key, reverse=order == "desc") + absent


def _header_cell(key: str, text: str, sort: str, order: str) -> html.Th:
    active = key == sort
    next_order = "desc" if active and order != "desc" else "asc"
    arrow = (" ▼" if order == "desc" else " ▲") if active else ""
    return html.Th(
        dcc.Link(text + arrow, href=links.runs(key, next_order), className="sort-link"),
        className="sorted" if active else None,
        **{"aria-sort": ("descending" if order == "desc" else "ascending") if active else "none"},
    )


def runs_table(
    runs: list[RunInfo], sort: str, order: str, checked: set[int] = frozenset()
) -> dbc.Table:
    """The table of runs; names are text, links go to each run's pages."""
    header = html.Thead(
        html.Tr(
            [html.Th(html.Span("Compare", className="visually-hidden"))]
            + [_header_cell(key, text, sort, order) for key, text, _ in COLUMNS]
            + [html.Th("Open")]
        )
    )
    rows = []
    for run in sort_runs(runs, sort, order):
        last = run.num_iterations
        rows.append(
            html.Tr(
                [
                    html.Td(
                        dbc.Checkbox(
                            id={"type": "runs-pick", "run": run.id},
                            value=run.id in checked,
                            class_name="m-0",
                        ),
                        className="pick",
                    ),
                    html.Td(str(run.id)),
                    html.Td(
                        dcc.Link(
                            layouts.isolate(run.name),
                            href=links.iteration(run.id, 1) if last else links.model(run.id),
                            className="run-name",
                        )
                    ),
                    html.Td("" if run.seed is None else str(run.seed)),
                    html.Td(run.model_name),
                    html.Td("" if run.learning_rate is None else f"{run.learning_rate:g}"),
                    html.Td(layouts.status_badge(run)),
                    html.Td(str(last), className="num"),
                    html.Td(format_scalar(run.final_loss), className="num"),
                    html.Td(run.started_at.strftime("%Y-%m-%d %H:%M:%S") if run.started_at else ""),
                    html.Td(
                        [
                            dcc.Link("model", href=links.model(run.id)),
                            " · ",
                            dcc.Link("last iteration", href=links.iteration(run.id, last))
                            if last
                            else "no iterations",
                        ],
                        className="open-links",
                    ),
                ],
                **{"data-run": str(run.id)},
            )
        )
    return dbc.Table(
        [header, html.Tbody(rows)], hover=True, responsive=True, className="runs-table align-middle"
    )


@page_layout
def layout(sort=None, order=None, **_query):
    store = current_store()
    runs = store.list_runs()
    sort = sort if isinstance(sort, str) and sort in SORT_KEYS else "id"
    order = "desc" if order == "desc" else "asc"
    if not runs:
        return html.Div([layouts.page_header("Runs"), layouts.empty_store(store_location())])
    running = any(r.status == RUN_RUNNING for r in runs)
    subtitle = [f"{len(runs)} run{'s' if len(runs) != 1 else ''} in ", html.Code(store_location())]
    compare_bar = html.Div(
        [
            html.Span(
                "Tick two or more runs to compare their weights, gradients and losses.",
                id="runs-pick-hint",
                className="text-muted",
            ),
            dcc.Link(
                "Compare selected",
                id="runs-compare",
                href=links.COMPARE,
                className="btn btn-primary disabled",
            ),
        ],
        className="compare-bar d-flex flex-wrap align-items-center justify-content-between gap-2 mb-2",
    )
    return html.Div(
        [
            layouts.page_header("Runs", subtitle=subtitle),
            compare_bar,
            html.Div(runs_table(runs, sort, order), id="runs-table"),
            dcc.Store(id="runs-sort", data={"sort": sort, "order": order}),
            dcc.Interval(id="runs-poll", interval=POLL_MS, disabled=not running),
        ]
    )


@dash.callback(
    Output("runs-compare", "href"),
    Output("runs-compare", "className"),
    Output("runs-pick-hint", "children"),
    Input({"type": "runs-pick", "run": ALL}, "value"),
    State({"type": "runs-pick", "run": ALL}, "id"),
)
def pick_runs(values, ids):
    chosen = [i["run"] for i, v in zip(ids, values, strict=True) if v]
    if len(chosen) < 2:
        hint = "Tick two or more runs to compare their weights, gradients and losses."
        return links.COMPARE, "btn btn-primary disabled", hint
    store = current_store()
    last = {r.id: r.num_iterations for r in store.list_runs()}
    a, b = chosen[0], chosen[1]
    href = links.compare(
        (a, max(last.get(a, 1), 1)),
        (b, max(last.get(b, 1), 1)),
        runs=chosen,
    )
    return href, "btn btn-primary", f"{len(chosen)} runs selected."


@dash.callback(
    Output("runs-table", "children"),
    Output("runs-poll", "disabled"),
    Input("runs-poll", "n_intervals"),
    State("runs-sort", "data"),
    State({"type": "runs-pick", "run": ALL}, "value"),
    State({"type": "runs-pick", "run": ALL}, "id"),
    prevent_initial_call=True,
)
def refresh(_n, sort, values, ids):
    runs = current_store().list_runs()
    checked = {i["run"] for i, v in zip(ids, values, strict=True) if v}
    running = any(r.status == RUN_RUNNING for r in runs)
    return runs_table(runs, sort["sort"], sort["order"], checked), not running
