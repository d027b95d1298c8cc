"""Helpers shared by the dashboard tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import base64
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from storage import RUN_COMPLETED, RunInfo, RunStore, RunWriter, open_engine

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"
CHROMIUM = os.environ.get("CNNVIZ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INJECTION = "<img src=x onerror=alert(1)>"


def require(condition: bool, reason: str) -> None:
    """Skip without `condition`, or fail under CI where everything must run."""
    if not condition:
        if IN_CI:
            pytest.fail(f"{reason} (required under CI=true)")
        pytest.skip(reason)


def copy_store(source: Path, target: Path) -> Path:
    """A consistent copy of a store, WAL included (SQLite's backup API)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    return target


def clone_run(
    location: Path,
    source_run: int,
    *,
    name: str,
    seed: int | None,
    iterations: int | None = None,
    finish: bool = True,
) -> tuple[int, RunWriter]:
    """Write a new run whose iterations are copies of `source_run`'s (no torch needed)."""
    with RunStore(location, readonly=True) as reader:
        info = reader.get_run(source_run)
        records = [
            reader.load_iteration(source_run, i.index) for i in reader.iterations(source_run)
        ]
    engine = open_engine(location)
    new = RunInfo(
        name=name,
        seed=seed,
        model_name=info.model_name,
        model_description=info.model_description,
        optimizer=info.optimizer,
        optimizer_settings=info.optimizer_settings,
        loss_name=info.loss_name,
        dataset=info.dataset,
        config=info.config,
        torch_version=info.torch_version,
        cnnviz_version=info.cnnviz_version,
    )
    writer = RunWriter.begin(engine, new)
    writer.set_layers(info.layers)
    for record in records[: iterations if iterations is not None else len(records)]:
        writer.add_iteration(record)
    if finish:
        writer.finish(RUN_COMPLETED)
        engine.dispose()
    return writer.run_id, writer


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CNNVIZ_DB", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"server exited with {proc.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise AssertionError(f"server at {url} did not answer within {timeout:.0f} s")


class Served:
    """A running server: its base URL, and (once stopped) everything it printed."""

    def __init__(self, url: str):
        self.url = url
        self.output = ""


@contextmanager
def serving(argv: list[str], port: int, *, env: dict[str, str] | None = None) -> Iterator[Served]:
    """Run a server command in a subprocess until / answers 200; stop it afterwards."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env or subprocess_env(),
        cwd=REPO,
    )
    served = Served(f"http://127.0.0.1:{port}")
    try:
        wait_http(served.url + "/", proc)
        yield served
    finally:
        proc.terminate()
        try:
            served.output, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            served.output, _ = proc.communicate(timeout=10)


# `python -c BLOCK_TORCH args...` is the cnnviz command line of a dashboard-only
# install (no "trace" extra): `import torch` fails.
BLOCK_TORCH = "import sys; sys.modules['torch'] = None; from tracer.cli import main; main()"


def cnnviz_without_torch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=timeout,
    )


@contextmanager
def cnnviz_serve(store: Path) -> Iterator[str]:
    """`cnnviz serve --db STORE --port P` in a real subprocess."""
    port = free_port()
    argv = [sys.executable, "-m", "tracer.cli", "serve", "--db", str(store), "--port", str(port)]
    with serving(argv, port) as served:
        yield served.url


class Problems(list):
    """Console errors, failed requests, uncaught exceptions and dialogs of one page."""


WAIT_MS = 90_000  # only a bound for failures: every wait returns once its condition holds


def wait_ready(tab, selector: str | None = None, timeout: float = WAIT_MS) -> None:
    """Until Dash has rendered the page (and `selector`, an element of the expected
    page, is there: after an in-app navigation the old page stays until the new one
    arrives), no callback is pending and MathJax has typeset every formula."""
    # No request for 500 ms: Dash's callbacks have settled (a callback's answer can
    # start the next one a moment later, longer on a loaded machine).
    tab.wait_for_load_state("networkidle", timeout=timeout)
    if selector is not None:
        tab.wait_for_selector(selector, timeout=timeout)
    tab.wait_for_function(
        """() => {
            const content = document.getElementById('_pages_content');
            if (!content || content.children.length === 0) return false;
            if (document.querySelector('[data-dash-is-loading="true"]')) return false;
            const formulas = document.querySelectorAll('.formula');
            for (const f of formulas) { if (!f.querySelector('mjx-container')) return false; }
            return true;
        }""",
        timeout=timeout,
    )


VIEW_READY = """(view) => {
    const shown = document.querySelector('.iteration-view');
    if (!shown || shown.dataset.view !== view) return false;
    if (document.querySelector('[data-dash-is-loading="true"]')) return false;
    return [...shown.querySelectorAll('.formula')].every((f) => f.querySelector('mjx-container'));
}"""


# Figures come back late when asked: `cnnvizSlow` holds a delay in ms for the next
# figure asked whose address contains `cnnvizSlowMatch`, `cnnvizLate` counts those held
# back, `cnnvizBusy` all figures out.
SLOW_FIGURES = """(() => {
    const fetch = window.fetch;
    window.cnnvizSlow = 0;
    window.cnnvizSlowMatch = '';
    window.cnnvizLate = 0;
    window.cnnvizBusy = 0;
    window.fetch = function (resource) {
        const answer = fetch.apply(this, arguments);
        const url = String(resource);
        if (!url.includes('/figure/')) return answer;
        const ms = window.cnnvizSlow && url.includes(window.cnnvizSlowMatch) ? window.cnnvizSlow : 0;
        if (ms) window.cnnvizSlow = 0;
        window.cnnvizBusy += 1;
        window.cnnvizLate += ms ? 1 : 0;
        const done = () => { window.cnnvizBusy -= 1; window.cnnvizLate -= ms ? 1 : 0; };
        return answer.then(
            (r) => new Promise((resolve) => setTimeout(() => { done(); resolve(r); }, ms)),
            (e) => { done(); throw e; });
    };
})()"""
FIGURES_SETTLED = """() => window.cnnvizLate === 0 && window.cnnvizBusy === 0
    && Array.from(document.querySelectorAll('.heatmap-slot[data-src]')).every(
        (s) => s._cnnvizShown === undefined || s._cnnvizShown === s.getAttribute('data-src'))"""


def back_then_forward_before_the_figure(tab, back_url, forward_url, back_figure: str) -> None:
    """With SLOW_FIGURES in the page: go back (to an address matching `back_url`) with the
    figure whose address contains `back_figure` held for 1.5 s, go forward (to
    `forward_url`) before it comes, and wait until every figure, the late one too, has
    come and every slot shows its own address. Neither adds a history entry."""
    entries = tab.evaluate("history.length")
    tab.evaluate(f"window.cnnvizSlowMatch = {json.dumps(back_figure)}; window.cnnvizSlow = 1500")
    tab.go_back()
    tab.wait_for_url(back_url)
    tab.wait_for_function("window.cnnvizLate === 1")  # asked, not answered yet
    tab.go_forward()
    tab.wait_for_url(forward_url)
    tab.wait_for_function(FIGURES_SETTLED)
    tab.wait_for_timeout(500)  # what a late figure would do, it has done by now
    tab.wait_for_function(FIGURES_SETTLED)
    assert tab.evaluate("history.length") == entries


def wait_view(tab, view: str, timeout: float = WAIT_MS) -> None:
    """Until the iteration page shows `view` ("phase/layer", "backward/" for a whole
    phase) with its formulas typeset: after a link within the page, one callback
    builds the view (its heatmaps are drawn as they come into view)."""
    tab.wait_for_function(VIEW_READY, arg=view, timeout=timeout)


def open_page(tab, url: str, selector: str | None = None) -> None:
    tab.goto(url)
    wait_ready(tab, selector)


def graph_data(tab, selector: str) -> list[dict]:
    """What Plotly drew in the graph matched by `selector` (inside `tab`, a page or a
    locator): per trace the decoded z (nested lists), the printed cell labels in
    drawing order, the colour range, the trace name, and whether row 0 is at the top.

    Heatmaps on the iteration page are drawn once they come near the viewport
    (assets/heatmap_queue.js): a locator is scrolled to first, and a lazy slot is
    read only once it shows the figure its `data-figure` (or `data-src`) names now."""
    if hasattr(tab, "scroll_into_view_if_needed"):
        tab.first.scroll_into_view_if_needed()
    graph = tab.locator(selector).first
    graph.wait_for(state="attached")
    page = getattr(tab, "page", tab)
    page.wait_for_function(
        """(el) => {
            const gd = el.classList.contains('js-plotly-plot') ? el : el.querySelector('.js-plotly-plot');
            if (!gd || !gd._fullData) return false;
            const source = gd.getAttribute('data-figure') || gd.getAttribute('data-src');
            return !source || gd._cnnvizShown === source;
        }""",
        arg=graph.element_handle(),
    )
    return graph.evaluate(
        """(el) => {
            const gd = el.classList.contains('js-plotly-plot') ? el : el.querySelector('.js-plotly-plot');
            const toList = (v) => (v && typeof v === 'object' && typeof v.length === 'number')
                ? Array.from(v, toList) : v;
            const labels = Array.from(gd.querySelectorAll('.heatmap-label'), (t) => t.textContent);
            const range = gd._fullLayout.yaxis ? gd._fullLayout.yaxis.range : null;
            return gd._fullData.map((t) => ({
                z: toList(t.z), zmin: t.zmin, zmax: t.zmax, name: t.name, labels: labels,
                x: toList(t.x), y: toList(t.y), text: toList(t.text),
                scale: gd._fullLayout.meta ? gd._fullLayout.meta.scale : null,
                row0_on_top: range ? range[0] > range[1] : null,
            }));
        }""",
    )


# ---------------------------------------------------------------- layout trees


def drawn_z(slot) -> np.ndarray:
    """The z of the heatmap a lazy slot (a component with `data-figure`, or that JSON
    itself) will draw, a value not stored as NaN."""
    source = slot if isinstance(slot, str) else getattr(slot, "data-figure")
    (trace,) = json.loads(source)["data"]
    z = trace["z"]
    if isinstance(z, dict):  # Plotly's typed-array form: {"dtype", "bdata" (base64), "shape"}
        shape = [int(d) for d in str(z.get("shape", "-1")).split(",")]
        return (
            np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"])
            .reshape(shape)
            .astype(np.float64)
        )
    return np.array([[np.nan if v is None else v for v in row] for row in z], dtype=np.float64)


def as_component(node, *, static: bool = True):
    """A plain node (dashapp.plain: {"type", "namespace", "props"}) as the Dash component
    it stands for, built by its class, which checks every prop as Dash does; anything
    else as it is."""
    if not (isinstance(node, dict) and node.keys() == {"type", "namespace", "props"}):
        return node
    import dash_bootstrap_components as dbc
    from dash import dcc, html

    from dashapp import statichtml

    if node["namespace"] == statichtml.NAMESPACE:  # kept as sent with static=False
        return static_as_component(node["props"]) if static else node
    module = {
        "dash_html_components": html,
        "dash_core_components": dcc,
        "dash_bootstrap_components": dbc,
    }[node["namespace"]]

    def convert(value):
        if isinstance(value, list):
            return [convert(v) for v in value]
        return as_component(value, static=static)

    props = {key: convert(value) for key, value in node["props"].items()}
    return getattr(module, node["type"])(**props)


def static_as_component(props: dict):
    """A dashapp.statichtml `Html` node as the html.* components its markup holds (an
    `a[data-dash-link]` as the dcc.Link it stands for), so tests read it as they read
    any other part of a page. The markup is parsed by the standard library's HTML parser,
    which decodes what statichtml escaped."""
    from html.parser import HTMLParser

    from dash import dcc, html

    def make(tag: str, attributes: dict, children: list):
        attributes = {("className" if k == "class" else k): v for k, v in attributes.items()}
        if len(children) == 1 and isinstance(children[0], str):
            children = children[0]  # html.Span("text"), as the pages write it
        if tag == "a" and "data-dash-link" in attributes:
            attributes.pop("data-dash-link")
            return dcc.Link(children, **attributes)
        if attributes.get("hidden") is None and "hidden" in attributes:
            attributes["hidden"] = True
        kind = getattr(html, tag.capitalize())
        return kind(children, **attributes) if children else kind(**attributes)

    class Builder(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.stack = [[]]
            self.opened = []

        def handle_starttag(self, tag, attrs):
            if tag == "input":  # a void element: no end tag, read as the dcc.Input it does
                known = ("type", "min", "max", "step", "value", "class")
                props = {k: v for k, v in attrs if k in known}
                if "class" in props:
                    props["className"] = props.pop("class")
                self.stack[-1].append(dcc.Input(**props))
                return
            self.opened.append((tag, dict(attrs)))
            self.stack.append([])

        def handle_endtag(self, tag):
            opened, attributes = self.opened.pop()
            assert opened == tag, (opened, tag)
            children = self.stack.pop()
            self.stack[-1].append(make(tag, attributes, children))

        def handle_data(self, data):
            self.stack[-1].append(data)

    builder = Builder()
    builder.feed(props.get("html", ""))
    builder.close()
    extra = dict(props.get("attributes") or {})
    if props.get("className"):
        extra["class"] = props["className"]
    if props.get("id") is not None:
        extra["id"] = props["id"]
    return make(props.get("element", "div"), extra, builder.stack[0])


def walk(node):
    """Every component and every string of a Dash layout tree, depth first (plain nodes
    are walked as the components they stand for)."""
    node = as_component(node)
    yield node
    if isinstance(node, (str, int, float)) or node is None:
        return
    children = getattr(node, "children", None)
    if children is None:
        return
    for child in children if isinstance(children, (list, tuple)) else [children]:
        if child is not None:
            yield from walk(child)


def components(layout, kind=None, class_name: str | None = None) -> list:
    """Components of a type and/or with a CSS class, in document order."""
    found = []
    for node in walk(layout):
        if isinstance(node, (str, int, float)):
            continue
        if kind is not None and not isinstance(node, kind):
            continue
        if (
            class_name is not None
            and class_name not in (getattr(node, "className", None) or "").split()
        ):
            continue
        found.append(node)
    return found


def formulas_in(layout) -> list[str]:
    """The TeX of every formula in the layout (`.formula-math` boxes, typeset in the
    browser by assets/formula_queue.js), in document order."""
    return [getattr(m, "data-tex") for m in components(layout, class_name="formula-math")]


def text_of(layout) -> str:
    """The layout's text as a browser would show it (Markdown sources included)."""
    return " ".join(str(n) for n in walk(layout) if isinstance(n, (str, int, float)))


@contextmanager
def using_store(app, location):
    """Point an in-process app at another store for the duration of a test."""
    from dashapp.data import LOCATION_KEY, STORE_KEY

    saved = app.server.extensions[STORE_KEY], app.server.config[LOCATION_KEY]
    store = RunStore(location, readonly=True)
    app.server.extensions[STORE_KEY], app.server.config[LOCATION_KEY] = store, str(location)
    try:
        yield store
    finally:
        app.server.extensions[STORE_KEY], app.server.config[LOCATION_KEY] = saved
        store.close()


def run_callback(function, *args, triggered: str | None = None, inputs_list=None):
    """Call a Dash callback function directly, with the callback context Dash would give it."""
    from contextvars import copy_context

    from dash._callback_context import context_value
    from dash._utils import AttributeDict

    def call():
        context_value.set(
            AttributeDict(
                triggered_inputs=[{"prop_id": triggered, "value": None}] if triggered else [],
                inputs_list=inputs_list or [],
            )
        )
        return function(*args)

    return copy_context().run(call)


def page_content(client, path: str, search: str = "") -> dict:
    """What the browser gets when it opens `path?search`: the Dash Pages callback's
    answer for the page container (status 200 and the JSON of its children)."""
    deps = json.loads(client.get("/_dash-dependencies").data)
    dep = next(d for d in deps if "_pages_content.children" in d["output"])
    values = {"pathname": path, "search": search, "hash": "", "href": f"http://x{path}{search}"}
    body = {
        "output": dep["output"],
        "outputs": [
            {"id": o.rsplit(".", 1)[0], "property": o.rsplit(".", 1)[1]}
            for o in dep["output"].strip(".").split("...")
        ],
        "inputs": [dict(i, value=values.get(i["property"])) for i in dep["inputs"]],
        "changedPropIds": [f"{dep['inputs'][0]['id']}.{dep['inputs'][0]['property']}"],
        "state": [dict(s, value=None) for s in dep.get("state", [])],
    }
    response = client.post("/_dash-update-component", json=body)
    assert response.status_code == 200, response.data[:500]
    return json.loads(response.data)["response"]["_pages_content"]["children"]
