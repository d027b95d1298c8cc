"""Static parts of a page as one component each: markup built here, every text escaped.

Every Dash component costs the browser when a view is shown: React renders it inside
Dash's wrapper, and Dash's renderer looks at each one again on every later update of its
store. A LeNet-5 iteration view had about 430 components; its commit was the longest
task of the page. Parts that no callback reads or writes and that hold no React widget
(a tensor panel's name, shape, role, summary and download links; the iteration page's
side menu) are sent as one `Html` component each instead of one component per element.

- The markup is built with markupsafe (Flask's own escaping library): `tag` escapes
  every text and attribute value it is given, so store text (run, layer and tensor
  names) stays text, as it does in html.* components.
- assets/static_html.js draws an `Html` component (namespace `cnnviz_static`) as its
  element with the markup inside.
- A link made by `link` navigates inside the app as dcc.Link does (no page reload):
  static_html.js handles clicks on `a[data-dash-link]`.
"""

from __future__ import annotations

from collections.abc import Iterable

from markupsafe import Markup, escape

from .plain import Node

NAMESPACE = "cnnviz_static"
TYPE = "Html"
_VOID = frozenset({"br", "hr", "img", "input", "wbr"})


def _text(children) -> Markup:
    if children is None:
        return Markup("")
    if isinstance(children, (list, tuple)):
        return Markup("").join(_text(child) for child in children)
    return escape(children)  # Markup (from tag) stays as it is; anything else is escaped


def tag(name: str, children=None, **attributes) -> Markup:
    """`<name attributes>children</name>`: `className` becomes `class`, `_` in other
    names `-` (data_tensor -> data-tensor), None and False leave an attribute out, True
    writes it bare. Text children and attribute values are escaped."""
    parts = [name]
    for key, value in attributes.items():
        if value is None or value is False:
            continue
        key = "class" if key == "className" else key.replace("_", "-")
        parts.append(key if value is True else f'{key}="{escape(value)}"')
    opening = Markup(f"<{' '.join(parts)}>")
    if name in _VOID:
        return opening
    return opening + _text(children) + Markup(f"</{name}>")


def link(children, href: str, className: str | None = None, **attributes) -> Markup:
    """An in-app link: the same navigation as dcc.Link (assets/static_html.js)."""
    return tag("a", children, href=href, className=className, data_dash_link=True, **attributes)


def html_node(
    children: Iterable[Markup] | Markup,
    *,
    element: str = "div",
    className: str | None = None,
    id: str | None = None,  # noqa: A002 (Dash's name for it)
    **attributes: str,
) -> Node:
    """One component drawn as `<element class=...>children</element>`: `attributes` are
    set on the element (aria-label=..., data-x=...), `children` is markup from `tag`;
    `id` is the component's (and the element's) id."""
    props = {"html": str(_text(list(children) if not isinstance(children, str) else children))}
    if element != "div":
        props["element"] = element
    if className:
        props["className"] = className
    if id is not None:
        props["id"] = id
    if attributes:
        props["attributes"] = {k.replace("_", "-"): str(v) for k, v in attributes.items()}
    return Node(props=props, type=TYPE, namespace=NAMESPACE)
