"""The tracing pipeline: explanation inline, in the background worker, or off; the
bounded queue; errors from the worker raised in the training loop; Ctrl-C."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from storage import RUN_COMPLETED, RUN_FAILED, RUN_INTERRUPTED, RunStore
from tracer import session
from tracer.assemble import TraceError
from tracer.explainers.base import Explainer, register
from tracer.pipeline import WORKER_NICENESS, Background, WorkerError
from tracer.session import NOT_EXPLAINED, Trace
from tracer.train import prepare, resolve, run_builtin


def _stored(path):
    """Everything stored of the one run in `path`: iterations with tensors and steps."""
    with RunStore(path) as store:
        (run,) = store.list_runs()
        records = [store.load_iteration(run.id, s.index) for s in store.iterations(run.id)]
        return store.get_run(run.id), records


def _same_records(a, b) -> None:
    assert len(a) == len(b)
    for left, right in zip(a, b, strict=True):
        assert left.index == right.index and left.loss == right.loss
        assert left.warnings == right.warnings
        assert [t.name for t in left.tensors] == [t.name for t in right.tensors]
        for x, y in zip(left.tensors, right.tensors, strict=True):
            assert (x.role, x.layer, x.shape, x.summary) == (y.role, y.layer, y.shape, y.summary)
            assert x.array.dtype == y.array.dtype and x.array.tobytes() == y.array.tobytes()
        steps = [(s.layer, s.phase, s.title, s.formula, s.formula_values) for s in left.steps]
        assert steps == [
            (s.layer, s.phase, s.title, s.formula, s.formula_values) for s in right.steps
        ]
        for x, y in zip(left.steps, right.steps, strict=True):
            assert (x.inputs, x.outputs, x.reference, x.verified, x.note) == (
                y.inputs,
                y.outputs,
                y.reference,
                y.verified,
                y.note,
            )
            assert x.max_abs_diff == y.max_abs_diff


@pytest.mark.parametrize("model", ["seed-cnn", "small-cnn"])
def test_background_stores_what_inline_stores(tmp_path, model):
    options = dict(model_name=model, seed=2, iterations=3, samples=8, batch_size=4)
    inline = run_builtin(db=tmp_path / "inline.db", explain="inline", **options)
    background = run_builtin(db=tmp_path / "background.db", explain="background", **options)
    assert inline.losses == background.losses
    run_a, records_a = _stored(tmp_path / "inline.db")
    run_b, records_b = _stored(tmp_path / "background.db")
    assert run_a.status == run_b.status == RUN_COMPLETED
    assert [layer.name for layer in run_a.layers] == [layer.name for layer in run_b.layers]
    _same_records(records_a, records_b)
    assert background.timings["explain"] > 0 and background.timings["write"] > 0


def test_off_stores_the_raw_tensors_and_says_how_to_explain(tmp_path):
    options = dict(model_name="seed-cnn", seed=0, iterations=2)
    run_builtin(db=tmp_path / "inline.db", explain="inline", **options)
    off = run_builtin(db=tmp_path / "off.db", explain="off", **options)
    assert off.warned == []  # nothing failed: no warning per call
    run_a, inline = _stored(tmp_path / "inline.db")
    run_b, raw = _stored(tmp_path / "off.db")
    assert run_b.config["explain"] == "off" and run_b.status == RUN_COMPLETED
    assert not any(layer.explained for layer in run_b.layers)
    for full, bare in zip(inline, raw, strict=True):
        assert full.loss == bare.loss
        kept = {t.name: t for t in full.tensors}
        # Every raw tensor is one an inline trace stores too, with the same bytes;
        # only what the explainers computed is missing.
        for tensor in bare.tensors:
            assert tensor.array.tobytes() == kept[tensor.name].array.tobytes()
        missing = {t.role for t in full.tensors if t.name not in {b.name for b in bare.tensors}}
        assert missing <= {"intermediate", "output"}  # X_col, masks, probabilities...
        assert bare.steps and all(s.verified is None for s in bare.steps)
        assert all(s.note.startswith(NOT_EXPLAINED.split(";")[0]) for s in bare.steps)
        assert "`cnnviz explain RUN --db STORE`" in bare.steps[0].note


def test_traced_in_background_and_untraced_are_bitwise_identical(tmp_path):
    config = resolve(model_name="lenet5", seed=1, iterations=3, samples=128, batch_size=64)
    model, optimizer, criterion, x, y = prepare(config)
    plain = []
    for start in range(0, 128, 64):
        optimizer.zero_grad()
        loss = criterion(model(x[start : start + 64]), y[start : start + 64])
        loss.backward()
        optimizer.step()
        plain.append(loss.item())
    weights = [p.detach().clone() for p in model.parameters()]
    model, optimizer, criterion, x, y = prepare(config)
    traced = []
    with Trace(model, optimizer, criterion, db=tmp_path / "r.db", max_elements=5000) as run:
        for start in range(0, 128, 64):
            with run.iteration():
                optimizer.zero_grad()
                loss = criterion(model(x[start : start + 64]), y[start : start + 64])
                loss.backward()
                optimizer.step()
            traced.append(loss.item())
    assert traced == plain
    for a, b in zip(weights, model.parameters(), strict=True):
        assert torch.equal(a, b.detach())


def _loop(run, model, optimizer, criterion, x, y, iterations, between=None):
    for i in range(iterations):
        with run.iteration():
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        if between is not None:
            between(i)


def _seed_setup():
    return prepare(resolve(model_name="seed-cnn", seed=0, iterations=1))


def _drop_tensor_table(path) -> None:
    """Someone's SQL damages the store while the run goes on: the next write fails."""
    with sqlite3.connect(path, timeout=30) as conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("DROP TABLE tensor_data")


def test_a_worker_error_is_raised_at_the_next_iteration_and_fails_the_run(tmp_path):
    model, optimizer, criterion, x, y = _seed_setup()
    path = tmp_path / "r.db"
    with pytest.raises(WorkerError, match="tracing failed in the background: OperationalError"):
        with Trace(model, optimizer, criterion, db=path, queue_size=1) as run:

            def damage(i):
                if i == 1:
                    run._pipeline._queue.join()  # iterations 1 and 2 are written
                    _drop_tensor_table(path)

            _loop(run, model, optimizer, criterion, x, y, 50, damage)
    assert run.stored == 2 and run.index <= 5  # raised within the queue's reach, not at the end
    with sqlite3.connect(path) as conn:
        status, error = conn.execute("SELECT status, error FROM runs").fetchone()
        assert conn.execute("SELECT count(*) FROM iterations").fetchone()[0] == 2
    assert status == RUN_FAILED and "tracing failed in the background" in error
    assert "tensor_data" in error


def test_a_worker_error_on_the_last_iteration_is_raised_at_exit(tmp_path):
    model, optimizer, criterion, x, y = _seed_setup()
    path = tmp_path / "r.db"
    with pytest.raises(WorkerError, match="no such table"):
        with Trace(model, optimizer, criterion, db=path) as run:
            _loop(run, model, optimizer, criterion, x, y, 1)
            run._pipeline._queue.join()
            _drop_tensor_table(path)
            _loop(run, model, optimizer, criterion, x, y, 1)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT status FROM runs").fetchone()[0] == RUN_FAILED


class Doubling(nn.Module):
    def forward(self, x):
        return 2 * x


class _BrokenExplainer(Explainer):
    """An explainer with a bug, as a new layer type might have one."""

    def forward(self, call, ctx):
        raise ZeroDivisionError("a bug in the explainer")

    backward = forward


@pytest.fixture
def broken_explainer():
    """Doubling registered with the broken explainer for one test, then unregistered
    (other tests check that every registered type has what a layer type needs)."""
    from tracer.explainers import base

    register(Doubling)(_BrokenExplainer)
    yield
    base._REGISTRY.pop(Doubling, None)
    base._BY_NAME.pop("Doubling", None)


@pytest.mark.usefixtures("broken_explainer")
def test_strict_explainer_failure_in_the_worker_reaches_the_loop_as_trace_error(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), Doubling())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(TraceError, match="layer 1 .*a bug in the explainer"):
        with Trace(
            model, optimizer, nn.CrossEntropyLoss(), db=tmp_path / "r.db", strict=True
        ) as run:
            _loop(run, model, optimizer, nn.CrossEntropyLoss(), x, y, 20)
    # Not strict: the bug costs the matrix form of that layer only, with a warning.
    with pytest.warns(UserWarning, match="explainer failed: ZeroDivisionError"):
        with Trace(model, optimizer, nn.CrossEntropyLoss(), db=tmp_path / "s.db") as run:
            _loop(run, model, optimizer, nn.CrossEntropyLoss(), x, y, 2)
    assert run.stored == 2


def test_the_worker_process_stores_what_the_thread_stores(tmp_path):
    options = dict(model_name="small-cnn", seed=2, iterations=2, samples=8, batch_size=4)
    thread = run_builtin(db=tmp_path / "thread.db", worker="thread", **options)
    process = run_builtin(db=tmp_path / "process.db", worker="process", **options)
    assert thread.losses == process.losses and thread.rows == process.rows
    assert process.stored == 2 and process.timings["explain"] > 0
    run_a, records_a = _stored(tmp_path / "thread.db")
    run_b, records_b = _stored(tmp_path / "process.db")
    assert run_a.status == run_b.status == RUN_COMPLETED
    assert [layer.description for layer in run_a.layers] == [
        layer.description for layer in run_b.layers
    ]
    _same_records(records_a, records_b)


@pytest.mark.usefixtures("broken_explainer")
def test_worker_process_errors_reach_the_loop(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), Doubling())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    criterion = nn.CrossEntropyLoss()
    with pytest.raises(TraceError, match="layer 1 .*a bug in the explainer"):
        with Trace(
            model, optimizer, criterion, db=tmp_path / "r.db", strict=True, worker="process"
        ) as run:
            _loop(run, model, optimizer, criterion, x, y, 20)
    # A worker process that dies (killed, out of memory) fails the run with the reason.
    path = tmp_path / "killed.db"
    with pytest.raises(WorkerError, match="worker process stopped"):
        with Trace(model, optimizer, criterion, db=path, worker="process") as run:
            _loop(run, model, optimizer, criterion, x, y, 1)
            run._pipeline._process.kill()
            run._pipeline._process.join()
            _loop(run, model, optimizer, criterion, x, y, 20)
    with sqlite3.connect(path) as conn:
        status, error = conn.execute("SELECT status, error FROM runs").fetchone()
    assert status == RUN_FAILED and "worker process stopped" in error


def test_the_queue_bounds_iterations_in_flight(tmp_path):
    model, optimizer, criterion, x, y = _seed_setup()
    seen = []
    with Trace(model, optimizer, criterion, db=tmp_path / "r.db", queue_size=1) as run:
        _loop(
            run,
            model,
            optimizer,
            criterion,
            x,
            y,
            8,
            lambda i: seen.append(run._pipeline.in_flight),
        )
    # One waiting in the queue, one in the worker's hands.
    assert max(seen) <= 2 and run.stored == 8


def _waiting_hints(run_options: dict, tmp_path, iterations: int, between=None) -> list[str]:
    # LeNet-5 at its default bound: the worker takes several of its steps per iteration.
    config = resolve(model_name="lenet5", seed=0, iterations=1)
    model, optimizer, criterion, x, y = prepare(config)
    x, y = x[: config.batch_size], y[: config.batch_size]
    options = {"max_elements": config.max_elements, "queue_size": 1, **run_options}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Trace(model, optimizer, criterion, db=tmp_path / "r.db", **options) as run:
            _loop(run, model, optimizer, criterion, x, y, iterations, between)
    return [str(w.message) for w in caught if "waited for the worker" in str(w.message)]


def test_a_run_that_waited_for_the_worker_says_how_to_keep_up(tmp_path, monkeypatch):
    # The threshold is for real runs (seconds); 6 iterations wait a fraction of one.
    monkeypatch.setattr(session, "WAIT_HINT_SECONDS", 0.05)
    (hint,) = _waiting_hints({}, tmp_path, 6)
    every = int(re.search(r"`every=(\d+)` or more \(`--every \1`\)", hint).group(1))
    assert every >= 2
    assert re.search(r"waited for the worker \d+\.\d s of \d+\.\d s \(\d+%\)", hint)
    # A loop slower than the worker (data loading, say) never waits for it. (The worker
    # takes about 0.1 s an iteration here, several times that on a loaded CI machine;
    # the modules it imports once were imported by the run above.)
    assert _waiting_hints({}, tmp_path / "slow", 4, lambda i: time.sleep(0.6)) == []


def test_the_byte_bound_holds_what_is_captured_and_not_yet_written(tmp_path):
    model, optimizer, criterion, x, y = _seed_setup()
    with Trace(model, optimizer, criterion, db=tmp_path / "alone.db", queue_bytes=1) as run:
        _loop(run, model, optimizer, criterion, x, y, 4)
    one = run._estimate  # the bytes of one captured iteration
    assert one > 0 and run.stored == 4
    # The first also holds autograd's dL/d(input); the worker computes it for the
    # others (tracer.capture.inputgrad), after their copies are counted.
    first = one + _stored(tmp_path / "alone.db")[1][0].tensor("input.grad").array.nbytes
    # A bound under one iteration: each goes through alone, after the one before it
    # is written (nothing waits in the queue, nothing deadlocks).
    assert run._pipeline.budget.peak == first and run._pipeline.budget.held == 0
    model, optimizer, criterion, x, y = _seed_setup()  # the same run again
    seen = []
    bound = int(2.5 * one)  # room for two iterations: one in the worker, one captured
    with Trace(model, optimizer, criterion, db=tmp_path / "two.db", queue_bytes=bound) as run:
        count = lambda i: seen.append(run._pipeline.in_flight)  # noqa: E731
        _loop(run, model, optimizer, criterion, x, y, 8, count)
    assert run.stored == 8 and one <= run._pipeline.budget.peak <= 2 * first <= bound
    assert max(seen) <= 2
    _same_records(_stored(tmp_path / "alone.db")[1][:4], _stored(tmp_path / "two.db")[1][:4])


def test_an_iteration_that_raises_gives_its_reserved_bytes_back(tmp_path):
    model, optimizer, criterion, x, y = _seed_setup()
    with Trace(model, optimizer, criterion, db=tmp_path / "r.db", queue_bytes=1) as run:
        _loop(run, model, optimizer, criterion, x, y, 2)
        with pytest.raises(ValueError):
            with run.iteration():
                raise ValueError("the user's bug, caught by the user")
        assert run._pipeline.budget.held <= run._estimate  # (the last one may be in hand)
        _loop(run, model, optimizer, criterion, x, y, 2)  # no wait for bytes never given back
    assert run.stored == 4 and run._pipeline.budget.held == 0


def test_the_byte_bound_waits_for_the_worker_and_lets_a_large_job_through_alone():
    handled, held = [], []

    def handle(job):
        held.append(pipeline.budget.held)  # what is held while the worker is busy
        threading.Event().wait(0.02)  # a worker slower than the loop
        handled.append(job)

    pipeline = Background(handle, maxsize=10, max_bytes=250)
    try:
        for job, size in enumerate([100, 100, 100, 1000, 100, 100]):
            reserved = pipeline.reserve(size)
            pipeline.put(job, size, reserved)
    finally:
        pipeline.close()
    assert handled == [0, 1, 2, 3, 4, 5]
    assert pipeline.budget.peak == 1000 and pipeline.budget.held == 0
    assert held[3] == 1000  # the large job alone: the ones before it were written first
    assert max(held[:3] + held[4:]) <= 250


def test_queue_bytes_reads_sizes():
    from tracer.pipeline import parse_bytes

    assert parse_bytes("512MiB") == parse_bytes("512M") == 512 * 2**20
    assert parse_bytes("1.5GiB") == 3 * 2**29 and parse_bytes("500MB") == 500 * 10**6
    assert parse_bytes(4096) == parse_bytes("4096") == parse_bytes("4 KiB") == 4096
    for bad in ("0", 0, -1, "lots", "5 MiB more", True, 1.5, ""):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_ctrl_c_marks_the_run_interrupted_and_keeps_whole_iterations(tmp_path):
    model, optimizer, criterion, x, y = _seed_setup()

    def interrupt(i):
        if i == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with Trace(model, optimizer, criterion, db=tmp_path / "r.db", queue_size=2) as run:
            _loop(run, model, optimizer, criterion, x, y, 10, interrupt)
    info, records = _stored(tmp_path / "r.db")
    assert info.status == RUN_INTERRUPTED and info.num_iterations == len(records) >= 1
    assert [r.index for r in records] == list(range(1, len(records) + 1))
    for record in records:
        assert len(record.steps) == 23 and all(s.verified for s in record.steps)


def test_an_exception_in_the_loop_writes_the_captured_iterations_first(tmp_path):
    model, optimizer, criterion, x, y = _seed_setup()

    def fail(i):
        if i == 2:
            raise ValueError("the user's bug")

    with pytest.raises(ValueError, match="the user's bug"):
        with Trace(model, optimizer, criterion, db=tmp_path / "r.db", queue_size=4) as run:
            _loop(run, model, optimizer, criterion, x, y, 10, fail)
    info, records = _stored(tmp_path / "r.db")
    assert info.status == RUN_FAILED and info.error == "ValueError: the user's bug"
    assert [r.index for r in records] == [1, 2, 3]


@pytest.mark.parametrize(
    "options",
    [
        dict(explain="later"),
        dict(explain=None),
        dict(queue_size=0),
        dict(queue_size=True),
        dict(queue_bytes=0),
        dict(queue_bytes="a lot"),
        dict(worker="fiber"),
    ],
)
def test_bad_pipeline_options_are_rejected_before_the_store_is_touched(tmp_path, options):
    model, optimizer, criterion, _, _ = _seed_setup()
    with pytest.raises(ValueError):
        Trace(model, optimizer, criterion, db=tmp_path / "r.db", **options)
    assert not (tmp_path / "r.db").exists()


def test_numpy_runs_on_one_thread_in_builtin_runs():
    from threadpoolctl import threadpool_info

    from tracer.train import one_torch_thread

    with one_torch_thread():
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    assert np.ones(3).sum() == 3


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread priorities here")
def test_the_worker_thread_runs_nicer_than_the_training_thread():
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    seen: list[int] = []
    worker = Background(lambda job: seen.append(niceness()))
    worker.put(1)
    worker.close()
    assert WORKER_NICENESS > 0
    assert seen == [min(19, niceness() + WORKER_NICENESS)]


def test_without_the_input_gradient_the_first_layer_is_not_checked_against_it(tmp_path):
    model, optimizer, criterion, x, y = _seed_setup()
    with Trace(model, optimizer, criterion, db=tmp_path / "r.db", input_grad=False) as run:
        with run.iteration():
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
    _, (record,) = _stored(tmp_path / "r.db")
    assert not [t for t in record.tensors if t.role == "input_grad"]
    checked = [s for s in record.steps if s.verified is not None]
    assert checked and all(s.verified for s in checked)
    assert any("not computed by autograd" in (s.reference or "") for s in record.steps)
