"""Open a run store, write traced iterations into it, read them back.

One writer path (`RunWriter`) and one reader (`RunStore`), in the spirit of
datasette: the tracer writes with immediate transactions, one per iteration,
in WAL mode, so several tracing processes can share one file and a killed
trace leaves every committed iteration intact. The dashboard opens the file
read-only.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import (
    JSON,
    Engine,
    Integer,
    case,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session, selectinload

from . import codec, names, paging, schema
from .location import DB_ENV_VAR, DEFAULT_DB, StoreError, default_db
from .records import (
    RUN_COMPLETED,
    RUN_RUNNING,
    IterationRecord,
    LayerInfo,
    RunInfo,
    RunPage,
    RunQuery,
    StepRecord,
    TensorRecord,
    TensorWindow,
)

BUSY_TIMEOUT_MS = 60_000
# A writer checkpoints the WAL into the database when it passes this many pages
# (4 KiB each: 64 MiB), and when its last connection closes. SQLite's default of
# 1000 pages (4 MB) checkpointed after every LeNet-5 iteration, so each one was
# written and fsync'd twice, once in the WAL and once in the database.
WAL_AUTOCHECKPOINT_PAGES = 16384
SQLITE_MAGIC = b"SQLite format 3\x00"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _is_url(location: str) -> bool:
    return "://" in location


def _check_sqlite_path(path: Path, *, create: bool) -> None:
    """Fail early, with one line, on paths that cannot be a store."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a store file")
    if path.exists():
        if not os.access(path, os.R_OK):
            raise StoreError(f"{path} is not readable")
        if path.stat().st_size > 0:
            with path.open("rb") as handle:
                if handle.read(16) != SQLITE_MAGIC:
                    raise StoreError(f"{path} is not a SQLite database")
        if create and not os.access(path, os.W_OK):
            raise StoreError(f"{path} is not writable")
        return
    if not create:
        raise StoreError(f"no store at {path} (run `cnnviz trace --db {path}` first)")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise StoreError(f"cannot create {path}: {parent} is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc.strerror or exc}") from exc
    if not os.access(parent, os.W_OK):
        raise StoreError(f"cannot create {path}: {parent} is not writable")


def _make_engine(location: str, *, readonly: bool) -> Engine:
    if _is_url(location):
        url = location
        is_sqlite = location.startswith("sqlite")
    else:
        path = Path(location).expanduser()
        _check_sqlite_path(path, create=not readonly)
        resolved = path.resolve()
        url = f"sqlite:///file:{resolved}?mode=ro&uri=true" if readonly else f"sqlite:///{resolved}"
        is_sqlite = True
    engine = create_engine(url)
    if is_sqlite:
        _configure_sqlite(engine, readonly=readonly)
    return engine


def _configure_sqlite(engine: Engine, *, readonly: bool) -> None:
    # All PRAGMAs in one connect handler (as MLflow does), and transactions that
    # take the write lock up front so that concurrent writers queue on the busy
    # timeout instead of failing with "database is locked" on lock upgrade.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if not readonly:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).splitlines()[0] if str(orig) else type(orig).__name__


def _check_schema(connection, location: str, *, initialize: bool) -> None:
    """Create the schema in an empty file, or check the version of an existing one."""
    tables = set(inspect(connection).get_table_names())
    if "meta" not in tables:
        if tables:
            raise StoreError(f"{location} is a SQLite database but not a cnnviz run store")
        if not initialize:
            return  # an empty file reads as an empty store
        schema.Base.metadata.create_all(connection)
        for name, body in schema.VIEWS.items():
            connection.exec_driver_sql(f"CREATE VIEW IF NOT EXISTS {name} AS {body}")
        connection.execute(
            schema.Meta.__table__.insert(),
            [
                {"key": "schema_version", "value": str(schema.SCHEMA_VERSION)},
                {"key": "created_by", "value": "cnnviz"},
            ],
        )
        return
    version = connection.execute(
        select(schema.Meta.value).where(schema.Meta.key == "schema_version")
    ).scalar()
    if version is None or not version.isdigit():
        raise StoreError(f"{location} has no valid cnnviz schema version")
    if int(version) != schema.SCHEMA_VERSION:
        newer = int(version) > schema.SCHEMA_VERSION
        raise StoreError(
            f"{location} has store schema version {version}, this cnnviz reads version "
            f"{schema.SCHEMA_VERSION}" + ("; upgrade cnnviz to open it" if newer else "")
        )


def open_engine(location: str | os.PathLike | None = None, *, readonly: bool = False) -> Engine:
    """An engine on a checked store. Raises StoreError with a one-line message."""
    location = str(location) if location is not None else default_db()
    engine = _make_engine(location, readonly=readonly)
    try:
        with engine.begin() as connection:
            _check_schema(connection, location, initialize=not readonly)
    except StoreError:
        engine.dispose()
        raise
    except (DatabaseError, OperationalError, sqlite3.DatabaseError) as exc:
        engine.dispose()
        raise StoreError(f"cannot open {location}: {_one_line(exc)}") from exc
    return engine


# ---------------------------------------------------------------- conversions


def _run_info(row: schema.Run, with_layers: bool = False) -> RunInfo:
    return RunInfo(
        id=row.id,
        name=row.name,
        seed=row.seed,
        model_name=row.model_name,
        model_description=row.model_description,
        optimizer=row.optimizer,
        optimizer_settings=dict(row.optimizer_settings or {}),
        loss_name=row.loss_name,
        dataset=row.dataset,
        config=dict(row.config or {}),
        torch_version=row.torch_version,
        cnnviz_version=row.cnnviz_version,
        status=row.status,
        started_at=row.started_at,
        finished_at=row.finished_at,
        final_loss=row.final_loss,
        num_iterations=row.num_iterations,
        error=row.error,
        layers=[_layer_info(layer) for layer in row.layers] if with_layers else [],
    )


def _layer_info(row: schema.Layer) -> LayerInfo:
    return LayerInfo(
        position=row.position,
        name=row.name,
        type=row.type,
        input_shape=tuple(row.input_shape) if row.input_shape is not None else None,
        output_shape=tuple(row.output_shape) if row.output_shape is not None else None,
        num_params=row.num_params,
        description=row.description,
        formula=row.formula,
        explained=row.explained,
    )


def _tensor_record(row: schema.Tensor, with_data: bool) -> TensorRecord:
    shape = tuple(int(d) for d in row.shape)
    summary = {
        key: getattr(row, key)
        for key in ("min", "max", "mean", "std", "l2", "nan_count", "inf_count")
    }
    if with_data:
        array = codec.decode(
            row.data.data, row.dtype, shape if row.stored_numel == row.numel else None
        )
    else:
        array = np.empty((0,), dtype=np.dtype(row.dtype))
    record = TensorRecord(
        name=row.name,
        role=row.role,
        array=array,
        layer=row.layer,
        shape=shape,
        summary=summary,
        id=row.id,
        stored_numel=row.stored_numel,
    )
    return record


def _step_record(row: schema.Step) -> StepRecord:
    return StepRecord(
        layer=row.layer,
        phase=row.phase,
        title=row.title,
        formula=row.formula,
        formula_values=row.formula_values,
        inputs=[link.tensor.name for link in row.tensor_links if link.direction == "in"],
        outputs=[link.tensor.name for link in row.tensor_links if link.direction == "out"],
        reference=row.reference,
        max_abs_diff=row.max_abs_diff,
        verified=row.verified,
        note=row.note,
        position=row.position,
    )


@dataclass
class IterationSummary:
    index: int
    loss: float
    accuracy: float | None
    learning_rate: float | None
    created_at: dt.datetime
    num_steps: int
    num_checked: int  # steps compared with a PyTorch tensor
    num_verified: int  # ... and within tolerance
    worst_diff: float | None


# ---------------------------------------------------------------- writing


class RunWriter:
    """Writes one run: `begin`, then one `add_iteration` per iteration, then `finish`.

    Each call is its own immediate transaction, so what a killed process had
    committed stays, and the run row says `running` with no `finished_at`.
    """

    def __init__(self, engine: Engine, run_id: int):
        self.engine = engine
        self.run_id = run_id

    @classmethod
    def begin(cls, engine: Engine, info: RunInfo) -> RunWriter:
        with Session(engine) as session, session.begin():
            row = schema.Run(
                name=info.name,
                seed=info.seed,
                model_name=info.model_name,
                model_description=info.model_description,
                optimizer=info.optimizer,
                optimizer_settings=info.optimizer_settings,
                learning_rate=info.learning_rate,
                loss_name=info.loss_name,
                dataset=info.dataset,
                config=info.config,
                torch_version=info.torch_version,
                cnnviz_version=info.cnnviz_version,
                status=RUN_RUNNING,
                started_at=info.started_at or _utcnow(),
                num_iterations=0,
            )
            session.add(row)
            session.flush()
            run_id = row.id
        info.id = run_id
        return cls(engine, run_id)

    def set_layers(self, layers: Sequence[LayerInfo]) -> None:
        """Record the model's layers (known after the first forward pass)."""
        with Session(self.engine) as session, session.begin():
            session.execute(
                schema.Layer.__table__.delete().where(schema.Layer.run_id == self.run_id)
            )
            session.add_all(
                schema.Layer(
                    run_id=self.run_id,
                    position=layer.position,
                    name=layer.name,
                    type=layer.type,
                    input_shape=list(layer.input_shape) if layer.input_shape else None,
                    output_shape=list(layer.output_shape) if layer.output_shape else None,
                    num_params=layer.num_params,
                    description=layer.description,
                    formula=layer.formula,
                    explained=layer.explained,
                )
                for layer in layers
            )
            # The run's description gains the layer list, readable without a join.
            run = session.get(schema.Run, self.run_id)
            header = (run.model_description or "").split("\n")[0]
            run.model_description = "\n".join([header, *(_layer_line(layer) for layer in layers)])

    def add_iteration(self, record: IterationRecord) -> None:
        """Write one iteration in one immediate transaction.

        Core executemany inserts rather than ORM objects: the unit of work costs
        more than SQLite itself for the hundreds of rows an iteration has.
        """
        tensor_names = [names.check(tensor.name) for tensor in record.tensors]
        if len(set(tensor_names)) != len(tensor_names):
            raise ValueError(f"iteration {record.index} has duplicate tensor names")
        known = set(tensor_names)
        for step in record.steps:
            for name in (*step.inputs, *step.outputs):
                if name not in known:
                    raise ValueError(f"step {step.title!r} names unknown tensor {name!r}")
        tensor_rows, data_rows = [], []
        for tensor in record.tensors:
            row, data = _tensor_row(tensor)
            tensor_rows.append(row)
            data_rows.append(data)
        step_rows = [
            dict(
                position=position,
                layer=step.layer,
                phase=step.phase,
                title=step.title,
                formula=step.formula,
                formula_values=step.formula_values,
                reference=step.reference,
                max_abs_diff=step.max_abs_diff,
                verified=step.verified,
                note=step.note,
            )
            for position, step in enumerate(record.steps)
        ]
        with self.engine.begin() as conn:
            iteration_id = conn.execute(
                schema.Iteration.__table__.insert().returning(schema.Iteration.id),
                dict(
                    run_id=self.run_id,
                    index=record.index,
                    loss=_real(record.loss),
                    accuracy=record.accuracy,
                    learning_rate=record.learning_rate,
                    warnings=list(record.warnings),
                    created_at=record.created_at or _utcnow(),
                ),
            ).scalar_one()
            for row in tensor_rows:
                row["iteration_id"] = iteration_id
            for row in step_rows:
                row["iteration_id"] = iteration_id
            insert = _insert_sqlite if conn.dialect.name == "sqlite" else _insert_core
            ids = insert(conn, schema.Tensor.__table__, tensor_rows)
            tensor_ids = dict(zip(tensor_names, ids))
            for data, tensor_id in zip(data_rows, ids):
                data["tensor_id"] = tensor_id
            insert(conn, schema.TensorData.__table__, data_rows, ids=False)
            step_ids = insert(conn, schema.Step.__table__, step_rows)
            links = [
                dict(
                    step_id=step_id,
                    tensor_id=tensor_ids[name],
                    direction=direction,
                    position=pos,
                )
                for step, step_id in zip(record.steps, step_ids)
                for direction, step_names in (("in", step.inputs), ("out", step.outputs))
                for pos, name in enumerate(dict.fromkeys(step_names))
            ]
            insert(conn, schema.StepTensor.__table__, links, ids=False)
            conn.execute(
                schema.Run.__table__.update()
                .where(schema.Run.id == self.run_id)
                .values(
                    num_iterations=schema.Run.num_iterations + 1,
                    final_loss=_real(record.loss),
                )
            )

    def finish(self, status: str = RUN_COMPLETED, error: str | None = None) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(
                schema.Run.__table__.update()
                .where(schema.Run.id == self.run_id)
                .values(status=status, finished_at=_utcnow(), error=error)
            )


def _insert_core(conn, table, rows: list[dict], *, ids: bool = True) -> list[int]:
    """executemany through SQLAlchemy Core; the new ids in the rows' order."""
    if not rows:
        return []
    if not ids:
        conn.execute(table.insert(), rows)
        return []
    statement = table.insert().returning(table.c.id, sort_by_parameter_order=True)
    return list(conn.execute(statement, rows).scalars().all())


def _insert_sqlite(conn, table, rows: list[dict], *, ids: bool = True) -> list[int]:
    """executemany straight through sqlite3, inside the connection's transaction.

    The Core path costs about as much as SQLite itself for an iteration's hundreds
    of rows and megabytes of BLOBs. Ids are assigned here: the transaction began
    IMMEDIATE, so it holds the write lock and nobody else can take max(id) + 1.
    JSON columns are serialised as SQLAlchemy would (json.dumps).
    """
    if not rows:
        return []
    columns = list(rows[0])
    json_columns = {c for c in columns if isinstance(table.c[c].type, JSON)}
    new_ids: list[int] = []
    if ids:
        first = conn.exec_driver_sql(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table.name}").scalar()
        new_ids = list(range(first, first + len(rows)))
        columns = ["id", *columns]
    placeholders = ", ".join("?" for _ in columns)
    quoted = ", ".join(f'"{c}"' for c in columns)
    values = []
    for position, row in enumerate(rows):
        line = [new_ids[position]] if ids else []
        for column in columns[1:] if ids else columns:
            value = row[column]
            if column in json_columns and value is not None:
                value = json.dumps(value)
            line.append(value)
        values.append(line)
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.executemany(f"INSERT INTO {table.name} ({quoted}) VALUES ({placeholders})", values)
    finally:
        cursor.close()
    return new_ids


def _real(value) -> float | None:
    """SQLite has no NaN (it would store NULL anyway): say NULL explicitly."""
    value = float(value)
    return None if math.isnan(value) else value


def _nan_if_none(value) -> float:
    return float("nan") if value is None else float(value)


def _layer_line(layer: LayerInfo) -> str:
    shapes = f"{_shape(layer.input_shape)} -> {_shape(layer.output_shape)}"
    return f"{layer.name}: {layer.type} {shapes}, {layer.num_params} params"


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")" if shape is not None else "?"


def _tensor_row(tensor: TensorRecord) -> tuple[dict, dict]:
    """Column values for `tensors` and `tensor_data` (summaries of the full tensor)."""
    array = np.asarray(tensor.array)
    data, dtype = codec.encode(array)
    summary = tensor.summary or codec.summarize(array)
    row = dict(
        name=tensor.name,
        layer=tensor.layer,
        role=tensor.role,
        dtype=dtype,
        shape=[int(d) for d in tensor.shape],
        numel=int(np.prod(tensor.shape, dtype=np.int64)),
        stored_numel=int(array.size),
        **summary,
    )
    # The JSON copy is for reading small tensors whole from the sqlite3 shell; a
    # truncated tensor's prefix would only triple its bytes.
    elements = codec.json_elements(array) if row["stored_numel"] == row["numel"] else None
    return row, dict(data=data, elements=elements)


# ---------------------------------------------------------------- reading


class RunStore:
    """Read access to a store. `readonly=True` (the dashboard) never writes."""

    def __init__(self, location: str | os.PathLike | None = None, *, readonly: bool = True):
        self.location = str(location) if location is not None else default_db()
        self.engine = open_engine(self.location, readonly=readonly)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _session(self) -> Session:
        return Session(self.engine)

    def _has_schema(self) -> bool:
        with self.engine.connect() as connection:
            return "runs" in inspect(connection).get_table_names()

    def list_runs(self) -> list[RunInfo]:
        if not self._has_schema():
            return []
        with self._session() as session:
            rows = session.scalars(select(schema.Run).order_by(schema.Run.id)).all()
            return [_run_info(row) for row in rows]

    def run_page(self, query: RunQuery) -> RunPage:
        """One page of runs, filtered and sorted in SQL (see storage.paging)."""
        if not self._has_schema():
            return RunPage(runs=[], total=0, models=[], statuses=[], any_running=False)
        return paging.run_page(self.engine, query, _run_info)

    def tensor_window(self, run_id: int, index: int, name: str, **window) -> TensorWindow | None:
        """A window of one plane of one tensor, read from its bytes alone (see storage.paging)."""
        if not self._has_schema():
            return None
        return paging.tensor_window(self.engine, run_id, index, name, **window)

    def get_run(self, run_id: int) -> RunInfo | None:
        if not self._has_schema():
            return None
        with self._session() as session:
            row = session.get(schema.Run, run_id, options=[selectinload(schema.Run.layers)])
            return _run_info(row, with_layers=True) if row is not None else None

    def iterations(self, run_id: int) -> list[IterationSummary]:
        if not self._has_schema():
            return []
        verified = func.sum(case((schema.Step.verified.is_(True), 1), else_=0), type_=Integer)
        checked = func.sum(case((schema.Step.verified.is_not(None), 1), else_=0), type_=Integer)
        stmt = (
            select(
                schema.Iteration,
                func.count(schema.Step.id),
                checked,
                verified,
                func.max(schema.Step.max_abs_diff),
            )
            .outerjoin(schema.Step, schema.Step.iteration_id == schema.Iteration.id)
            .where(schema.Iteration.run_id == run_id)
            .group_by(schema.Iteration.id)
            .order_by(schema.Iteration.index)
        )
        with self._session() as session:
            return [
                IterationSummary(
                    index=it.index,
                    loss=_nan_if_none(it.loss),
                    accuracy=it.accuracy,
                    learning_rate=it.learning_rate,
                    created_at=it.created_at,
                    num_steps=int(n or 0),
                    num_checked=int(c or 0),
                    num_verified=int(v or 0),
                    worst_diff=worst,
                )
                for it, n, c, v, worst in session.execute(stmt)
            ]

    def load_iteration(
        self, run_id: int, index: int, *, with_data: bool = True
    ) -> IterationRecord | None:
        if not self._has_schema():
            return None
        options = [
            selectinload(schema.Iteration.steps)
            .selectinload(schema.Step.tensor_links)
            .selectinload(schema.StepTensor.tensor),
        ]
        tensor_load = selectinload(schema.Iteration.tensors)
        if with_data:
            tensor_load = tensor_load.selectinload(schema.Tensor.data)
        options.append(tensor_load)
        stmt = (
            select(schema.Iteration)
            .where(schema.Iteration.run_id == run_id, schema.Iteration.index == index)
            .options(*options)
        )
        with self._session() as session:
            row = session.scalars(stmt).one_or_none()
            if row is None:
                return None
            return IterationRecord(
                index=row.index,
                loss=_nan_if_none(row.loss),
                accuracy=row.accuracy,
                learning_rate=row.learning_rate,
                warnings=list(row.warnings or []),
                created_at=row.created_at,
                tensors=[_tensor_record(t, with_data) for t in row.tensors],
                steps=[_step_record(s) for s in row.steps],
            )

    def load_tensor(self, run_id: int, index: int, name: str) -> TensorRecord | None:
        if not self._has_schema():
            return None
        stmt = (
            select(schema.Tensor)
            .join(schema.Iteration)
            .where(
                schema.Iteration.run_id == run_id,
                schema.Iteration.index == index,
                schema.Tensor.name == name,
            )
            .options(selectinload(schema.Tensor.data))
        )
        with self._session() as session:
            row = session.scalars(stmt).one_or_none()
            return _tensor_record(row, with_data=True) if row is not None else None

    def tensor_history(
        self, run_ids: Iterable[int], *, roles: Iterable[str] | None = None
    ) -> list[dict]:
        """Summary rows (no bytes) of every tensor over iterations: for norm-over-time plots."""
        if not self._has_schema():
            return []
        stmt = (
            select(
                schema.Iteration.run_id,
                schema.Iteration.index,
                schema.Tensor.name,
                schema.Tensor.layer,
                schema.Tensor.role,
                schema.Tensor.l2,
                schema.Tensor.mean,
                schema.Tensor.std,
                schema.Tensor.min,
                schema.Tensor.max,
            )
            .join(schema.Iteration)
            .where(schema.Iteration.run_id.in_(list(run_ids)))
            .order_by(schema.Iteration.run_id, schema.Iteration.index, schema.Tensor.id)
        )
        if roles is not None:
            stmt = stmt.where(schema.Tensor.role.in_(list(roles)))
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(stmt)]

    def integrity_check(self) -> str:
        with self.engine.connect() as connection:
            return connection.execute(text("PRAGMA integrity_check")).scalar()


def open_writer_engine(location: str | os.PathLike | None = None) -> Engine:
    """The engine the tracer writes through; creates and initialises the file if needed."""
    return open_engine(location, readonly=False)


__all__ = [
    "DB_ENV_VAR",
    "DEFAULT_DB",
    "IterationSummary",
    "RunStore",
    "RunWriter",
    "StoreError",
    "default_db",
    "open_engine",
    "open_writer_engine",
]
