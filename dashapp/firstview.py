"""A page's first view comes with the page shell, not one round trip after it.

With Dash Pages a page is built in two steps: the renderer asks for the shell
(`_dash-layout`), which holds an empty `dash.page_container`; once the shell is drawn,
the container's Location reports the address and Dash's router (the page-content
callback) answers with the page. On the LeNet-5 conv1 view that second step cost a
React commit of the shell, the callback's round trip and a second commit, between the
scripts and the first heatmap.

Here the shell is built per request. The browser asks for `_dash-layout` from the
page itself, so the request's Referer is the page's address (the "layouts at layout
time" pattern of Dash's community forum). The shell's container then holds that
page's content, built as the router builds it (the same page, query and not-found
page), and its Location holds the address, so the Location has nothing to report
and the router, whose callback is `prevent_initial_call`, is not called. Every later
move (a link, back, forward) goes through the router as before.

- No Referer (a privacy setting, a proxy that drops it): the container is Dash's own,
  and the page comes through the router as before.
- A Referer that is not the page's address (browsers cut one longer than 4 KB to the
  origin; a setting can drop the query): the shell shows another page for a moment.
  assets/first_view.js compares the Location's props with the address once the shell
  is drawn and, if they differ, has the Location report the address, so the router
  builds the right page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import dash
import flask
from dash import dcc, html

from . import plain

log = logging.getLogger("cnnviz.dashapp")

# dash.page_container's ids (dash/_pages.py): the router's outputs and inputs
LOCATION_ID = "_pages_location"
CONTENT_ID = "_pages_content"
STORE_ID = "_pages_store"
DUMMY_ID = "_pages_dummy"


def address_of_request(app: dash.Dash) -> tuple[str, str, str] | None:
    """(pathname, search, href) of the page that asked for the layout, from the
    Referer, or None when there is none or it is another site's."""
    if not flask.has_request_context():
        return None
    referer = flask.request.headers.get("Referer", "")
    if not referer:
        return None
    parts = urlsplit(referer)
    if f"{parts.scheme}://{parts.netloc}/" != flask.request.host_url:
        return None  # not this server's page (or a proxy in between that rewrites the host)
    prefix = app.config.requests_pathname_prefix
    if not parts.path.startswith(prefix.rstrip("/") or "/"):
        return None
    href = referer.split("#", 1)[0]
    return parts.path, f"?{parts.query}" if parts.query else "", href


def _page_of(app: dash.Dash, pathname: str) -> tuple[Callable | object, object, dict]:
    """(layout, title, path variables) of the page at `pathname`, as Dash's router
    finds it (dash.Dash._setup_routes' router: its not_found_404 page otherwise)."""
    from dash._pages import _path_to_page  # what the router itself calls

    page, variables = _path_to_page(app.strip_relative_path(pathname))
    if page == {}:
        page = next(
            (p for m, p in dash.page_registry.items() if m.split(".")[-1] == "not_found_404"),
            {"layout": html.H1("404 - Page not found"), "title": app.title},
        )
    return page.get("layout", ""), page["title"], variables or {}


def page_container(app: dash.Dash):
    """dash.page_container, holding the requesting page's content when the address is
    known (see the module's docstring); Dash's own container otherwise."""
    address = address_of_request(app)
    if address is None:
        return dash.page_container
    pathname, search, href = address
    from dash._pages import _parse_query_string  # the router's own parsing

    try:
        layout, title, variables = _page_of(app, pathname)
        query = _parse_query_string(search)
        content = layout(**{**variables, **query}) if callable(layout) else layout
        if callable(title):
            title = title(**variables)
    except Exception:  # the page's own errors are its layout's business (guard.page_layout)
        log.exception("the first view of %s%s failed; the router builds it", pathname, search)
        return dash.page_container
    return html.Div(
        [
            # every address prop as the browser has it: the Location reports nothing on
            # mount (an unset one it would set, a store update for the whole page)
            dcc.Location(
                id=LOCATION_ID,
                refresh="callback-nav",
                pathname=pathname,
                search=search,
                href=href,
                hash="",
            ),
            html.Div(plain.tree(content), id=CONTENT_ID, disable_n_clicks=True),
            dcc.Store(id=STORE_ID, data={"title": title}),  # sets document.title
            html.Div(id=DUMMY_ID, disable_n_clicks=True),
        ]
    )
