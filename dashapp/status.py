"""HTTP status of page addresses: an address that names nothing answers 404.

Dash serves the same page shell for every address and renders the page in the
browser, so by itself every address answers 200. Here, after the shell is made,
the address is checked: a path that is no page, or a query that a page's
`validate(**query)` rejects with `NotFound` (an unknown run, iteration or tensor),
turns the answer into a 404. The shell is still sent, so the browser shows the
same friendly not-found page that the page's layout builds.
"""

from __future__ import annotations

import logging

import dash
import flask

from storage import StoreError

from .data import NotFound

log = logging.getLogger("cnnviz.dashapp")
_SHELL_ENDPOINTS = {"/", "/<path:path>"}


def _page_for(path: str) -> dict | None:
    for page in dash.page_registry.values():
        if page["path"] == path and page["path"] != "/404":
            return page
    return None


def status_of(path: str, query: dict) -> int:
    """200, or 404 for an address that names nothing."""
    page = _page_for(path)
    if page is None:
        return 404
    validate = getattr(page.get("module_object") or _module(page), "validate", None)
    if validate is None:
        return 200
    try:
        validate(**query)
    except NotFound:
        return 404
    except StoreError:
        return 200  # the page says what is wrong with the store
    return 200


def _module(page: dict):
    import sys

    return sys.modules.get(page["module"])


def register(server: flask.Flask) -> None:
    @server.after_request
    def not_found_status(response: flask.Response) -> flask.Response:
        request = flask.request
        if (
            request.method == "GET"
            and request.endpoint in _SHELL_ENDPOINTS
            and response.status_code == 200
        ):
            query = {k: v[0] if len(v) == 1 else v for k, v in request.args.lists()}
            try:
                response.status_code = status_of(request.path, query)
            except Exception:  # never turn a page into an error because of this check
                log.exception("checking %s failed", request.full_path)
        return response
