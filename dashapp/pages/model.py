"""Model architecture (?run=ID): the layers in order, their shapes, parameter
counts, one-line descriptions and defining formulas, and a diagram."""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import dcc, html

from dashapp import figures, layouts, links
from dashapp.data import current_store, default_run, parse_int, require_run, store_location
from dashapp.formatting import format_shape
from dashapp.guard import page_layout
from storage import LayerInfo, RunInfo

dash.register_page(__name__, path=links.MODEL, name="Model", title="Model · cnnviz", order=1)


def diagram_boxes(layers: list[LayerInfo]) -> list[figures.DiagramBox]:
    """The input, then every layer with its output shape."""
    boxes = []
    if layers and layers[0].input_shape is not None:
        boxes.append(figures.DiagramBox("input", "", tuple(layers[0].input_shape)))
    for layer in layers:
        shape = tuple(layer.output_shape) if layer.output_shape is not None else None
        if shape is None and layer.type.endswith("Loss"):
            shape = ()  # the loss is one number
        boxes.append(figures.DiagramBox(layer.name, layer.type, shape, layer.num_params))
    return boxes


def layer_table(run: RunInfo) -> dbc.Table:
    rows = []
    for layer in run.layers:
        output = layer.output_shape
        if output is None and layer.type.endswith("Loss"):
            output = ()  # the loss is one number
        shapes = f"{_shape(layer.input_shape)} → {_shape(output)}"
        description = [layer.description]
        if not layer.explained:
            description.append(
                html.Div(
                    "stored as raw tensors: no matrix form for this layer yet",
                    className="text-warning small",
                )
            )
        rows.append(
            html.Tr(
                [
                    html.Td(str(layer.position + 1), className="num"),
                    html.Td(
                        [html.Code(layer.name), html.Div(layer.type, className="text-muted small")]
                    ),
                    html.Td(shapes, className="shape-cell"),
                    html.Td(str(layer.num_params), className="num"),
                    html.Td(description),
                    html.Td(layers_formula(layer), className="formula-cell"),
                ],
                **{"data-layer": layer.name},
            )
        )
    header = html.Thead(
        html.Tr(
            [
                html.Th("#"),
                html.Th("Layer"),
                html.Th("Input → output"),
                html.Th("Parameters"),
                html.Th("What it does"),
                html.Th("Formula"),
            ]
        )
    )
    return dbc.Table(
        [header, html.Tbody(rows)], responsive=True, className="layers-table align-middle"
    )


def layers_formula(layer: LayerInfo):
    return (
        layouts.formula(layer.formula) if layer.formula else html.Span("—", className="text-muted")
    )


def _shape(shape) -> str:
    return "?" if shape is None else format_shape(shape)


def run_facts(run: RunInfo) -> dbc.Card:
    settings = (
        ", ".join(
            f"{k}={v}"
            for k, v in sorted(run.optimizer_settings.items())
            if v not in (None, False, 0, 0.0)
        )
        or "defaults"
    )
    facts = [
        ("Model", run.model_description or run.model_name),
        ("Optimizer", f"{run.optimizer} ({settings})" if run.optimizer else "none"),
        ("Loss", run.loss_name or "none"),
        ("Data", run.dataset or "not recorded"),
        ("Seed", "not recorded" if run.seed is None else str(run.seed)),
        ("Traced with", f"torch {run.torch_version}, cnnviz {run.cnnviz_version}"),
    ]
    return dbc.Card(
        dbc.CardBody(
            html.Dl(sum(([html.Dt(k), html.Dd(v)] for k, v in facts), []), className="facts mb-0")
        ),
        className="mb-3 shadow-sm",
    )


def validate(run=None, **_query) -> None:
    """NotFound for an unknown run (dashapp.status: HTTP 404)."""
    run_id = parse_int(run, "run")
    if run_id is not None:
        require_run(current_store(), run_id)


@page_layout
def layout(run=None, **_query):
    store = current_store()
    run_id = parse_int(run, "run")
    info = require_run(store, run_id) if run_id is not None else default_run(store)
    if info is None:
        return html.Div([layouts.page_header("Model"), layouts.empty_store(store_location())])
    total = sum(layer.num_params for layer in info.layers)
    header = layouts.page_header(
        "Model architecture",
        subtitle=[
            layouts.bdi(info.name, className="run-name"),
            " · ",
            info.model_name,
            f" · {len(info.layers)} layers, {total} parameters",
        ],
        crumbs=[
            ("Runs", links.RUNS),
            (
                layouts.bdi(info.name),
                links.iteration(info.id, 1) if info.num_iterations else None,
            ),
            ("Model", None),
        ],
        actions=dcc.Link(
            "Step through iteration 1 →",
            href=links.iteration(info.id, 1),
            className="btn btn-outline-primary",
        )
        if info.num_iterations
        else None,
    )
    if not info.layers:
        body = dbc.Alert(
            "The layers are recorded with the first traced iteration; this run has none yet.",
            color="info",
        )
        return html.Div([header, run_facts(info), body])
    diagram = dcc.Graph(
        id="model-diagram",
        figure=figures.architecture_diagram(diagram_boxes(info.layers)),
        config=layouts.GRAPH_CONFIG,
    )
    return html.Div(
        [
            header,
            run_facts(info),
            html.H2("Layer sequence", className="h5"),
            html.Div(diagram, className="diagram-scroll mb-3"),
            html.H2("Layers", className="h5"),
            layer_table(info),
        ]
    )
