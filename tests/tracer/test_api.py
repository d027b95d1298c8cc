"""The Python API over a user's own model and loop: the model is left as it was,
tracing never changes a number, and every kind of model is traced without a crash
(explained where cnnviz knows the layer, raw tensors with a warning elsewhere)."""

from __future__ import annotations

import sqlite3
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from storage import RunStore
from tracer import Trace, trace
from tracer.session import TraceWarning


def _hook_state(model: nn.Module, optimizer) -> list:
    state = []
    for name, m in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_hooks_always_called",
            "_forward_pre_hooks_with_kwargs",
        ):
            state.append((name, attr, dict(getattr(m, attr))))
        state.append((name, "training", m.training))
    state.append(("optimizer", "pre", dict(optimizer._optimizer_step_pre_hooks)))
    state.append(("optimizer", "post", dict(optimizer._optimizer_step_post_hooks)))
    return state


class Residual(nn.Module):
    """Nested containers, in-place ReLU, functional relu/add/pool/flatten, a user hook."""

    def __init__(self, inplace: bool = True):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.block = nn.Sequential(
            nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(inplace=inplace), nn.Conv2d(3, 3, 3, padding=1)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 3 * 3, 4))

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = F.relu(x + self.block(x), inplace=False)
        return self.head(F.max_pool2d(x, 2))


def _loop(model, optimizer, criterion, x, y, iterations, run=None):
    losses = []
    for _ in range(iterations):
        with run.iteration() if run is not None else _Null():
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        losses.append(loss.item())
    return losses


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _records(path, run_id):
    with RunStore(path) as store:
        return [store.load_iteration(run_id, s.index) for s in store.iterations(run_id)]


def _data(seed=0, n=4, classes=4):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def test_model_and_optimizer_are_unchanged_after_the_trace(db_path):
    torch.manual_seed(0)
    model = Residual()
    model.block.register_forward_hook(lambda m, a, o: None)  # a hook of the user's own stays
    model.head.eval()  # a mixed train/eval state is restored as it was
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = _hook_state(model, optimizer)
    x, y = _data()
    criterion = nn.CrossEntropyLoss()
    with trace(model, optimizer, criterion, db=db_path, strict=True) as run:
        _loop(model, optimizer, criterion, x, y, 2, run)
        model.eval()  # the loop may switch modes; the trace puts them back
    assert _hook_state(model, optimizer) == before
    with torch.no_grad():
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        traced_out = model(x)
    torch.manual_seed(0)
    fresh = Residual()
    fresh.load_state_dict(weights)
    fresh.head.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), traced_out)
    assert not torch.overrides._get_current_function_mode_stack()


@pytest.mark.parametrize("where", ["forward", "backward", "loop"])
def test_model_is_restored_when_the_loop_raises(db_path, where):
    torch.manual_seed(0)
    model = Residual()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _hook_state(model, optimizer)
    x, y = _data()

    def explode(*_):
        raise RuntimeError("boom")

    if where == "forward":
        model.block[2].register_forward_hook(explode)
    criterion = nn.CrossEntropyLoss()
    with pytest.raises(RuntimeError, match="boom"):
        with Trace(model, optimizer, criterion, db=db_path) as run:
            with run.iteration():
                out = model(x)
                if where == "backward":
                    out.register_hook(explode)
                criterion(out, y).backward()
                if where == "loop":
                    explode()
    if where == "forward":
        model.block[2]._forward_hooks.clear()
    assert _hook_state(model, optimizer) == before
    assert not torch.overrides._get_current_function_mode_stack()
    with RunStore(db_path) as store:
        info = store.get_run(run.run_id)
    assert info.status == "failed" and "boom" in info.error and info.num_iterations == 0
    # The model still trains, untraced, exactly as a fresh one.
    torch.manual_seed(0)
    fresh = Residual()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), model(x))


def _trace_values(db_path, inplace: bool):
    torch.manual_seed(0)
    model = Residual(inplace=inplace)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    criterion = nn.CrossEntropyLoss()
    with Trace(model, optimizer, criterion, db=db_path, strict=True) as run:
        losses = _loop(model, optimizer, criterion, x, y, 2, run)
    return losses, _records(db_path, run.run_id)


def test_inplace_relu_traces_the_same_values_and_gradients_as_out_of_place(tmp_path):
    losses_a, records_a = _trace_values(tmp_path / "a.db", inplace=True)
    losses_b, records_b = _trace_values(tmp_path / "b.db", inplace=False)
    assert losses_a == losses_b
    for ra, rb in zip(records_a, records_b, strict=True):
        names = [t.name for t in ra.tensors]
        assert names == [t.name for t in rb.tensors]
        for name in names:
            np.testing.assert_array_equal(
                ra.tensor(name).array, rb.tensor(name).array, err_msg=name
            )
        assert all(s.verified is not False for s in ra.steps)
        # "block.0.out" is the conv output before the in-place ReLU overwrote it,
        # and its gradient is dL/d(conv output): zero wherever the ReLU was off.
        z = ra.tensor("block.0.out").array
        assert (z < 0).any()
        np.testing.assert_array_equal(ra.tensor("block.1.out").array, np.maximum(z, 0))
        dz = ra.tensor("block.0.out.grad").array
        da = ra.tensor("block.1.out.grad").array
        np.testing.assert_array_equal(dz, da * (z > 0))


def test_functional_calls_are_explained_by_their_module(db_path):
    losses, records = _trace_values(db_path, inplace=True)
    with RunStore(db_path) as store:
        layers = store.get_run(1).layers
    kinds = {layer.name: (layer.type, layer.explained) for layer in layers}
    assert kinds["relu"] == ("ReLU", True)  # torch.relu
    assert kinds["add"] == ("Add", True)  # x + self.block(x)
    assert kinds["relu#2"] == ("ReLU", True)  # F.relu
    assert kinds["max_pool2d"] == ("MaxPool2d", True)
    assert "functional call torch.nn.functional.max_pool2d" in next(
        layer.description for layer in layers if layer.name == "max_pool2d"
    )
    record = records[0]
    assert record.warnings == []
    # The stem's ReLU output feeds both the block and the residual add: its gradient is
    # the sum of the two parts, and that sum is checked against autograd.
    total = next(s for s in record.steps if s.title.startswith("Sum the gradient of relu.out"))
    assert total.verified is True
    assert set(total.inputs) == {"relu.out.grad@add", "relu.out.grad@block.0"}
    parts = record.tensor("relu.out.grad@add").array + record.tensor("relu.out.grad@block.0").array
    np.testing.assert_allclose(parts, record.tensor("relu.out.grad").array, atol=1e-6)
    order = [(s.layer, s.title) for s in record.steps if s.phase == "backward"]
    sum_at = order.index(("relu", total.title))
    assert order[sum_at + 1] == ("relu", "ReLU backward")  # the sum comes before its reader


class TiedMLP(nn.Module):
    """One Linear called twice (shared weights) and a weight used functionally too."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        h = torch.relu(self.fc(h))
        return self.out(h) + F.linear(h, self.out.weight)  # out.weight used by two calls


def test_shared_weights_sum_over_calls_and_are_checked(db_path):
    torch.manual_seed(0)
    model = TiedMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    criterion = nn.CrossEntropyLoss()
    with Trace(model, optimizer, criterion, db=db_path) as run:
        _loop(model, optimizer, criterion, x, y, 2, run)
    record = _records(db_path, run.run_id)[1]
    sums = {s.outputs[0]: s for s in record.steps if s.title.startswith("Sum the gradient")}
    assert sums["fc.weight.grad"].verified is True
    assert sums["fc.bias.grad"].verified is True
    assert sums["out.weight.grad"].verified is True  # module call + F.linear
    assert "out.bias.grad" not in sums  # used once
    layers = {s.layer for s in record.steps}
    assert {"fc", "fc#2", "linear", "add"} <= layers
    assert all(s.verified is not False for s in record.steps)


class Recurrent(nn.Module):
    """Integer inputs, a tuple-returning LSTM, a custom autograd Function, a dict output."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(12, 6)
        self.lstm = nn.LSTM(6, 5, batch_first=True)
        self.fc = nn.Linear(5, 3)

    def forward(self, tokens):
        out, (h, _c) = self.lstm(self.emb(tokens))
        return {"logits": self.fc(_Cube.apply(out[:, -1]) + h[0])}


class _Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad


class KeywordOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.full((3,), 2.0))

    def forward(self, *, features):
        return self.fc(features) * self.scale


class InPlaceEverywhere(nn.Module):
    """x += y, relu_ and x[...] = v written in a forward, on the model input too."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x):
        x.mul_(1.0)  # in place on the input itself
        h = self.fc1(x)
        h += x
        h[:, 0] = 0.5
        h.relu_()
        return self.fc2(h)


class Checkpointed(nn.Module):
    """Activation checkpointing re-runs a block's forward during backward."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=False))


class DictLeaf(nn.Module):
    """A leaf module returning a dict, computed by a matrix product with its parameter."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3))

    def forward(self, x):
        return {"logits": x @ self.w, "norm": x.norm(dim=1)}


class UsesDictLeaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = DictLeaf()

    def forward(self, x):
        return self.head(x)["logits"]


ODD_MODELS = {
    "checkpointed": (Checkpointed, lambda m, x: m(x), lambda g: torch.randn(5, 4, generator=g)),
    "dict-leaf": (UsesDictLeaf, lambda m, x: m(x), lambda g: torch.randn(5, 4, generator=g)),
    "recurrent": (
        Recurrent,
        lambda m, x: m(x)["logits"],
        lambda g: torch.randint(0, 12, (5, 7), generator=g),
    ),
    "keyword-only": (
        KeywordOnly,
        lambda m, x: m(features=x),
        lambda g: torch.randn(5, 4, generator=g),
    ),
    "in-place": (InPlaceEverywhere, lambda m, x: m(x), lambda g: torch.randn(5, 4, generator=g)),
}


def _odd_run(kind, db_path=None, iterations=3, optimizer_cls=torch.optim.SGD):
    build, call, make_x = ODD_MODELS[kind]
    gen = torch.Generator().manual_seed(3)
    x, y = make_x(gen), torch.randint(0, 3, (5,), generator=gen)
    torch.manual_seed(0)
    model = build()
    optimizer = optimizer_cls(model.parameters(), lr=0.05)
    criterion = nn.CrossEntropyLoss()
    losses = []

    def step():
        optimizer.zero_grad()
        loss = criterion(call(model, x.clone()), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    if db_path is None:
        for _ in range(iterations):
            step()
        return losses, model, None
    with Trace(model, optimizer, criterion, db=db_path) as run:
        for _ in range(iterations):
            with run.iteration():
                step()
    return losses, model, run


@pytest.mark.parametrize("kind", sorted(ODD_MODELS))
def test_odd_models_trace_without_changing_a_bit(db_path, kind):
    plain, plain_model, _ = _odd_run(kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced, traced_model, run = _odd_run(kind, db_path)
    messages = [str(w.message) for w in caught if w.category is TraceWarning]
    if kind == "checkpointed":  # every layer explained; the re-run in backward is not a call
        assert messages == []
    else:
        assert messages
    assert traced == plain  # bitwise: floats compared with ==
    for a, b in zip(plain_model.parameters(), traced_model.parameters(), strict=True):
        assert torch.equal(a, b)
    records = _records(db_path, run.run_id)
    assert len(records) == 3
    if kind == "checkpointed":
        with RunStore(db_path) as store:
            names = [layer.name for layer in store.get_run(run.run_id).layers]
        assert names == ["block.0", "block.1", "block.2", "head", "loss"]
    for record in records:
        assert all(s.verified is not False for s in record.steps), [
            (s.layer, s.title) for s in record.steps if s.verified is False
        ]
        assert np.isfinite(record.loss)


def test_unexplained_layers_are_raw_tensors_with_a_warning_naming_them(db_path):
    with pytest.warns(TraceWarning) as caught:
        _, _, run = _odd_run("recurrent", db_path, iterations=1)
    messages = [str(w.message) for w in caught]
    assert any("emb (Embedding)" in m and "raw tensors" in m for m in messages)
    assert any("lstm (LSTM)" in m and "tuple of 3 tensors" in m for m in messages)
    assert any("torch.Tensor.__getitem__" in m for m in messages)  # out[:, -1]
    record = _records(db_path, run.run_id)[0]
    names = {t.name for t in record.tensors}
    # Inputs, outputs and gradients of the raw layers are all stored.
    assert {
        "input",
        "emb.out",
        "emb.out.grad",
        "emb.weight",
        "emb.weight.grad",
        "emb.weight.next",
    } <= names
    assert {
        "lstm.out.0",
        "lstm.out.0.grad",
        "lstm.out.1.0",
        "lstm.out.1.0.grad",
        "lstm.out.1.1",
    } <= names
    assert record.tensor("input").array.dtype.kind == "i"
    raw = [s for s in record.steps if s.layer == "lstm" and s.phase != "update"]
    assert [s.phase for s in raw] == ["forward", "backward"]
    assert raw[0].verified is None and "no matrix decomposition for LSTM" in raw[0].note
    assert set(raw[1].outputs) >= {"emb.out.grad", "lstm.weight_ih_l0.grad"}
    with RunStore(db_path) as store:
        layers = {layer.name: layer for layer in store.get_run(run.run_id).layers}
    assert not layers["emb"].explained and not layers["lstm"].explained
    assert layers["fc"].explained
    # The iteration's warnings are stored with it, for the dashboard.
    assert any("emb (Embedding)" in w for w in record.warnings)


def test_in_place_ops_on_the_input_and_activations_are_honest(db_path):
    with pytest.warns(TraceWarning):
        _, _, run = _odd_run("in-place", db_path, iterations=1)
    record = _records(db_path, run.run_id)[0]
    # h += x: the explained sum sees fc1's output before it was overwritten.
    add = next(s for s in record.steps if s.layer == "add_" and s.phase == "forward")
    assert add.verified is True and add.title == "Elementwise sum"
    fc1_out = record.tensor("fc1.out").array
    np.testing.assert_allclose(
        record.tensor("add_.out").array, fc1_out + record.tensor("mul_.out").array, atol=1e-6
    )
    relu = next(s for s in record.steps if s.layer == "relu_" and s.phase == "backward")
    assert relu.verified is True


def test_unknown_optimizer_update_is_stored_raw(db_path):
    class Halve(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 0.5})

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    p.sub_(group["lr"] * p.grad)
                    self.state[p]["steps"] = self.state[p].get("steps", 0) + 1

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = Halve(model.parameters())
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    with pytest.warns(TraceWarning, match="Halve"):
        criterion = nn.CrossEntropyLoss()
        with Trace(model, optimizer, criterion, db=db_path) as run:
            _loop(model, optimizer, criterion, x, y, 1, run)
    record = _records(db_path, run.run_id)[0]
    update = [s for s in record.steps if s.phase == "update"]
    assert [s.outputs[:2] for s in update] == [
        ["weight.next", "weight.update"],
        ["bias.next", "bias.update"],
    ]
    assert all(
        s.verified is None and "no explainer is registered for Halve" in s.note for s in update
    )
    w, g = record.tensor("weight").array, record.tensor("weight.grad").array
    np.testing.assert_allclose(record.tensor("weight.next").array, w - 0.5 * g, atol=1e-7)


def test_every_strict_layer_kind_is_verified_through_the_api(db_path):
    """Explained layers under strict=True: a mistake in any step raises."""
    torch.manual_seed(1)
    model = Residual()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = _data(seed=1)
    criterion = nn.CrossEntropyLoss()
    with Trace(model, optimizer, criterion, db=db_path, strict=True) as run:
        _loop(model, optimizer, criterion, x, y, 2, run)
    for record in _records(db_path, run.run_id):
        checked = [s for s in record.steps if s.verified is not None]
        assert checked and all(s.verified for s in checked)
        assert {s.phase for s in record.steps} == {"forward", "backward", "update"}


def test_a_functional_loss_is_recorded_with_set_loss(db_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    losses = []
    with trace(model, optimizer, db=db_path, strict=True) as run:  # no criterion module
        for _ in range(2):
            with run.iteration():
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)  # outside the model: not a traced call
                loss.backward()
                optimizer.step()
                run.set_loss(loss)
            losses.append(loss.item())
    with RunStore(db_path) as store:
        assert [s.loss for s in store.iterations(run.run_id)] == losses
    record = _records(db_path, run.run_id)[0]
    assert {"2.out", "2.out.grad", "0.weight.next"} <= {t.name for t in record.tensors}
    assert all(s.verified is not False for s in record.steps)
    with pytest.raises(RuntimeError, match="inside"):
        run.set_loss(1.0)


def test_an_unknown_loss_is_stored_as_unknown_not_fatal(db_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with trace(model, optimizer, db=db_path) as run:
        with run.iteration():
            optimizer.zero_grad()
            F.cross_entropy(model(torch.randn(4, 3)), torch.tensor([0, 1, 0, 1])).backward()
            optimizer.step()
    with RunStore(db_path) as store:
        assert store.get_run(run.run_id).status == "completed"
        (summary,) = store.iterations(run.run_id)
    assert np.isnan(summary.loss)
    record = _records(db_path, run.run_id)[0]
    assert {"weight.grad", "weight.next", "linear.out.grad"} <= {t.name for t in record.tensors}


def test_misuse_is_a_clear_error(db_path):
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="every must be a positive integer"):
        Trace(model, db=db_path, every=0)
    with pytest.raises(ValueError, match="max_elements"):
        Trace(model, db=db_path, max_elements=-3)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        Trace(lambda x: x, db=db_path)
    run = Trace(model, db=db_path)
    with pytest.raises(RuntimeError, match="context manager"):
        with run.iteration():
            pass
    with run:
        with pytest.raises(RuntimeError, match="nested"):
            with run.iteration():
                with run.iteration():
                    pass
    with pytest.raises(RuntimeError, match="entered once"):
        with run:
            pass


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_model_on_the_gpu_is_traced_into_cpu_arrays(db_path):
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        # TF32 rounds products to 10-bit mantissas: PyTorch's numbers then differ from
        # float32 arithmetic by ~1e-3, which verification would report; the trace says so.
        torch.backends.cudnn.allow_tf32 = True
        with pytest.warns(TraceWarning, match="TF32"):
            with Trace(nn.Linear(2, 2).cuda(), db=db_path.with_name("tf32.db")):
                pass
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        torch.manual_seed(0)
        model = Residual().cuda()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = (t.cuda() for t in _data(n=8))
        criterion = nn.CrossEntropyLoss()
        with Trace(model, optimizer, criterion, db=db_path, strict=True) as run:
            traced = _loop(model, optimizer, criterion, x, y, 3, run)
        assert all(p.is_cuda for p in model.parameters())
        records = _records(db_path, run.run_id)
        for record in records:
            checked = [s for s in record.steps if s.verified is not None]
            assert checked and all(s.verified for s in checked), [
                (s.layer, s.title, s.max_abs_diff) for s in checked if not s.verified
            ]
        np.testing.assert_array_equal(records[0].tensor("input").array, x.cpu().numpy())
        torch.manual_seed(0)
        plain_model = Residual().cuda()
        plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9)
        plain = _loop(plain_model, plain_opt, nn.CrossEntropyLoss(), x, y, 3)
        np.testing.assert_allclose(traced, plain, rtol=1e-6)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def test_the_store_is_plain_sqlite(db_path):
    _trace_values(db_path, inplace=True)
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    rows = conn.execute(
        "select layer, count(*) from steps s join iterations i on i.id = s.iteration_id "
        'where i."index" = 1 group by layer'
    ).fetchall()
    conn.close()
    assert dict(rows)["add"] == 3  # forward + backward to X and to Y


def test_gradient_accumulation_checks_this_iterations_contribution(tmp_path):
    """Without zero_grad, .grad sums two backward passes; the checks compare our
    dL/dW with what this iteration added, and say so."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    criterion(model(x), y).backward()  # leaves a gradient behind, outside the trace
    with Trace(model, optimizer, criterion, db=tmp_path / "r.db", strict=True) as run:
        with run.iteration():
            criterion(model(x), y).backward()
            optimizer.step()
    with RunStore(tmp_path / "r.db") as store:
        record = store.load_iteration(run.run_id, 1)
    checked = [s for s in record.steps if s.verified is not None]
    assert checked and all(s.verified for s in checked)
    before = record.tensor("0.weight.grad_before").array
    total = record.tensor("0.weight.grad").array
    np.testing.assert_allclose(total, 2 * before, rtol=1e-6)  # the same batch twice
    assert any("grad_before" in w for w in record.warnings)


def test_clipped_gradients_are_checked_unclipped_and_the_update_with_them(tmp_path):
    """clip_grad_norm_ scales .grad between backward and step (a trainer's max_grad_norm):
    the backward steps check what backward computed, the update uses the clipped .grad."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3) * 5, torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    with pytest.warns(TraceWarning, match="gradient clipping"):
        with Trace(model, optimizer, criterion, db=tmp_path / "r.db", strict=True) as run:
            with run.iteration():
                optimizer.zero_grad()
                criterion(model(x), y).backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.01)
                optimizer.step()
    assert norm > 0.01  # it did clip
    with RunStore(tmp_path / "r.db") as store:
        record = store.load_iteration(run.run_id, 1)
    checked = [s for s in record.steps if s.verified is not None]
    assert {s.phase for s in checked} == {"forward", "backward", "update"}
    assert all(s.verified for s in checked), [s.title for s in checked if not s.verified]
    assert not any(t.name.endswith(".grad_before") for t in record.tensors)
    clipped = np.sqrt(
        sum(
            np.sum(t.array.astype(np.float64) ** 2)
            for t in record.tensors
            if t.role == "param_grad"
        )
    )
    assert clipped == pytest.approx(0.01, rel=1e-4)  # the stored .grad is the clipped one
