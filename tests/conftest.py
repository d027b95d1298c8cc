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
