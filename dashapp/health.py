"""GET /healthz: whether the dashboard can read its store right now.

For container healthchecks and load balancers. It opens the store afresh (the
same checks as at start: the file, SQLite, the schema version) and reads the
runs table, so a store that was deleted, replaced or corrupted under a running
server turns the check unhealthy, which the page shell alone never would.
200 with {"status": "ok", "runs": N}; 503 with {"status": "error", "error": "..."}.
"""

from __future__ import annotations

import flask
from sqlalchemy.exc import SQLAlchemyError

from storage import RunQuery, RunStore, StoreError

from .data import store_location

HEALTH = "/healthz"


def register(server: flask.Flask) -> None:
    server.add_url_rule(HEALTH, endpoint="cnnviz_health", view_func=health, methods=["GET"])


def health() -> tuple[flask.Response, int]:
    try:
        with RunStore(store_location(), readonly=True) as store:
            page = store.run_page(RunQuery(limit=1))
    except (StoreError, SQLAlchemyError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return flask.jsonify(status="error", error=reason), 503
    return flask.jsonify(status="ok", runs=page.total), 200
