"""What is stored can be bounded: every k-th iteration, at most N elements per
tensor (keeping the full shape and statistics of the full tensor), chosen layers
only; the records stay complete enough for the dashboard to read."""

from __future__ import annotations

import math
import re
import sqlite3

import numpy as np
import pytest

from storage import RunStore
from tracer.train import run_builtin

LENET = dict(model_name="lenet5", samples=8, batch_size=4, seed=2)


def _records(path, run_id):
    with RunStore(path) as store:
        return store.iterations(run_id), [
            store.load_iteration(run_id, s.index) for s in store.iterations(run_id)
        ]


def test_every_k_stores_iterations_1_1_plus_k_and_so_on(db_path):
    run = run_builtin(samples=2, batch_size=1, iterations=7, every=3, db=db_path, strict=True)
    summaries, records = _records(db_path, run.run_id)
    assert [s.index for s in summaries] == [1, 4, 7]
    assert (run.index, run.stored) == (7, 3)
    assert [r.loss for r in records] == run.losses
    with RunStore(db_path) as store:
        assert store.get_run(run.run_id).num_iterations == 3


@pytest.fixture(scope="module")
def full_and_bounded(tmp_path_factory):
    """LeNet-5 traced twice from the same seed: all elements, and at most 100 per tensor
    (every sample explained, so that the explainers' matrices are those of the full run)."""
    root = tmp_path_factory.mktemp("bounds")
    full = run_builtin(**LENET, iterations=1, max_elements=None, db=root / "full.db", strict=True)
    bounded = run_builtin(
        **LENET,
        iterations=1,
        max_elements=100,
        db=root / "bounded.db",
        strict=True,
        full_check=True,
    )
    return (
        _records(root / "full.db", full.run_id)[1][0],
        _records(root / "bounded.db", bounded.run_id)[1][0],
        root / "bounded.db",
    )


def test_max_elements_truncates_but_keeps_shape_and_full_statistics(full_and_bounded):
    full, bounded, _ = full_and_bounded
    assert [t.name for t in full.tensors] == [t.name for t in bounded.tensors]
    truncated = 0
    for whole, part in zip(full.tensors, bounded.tensors, strict=True):
        assert part.shape == whole.shape == tuple(whole.array.shape), part.name
        flat = whole.array.reshape(-1)
        if flat.size > 100:
            truncated += 1
            assert part.truncated and part.array.size == 100
            np.testing.assert_array_equal(
                part.array.reshape(-1), flat[:100]
            )  # the first 100, C order
            for key in ("min", "max", "mean", "std", "l2"):
                assert part.summary[key] == pytest.approx(
                    whole.summary[key], rel=1e-9, abs=1e-12
                ), (part.name, key)
        else:
            assert not part.truncated
            np.testing.assert_array_equal(part.array, whole.array)
    assert truncated > 20  # conv maps, X_col, fc1.weight, ...
    # The steps are the same steps, with the same numbers in their formulas.
    assert [(s.title, s.formula_values, s.verified) for s in full.steps] == [
        (s.title, s.formula_values, s.verified) for s in bounded.steps
    ]


def test_bounded_explanation_checks_the_samples_stored(full_and_bounded, tmp_path):
    """By default a bound also bounds the explanation: a call whose samples are independent
    is explained and checked on the samples it stores, and each of its steps says so."""
    full, _, _ = full_and_bounded
    run = run_builtin(**LENET, iterations=1, max_elements=100, db=tmp_path / "s.db", strict=True)
    _, (sampled,) = _records(tmp_path / "s.db", run.run_id)
    assert [t.name for t in full.tensors] == [t.name for t in sampled.tensors]
    for whole, part in zip(full.tensors, sampled.tensors, strict=True):
        if part.role == "intermediate":
            continue  # the explainers' matrices of the kept sample (X_col: one sample's rows)
        # Everything captured is stored as before: the first 100 elements, full statistics.
        assert part.shape == whole.shape, part.name
        np.testing.assert_array_equal(part.array.reshape(-1), whole.array.reshape(-1)[:100])
        assert part.summary["l2"] == pytest.approx(whole.summary["l2"], rel=1e-9, abs=1e-12)
    x_col = sampled.tensor("conv1.X_col")
    assert x_col.shape == (28 * 28, 25)  # sample 1 of 4
    assert [(s.layer, s.phase, s.title) for s in full.steps] == [
        (s.layer, s.phase, s.title) for s in sampled.steps
    ]
    # conv1's input keeps 100 of 1024 elements per sample: sample 1; fc2's output 100 of
    # 84 per sample: samples 1-2 (every number stored of each tensor is checked).
    note = re.compile(r"Checked on (sample 1|samples 1-\d) of 4, the samples? stored")
    for step in sampled.steps:
        assert step.verified is not False, step.title
        # fc3's tensors (10 and 84 elements per sample) are stored whole: all 4 explained.
        per_sample = step.phase != "update" and step.layer.startswith(
            ("conv", "relu", "pool", "flatten", "fc1", "fc2")
        )
        assert bool(note.search(step.note)) == per_sample, (step.layer, step.title, step.note)
    assert "Checked on sample 1 of 4, the sample stored" in sampled.steps[0].note
    unchecked = [s for s in sampled.steps if s.verified is None and s.reference]
    # The weight and bias gradients of the kept sample: autograd's sum has all 4.
    assert {s.layer for s in unchecked} == {"conv1", "conv2", "fc1", "fc2"}
    assert all("sums all 4 (a full check compares it)" in s.reference for s in unchecked)
    checked = [s for s in sampled.steps if s.verified]
    assert len(checked) == len([s for s in full.steps if s.verified]) - len(unchecked)


def test_truncated_tensors_are_plain_rows_in_sql(full_and_bounded):
    *_, path = full_and_bounded
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    numel, stored, shape = conn.execute(
        "select numel, stored_numel, shape from tensors where name = 'conv1.out'"
    ).fetchone()
    assert (numel, stored) == (4 * 6 * 28 * 28, 100) and shape == "[4, 6, 28, 28]"
    (length,) = conn.execute(
        "select length(d.data) from tensor_data d join tensors t on t.id = d.tensor_id "
        "where t.name = 'conv1.out'"
    ).fetchone()
    conn.close()
    assert length == 100 * 4  # float32


def test_layers_stores_only_the_chosen_layers_tensors(db_path):
    run = run_builtin(**LENET, iterations=1, layers="conv2,fc3", db=db_path, strict=True)
    _, (record,) = _records(db_path, run.run_id)
    layers = {t.layer for t in record.tensors}
    assert layers == {None, "conv2", "fc3"}  # None: input, target, input.grad
    names = {t.name for t in record.tensors}
    assert {
        "input",
        "target",
        "conv2.weight",
        "conv2.X_col",
        "fc3.weight.next",
        "fc3.out.grad",
    } <= names
    assert not any(n.startswith(("conv1.", "fc1.", "loss.")) for n in names)
    # Every layer's steps are still there; they only name tensors that were stored.
    assert {s.layer for s in record.steps} >= {"conv1", "relu1", "fc1", "loss", "fc3"}
    for step in record.steps:
        assert set(step.inputs) | set(step.outputs) <= names
    assert math.isfinite(record.loss)


def test_cli_bounds_options(tmp_path, capsys):
    from tracer.cli import main

    db = tmp_path / "runs.db"
    main(
        [
            "trace",
            "--db",
            str(db),
            "--model",
            "lenet5",
            "--samples",
            "4",
            "--iterations",
            "3",
            "--every",
            "2",
            "--max-elements",
            "all",
            "--layers",
            "fc3",
        ]
    )
    assert "run 1 'lenet5-seed0' stored" in capsys.readouterr().out
    summaries, records = _records(db, 1)
    assert [s.index for s in summaries] == [1, 3]
    assert not any(t.truncated for t in records[0].tensors)
    assert {t.layer for t in records[0].tensors} == {None, "fc3"}
    with RunStore(db) as store:
        config = store.get_run(1).config
    assert (config["every"], config["max_elements"], config["layers"]) == (2, None, ["fc3"])


@pytest.mark.parametrize("name", ["lenet5", "small-cnn"])
def test_the_default_bound_keeps_the_first_sample_whole(db_path, name):
    run = run_builtin(
        model_name=name, samples=8, batch_size=8, iterations=1, db=db_path, strict=True
    )
    _, (record,) = _records(db_path, run.run_id)
    per_sample = [
        t
        for t in record.tensors
        if t.role in ("input", "input_grad", "activation", "activation_grad") and len(t.shape) > 1
    ]
    assert len(per_sample) > 10
    assert any(t.truncated for t in per_sample)
    for tensor in per_sample:
        assert tensor.array.size >= math.prod(tensor.shape[1:]), tensor.name
