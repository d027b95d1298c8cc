"""Real processes against one real file: SIGKILL mid-trace, and concurrent writers."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

from storage import RunStore

TRACE = [sys.executable, "-m", "tracer.cli", "trace"]


def _committed_iterations(path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM iterations").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_sigkill_keeps_committed_iterations(db_path, cli_env):
    proc = subprocess.Popen(
        [*TRACE, "--db", str(db_path), "--epochs", "100000", "--seed", "3"],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while _committed_iterations(db_path) < 5:
            assert proc.poll() is None, "the trace process ended before it was killed"
            assert time.monotonic() < deadline, "no iterations committed in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with RunStore(db_path) as store:
        assert store.integrity_check() == "ok"
        (run,) = store.list_runs()
        # Unfinished and recognisable as such: never finished, and its writer is gone.
        assert run.status == "stale" and run.finished_at is None
        assert f"pid {proc.pid}" in run.error
        summaries = store.iterations(run.id)
        assert len(summaries) >= 5 and run.num_iterations == len(summaries)
        assert [s.index for s in summaries] == list(range(1, len(summaries) + 1))
        # Every committed iteration is whole: all 23 steps, each verified.
        for summary in summaries:
            assert (summary.num_steps, summary.num_checked, summary.num_verified) == (23, 23, 23)
            record = store.load_iteration(run.id, summary.index)
            assert len(record.tensors) > 40

    # The file keeps working for the next trace.
    done = subprocess.run(
        [*TRACE, "--db", str(db_path), "--seed", "4"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with RunStore(db_path) as store:
        assert [r.status for r in store.list_runs()] == ["stale", "completed"]
    pruned = subprocess.run(
        [sys.executable, "-m", "tracer.cli", "runs", "--prune-stale", "--db", str(db_path)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith(f"run 1: marked interrupted (its writer (pid {proc.pid})")
    with RunStore(db_path) as store:
        first, second = store.list_runs()
        assert (first.status, second.status) == ("interrupted", "completed")
        assert first.finished_at is not None and first.error.startswith("stale: ")
        assert store.integrity_check() == "ok"


def test_sigterm_ends_a_trace_like_ctrl_c(db_path, cli_env):
    proc = subprocess.Popen(
        [*TRACE, "--db", str(db_path), "--epochs", "100000", "--seed", "5"],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _committed_iterations(db_path) < 3:
            assert proc.poll() is None, "the trace process ended before it was terminated"
            assert time.monotonic() < deadline, "no iterations committed in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.splitlines()[-1] == "cnnviz: terminated; committed iterations are kept"
    with RunStore(db_path) as store:
        (run,) = store.list_runs()
        assert run.status == "interrupted" and run.finished_at is not None
        assert run.num_iterations == len(store.iterations(run.id)) >= 3
        assert store.integrity_check() == "ok"


def test_concurrent_writers_all_succeed(db_path, cli_env):
    writers = 4
    procs = [
        subprocess.Popen(
            [*TRACE, "--db", str(db_path), "--seed", str(seed), "--epochs", "15", "--samples", "2"],
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(writers)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, results):
        assert proc.returncode == 0, err
    with RunStore(db_path) as store:
        assert store.integrity_check() == "ok"
        runs = store.list_runs()
        assert sorted(r.seed for r in runs) == list(range(writers))
        for run in runs:
            assert run.status == "completed" and run.num_iterations == 15
            assert [s.index for s in store.iterations(run.id)] == list(range(1, 16))
    assert os.path.getsize(db_path) > 0


_QUEUED_TRACE = """
import sys
from tracer.session import Trace
from tracer.train import prepare, resolve

config = resolve(model_name="seed-cnn", seed=5, iterations=100000)
model, optimizer, criterion, x, y = prepare(config)
with Trace(model, optimizer, criterion, db=sys.argv[1], queue_size=4) as run:
    while True:
        with run.iteration():
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        print(run.index, run._pipeline.in_flight, flush=True)
"""


def test_sigkill_with_iterations_in_the_queue_keeps_committed_ones_whole(db_path, cli_env):
    """The worker is behind the loop: what is queued at the kill is lost, nothing else."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _QUEUED_TRACE, str(db_path)],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    handed = in_flight = 0
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            handed, in_flight = (int(v) for v in line.split())
            if in_flight >= 2 and _committed_iterations(db_path) >= 3:
                break
            assert time.monotonic() < deadline, "the queue never held two iterations"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and in_flight >= 2

    with RunStore(db_path) as store:
        assert store.integrity_check() == "ok"
        (run,) = store.list_runs()
        # Never finished, and its writer is gone: it reads as stale.
        assert run.status == "stale" and run.finished_at is None
        summaries = store.iterations(run.id)
        # The committed iterations are the first ones, in order; those in the queue are lost.
        assert 3 <= len(summaries) < handed
        assert [s.index for s in summaries] == list(range(1, len(summaries) + 1))
        assert run.num_iterations == len(summaries)
        for summary in summaries:
            assert (summary.num_steps, summary.num_checked, summary.num_verified) == (23, 23, 23)
            assert len(store.load_iteration(run.id, summary.index).tensors) > 40


def test_a_writer_seen_from_another_host_is_alive_while_it_beats(db_path, monkeypatch):
    """A dashboard in another container (another pid namespace) cannot ask the pid: the
    writer's heartbeat thread keeps the run alive however long an iteration takes, and
    a writer that stopped beating reads as stale once its heartbeat is STALE_AFTER old."""
    from storage import RunInfo, Store
    from storage import store as store_module

    monkeypatch.setattr(store_module, "HEARTBEAT_EVERY", 0.05)
    elsewhere = "UPDATE runs SET writer_host = 'elsewhere', heartbeat_at = ?"
    with Store.open(db_path, mode="w") as store:
        writer = store.begin_run(RunInfo(name="slow"))
        with sqlite3.connect(db_path) as conn:
            conn.execute(elsewhere, ("2000-01-01 00:00:00.000000",))
        conn.close()
        deadline = time.monotonic() + 10
        while (run := RunStore(db_path).list_runs()[0]).status != "running":
            assert time.monotonic() < deadline, run.error
            time.sleep(0.05)
        writer.close()  # stops beating, as a dead writer would
        old = (
            store_module._utcnow() - store_module.STALE_AFTER - store_module.dt.timedelta(seconds=1)
        )
        with sqlite3.connect(db_path) as conn:
            conn.execute(elsewhere, (f"{old:%Y-%m-%d %H:%M:%S.%f}",))
        conn.close()
        (run,) = store.list_runs()
        assert run.status == "stale"
        assert run.error.startswith(
            f"no heartbeat from its writer (pid {os.getpid()} on elsewhere)"
        )
        assert [run_id for run_id, _ in store.prune_stale()] == [run.id]
    assert RunStore(db_path).list_runs()[0].status == "interrupted"
