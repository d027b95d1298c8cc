"""Shared fixtures: real SQLite files under tmp_path, traced by the real tracer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def db_path(tmp_path) -> Path:
    """A fresh store location (the file does not exist yet)."""
    return tmp_path / "runs.db"


@pytest.fixture(scope="session")
def seed_store(tmp_path_factory) -> Path:
    """One store holding the seed CNN traced with seeds 0 and 1 (3 iterations each).

    Session-scoped and read-only for tests: copy it before writing.
    """
    from tracer.train import run_builtin

    path = tmp_path_factory.mktemp("seed_store") / "runs.db"
    for seed in (0, 1):
        run_builtin(seed=seed, db=path, strict=True)
    return path


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running `python -m tracer.cli` in a subprocess."""
    env = dict(os.environ)
    env.pop("CNNVIZ_DB", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for this test session (see tests/pg_server.py).

    Skipped where Debian's postgresql package is missing, except in CI, where
    scripts/test.sh installs it and its absence is a failure."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import pg_server

    if not pg_server.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (scripts/test.sh installs it)")
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql")
    server = pg_server.PgServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server) -> str:
    """A fresh, empty PostgreSQL database: its SQLAlchemy URL."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)
