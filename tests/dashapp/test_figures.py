"""Figures are pure functions: data in, go.Figure out; checked without a browser."""

from __future__ import annotations

import numpy as np
import pytest

from dashapp import figures
from dashapp.formatting import format_matrix
from dashapp.tensorview import matrix_view

INJECTION = "<img src=x onerror=alert(1)>"


def test_heatmap_is_oriented_like_the_matrix_with_its_values_printed():
    a = np.array([[1.5, -2.0, 0.25], [0.0, 3.0, -0.125]], dtype=np.float32)
    view = matrix_view(a)
    fig = figures.heatmap(view)
    trace = fig.data[0]
    np.testing.assert_array_equal(np.asarray(trace.z), a)
    assert fig.layout.yaxis.range[0] > fig.layout.yaxis.range[1]  # row 0 on top
    assert fig.layout.xaxis.side == "top"
    assert [list(r) for r in trace.text] == format_matrix(view.values, view.style)
    assert trace.texttemplate == "%{text}"
    assert (trace.zmin, trace.zmax) == (-3.0, 3.0)  # symmetric: zero is white
    assert trace.showscale is False  # the printed values make a colour bar redundant


def test_large_planes_drop_the_text_and_keep_a_colour_bar():
    view = matrix_view(np.ones((28, 28), dtype=np.float32))
    fig = figures.heatmap(view)
    assert fig.data[0].text is None and fig.data[0].showscale is True
    assert fig.layout.height < 600 and fig.layout.width < 600


def test_missing_values_are_gaps_and_blank_cells():
    full = np.arange(16, dtype=np.float32).reshape(4, 4)
    view = matrix_view(full.ravel()[:6], full.shape)
    trace = figures.heatmap(view).data[0]
    z = np.asarray(trace.z, dtype=np.float64)
    assert np.isnan(z[2:]).all() and trace.text[3][3] == ""


def test_shared_range_covers_both_sides():
    assert figures.symmetric_range(np.array([1.0, -4.0]), np.array([2.0])) == (-4.0, 4.0)
    assert figures.symmetric_range(np.zeros(3)) == (-1.0, 1.0)
    assert figures.symmetric_range(np.array([np.nan, 2.0])) == (-2.0, 2.0)
    view = matrix_view(np.array([[0.5]]))
    trace = figures.heatmap(view, zrange=(-7.0, 7.0)).data[0]
    assert (trace.zmin, trace.zmax) == (-7.0, 7.0)


def test_difference_statistics():
    a = np.array([1.0, 2.0, 2.0])
    stats = figures.difference_stats(a, -a)
    assert stats.max_abs == pytest.approx(4.0)
    assert stats.l2 == pytest.approx(2 * 3.0)
    assert stats.cosine == pytest.approx(-1.0)
    assert stats.norm_a == stats.norm_b == pytest.approx(3.0)
    assert figures.difference_stats(a, a).cosine == pytest.approx(1.0)
    assert figures.difference_stats(a, np.zeros(3)).cosine is None
    assert figures.difference_stats(a, np.full(3, np.inf)).cosine is None  # not nan
    with pytest.raises(ValueError):
        figures.difference_stats(a, np.zeros(2))
    bars = figures.difference_bars_dict(stats)
    assert list(bars["data"][0]["y"]) == pytest.approx([3.0, 3.0, 6.0, 4.0])


def history_rows():
    rows = []
    for run_id in (1, 2):
        for index in (1, 2, 3):
            rows += [
                dict(
                    run_id=run_id,
                    index=index,
                    name="conv.weight",
                    role="param",
                    l2=run_id + index / 10,
                ),
                dict(
                    run_id=run_id,
                    index=index,
                    name="conv.weight.grad",
                    role="param_grad",
                    l2=index / 100,
                ),
                dict(run_id=run_id, index=index, name="conv.out", role="activation", l2=9.0),
                dict(run_id=run_id, index=index, name="fc.bias", role="param", l2=None),
            ]
    return rows


def test_norm_panels_pair_each_weight_with_its_gradient():
    runs = [(2, "run two", "#111111"), (1, INJECTION, "#222222")]
    pairs = figures.norm_panels(history_rows(), runs)
    assert [(w.param, g.param) for w, g in pairs] == [("conv.weight", "conv.weight")]
    weight, grad = pairs[0]
    assert [s.label for s in weight.series] == ["run two", INJECTION]  # legend order
    assert weight.series[1].x == [1, 2, 3] and weight.series[1].y == pytest.approx([1.1, 1.2, 1.3])
    assert grad.series[0].y == pytest.approx([0.01, 0.02, 0.03])
    fig = figures.norms_dict(pairs)
    assert len(fig["data"]) == 4
    assert {t["name"] for t in fig["data"]} == {"run two", "&lt;img src=x onerror=alert(1)&gt;"}


def test_store_text_is_escaped_in_every_figure():
    loss = figures.loss_dict([figures.Series(INJECTION, "#000", [1, 2], [0.5, 0.4])])
    assert loss["data"][0]["name"] == "&lt;img src=x onerror=alert(1)&gt;"
    diagram = figures.architecture_diagram([figures.DiagramBox(INJECTION, "Conv2d", (1, 2), 5)])
    texts = " ".join(a.text for a in diagram.layout.annotations)
    assert "<img" not in texts and "&lt;img src=x onerror=alert(1)&gt;" in texts


def test_architecture_diagram_has_a_box_per_layer_and_an_arrow_between():
    boxes = [
        figures.DiagramBox("input", "", (1, 1, 4, 4)),
        figures.DiagramBox("conv", "Conv2d", (1, 1, 3, 3), 5),
        figures.DiagramBox("loss", "CrossEntropyLoss", ()),
    ]
    fig = figures.architecture_diagram(boxes)
    assert len(fig.layout.shapes) == 3
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    assert len(arrows) == 2
    labels = [a.text for a in fig.layout.annotations if not a.showarrow]
    assert labels[1] == "<b>conv</b><br>Conv2d<br>1×1×3×3<br>5 params"
    assert labels[2].endswith("scalar")


def test_loss_legend_sits_below_the_axis_title():
    """The legend hangs from below the x-axis title ("iteration") and fits in the bottom margin."""
    fig = figures.loss_dict([figures.Series("run", "#000", [1, 2, 3], [0.5, 0.4, 0.3])])
    layout = fig["layout"]
    margin, legend = layout["margin"], layout["legend"]
    plot_height = layout["height"] - margin["t"] - margin["b"]
    legend_top = -legend["y"] * plot_height  # pixels below the plot area
    assert legend["yanchor"] == "top"
    assert legend_top >= 50  # tick labels and the axis title take about 45 px
    assert margin["b"] >= legend_top + 20  # one legend row fits inside the figure
