"""The cnnviz run store: SQLite (or any SQLAlchemy database) holding traced runs.

Works on NumPy arrays and plain records; never imports torch.
"""

from .codec import JSON_COPY_MAX_NUMEL, CodecError
from .records import (
    PHASES,
    ROLES,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_INTERRUPTED,
    RUN_RUNNING,
    RUN_STALE,
    IterationRecord,
    LayerInfo,
    RunInfo,
    RunPage,
    RunQuery,
    StepRecord,
    TensorRecord,
    TensorWindow,
)
from .schema import NAME_MAX, SCHEMA_VERSION
from .store import (
    DB_ENV_VAR,
    DEFAULT_DB,
    IterationSummary,
    RunStore,
    RunWriter,
    Store,
    StoreError,
    default_db,
    open_engine,
)

__all__ = [
    "CodecError",
    "DB_ENV_VAR",
    "DEFAULT_DB",
    "IterationRecord",
    "IterationSummary",
    "JSON_COPY_MAX_NUMEL",
    "LayerInfo",
    "NAME_MAX",
    "PHASES",
    "ROLES",
    "RUN_COMPLETED",
    "RUN_FAILED",
    "RUN_INTERRUPTED",
    "RUN_RUNNING",
    "RUN_STALE",
    "RunInfo",
    "RunPage",
    "RunQuery",
    "RunStore",
    "RunWriter",
    "SCHEMA_VERSION",
    "StepRecord",
    "Store",
    "StoreError",
    "TensorRecord",
    "TensorWindow",
    "default_db",
    "open_engine",
]
