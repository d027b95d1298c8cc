"""Where the store is, and the one error type for a store that cannot be used.

Standard library only: the CLI reads these before it knows whether a command
needs the store at all.
"""

from __future__ import annotations

import os

DEFAULT_DB = "runs.db"
DB_ENV_VAR = "CNNVIZ_DB"
# Longest run name the store holds (the length of `runs.name`); the CLI checks
# `--name` against it before anything heavier is imported.
NAME_MAX = 200


class StoreError(Exception):
    """A store cannot be opened or used; the message is one line for the user."""


def default_db() -> str:
    return os.environ.get(DB_ENV_VAR) or DEFAULT_DB
