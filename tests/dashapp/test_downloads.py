"""GET /download/<run>/<iteration>/<tensor>.npy|.csv through the app's Flask server."""

from __future__ import annotations

import io
from urllib.parse import quote

import numpy as np
import pytest
import torch
from dash_helpers import using_store
from torch import nn

from dashapp import links
from storage import RunInfo, RunStore, RunWriter, TensorRecord, names, open_engine
from storage.records import IterationRecord


@pytest.fixture(scope="module")
def client(dash_app):
    return dash_app.server.test_client()


@pytest.fixture(scope="module")
def store(dash_store):
    with RunStore(dash_store) as reader:
        yield reader


def load_csv(text: str) -> np.ndarray:
    return np.loadtxt(io.StringIO(text), delimiter=",", comments="#", ndmin=2)


def test_every_tensor_of_an_iteration_downloads_exactly(client, store):
    record = store.load_iteration(2, 2)
    assert len(record.tensors) > 20
    for tensor in record.tensors:
        response = client.get(links.download(2, 2, tensor.name, "npy"))
        assert response.status_code == 200, tensor.name
        assert (
            response.headers["Content-Disposition"]
            == f'attachment; filename="run2-it2-{tensor.name}.npy"'
        )
        array = np.load(io.BytesIO(response.data), allow_pickle=False)
        assert array.dtype == tensor.array.dtype and array.shape == tensor.array.shape
        np.testing.assert_array_equal(array, tensor.array)


def test_csv_holds_the_values_as_a_matrix(client, store):
    weight = store.load_tensor(1, 3, "fc.weight").array  # (2, 4)
    response = client.get(links.download(1, 3, "fc.weight", "csv"))
    assert response.status_code == 200 and response.mimetype == "text/csv"
    text = response.get_data(as_text=True)
    assert "# role param, shape (2, 4), dtype float32" in text
    np.testing.assert_array_equal(
        load_csv(text).astype(np.float32), weight
    )  # %.9g reads back exactly
    kernel = store.load_tensor(
        1, 3, "conv.weight"
    ).array  # (1, 1, 2, 2): rows over the leading axes
    csv = load_csv(client.get(links.download(1, 3, "conv.weight", "csv")).get_data(as_text=True))
    np.testing.assert_array_equal(csv.astype(np.float32), kernel.reshape(-1, 2))
    bias = store.load_tensor(1, 3, "fc.bias").array  # 1-D: a column, as the formulas print it
    csv = load_csv(client.get(links.download(1, 3, "fc.bias", "csv")).get_data(as_text=True))
    np.testing.assert_array_equal(csv.astype(np.float32), bias.reshape(-1, 1))


@pytest.mark.parametrize(
    "path",
    [
        "/download/999/1/conv.weight.npy",  # unknown run
        "/download/1/99/conv.weight.npy",  # unknown iteration
        "/download/1/1/nope.npy",  # unknown tensor
        "/download/1/1/conv.weight.pkl",  # unknown format
        "/download/1/1/conv.weight",  # no format
        "/download/1/1/conv%20weight.csv",  # not a tensor name
        "/download/1/1/..%2F..%2Fetc%2Fpasswd.csv",
        "/download/-1/1/conv.weight.npy",
        "/download/x/1/conv.weight.npy",
        "/download/1/1/" + "a" * 400 + ".npy",
    ],
)
def test_unknown_path_parts_are_404(client, path):
    assert client.get(path).status_code == 404


def test_a_bounded_tensor_downloads_what_was_stored(client, dash_app, tmp_path):
    path = tmp_path / "bounded.db"
    engine = open_engine(path)
    writer = RunWriter.begin(engine, RunInfo(name="bounded"))
    kept = np.arange(10, dtype=np.float32)
    tensor = TensorRecord("x#2.out", "activation", kept, layer="x#2", shape=(2, 3, 4))
    writer.add_iteration(IterationRecord(1, 0.1, [tensor], []))
    writer.finish()
    engine.dispose()
    with using_store(dash_app, path):
        url = f"/download/1/1/{quote('x#2.out', safe='')}.npy"
        assert url == links.download(1, 1, "x#2.out", "npy")
        response = client.get(url)
        assert response.status_code == 200 and response.headers["X-Cnnviz-Shape"] == "2,3,4"
        np.testing.assert_array_equal(np.load(io.BytesIO(response.data), allow_pickle=False), kept)
        text = client.get(links.download(1, 1, "x#2.out", "csv")).get_data(as_text=True)
        assert "only the first 10 of 24 values were stored" in text
        np.testing.assert_array_equal(load_csv(text).ravel(), kept)


class _EveryName(nn.Module):
    """A model whose trace holds every kind of tensor name the tracer gives."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)  # intermediates (X_col), called twice (#2)
        self.parts = nn.ModuleDict({"odd/name": nn.Linear(4, 4)})  # "/" in a module name
        self.split = _Split()  # a tuple output: .out.0, .out.1
        self.head = nn.Linear(4, 3)

    def forward(self, x, scale=None):
        y = torch.relu(self.conv(x))
        y = self.conv(y) + y  # relu.out is read twice: relu.out.grad@add, @conv#2
        y = torch.flatten(y, 1) * scale  # a keyword input: input.scale
        a, b = self.split(self.parts["odd/name"](y))
        return self.head(a + b)


class _Split(nn.Module):
    def forward(self, x):
        return x.tanh(), x.sigmoid()


@pytest.mark.filterwarnings("ignore:cnnviz:UserWarning")  # the raw tuple, accumulation
def test_every_name_the_tracer_produces_downloads(client, dash_app, tmp_path):
    from tracer import trace

    torch.manual_seed(0)
    model, criterion = _EveryName(), nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)  # .state.exp_avg
    x, scale, y = torch.randn(4, 1, 2, 2), torch.rand(1, 4), torch.tensor([0, 1, 2, 0])
    path = tmp_path / "names.db"
    with trace(model, optimizer, criterion, db=path, name="names") as t:
        for step in range(2):
            with t.iteration():
                if step == 0:
                    optimizer.zero_grad()  # the second iteration accumulates: .grad_before
                criterion(model(x, scale=scale), y).backward()
                optimizer.step()
    with using_store(dash_app, path) as store:
        kinds = set()
        for index in (1, 2):
            for tensor in store.load_iteration(t.run_id, index).tensors:
                parsed = names.parse(tensor.name)
                kinds.add(parsed.kind)
                url = links.download(t.run_id, index, tensor.name, "npy")
                response = client.get(url)
                assert response.status_code == 200, (tensor.name, url)
                array = np.load(io.BytesIO(response.data), allow_pickle=False)
                np.testing.assert_array_equal(array, tensor.array)
                assert (
                    client.get(links.download(t.run_id, index, tensor.name, "csv")).status_code
                    == 200
                )
        stored = {tensor.name for tensor in store.load_iteration(t.run_id, 2).tensors}
    assert kinds == {
        names.KIND_VALUE,
        names.KIND_GRAD,
        names.KIND_GRAD_PART,
        names.KIND_GRAD_BEFORE,
        names.KIND_NEXT,
        names.KIND_UPDATE,
        names.KIND_STATE,
    }
    for expected in (
        "input",
        "input.scale",
        "target",
        "conv#2.out",
        "relu.out.grad@add",
        "parts.odd/name.weight.grad",
        "split.out.1",
        "conv.X_col",
        "loss.value",
        "head.weight.state.exp_avg",
        "head.weight.grad_before",
    ):
        assert expected in stored, (expected, sorted(stored))


@pytest.mark.parametrize(
    "path",
    [
        f"/download/{2**64}/1/conv.weight.npy",
        f"/download/1/{2**64 + 1}/conv.weight.npy",
        f"/download/{10**40}/{10**40}/conv.weight.csv",
        f"/download/{2**63}/1/conv.weight.npy",
    ],
)
def test_ids_beyond_64_bits_are_not_found(client, path):
    response = client.get(path)
    assert response.status_code == 404
