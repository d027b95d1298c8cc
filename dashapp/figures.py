"""Plotly figures: pure functions from data to `go.Figure`, no store, no Dash.

Heatmaps are oriented like the matrices they show: row 0 on top, column 0 on
the left, column indices along the top edge, and (up to a readable size) the
value of each cell printed in it with the formula's number format. Text that
comes from a store (run names, layer names) is escaped before it reaches
Plotly, whose labels understand a little HTML.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from storage import names

from .formatting import format_matrix, format_shape
from .tensorview import TEXT_MAX_COLS, TEXT_MAX_ROWS, MatrixView

# Blue for negative, white for zero, red for positive: signs read at a glance.
VALUE_SCALE = "RdBu_r"
# Differences get their own scale, so a difference map is never mistaken for values.
DIFF_SCALE = "PuOr_r"
# ... as explicit stops for plain figure dicts: plotly.js knows no "_r" names (plotly.py
# expands them when it builds a go.Figure).
DIFF_STOPS = plotly.colors.get_colorscale(DIFF_SCALE)
VALUE_STOPS = plotly.colors.get_colorscale(VALUE_SCALE)
RUN_COLORS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
)
FONT = dict(family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size=12)

_CELL_HEIGHT = 26  # px per row when values are printed
_CHAR_WIDTH = 7.4  # px per character of a printed value at 12 px
_PLOT_SIZE = 320  # px of the longer side when values are not printed


def plotly_text(text: object) -> str:
    """Store text made safe for Plotly labels (which parse <b>, <br>, <a>...)."""
    return html.escape(str(text), quote=False)


def run_color(position: int) -> str:
    return RUN_COLORS[position % len(RUN_COLORS)]


def symmetric_range(*arrays: np.ndarray) -> tuple[float, float]:
    """(-m, m) with m the largest finite |value| of all arrays: zero is always white,
    and several heatmaps given the same range share one colour scale."""
    m = 0.0
    for array in arrays:
        a = np.asarray(array, dtype=np.float64)
        finite = np.abs(a[np.isfinite(a)])
        if finite.size:
            m = max(m, float(finite.max()))
    if m == 0.0:
        m = 1.0
    return -m, m


# Non-negative tensors (probabilities, variances, masks, counts): light to dark.
SEQUENTIAL_SCALE = "Viridis"
# Labels: one colour per class (Plotly's D3 palette), never a gradient.
CATEGORY_COLORS = RUN_COLORS
# Cells whose stored value is not a number are drawn as such, in colours no scale uses.
SPECIAL_CELLS = (("NaN", "#000000"), ("inf", "#ff1493"), ("-inf", "#00ced1"))


def colour_scale(view: MatrixView) -> tuple[str, object, tuple[float, float]]:
    """('diverging' | 'sequential' | 'categorical', Plotly colorscale, (zmin, zmax)).

    Over the full tensor's range when the view knows it (a window pans without its
    colours changing meaning), else over the values shown."""
    low, high = view.full_range or _finite_range(view.values)
    if view.role == "target" and view.style == "int" and high - low < len(CATEGORY_COLORS):
        low, high = math.floor(low), math.floor(low) + len(CATEGORY_COLORS) - 1
        steps = []
        for k, color in enumerate(CATEGORY_COLORS):
            steps += [[k / len(CATEGORY_COLORS), color], [(k + 1) / len(CATEGORY_COLORS), color]]
        return "categorical", steps, (low - 0.5, high + 0.5)
    if low >= 0:
        return "sequential", SEQUENTIAL_SCALE, (low, high if high > low else low + 1.0)
    return "diverging", VALUE_STOPS, symmetric_range(np.array([low, high]))


def _finite_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


def index_ticks(start: int, count: int) -> list[int]:
    """Integer tick positions for `count` cells from `start`: all of them up to 16, else
    about eight at a round step (1, 2, 5, 10, 20, ...)."""
    if count <= 16:
        return list(range(start, start + count))
    step = 1
    while count / step > 8:
        for factor in (2, 2.5, 2):
            step = int(step * factor)
            if count / step <= 8:
                break
    first = -(-start // step) * step
    return list(range(first, start + count, step))


def heatmap_dict(
    view: MatrixView,
    *,
    zrange: tuple[float, float] | None = None,
    colorscale: str | None = None,
    colorbar: bool | None = None,
    max_side: int = _PLOT_SIZE,
) -> dict:
    """A heatmap of one matrix view as a plain Plotly figure dict, row 0 on top.

    Rows and columns are labelled with their indices in the full plane (a panned
    window shows rows 64.., not 0..). Values are printed when they fit. The scale
    says what the numbers are: diverging around 0 for signed tensors, sequential for
    non-negative ones, one colour per class for labels (`colour_scale`). NaN and
    infinite values are cells of their own colour, labelled; values not stored (a
    size bound) are empty cells.
    """
    values = view.values
    rows, cols = values.shape
    row0, col0 = view.origin
    kind, scale, (zmin, zmax) = colour_scale(view)
    if zrange is not None:
        zmin, zmax = zrange
    if colorscale is not None:
        scale = colorscale
    special = ~np.isfinite(values) & ~view.missing
    texts = format_matrix(values, view.style, view.missing | special) if view.show_text else None
    show_colorbar = (not view.show_text) if colorbar is None else colorbar
    x = list(range(col0, col0 + cols))
    y = list(range(row0, row0 + rows))
    trace = dict(
        type="heatmap",
        z=np.where(special, np.nan, values),
        x=x,
        y=y,
        zmin=zmin,
        zmax=zmax,
        colorscale=scale,
        showscale=show_colorbar,
        xgap=1,
        ygap=1,
        hovertemplate="row %{y}, column %{x}: %{z:.7g}<extra></extra>",
        colorbar=dict(thickness=10, outlinewidth=0, tickfont=dict(size=10)),
    )
    if kind == "categorical":
        trace["colorbar"].update(
            tickmode="array", tickvals=list(range(int(zmin + 0.5), int(zmax + 0.5) + 1))
        )
    data = [trace]
    if special.any():
        codes = np.full(values.shape, np.nan)
        codes[np.isnan(values)] = 0
        codes[values == np.inf] = 1
        codes[values == -np.inf] = 2
        names = np.array([label for label, _ in SPECIAL_CELLS], dtype=object)
        labels = np.where(special, names[np.nan_to_num(codes, nan=0).astype(int)], "")
        n = len(SPECIAL_CELLS)
        steps = []
        for k, (_, color) in enumerate(SPECIAL_CELLS):
            steps += [[k / n, color], [(k + 1) / n, color]]
        data.append(
            dict(
                type="heatmap",
                z=codes,
                x=x,
                y=y,
                zmin=-0.5,
                zmax=n - 0.5,
                colorscale=steps,
                showscale=False,
                xgap=1,
                ygap=1,
                text=labels.tolist(),
                texttemplate="%{text}" if view.show_text else "",
                textfont=dict(size=11, color="white"),
                hovertemplate="row %{y}, column %{x}: %{text}<extra></extra>",
                name="not a number",
            )
        )
    if texts is not None:
        trace.update(text=texts, texttemplate="%{text}", textfont=dict(size=12))
        widest = max((len(t) for row in texts for t in row), default=1)
    cell_w, cell_h = _cell_size(rows, cols, None if texts is None else widest, max_side)
    margin = dict(l=34, r=8 + (60 if show_colorbar else 0), t=26, b=6)
    # A colour bar needs some height to be legible, even beside a 1-row matrix.
    plot_h = max(rows * cell_h, 120.0 if show_colorbar else 0.0)
    axis = dict(
        showgrid=False,
        zeroline=False,
        tickmode="array",
        tickfont=dict(size=10),
        fixedrange=texts is not None,
    )
    layout = dict(
        template="none",
        width=int(cols * cell_w + margin["l"] + margin["r"]),
        height=int(plot_h + margin["t"] + margin["b"]),
        margin=margin,
        font=FONT,
        plot_bgcolor="#f1f3f5",  # shows through missing (not stored) cells
        paper_bgcolor="rgba(0,0,0,0)",
        xaxis=dict(
            axis,
            side="top",
            range=[col0 - 0.5, col0 + cols - 0.5],
            tickvals=index_ticks(col0, cols),
        ),
        yaxis=dict(axis, range=[row0 + rows - 0.5, row0 - 0.5], tickvals=index_ticks(row0, rows)),
        # Which plane and window this is, so a click on (row, column) names the
        # tensor's full index (the axes carry the indices in the plane).
        meta=dict(scale=kind, lead=list(view.lead_index), ndim=len(view.shape)),
    )
    return dict(data=data, layout=layout)


def _cell_size(rows: int, cols: int, widest: int | None, max_side: int) -> tuple[float, float]:
    """(width, height) of a cell: room for `widest` printed characters, else a square."""
    if widest is not None:
        return max(30.0, widest * _CHAR_WIDTH + 14), float(_CELL_HEIGHT)
    side = max(3.0, min(24.0, max_side / max(rows, cols, 1)))
    return side, side


def heatmap_size(rows: int, cols: int) -> tuple[int, int]:
    """About the size `heatmap_dict` gives a rows x cols window, before its values are
    known (the slot keeps its place on the page until the figure arrives)."""
    texts = rows <= TEXT_MAX_ROWS and cols <= TEXT_MAX_COLS
    cell_w, cell_h = _cell_size(rows, cols, 7 if texts else None, _PLOT_SIZE)
    right = 8 if texts else 68
    return int(cols * cell_w + 34 + right), int(max(rows * cell_h, 0 if texts else 120) + 32)


def heatmap(view: MatrixView, **options) -> go.Figure:
    """`heatmap_dict` as a go.Figure (for dcc.Graph and tests)."""
    return go.Figure(heatmap_dict(view, **options))


def difference_heatmap(diff: MatrixView) -> go.Figure:
    return heatmap(diff, colorscale=DIFF_SCALE, colorbar=True, zrange=symmetric_range(diff.values))


# ---------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class DifferenceStats:
    max_abs: float  # max |B - A|
    l2: float  # ||B - A||_2
    cosine: float | None  # <A, B> / (||A|| ||B||); None when either is all zeros or not finite
    norm_a: float
    norm_b: float
    count: int  # how many elements were compared


def difference_stats(a: np.ndarray, b: np.ndarray) -> DifferenceStats:
    """How far apart two equally shaped tensors are, over all their elements."""
    a64 = np.asarray(a, dtype=np.float64).ravel()
    b64 = np.asarray(b, dtype=np.float64).ravel()
    if a64.shape != b64.shape:
        raise ValueError(f"cannot compare {a64.size} with {b64.size} elements")
    delta = b64 - a64
    norm_a = float(np.linalg.norm(a64))
    norm_b = float(np.linalg.norm(b64))
    usable = 0 < norm_a < np.inf and 0 < norm_b < np.inf  # not zero, NaN or inf
    cosine = float(np.dot(a64, b64) / (norm_a * norm_b)) if usable else None
    return DifferenceStats(
        max_abs=float(np.max(np.abs(delta))) if delta.size else 0.0,
        l2=float(np.linalg.norm(delta)),
        cosine=cosine,
        norm_a=norm_a,
        norm_b=norm_b,
        count=int(delta.size),
    )


# ---------------------------------------------------------------- histories


@dataclass
class Series:
    """One run's line in a chart over iterations."""

    label: str  # shown as text (escaped here)
    color: str
    x: list[int] = field(default_factory=list)
    y: list[float] = field(default_factory=list)


@dataclass
class NormPanel:
    """One small chart: one parameter tensor's L2 norm over iterations, a line per run."""

    param: str  # e.g. "conv.weight" (store text, escaped when drawn)
    quantity: str  # "‖W‖₂" or "‖∇W‖₂"
    series: list[Series]

    @property
    def title(self) -> str:
        return f"{self.param}  {self.quantity}"


WEIGHT_NORM = "‖W‖₂"
GRAD_NORM = "‖∇W‖₂"


def norm_panels(
    rows: Sequence[dict], runs: Sequence[tuple[int, str, str]]
) -> list[tuple[NormPanel, NormPanel]]:
    """(weight-norm panel, gradient-norm panel) per parameter tensor, in store order.

    `rows` are storage `tensor_history` rows (roles param and param_grad), or the
    tuples of `summary_history`;
    `runs` are (run id, label, colour) in legend order.
    """
    tables: dict[str, dict[str, dict[int, Series]]] = {WEIGHT_NORM: {}, GRAD_NORM: {}}
    params: dict[str, None] = {}
    style = {run_id: (label, color) for run_id, label, color in runs}
    grad_of: dict[str, str] = {}  # a name is parsed once, not once per iteration and run
    for row in rows:
        if isinstance(row, tuple):  # RunStore.summary_history: (run, iteration, name, role, l2)
            run_id, index, name, role, l2 = row
        else:
            run_id, index, name, role, l2 = (
                row["run_id"],
                row["index"],
                row["name"],
                row["role"],
                row["l2"],
            )
        if run_id not in style or l2 is None:
            continue
        if role == names.ROLE_PARAM:
            quantity, param = WEIGHT_NORM, name
        elif role == names.ROLE_PARAM_GRAD:
            if name not in grad_of:
                grad_of[name] = names.parse(name).of
            quantity, param = GRAD_NORM, grad_of[name]
        else:
            continue
        params[param] = None
        by_run = tables[quantity].setdefault(param, {})
        series = by_run.get(run_id)
        if series is None:
            series = by_run[run_id] = Series(*style[run_id])
        series.x.append(int(index))
        series.y.append(float(l2))

    def panel(quantity: str, param: str) -> NormPanel:
        by_run = tables[quantity].get(param, {})
        return NormPanel(param, quantity, [by_run[r] for r, _, _ in runs if r in by_run])

    return [(panel(WEIGHT_NORM, p), panel(GRAD_NORM, p)) for p in params]


MARKED_POINTS = 30  # longer lines get no markers: thousands of marker nodes cost the browser


def _line(s: Series, hover: str, **extra) -> dict:
    return dict(
        type="scatter",
        x=s.x,
        y=s.y,
        mode="lines+markers" if len(s.x) <= MARKED_POINTS else "lines",
        name=plotly_text(s.label),
        line=dict(color=s.color, width=2),
        hovertemplate=hover + "<extra>%{fullData.name}</extra>",
        **extra,
    )


def loss_dict(series: Sequence[Series]) -> dict:
    """The loss of each run over its iterations, as a plain figure dict."""
    axis = dict(gridcolor="#e9ecef")
    return dict(
        data=[_line(s, "iteration %{x}: loss %{y:.6f}", marker=dict(size=6)) for s in series],
        layout=dict(
            template="none",
            height=320,
            margin=dict(l=50, r=10, t=36, b=84),
            font=FONT,
            title=dict(text="Loss", x=0, font=dict(size=14)),
            legend=dict(orientation="h", yanchor="top", y=-0.3),
            plot_bgcolor="white",
            paper_bgcolor="rgba(0,0,0,0)",
            xaxis=dict(axis, title=dict(text="iteration"), dtick=_iteration_dtick(series)),
            yaxis=axis,
        ),
    )


def norms_dict(pairs: Sequence[tuple[NormPanel, NormPanel]]) -> dict:
    """The norms over iterations as a plain figure dict: a grid of small charts (weight
    norms left, gradient norms right, a row per parameter tensor), laid out here instead
    of by make_subplots, which cost most of the compare page's time on a LeNet-5 run."""
    rows = max(len(pairs), 1)
    h_space, v_space = 0.1, min(0.12, 0.5 / rows)
    width = (1 - h_space) / 2
    height = (1 - v_space * (rows - 1)) / rows
    largest = max(
        (max(s.x, default=0) for pair in pairs for p in pair for s in p.series), default=0
    )
    layout = dict(
        template="none",
        height=max(260, 210 * rows + 60),
        margin=dict(l=50, r=10, t=40, b=40),
        font=FONT,
        legend=dict(orientation="h", y=-0.06, yanchor="top"),
        plot_bgcolor="white",
        paper_bgcolor="rgba(0,0,0,0)",
        annotations=[],
    )
    data, seen = [], set()
    for r in range(rows):
        top = 1 - r * (height + v_space)
        for c in range(2):
            k = 2 * r + c + 1
            suffix = "" if k == 1 else str(k)
            left = c * (width + h_space)
            layout[f"xaxis{suffix}"] = dict(
                domain=[left, left + width],
                anchor=f"y{suffix}",
                gridcolor="#e9ecef",
                dtick=1 if largest <= 20 else None,
            )
            layout[f"yaxis{suffix}"] = dict(
                domain=[max(top - height, 0), top], anchor=f"x{suffix}", gridcolor="#e9ecef"
            )
            if r >= len(pairs):
                continue
            panel = pairs[r][c]
            layout["annotations"].append(
                dict(
                    text=plotly_text(panel.title),
                    x=left + width / 2,
                    y=top,
                    xref="paper",
                    yref="paper",
                    xanchor="center",
                    yanchor="bottom",
                    showarrow=False,
                    font=dict(size=12),
                )
            )
            for s in panel.series:
                data.append(
                    _line(
                        s,
                        "iteration %{x}: %{y:.6g}",
                        marker=dict(size=5),
                        legendgroup=plotly_text(s.label),
                        showlegend=s.label not in seen,
                        xaxis=f"x{suffix}",
                        yaxis=f"y{suffix}",
                    )
                )
                seen.add(s.label)
    return dict(data=data, layout=layout)


def difference_bars_dict(stats: DifferenceStats, label_a: str = "A", label_b: str = "B") -> dict:
    """‖A‖₂, ‖B‖₂, ‖Δ‖₂ and max |Δ| as bars, a plain figure dict."""
    names_ = [f"‖{label_a}‖₂", f"‖{label_b}‖₂", "‖Δ‖₂", "max |Δ|"]
    values = [stats.norm_a, stats.norm_b, stats.l2, stats.max_abs]
    bar = dict(
        type="bar",
        x=[plotly_text(n) for n in names_],
        y=[finite_or_none(v) for v in values],
        marker=dict(color=["#6c757d", "#6c757d", "#8e44ad", "#8e44ad"]),
        text=[f"{v:.4g}" for v in values],
        textposition="outside",
        cliponaxis=False,
        hovertemplate="%{x}: %{y:.7g}<extra></extra>",
    )
    return dict(
        data=[bar],
        layout=dict(
            template="none",
            height=240,
            margin=dict(l=40, r=10, t=24, b=30),
            font=FONT,
            showlegend=False,
            plot_bgcolor="white",
            paper_bgcolor="rgba(0,0,0,0)",
            yaxis=dict(gridcolor="#e9ecef", rangemode="tozero"),
        ),
    )


def _iteration_dtick(series: Sequence[Series]) -> int | None:
    largest = max((max(s.x, default=0) for s in series), default=0)
    return 1 if largest <= 20 else None


# ---------------------------------------------------------------- architecture


@dataclass(frozen=True)
class DiagramBox:
    name: str  # layer name (store text, escaped when drawn)
    kind: str  # layer type, e.g. "Conv2d"
    shape: tuple[int, ...] | None  # output shape
    params: int = 0


_KIND_COLORS = {
    "input": "#e9ecef",
    "Conv2d": "#cfe2ff",
    "Linear": "#d1e7dd",
    "ReLU": "#fff3cd",
    "MaxPool2d": "#f8d7da",
    "Flatten": "#e2e3e5",
}


def architecture_diagram(boxes: Sequence[DiagramBox]) -> go.Figure:
    """The layer sequence left to right: a box per layer (name, type, output shape,
    parameters) and an arrow from each layer to the next."""
    fig = go.Figure()
    box_w, gap = 1.0, 0.45
    for i, box in enumerate(boxes):
        x0 = i * (box_w + gap)
        color = _KIND_COLORS.get(
            box.kind or "input", "#ede7f6" if box.kind.endswith("Loss") else "#f1f3f5"
        )
        fig.add_shape(
            type="rect",
            x0=x0,
            x1=x0 + box_w,
            y0=0,
            y1=1,
            line=dict(color="#495057", width=1),
            fillcolor=color,
            layer="below",
        )
        lines = [f"<b>{plotly_text(box.name)}</b>"] + ([plotly_text(box.kind)] if box.kind else [])
        if box.shape is not None:
            lines.append(format_shape(box.shape))
        if box.params:
            lines.append(f"{box.params} params")
        fig.add_annotation(
            x=x0 + box_w / 2,
            y=0.5,
            text="<br>".join(lines),
            showarrow=False,
            font=dict(size=11),
            align="center",
        )
        if i:
            fig.add_annotation(
                x=x0,
                y=0.5,
                ax=x0 - gap,
                ay=0.5,
                xref="x",
                yref="y",
                axref="x",
                ayref="y",
                text="",
                showarrow=True,
                arrowhead=2,
                arrowsize=1.2,
                arrowwidth=1.5,
                arrowcolor="#495057",
            )
    n = max(len(boxes), 1)
    span = n * box_w + (n - 1) * gap
    fig.update_layout(
        template="none",
        width=int(max(360, 170 * n)),
        height=150,
        margin=dict(l=6, r=6, t=6, b=6),
        font=FONT,
        plot_bgcolor="rgba(0,0,0,0)",
        paper_bgcolor="rgba(0,0,0,0)",
        showlegend=False,
    )
    fig.update_xaxes(visible=False, range=[-0.05, span + 0.05], fixedrange=True)
    fig.update_yaxes(visible=False, range=[-0.05, 1.05], fixedrange=True)
    return fig


def empty_figure(message: str, height: int = 200) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(
        text=plotly_text(message), showarrow=False, font=dict(size=13, color="#6c757d")
    )
    fig.update_layout(
        template="none",
        height=height,
        margin=dict(l=0, r=0, t=0, b=0),
        plot_bgcolor="white",
        paper_bgcolor="rgba(0,0,0,0)",
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
