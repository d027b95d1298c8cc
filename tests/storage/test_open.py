"""Opening a store: the facade, the one schema check, special files, read-only for
every way of naming a SQLite file. Real files, real processes; every refusal is one
line and leaves the bytes as they were."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.exc import OperationalError

from storage import RunInfo, Store, StoreError, TensorRecord
from storage.records import IterationRecord

CNNVIZ = [sys.executable, "-m", "tracer.cli"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(location, name="r") -> int:
    with Store.open(location, mode="w") as store:
        writer = store.begin_run(RunInfo(name=name, seed=3))
        tensor = TensorRecord("w", "param", np.arange(4, dtype=np.float32), layer="fc")
        writer.add_iteration(IterationRecord(index=1, loss=0.5, tensors=[tensor], steps=[]))
        writer.finish()
        return writer.run_id


def _cnnviz(args, env, timeout=240):
    return subprocess.run(
        [*CNNVIZ, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _checkpointed_copy(source: Path, target: Path) -> Path:
    """A store as one self-contained file (its WAL folded in), like a copied store."""
    with sqlite3.connect(source) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(source, target)
    return target


def test_facade_writes_and_reads_back(db_path):
    run_id = _write(db_path)
    with Store.open(db_path) as store:
        assert store.readonly and store.dialect == "sqlite"
        assert [r.name for r in store.list_runs()] == ["r"]
        np.testing.assert_array_equal(store.load_tensor(run_id, 1, "w").array, np.arange(4))
        with pytest.raises(StoreError, match="read-only"):
            store.begin_run(RunInfo(name="no"))
    with pytest.raises(ValueError, match="mode"):
        Store.open(db_path, mode="rw")


@pytest.mark.parametrize("form", ["path", "url", "url-relative"])
def test_readers_never_write_whatever_the_form(tmp_path, db_path, form, monkeypatch):
    _write(db_path)
    monkeypatch.chdir(tmp_path)
    location = {
        "path": str(db_path),
        "url": f"sqlite:///{db_path}",
        "url-relative": f"sqlite:///{db_path.name}",
    }[form]
    before = _digest(db_path)
    with Store.open(location) as store:
        assert len(store.list_runs()) == 1
        with pytest.raises(OperationalError, match="readonly|read-only|query_only"):
            with store.engine.begin() as conn:
                conn.exec_driver_sql("UPDATE runs SET name = 'changed'")
    assert _digest(db_path) == before


@pytest.mark.parametrize("form", ["path", "url"])
def test_reading_a_missing_store_creates_nothing(tmp_path, form):
    missing = tmp_path / "missing.db"
    location = str(missing) if form == "path" else f"sqlite:///{missing}"
    with pytest.raises(StoreError, match="no store at"):
        Store.open(location)
    assert list(tmp_path.iterdir()) == []


def test_a_foreign_wal_database_gets_nothing_beside_it(tmp_path):
    foreign = tmp_path / "notes.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]
    before = _digest(foreign)
    with pytest.raises(StoreError, match="not a cnnviz run store") as info:
        Store.open(foreign)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]
    assert _digest(foreign) == before


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_special_files_are_refused_before_opening(tmp_path, kind, cli_env):
    if kind == "fifo":
        special = tmp_path / "store.fifo"
        os.mkfifo(special)
    else:
        special = Path("/dev/null")
    for mode in ("r", "w"):
        with pytest.raises(StoreError, match=f"is a {'FIFO' if kind == 'fifo' else 'device'}"):
            Store.open(special, mode=mode)
    # The CLI answers at once (a FIFO used to hang `runs` forever).
    for args in (["runs", "--db", str(special)], ["serve", "--db", str(special), "--port", "1"]):
        result = _cnnviz(args, cli_env)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert "not a store file" in line or "--port" in line


DAMAGE = {
    "table": ("DROP TABLE tensor_data", "table tensor_data is missing"),
    "runs": (
        "DROP VIEW run_summary; DROP VIEW iteration_losses; DROP VIEW tensor_summary; "
        "DROP VIEW tensor_elements; DROP VIEW step_summary; DROP TABLE runs",
        "table runs is missing",
    ),
    "column": ("ALTER TABLE runs DROP COLUMN error", "column runs.error is missing"),
    "view": ("DROP VIEW tensor_elements", "view tensor_elements is missing"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_store_is_refused_in_one_line_and_left_alone(db_path, damage, cli_env):
    _write(db_path)
    sql, message = DAMAGE[damage]
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.executescript(sql)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = _digest(db_path)
    for mode in ("r", "w"):
        with pytest.raises(StoreError, match=message) as info:
            Store.open(db_path, mode=mode)
        assert "damaged store" in str(info.value) and "\n" not in str(info.value)
    # The commands that used to fail worst: `runs` and the dashboard said "no runs yet"
    # without a runs table, `trace` printed a traceback and added a failed run.
    commands = {
        "runs": (["runs"], ["trace", "--iterations", "1"], ["serve", "--port", "8931"]),
        "table": (["trace", "--iterations", "1"],),
    }.get(damage, (["runs"],))
    for args in commands:
        result = _cnnviz([*args, "--db", str(db_path)], cli_env)
        assert result.returncode == 2, (args, result.stderr)
        (line,) = result.stderr.splitlines()
        assert message in line and "Traceback" not in result.stderr
    assert _digest(db_path) == before


def _mount_tmpfs(where: Path) -> bool:
    where.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True
    )
    return result.returncode == 0


def test_a_store_on_read_only_media_opens_and_nothing_is_created(tmp_path, db_path, cli_env):
    """A valid store on a read-only filesystem used to fail with `unable to open
    database file`: `mode=ro` alone needs a -shm it cannot create there."""
    _write(db_path)
    media = tmp_path / "media"
    if os.geteuid() != 0 or not _mount_tmpfs(media):
        pytest.skip("needs to mount a filesystem (root)")
    try:
        store = _checkpointed_copy(db_path, media / "runs.db")
        # A foreign WAL database beside it must not gain files either.
        with sqlite3.connect(media / "notes.db") as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("CREATE TABLE notes (body TEXT)")
        conn.close()
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        before = _digest(store)
        with Store.open(store) as opened:
            assert [r.name for r in opened.list_runs()] == ["r"]
            assert opened.load_tensor(1, 1, "w").array.tolist() == [0, 1, 2, 3]
        result = _cnnviz(["runs", "--db", f"sqlite:///{store}"], cli_env)
        assert result.returncode == 0 and "r" in result.stdout, result.stderr
        with pytest.raises(StoreError, match="not a cnnviz run store"):
            Store.open(media / "notes.db")
        with pytest.raises(StoreError, match="not writable"):
            Store.open(store, mode="w")
        assert sorted(p.name for p in media.iterdir()) == ["notes.db", "runs.db"]
        assert _digest(store) == before
    finally:
        subprocess.run(["umount", str(media)], check=False)
