"""WSGI entry point for production servers:

    CNNVIZ_DB=/data/runs.db gunicorn --bind 127.0.0.1:8050 dashapp.wsgi:server

The store location comes from $CNNVIZ_DB (default ./runs.db). The app is built
when the server first asks for `server`, not at import: importing this module
never fails, and a missing or invalid store raises `storage.StoreError` with
its one-line message while the server loads the app (gunicorn then stops with
"Worker failed to boot" instead of serving errors). Each worker process builds
its own app, so no SQLite connection is shared across a fork.
"""

from __future__ import annotations

from storage import default_db

_server = None


def create_server():
    """The Flask server of a fresh app on $CNNVIZ_DB."""
    from .app import create_app

    return create_app(default_db()).server


def __getattr__(name: str):
    global _server
    if name in ("server", "application"):
        if _server is None:
            _server = create_server()
        return _server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
