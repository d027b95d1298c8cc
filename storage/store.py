"""Open a run store, write traced iterations into it, read them back.

One writer path (`RunWriter`) and one reader (`RunStore`), in the spirit of
datasette: the tracer writes with immediate transactions, one per iteration,
in WAL mode, so several tracing processes can share one file and a killed
trace leaves every committed iteration intact. The dashboard opens the file
read-only.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
import platform
import re
import sqlite3
import stat
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import orjson
from sqlalchemy import (
    JSON,
    URL,
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    case,
    create_engine,
    event,
    func,
    inspect,
    make_url,
    select,
    text,
)
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session, selectinload

from . import codec, names, paging, schema
from .location import DB_ENV_VAR, DEFAULT_DB, StoreError, default_db
from .records import (
    RUN_COMPLETED,
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

BUSY_TIMEOUT_MS = 60_000
# A writer checkpoints the WAL into the database when it passes this many pages
# (4 KiB each: 64 MiB), and when its last connection closes. SQLite's default of
# 1000 pages (4 MB) checkpointed after every LeNet-5 iteration, so each one was
# written and fsync'd twice, once in the WAL and once in the database.
WAL_AUTOCHECKPOINT_PAGES = 16384
SQLITE_MAGIC = b"SQLite format 3\x00"
MODES = ("r", "w")
# A running run whose writer has not committed for this long reads as stale, when
# its liveness cannot be asked directly (another host, another pid namespace).
# The PostgreSQL advisory lock that serialises creating the schema (run leases use
# negative keys, see `lease_key`).
SCHEMA_LOCK = 20261129
# A writer refreshes its run's heartbeat this often, from a thread of its own.
HEARTBEAT_EVERY = 15.0
# A running run whose writer's liveness cannot be asked directly (another host or pid
# namespace, on SQLite) reads as stale when its heartbeat is older than this.
STALE_AFTER = dt.timedelta(minutes=2)
# PostgreSQL's own TCP keepalives on a writer's lease session (these settings are
# per session): a writer whose host or network died loses its lease in about a
# minute instead of the kernel's two hours.
_KEEPALIVES = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 3}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _is_url(location: str) -> bool:
    return "://" in location


@dataclass(frozen=True)
class _Target:
    """Where a location points: a SQLite file (`path`), in-memory SQLite, or a server URL."""

    location: str  # as the user gave it, for messages
    url: URL | None  # None for a plain file path
    path: Path | None  # the SQLite file, when there is one

    @property
    def dialect(self) -> str:
        return "sqlite" if self.url is None else self.url.get_backend_name()


def _target(location: str) -> _Target:
    if not _is_url(location):
        return _Target(location, None, Path(location).expanduser())
    try:
        url = make_url(location)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError and friends
        raise StoreError(f"{location!r} is not a database URL ({_one_line(exc)})") from exc
    if url.get_backend_name() != "sqlite":
        return _Target(location, url, None)
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return _Target(location, url, None)  # in-memory or a SQLite URI: taken as given
    return _Target(location, url, Path(database).expanduser())


def _check_sqlite_path(path: Path, *, create: bool) -> None:
    """Fail early, with one line, on paths that cannot be a store.

    Special files are refused from `stat` alone, before anything opens them:
    opening a FIFO blocks until a writer appears, and a device is never a store.
    """
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        info = None
    except OSError as exc:
        raise StoreError(f"cannot open {path}: {exc.strerror or exc}") from exc
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise StoreError(f"{path} is a directory, not a store file")
        if not stat.S_ISREG(info.st_mode):
            kind = (
                "a FIFO"
                if stat.S_ISFIFO(info.st_mode)
                else "a socket"
                if stat.S_ISSOCK(info.st_mode)
                else "a device"
            )
            raise StoreError(f"{path} is {kind}, not a store file")
        if not os.access(path, os.R_OK):
            raise StoreError(f"{path} is not readable")
        if info.st_size > 0:
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


def _read_only_medium(path: Path) -> bool:
    """Whether SQLite could not create `-wal`/`-shm` beside the file, so it must read it
    as immutable: a read-only filesystem, or a directory we may not write with no WAL
    in use (a shared mount). Immutable readers do not see later writes."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        return False
    wal = path.with_name(path.name + "-wal")
    return not os.access(path.parent, os.W_OK) and not wal.exists()


def _sqlite_uri(path: Path, **params: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"file:{quote(str(path.resolve()))}" + (f"?{query}" if query else "")


_LONG_NUMBER = re.compile(r"[0-9]{19}")


def _json_loads(text):
    """A JSON column's value, read by orjson (several times faster than json.loads: a
    page of 50 runs decodes 100 of them), except where it would read differently:
    what it refuses (NaN, Infinity, which Python's json writes) and numbers of 19 or
    more digits (it reads integers past 64 bits as floats) are read by json.loads."""
    if _LONG_NUMBER.search(text):
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _sqlite_engine(target: _Target, *, readonly: bool, foreign_keys: bool = True) -> Engine:
    """A SQLite engine whose connections come from our own `sqlite3.connect`, so
    that read-only is `mode=ro` (or `immutable=1`) for every way of naming the file."""
    path = target.path
    assert path is not None
    if readonly:
        params = {"mode": "ro"}
        if _read_only_medium(path):
            params["immutable"] = "1"
        uri = _sqlite_uri(path, **params)
    else:
        uri = _sqlite_uri(path)

    def connect():
        return sqlite3.connect(
            uri, uri=True, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )

    engine = create_engine("sqlite://", creator=connect, json_deserializer=_json_loads)
    _configure_sqlite(engine, readonly=readonly, foreign_keys=foreign_keys)
    return engine


def _make_engine(target: _Target, *, readonly: bool, foreign_keys: bool = True) -> Engine:
    if target.path is not None:
        _check_sqlite_path(target.path, create=not readonly)
        return _sqlite_engine(target, readonly=readonly, foreign_keys=foreign_keys)
    if target.dialect == "sqlite":
        engine = create_engine(target.url, json_deserializer=_json_loads)
        _configure_sqlite(engine, readonly=readonly, foreign_keys=foreign_keys)
        return engine
    if target.dialect == "postgresql":
        # Readers get read-only transactions from the server itself: an UPDATE
        # through the dashboard's engine fails however it is issued.
        connect_args = {"options": "-c default_transaction_read_only=on"} if readonly else {}
        return create_engine(target.url, connect_args=connect_args, pool_pre_ping=True)
    raise StoreError(
        f"{target.location}: cnnviz stores live in SQLite or PostgreSQL, not {target.dialect}"
    )


def _configure_sqlite(engine: Engine, *, readonly: bool, foreign_keys: bool = True) -> None:
    # All PRAGMAs in one connect handler (as MLflow does), and transactions that
    # take the write lock up front so that concurrent writers queue on the busy
    # timeout instead of failing with "database is locked" on lock upgrade.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        if readonly:
            cursor.execute("PRAGMA query_only = ON")
        elif _empty_or_store(cursor):  # a foreign file keeps its journal mode
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _empty_or_store(cursor) -> bool:
    if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
        return True
    found = cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'")
    return found.fetchone() is not None


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).splitlines()[0] if str(orig) else type(orig).__name__


_VERSION_TABLE = Table(
    schema.VERSION_TABLE,
    MetaData(),
    Column("version_num", String(32), primary_key=True),  # as Alembic makes it
)


def _create_schema(connection) -> None:
    """The current schema in an empty database, stamped with its Alembic revision."""
    schema.Base.metadata.create_all(connection)
    _VERSION_TABLE.create(connection)
    connection.execute(_VERSION_TABLE.insert(), {"version_num": schema.SCHEMA_REVISION})
    for name, body in schema.views(connection.dialect.name).items():
        connection.exec_driver_sql(f"CREATE VIEW {name} AS {body}")
    connection.execute(
        schema.Meta.__table__.insert(),
        [
            {"key": "schema_version", "value": str(schema.SCHEMA_VERSION)},
            {"key": "created_by", "value": "cnnviz"},
        ],
    )


def _upgrade_hint(location: str) -> str:
    return f"upgrade it with `cnnviz db upgrade --db {location}`"


def stored_version(connection, location: str) -> int:
    """The store's schema version from its `meta` table; one that is missing, not a
    number, or newer than this cnnviz's is a StoreError (a newer cnnviz opens it)."""
    version = connection.execute(
        select(schema.Meta.value).where(schema.Meta.key == "schema_version")
    ).scalar()
    if version is None or not version.isdigit():
        raise StoreError(f"{location} has no valid cnnviz schema version")
    if int(version) > schema.SCHEMA_VERSION:
        raise StoreError(
            f"{location} has store schema version {version}, this cnnviz reads version "
            f"{schema.SCHEMA_VERSION}; upgrade cnnviz to open it"
        )
    return int(version)


def _check_version(connection, location: str, tables: set[str]) -> None:
    """The store's schema must be this cnnviz's: an older one names the command that
    upgrades it (nobody migrates silently), a newer one asks for a newer cnnviz."""
    version = stored_version(connection, location)
    if version < schema.SCHEMA_VERSION:
        raise StoreError(
            f"{location} has store schema version {version}, older than this cnnviz's "
            f"{schema.SCHEMA_VERSION}: {_upgrade_hint(location)}"
        )
    if schema.VERSION_TABLE not in tables:
        raise StoreError(f"{location} is a damaged store: table {schema.VERSION_TABLE} is missing")
    revision = connection.execute(select(_VERSION_TABLE.c.version_num)).scalar()
    if revision == schema.SCHEMA_REVISION:
        return
    if revision in schema.REVISIONS:
        raise StoreError(f"{location} is at store revision {revision}: {_upgrade_hint(location)}")
    raise StoreError(
        f"{location} is at store revision {revision!r}, unknown to this cnnviz; upgrade cnnviz"
    )


def missing_schema_parts(connection) -> list[str]:
    """Every table, column and view the code needs that the database lacks."""
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    missing = []
    for table in schema.Base.metadata.sorted_tables:
        if table.name not in tables:
            missing.append(f"table {table.name}")
            continue
        have = {column["name"] for column in inspector.get_columns(table.name)}
        missing += [f"column {table.name}.{c.name}" for c in table.columns if c.name not in have]
    views = set(inspector.get_view_names())
    missing += [f"view {name}" for name in schema.VIEWS if name not in views]
    return missing


def _check_schema(connection, location: str, *, initialize: bool) -> bool:
    """Create the schema in an empty database, or check an existing one: its version,
    then every table, column and view. False for an empty database left empty."""
    tables = set(inspect(connection).get_table_names())
    if "meta" not in tables:
        if tables:
            raise StoreError(f"{location} is a database but not a cnnviz run store")
        if not initialize:
            return False  # an empty file reads as an empty store
        _create_schema(connection)
        return True
    _check_version(connection, location, tables)
    missing = missing_schema_parts(connection)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise StoreError(f"{location} is a damaged store: {missing[0]} is missing{more}")
    return True


def _probe_without_writing(path: Path, location: str) -> None:
    """Refuse a SQLite file that is not a store before a `mode=ro` connection could
    leave `-wal`/`-shm` beside it. Only when no WAL is in use: the file alone is then
    the whole database, and an immutable connection reads it creating nothing."""
    if not path.exists() or path.stat().st_size == 0:
        return
    if path.with_name(path.name + "-wal").exists():
        return
    try:
        conn = sqlite3.connect(_sqlite_uri(path, mode="ro", immutable="1"), uri=True)
        try:
            names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open {location}: {_one_line(exc)}") from exc
    if names and "meta" not in names:
        raise StoreError(f"{location} is a database but not a cnnviz run store")


def _open(location: str, *, readonly: bool) -> tuple[Engine, bool]:
    """An engine on a checked store, and whether the store has its schema yet."""
    target = _target(location)
    if readonly and target.path is not None:
        _check_sqlite_path(target.path, create=False)
        _probe_without_writing(target.path, location)
    engine = _make_engine(target, readonly=readonly)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql" and not readonly:
                # Two writers opening one empty database would both create the schema.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
            has_schema = _check_schema(connection, location, initialize=not readonly)
    except StoreError:
        engine.dispose()
        raise
    except (DatabaseError, OperationalError, sqlite3.DatabaseError) as exc:
        engine.dispose()
        raise StoreError(f"cannot open {location}: {_one_line(exc)}") from exc
    except Exception as exc:  # a driver missing, a server unreachable: still one line
        engine.dispose()
        raise StoreError(f"cannot open {location}: {_one_line(exc)}") from exc
    return engine, has_schema


def open_engine(location: str | os.PathLike | None = None, *, readonly: bool = False) -> Engine:
    """An engine on a checked store. Raises StoreError with a one-line message."""
    location = str(location) if location is not None else default_db()
    return _open(location, readonly=readonly)[0]


# ---------------------------------------------------------------- liveness


def process_host() -> str:
    """This machine and pid namespace: pids are only comparable within one. Two
    containers may share a host name (host networking) but never a pid namespace."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{platform.node()} {namespace}".strip()[:255]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:  # a zombie has exited: only its exit status is left
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True


def lease_key(run_id: int) -> int:
    """The PostgreSQL advisory lock a run's writer holds on its own session while it
    writes: the run id, negated (positive keys are left to others; the schema's
    creation lock is `SCHEMA_LOCK`)."""
    return -run_id


# Run ids whose lease is held in this database: advisory locks on one bigint key
# are listed with its high half in classid and its low half in objid, objsubid 1.
_HELD_LEASES = text(
    "SELECT -((classid::bigint << 32) | objid::bigint) FROM pg_locks "
    "WHERE locktype = 'advisory' AND objsubid = 1 AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND ((classid::bigint << 32) | objid::bigint) < 0"
)


@dataclass(frozen=True)
class Liveness:
    """What a reader knows to judge `running` runs at one moment: the time (the
    server's clock on PostgreSQL, so writers' and readers' clocks need not agree),
    this process's host, and on PostgreSQL the runs whose writer holds its lease."""

    now: dt.datetime
    host: str
    leases: frozenset[int] | None = None  # None: no leases in this database (SQLite)


def liveness(connection) -> Liveness:
    if connection.dialect.name != "postgresql":
        return Liveness(_utcnow(), process_host())
    now = connection.execute(text("SELECT CAST(now() AT TIME ZONE 'utc' AS timestamp)")).scalar()
    leases = frozenset(connection.execute(_HELD_LEASES).scalars())
    return Liveness(now, process_host(), leases)


def _writer(row) -> str:
    where = f" on {row.writer_host.split(' ')[0]}" if row.writer_host else ""
    return f"pid {row.writer_pid}{where}" if row.writer_pid else f"its writer{where}"


def stale_reason(row, now: dt.datetime | Liveness, host: str | None = None) -> str | None:
    """Why a `running` run's writer is taken for dead, or None while it may be alive.

    On PostgreSQL the writer holds an advisory lock (its lease, `lease_key`) on its own
    session from the moment the run exists: the server drops it when the session
    ends, however the process died, and on any host. Elsewhere: the same host and
    pid namespace asks the pid; otherwise the writer's heartbeat (every
    `HEARTBEAT_EVERY` seconds, from a thread, however long an iteration takes) must
    be younger than `STALE_AFTER`."""
    live = now if isinstance(now, Liveness) else Liveness(now, host or process_host())
    if row.status != RUN_RUNNING:
        return None
    if live.leases is not None:
        if row.id in live.leases:
            return None
        return f"its writer ({_writer(row)}) no longer holds the run's lease"
    if row.writer_pid and row.writer_host == live.host:
        if _pid_alive(row.writer_pid):
            return None
        return f"its writer (pid {row.writer_pid}) has exited"
    last = row.heartbeat_at or row.started_at
    if last is not None and live.now - last > STALE_AFTER:
        return f"no heartbeat from its writer ({_writer(row)}) since {last:%Y-%m-%d %H:%M:%S} UTC"
    return None


class _Heartbeat:
    """Keeps a writer's run visibly alive from a daemon thread, on a connection of
    its own: `heartbeat_at` every `HEARTBEAT_EVERY` seconds, and on PostgreSQL the
    run's lease, an advisory lock held by that connection's session (taken in the
    transaction that inserts the run, so no reader sees the run without it).

    The server drops the lease when the session ends: at once when the process dies,
    and within about a minute when its host or network does (the session's TCP
    keepalives). A connection lost while the writer lives is made again and the lease
    taken back. Stops when told, or when the run is no longer `running`."""

    def __init__(self, engine: Engine, run_id: int, connection=None):
        self.engine = engine
        self.connection = connection
        self.run_id = run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"cnnviz-heartbeat-{run_id}", daemon=True
        )
        self._thread.start()

    @staticmethod
    def prepare(connection) -> None:
        """Session settings for the lease's connection, before the run is inserted."""
        for setting, value in _KEEPALIVES.items():
            connection.exec_driver_sql(f"SET {setting} = {value}")

    def _beat(self) -> bool:
        update = schema.Run.__table__.update().where(
            schema.Run.id == self.run_id, schema.Run.status == RUN_RUNNING
        )
        if self.connection is None:  # SQLite: this thread's own pooled connection
            with self.engine.begin() as connection:
                return connection.execute(update.values(heartbeat_at=_utcnow())).rowcount > 0
        with self.connection.begin():  # the server's clock, as readers compare with it
            now = text("CAST(now() AT TIME ZONE 'utc' AS timestamp)")
            return self.connection.execute(update.values(heartbeat_at=now)).rowcount > 0

    def _reconnect(self) -> None:
        if self.connection is None:
            return
        try:
            self.connection.invalidate()
        except Exception:
            pass
        connection = self.engine.connect()
        try:
            with connection.begin():
                self.prepare(connection)
                taken = connection.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": lease_key(self.run_id)}
                ).scalar()
                if not taken:
                    raise StoreError(f"the lease of run {self.run_id} is held elsewhere")
        except BaseException:
            connection.close()
            raise
        self.connection = connection

    def _run(self) -> None:
        broken = False
        while not self._stop.wait(HEARTBEAT_EVERY):
            try:
                if broken:
                    self._reconnect()
                    broken = False
                if not self._beat():
                    return  # finished, or marked interrupted by someone else
            except Exception:
                broken = True  # the database is away: try again at the next beat

    def stop(self) -> None:
        """Stop beating and give the lease back (closing the session would too)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=HEARTBEAT_EVERY + BUSY_TIMEOUT_MS / 1000)
        if self.connection is None:
            return
        try:
            with self.connection.begin():
                self.connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": lease_key(self.run_id)}
                )
            self.connection.close()
        except Exception:
            try:
                self.connection.invalidate()  # a session that is gone holds nothing
            except Exception:
                pass


# ---------------------------------------------------------------- conversions


def _run_info(
    row: schema.Run,
    with_layers: bool = False,
    *,
    host: str | None = None,
    live: Liveness | None = None,
    layer_rows=None,
) -> RunInfo:
    """A run row (ORM object or table row) as a record; a `running` run whose writer is
    gone reads as `stale` (`live`: the reader's `liveness()`, needed on PostgreSQL to
    see leases). `layer_rows`: the run's layer rows in order, when `row` has none."""
    stale = stale_reason(row, live or Liveness(_utcnow(), host or process_host()))
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
        status=RUN_STALE if stale else row.status,
        started_at=row.started_at,
        finished_at=row.finished_at,
        final_loss=row.final_loss,
        num_iterations=row.num_iterations,
        error=stale if stale else row.error,
        layers=[_layer_info(layer) for layer in (row.layers if layer_rows is None else layer_rows)]
        if with_layers
        else [],
        divergence=row.divergence,
        writer_host=row.writer_host,
        writer_pid=row.writer_pid,
        heartbeat_at=row.heartbeat_at,
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
        self._heartbeat: _Heartbeat | None = None

    @classmethod
    def begin(cls, engine: Engine, info: RunInfo, *, heartbeat: bool = True) -> RunWriter:
        """Insert the run as `running`. With `heartbeat` (the default) a thread keeps
        it visibly alive until `finish` (see `_Heartbeat`): readers on other hosts
        tell a dead writer from a slow one by it."""
        check_lengths(
            schema.Run,
            dict(
                name=info.name,
                model_name=info.model_name,
                optimizer=info.optimizer,
                loss_name=info.loss_name,
                torch_version=info.torch_version,
                cnnviz_version=info.cnnviz_version,
            ),
            "run",
        )
        if info.seed is not None and not 0 <= info.seed < 2**63:
            raise StoreError(f"seed {info.seed} does not fit the store (0 to 2^63 - 1)")
        now = _utcnow()
        values = dict(
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
            started_at=info.started_at or now,
            num_iterations=0,
            writer_host=process_host(),
            writer_pid=os.getpid(),
            heartbeat_at=now,
        )
        insert = schema.Run.__table__.insert().returning(schema.Run.id)
        lease = heartbeat and engine.dialect.name == "postgresql"
        if not lease:
            with engine.begin() as connection:
                run_id = connection.execute(insert, values).scalar_one()
        else:
            # The run row and its lease in one transaction, on the connection that
            # keeps the lease: no reader ever sees the running run without it.
            connection = engine.connect()
            try:
                with connection.begin():
                    _Heartbeat.prepare(connection)
                    run_id = connection.execute(insert, values).scalar_one()
                    connection.execute(
                        text("SELECT pg_advisory_lock(:key)"), {"key": lease_key(run_id)}
                    )
            except BaseException:
                connection.close()
                raise
        info.id = run_id
        writer = cls(engine, run_id)
        if heartbeat:
            writer._heartbeat = _Heartbeat(engine, run_id, connection if lease else None)
        return writer

    def set_layers(self, layers: Sequence[LayerInfo]) -> None:
        """Record the model's layers (known after the first forward pass)."""
        for layer in layers:
            check_lengths(schema.Layer, dict(name=layer.name, type=layer.type), "layer")
        with self.engine.begin() as conn:
            self._write_layers(conn, layers)

    def _write_layers(self, conn, layers: Sequence[LayerInfo]) -> None:
        conn.execute(schema.Layer.__table__.delete().where(schema.Layer.run_id == self.run_id))
        if layers:
            conn.execute(
                schema.Layer.__table__.insert(),
                [
                    dict(
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
                ],
            )
        # The run's description gains the layer list, readable without a join.
        run = schema.Run.__table__
        description = conn.execute(
            select(run.c.model_description).where(run.c.id == self.run_id)
        ).scalar()
        header = (description or "").split("\n")[0]
        conn.execute(
            run.update()
            .where(run.c.id == self.run_id)
            .values(
                model_description="\n".join([header, *(_layer_line(layer) for layer in layers)])
            )
        )

    def add_iteration(self, record: IterationRecord) -> None:
        """Write one iteration in one immediate transaction.

        Core executemany inserts rather than ORM objects: the unit of work costs
        more than SQLite itself for the hundreds of rows an iteration has.
        """
        rows = _iteration_rows(record)
        with self.engine.begin() as conn:
            iteration_id = conn.execute(
                schema.Iteration.__table__.insert().returning(schema.Iteration.id),
                dict(run_id=self.run_id, **rows.iteration),
            ).scalar_one()
            _write_iteration_rows(conn, iteration_id, rows)
            values = dict(
                num_iterations=schema.Run.num_iterations + 1,
                final_loss=_real(record.loss),
                heartbeat_at=_utcnow(),
            )
            divergence = _divergence(record)
            if divergence is not None:  # the first one stays
                values["divergence"] = func.coalesce(schema.Run.divergence, divergence)
            conn.execute(
                schema.Run.__table__.update().where(schema.Run.id == self.run_id).values(**values)
            )

    def replace_iteration(
        self,
        record: IterationRecord,
        *,
        layers: Sequence[LayerInfo] | None = None,
        config: dict | None = None,
    ) -> None:
        """Replace a stored iteration's tensors, steps and raw truth with `record`, in
        one immediate transaction (`cnnviz explain`): the iteration keeps its row, its
        index and when it was traced. `layers`: the run's layers, rewritten in the same
        transaction; `config`: the run's new config."""
        rows = _iteration_rows(record)
        if layers is not None:
            for layer in layers:
                check_lengths(schema.Layer, dict(name=layer.name, type=layer.type), "layer")
        iterations = schema.Iteration.__table__
        with self.engine.begin() as conn:
            iteration_id = conn.execute(
                select(iterations.c.id).where(
                    iterations.c.run_id == self.run_id, iterations.c.index == record.index
                )
            ).scalar()
            if iteration_id is None:
                raise StoreError(f"run {self.run_id} has no iteration {record.index}")
            _delete_iteration_rows(conn, iteration_id)
            rows.iteration.pop("created_at")
            conn.execute(
                iterations.update().where(iterations.c.id == iteration_id).values(**rows.iteration)
            )
            _write_iteration_rows(conn, iteration_id, rows)
            if layers is not None:
                self._write_layers(conn, layers)
            if config is not None:
                conn.execute(
                    schema.Run.__table__.update()
                    .where(schema.Run.id == self.run_id)
                    .values(config=config)
                )

    def finish(self, status: str = RUN_COMPLETED, error: str | None = None) -> None:
        """Write the run's final status, then stop the heartbeat and give the lease back."""
        try:
            with Session(self.engine) as session, session.begin():
                session.execute(
                    schema.Run.__table__.update()
                    .where(schema.Run.id == self.run_id)
                    .values(
                        status=status, finished_at=_utcnow(), error=error, heartbeat_at=_utcnow()
                    )
                )
        finally:
            self.close()

    def close(self) -> None:
        """Stop the heartbeat and release the lease without writing a status (`finish`
        does both); the run then reads as stale once its writer is gone."""
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.stop()


@dataclass
class _IterationRows:
    """The rows of one iteration, made before its transaction opens."""

    iteration: dict
    tensor_names: list[str]
    tensors: list[dict]
    data: list[dict]
    steps: list[dict]
    step_names: list[tuple[list[str], list[str]]]  # (inputs, outputs) of each step
    capture: dict | None
    capture_arrays: list[dict]


def _iteration_rows(record: IterationRecord) -> _IterationRows:
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
    capture, capture_arrays = None, []
    if record.capture is not None:
        # allow_nan=False: the manifest says inf and NaN its own way (JSON has neither).
        capture = dict(manifest=json.dumps(record.capture.manifest, allow_nan=False))
        for key, array in record.capture.arrays.items():
            data, dtype = codec.encode_buffer(np.asarray(array))
            capture_arrays.append(
                dict(key=key, dtype=dtype, shape=[int(d) for d in np.shape(array)], data=data)
            )
    return _IterationRows(
        iteration=dict(
            index=record.index,
            loss=_real(record.loss),
            accuracy=record.accuracy,
            learning_rate=record.learning_rate,
            warnings=list(record.warnings),
            created_at=record.created_at or _utcnow(),
        ),
        tensor_names=tensor_names,
        tensors=tensor_rows,
        data=data_rows,
        steps=step_rows,
        step_names=[(step.inputs, step.outputs) for step in record.steps],
        capture=capture,
        capture_arrays=capture_arrays,
    )


def _write_iteration_rows(conn, iteration_id: int, rows: _IterationRows) -> None:
    for row in rows.tensors:
        row["iteration_id"] = iteration_id
    for row in rows.steps:
        row["iteration_id"] = iteration_id
    insert = _insert_sqlite if conn.dialect.name == "sqlite" else _insert_core
    ids = insert(conn, schema.Tensor.__table__, rows.tensors)
    tensor_ids = dict(zip(rows.tensor_names, ids))
    for data, tensor_id in zip(rows.data, ids):
        data["tensor_id"] = tensor_id
    insert(conn, schema.TensorData.__table__, rows.data, ids=False)
    step_ids = insert(conn, schema.Step.__table__, rows.steps)
    links = [
        dict(step_id=step_id, tensor_id=tensor_ids[name], direction=direction, position=pos)
        for (inputs, outputs), step_id in zip(rows.step_names, step_ids)
        for direction, step_names in (("in", inputs), ("out", outputs))
        for pos, name in enumerate(dict.fromkeys(step_names))
    ]
    insert(conn, schema.StepTensor.__table__, links, ids=False)
    if rows.capture is not None:
        conn.execute(
            schema.Capture.__table__.insert(), dict(iteration_id=iteration_id, **rows.capture)
        )
        for row in rows.capture_arrays:
            row["iteration_id"] = iteration_id
        insert(conn, schema.CaptureArray.__table__, rows.capture_arrays, ids=False)


def _delete_iteration_rows(conn, iteration_id: int) -> None:
    """Everything of an iteration but its own row: links, steps, bytes, tensors, capture."""
    steps = select(schema.Step.id).where(schema.Step.iteration_id == iteration_id)
    tensors = select(schema.Tensor.id).where(schema.Tensor.iteration_id == iteration_id)
    conn.execute(schema.StepTensor.__table__.delete().where(schema.StepTensor.step_id.in_(steps)))
    conn.execute(schema.Step.__table__.delete().where(schema.Step.iteration_id == iteration_id))
    conn.execute(
        schema.TensorData.__table__.delete().where(schema.TensorData.tensor_id.in_(tensors))
    )
    conn.execute(schema.Tensor.__table__.delete().where(schema.Tensor.iteration_id == iteration_id))
    for table in (schema.Capture, schema.CaptureArray):
        conn.execute(table.__table__.delete().where(table.iteration_id == iteration_id))


def _storable_id(*ids: int) -> bool:
    """Ids and indexes are 64-bit signed in every database: anything beyond names
    nothing (and would overflow the driver), so readers answer "not found"."""
    return all(isinstance(i, int) and -(2**63) <= i < 2**63 for i in ids)


def check_lengths(table, values: dict, what: str) -> None:
    """Text longer than its column holds is refused (SQLite would keep it whole,
    PostgreSQL would fail mid-transaction): one line naming the field and the limit."""
    for key, value in values.items():
        limit = getattr(table.__table__.c[key].type, "length", None)
        if limit and isinstance(value, str) and len(value) > limit:
            raise StoreError(
                f"{what} {key} is {len(value)} characters long; the store holds at most {limit}"
            )


def _divergence(record: IterationRecord) -> str | None:
    loss = float(record.loss)
    if math.isfinite(loss):
        return None
    kind = "NaN" if math.isnan(loss) else ("inf" if loss > 0 else "-inf")
    return f"{kind} at iteration {record.index}"


def _insert_core(conn, table, rows: list[dict], *, ids: bool = True) -> list[int]:
    """executemany through SQLAlchemy Core; the new ids in the rows' order."""
    if not rows:
        return []
    rows = [  # the byte views of `codec.encode_buffer` as bytes, for every driver
        {k: bytes(v) if isinstance(v, memoryview) else v for k, v in row.items()} for row in rows
    ]
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
    data, dtype = codec.encode_buffer(array)  # the bytes are read once, by the insert
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


class Store:
    """One store behind one facade: SQLite or PostgreSQL, opened for reading or writing.

        with Store.open("runs.db") as store:             # mode="r": never writes
            runs = store.list_runs()
        with Store.open("postgresql+psycopg://host/db", mode="w") as store:
            writer = store.begin_run(RunInfo(name="mine"))

    Opening checks the store once: a special file is refused before it is opened,
    the schema version must be this cnnviz's, and every table, column and view the
    code needs must be there; anything else is a `StoreError` with one line and
    nothing is written. Readers are read-only in the database itself: SQLite
    `mode=ro` (`immutable=1` on read-only media), PostgreSQL read-only transactions.
    A writer creates the schema in an empty database. Callers get records, never
    sessions. `RunStore(location, readonly=True)` is the same class.
    """

    def __init__(self, location: str | os.PathLike | None = None, *, readonly: bool = True):
        self.location = str(location) if location is not None else default_db()
        self.readonly = readonly
        self.engine, self._schema_present = _open(self.location, readonly=readonly)

    @classmethod
    def open(cls, location: str | os.PathLike | None = None, mode: str = "r") -> Store:
        if mode not in MODES:
            raise ValueError(f"mode must be 'r' or 'w', not {mode!r}")
        return cls(location, readonly=mode == "r")

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def begin_run(self, info: RunInfo) -> RunWriter:
        """Start writing a run (mode "w" only); see `RunWriter`."""
        if self.readonly:
            raise StoreError(f"{self.location} is open read-only")
        return RunWriter.begin(self.engine, info)

    def _session(self) -> Session:
        return Session(self.engine)

    def _live(self) -> Liveness:
        if self.dialect != "postgresql":
            return Liveness(_utcnow(), process_host())
        with self.engine.connect() as connection:
            return liveness(connection)

    def _has_schema(self) -> bool:
        # Checked once at open: an empty SQLite file reads as an empty store.
        return self._schema_present

    def list_runs(self) -> list[RunInfo]:
        if not self._has_schema():
            return []
        with self._session() as session:
            live = liveness(session.connection())
            rows = session.scalars(select(schema.Run).order_by(schema.Run.id)).all()
            return [_run_info(row, live=live) for row in rows]

    def run_page(self, query: RunQuery) -> RunPage:
        """One page of runs, filtered and sorted in SQL (see storage.paging)."""
        if not self._has_schema():
            return RunPage(runs=[], total=0, models=[], statuses=[], any_running=False)
        return paging.run_page(self.engine, query, functools.partial(_run_info, live=self._live()))

    def tensor_window(self, run_id: int, index: int, name: str, **window) -> TensorWindow | None:
        """A window of one plane of one tensor, read from its bytes alone (see storage.paging)."""
        if not self._has_schema() or not _storable_id(run_id, index):
            return None
        return paging.tensor_window(self.engine, run_id, index, name, **window)

    def find_runs(self, query: RunQuery) -> list[RunInfo]:
        """One page of runs without the counts around it: a run picker's options
        (`RunQuery.text` searches name, model, id and seed; see storage.paging)."""
        if not self._has_schema():
            return []
        return paging.find_runs(self.engine, query, _run_info)

    def recent_runs(self, limit: int) -> list:
        """(id, name, seed) rows of the `limit` most recent runs, newest first (a run
        picker's labels), read without the rest of each run."""
        if not self._has_schema():
            return []
        return paging.recent_runs(self.engine, limit)

    def iteration_indices(self, run_id: int) -> list[int]:
        """The indices of a run's stored iterations, in order."""
        if not self._has_schema() or not _storable_id(run_id):
            return []
        return paging.iteration_indices(self.engine, run_id)

    def tensor_records(self, run_id: int, index: int) -> list[TensorRecord] | None:
        """Every tensor of one iteration, without bytes or steps (names, shapes, summaries);
        None when the run stores no such iteration."""
        if not self._has_schema() or not _storable_id(run_id, index):
            return None
        return paging.tensor_records(self.engine, run_id, index)

    def summary_history(
        self, run_ids: Iterable[int], roles: Iterable[str], column: str = "l2"
    ) -> list[tuple[int, int, str, str, float | None]]:
        """(run, iteration, tensor, role, summary) rows in one query, for charts over
        iterations (see storage.paging.summary_history)."""
        ids = [i for i in run_ids if _storable_id(i)]
        if not self._has_schema() or not ids:
            return []
        return paging.summary_history(self.engine, ids, list(roles), column)

    def loss_history(self, run_ids: Iterable[int]) -> list[tuple[int, int, float | None]]:
        """(run, iteration, loss) of these runs in run and iteration order."""
        ids = [i for i in run_ids if _storable_id(i)]
        if not self._has_schema() or not ids:
            return []
        return paging.loss_history(self.engine, ids)

    def get_run(self, run_id: int) -> RunInfo | None:
        if not self._has_schema() or not _storable_id(run_id):
            return None
        # Table rows, not ORM objects: every page asks for its run (a third of the cost).
        run_row = select(schema.Run.__table__).where(schema.Run.id == run_id)
        layer_rows = (
            select(schema.Layer.__table__)
            .where(schema.Layer.run_id == run_id)
            .order_by(schema.Layer.position)
        )
        with self._session() as session:
            row = session.execute(run_row).one_or_none()
            if row is None:
                return None
            layers = session.execute(layer_rows).all()
            live = liveness(session.connection()) if row.status == RUN_RUNNING else None
            return _run_info(row, with_layers=True, live=live, layer_rows=layers)

    def iterations(self, run_id: int) -> list[IterationSummary]:
        if not self._has_schema() or not _storable_id(run_id):
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
        if not self._has_schema() or not _storable_id(run_id, index):
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
                unexplained=session.get(schema.Capture, row.id) is not None,
            )

    def load_tensor(self, run_id: int, index: int, name: str) -> TensorRecord | None:
        if not self._has_schema() or not _storable_id(run_id, index):
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

    def captured_indexes(self, run_id: int) -> list[int]:
        """The indexes of a run's iterations that keep their raw truth to be explained
        later (traced with explanation off, not explained yet), in order."""
        if not self._has_schema() or not _storable_id(run_id):
            return []
        stmt = (
            select(schema.Iteration.index)
            .join(schema.Capture, schema.Capture.iteration_id == schema.Iteration.id)
            .where(schema.Iteration.run_id == run_id)
            .order_by(schema.Iteration.index)
        )
        with self.engine.connect() as connection:
            return list(connection.execute(stmt).scalars())

    def load_capture(self, run_id: int, index: int) -> tuple[dict, dict, dict] | None:
        """(manifest, arrays by key, the iteration's tensors stored whole by name) of an
        iteration traced with explanation off, or None when it keeps no raw truth."""
        if not self._has_schema() or not _storable_id(run_id, index):
            return None
        iterations = schema.Iteration.__table__
        with self.engine.connect() as connection:
            iteration_id = connection.execute(
                select(iterations.c.id).where(
                    iterations.c.run_id == run_id, iterations.c.index == index
                )
            ).scalar()
            manifest = connection.execute(
                select(schema.Capture.manifest).where(schema.Capture.iteration_id == iteration_id)
            ).scalar()
            if iteration_id is None or manifest is None:
                return None
            arrays = {
                key: codec.decode(data, dtype, tuple(shape))
                for key, dtype, shape, data in connection.execute(
                    select(
                        schema.CaptureArray.key,
                        schema.CaptureArray.dtype,
                        schema.CaptureArray.shape,
                        schema.CaptureArray.data,
                    ).where(schema.CaptureArray.iteration_id == iteration_id)
                )
            }
            tensors = {
                name: codec.decode(data, dtype, tuple(shape))
                for name, dtype, shape, data in connection.execute(
                    select(
                        schema.Tensor.name,
                        schema.Tensor.dtype,
                        schema.Tensor.shape,
                        schema.TensorData.data,
                    )
                    .join(schema.TensorData, schema.TensorData.tensor_id == schema.Tensor.id)
                    .where(
                        schema.Tensor.iteration_id == iteration_id,
                        schema.Tensor.stored_numel == schema.Tensor.numel,
                    )
                )
            }
        return json.loads(manifest), arrays, tensors

    def writer(self, run_id: int) -> RunWriter:
        """A writer of an existing run (mode "w"): `cnnviz explain` replaces its iterations."""
        if self.readonly:
            raise StoreError(f"{self.location} is open read-only")
        return RunWriter(self.engine, run_id)

    def prune_stale(self) -> list[tuple[int, str]]:
        """Mark every stale run `interrupted` (mode "w"); returns (run id, reason) of each."""
        if self.readonly:
            raise StoreError(f"{self.location} is open read-only")
        if not self._has_schema():
            return []
        pruned = []
        with Session(self.engine) as session, session.begin():
            live = liveness(session.connection())
            rows = session.scalars(select(schema.Run).where(schema.Run.status == RUN_RUNNING))
            for row in rows:
                reason = stale_reason(row, live)
                if reason is not None:
                    row.status, row.finished_at = RUN_INTERRUPTED, live.now
                    row.error = f"stale: {reason}"
                    pruned.append((row.id, reason))
        return pruned

    def integrity_check(self) -> str:
        """SQLite's integrity_check; on a server, the schema check (the server keeps its
        own pages whole)."""
        with self.engine.connect() as connection:
            if self.dialect == "sqlite":
                return connection.execute(text("PRAGMA integrity_check")).scalar()
            missing = missing_schema_parts(connection)
            return "ok" if not missing else "missing: " + ", ".join(missing)


RunStore = Store  # the name every caller used before the facade


def open_writer_engine(location: str | os.PathLike | None = None) -> Engine:
    """The engine the tracer writes through; creates and initialises the file if needed."""
    return open_engine(location, readonly=False)


__all__ = [
    "DB_ENV_VAR",
    "DEFAULT_DB",
    "IterationSummary",
    "RunStore",
    "RunWriter",
    "Store",
    "StoreError",
    "default_db",
    "open_engine",
    "open_writer_engine",
]
