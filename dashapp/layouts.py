"""Layout builders shared by the pages: pure functions from records to components.

Store text (run names, layer names, tensor names, notes) only ever goes into
html/dbc components as plain strings, which React renders as text. Formulas
come from the tracer and go into a `data-tex` attribute through `formula_tex`
(the unsafe macros shown as text), which MathJax typesets in a worker
(assets/formula_queue.js).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence

import dash_bootstrap_components as dbc
from dash import dcc, html
from markupsafe import Markup
from plotly.utils import PlotlyJSONEncoder

from storage import LayerInfo, RunInfo, StepRecord

from . import formulafit, links, statichtml
from .formatting import format_diff
from .tensorpanel import GRAPH_CONFIG, ROLE_LABELS, PanelView, TensorPanel  # noqa: F401 (re-exported)
from .tensorview import MatrixView

PHASE_LABELS = {"forward": "Forward", "loss": "Loss", "backward": "Backward", "update": "Update"}
STATUS_COLORS = {
    "running": "info",
    "completed": "success",
    "failed": "danger",
    "interrupted": "warning",
    "stale": "warning",
}


# MathJax macros that make links, attach classes or styles, or load extensions: a
# tracer never writes them, and a store handed around must not smuggle them in.
_UNSAFE_TEX = re.compile(
    r"\\(href|url|class|cssId|style|data|htmlData|require|unicode)(?![A-Za-z])"
)


# ---------------------------------------------------------------- text and math


def formula_tex(latex: str) -> str:
    """A formula's TeX as the page hands it to MathJax: on one line, with every `$`
    escaped and the macros that link, style or load shown as text instead of run."""
    body = " ".join(str(latex).replace("$", r"\$").splitlines())
    return neutralise_tex(body)


def math_markdown(latex: str) -> str:
    """A formula as one Markdown display-math block.

    A bare `$` cannot occur in a LaTeX formula (it would leave math mode), so
    escaping every `$` and joining the lines leaves no way to close the block
    early and put Markdown after it; unsafe macros are shown, not run.
    """
    return f"$$\n{formula_tex(latex)}\n$$"


def neutralise_tex(latex: str) -> str:
    """The macros that link, style or load shown as text instead of run."""
    return _UNSAFE_TEX.sub(lambda m: r"\backslash\text{" + m.group(1) + "}", str(latex))


FORMULA_MARGINS_REM = 0.7  # .formula mjx-container[display="true"]: 0.35rem above and below


def formula(latex: str, class_name: str = ""):
    """A typeset formula: its TeX in `data-tex` (an attribute, so never markup),
    typeset by MathJax in a worker off the page's main thread (assets/formula_queue.js)
    into the empty `.formula-math` box, which is there from the first render and as tall
    as the formula will be (formulafit.height_px), so that nothing below it moves when it
    is typeset; one static component (dashapp/statichtml.py)."""
    return statichtml.html_node(_formula_parts(latex), className=f"formula {class_name}".strip())


def formula_markup(latex: str, class_name: str = ""):
    """`formula` as markup, for inside another static component."""
    return statichtml.tag("div", _formula_parts(latex), className=f"formula {class_name}".strip())


def _formula_parts(latex: str) -> list:
    tex = formula_tex(latex)
    # In rem, as MathJax's sizes follow the text's, with the typeset formula's margins
    # (cnnviz.css); assets/formula_queue.js drops it once the formula is typeset.
    height = f"min-height: {formulafit.height_px(tex) / 16 + FORMULA_MARGINS_REM:.2f}rem"
    return [
        statichtml.tag("div", className="formula-math", data_tex=tex, style=height),
        # assets/copy_latex.js copies the TeX typeset here
        statichtml.tag(
            "button",
            title="Copy as LaTeX",
            className="copy-latex",
            type="button",
            aria_label="Copy as LaTeX",
        ),
    ]


def status_badge(status: str | RunInfo) -> dbc.Badge:
    """A run's status; given the run, as people should read it ("stale",
    "diverged (NaN at iteration 4)")."""
    text, color = status_shown(status)
    return dbc.Badge(text, color=color, className="status-badge")


def status_shown(status: str | RunInfo) -> tuple[str, str]:
    """(text, Bootstrap colour) of a status badge."""
    if isinstance(status, RunInfo):
        run = status
        return run.status_text, "danger" if run.divergence else STATUS_COLORS.get(
            run.status, "secondary"
        )
    return status, STATUS_COLORS.get(status, "secondary")


def isolate(text: str) -> str:
    """Store text set apart from the page's own direction (U+2068 FSI ... U+2069 PDI):
    a name holding U+202E cannot reverse the words around it. For plain-string places
    (dropdown labels); in the page itself use `bdi`, which adds no characters."""
    return f"\u2068{text}\u2069"


def bdi(text: str, **props) -> html.Bdi:
    """Store text as an HTML <bdi> element: isolated from the surrounding direction, and
    its text content (what is read, found and copied) is exactly the stored text."""
    return html.Bdi(text, **props)


def verified_text(step: StepRecord) -> tuple[str, str]:
    """A step's check, (text, class): "✓ matches autograd, max |Δ| = 3.6e-08"
    ("verify-ok"), its failing twin, or a neutral note."""
    if step.verified is None:
        return "no PyTorch counterpart (intermediate)", "verify-none"
    if step.verified:
        return f"✓ matches autograd, max |Δ| = {format_diff(step.max_abs_diff)}", "verify-ok"
    return f"✗ differs from autograd, max |Δ| = {format_diff(step.max_abs_diff)}", "verify-bad"


# ---------------------------------------------------------------- page frame


def navbar(pages: Sequence[tuple[str, str]]):
    """The app's navbar, as Bootstrap's markup (what dbc.Navbar drew), static: one
    component instead of a dozen dash-bootstrap-components, which were part of every
    first view's commit (dashapp/statichtml.py). Its links move inside the app; the link
    of the page shown is marked active (assets/static_html.js: `data-active="exact"`,
    as dbc.NavLink's active="exact")."""
    tag = statichtml.tag
    items = [
        tag(
            "div",
            statichtml.link(
                label,
                href,
                className="nav-link",
                id=f"nav-{label.lower()}",
                data_active="exact",
            ),
            className="nav-item",
        )
        for label, href in pages
    ]
    brand = statichtml.link(
        [
            tag("span", "cnnviz", className="brand-name"),
            tag("span", " backprop with real numbers", className="brand-tag d-none d-md-inline"),
        ],
        "/",
        className="navbar-brand",
    )
    return statichtml.html_node(
        [
            tag(
                "div",
                [brand, tag("div", items, className="ms-auto navbar-nav")],
                className="container-fluid",
            )
        ],
        element="nav",
        className="mb-3 app-navbar navbar navbar-expand-md navbar-dark bg-dark",
    )


def page_header(
    title: str, *, subtitle=None, actions=None, crumbs: Sequence[tuple[str, str | None]] = ()
) -> html.Div:
    """Title row of a page; `crumbs` are (label, href) with href None for the current page."""
    trail = []
    for label, href in crumbs:
        trail.append(
            html.Li(
                dcc.Link(label, href=href) if href else label,
                className="breadcrumb-item" + ("" if href else " active"),
            )
        )
    return html.Div(
        [
            html.Nav(html.Ol(trail, className="breadcrumb mb-1"), **{"aria-label": "breadcrumb"})
            if trail
            else None,
            html.Div(
                [
                    html.Div(
                        [
                            html.H1(title, className="page-title"),
                            html.Div(subtitle, className="page-subtitle") if subtitle else None,
                        ]
                    ),
                    html.Div(actions, className="page-actions") if actions else None,
                ],
                className="d-flex flex-wrap justify-content-between align-items-end gap-2",
            ),
        ],
        className="page-header mb-3",
    )


def not_found(
    message: str, *, back_href: str = links.RUNS, back_label: str = "Back to the runs"
) -> html.Div:
    """The friendly page for an unknown address: what was not found and a way back."""
    return html.Div(
        dbc.Card(
            dbc.CardBody(
                [
                    html.H1("Not found", className="h3"),
                    html.P(_sentence(message), className="lead not-found-message"),
                    html.P("The link may be out of date, or the run may be in another store."),
                    dcc.Link(back_label, href=back_href, className="btn btn-primary"),
                ]
            ),
            className="not-found shadow-sm",
        ),
        className="not-found-page",
    )


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def error_card(message: str) -> dbc.Alert:
    return dbc.Alert(
        [html.H2("Cannot show this page", className="h5"), html.P(message, className="mb-0")],
        color="danger",
        className="mt-3",
    )


def empty_store(location: str) -> dbc.Card:
    """What to do when the store holds no runs yet."""
    commands = [
        (
            "Trace the built-in CNN (seed 0) into this store:",
            f"cnnviz trace --db {location} --seed 0",
        ),
        ("Or trace the three demo runs and open the dashboard:", f"cnnviz demo --db {location}"),
        (
            "Or trace your own training loop from Python:",
            f'from tracer import trace\nwith trace(model, optimizer, criterion, db="{location}") as t:\n'
            "    for x, y in batches:\n        with t.iteration():\n            ...  # zero_grad, forward, loss, backward, step",
        ),
    ]
    return dbc.Card(
        dbc.CardBody(
            [
                html.H2("No runs yet", className="h4"),
                html.P(["The store ", html.Code(location), " holds no traced runs."]),
                *[
                    html.Div(
                        [
                            html.P(text, className="mb-1"),
                            html.Pre(html.Code(cmd), className="command"),
                        ]
                    )
                    for text, cmd in commands
                ],
                html.P(
                    "This page refreshes when you reload it.", className="text-muted small mb-0"
                ),
            ]
        ),
        className="empty-state shadow-sm",
    )


# ---------------------------------------------------------------- tensors


def slice_selectors(view: MatrixView, id_for) -> html.Div | None:
    """Number inputs for the leading indices of an N-D tensor (1-based, as captions read).

    `id_for(axis)` gives each input's component id."""
    if not any(d.size > 1 for d in view.lead):
        return None
    controls = []
    for dim, index in zip(view.lead, view.lead_index, strict=True):
        if dim.size <= 1:
            continue
        controls.append(
            html.Label(
                [
                    html.Span(dim.label, className="me-1"),
                    dcc.Input(
                        id=id_for(dim.axis),
                        type="number",
                        min=1,
                        max=dim.size,
                        step=1,
                        value=index + 1,
                        debounce=True,
                        className="slice-input",
                    ),
                    html.Span(f"of {dim.size}", className="ms-1 text-muted"),
                ],
                className="slice-control",
            )
        )
    return html.Div(controls, className="slice-controls")


def figure_json(figure) -> str:
    """A figure (go.Figure or plain dict) as the JSON Plotly.js reads (NaN as null)."""
    plain = figure if isinstance(figure, dict) else figure.to_plotly_json()
    return json.dumps(plain, cls=PlotlyJSONEncoder)


def tensor_flow(inputs: Sequence[Markup], outputs: Sequence[Markup]) -> Markup:
    """What a step reads, then (after an arrow) what it writes, as markup (panels from
    tensorpanel.panel_markup); wraps on narrow screens."""
    tag = statichtml.tag
    parts = []
    if inputs:
        parts.append(
            tag(
                "div",
                [
                    tag("div", "reads", className="flow-label"),
                    tag("div", inputs, className="flow-items"),
                ],
                className="flow-group flow-in",
            )
        )
    if outputs:
        parts.append(
            tag(
                "div",
                [
                    tag("div", "→ writes" if inputs else "writes", className="flow-label"),
                    tag("div", outputs, className="flow-items"),
                ],
                className="flow-group flow-out",
            )
        )
    return tag("div", parts, className="tensor-flow")


# ---------------------------------------------------------------- steps


def step_card(
    number: int,
    step: StepRecord,
    panel: Callable[[str, str], Markup | None],
    *,
    layer: LayerInfo | None = None,
    full_formula_src: str | None = None,
):
    """One step: title, layer, general formula, formula with numbers, heatmaps, check, note.

    `panel(tensor name, panel id)` gives a tensor's panel as markup
    (tensorpanel.panel_markup; None for a tensor not stored). The formula with numbers
    is fitted to the page (dashapp/formulafit.py); when that elided columns, a button
    fetches the formula as stored from `full_formula_src`.

    The whole card is one static component (dashapp/statichtml.py): a LeNet-5 conv1
    view is six cards, and each of their elements was a component for the browser to
    render and Dash to look at (the view's commit was its longest task); nothing in a
    card is a callback's input or output (its panels work in the browser)."""

    def panels(names: Iterable[str], side: str) -> list[Markup]:
        made = (panel(name, f"{number}-{side}-{k}") for k, name in enumerate(names))
        return [p for p in made if p is not None]

    layer_text = step.layer if layer is None else f"{step.layer} · {layer.type}"
    tag = statichtml.tag
    verify_text, verify_class = verified_text(step)
    header = tag(
        "div",
        [
            tag(
                "div",
                [
                    tag("span", str(number), className="step-number"),
                    tag("h4", step.title, className="step-title"),
                    tag("span", layer_text, className="step-layer"),
                ],
                className="step-heading",
            ),
            tag("span", verify_text, className=f"verify {verify_class}"),
        ],
        className="step-header",
    )
    body = [
        tag(
            "div",
            [
                tag("div", "General formula", className="formula-label"),
                formula_markup(step.formula),
            ],
            className="formula-row",
        ),
        tag(
            "div",
            [
                tag("div", "With this iteration's numbers", className="formula-label"),
                fitted_formula(step.formula_values, full_formula_src),
            ],
            className="formula-row",
        ),
        tensor_flow(panels(step.inputs, "in"), panels(step.outputs, "out")),
    ]
    if step.note:
        body.append(tag("p", step.note, className="step-note"))
    if step.reference:
        body.append(tag("p", ["Checked against: ", step.reference], className="step-reference"))
    return statichtml.html_node(
        [header, tag("div", body, className="step-body")],
        element="section",
        id=f"step-{number}",
        className=f"step-card phase-{step.phase}",
        data_verified=_verified_attr(step),
    )


def fitted_formula(latex: str, full_src: str | None):
    """The formula with numbers, columns elided to fit, as static markup
    (dashapp/statichtml.py); a button shows it as stored when entries were left out (not
    when the fit only broke a line: assets/formula_expand.js)."""
    fitted = formulafit.fit(latex)
    if full_src is None or not formulafit.elides(latex, fitted):
        return formula_markup(fitted, "formula-values")  # whole, perhaps on two lines
    return statichtml.tag(
        "div",
        [
            formula_markup(fitted, "formula-values"),
            statichtml.tag(
                "button",
                "show every stored entry",
                className="btn btn-link btn-sm p-0 formula-expand",
                data_src=full_src,
                aria_expanded="false",
            ),
            statichtml.tag("div", className="formula-expanded", hidden=True),
        ],
        className="formula-fitted",
    )


def _verified_attr(step: StepRecord) -> str:
    return "none" if step.verified is None else ("yes" if step.verified else "no")


def iteration_stepper(
    run_id: int,
    current: int,
    count: int,
    *,
    window: int = 4,
    phase: str | None = None,
    layer: str | None = None,
):
    """Links to iterations 1..count around `current`, with previous and next; each shows
    the same `phase` and `layer` of its iteration."""

    def link(i: int) -> str:
        return links.iteration(run_id, i, phase=phase, layer=layer)

    tag = statichtml.tag
    nav = {"element": "nav", "className": "iteration-stepper pagination pagination-sm mb-0"}
    if count <= 0:
        return statichtml.html_node(
            tag("span", "no iterations stored yet", className="text-muted"),
            element="nav",
            className="iteration-stepper",
        )
    shown = sorted({1, count, *range(max(1, current - window), min(count, current + window) + 1)})
    items = [_page_link("‹ previous", link(current - 1) if current > 1 else None)]
    last = 0
    for i in shown:
        if i - last > 1:
            items.append(_page_link("…", None))
        items.append(_page_link(str(i), link(i), active=i == current))
        last = i
    items.append(_page_link("next ›", link(current + 1) if current < count else None))
    if current < 1:  # no iteration on screen yet: just the links
        items = items[1:-1]
    # Bootstrap's pagination with the links side by side and no list elements around
    # them (cnnviz.css joins their borders), as static markup: one component
    # (dashapp/statichtml.py).
    return statichtml.html_node(items, **nav, **{"aria-label": "iterations"})


def _page_link(label: str, href: str | None, *, active: bool = False):
    if href is None:
        return statichtml.tag("span", label, className="page-link disabled")
    return statichtml.link(label, href, className="page-link" + (" active" if active else ""))


def metric(label: str, value, *, hint: str | None = None, class_name: str = ""):
    """A labelled number, one static component (dashapp/statichtml.py)."""
    parts = _metric_parts(label, value, hint)
    return statichtml.html_node(parts, className=f"metric {class_name}".strip())


def metric_markup(label: str, value, *, hint: str | None = None, class_name: str = ""):
    """`metric` as markup, for inside another static component."""
    parts = _metric_parts(label, value, hint)
    return statichtml.tag("div", parts, className=f"metric {class_name}".strip())


def _metric_parts(label: str, value, hint: str | None) -> list:
    tag = statichtml.tag
    return [
        tag("div", label, className="metric-label"),
        tag("div", value, className="metric-value"),
        tag("div", hint, className="metric-hint") if hint else None,
    ]


def run_label(run) -> str:
    """ "#4 name, seed 1" for a RunInfo or any row with id, name and seed."""
    seed = "" if run.seed is None else f", seed {run.seed}"
    return f"#{run.id} {isolate(run.name)}{seed}"
