"""`cnnviz serve` and `cnnviz demo`: servers as real processes; refusals and the demo's
tracing in this process (click's runner through `main`)."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_helpers import cnnviz as cnnviz_here
from dash_helpers import (
    clone_run,
    cnnviz_without_torch,
    copy_store,
    free_port,
    serving,
    subprocess_env,
)

from storage import RunStore

CNNVIZ = [sys.executable, "-m", "tracer.cli"]


def assert_usage_error(result, *words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_serve_refuses_a_missing_store(tmp_path):
    missing = tmp_path / "missing.db"
    assert_usage_error(
        cnnviz_here("serve", "--db", missing), "cnnviz: error: no store at", str(missing)
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
    assert_usage_error(cnnviz_here("serve", "--db", path), "cnnviz: error:", str(path))
    if before is not None:
        assert path.read_bytes() == before  # untouched


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_serve_refuses_bad_ports(dash_store, port):
    assert_usage_error(
        cnnviz_here("serve", "--db", dash_store, "--port", port), "cnnviz serve: error:", "--port"
    )


@pytest.mark.parametrize("workers", ["0", "65", "many"])
def test_serve_refuses_bad_worker_counts(dash_store, workers):
    assert_usage_error(
        cnnviz_here("serve", "--db", dash_store, "--workers", workers),
        "cnnviz serve: error:",
        "--workers",
    )


def test_serve_says_when_the_port_is_taken(dash_store):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_usage_error(
            cnnviz_here("serve", "--db", dash_store, "--port", port), "already in use", port
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


def test_serve_is_gunicorn_and_healthz_reads_the_store(dash_store, tmp_path):
    db = copy_store(dash_store, tmp_path / "runs.db")
    port = free_port()
    argv = [*CNNVIZ, "serve", "--db", str(db), "--port", str(port), "--workers", "1"]
    with serving(argv, port) as served:
        with urllib.request.urlopen(served.url + "/healthz") as response:
            assert json.load(response) == {"status": "ok", "runs": 3}
        db.write_bytes(b"not a database any more" * 100)  # broken under the running server
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(served.url + "/healthz")
        assert answer.value.code == 503
        assert json.load(answer.value) == {
            "status": "error",
            "error": f"{db} is not a SQLite database",
        }
        with urllib.request.urlopen(served.url + "/") as response:
            assert response.status == 200  # the page shell alone would still look healthy
    assert "Starting gunicorn" in served.output and "Using worker: gthread" in served.output
    assert served.output.count("Booting worker") == 1  # --workers


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_every_worker_serves_the_scripts_to_its_first_concurrent_requests(dash_store):
    """gunicorn's threaded workers each build their own app. Dash learns which scripts
    it may serve during its first request, after marking that setup done, so scripts
    requested alongside a worker's first request answered HTTP 500 ("dash" is registered
    but the path requested is not valid) and pages failed to load at random. Seen in
    about one server start of three; each start here hits the cold worker 64 times."""
    port = free_port()
    argv = [*CNNVIZ, "serve", "--db", str(dash_store), "--port", str(port)]
    for _start in range(3):
        with serving(argv, port) as served:  # answers "/" once: one worker is warm
            shell = urllib.request.urlopen(served.url + "/").read().decode()
            scripts = re.findall(r'<script src="(/_dash-component-suites/[^"]+)"', shell)
            assert len(scripts) >= 3
            urls = [served.url + src for src in scripts] * (64 // len(scripts) + 1)
            with ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(_status, urls))
        assert set(statuses) == {200}, [s for s in statuses if s != 200]


def test_serve_debug_keeps_dash_dev_tools_on_loopback(dash_store):
    port = free_port()
    argv = [*CNNVIZ, "serve", "--db", str(dash_store), "--port", str(port), "--debug"]
    with serving(argv, port) as served:
        with urllib.request.urlopen(served.url + "/") as response:
            index = response.read().decode()
        assert '"ui":true' in index  # Dash's dev tools UI
        if Path("/proc/net/tcp").exists():
            assert listening_addresses(port) == {"127.0.0.1"}
    assert "gunicorn" not in served.output


def test_host_and_port_come_from_the_environment(dash_store):
    port = free_port()
    env = subprocess_env() | {"CNNVIZ_HOST": "127.0.0.1", "CNNVIZ_PORT": str(port)}
    with serving([*CNNVIZ, "serve", "--db", str(dash_store)], port, env=env) as served:
        with urllib.request.urlopen(served.url + "/healthz") as response:
            assert response.status == 200
    assert f"http://127.0.0.1:{port}/" in served.output


def demo_runs(db: Path) -> list[tuple[str, int, str, int]]:
    with RunStore(db) as store:
        return [(r.name, r.seed, r.status, r.num_iterations) for r in store.list_runs()]


DEMO = [(f"seed-cnn-seed{s}", s, "completed", 3) for s in (0, 1, 2)]


def test_demo_traces_three_seeds_once(tmp_path):
    db = tmp_path / "demo.db"
    first = cnnviz_here("demo", "--db", db, "--no-serve")
    assert first.returncode == 0, first.stderr
    assert demo_runs(db) == DEMO
    with RunStore(db) as store:
        runs = store.list_runs()
        assert all(s.num_verified == s.num_steps for r in runs for s in store.iterations(r.id))
    assert first.stdout.count("traced run") == 3
    again = cnnviz_here("demo", "--db", db, "--no-serve")
    assert again.returncode == 0 and "already holds the demo runs" in again.stdout
    assert demo_runs(db) == DEMO


def test_demo_fills_up_what_an_interrupted_first_start_left_out(dash_store, tmp_path):
    # dash_store holds seed 0 and seed 1 (and a run named like an injection): as if the
    # first start had been killed while tracing seed 2. An unfinished run does not count.
    db = copy_store(dash_store, tmp_path / "runs.db")
    clone_run(db, 1, name="seed-cnn-seed2", seed=2, iterations=1, finish=False)[1].engine.dispose()
    before = demo_runs(db)
    filled = cnnviz_here("demo", "--db", db, "--no-serve")
    assert filled.returncode == 0, filled.stderr
    assert filled.stdout.count("traced run") == 1 and "'seed-cnn-seed2'" in filled.stdout
    assert demo_runs(db) == [*before, DEMO[2]]


def test_demo_copies_missing_runs_from_a_store_without_torch(dash_store, tmp_path):
    """What the Docker image does: no torch, the demo runs come from the image's store."""
    source = tmp_path / "demo.db"
    assert cnnviz_here("demo", "--db", source, "--no-serve").returncode == 0
    db = tmp_path / "runs.db"
    copied = cnnviz_without_torch("demo", "--db", str(db), "--no-serve", "--from", str(source))
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.count("copied run") == 3
    assert demo_runs(db) == DEMO
    with RunStore(source) as original, RunStore(db) as copy:
        for a, b in zip(original.list_runs(), copy.list_runs(), strict=True):
            assert (a.name, a.seed, a.final_loss) == (b.name, b.seed, b.final_loss)
            for summary in original.iterations(a.id):
                x = original.load_iteration(a.id, summary.index)
                y = copy.load_iteration(b.id, summary.index)
                assert [s.formula for s in x.steps] == [s.formula for s in y.steps]
                assert [t.name for t in x.tensors] == [t.name for t in y.tensors]
                for s, t in zip(x.tensors, y.tensors, strict=True):
                    assert s.array.tobytes() == t.array.tobytes() and s.summary == t.summary
    again = cnnviz_without_torch("demo", "--db", str(db), "--no-serve", "--from", str(source))
    assert again.returncode == 0 and "already holds the demo runs" in again.stdout
    assert demo_runs(db) == DEMO
    # A source without the demo runs is one clear line, and nothing is copied.
    other = tmp_path / "other.db"
    lacking = cnnviz_without_torch(
        "demo", "--db", str(other), "--no-serve", "--from", str(dash_store)
    )
    assert_usage_error(lacking, f"{dash_store} has no completed demo run for seed 2")
    assert not other.exists() or demo_runs(other) == []


def test_demo_refuses_a_bad_store_before_tracing(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_text("not a database")
    assert_usage_error(cnnviz_here("demo", "--db", bad, "--no-serve"), "is not a SQLite database")


def test_demo_serves_a_store_that_has_the_demo_runs_and_prints_the_url(dash_store, tmp_path):
    db = copy_store(dash_store, tmp_path / "runs.db")
    clone_run(db, 1, name="seed-cnn-seed2", seed=2)  # now it holds seeds 0, 1 and 2
    port = free_port()
    argv = [*CNNVIZ, "demo", "--db", str(db), "--port", str(port)]
    with serving(argv, port) as served:
        with urllib.request.urlopen(served.url + "/") as response:
            assert response.status == 200
    assert "already holds the demo runs" in served.output
    assert f"cnnviz dashboard for {db}: http://127.0.0.1:{port}/" in served.output
