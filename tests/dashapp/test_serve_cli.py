"""`cnnviz serve` and `cnnviz demo`, run as real processes."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from dash_helpers import REPO, copy_store, free_port, serving, subprocess_env

from storage import RunStore


def cnnviz(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tracer.cli", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=timeout,
    )


def assert_usage_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_serve_refuses_a_missing_store(tmp_path):
    missing = tmp_path / "missing.db"
    assert_usage_error(
        cnnviz("serve", "--db", str(missing)), "cnnviz: error: no store at", str(missing)
    )
    assert not missing.exists()  # nothing created


@pytest.mark.parametrize("kind", ["text", "other-sqlite", "directory"])
def test_serve_refuses_what_is_not_a_store(tmp_path, kind):
    path = tmp_path / "bad.db"
    if kind == "text":
        path.write_text("not a database")
    elif kind == "other-sqlite":
        with sqlite3.connect(path) as connection:
            connection.execute("create table notes (body text)")
        connection.close()
    else:
        path.mkdir()
    before = path.read_bytes() if path.is_file() else None
    assert_usage_error(cnnviz("serve", "--db", str(path)), "cnnviz: error:", str(path))
    if before is not None:
        assert path.read_bytes() == before  # untouched


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_serve_refuses_bad_ports(dash_store, port):
    assert_usage_error(
        cnnviz("serve", "--db", str(dash_store), "--port", port), "cnnviz serve: error:", "--port"
    )


def test_serve_says_when_the_port_is_taken(dash_store):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_usage_error(
            cnnviz("serve", "--db", str(dash_store), "--port", port), "already in use", port
        )


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on `port` (Linux /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":  # LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_serve_listens_on_loopback_with_debug_off(dash_store):
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "tracer.cli",
        "serve",
        "--db",
        str(dash_store),
        "--port",
        str(port),
    ]
    with serving(argv, port) as served:
        with urllib.request.urlopen(served.url + "/") as response:
            index = response.read().decode()
        assert '"ui":false' in index and '"props_check":false' in index  # Dash dev tools off
        with urllib.request.urlopen(served.url + "/_dash-layout") as response:
            assert b"_pages_content" in response.read()
        if Path("/proc/net/tcp").exists():
            assert listening_addresses(port) == {"127.0.0.1"}
    assert f"http://127.0.0.1:{port}/" in served.output


def test_demo_traces_three_seeds_once(tmp_path):
    db = tmp_path / "demo.db"
    first = cnnviz("demo", "--db", str(db), "--no-serve", timeout=300)
    assert first.returncode == 0, first.stderr
    with RunStore(db) as store:
        runs = store.list_runs()
        assert [(r.seed, r.status, r.num_iterations) for r in runs] == [
            (s, "completed", 3) for s in (0, 1, 2)
        ]
        assert all(s.num_verified == s.num_steps for r in runs for s in store.iterations(r.id))
    assert first.stdout.count("traced run") == 3
    again = cnnviz("demo", "--db", str(db), "--no-serve")
    assert again.returncode == 0 and "already holds runs" in again.stdout
    with RunStore(db) as store:
        assert len(store.list_runs()) == 3


def test_demo_refuses_a_bad_store_before_tracing(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_text("not a database")
    assert_usage_error(cnnviz("demo", "--db", str(bad), "--no-serve"), "is not a SQLite database")


def test_demo_serves_a_store_that_has_runs_and_prints_the_url(dash_store, tmp_path):
    db = copy_store(dash_store, tmp_path / "runs.db")
    port = free_port()
    argv = [sys.executable, "-m", "tracer.cli", "demo", "--db", str(db), "--port", str(port)]
    with serving(argv, port) as served:
        with urllib.request.urlopen(served.url + "/") as response:
            assert response.status == 200
    assert "already holds runs" in served.output
    assert f"cnnviz dashboard for {db}: http://127.0.0.1:{port}/" in served.output
