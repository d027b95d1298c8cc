"""The JavaScript the dashboard serves itself: the smallest plotly.js, and MathJax in a worker.

plotly.js: the dashboard draws heatmaps, lines, bars, shapes and annotations only.
Dash loads plotly.js from `_dash-component-suites/plotly/package_data/plotly.min.js`
(the full 4.8 MB bundle, whose evaluation was the longest main-thread task of every
page, 1.1-1.6 s); this route answers that address with a bundle of plotly.js's core
(scatter, shapes, annotations) with the bar and heatmap traces only, 1.2 MB, built
from plotly.js's sources of the same version (scripts/plotly-bundle/). Its evaluation
takes a third to a quarter of the time of plotly.js's official cartesian partial
bundle (1.5 MB), which the dashboard served before. Both the dcc.Graph loader and
assets/heatmap_queue.js load it through that address.

MathJax: formulas are typeset by MathJax 3 in a Web Worker (vendor/mathjax/worker.js,
driven by assets/formula_queue.js), off the page's main thread. The worker loads only
the MathJax 3 components it uses (vendor/mathjax/, the npm package's es5/ layout: the
TeX input with the packages our formulas use, SVG output, the liteDOM adaptor, 1.7 MB)
from MATHJAX_PATH, so nothing is fetched from elsewhere.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import flask
from dash.fingerprint import check_fingerprint

PACKAGE = Path(__file__).resolve().parent
BUNDLE = PACKAGE / "vendor" / "plotly-heatmap-bar.min.js"
DASH_PLOTLY_PATH = "_dash-component-suites/plotly/package_data/plotly.min.js"
MATHJAX_PATH = "_cnnviz/mathjax/"
MATHJAX_DIR = PACKAGE / "vendor" / "mathjax"
SUITES_RULE = "_dash-component-suites/<string:package_name>/<path:fingerprinted_path>"
DASH_POLYFILL = ("dash", "deps/polyfill@7.12.1.min.js")
REGENERATOR = PACKAGE / "vendor" / "regenerator-runtime" / "runtime.js"


_CACHED = {"Cache-Control": "public, max-age=86400"}


@functools.lru_cache(maxsize=4)
def _mathjax_components(names: tuple[str, ...]) -> bytes:
    """The MathJax components named ("core", "[tex]/ams", ...) as one script, each file
    as it is in vendor/mathjax/; 404 for a name that is not a component there."""
    parts = []
    for name in names:
        path = name.replace("[tex]/", "input/tex/extensions/") + ".js"
        file = (MATHJAX_DIR / path).resolve()
        if not re.fullmatch(r"[\w/-]+\.js", path) or MATHJAX_DIR not in file.parents:
            flask.abort(404)
        if not file.is_file():
            flask.abort(404)
        parts.append(file.read_bytes())
    return b"\n;\n".join(parts)


def register(server: flask.Flask, prefix: str = "/") -> None:
    def plotly_js() -> flask.Response:
        response = flask.send_file(BUNDLE, mimetype="application/javascript", max_age=86400)
        response.headers["X-Cnnviz-Bundle"] = "plotly.js heatmap-bar"
        return response

    def mathjax_js(name: str) -> flask.Response:
        if name == "components.js":  # several components as one script, in the order asked
            load = flask.request.args.get("load", "")
            body = _mathjax_components(tuple(load.split(",")))
            return flask.Response(body, mimetype="application/javascript", headers=_CACHED)
        if not name.endswith(".js"):
            flask.abort(404)
        # send_from_directory refuses paths that leave MATHJAX_DIR (404)
        return flask.send_from_directory(
            MATHJAX_DIR, name, mimetype="application/javascript", max_age=86400
        )

    server.add_url_rule(prefix + DASH_PLOTLY_PATH, endpoint="cnnviz_plotly_js", view_func=plotly_js)
    server.add_url_rule(
        prefix + MATHJAX_PATH + "<path:name>", endpoint="cnnviz_mathjax_js", view_func=mathjax_js
    )


def replace_polyfill(app) -> None:
    """Serve regenerator-runtime where Dash loads @babel/polyfill 7.12.

    Dash puts @babel/polyfill (core-js 2 and regenerator-runtime, 100 kB) first on every
    page; evaluating it was a long task of its own (60-200 ms) on the way to every
    page, patching built-ins that every browser Dash 4 supports has had for years. What
    Dash's scripts do need from it is the global `regeneratorRuntime` (their lazy
    component loaders are compiled to generator code that calls it), which this 25 kB
    file from the same project defines (vendor/regenerator-runtime, MIT). Another
    polyfill version (another Dash) is served as Dash serves it.
    """
    endpoint = app.config.routes_pathname_prefix + SUITES_RULE
    serve = app.server.view_functions[endpoint]

    def serve_component_suites(package_name: str, fingerprinted_path: str):
        path, fingerprinted = check_fingerprint(fingerprinted_path)
        if (package_name, path) != DASH_POLYFILL:
            return serve(package_name, fingerprinted_path)
        response = flask.send_file(
            REGENERATOR, mimetype="application/javascript", max_age=31536000 if fingerprinted else 0
        )
        response.headers["X-Cnnviz-Bundle"] = "regenerator-runtime"
        return response

    app.server.view_functions[endpoint] = serve_component_suites


# dash_table's bundle: Dash puts it on every page whether or not a DataTable is used.
_DASH_TABLE_SCRIPT = re.compile(
    r'<script src="[^"]*/_dash-component-suites/dash/dash_table/[^"]*"></script>\n?'
)


def drop_dash_table(app) -> None:
    """Leave dash_table's script out of the page shell: no page uses a DataTable.

    Dash lists it among every app's scripts (Dash._generate_scripts_html); it was loaded
    and evaluated (20-36 ms of the main thread) on the way to every page's layout. The
    module is still imported with Dash, so a page that placed a DataTable would fail
    loudly in the browser ("dash_table was not found"), not quietly.
    """
    interpolate = app.interpolate_index

    def interpolate_index(**kwargs):
        kwargs["scripts"] = _DASH_TABLE_SCRIPT.sub("", kwargs.get("scripts", ""))
        return interpolate(**kwargs)

    app.interpolate_index = interpolate_index


# plotly.js, asked for at the top of the page shell, where the page draws heatmaps as
# soon as it is shown.
_EARLY_PLOTLY = (
    '<script async data-cnnviz-plotly src="{src}" '
    "onerror=\"this.setAttribute('data-failed', '')\"></script>"
)


def load_plotly_early(app, paths: tuple[str, ...] = ("iteration",)) -> None:
    """Put plotly.js in the `<head>` of the shell of `paths` as an async script.

    assets/heatmap_queue.js loaded it from the body, once Dash's scripts before it had
    been fetched: its compilation off the main thread (scripts/plotly-bundle/build.js)
    then often finished after the view was shown, and in 3 to 4 of 10 LeNet-5 loads the
    first heatmap waited 100-250 ms for it. From the head it is compiled while the other
    scripts download and evaluate. heatmap_queue.js waits for this script instead of
    adding its own; every other page loads plotly.js when it first needs it, as before.
    """
    interpolate = app.interpolate_index
    src = app.config.requests_pathname_prefix + DASH_PLOTLY_PATH
    early = {app.config.routes_pathname_prefix + path for path in paths}

    def interpolate_index(**kwargs):
        if flask.has_request_context() and flask.request.path in early:
            kwargs["css"] = kwargs.get("css", "") + _EARLY_PLOTLY.format(src=src)
        return interpolate(**kwargs)

    app.interpolate_index = interpolate_index


# The renderer's `request_post` hook hands every callback's answer to the functions that
# the page's scripts put in `window.cnnvizAnswers`, before Dash renders it.
_RENDERER = (
    "var renderer = new DashRenderer({request_post: function (payload, response) {"
    " (window.cnnvizAnswers || []).forEach(function (listen) {"
    " try { listen(payload, response); } catch (error) { console.error(error); } }); }});"
)


def announce_answers(app) -> None:
    """Let the page's scripts see each callback's answer as soon as it arrives.

    assets/formula_queue.js sends the first formulas of a view to its MathJax worker
    then, while React builds the view (150-280 ms on a LeNet-5 view), instead of once
    their elements are in the page. A listener that throws is reported in the console
    and does not stop Dash from showing the answer.
    """
    app.renderer = _RENDERER
