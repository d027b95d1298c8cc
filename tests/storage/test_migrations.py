"""Migrations: the committed version-1 store (tests/fixtures/store-v1.db) is refused
by readers and writers with one line naming `cnnviz db upgrade`, and that command
upgrades a copy with every row and byte kept."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storage import SCHEMA_VERSION, Store, StoreError, codec, schema

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store-v1.db"
CNNVIZ = [sys.executable, "-m", "tracer.cli"]


def _cnnviz(args, env):
    return subprocess.run(
        [*CNNVIZ, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _old_contents(path: Path) -> dict:
    """Every v1 table's rows, read with the sqlite3 module (no cnnviz code)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in (
                "runs",
                "layers",
                "iterations",
                "tensors",
                "tensor_data",
                "steps",
                "step_tensors",
            )
        }
    finally:
        conn.close()


@pytest.fixture
def old_store(tmp_path) -> Path:
    copy = tmp_path / "old.db"
    shutil.copy(FIXTURE, copy)
    return copy


def test_the_shipped_revisions_are_the_ones_the_code_knows():
    from alembic.script import ScriptDirectory

    from storage.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config(None))
    chain = [rev.revision for rev in script.walk_revisions()][::-1]
    assert tuple(chain) == schema.REVISIONS and script.get_current_head() == schema.SCHEMA_REVISION


def test_readers_and_writers_refuse_an_old_store_naming_the_command(old_store, cli_env):
    before = _digest(old_store)
    for mode in ("r", "w"):
        with pytest.raises(StoreError) as info:
            Store.open(old_store, mode=mode)
        assert str(info.value).endswith(f"upgrade it with `cnnviz db upgrade --db {old_store}`")
    for args in (["runs"], ["trace", "--iterations", "1"], ["serve", "--port", "8932"]):
        result = _cnnviz([*args, "--db", str(old_store)], cli_env)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert "cnnviz db upgrade" in line
    assert _digest(old_store) == before  # nobody migrated silently


def test_db_upgrade_keeps_every_row_and_byte(old_store, cli_env):
    old = _old_contents(old_store)
    result = _cnnviz(["db", "upgrade", "--db", str(old_store)], cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"upgraded {old_store} from store schema version 1 to {SCHEMA_VERSION}; "
        "kept 2 runs, 6 iterations, 318 tensors"
    )
    conn = sqlite3.connect(old_store)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute(f"SELECT version_num FROM {schema.VERSION_TABLE}").fetchall() == [
            (schema.SCHEMA_REVISION,)
        ]
        assert "alembic_version" not in {
            n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        for table, rows in old.items():
            columns = len(rows[0]) if rows else 0
            new = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            assert [row[:columns] for row in new] == rows, table  # new columns come last
        backfill = conn.execute(
            "SELECT writer_host, writer_pid, heartbeat_at IS NOT NULL, divergence FROM runs"
        ).fetchall()
    finally:
        conn.close()
    assert [(h is not None, p is not None, beat, d) for h, p, beat, d in backfill] == [
        (True, True, 1, None)
    ] * 2
    with Store.open(old_store) as store:
        assert [r.name for r in store.list_runs()] == ["seed-cnn-seed0", "seed-cnn-adam"]
        record = store.load_iteration(1, 2)
        (row,) = [r for r in old["tensors"] if r[0] == record.tensor("conv.weight").id]
        data = dict((r[0], r[1]) for r in old["tensor_data"])[row[0]]
        np.testing.assert_array_equal(
            record.tensor("conv.weight").array.ravel(), codec.decode(data, row[5], None)
        )
    again = _cnnviz(["db", "upgrade", "--db", str(old_store)], cli_env)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_upgrade_backfills_divergence(old_store):
    from storage.migrate import upgrade

    with sqlite3.connect(old_store) as conn:
        conn.execute('UPDATE iterations SET loss = NULL WHERE run_id = 2 AND "index" >= 2')
    conn.close()
    upgrade(old_store)
    with Store.open(old_store) as store:
        first, second = store.list_runs()
    assert first.divergence is None and first.status_text == "completed"
    assert second.status_text == "diverged (NaN at iteration 2)"


def test_db_upgrade_refuses_what_it_cannot_upgrade(tmp_path, cli_env):
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    missing = tmp_path / "missing.db"
    for location, message in (
        (foreign, "not a cnnviz run store"),
        (missing, "no store at"),
    ):
        before = _digest(foreign)
        result = _cnnviz(["db", "upgrade", "--db", str(location)], cli_env)
        assert result.returncode == 2
        (line,) = result.stderr.splitlines()
        assert message in line
        assert _digest(foreign) == before
    assert not missing.exists()
