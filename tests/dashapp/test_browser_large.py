"""Big tensors stay fast and readable: a (64, 6, 28, 28) activation shows one plane
with sample and channel selectors, no printed values, and the stored numbers."""

from __future__ import annotations

import re

import numpy as np
import pytest
from dash_helpers import cnnviz_serve, graph_data, open_page, wait_ready

from dashapp.tensorview import MAX_ROWS, matrix_view
from storage import RunStore

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def large_store(tmp_path_factory):
    """One iteration of a LeNet-like first layer on a 64-image batch, by the real tracer."""
    import torch
    from torch import nn

    from tracer import trace

    path = tmp_path_factory.mktemp("large") / "runs.db"
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 14 * 14, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    with trace(model, optimizer, criterion, db=path, name="large", seed=0) as run:
        with run.iteration():
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
    return path


@pytest.fixture(scope="module")
def base(large_store):
    with cnnviz_serve(large_store) as url:
        yield url


@pytest.fixture(scope="module")
def store(large_store):
    with RunStore(large_store) as reader:
        yield reader


def z_of(drawn) -> np.ndarray:
    return np.array(
        [[np.nan if v is None else v for v in row] for row in drawn["z"]], dtype=np.float64
    )


def test_a_large_activation_shows_one_plane_and_switches_channel(page, base, store):
    open_page(page, base + "/iteration?run=1&it=1&phase=forward&layer=0")
    activation = store.load_tensor(1, 1, "0.out").array  # (64, 6, 28, 28)
    assert activation.shape == (64, 6, 28, 28)
    panel = page.locator('.tensor-panel[data-tensor="0.out"]').first
    (drawn,) = graph_data(panel, ".js-plotly-plot")
    np.testing.assert_array_equal(z_of(drawn), activation[0, 0])
    assert drawn["labels"] == []  # 784 values: shown on hover, not printed
    assert panel.locator(".tensor-caption").inner_text() == "sample 1 of 64; channel 1 of 6"

    channel = panel.locator(".slice-control input[type=number]").nth(1)
    channel.fill("3")
    channel.press("Enter")
    panel.locator(".tensor-caption:text-is('sample 1 of 64; channel 3 of 6')").wait_for()
    (drawn,) = graph_data(panel, ".js-plotly-plot")
    np.testing.assert_array_equal(z_of(drawn), activation[0, 2])
    assert list(page.problems) == []


def test_a_tall_matrix_shows_its_first_rows(page, base, store):
    open_page(page, base + "/iteration?run=1&it=1&phase=forward&layer=0")
    x_col = store.load_tensor(1, 1, "0.X_col").array  # (50176, 25)
    panel = page.locator('.tensor-panel[data-tensor="0.X_col"]').first
    (drawn,) = graph_data(panel, ".js-plotly-plot")
    np.testing.assert_array_equal(z_of(drawn), x_col[:MAX_ROWS])
    assert "rows 1–64 of 50176" in panel.locator(".tensor-caption").inner_text()
    assert list(page.problems) == []


def test_compare_slices_both_sides_alike(page, base, store):
    open_page(
        page, base + "/compare?a=1:1&b=1:1&layer=1&role=activation&slice=2,4", "#compare-diff-graph"
    )
    relu = store.load_tensor(1, 1, "1.out").array
    (side_a,) = graph_data(page, "#compare-a-graph")
    np.testing.assert_array_equal(z_of(side_a), matrix_view(relu, lead_index=(1, 3)).values)
    (diff,) = graph_data(page, "#compare-diff-graph")
    assert not np.any(z_of(diff))  # the same tensor on both sides
    channel = page.locator(".slice-control input[type=number]").nth(1)
    channel.fill("5")
    channel.press("Enter")
    page.wait_for_url(re.compile(r"t\.1\.out=2%2C5%401%2C1"))  # the panel's view
    wait_ready(page, "#compare-b-graph .tensor-caption:has-text('channel 5 of 6')")
    (side_b,) = graph_data(page, "#compare-b-graph")  # B follows A's window
    np.testing.assert_array_equal(z_of(side_b), relu[1, 4])
    assert list(page.problems) == []
