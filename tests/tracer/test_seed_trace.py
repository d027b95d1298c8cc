"""The seed CNN traced end to end: every step verified against autograd, for many
seeds and batch sizes, with the awkward cases (maxpool ties, ReLU zeros) forced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from storage import RunStore
from tracer.models import SeedCNN, bars_4x4
from tracer.session import Trace
from tracer.train import run_builtin

TOL = 1e-6  # float32 agreement between our float64 matrix code and PyTorch

EXPECTED_STEPS = [
    ("conv", "forward"),
    ("conv", "forward"),
    ("conv", "forward"),
    ("relu", "forward"),
    ("pool", "forward"),
    ("flatten", "forward"),
    ("fc", "forward"),
    ("loss", "forward"),
    ("loss", "forward"),
    ("loss", "backward"),
    ("fc", "backward"),
    ("fc", "backward"),
    ("fc", "backward"),
    ("flatten", "backward"),
    ("pool", "backward"),
    ("relu", "backward"),
    ("conv", "backward"),
    ("conv", "backward"),
    ("conv", "backward"),
    ("conv", "update"),
    ("conv", "update"),
    ("fc", "update"),
    ("fc", "update"),
]


def _all_steps(path, run_id):
    with RunStore(path) as store:
        return [store.load_iteration(run_id, s.index) for s in store.iterations(run_id)]


def _assert_verified(records):
    for record in records:
        assert [(s.layer, s.phase) for s in record.steps] == EXPECTED_STEPS
        for step in record.steps:
            assert step.verified is True, (record.index, step.title, step.reference)
            assert step.max_abs_diff is not None and step.max_abs_diff <= TOL, step.title
        assert record.warnings == []


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("samples", [1, 3])
def test_every_step_matches_autograd(tmp_path, seed, samples):
    run = run_builtin(seed=seed, samples=samples, epochs=2, db=tmp_path / "r.db", strict=True)
    _assert_verified(_all_steps(tmp_path / "r.db", run.run_id))


def test_mini_batches_and_the_mean_reduction(tmp_path):
    run = run_builtin(seed=5, samples=5, batch_size=2, epochs=2, db=tmp_path / "r.db", strict=True)
    records = _all_steps(tmp_path / "r.db", run.run_id)
    assert [r.tensor("input").shape[0] for r in records] == [2, 2, 1, 2, 2, 1]
    _assert_verified(records)
    grad_step = next(s for s in records[0].steps if s.title.startswith("Gradient of the loss"))
    assert r"\frac{1}{2}" in grad_step.formula_values  # the 1/N of the mean is visible
    assert "N = 2" in grad_step.note


def _trace_with(tmp_path, set_weights, x):
    torch.manual_seed(0)
    model = SeedCNN()
    with torch.no_grad():
        set_weights(model)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Trace(model, optimizer, criterion, db=tmp_path / "r.db", strict=True) as run:
        with run.iteration():
            optimizer.zero_grad()
            criterion(model(x), torch.tensor([1])).backward()
            optimizer.step()
    return _all_steps(tmp_path / "r.db", run.run_id)[0]


def test_maxpool_ties_route_like_pytorch(tmp_path):
    def constant_conv(model):  # every conv output equals the bias: all windows tie
        model.conv.weight.zero_()
        model.conv.bias.fill_(0.5)

    record = _trace_with(tmp_path, constant_conv, torch.randn(1, 1, 4, 4))
    _assert_verified([record])
    argmax = record.tensor("pool.argmax").array.reshape(2, 2)
    # The first maximum in row-major window order wins: each window's top-left.
    assert argmax.tolist() == [[0, 1], [3, 4]]
    counts = record.tensor("pool.route_count").array.reshape(3, 3)
    assert counts.sum() == 4


def test_overlapping_windows_accumulate(tmp_path):
    def centre_peak(model):  # a kernel that picks the top-left pixel of each patch
        model.conv.weight.copy_(torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]))
        model.conv.bias.zero_()

    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 5.0  # conv output peaks at (1, 1), the centre shared by all 4 windows
    record = _trace_with(tmp_path, centre_peak, x)
    _assert_verified([record])
    counts = record.tensor("pool.route_count").array.reshape(3, 3)
    assert counts[1, 1] == 4 and counts.sum() == 4
    dy = record.tensor("pool.out.grad").array.reshape(-1)
    dx = record.tensor("relu.out.grad").array.reshape(3, 3)
    assert dx[1, 1] == pytest.approx(dy.sum(), abs=1e-7)
    step = next(s for s in record.steps if s.layer == "pool" and s.phase == "backward")
    assert "accumulate" in step.title
    assert (
        r"\tfrac{\partial L}{\partial Y_{0,0}} + \tfrac{\partial L}{\partial Y_{0,1}}"
        in step.formula_values
    )
    assert "1 element(s) won more than one overlapping window" in step.note


def test_relu_exact_zeros(tmp_path):
    def zero_conv(model):
        model.conv.weight.zero_()
        model.conv.bias.zero_()

    record = _trace_with(tmp_path, zero_conv, torch.randn(1, 1, 4, 4))
    _assert_verified([record])
    assert not record.tensor("relu.mask").array.any()
    assert not record.tensor("conv.out.grad").array.any()
    relu_back = next(s for s in record.steps if s.layer == "relu" and s.phase == "backward")
    assert "exactly 0" in relu_back.note


def test_same_seed_is_bitwise_identical_and_seeds_differ(tmp_path):
    paths = [tmp_path / "a.db", tmp_path / "b.db", tmp_path / "c.db"]
    for path, seed in zip(paths, (0, 0, 1)):
        run_builtin(seed=seed, db=path, strict=True)
    a, b, c = (_all_steps(p, 1) for p in paths)
    for ra, rb in zip(a, b):
        assert [t.name for t in ra.tensors] == [t.name for t in rb.tensors]
        for ta, tb in zip(ra.tensors, rb.tensors):
            assert ta.array.tobytes() == tb.array.tobytes(), ta.name
        assert [s.formula_values for s in ra.steps] == [s.formula_values for s in rb.steps]
    assert not np.array_equal(a[0].tensor("conv.weight").array, c[0].tensor("conv.weight").array)


def test_data_is_deterministic_and_labelled():
    x1, y1 = bars_4x4(6, seed=2)
    x2, y2 = bars_4x4(6, seed=2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert set(y1.tolist()) == {0, 1}
    assert x1.shape == (6, 1, 4, 4)


def test_training_lowers_the_loss(tmp_path):
    run = run_builtin(seed=0, epochs=3, db=tmp_path / "r.db", strict=True)
    assert run.losses[0] > run.losses[1] > run.losses[2]


def test_formulas_read_like_the_stored_tensors(tmp_path):
    run = run_builtin(seed=0, db=tmp_path / "r.db", strict=True)  # seed 0: negative conv bias
    (record,) = _all_steps(tmp_path / "r.db", run.run_id)[:1]
    steps = {s.title: s for s in record.steps}
    assert record.tensor("relu.mask").array.dtype.kind == "i"  # 0/1 as in the formula
    assert record.tensor("conv.bias").array[0] < 0
    assert "+ -" not in steps["Convolution as one matrix product"].formula_values
    assert " - " in steps["Convolution as one matrix product"].formula_values
    assert steps["Cross-entropy loss"].formula_values.startswith(r"y = ")
    assert r"L = -\log p_{" in steps["Cross-entropy loss"].formula_values
    assert "A_{c,i,j}" in steps["Flatten"].formula
    # One sample: z and p are 1-row matrices, like loss.probs and fc.out.
    softmax = steps["Softmax: logits to probabilities"].formula_values
    assert softmax.count(r"\\") == 0  # a single row: no row separators
