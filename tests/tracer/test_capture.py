"""Capture: what PyTorch's tensor hooks deliver around in-place ops (the rule our
names rest on), calls written in a forward (torch.relu, x + y, x.view(...)) and how
they are named and explained, and tensors a store cannot hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from storage import RunStore
from tracer.capture import Capture, to_numpy
from tracer.explainers.elementwise import Add, unbroadcast
from tracer.session import Trace, TraceWarning


def test_a_hook_registered_before_an_in_place_op_gets_the_gradient_of_the_old_value():
    """PyTorch's rule that "<layer>.out.grad" relies on (see tracer/capture/core.py)."""
    w = torch.tensor([1.5, -0.5, -2.0, 0.5], requires_grad=True)
    z = w * 1.0
    seen = {}
    z.register_hook(lambda g: seen.__setitem__("before", g.clone()))
    torch.relu_(z)  # z now holds relu(z): version 1
    z.register_hook(lambda g: seen.__setitem__("after", g.clone()))
    (z * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert seen["after"].tolist() == [1.0, 2.0, 3.0, 4.0]  # dL/d relu(z)
    assert seen["before"].tolist() == [1.0, 0.0, 0.0, 4.0]  # dL/dz: zero where relu was off
    assert torch.equal(w.grad, seen["before"])


def _trace(model, x, y, db_path, *, strict=True, iterations=1, call=None):
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Trace(model, optimizer, criterion, db=db_path, strict=strict) as run:
        for _ in range(iterations):
            with run.iteration():
                optimizer.zero_grad()
                out = call(model, x) if call else model(x)
                criterion(out, y).backward()
                optimizer.step()
    with RunStore(db_path) as store:
        info = store.get_run(run.run_id)
        record = store.load_iteration(run.run_id, 1)
    return info, record


class Reshapes(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 2)
        self.fc = nn.Linear(3 * 3 * 3, 3)

    def forward(self, x):
        h = self.conv(x)  # (N, 3, 3, 3)
        a = h.view(h.size(0), -1)  # Flatten(1, 3)
        b = h.reshape(h.shape[0], 3, 9).flatten(1)  # Flatten(2, 3), then Flatten(1, -1)
        c = torch.flatten(h, 1).contiguous()  # contiguous() returns its input: not a call
        return self.fc(a + b + c.sigmoid() * 0 + 1.0)


def test_reshapes_become_flatten_and_identities_are_not_calls(db_path):
    torch.manual_seed(0)
    x, y = torch.randn(4, 2, 4, 4), torch.tensor([0, 1, 2, 1])
    with pytest.warns(TraceWarning, match=r"mul \(torch.Tensor.mul\)"):
        info, record = _trace(Reshapes(), x, y, db_path, strict=False)
    layers = [(layer.name, layer.type) for layer in info.layers]
    assert layers == [
        ("conv", "Conv2d"),
        ("view", "Flatten"),
        ("reshape", "Flatten"),
        ("flatten", "Flatten"),
        ("flatten#2", "Flatten"),
        ("add", "Add"),
        ("sigmoid", "Sigmoid"),
        ("mul", "torch.Tensor.mul"),
        ("add#2", "Add"),
        ("add#3", "Add"),
        ("fc", "Linear"),
        ("loss", "CrossEntropyLoss"),
    ]
    described = {layer.name: layer.description for layer in info.layers}
    assert "dims 1..3" in described["view"] and "torch.Tensor.view" in described["view"]
    assert "constant 1" in described["add#3"]
    assert not next(layer for layer in info.layers if layer.name == "mul").explained
    failed = [(s.layer, s.title) for s in record.steps if s.verified is False]
    assert failed == []
    # conv.out feeds view, reshape and flatten: its gradient is checked as a sum of three parts.
    total = next(
        s for s in record.steps if s.title == "Sum the gradient of conv.out over its 3 uses"
    )
    assert total.verified is True


class Broadcast(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        centre = x.mean(dim=0, keepdim=True)  # (1, 4), broadcast over the batch
        doubled = torch.add(x, centre, alpha=-2.0)
        return self.fc(doubled + doubled)  # the same tensor twice


def test_add_broadcasting_alpha_and_the_same_operand_twice_match_autograd(db_path):
    torch.manual_seed(0)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    with pytest.warns(TraceWarning, match="mean"):
        _, record = _trace(Broadcast(), x, y, db_path, strict=False)
    steps = {(s.layer, s.title): s for s in record.steps}
    (to_y,) = [
        s
        for (layer, title), s in steps.items()
        if layer == "add" and title.startswith("Sum backward to Y (")
    ]
    assert to_y.title == f"Sum backward to Y ({to_y.outputs[0].removesuffix('.grad')})"
    assert to_y.verified is True and "broadcast from (1, 4) to (5, 4)" in to_y.note
    assert steps[("add#2", "Sum backward: both operands are the same tensor")].verified is True
    assert all(s.verified is not False for s in record.steps)


def test_unbroadcast_sums_over_stretched_dimensions():
    grad = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(unbroadcast(grad, (2, 3, 4)), grad)
    np.testing.assert_array_equal(unbroadcast(grad, (4,)), grad.sum(axis=(0, 1)))
    np.testing.assert_array_equal(unbroadcast(grad, (3, 1)), grad.sum(axis=(0, 2)).reshape(3, 1))
    np.testing.assert_array_equal(unbroadcast(grad, ()), grad.sum())
    # Against autograd for a few broadcast pairs.
    for shape in [(1, 3, 1), (3, 4), (2, 1, 4), (1,)]:
        y = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        x = torch.randn(2, 3, 4, dtype=torch.float64)
        out = x + y
        upstream = torch.randn(out.shape, dtype=torch.float64)
        out.backward(upstream)
        np.testing.assert_allclose(unbroadcast(upstream.numpy(), shape), y.grad.numpy())


def test_add_module_used_directly_is_explained(db_path):
    class Direct(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.add = nn.Linear(3, 2), nn.Linear(3, 2), Add()

        def forward(self, x):
            return self.add(self.a(x), self.b(x))

    torch.manual_seed(0)
    info, record = _trace(Direct(), torch.randn(4, 3), torch.tensor([0, 1, 1, 0]), db_path)
    assert ("add", "Add", True) in [
        (layer.name, layer.type, layer.explained) for layer in info.layers
    ]
    assert all(s.verified is not False for s in record.steps)


class Scoped(nn.Module):
    """Functional calls are named after the container whose forward made them."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()  # a module named like the functional op at the root
        self.inner = nn.Sequential(nn.Linear(3, 3))
        self.block = Block()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = torch.relu(self.relu(self.inner(x)))
        return self.fc(self.block(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return F.relu(self.lin(x)) + x


def test_functional_names_follow_the_enclosing_module(db_path):
    torch.manual_seed(0)
    info, record = _trace(Scoped(), torch.randn(4, 3), torch.tensor([0, 1, 1, 0]), db_path)
    names = [layer.name for layer in info.layers]
    assert names == [
        "inner.0",
        "relu",
        "relu_fn",
        "block.lin",
        "block.relu",
        "block.add",
        "fc",
        "loss",
    ]
    assert all(layer.explained for layer in info.layers)
    assert "block.add.out.grad" in {t.name for t in record.tensors}


def test_ops_inside_leaf_modules_and_integer_bookkeeping_are_not_calls(db_path):
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            index = torch.arange(x.shape[0]) + 1  # integer arithmetic: not a layer
            return self.fc(x[index - 1])  # the float gather is

    torch.manual_seed(0)
    with pytest.warns(TraceWarning, match="getitem"):
        info, _ = _trace(
            Counting(), torch.randn(4, 3), torch.tensor([0, 1, 1, 0]), db_path, strict=False
        )
    assert [layer.name for layer in info.layers] == ["getitem", "fc", "loss"]


def test_no_grad_forward_and_a_second_forward_in_one_iteration(db_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])

    def call(m, x):
        with torch.no_grad():
            m(x + 1)  # e.g. a look at held-out data inside the iteration
        return m(x)

    info, record = _trace(model, x, y, db_path, call=call)
    names = [layer.name for layer in info.layers]
    assert names == ["0", "1", "2", "0#2", "1#2", "2#2", "loss"]
    tensors = {t.name for t in record.tensors}
    assert {"input", "input#2", "input#2.grad", "2.out", "2#2.out.grad"} <= tensors
    assert "2.out.grad" not in tensors  # no gradient flows through the no_grad pass
    backward = [s.layer for s in record.steps if s.phase == "backward"]
    assert "0" not in backward and "0#2" in backward
    assert all(s.verified is not False for s in record.steps)


def test_to_numpy_copies_and_widens_what_numpy_lacks():
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    array = to_numpy(t)
    t.add_(1)
    assert array.tolist() == [[0, 1, 2], [3, 4, 5]]  # a copy, not a view
    assert to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32
    assert to_numpy(torch.ones(2, dtype=torch.float16)).dtype == np.float32
    assert to_numpy(torch.ones(2, dtype=torch.int64)).dtype == np.int64
    assert to_numpy(torch.ones(2, dtype=torch.bool)).dtype == np.bool_
    assert to_numpy(torch.ones(2, dtype=torch.complex64)) is None
    assert to_numpy(torch.ones(2, device="meta")) is None
    sparse = torch.eye(3).to_sparse()
    np.testing.assert_array_equal(to_numpy(sparse), np.eye(3, dtype=np.float32))


def test_complex_intermediates_are_left_out_not_fatal(db_path):
    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.fft.fft(x).abs())

    torch.manual_seed(0)
    with pytest.warns(TraceWarning):
        _, record = _trace(
            Spectral(), torch.randn(3, 4), torch.tensor([0, 1, 1]), db_path, strict=False
        )
    assert any("complex64 tensor is not stored" in w for w in record.warnings)
    assert "fc.out" in {t.name for t in record.tensors}


def test_the_function_mode_is_only_active_during_the_models_forward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2))
    capture = Capture(model).attach()
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(len(torch.overrides._get_current_function_mode_stack()))
            return x

    model.append(Probe())
    capture.start()
    model(torch.randn(1, 2))
    assert seen == [1] and not torch.overrides._get_current_function_mode_stack()
    capture.finish()
    capture.detach()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model[:1])
