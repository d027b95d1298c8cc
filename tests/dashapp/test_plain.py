"""Pages sent as plain trees (dashapp.plain) are exactly what Dash's classes send."""

from __future__ import annotations

import json
import sys
from urllib.parse import parse_qsl

import pytest
from dash import dcc, html
from dash._utils import to_json
from dash_helpers import as_component, page_content

from dashapp import plain

ADDRESSES = [
    ("/", ""),
    ("/", "?sort=loss&order=desc&pick=1,3&per=25"),
    ("/", "?seed=nope"),  # not found
    ("/iteration", "?run=1&it=2"),
    ("/iteration", "?run=3&it=1&phase=forward"),
    ("/iteration", "?run=1&it=3&phase=backward&layer=conv"),
    ("/iteration", "?run=2&it=1&phase=update"),
    ("/iteration", "?run=1&it=1&phase=whatif"),
    ("/iteration", "?run=1&it=1&t.conv.out=1,1@1,1"),
    ("/model", "?run=3"),
    ("/compare", "?a=1:1&b=2:3"),
    ("/nowhere", ""),
]
MODULES = {"/": "runs", "/iteration": "iteration", "/model": "model", "/compare": "compare"}


def components_of(node):
    """Every plain node in `node` turned back into the component its class builds
    (statichtml's `Html` nodes have no class: they are sent as they are)."""
    node = as_component(node, static=False)
    if isinstance(node, list):
        return [components_of(n) for n in node]
    children = getattr(node, "children", None)
    if children is not None and not isinstance(children, (str, int, float)):
        node.children = components_of(children)
    return node


@pytest.mark.parametrize(("path", "search"), ADDRESSES)
def test_a_page_sends_what_its_components_would(dash_app, path, search):
    client = dash_app.server.test_client()
    sent = page_content(client, path, search)
    module = sys.modules[f"dashapp.pages.{MODULES.get(path, 'not_found_404')}"]
    with dash_app.server.test_request_context():
        built = module.layout(**dict(parse_qsl(search.lstrip("?"))))
    expected = json.loads(to_json(components_of(built)))  # Dash's own to_plotly_json
    assert sent == expected
    assert "Something went wrong" not in json.dumps(sent)


def test_el_checks_props_as_dash_does():
    assert plain.el(html.Td, "x", className="num", **{"data-run": "1"}) == (
        html.Td("x", className="num", **{"data-run": "1"}).to_plotly_json()
    )
    with pytest.raises(TypeError, match="no prop colour"):
        plain.el(html.Td, "x", colour="red")
    with pytest.raises(TypeError, match="no children"):
        plain.el(dcc.Input, "x")


def test_tree_converts_components_anywhere():
    label = html.Span("a")
    node = dcc.Dropdown(options=[{"label": label, "value": 1}], value=1, id="d")
    assert plain.tree([node, ("x", 2)]) == [
        json.loads(to_json(node)),
        ["x", 2],
    ]
