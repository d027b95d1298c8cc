"""Runs: the store's runs a page at a time, filtered and sorted in SQL.

Every choice is in the URL (?sort=loss&order=desc&page=3&per=50&model=lenet5&seed=1
&status=completed&name=lr&from=2026-11-01&to=2026-11-30&pick=4,9), so the page costs
the same at 10 and 10,000 runs, any view can be linked, and back and forward work.
Ticked runs (`pick`) stay ticked across pages and sorts; two or more link to Compare.
Refreshes while a run is still being traced.
"""

from __future__ import annotations

import datetime as dt
import functools
import math

import dash
import dash_bootstrap_components as dbc
from dash import ALL, Input, Output, State, dcc, html

from dashapp import layouts, links
from dashapp.data import NotFound, current_store, parse_int, parse_int_list, store_location
from dashapp.formatting import format_scalar
from dashapp.guard import page_layout
from dashapp.plain import el
from storage import RunInfo, RunQuery

dash.register_page(__name__, path=links.RUNS, name="Runs", title="Runs · cnnviz", order=0)

POLL_MS = 2000
PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PER = 50

# (query value, header text); the store sorts (storage.paging.RUN_SORTS), NULLs last.
COLUMNS = (
    ("id", "#"),
    ("name", "Name"),
    ("seed", "Seed"),
    ("model", "Model"),
    ("lr", "Learning rate"),
    ("status", "Status"),
    ("iterations", "Iterations"),
    ("loss", "Final loss"),
    ("created", "Created (UTC)"),
)
SORT_KEYS = {key for key, _ in COLUMNS}
FILTERS = ("model", "seed", "status", "name", "from", "to")


def _text(value) -> str | None:
    if isinstance(value, list):
        raise NotFound("the address gives a filter more than once")
    text = str(value).strip() if value is not None else ""
    return text[:200] or None


def _date(value, what: str) -> dt.date | None:
    text = _text(value)
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise NotFound(f"{what} {text!r} is not a date of the form 2026-11-29") from None


def parse_view(query: dict) -> dict:
    """The runs page's choices from the query string, checked; missing ones at defaults."""
    sort = query.get("sort")
    per = parse_int(query.get("per"), "page size")
    return {
        "sort": sort if isinstance(sort, str) and sort in SORT_KEYS else "id",
        "order": "desc" if query.get("order") == "desc" else "asc",
        "page": parse_int(query.get("page"), "page") or 1,
        "per": per if per in PAGE_SIZES else DEFAULT_PER,
        "model": _text(query.get("model")),
        "seed": parse_int(query.get("seed"), "seed", minimum=0),
        "status": _text(query.get("status")),
        "name": _text(query.get("name")),
        "from": _date(query.get("from"), "from"),
        "to": _date(query.get("to"), "to"),
        "pick": parse_int_list(query.get("pick"), "pick") or [],
    }


def view_href(view: dict, **changes) -> str:
    """The runs page's URL for `view` with some choices changed (defaults left out)."""
    v = {**view, **changes}
    return links.runs(
        v["sort"] if v["sort"] != "id" else None,
        v["order"] if v["sort"] != "id" or v["order"] != "asc" else None,
        page=v["page"] if v["page"] != 1 else None,
        per=v["per"] if v["per"] != DEFAULT_PER else None,
        model=v["model"],
        seed=v["seed"],
        status=v["status"],
        name=v["name"],
        **{
            "from": v["from"].isoformat() if v["from"] else None,
            "to": v["to"].isoformat() if v["to"] else None,
        },
        pick=",".join(str(r) for r in v["pick"]) or None,
    )


def _query(view: dict) -> RunQuery:
    return RunQuery(
        offset=(view["page"] - 1) * view["per"],
        limit=view["per"],
        sort=view["sort"],
        descending=view["order"] == "desc",
        model=view["model"],
        seed=view["seed"],
        status=view["status"],
        name=view["name"],
        started_from=view["from"],
        started_to=view["to"],
    )


def _header_cell(key: str, text: str, view: dict) -> html.Th:
    active = key == view["sort"]
    order = view["order"]
    next_order = "desc" if active and order != "desc" else "asc"
    arrow = (" ▼" if order == "desc" else " ▲") if active else ""
    return html.Th(
        dcc.Link(
            text + arrow,
            href=view_href(view, sort=key, order=next_order, page=1),
            className="sort-link",
        ),
        className="sorted" if active else None,
        **{"aria-sort": ("descending" if order == "desc" else "ascending") if active else "none"},
    )


def runs_table(runs: list[RunInfo], view: dict) -> dbc.Table:
    """The table of one page of runs; names are text, links go to each run's pages."""
    checked = set(view["pick"])
    header = html.Thead(
        html.Tr(
            [html.Th(html.Span("Compare", className="visually-hidden"))]
            + [_header_cell(key, text, view) for key, text in COLUMNS]
            + [html.Th("Open")]
        )
    )
    rows = [run_row(run, run.id in checked) for run in runs]
    return dbc.Table(
        [header, html.Tbody(rows)], hover=True, responsive=True, className="runs-table align-middle"
    )


def run_row(run: RunInfo, checked: bool) -> dict:
    """One run's row, built as the plain tree Dash sends (dashapp.plain: a page of 50
    rows is about 1,000 components, which Dash's classes build and encode 10x slower).
    A row is kept, keyed by everything it shows: the same row is not built again
    while its run is unchanged, and a changed run (a new iteration, a new status) is
    a new key, so a kept row is never out of date."""
    badge, color = layouts.status_shown(run)
    key = (
        run.id,
        run.name,
        run.seed,
        run.model_name,
        run.learning_rate,
        badge,
        color,
        run.num_iterations,
        run.final_loss,
        run.started_at,
        checked,
    )
    return _kept_row(key)


@functools.lru_cache(maxsize=1024)
def _kept_row(key: tuple) -> dict:
    run_id, name, seed, model, lr, badge, color, last, loss, started, checked = key
    return el(
        html.Tr,
        [
            el(
                html.Td,
                el(
                    dbc.Checkbox,
                    id={"type": "runs-pick", "run": run_id},
                    value=checked,
                    class_name="m-0",
                ),
                className="pick",
            ),
            el(html.Td, str(run_id)),
            el(
                html.Td,
                el(
                    dcc.Link,
                    el(html.Bdi, name),  # store text, direction-isolated (layouts.bdi)
                    href=links.iteration(run_id, 1) if last else links.model(run_id),
                    className="run-name",
                ),
            ),
            el(html.Td, "" if seed is None else str(seed)),
            el(html.Td, model),
            el(html.Td, "" if lr is None else f"{lr:g}"),
            el(html.Td, el(dbc.Badge, badge, color=color, className="status-badge")),
            el(html.Td, str(last), className="num"),
            el(html.Td, format_scalar(loss), className="num"),
            el(html.Td, started.strftime("%Y-%m-%d %H:%M:%S") if started else ""),
            el(
                html.Td,
                [
                    el(dcc.Link, "model", href=links.model(run_id)),
                    " · ",
                    el(dcc.Link, "last iteration", href=links.iteration(run_id, last))
                    if last
                    else "no iterations",
                ],
                className="open-links",
            ),
        ],
        **{"data-run": str(run_id)},
    )


def pager(view: dict, total: int) -> html.Nav:
    """first · previous · page P of N (runs a–b of T) · next · last, and the page size."""
    pages = max(1, math.ceil(total / view["per"]))
    current = view["page"]
    first = (current - 1) * view["per"] + 1 if total else 0
    last = min(current * view["per"], total)

    def item(label: str, page: int | None, rel: str) -> html.Li:
        if page is None or page == current or not 1 <= page <= pages:
            return html.Li(html.Span(label, className="page-link"), className="page-item disabled")
        return html.Li(
            dcc.Link(label, href=view_href(view, page=page), className=f"page-link pager-{rel}"),
            className="page-item",
        )

    sizes = [
        dcc.Link(
            str(size),
            href=view_href(view, per=size, page=1 + (first - 1) // size if first else 1),
            className="page-size" + (" active" if size == view["per"] else ""),
        )
        for size in PAGE_SIZES
    ]
    return html.Nav(
        [
            html.Ul(
                [
                    item("« first", 1, "first"),
                    item("‹ previous", current - 1, "previous"),
                    html.Li(
                        html.Span(
                            f"page {current} of {pages} · runs {first}–{last} of {total}",
                            className="page-link",
                        ),
                        className="page-item disabled pager-status",
                    ),
                    item("next ›", current + 1, "next"),
                    item("last »", pages, "last"),
                ],
                className="pagination pagination-sm mb-0",
            ),
            html.Span(["per page: ", *_between(sizes, " · ")], className="page-sizes small"),
        ],
        className="runs-pager d-flex flex-wrap align-items-center gap-3 my-2",
        **{"aria-label": "pages of runs"},
    )


def _between(items: list, sep: str) -> list:
    out = []
    for i, item in enumerate(items):
        out += [sep, item] if i else [item]
    return out


def filters(view: dict, models: list[str], statuses: list[str]) -> html.Div:
    """Model, status, seed, name and date filters; a change reloads page 1 of the result."""

    def field(label: str, control) -> html.Label:
        return html.Label(
            [html.Span(label, className="control-label"), control], className="control"
        )

    return html.Div(
        [
            field(
                "Model",
                dcc.Dropdown(
                    id="runs-filter-model",
                    options=[{"label": m, "value": m} for m in models],
                    value=view["model"],
                    placeholder="any",
                    className="runs-filter-select",
                ),
            ),
            field(
                "Status",
                dcc.Dropdown(
                    id="runs-filter-status",
                    options=[{"label": s, "value": s} for s in statuses],
                    value=view["status"],
                    placeholder="any",
                    className="runs-filter-select",
                ),
            ),
            field(
                "Seed",
                dcc.Input(
                    id="runs-filter-seed",
                    type="number",
                    min=0,
                    step=1,
                    value=view["seed"],
                    debounce=True,
                    className="form-control form-control-sm runs-filter-seed",
                ),
            ),
            field(
                "Name contains",
                dcc.Input(
                    id="runs-filter-name",
                    type="text",
                    value=view["name"] or "",
                    debounce=True,
                    className="form-control form-control-sm",
                ),
            ),
            field(
                "Created from",
                dcc.Input(
                    id="runs-filter-from",
                    type="date",
                    value=view["from"].isoformat() if view["from"] else "",
                    debounce=True,
                    className="form-control form-control-sm runs-filter-date",
                ),
            ),
            field(
                "to",
                dcc.Input(
                    id="runs-filter-to",
                    type="date",
                    value=view["to"].isoformat() if view["to"] else "",
                    debounce=True,
                    className="form-control form-control-sm runs-filter-date",
                ),
            ),
            dcc.Link("clear filters", href=view_href(view, **dict.fromkeys(FILTERS), page=1))
            if any(view[f] not in (None, "") for f in FILTERS)
            else None,
        ],
        className="runs-filters d-flex flex-wrap align-items-end gap-3 mb-2",
    )


def compare_bar(view: dict) -> html.Div:
    """How many runs are ticked (on any page), and the link to compare them."""
    picked = view["pick"]
    if len(picked) < 2:
        hint = "Tick two or more runs to compare their weights, gradients and losses."
        href, css = links.COMPARE, "btn btn-primary disabled"
    else:
        store = current_store()
        a, b = (store.get_run(r) for r in picked[:2])
        sides = [(r.id, max(r.num_iterations, 1)) for r in (a, b) if r is not None]
        href = links.compare(*sides, runs=picked) if len(sides) == 2 else links.COMPARE
        css = "btn btn-primary" + ("" if len(sides) == 2 else " disabled")
        hint = f"{len(picked)} runs selected: " + ", ".join(f"#{r}" for r in picked) + "."
    clear = (
        dcc.Link("clear selection", href=view_href(view, pick=[]), className="ms-2")
        if picked
        else None
    )
    return html.Div(
        [
            html.Span([hint, clear], id="runs-pick-hint", className="text-muted"),
            dcc.Link("Compare selected", id="runs-compare", href=href, className=css),
        ],
        className="compare-bar d-flex flex-wrap align-items-center justify-content-between gap-2 mb-2",
    )


def validate(**query) -> None:
    """NotFound for an address whose choices cannot be read (dashapp.status: HTTP 404)."""
    parse_view(query)


@page_layout
def layout(**query):
    store = current_store()
    view = parse_view(query)
    result = store.run_page(_query(view))
    pages = max(1, math.ceil(result.total / view["per"]))
    if view["page"] > pages:  # past the end (filters narrowed): the last page
        view["page"] = pages
        result = store.run_page(_query(view))
    if not result.models:  # no runs at all
        return html.Div([layouts.page_header("Runs"), layouts.empty_store(store_location())])
    filtered = any(view[f] not in (None, "") for f in FILTERS)
    subtitle = [
        f"{result.total} run{'s' if result.total != 1 else ''}"
        + (" match the filters" if filtered else "")
        + " in ",
        html.Code(store_location()),
    ]
    return html.Div(
        [
            layouts.page_header("Runs", subtitle=subtitle),
            filters(view, result.models, result.statuses),
            compare_bar(view),
            pager(view, result.total),
            html.Div(runs_table(result.runs, view), id="runs-table"),
            html.P("No run matches these filters.", className="text-muted")
            if not result.runs
            else None,
            dcc.Store(id="runs-view", data=_stored(view)),
            dcc.Location(id="runs-url", refresh="callback-nav"),
            dcc.Interval(id="runs-poll", interval=POLL_MS, disabled=not result.any_running),
        ],
        className="runs-page",
    )


def _stored(view: dict) -> dict:
    return {
        **view,
        "from": view["from"].isoformat() if view["from"] else None,
        "to": view["to"].isoformat() if view["to"] else None,
    }


def _restored(data: dict) -> dict:
    return {
        **data,
        "from": dt.date.fromisoformat(data["from"]) if data.get("from") else None,
        "to": dt.date.fromisoformat(data["to"]) if data.get("to") else None,
    }


@dash.callback(
    Output("runs-url", "href", allow_duplicate=True),
    Input({"type": "runs-pick", "run": ALL}, "value"),
    State({"type": "runs-pick", "run": ALL}, "id"),
    State("runs-view", "data"),
    prevent_initial_call=True,
)
def pick_runs(values, ids, data):
    """A tick or untick: the same page with the selection (kept across pages) in the URL."""
    view = _restored(data)
    on_page = {i["run"]: bool(v) for i, v in zip(ids, values, strict=True)}
    picked = [r for r in view["pick"] if on_page.get(r, True)]
    picked += [r for r, v in on_page.items() if v and r not in picked]
    if picked == view["pick"]:
        return dash.no_update
    return view_href(view, pick=picked)


@dash.callback(
    Output("runs-url", "href", allow_duplicate=True),
    Input("runs-filter-model", "value"),
    Input("runs-filter-status", "value"),
    Input("runs-filter-seed", "value"),
    Input("runs-filter-name", "value"),
    Input("runs-filter-from", "value"),
    Input("runs-filter-to", "value"),
    State("runs-view", "data"),
    prevent_initial_call=True,
)
def filter_runs(model, status, seed, name, start, end, data):
    """A changed filter: page 1 of the runs that match (an invalid seed or date is ignored)."""
    view = _restored(data)

    def day(text):
        try:
            return dt.date.fromisoformat(text) if text else None
        except ValueError:
            return None

    seed = int(seed) if isinstance(seed, (int, float)) and seed >= 0 and seed == int(seed) else None
    changed = {
        "model": model or None,
        "status": status or None,
        "seed": seed,
        "name": (name or "").strip()[:200] or None,
        "from": day(start),
        "to": day(end),
    }
    if all(view[k] == v for k, v in changed.items()):
        return dash.no_update
    return view_href(view, page=1, **changed)


@dash.callback(
    Output("runs-table", "children"),
    Output("runs-poll", "disabled"),
    Input("runs-poll", "n_intervals"),
    State("runs-view", "data"),
    prevent_initial_call=True,
)
def refresh(_n, data):
    """While a run is traced: the same page again; stop polling when nothing runs."""
    view = _restored(data)
    result = current_store().run_page(_query(view))
    return runs_table(result.runs, view), not result.any_running
