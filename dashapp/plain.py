"""Pages as the plain JSON-ready trees Dash sends, built and serialised cheaply.

What the browser receives for a component is `{"type", "namespace", "props"}`:
exactly what Dash's `Component.to_plotly_json()` returns, and all the renderer reads.
Dash's classes are slow on the server for two reasons, measured on the runs page
(about 1,000 components): the constructor checks every keyword and formats an error
message for each one even when there is no error (about 45 µs a component), and the
JSON encoder calls `to_plotly_json` per component, which asks `hasattr` for every
prop the class knows (about 40 µs). Together about 0.7 ms a row of the runs table.

- `tree(layout)` turns a tree of components (and plain nodes) into plain dicts with
  the same props, so the encoder runs at C speed: the page-content callback sends it
  (`app.create_app` wraps every page's layout with `serve_plain`).
- `el(html.Td, children, className=...)` builds one plain node directly where a page
  makes hundreds (the runs table's rows, a tensor panel's insides, a step card's
  parts). The keyword names are checked against the class's props, as Dash checks
  them, once per class and set of names.

Both give the JSON the component classes give (tests/dashapp/test_plain.py compares
whole pages); the tests turn plain nodes back into components (dash_helpers.walk).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from dash.development.base_component import Component

# Instance attributes Dash's generated __init__ sets besides the props.
_INTERNAL = frozenset(
    {
        "_prop_names",
        "_valid_wildcard_attributes",
        "available_properties",
        "available_wildcard_properties",
    }
)


@functools.cache
def _props_of(cls: type) -> tuple[frozenset[str], tuple[str, ...]]:
    """(prop names, wildcard prefixes such as "data-") of a component class."""
    given: dict[str, str | None] = {}
    while True:
        try:
            sample = cls(**given)
            break
        except TypeError as exc:  # a required prop (dcc.Link's href): give it, as None
            missing = re.search(r"Required argument `(\w+)`", str(exc))
            if missing is None or missing.group(1) in given:
                raise
            given[missing.group(1)] = "x" if missing.group(1) == "id" else None
    return frozenset(sample._prop_names), tuple(sample._valid_wildcard_attributes) or ("\0",)


class Node(dict):
    """A plain node made by `el` or `tree`: all plain inside, so `tree` keeps it as it is
    (a kept part of a page is not walked again when the page around it is)."""

    __slots__ = ()


_known: dict[type, tuple[frozenset[str], tuple[str, ...]]] = {}
_LEAVES = frozenset({str, int, float, bool, type(None), Node})


def _learn(node: Component) -> tuple[frozenset[str], tuple[str, ...]]:
    """A class's props, from one of its instances (Dash's __init__ sets them per class)."""
    known = frozenset(node._prop_names), tuple(node._valid_wildcard_attributes) or ("\0",)
    _known[type(node)] = known
    return known


def tree(node: Any) -> Any:
    """`node` with every Dash component in it replaced by its plain dict (the same
    props `to_plotly_json` gives); lists, tuples and dicts are walked, anything else
    (strings, numbers, None, arrays for the encoder, nodes from `el`) is kept as it is."""
    kind = type(node)
    if kind in _LEAVES:
        return node
    known = _known.get(kind)
    if known is None and isinstance(node, Component):
        known = _learn(node)
    if known is not None:
        names, wildcards = known
        props = {
            key: tree(value)
            for key, value in node.__dict__.items()
            if key not in _INTERNAL and (key in names or key.startswith(wildcards))
        }
        return Node(props=props, type=node._type, namespace=node._namespace)
    if kind is list or kind is tuple:
        return [tree(child) for child in node]
    if isinstance(node, dict):
        return {key: tree(value) for key, value in node.items()}
    return node


@functools.cache
def _check(cls: type, keys: frozenset[str]) -> tuple[str, str, bool]:
    names, wildcards = _props_of(cls)
    unknown = sorted(k for k in keys if k not in names and not k.startswith(wildcards))
    if unknown:
        raise TypeError(f"{cls.__module__}.{cls.__name__} has no prop {', '.join(unknown)}")
    return cls._type, cls._namespace, "children" in names


def el(cls: type, children: Any = None, **props: Any) -> Node:
    """The plain node `cls(children, **props)` would send: a class with children
    always has them (None when not given), as Dash's classes do, and props passed as
    None are kept, as there. Components given as children or props become plain."""
    kind, namespace, has_children = _check(cls, frozenset(props))
    for key, value in props.items():
        if type(value) not in _LEAVES:
            props[key] = tree(value)
    if has_children:
        props = {"children": children if type(children) in _LEAVES else tree(children), **props}
    elif children is not None:
        raise TypeError(f"{cls.__module__}.{cls.__name__} has no children")
    return Node(props=props, type=kind, namespace=namespace)


def serve_plain(layout):
    """A page's `layout(**query)` that returns the plain tree of what it built."""
    if getattr(layout, "plain", False):
        return layout

    @functools.wraps(layout)
    def plain_layout(**query):
        return tree(layout(**query))

    plain_layout.plain = True
    return plain_layout
