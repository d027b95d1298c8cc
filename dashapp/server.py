"""`cnnviz serve` in production: gunicorn runs the dashboard, not Flask's dev server.

This is gunicorn's documented "custom application" (`gunicorn.app.base.BaseApplication`):
the same server the Docker image uses, started from Python with options instead of
a command line. The master process checks the store once (a bad one is a one-line
`StoreError` before anything listens); each worker then builds its own app with
`create_app`, so no SQLite connection crosses a fork and every process's Dash
callbacks belong to its one app. `cnnviz serve --debug` does not come here: it
runs Dash's dev server with its dev tools.
"""

from __future__ import annotations

from gunicorn.app.base import BaseApplication

from storage import RunStore

WORKERS = 2  # processes: a slow page in one does not stall the other
THREADS = 4  # per worker: page loads fire several callbacks at once
TIMEOUT_S = 120  # a LeNet-5 iteration page on a busy machine takes seconds, not minutes


class DashboardServer(BaseApplication):
    """gunicorn serving `create_app(store_location).server` with the given settings."""

    def __init__(self, store_location: str, settings: dict):
        self.store_location = store_location
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.settings.items():
            if key in self.cfg.settings:  # control_socket_disable is new in gunicorn 25.1
                self.cfg.set(key, value)

    def load(self):
        from .app import create_app  # in the worker: its own app, engine and callbacks

        return create_app(self.store_location).server


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(
    store_location: str,
    host: str,
    port: int,
    *,
    workers: int = WORKERS,
    access_log: bool = False,
    on_ready=None,
) -> None:
    """Serve until SIGINT/SIGTERM (gunicorn stops its workers gracefully).

    `on_ready()` runs once the store has been checked, just before gunicorn binds.
    """
    with RunStore(store_location, readonly=True):  # raises StoreError for a bad store
        pass
    # Import Dash and the app's modules once, before gunicorn forks: each worker then
    # only builds its app (no SQLite connection is opened here).
    from . import app  # noqa: F401

    if on_ready is not None:
        on_ready()
    DashboardServer(
        store_location,
        {
            "bind": [bind_address(host, port)],
            "workers": workers,
            "worker_class": "gthread",
            "threads": THREADS,
            "timeout": TIMEOUT_S,
            "graceful_timeout": 10,
            "accesslog": "-" if access_log else None,
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "cnnviz-dashboard",
            # No gunicornc control socket: one per user home would clash between servers.
            "control_socket_disable": True,
        },
    ).run()
