"""The cnnviz run store: SQLite (or any SQLAlchemy database) holding traced runs.

Works on NumPy arrays and plain records; never imports torch. Names are imported
lazily (PEP 562), so that `import storage` costs nothing until one is used: the
CLI's `--help` starts without SQLAlchemy or NumPy.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "CodecError": "codec",
    "JSON_COPY_MAX_NUMEL": "codec",
    "PHASES": "records",
    "ROLES": "records",
    "RUN_COMPLETED": "records",
    "RUN_FAILED": "records",
    "RUN_INTERRUPTED": "records",
    "RUN_RUNNING": "records",
    "RUN_STALE": "records",
    "IterationRecord": "records",
    "LayerInfo": "records",
    "RunInfo": "records",
    "RunPage": "records",
    "RunQuery": "records",
    "TensorWindow": "records",
    "StepRecord": "records",
    "TensorRecord": "records",
    "SCHEMA_VERSION": "schema",
    "NAME_MAX": "location",
    "DB_ENV_VAR": "location",
    "DEFAULT_DB": "location",
    "StoreError": "location",
    "default_db": "location",
    "IterationSummary": "store",
    "RunStore": "store",
    "Store": "store",
    "RunWriter": "store",
    "open_engine": "store",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
