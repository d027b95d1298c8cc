"""The command line: real store files; arguments checked in this process (click's
runner, through `main` as the console script calls it), and a few real processes."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys

import pytest
from cli_helpers import cnnviz

CNNVIZ = [sys.executable, "-m", "tracer.cli"]


def run(args, env, cwd=None, timeout=120):
    return subprocess.run(
        [*CNNVIZ, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_trace_prints_run_id_and_loss_table(tmp_path, cli_env):
    db = tmp_path / "runs.db"
    result = run(["trace", "--db", str(db), "--seed", "0"], cli_env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["iter", "loss"]
    assert [line.split()[0] for line in lines[1:4]] == ["1", "2", "3"]
    assert all("23/23" in line for line in lines[1:4])
    assert lines[-1] == f"run 1 'seed-cnn-seed0' stored in {db}"


def test_default_location_and_env_var(tmp_path):
    assert cnnviz("trace", cwd=tmp_path).returncode == 0
    assert (tmp_path / "runs.db").exists()
    env = {"CNNVIZ_DB": str(tmp_path / "from_env.db")}
    assert cnnviz("trace", "--seed", "2", env=env, cwd=tmp_path).returncode == 0
    listing = cnnviz("runs", env=env, cwd=tmp_path)
    assert "seed-cnn-seed2" in listing.stdout and "seed-cnn-seed0" not in listing.stdout


def test_runs_lists_both_seeds(tmp_path):
    db = str(tmp_path / "runs.db")
    for seed in ("0", "1"):
        assert cnnviz("trace", "--db", db, "--seed", seed).returncode == 0
    listing = cnnviz("runs", "--db", db)
    assert listing.returncode == 0
    header, rule, *rows = listing.stdout.splitlines()
    assert header.split()[:4] == ["id", "name", "seed", "model"]
    assert [r.split()[1] for r in rows] == ["seed-cnn-seed0", "seed-cnn-seed1"]
    assert all("completed" in r for r in rows)


def test_runs_on_an_empty_store_says_how_to_create_one(tmp_path):
    db = tmp_path / "empty.db"
    db.touch()
    result = cnnviz("runs", "--db", db)
    assert result.returncode == 0
    assert "cnnviz trace" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "-1"], "'-1' is not a positive number"),
        (["--lr", "0"], "'0' is not a positive number"),
        (["--lr", "nan"], "is not a positive number"),
        (["--lr", "abc"], "'abc' is not a number"),
        (["--epochs", "0"], "--epochs"),
        (["--samples", "0"], "--samples"),
        (["--batch-size", "-2"], "--batch-size"),
        (["--seed", "x"], "--seed"),
        (["--model", "resnet-9000"], "unknown model 'resnet-9000'"),
        (["--no-such-option"], "No such option"),
    ],
)
def test_bad_arguments_fail_in_one_line_and_leave_the_store_alone(
    tmp_path, seed_store, args, message
):
    db = tmp_path / "runs.db"
    shutil.copy(seed_store, db)
    before = digest(db)
    result = cnnviz("trace", "--db", db, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    assert digest(db) == before


@pytest.mark.parametrize("where", ["directory", "under_a_file", "not_sqlite", "corrupt", "newer"])
def test_bad_store_locations(tmp_path, seed_store, where):
    messages = {}
    if where == "directory":
        db, message = tmp_path, "is a directory"
    elif where == "under_a_file":
        (tmp_path / "file").write_text("x")
        db, message = tmp_path / "file" / "runs.db", "cannot create"
        messages["runs"] = "no store at"
    elif where == "not_sqlite":
        db, message = tmp_path / "notes.txt", "is not a SQLite database"
        db.write_text("hello\n" * 10)
    else:
        db = tmp_path / "runs.db"
        shutil.copy(seed_store, db)
        if where == "corrupt":
            data = bytearray(db.read_bytes())
            data[100:4096] = b"\x00" * (4096 - 100)
            db.write_bytes(bytes(data))
            message = "cannot open"
        else:
            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
                conn.commit()
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            message = "upgrade cnnviz"
    before = digest(db) if db.is_file() else None
    for command in (["trace"], ["runs"]):
        result = cnnviz(*command, "--db", db)
        assert result.returncode == 2, (command, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert messages.get(command[0], message) in result.stderr
    if before:
        assert digest(db) == before


def test_progress_bar_for_long_runs(tmp_path):
    result = cnnviz("trace", "--db", tmp_path / "r.db", "--epochs", "14")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tracing")
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["iter", "loss"])
    # After the bar, the loss table: the first five, an ellipsis, the last five.
    table = [line.split()[0] for line in lines[header + 1 : header + 12]]
    assert table == ["1", "2", "3", "4", "5", "...", "10", "11", "12", "13", "14"]
    assert lines[-1].startswith("run 1 'seed-cnn-seed0'")


def test_help_and_version():
    for args in (["--help"], ["trace", "--help"], ["runs", "--help"], ["models", "--help"]):
        result = cnnviz(*args)
        assert result.returncode == 0 and "Usage:" in result.stdout
    assert "seed-cnn" in cnnviz("models").stdout


# ---------------------------------------------------------------- real processes


def test_a_bad_argument_and_the_version_as_real_processes(tmp_path, cli_env):
    """The console script's exit status and streams, not only main()'s."""
    result = run(["trace", "--db", str(tmp_path / "runs.db"), "--lr", "-1"], cli_env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "cnnviz trace: error: Invalid value for '--lr': '-1' is not a positive number"
    ]
    assert not (tmp_path / "runs.db").exists()
    assert run(["--version"], cli_env).stdout.startswith("cnnviz, version")


_IMPORTS = """
import sys
from tracer.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = [m for m in ("torch", "sqlalchemy", "numpy", "dash") if m in sys.modules]
print("loaded:", ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args, allowed",
    [
        (["--help"], set()),  # no store, no NumPy, no torch
        (["trace", "--help"], set()),
        (["models"], set()),  # the model cards only
        (["runs", "--db", "{db}"], {"sqlalchemy", "numpy"}),  # the store, never torch
    ],
)
def test_commands_import_only_what_they_need(cli_env, seed_store, args, allowed):
    args = [a.format(db=seed_store) for a in args]
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTS, *args],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    loaded = result.stderr.strip().splitlines()[-1].removeprefix("loaded:").strip().split(",")
    assert {m for m in loaded if m} <= allowed, result.stderr


def test_trace_explain_modes_and_full_check(tmp_path):
    db = str(tmp_path / "runs.db")
    for explain in ("inline", "background", "off"):
        result = cnnviz("trace", "--db", db, "--explain", explain, "--iterations", "2")
        assert result.returncode == 0, result.stderr
    off = result.stdout.splitlines()
    assert [line.split()[3] for line in off[1:3]] == ["0/0", "0/0"]  # nothing checked yet
    result = cnnviz("trace", "--db", db, "--model", "lenet5", "--iterations", "1", "--full-check")
    assert result.returncode == 0 and "1/1" not in result.stdout, result.stderr
    bad = cnnviz("trace", "--db", db, "--explain", "later")
    assert bad.returncode == 2 and "'later' is not one of" in bad.stderr
    bad = cnnviz("trace", "--db", db, "--queue-size", "0")
    assert bad.returncode == 2 and "--queue-size" in bad.stderr
    bad = cnnviz("trace", "--db", db, "--queue-bytes", "lots")
    assert bad.returncode == 2 and "--queue-bytes" in bad.stderr and "512MiB" in bad.stderr
