"""Bad input at the edges (issue 9): one line, exit 2, no traceback, and the
store's bytes unchanged. Real processes against a real store file."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from dashapp import layouts
from storage import NAME_MAX, RunInfo, Store, StoreError, TensorRecord
from storage.records import IterationRecord

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


@pytest.fixture
def store_file(db_path):
    with Store.open(db_path, mode="w") as store:
        writer = store.begin_run(RunInfo(name="kept", seed=1))
        writer.add_iteration(IterationRecord(index=1, loss=0.5, tensors=[], steps=[]))
        writer.finish()
    return db_path


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", str(2**32)], "--seed"),
        (["--seed", str(2**63)], "--seed"),
        (["--seed", str(2**64 + 5)], "--seed"),
        (["--seed", "-1"], "--seed"),
        (["--name", "x" * (NAME_MAX + 1)], f"at most {NAME_MAX} fit the store"),
        (["--name", "x" * 10_000], "10000 characters long"),
        (["--model", "lenet5", "--epochs", "1000000000"], "--allow-large"),
    ],
)
def test_bad_trace_input_is_one_line_and_exit_2(store_file, cli_env, args, message):
    before = hashlib.sha256(store_file.read_bytes()).hexdigest()
    result = _cnnviz(["trace", "--db", str(store_file), *args], cli_env)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert message in line and "Traceback" not in result.stderr
    assert hashlib.sha256(store_file.read_bytes()).hexdigest() == before


def test_seeds_torch_tells_apart_are_accepted_up_to_2_to_the_32():
    from tracer.train import resolve

    assert resolve(seed=2**32 - 1).seed == 2**32 - 1
    with pytest.raises(Exception, match="2\\^32 - 1"):
        resolve(seed=2**32)


def test_the_store_refuses_names_longer_than_the_column(store_file):
    before = store_file.read_bytes()
    with Store.open(store_file, mode="w") as store:
        with pytest.raises(StoreError, match=f"run name is 201 characters long; .* {NAME_MAX}"):
            store.begin_run(RunInfo(name="y" * 201))
    assert (
        store_file.read_bytes() == before or Store.open(store_file).list_runs()[-1].name == "kept"
    )


def test_a_diverged_run_says_where_it_diverged(db_path):
    with Store.open(db_path, mode="w") as store:
        writer = store.begin_run(RunInfo(name="nan"))
        tensor = TensorRecord("w", "param", np.full(3, np.nan, dtype=np.float32))
        for index, loss in enumerate([0.7, float("nan"), float("inf")], start=1):
            writer.add_iteration(
                IterationRecord(index=index, loss=loss, tensors=[tensor], steps=[])
            )
        writer.finish()
    with Store.open(db_path) as store:
        (run,) = store.list_runs()
    assert run.status == "completed" and run.divergence == "NaN at iteration 2"
    assert run.status_text == "diverged (NaN at iteration 2)"
    badge = layouts.status_badge(run)
    assert badge.children == "diverged (NaN at iteration 2)" and badge.color == "danger"


def test_names_are_bidi_isolated_where_shown():
    run = RunInfo(name="abc\u202edef", seed=0, id=3)
    label = layouts.run_label(run)
    assert label == "#3 \u2068abc\u202edef\u2069, seed 0"


def test_cli_lists_a_diverged_run_as_diverged(db_path, cli_env):
    with Store.open(db_path, mode="w") as store:
        writer = store.begin_run(RunInfo(name="nan"))
        writer.add_iteration(IterationRecord(index=1, loss=float("nan"), tensors=[], steps=[]))
        writer.finish()
    result = _cnnviz(["runs", "--db", str(db_path)], cli_env)
    assert result.returncode == 0
    assert "diverged (NaN at iteration 1)" in result.stdout


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_nan_gradients_are_a_divergence_not_an_accumulation(db_path):
    """NaN != NaN: a NaN gradient used to look like .grad holding more than this
    iteration's backward, with a false "no zero_grad" warning and a .grad_before."""
    import torch
    from torch import nn

    from tracer import trace

    torch.manual_seed(0)
    model, criterion = nn.Linear(3, 2), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.full((2, 3), float("nan")), torch.tensor([0, 1])
    with trace(model, optimizer, criterion, db=db_path, name="nan") as t:
        with t.iteration():
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
    with Store.open(db_path) as store:
        record = store.load_iteration(t.run_id, 1)
        run = store.get_run(t.run_id)
    assert np.isnan(record.tensor("weight.grad").array).all()
    assert not any("zero_grad" in w for w in record.warnings), record.warnings
    assert not any(t.name.endswith(".grad_before") for t in record.tensors)
    assert run.status_text == "diverged (NaN at iteration 1)"
