"""dL/d(input) from the worker (tracer.capture.inputgrad): after the first traced
iteration shows that PyTorch's convolution backward on the captured tensors gives
autograd's array bit for bit, autograd no longer computes it during the step; what
is stored is still exactly what autograd gives, and the steps say where it came from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from storage import RunStore
from tracer import Trace
from tracer.train import prepare, resolve


def _stored(path):
    with RunStore(path) as store:
        (run,) = store.list_runs()
        return [store.load_iteration(run.id, s.index) for s in store.iterations(run.id)]


def _input_checks(record, layer):
    """The references of the steps of `layer` checked against dL/d(input)."""
    return [
        (s.reference, s.verified)
        for s in record.steps
        if s.layer == layer and s.reference and "dL/dX" in s.reference
    ]


def _requires_grad_seen(module):
    """Whether the input `module` was called with required grad, per call."""
    seen = []
    module.register_forward_pre_hook(lambda m, args: seen.append(args[0].requires_grad))
    return seen


@pytest.mark.parametrize(
    "explain, bound",
    [("background", None), ("background", 5000), ("off", 5000)],
    ids=["background", "background, default bound", "off, default bound"],
)
def test_after_the_first_iteration_the_worker_computes_autograds_input_gradient(
    tmp_path, explain, bound
):
    config = resolve(model_name="lenet5", seed=3, batch_size=8, samples=24, iterations=3)
    model, optimizer, criterion, x, y = prepare(config)
    seen = _requires_grad_seen(model.conv1)
    with Trace(
        model, optimizer, criterion, db=tmp_path / "r.db", explain=explain, max_elements=bound
    ) as run:
        for i in range(3):
            with run.iteration():
                optimizer.zero_grad()
                criterion(model(x[8 * i : 8 * i + 8]), y[8 * i : 8 * i + 8]).backward()
                optimizer.step()
    # Autograd computed it on the first iteration only: the training step after that
    # is the plain one.
    assert seen == [True, False, False]

    # The same run untraced, with autograd computing dL/d(input) every time.
    model, optimizer, criterion, x, y = prepare(config)
    expected = []
    for i in range(3):
        xb = x[8 * i : 8 * i + 8].clone().requires_grad_(True)
        optimizer.zero_grad()
        criterion(model(xb), y[8 * i : 8 * i + 8]).backward()
        optimizer.step()
        expected.append(xb.grad.numpy().copy())

    records = _stored(tmp_path / "r.db")
    assert len(records) == 3
    for record, theirs in zip(records, expected, strict=True):
        stored = record.tensor("input.grad")
        assert stored.role == "input_grad" and stored.shape == theirs.shape
        kept = theirs.reshape(-1)[: stored.array.size]  # a bound keeps the first elements
        assert stored.array.dtype == theirs.dtype and stored.array.tobytes() == kept.tobytes()
    if explain == "background":
        first, *later = (_input_checks(r, "conv1") for r in records)
        assert first == [("autograd dL/dX", True)]
        for checks in later:
            ((reference, verified),) = checks
            assert verified is True
            assert reference.startswith("PyTorch dL/dX (aten.convolution_backward, ")
            assert "bit for bit on the first traced iteration" in reference


class _Twice(nn.Module):
    """The input goes into the convolution and, again, into a skip connection."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc((self.conv(x) + x).flatten(1))


class _Same(nn.Module):
    """padding="same": the module pads on its own, which the worker does not redo."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding="same")
        self.fc = nn.Linear(32, 2)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


@pytest.mark.parametrize("make", [_Twice, _Same], ids=["input used twice", "padding same"])
def test_where_the_worker_cannot_autograd_keeps_computing_the_input_gradient(tmp_path, make):
    torch.manual_seed(0)
    model = make()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(3, 4, 1, 4, 4), torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]])
    seen = _requires_grad_seen(model.conv)
    with Trace(model, optimizer, criterion, db=tmp_path / "r.db") as run:
        for i in range(3):
            with run.iteration():
                optimizer.zero_grad()
                criterion(model(x[i]), y[i]).backward()
                optimizer.step()
    assert seen == [True, True, True]
    for record in _stored(tmp_path / "r.db"):
        assert record.tensor("input.grad").array.shape == (4, 1, 4, 4)
        references = [s.reference or "" for s in record.steps]
        assert not any("aten.convolution_backward" in r for r in references)
        assert all(s.verified is not False for s in record.steps)
        assert np.isfinite(record.tensor("input.grad").array).all()


def test_an_iteration_without_a_backward_has_no_input_gradient_and_no_warning(tmp_path):
    config = resolve(model_name="seed-cnn", seed=0, iterations=1)
    model, optimizer, criterion, x, y = prepare(config)
    with Trace(model, optimizer, criterion, db=tmp_path / "r.db") as run:
        with run.iteration():  # decides that the worker computes dL/d(input)
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        with run.iteration():  # a forward and the loss only (an evaluation, say)
            criterion(model(x), y)
    first, second = _stored(tmp_path / "r.db")
    assert first.tensor("input.grad").array.shape == x.shape
    assert "input.grad" not in [t.name for t in second.tensors]
    assert not [w for w in second.warnings if "input" in w]
