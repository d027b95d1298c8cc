"""Build the Dash app: navbar, page container, download route, read-only store.

`create_app(store_location)` opens the store read-only first, so a missing or
invalid store raises `storage.StoreError` (one line) before any server starts.
Tests and the WSGI entry point (`dashapp.wsgi`) build the app the same way.

Dash Pages imports the page modules under dashapp/pages when the app is built;
callbacks declared with `dash.callback` in those modules are claimed by the first
app that serves a request in the process, so build one app per process.
"""

from __future__ import annotations

import os
from pathlib import Path

import dash
import dash_bootstrap_components as dbc
from dash import dcc, html

from storage import RunStore

from . import bundle, downloads, formulafit, health, layouts, links, plain, status, tensorpanel
from .data import LOCATION_KEY, STORE_KEY

PACKAGE_DIR = Path(__file__).resolve().parent
NAV_PAGES = (
    ("Runs", links.RUNS),
    ("Model", links.MODEL),
    ("Iteration", links.ITERATION),
    ("Compare", links.COMPARE),
)


def create_app(store_location: str | os.PathLike, *, render_shell: bool = True) -> dash.Dash:
    location = os.fspath(store_location)
    store = RunStore(location, readonly=True)  # raises StoreError for a bad store
    app = dash.Dash(
        "dashapp",  # page modules are then imported as dashapp.pages.<name>
        use_pages=True,
        pages_folder=str(PACKAGE_DIR / "pages"),
        assets_folder=str(PACKAGE_DIR / "assets"),  # bootstrap.min.css ships here: no CDN
        external_stylesheets=[],
        suppress_callback_exceptions=True,
        title="cnnviz",
        update_title=None,
    )
    app.server.config[LOCATION_KEY] = location
    for page in dash.page_registry.values():  # the page-content callback sends plain trees
        page["layout"] = plain.serve_plain(page["layout"])
    app.server.extensions[STORE_KEY] = store
    navbar = plain.tree(layouts.navbar(NAV_PAGES))
    warm_up = plain.tree(dropdown_warm_up())

    app.layout = html.Div(
        [
            navbar,
            dbc.Container(dash.page_container, fluid=True, className="page-container"),
            warm_up,
        ]
    )
    bundle.register(app.server, app.config.requests_pathname_prefix)
    bundle.replace_polyfill(app)
    bundle.drop_dash_table(app)
    bundle.load_plotly_early(app)
    bundle.announce_answers(app)
    downloads.register(app.server)
    tensorpanel.register(app)
    formulafit.register(app.server)
    status.register(app.server)
    health.register(app.server)
    if render_shell:  # not for Dash's dev server: its dev tools must come before any request
        _render_shell_once(app)
    return app


def dropdown_warm_up() -> html.Div:
    """A hidden, empty dcc.Dropdown in the page shell.

    dcc.Dropdown is a lazy React component: the first one rendered fetches and evaluates
    dcc's dropdown chunk and renders again once it is there. In the shell that happens
    while the browser waits for the page's content; in the content (the iteration page's
    run picker) it cost a task of 60-80 ms after the content was shown, just before the
    first heatmaps were drawn. With the chunk resolved, the pages' dropdowns render with
    the content."""
    return html.Div(
        dcc.Dropdown(id="cnnviz-dropdown-warm-up", options=[]),
        hidden=True,
        **{"aria-hidden": "true"},
    )


def _render_shell_once(app: dash.Dash) -> None:
    """Serve the page shell once, inside this process, before any real request.

    Dash learns which of its component scripts may be served while it renders the
    shell (`registered_paths`). Under gunicorn every worker builds its own app, and a
    worker whose first request is a script rather than the page answered HTTP 500
    ("dash is registered but the path requested is not valid"), so pages failed to
    load at random with more than one worker.
    """
    response = app.server.test_client().get(app.config.requests_pathname_prefix)
    if response.status_code != 200:
        raise RuntimeError(f"the dashboard's page shell failed: HTTP {response.status_code}")
