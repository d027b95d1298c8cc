"""The tensor panel: one tensor as an All-in-One component that any page can place.

A panel shows a tensor's name, shape, role and summary over the full tensor, and a
heatmap of one window (at most 64x64) of one (rows, cols) plane: the sample and
channel (or out/in channel of a kernel) pick the plane, the row and column offsets
and the arrow buttons move the window, so any element of any tensor can be reached.

Nothing is read when the page is built: the heatmap slot holds the address of its
figure (`data-src`, GET /figure/<run>/<iteration>/<tensor>.json?lead=..&row=..&col=..,
served from `Store.tensor_window`, which reads only that window's bytes), and
assets/heatmap_queue.js fetches and draws it once the slot nears the viewport.

The controls work in the browser (assets/tensor_panel.js): a new plane or window is a
new figure address for the slot, kept within the tensor's limits (`data-limits`, those
of `PanelView.clamped`); the figure route's answer carries the window's caption, which
the page shows with the heatmap. The panel's view is in the URL as
`t.<tensor>=<lead>@<row>,<col>` (1-based, e.g. `t.0.out=3,2@1,1`,
`t.fc1.weight=@65,1`): a link opens exactly that view, and moving the window adds a
history entry, so back and forward step through the views.

Component ids derive from one `aio_id` (Dash's All-in-One pattern): other code can
listen to `TensorPanel.ids.click(MATCH)` (`data`: run, it, tensor, lead, row, col of
a clicked cell) without knowing how the panel is drawn.
"""

from __future__ import annotations

import dataclasses
import html as html_lib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import flask
import numpy as np
from dash import (
    dcc,
    html,
)
from markupsafe import Markup, escape
from plotly.utils import PlotlyJSONEncoder
from werkzeug.exceptions import HTTPException

from storage import TensorRecord, names

from . import figures, links, statichtml
from .data import NotFound, current_store
from .formatting import format_scalar, format_shape
from .plain import el
from .tensorview import (
    MAX_COLS,
    MAX_ROWS,
    caption_of,
    difference_view,
    lead_dims,
    plane_shape,
    window_view,
)

FIGURE = "/figure"
URL_PREFIX = "t."  # query keys of panel views: t.<tensor name>
GRAPH_CONFIG = {"displayModeBar": False, "responsive": False}
ROLE_LABELS = {
    names.ROLE_INPUT: "input batch",
    names.ROLE_TARGET: "labels",
    names.ROLE_PARAM: "weight",
    names.ROLE_PARAM_GRAD: "gradient",
    names.ROLE_PARAM_NEXT: "weight after the update",
    names.ROLE_UPDATE: "update",
    names.ROLE_ACTIVATION: "activation",
    names.ROLE_ACTIVATION_GRAD: "gradient of an activation",
    names.ROLE_INPUT_GRAD: "gradient of the input",
    names.ROLE_INTERMEDIATE: "intermediate",
    names.ROLE_OPTIMIZER_STATE: "optimizer state",
    names.ROLE_OUTPUT: "output",
}
# A heatmap slot's opening tag in static markup (as `_panel` writes it: class first).
_SLOT_TAG = re.compile(
    r'<div class="heatmap heatmap-slot"(?P<attributes>[^>]*?\sdata-src="(?P<src>[^"]*)"[^>]*)>'
)
_VIEW = re.compile(r"((?:[0-9]{1,9})(?:,[0-9]{1,9})*)?@([0-9]{1,9}),([0-9]{1,9})")
_NAME = re.compile(r"[\w.#@\-]{1,300}")
_INDEX = re.compile(r"[0-9]{1,9}")
_SELECTION = re.compile(
    r"([0-9]{1,18}):([0-9]{1,18})"
)  # ASCII digits only: str.isdigit() also takes "²"
MOVE_ARROWS = (("left", "←"), ("up", "↑"), ("down", "↓"), ("right", "→"))


@dataclass(frozen=True)
class PanelView:
    """Which window of which plane a panel shows (0-based)."""

    lead: tuple[int, ...] = ()
    row0: int = 0
    col0: int = 0

    def clamped(self, shape: tuple[int, ...], role: str = "") -> PanelView:
        dims = lead_dims(shape, role)
        rows, cols = plane_shape(shape)
        lead = tuple(
            min(max(self.lead[i] if i < len(self.lead) else 0, 0), d.size - 1)
            for i, d in enumerate(dims)
        )
        return PanelView(
            lead=lead,
            row0=min(max(self.row0, 0), max(rows - MAX_ROWS, 0)),
            col0=min(max(self.col0, 0), max(cols - MAX_COLS, 0)),
        )

    def to_url(self) -> str:
        return ",".join(str(i + 1) for i in self.lead) + f"@{self.row0 + 1},{self.col0 + 1}"

    @classmethod
    def from_url(cls, text) -> PanelView:
        if isinstance(text, list):
            raise NotFound("the address gives a tensor's view more than once")
        match = _VIEW.fullmatch(str(text).strip())
        if not match or int(match.group(2)) < 1 or int(match.group(3)) < 1:
            raise NotFound(
                f"tensor view {text!r} is not of the form SAMPLE,CHANNEL@ROW,COLUMN, e.g. 1,2@1,1"
            )
        lead = tuple(int(p) - 1 for p in match.group(1).split(",")) if match.group(1) else ()
        if any(i < 0 for i in lead):
            raise NotFound(f"tensor view {text!r} counts from 1")
        return cls(lead=lead, row0=int(match.group(2)) - 1, col0=int(match.group(3)) - 1)


def views_from_query(query: dict) -> dict[str, PanelView]:
    """{tensor name: view} from the `t.<name>` keys of a query string."""
    return {
        key[len(URL_PREFIX) :]: PanelView.from_url(value)
        for key, value in query.items()
        if key.startswith(URL_PREFIX)
    }


def figure_url(
    run_id: int, index: int, name: str, view: PanelView, extra: Mapping[str, str] | None = None
) -> str:
    """The figure address of one window; `extra` adds query keys of the figure route
    (`with`: share the colour scale with another run's tensor; `minus`: the difference)."""
    query = f"lead={','.join(str(i) for i in view.lead)}&row={view.row0}&col={view.col0}"
    if extra:
        query += "&" + urlencode(dict(extra))
    return f"{FIGURE}/{int(run_id)}/{int(index)}/{quote(name, safe='')}.json?{query}"


def _gaps(tensor: TensorRecord, view: PanelView) -> tuple[int, int, int]:
    """(cells not stored, cells shown, rows x cols shown) of a window, from the counts alone."""
    rows, cols = plane_shape(tensor.shape)
    shown = (min(rows, MAX_ROWS), min(cols, MAX_COLS))
    stored = tensor.stored_numel
    if stored is None:
        return 0, shown[0] * shown[1], shown
    dims = lead_dims(tensor.shape, tensor.role)
    start = int(np.ravel_multi_index(view.lead, [d.size for d in dims])) if dims else 0
    flat = (
        start * rows * cols
        + (view.row0 + np.arange(shown[0]))[:, None] * cols
        + (view.col0 + np.arange(shown[1]))[None, :]
    )
    return int((flat >= stored).sum()), flat.size, shown


def caption(tensor: TensorRecord, view: PanelView) -> str:
    gaps, size, shown = _gaps(tensor, view)
    dims = lead_dims(tensor.shape, tensor.role)
    return caption_of(
        dims, view.lead, (view.row0, view.col0), shown, plane_shape(tensor.shape), gaps, size
    )


def summary_line(tensor: TensorRecord) -> str:
    """min, max, mean, ‖·‖₂ (and NaN/inf counts) over all the tensor's values."""
    s = tensor.summary or {}
    numel = int(np.prod(tensor.shape, dtype=np.int64))
    integral = tensor.array.dtype.kind in "biu"
    parts = [
        f"{label} {s[key]:g}"
        if integral and key in ("min", "max")
        else f"{label} {format_scalar(s.get(key))}"
        for label, key in (("min", "min"), ("max", "max"), ("mean", "mean"), ("‖·‖₂", "l2"))
        if s.get(key) is not None
    ]
    for label, key in (("NaN", "nan_count"), ("inf", "inf_count")):
        if s.get(key):
            parts.append(f"{s[key]} {label}")
    return " · ".join(parts) + f" (over all {numel:,} values)" if parts else ""


def _stringified(component_id: dict) -> str:
    """A dict id as Dash writes it in the page (keys sorted, compact)."""
    return json.dumps(component_id, sort_keys=True, separators=(",", ":"))


def _panel(
    tensor: TensorRecord,
    *,
    run_id: int,
    index: int,
    aio_id: str,
    view: PanelView | None = None,
    scalar: float | None = None,
    follows: str | None = None,
    view_store: str | None = None,
    figure_query: Mapping[str, str] | None = None,
    summary: str | None = None,
    downloads: bool = True,
    click: dict | None = None,
) -> tuple[dict[str, str], Markup]:
    """A panel's attributes (data-tensor, data-aio, ...) and what it holds, as markup.

    `follows`: the aio_id of the panel whose window this one shows, with no controls of
    its own (side B and the difference follow side A on the compare page).
    `view_store`: the id of a dcc.Store that gets this panel's view as the URL writes it
    ("" for the first window) each time it changes (a page callback that needs the
    window reads it there). `figure_query`: extra keys of the figure address (see
    `figure`). `summary`: a line to show instead of the tensor's own summary.
    `downloads=False`: no download links. `click`: the id of the store a click on a
    cell goes to (see `TensorPanel`)."""
    view = (view or PanelView()).clamped(tensor.shape, tensor.role)
    tag = statichtml.tag
    parts = [
        tag(
            "div",
            [
                tag("code", tensor.name, className="tensor-name"),
                tag("span", format_shape(tensor.shape), className="tensor-shape"),
                tag("span", ROLE_LABELS.get(tensor.role, tensor.role), className="tensor-role"),
            ],
            className="tensor-header",
        )
    ]
    limits = None
    if len(tensor.shape) == 0:
        parts.append(tag("div", format_scalar(scalar), className="tensor-scalar"))
    else:
        line = summary if summary is not None else summary_line(tensor)
        parts.append(tag("div", line, className="tensor-summary"))
        if follows is None:
            controls, limits = _controls(tensor, view)
            parts.append(controls)
        rows, cols = plane_shape(tensor.shape)
        width, height = figures.heatmap_size(min(rows, MAX_ROWS), min(cols, MAX_COLS))
        parts.append(
            tag(
                "div",
                className="heatmap heatmap-slot",
                style=f"width: {width}px; height: {height}px",
                data_src=figure_url(run_id, index, tensor.name, view, figure_query),
                data_config=json.dumps(GRAPH_CONFIG),
                data_click=_stringified(click) if click is not None else None,
                # provenance_click.js: which tensor a click on a cell asks about
                data_tensor=tensor.name,
            )
        )
        # assets/heatmap_queue.js writes the caption of each window it draws here
        parts.append(tag("div", caption(tensor, view), className="tensor-caption"))
    if downloads:
        parts.append(
            tag(
                "div",
                [
                    tag(
                        "a",
                        f".{fmt}",
                        href=links.download(run_id, index, tensor.name, fmt),
                        download="",
                        className="download-link",
                        title=f"download all values as .{fmt}",
                    )
                    for fmt in links.DOWNLOAD_FORMATS
                ],
                className="tensor-downloads",
            )
        )
    attributes = {"data-tensor": tensor.name, "data-aio": aio_id}
    if limits is not None:
        attributes["data-limits"] = json.dumps(limits, separators=(",", ":"))
    if follows is not None:
        # the window is that panel's, which keeps the URL (assets/tensor_panel.js)
        attributes["data-follows"] = follows
    if view_store is not None:
        attributes["data-view-store"] = view_store
    return attributes, Markup("").join(parts)


def panel_markup(tensor: TensorRecord, **options) -> Markup:
    """A panel as markup (`TensorPanel`'s options, no click store), for a part of a page
    that is static markup as a whole (the iteration page's step cards)."""
    attributes, inner = _panel(tensor, **options)
    named = {key.replace("-", "_"): value for key, value in attributes.items()}
    return statichtml.tag("div", inner, className="tensor-panel", **named)


class TensorPanel(html.Div):
    """One tensor: header, full-tensor summary, window controls, lazy heatmap, downloads.

    Everything in it is static markup (one component, dashapp/statichtml.py): a LeNet-5
    view shows up to 20 panels, and every Dash component costs the browser time when a
    view is shown (each panel with window controls was 15 components: inputs, buttons,
    labels and the stores of a server callback). The controls are driven in the browser
    (assets/tensor_panel.js): they rewrite the slot's figure address, whose answer also
    carries the window's caption (`figure`). `panel_markup` gives the same panel as
    markup for inside a larger static part."""

    class ids:
        @staticmethod
        def part(name: str, aio_id):
            return {"component": "TensorPanel", "subcomponent": name, "aio_id": aio_id}

        click = staticmethod(lambda aio_id: TensorPanel.ids.part("click", aio_id))

    def __init__(self, tensor: TensorRecord, *, aio_id: str, click_store: bool = True, **options):
        """`options`: those of `_panel` (run_id, index, view, ...). `click_store=False`:
        no `ids.click` store (a page that listens to clicks its own way, as the iteration
        page's provenance does, saves a component per panel)."""
        has_plane = len(tensor.shape) > 0
        click = self.ids.click(aio_id) if click_store and has_plane else None
        attributes, inner = _panel(tensor, aio_id=aio_id, click=click, **options)
        super().__init__(
            [statichtml.html_node(inner), el(dcc.Store, id=click) if click else None],
            className="tensor-panel",
            **attributes,
        )


def _controls(tensor: TensorRecord, view: PanelView):
    """The window controls of a panel, as markup, and the limits assets/tensor_panel.js
    keeps its views within (those of PanelView.clamped); (None, None) when the whole
    plane is shown and there is no plane to choose."""
    rows, cols = plane_shape(tensor.shape)
    dims = lead_dims(tensor.shape, tensor.role)
    rows_more, cols_more = rows > MAX_ROWS, cols > MAX_COLS
    parts = [
        _number(dim.label, str(dim.axis), view.lead[dim.axis] + 1, dim.size)
        for dim in dims
        if dim.size > 1
    ]
    if rows_more:
        parts.append(_number("rows from", "row", view.row0 + 1, rows))
    if cols_more:
        parts.append(_number("columns from", "col", view.col0 + 1, cols))
    if rows_more or cols_more:
        parts.append(
            statichtml.tag(
                "span",
                [
                    statichtml.tag(
                        "button",
                        arrow,
                        type="button",
                        className="btn btn-outline-secondary btn-sm pan-button",
                        title=f"move the window {direction}",
                        data_move=direction,
                        disabled=(rows <= MAX_ROWS)
                        if direction in ("up", "down")
                        else (cols <= MAX_COLS),
                    )
                    for direction, arrow in MOVE_ARROWS
                ],
                className="pan-buttons",
            )
        )
    if not parts:
        return None, None
    limits = {
        "lead": [d.size for d in dims],
        "rows": rows,
        "cols": cols,
        "window": [MAX_ROWS, MAX_COLS],
    }
    return statichtml.tag("div", parts, className="slice-controls"), limits


def _number(label: str, axis: str, value: int, size: int):
    """A number input with − and + (1-based): a lead index (`axis` "0", "1", ...), or the
    window's first row ("row") or column ("col")."""
    tag = statichtml.tag
    return tag(
        "label",
        [
            tag("span", label, className="me-1"),
            tag(
                "span",
                [
                    tag(
                        "button",
                        "−",
                        type="button",
                        className="slice-step",
                        data_step="-1",
                        aria_label=f"previous ({label})",
                    ),
                    tag(
                        "input",
                        type="number",
                        className="slice-value",
                        min="1",
                        max=str(size),
                        step="1",
                        value=str(value),
                        data_axis=axis,
                        aria_label=label,
                    ),
                    tag(
                        "button",
                        "+",
                        type="button",
                        className="slice-step",
                        data_step="1",
                        aria_label=f"next ({label})",
                    ),
                ],
                className="slice-input",
            ),
            tag("span", f"of {size}", className="ms-1 text-muted"),
        ],
        className="slice-control",
    )


FIGURE_ENDPOINT = "cnnviz_figure"


def register(app) -> None:
    """The figure route (GET /figure/<run>/<it>/<tensor>.json)."""
    app.server.add_url_rule(
        f"{FIGURE}/<int:run_id>/<int:index>/<filename>",
        endpoint=FIGURE_ENDPOINT,
        view_func=figure,
        methods=["GET"],
    )


def _ints(text: str | None, *, most: int | None = None) -> tuple[int, ...]:
    """Comma-separated indices from a query argument; anything else is a 404."""
    parts = [p for p in (text or "").split(",") if p != ""]
    if not all(_INDEX.fullmatch(p) for p in parts) or (most is not None and len(parts) > most):
        flask.abort(404)
    return tuple(int(p) for p in parts)


def _selection(text: str) -> tuple[int, int]:
    """'RUN:ITERATION' from a query argument; anything else is a 404."""
    match = _SELECTION.fullmatch(text or "")
    if not match:
        flask.abort(404)
    return int(match.group(1)), int(match.group(2))


def shared_range(view, store, other: tuple[int, int], name: str):
    """`view` coloured over its tensor's and the other run's tensor's full ranges, so
    that two heatmaps share one scale (their summaries; one element of the other read)."""
    found = store.tensor_window(*other, name, rows=1, cols=1)
    summary = (found.tensor.summary or {}) if found is not None else {}
    low, high = summary.get("min"), summary.get("max")
    if view.full_range is None or low is None or high is None:
        return view
    ranges = [*view.full_range, low, high]
    finite = [v for v in ranges if math.isfinite(v)]
    if not finite:
        return view
    return dataclasses.replace(view, full_range=(min(finite), max(finite)))


def figure(run_id: int, index: int, filename: str) -> flask.Response:
    """GET /figure/<run>/<it>/<tensor>.json?lead=s,c&row=R&col=C: one window's heatmap.

    `&with=RUN:IT` colours it on one scale with the same tensor of another iteration;
    `&minus=RUN:IT` draws this window minus that iteration's (the compare page's B − A)."""
    name = _tensor_name(filename)
    figure = window_figure(current_store(), run_id, index, name, flask.request.args)
    response = flask.Response(
        json.dumps(figure, cls=PlotlyJSONEncoder), mimetype="application/json"
    )
    response.headers["Cache-Control"] = "private, max-age=3600"  # a stored iteration never changes
    return response


def _tensor_name(filename: str) -> str:
    """`<tensor>.json` -> the tensor's name; anything else is a 404."""
    name, dot, ext = filename.rpartition(".")
    if not dot or ext != "json" or not _NAME.fullmatch(name):
        flask.abort(404)
    return name


def window_figure(store, run_id: int, index: int, name: str, args: Mapping[str, str]) -> dict:
    """The figure of the window `args` names (the figure route's query), with the
    window's caption (`caption`, shown under the heatmap); 404 (an HTTP exception) for
    a tensor, window or other iteration that is not there."""
    (row0,) = _ints(args.get("row", "0"), most=1) or (0,)
    (col0,) = _ints(args.get("col", "0"), most=1) or (0,)
    place = dict(lead=_ints(args.get("lead")), row0=row0, col0=col0, rows=MAX_ROWS, cols=MAX_COLS)
    window = store.tensor_window(run_id, index, name, **place)
    if window is None:
        flask.abort(404)
    view = window_view(window)
    shown = PanelView(lead=tuple(window.lead), row0=window.row0, col0=window.col0)
    if "minus" in args:  # B - A in this window, on its own diverging scale
        other = store.tensor_window(*_selection(args["minus"]), name, **place)
        if other is None or tuple(other.tensor.shape) != tuple(window.tensor.shape):
            flask.abort(404)
        diff = difference_view(window_view(other), view)
        figure = figures.heatmap_dict(
            diff,
            colorscale=figures.DIFF_STOPS,
            colorbar=True,
            zrange=figures.symmetric_range(diff.values),
        )
        counts = [
            n for n in (window.tensor.stored_numel, other.tensor.stored_numel) if n is not None
        ]
        both = dataclasses.replace(window.tensor, stored_numel=min(counts) if counts else None)
        return {**figure, "caption": caption(both, shown)}
    if "with" in args:  # one colour scale over both tensors' full ranges
        view = shared_range(view, store, _selection(args["with"]), name)
    return {**figures.heatmap_dict(view), "caption": caption(window.tensor, shown)}


def send_first_figures(store, tree, count: int = 2) -> None:
    """Put the figures of the first `count` heatmap slots of a page's plain tree (in
    document order, in components and in static markup alike) into the page:
    `data-sent-figure`, the figure of the address in `data-sent-src` (the slot's
    `data-src` until its panel shows another window).

    A view opens at its top, where these slots are: the browser draws them as soon as
    the view is built (assets/heatmap_queue.js) instead of asking the figure route for
    them then, which on a LeNet-5 view put 80-200 ms between the view and its first
    heatmap. Each figure is the route's own answer for the slot's address; the slots
    further down are fetched as they come near the viewport, as before, and a slot
    whose window changes fetches its new figure. Another slot of the view with the same
    address (a LeNet-5 conv1 view shows X_col in two steps) is drawn from it too."""
    slots = []  # (props of a slot component, None) or (props of an Html node, match)

    def walk(node):
        if len(slots) >= count:
            return
        if isinstance(node, (list, tuple)):
            for child in node:
                walk(child)
        elif isinstance(node, dict) and isinstance(node.get("props"), dict):
            props = node["props"]
            if node.get("namespace") == statichtml.NAMESPACE:
                for match in _SLOT_TAG.finditer(props.get("html") or ""):
                    if len(slots) < count:
                        slots.append((props, match))
                return
            if " heatmap-slot " in f" {props.get('className') or ''} " and props.get("data-src"):
                slots.append((props, None))
            walk(props.get("children"))

    walk(tree)
    routes = flask.current_app.url_map.bind("localhost")
    for props, match in reversed(slots):  # from the end: a match's offsets stay right
        src = props["data-src"] if match is None else html_lib.unescape(match["src"])
        address = urlsplit(src)
        try:  # the address as the figure route reads it
            endpoint, values = routes.match(unquote(address.path), method="GET")
            if endpoint != FIGURE_ENDPOINT:
                continue
            name = _tensor_name(values["filename"])
            args = dict(parse_qsl(address.query))
            figure = window_figure(store, values["run_id"], values["index"], name, args)
        except HTTPException:
            continue  # not there: the browser asks the route, which says so
        sent = json.dumps(figure, cls=PlotlyJSONEncoder)
        if match is None:
            props["data-sent-src"] = src
            props["data-sent-figure"] = sent
        else:
            added = f' data-sent-src="{escape(src)}" data-sent-figure="{escape(sent)}"'
            text, at = props["html"], match.end("attributes")
            props["html"] = text[:at] + added + text[at:]
