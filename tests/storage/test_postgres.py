"""The store on a real PostgreSQL server (started by the suite, see tests/pg_server.py):
the same tables and views, BYTEA tensors, read-only readers, the documented queries,
concurrent writers and a killed writer."""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select, text

from storage import RunInfo, RunQuery, Store, StoreError, TensorRecord, schema
from storage.records import IterationRecord

DOC = (Path(__file__).resolve().parents[2] / "docs" / "schema.md").read_text()
QUERIES = re.findall(r"```sql\n(.*?)```", DOC, flags=re.S)
TRACE = [sys.executable, "-m", "tracer.cli", "trace"]


def _title(query: str) -> str:
    return re.findall(r"^### (.+)$", DOC[: DOC.index(query)], flags=re.M)[-1]


@pytest.fixture(scope="module")
def pg_seed_store(postgres_server, seed_store):
    """The seed CNN traced with seeds 0 and 1 into PostgreSQL, as `seed_store` is in SQLite."""
    from tracer.train import run_builtin

    url = postgres_server.create_database()
    for seed in (0, 1):
        run_builtin(seed=seed, db=url, strict=True)
    yield url
    postgres_server.drop_database(url)


def _column_types(url: str) -> dict[tuple[str, str], str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public'"
                )
            )
            return {(t, c): d for t, c, d in rows}
    finally:
        engine.dispose()


def test_round_trip_with_bytea_and_64_bit_seeds(pg_url):
    array = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    with Store.open(pg_url, mode="w") as store:
        assert store.dialect == "postgresql"
        writer = store.begin_run(RunInfo(name="pg", seed=2**32 - 1))
        writer.add_iteration(
            IterationRecord(
                index=1, loss=0.25, tensors=[TensorRecord("w", "param", array)], steps=[]
            )
        )
        writer.finish()
    types = _column_types(pg_url)
    assert types[("tensor_data", "data")] == "bytea"
    assert types[("runs", "seed")] == "bigint"
    with Store.open(pg_url) as store:
        (run,) = store.list_runs()
        assert (run.name, run.seed, run.status) == ("pg", 2**32 - 1, "completed")
        np.testing.assert_array_equal(store.load_tensor(run.id, 1, "w").array, array)
        assert store.load_tensor(2**64, 1, "w") is None
        assert store.integrity_check() == "ok"


def test_a_page_of_runs_lists_statuses_models_and_counts(pg_url):
    """run_page's skip scan of the status index and its counts, on PostgreSQL."""
    with Store.open(pg_url, mode="w") as store:
        for name, model, status in [
            ("a", "seed-cnn", "completed"),
            ("b", "lenet5", "failed"),
            ("c", "seed-cnn", "interrupted"),
            ("d", "seed-cnn", "completed"),
        ]:
            store.begin_run(RunInfo(name=name, model_name=model)).finish(status)
    with Store.open(pg_url) as store:
        page = store.run_page(RunQuery(limit=2, sort="name", descending=True))
        assert [r.name for r in page.runs] == ["d", "c"] and page.total == 4
        assert page.statuses == ["completed", "failed", "interrupted"]
        assert page.models == ["lenet5", "seed-cnn"]
        narrowed = store.run_page(RunQuery(model="lenet5"))
        assert [r.name for r in narrowed.runs] == ["b"] and narrowed.total == 1
        assert narrowed.models == ["lenet5", "seed-cnn"]


def test_readers_get_read_only_transactions(pg_url):
    with Store.open(pg_url, mode="w") as store:
        store.begin_run(RunInfo(name="keep")).finish()
    with Store.open(pg_url) as store:
        with pytest.raises(Exception, match="read-only transaction"):
            with store.engine.begin() as conn:
                conn.exec_driver_sql("UPDATE runs SET name = 'changed'")
        assert store.list_runs()[0].name == "keep"


def test_an_empty_database_is_not_created_by_a_reader(pg_url):
    with Store.open(pg_url) as store:
        assert store.list_runs() == []
    assert _column_types(pg_url) == {}


def test_a_damaged_or_old_store_is_refused_in_one_line(pg_url):
    with Store.open(pg_url, mode="w") as store:
        store.begin_run(RunInfo(name="keep")).finish()
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP VIEW tensor_elements")
    for mode in ("r", "w"):
        with pytest.raises(StoreError, match="damaged store: view tensor_elements is missing"):
            Store.open(pg_url, mode=mode)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE VIEW tensor_elements AS {schema.views('postgresql')['tensor_elements']}"
        )
        conn.exec_driver_sql(f"UPDATE {schema.VERSION_TABLE} SET version_num = '0001'")
    engine.dispose()
    for mode in ("r", "w"):
        with pytest.raises(StoreError, match="upgrade it with `cnnviz db upgrade --db postgres"):
            Store.open(pg_url, mode=mode)


def test_db_upgrade_creates_the_schema_in_an_empty_database(pg_url, cli_env):
    result = subprocess.run(
        [sys.executable, "-m", "tracer.cli", "db", "upgrade", "--db", pg_url],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "created the store schema" in result.stdout
    with Store.open(pg_url) as store:
        assert store.list_runs() == []


@pytest.mark.parametrize("query", QUERIES, ids=[_title(q) for q in QUERIES])
def test_documented_queries_give_the_same_rows_on_both(pg_seed_store, seed_store, query):
    lite = sqlite3.connect(f"file:{seed_store}?mode=ro", uri=True)
    expected = lite.execute(query).fetchall()
    lite.close()
    engine = create_engine(pg_seed_store)
    raw = engine.raw_connection()  # as psql would send it: no parameters, so '%' is modulo
    try:
        cursor = raw.cursor()
        cursor.execute(query)
        got = [tuple(row) for row in cursor.fetchall()]
    finally:
        raw.close()
        engine.dispose()
    assert len(got) == len(expected), _title(query)
    if "LIMIT" in query:
        # Ties in the sort key may come in either order: compare the numbers only.
        got, expected = [_numbers(r) for r in got], [_numbers(r) for r in expected]
    else:
        got, expected = sorted(map(_normal, got)), sorted(map(_normal, expected))
    assert got == expected, _title(query)


def _numbers(row) -> tuple:
    return tuple(_normal_value(v) for v in row if isinstance(v, float))


def _normal(row) -> tuple:
    return tuple(_normal_value(v) for v in row)


def _normal_value(value):
    """SQLite and PostgreSQL return the same facts typed differently: booleans as
    0/1 or bool, JSON as text or lists, timestamps as text or datetimes."""
    import datetime as dt
    import json

    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, str) and value[:1] in "[{":
        return json.dumps(json.loads(value), separators=(",", ":"))
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return value


def test_concurrent_writers_on_postgres(pg_url, cli_env):
    procs = [
        subprocess.Popen(
            [*TRACE, "--db", pg_url, "--seed", str(seed), "--epochs", "8", "--samples", "2"],
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(3)
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    with Store.open(pg_url) as store:
        runs = store.list_runs()
        assert sorted(r.seed for r in runs) == [0, 1, 2]
        for run in runs:
            assert run.status == "completed"
            assert [s.index for s in store.iterations(run.id)] == list(range(1, 9))


def test_a_killed_writer_on_another_host_is_told_from_a_slow_one(pg_url, cli_env):
    """The writer's lease (an advisory lock on its session) answers for it on any host:
    alive however old its heartbeat looks, stale as soon as its process is gone."""
    proc = subprocess.Popen(
        [*TRACE, "--db", pg_url, "--epochs", "100000", "--seed", "3"],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    engine = create_engine(pg_url)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                with engine.connect() as conn:
                    if conn.exec_driver_sql("SELECT count(*) FROM iterations").scalar() >= 4:
                        break
            except Exception:
                pass  # the schema is not there yet
            time.sleep(0.1)
        # As a dashboard elsewhere sees it: another host, and no write for an hour.
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE runs SET writer_host = 'elsewhere', heartbeat_at = now() - interval '1 hour'"
            )
        with Store.open(pg_url) as store:
            (run,) = store.list_runs()
            assert run.status == "running", run.error
            assert store.run_page(RunQuery()).any_running
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        engine.dispose()
    with Store.open(pg_url) as store:
        deadline = time.monotonic() + 10  # the server ends the dead session at once
        while (run := store.list_runs()[0]).status == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run.status == "stale"
        assert (
            run.error == f"its writer (pid {proc.pid} on elsewhere) no longer holds the run's lease"
        )
        assert not store.run_page(RunQuery()).any_running
        summaries = store.iterations(run.id)
        assert run.num_iterations == len(summaries) >= 4
        for summary in summaries:
            assert (summary.num_steps, summary.num_verified) == (23, 23)
    pruned = subprocess.run(
        [sys.executable, "-m", "tracer.cli", "runs", "--prune-stale", "--db", pg_url],
        env=cli_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith(f"run {run.id}: marked interrupted (its writer (pid {proc.pid}")
    with Store.open(pg_url) as store:
        assert store.list_runs()[0].status == "interrupted"


def test_a_live_writer_holds_its_lease_and_beats_until_it_finishes(pg_url, monkeypatch):
    from storage import store as store_module

    monkeypatch.setattr(store_module, "HEARTBEAT_EVERY", 0.05)
    with Store.open(pg_url, mode="w") as store:
        writer = store.begin_run(RunInfo(name="slow"))
        engine = create_engine(pg_url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("UPDATE runs SET heartbeat_at = '2000-01-01'")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the thread beats with the server's clock
                with engine.connect() as conn:
                    beat = conn.exec_driver_sql(
                        "SELECT now() AT TIME ZONE 'utc' - heartbeat_at < interval '1 minute' "
                        "FROM runs"
                    ).scalar()
                if beat:
                    break
                time.sleep(0.05)
            assert beat
            with engine.connect() as conn:
                held = (
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
                assert conn.exec_driver_sql(held).scalar() == 1
                writer.finish()
                assert conn.exec_driver_sql(held).scalar() == 0
        finally:
            engine.dispose()
    with Store.open(pg_url) as store:
        assert store.list_runs()[0].status == "completed"


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store-v1.db"
WIDE = {
    ("runs", "id"), ("layers", "id"), ("layers", "run_id"), ("layers", "num_params"),
    ("iterations", "id"), ("iterations", "run_id"), ("tensors", "id"),
    ("tensors", "iteration_id"), ("tensors", "numel"), ("tensors", "stored_numel"),
    ("tensors", "nan_count"), ("tensors", "inf_count"), ("tensor_data", "tensor_id"),
    ("steps", "id"), ("steps", "iteration_id"), ("step_tensors", "step_id"),
    ("step_tensors", "tensor_id"),
}  # fmt: skip
SERIAL_TABLES = ("runs", "layers", "iterations", "tensors", "steps")


def _rows(engine) -> dict[str, list]:
    """Every table's rows as Python values (JSON parsed, booleans as bool), by key."""
    with engine.connect() as conn:
        return {
            table.name: [
                tuple(row)
                for row in conn.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for table in schema.Base.metadata.sorted_tables
            if table.name != "meta"
        }


def _sequence_types(conn) -> dict[str, str]:
    rows = conn.execute(text("SELECT sequencename, data_type::text FROM pg_sequences"))
    return dict(rows.all())


def test_db_upgrade_widens_keys_to_64_bits_with_every_row_kept(pg_url, tmp_path, cli_env):
    """The v1 fixture, upgraded and copied into PostgreSQL with its ids, taken back to
    revision 0002 (32-bit keys, as 0002 stores are), then upgraded by the command."""
    from alembic import command

    from storage.migrate import alembic_config, upgrade

    copy = tmp_path / "v1.db"
    shutil.copy(FIXTURE, copy)
    upgrade(copy)
    source = create_engine(f"sqlite:///{copy}")
    expected = _rows(source)
    source.dispose()
    Store.open(pg_url, mode="w").close()  # the schema, empty
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            for table in schema.Base.metadata.sorted_tables:
                rows = [dict(zip(table.columns.keys(), r)) for r in expected.get(table.name, [])]
                if table.name != "meta" and rows:  # (an empty list inserts one default row)
                    conn.execute(table.insert(), rows)
            for table in SERIAL_TABLES:
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
                    )
                )
            command.downgrade(alembic_config(conn), "0002")
        old_types = _column_types(pg_url)
        assert {old_types[key] for key in WIDE} == {"integer"}
        with engine.connect() as conn:
            assert set(_sequence_types(conn).values()) == {"integer"}
        result = subprocess.run(
            [sys.executable, "-m", "tracer.cli", "db", "upgrade", "--db", pg_url],
            env=cli_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (
            f"upgraded {pg_url} from store schema version 2 to {schema.SCHEMA_VERSION}; "
            "kept 2 runs, 6 iterations, 318 tensors"
        )
        new_types = _column_types(pg_url)
        assert {new_types[key] for key in WIDE} == {"bigint"}
        with engine.connect() as conn:
            assert set(_sequence_types(conn).values()) == {"bigint"}
        assert _rows(engine) == expected
        # Ids past 2^31 are written and read back.
        with engine.begin() as conn:
            for table in SERIAL_TABLES:
                conn.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {2**31 + 7})")
                )
    finally:
        engine.dispose()
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    with Store.open(pg_url, mode="w") as store:
        writer = store.begin_run(RunInfo(name="wide"))
        writer.add_iteration(
            IterationRecord(
                index=1, loss=0.5, tensors=[TensorRecord("w", "param", array)], steps=[]
            )
        )
        writer.finish()
    with Store.open(pg_url) as store:
        run = store.list_runs()[-1]
        assert run.id == 2**31 + 8
        tensor = store.load_tensor(run.id, 1, "w")
        assert tensor.id == 2**31 + 8
        np.testing.assert_array_equal(tensor.array, array)
        assert store.integrity_check() == "ok"
