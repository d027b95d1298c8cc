"""SIGTERM under the Python API (tracer.signals): a real training process, sent
SIGTERM after some iterations are committed, marks its run `interrupted` and keeps
them whole; with no handler of its own it exits 143, and a handler that was there
before (the user's, Lightning's) is called and decides."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_integrations import needs

from storage import RunStore
from tracer import Trace, signals

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PLAIN = """
import sys, torch
from tracer import Trace
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
criterion = torch.nn.CrossEntropyLoss()
x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
with Trace(model, optimizer, criterion, db=sys.argv[1], name="plain") as t:
    while True:
        with t.iteration():
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
"""

EXAMPLE = """
import runpy, sys
main = runpy.run_path(sys.argv[2], run_name="example")["main"]
main(sys.argv[1], steps=10**6, every=1)
"""


def _committed(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM iterations").fetchone()[0]
    except sqlite3.Error:
        return 0


def _terminate(db: Path, cli_env, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        [sys.executable, "-c", *args],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while _committed(db) < 2:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no iterations committed in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _interrupted_with_whole_iterations(db: Path) -> None:
    with RunStore(db) as store:
        (run,) = store.list_runs()
        assert (run.status, run.error) == ("interrupted", "terminated (SIGTERM)")
        assert run.finished_at is not None
        summaries = store.iterations(run.id)
        assert run.num_iterations == len(summaries) >= 2
        for summary in summaries:
            assert summary.num_steps > 0 and summary.num_verified == summary.num_steps
        assert store.integrity_check() == "ok"


def test_a_terminated_training_loop_exits_143_with_its_run_interrupted(tmp_path, cli_env):
    db = tmp_path / "runs.db"
    result = _terminate(db, cli_env, PLAIN, str(db))
    assert result.returncode == 143, result.stderr
    assert "Traceback" not in result.stderr
    _interrupted_with_whole_iterations(db)


def test_a_terminated_hugging_face_trainer_exits_143_with_its_run_interrupted(tmp_path, cli_env):
    """The Trainer has no event for an exception: the run is closed at exit."""
    needs("transformers")
    needs("accelerate")
    db = tmp_path / "runs.db"
    result = _terminate(db, cli_env, EXAMPLE, str(db), str(EXAMPLES / "huggingface_callback.py"))
    assert result.returncode == 143, result.stderr
    _interrupted_with_whole_iterations(db)


def test_a_terminated_lightning_fit_stops_as_lightning_does_with_its_run_interrupted(
    tmp_path, cli_env
):
    """Lightning has its own SIGTERM handler (stop after this batch, raise its
    SIGTERMException, exit 0): ours calls it and lets it decide."""
    needs("lightning")
    db = tmp_path / "runs.db"
    result = _terminate(db, cli_env, EXAMPLE, str(db), str(EXAMPLES / "lightning_callback.py"))
    assert result.returncode == 0, result.stderr
    _interrupted_with_whole_iterations(db)


def _open_trace(db: Path) -> Trace:
    return Trace(torch.nn.Linear(2, 2), db=db).start()


def test_a_previous_handler_is_called_and_restored(tmp_path):
    calls = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        mine = signal.getsignal(signal.SIGTERM)
        first, second = _open_trace(tmp_path / "a.db"), _open_trace(tmp_path / "b.db")
        assert signal.getsignal(signal.SIGTERM) is signals._handler
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)  # the handler runs in the main thread, between bytecodes
        assert calls == [signal.SIGTERM] and first._terminated and second._terminated
        first.close()
        assert signal.getsignal(signal.SIGTERM) is signals._handler  # one still open
        second.close()
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, original)


@pytest.mark.parametrize("where", ["ignored", "thread"])
def test_sigterm_is_left_alone_when_ignored_or_off_the_main_thread(tmp_path, where):
    original = signal.getsignal(signal.SIGTERM)
    try:
        if where == "ignored":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            trace = _open_trace(tmp_path / "runs.db")
        else:
            box = []
            thread = threading.Thread(target=lambda: box.append(_open_trace(tmp_path / "runs.db")))
            thread.start()
            thread.join()
            (trace,) = box
        assert signal.getsignal(signal.SIGTERM) is not signals._handler
        trace.close()
    finally:
        signal.signal(signal.SIGTERM, original)
