"""The private torch entry points behind tracer/capture/torchapi.py, and the
fallbacks taken on a torch release without them: the same model traces to the same
records either way (activation checkpointing, two forwards in one iteration, a
TorchFunctionMode of the user's inside forward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.utils.checkpoint
from torch import nn
from torch.overrides import TorchFunctionMode

from tracer.assemble import build_iteration
from tracer.capture import Capture, torchapi


class UserMode(TorchFunctionMode):
    """A mode of the user's, entered inside forward with `with`."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6))
        self.head = nn.Linear(6, 3)
        self.mode = UserMode()

    def forward(self, x):
        h = torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=False)
        with self.mode:
            h = torch.tanh(h)
        return self.head(h)


def _trace_twice_per_iteration():
    """Two forwards and backwards in one iteration (gradient accumulation)."""
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    capture = Capture(model, optimizer, criterion).attach()
    try:
        capture.start()
        optimizer.zero_grad()
        for half in (slice(0, 3), slice(3, 5)):
            criterion(model(x[half]), y[half]).backward()
        optimizer.step()
        captured = capture.finish()
        stack_after = list(torch.overrides._get_current_function_mode_stack())
    finally:
        capture.detach()
    return captured, stack_after, model


@pytest.fixture
def without_private_apis(monkeypatch):
    monkeypatch.setattr(torchapi, "CURRENT_GRAPH_TASK_ID", None)
    monkeypatch.setattr(torchapi, "FUNCTION_MODE_STACK", None)
    assert torchapi.graph_task_running() is None
    assert torchapi.mode_is_innermost(object()) is None


def test_this_torch_has_the_private_apis():
    """Where this fails, the suite below still passes on the fallbacks: say so in a note."""
    assert torchapi.CURRENT_GRAPH_TASK_ID is not None
    assert torchapi.FUNCTION_MODE_STACK is not None
    assert torchapi.graph_task_running() is False
    assert hasattr(torch.ones(1), "_version")


def _summary(captured):
    return [(c.name, c.kind, tuple(c.input_names), c.output_name) for c in captured.calls]


def test_the_fallbacks_trace_what_the_private_apis_trace(without_private_apis):
    fallback, stack_after, model = _trace_twice_per_iteration()
    assert stack_after == []  # our mode left after each forward
    assert model.mode.calls > 0
    names = [name for name, *_ in _summary(fallback)]
    # the checkpointed block's re-run in each backward is not a call
    assert names == [
        "block.0",
        "block.1",
        "block.2",
        "tanh",
        "head",
        "loss",
        "block.0#2",
        "block.1#2",
        "block.2#2",
        "tanh#2",
        "head#2",
        "loss#2",
    ]
    record = build_iteration(fallback, 1, strict=True)
    assert all(s.verified is not False for s in record.steps)


def test_the_private_apis_and_the_fallbacks_agree(monkeypatch):
    private, _, _ = _trace_twice_per_iteration()
    monkeypatch.setattr(torchapi, "CURRENT_GRAPH_TASK_ID", None)
    monkeypatch.setattr(torchapi, "FUNCTION_MODE_STACK", None)
    fallback, _, _ = _trace_twice_per_iteration()
    assert _summary(private) == _summary(fallback)
    assert private.grads.keys() == fallback.grads.keys()
    for name, grad in private.grads.items():
        np.testing.assert_array_equal(grad, fallback.grads[name])
