"""Static markup (dashapp.statichtml): every text and attribute escaped, links marked."""

from __future__ import annotations

from dash import dcc, html
from dash_helpers import as_component, components

from dashapp import statichtml

EVIL = '<img src="x" onerror="alert(1)">&amp;'


def test_text_and_attributes_are_escaped():
    markup = statichtml.tag("code", EVIL, className="tensor-name", title=EVIL, data_tex="a<b")
    assert "<img" not in markup and 'onerror="' not in markup
    node = as_component(statichtml.html_node([markup], className="tensor-header"))
    (code,) = components(node, html.Code)
    assert code.children == EVIL and code.title == EVIL  # the browser reads the text back
    assert getattr(code, "data-tex") == "a<b"


def test_attributes_none_false_left_out_true_bare():
    markup = statichtml.tag("div", className="formula-expanded", hidden=True, title=None, x=False)
    assert markup == '<div class="formula-expanded" hidden></div>'


def test_links_move_inside_the_app_and_the_node_keeps_its_element():
    node = statichtml.html_node(
        [statichtml.link("conv1", "/iteration?run=1&it=2", className="toc-layer")],
        element="nav",
        className="toc",
        **{"aria-label": "this iteration"},
    )
    assert node["namespace"] == "cnnviz_static" and node["type"] == "Html"
    assert node["props"]["html"] == (
        '<a href="/iteration?run=1&amp;it=2" class="toc-layer" data-dash-link>conv1</a>'
    )
    shown = as_component(node)
    assert isinstance(shown, html.Nav) and getattr(shown, "aria-label") == "this iteration"
    (link,) = components(shown, dcc.Link)
    assert link.href == "/iteration?run=1&it=2" and link.children == "conv1"
