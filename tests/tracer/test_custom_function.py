"""A custom torch.autograd.Function is one unit: stored raw under its class name with
its inputs, outputs and gradients, a warning names it, and the ops in its forward are
not explained as if they were a layer (a straight-through estimator is no ReLU)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from storage import RunStore
from tracer.session import Trace, TraceWarning


class STE(torch.autograd.Function):
    """Straight-through estimator: ReLU forward, identity backward."""

    @staticmethod
    def forward(ctx, x):
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        h = STE.apply(self.fc1(x))
        h = Square.apply(Square.apply(h))  # one Function's output fed to another
        return self.fc2(h)


def _run(db=None, loss_side=False):
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])

    def step():
        optimizer.zero_grad()
        out = model(x)
        if loss_side:  # applied outside the model's forward, read by the criterion
            out = Square.apply(out)
        criterion(out, y).backward()
        optimizer.step()

    if db is None:
        for _ in range(2):
            step()
        return model, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Trace(model, optimizer, criterion, db=db, strict=True) as run:
            for _ in range(2):
                with run.iteration():
                    step()
    messages = [str(w.message) for w in caught if issubclass(w.category, TraceWarning)]
    return model, (run, messages)


@pytest.mark.parametrize("loss_side", [False, True])
def test_a_custom_function_is_one_raw_unit_named_by_its_class(db_path, loss_side):
    plain, _ = _run(loss_side=loss_side)
    traced, (run, messages) = _run(db_path, loss_side=loss_side)
    for a, b in zip(plain.parameters(), traced.parameters(), strict=True):
        assert torch.equal(a, b)  # tracing changed nothing
    with RunStore(db_path) as store:
        layers = [(layer.name, layer.type) for layer in store.get_run(run.run_id).layers]
        record = store.load_iteration(run.run_id, 2)
    expected = [("fc1", "Linear"), ("STE", "STE"), ("Square", "Square"), ("Square#2", "Square")]
    expected += [("fc2", "Linear")]
    if loss_side:
        expected.append(("Square#3", "Square"))
    assert layers == [*expected, ("loss", "CrossEntropyLoss")]  # no relu, no mul
    for name in ("STE", "Square", "Square#2"):
        assert any(m.startswith(f"cnnviz: {name} (") and "autograd.Function" in m for m in messages)
    assert not any("differs from PyTorch" in m for m in messages)
    assert all(s.verified is not False for s in record.steps)

    t = {tensor.name: tensor.array.astype(np.float64) for tensor in record.tensors}
    # STE: relu forward, the gradient passed straight through
    np.testing.assert_array_equal(t["STE.out"], np.maximum(t["fc1.out"], 0))
    np.testing.assert_array_equal(t["fc1.out.grad"], t["STE.out.grad"])
    # Square: x * x forward, 2 x g backward; the second reads the first's output
    np.testing.assert_allclose(t["Square.out"], t["STE.out"] ** 2, rtol=1e-6)
    np.testing.assert_allclose(t["Square#2.out"], t["Square.out"] ** 2, rtol=1e-6)
    np.testing.assert_allclose(
        t["Square.out.grad"], 2 * t["Square.out"] * t["Square#2.out.grad"], rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        t["STE.out.grad"], 2 * t["STE.out"] * t["Square.out.grad"], rtol=1e-5, atol=1e-7
    )
    steps = [s for s in record.steps if s.layer == "Square#2"]
    assert [s.phase for s in steps] == ["forward", "backward"]
    assert steps[0].inputs == ["Square.out"] and steps[0].outputs == ["Square#2.out"]
    assert "autograd.Function" in steps[0].note
    if loss_side:
        np.testing.assert_allclose(t["Square#3.out"], t["fc2.out"] ** 2, rtol=1e-6)


class Cube(torch.autograd.Function):
    """The setup_context style: forward takes no ctx."""

    @staticmethod
    def forward(x, scale):
        return x.pow(3) * scale

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.scale = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x.square() * ctx.scale * grad, None


def test_a_function_without_ctx_in_forward_is_one_unit_too(db_path):
    class CubeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return Cube.apply(self.fc(x), 0.5)

    torch.manual_seed(0)
    model, criterion = CubeNet(), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(TraceWarning, match=r"Cube \(Cube, called as .*Cube.apply\)"):
        with Trace(model, optimizer, criterion, db=db_path) as run:
            with run.iteration():
                criterion(model(torch.randn(4, 3)), torch.tensor([0, 1, 2, 0])).backward()
                optimizer.step()
    with RunStore(db_path) as store:
        layers = [layer.name for layer in store.get_run(run.run_id).layers]
        t = {x.name: x.array for x in store.load_iteration(run.run_id, 1).tensors}
    assert layers == ["fc", "Cube", "loss"]
    np.testing.assert_allclose(t["Cube.out"], t["fc.out"] ** 3 * 0.5, rtol=1e-5)
    np.testing.assert_allclose(
        t["fc.out.grad"], 1.5 * t["fc.out"] ** 2 * t["Cube.out.grad"], rtol=1e-4, atol=1e-7
    )
