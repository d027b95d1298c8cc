"""The smallest plotly.js that draws our figures, served where Dash looks for plotly.js.

The dashboard draws heatmaps, lines, bars, shapes and annotations only. Dash loads
plotly.js from `_dash-component-suites/plotly/package_data/plotly.min.js` (the full
4.8 MB bundle, whose evaluation was the longest main-thread task of every page,
1.1-1.6 s); this route answers that address with plotly.js's official cartesian
partial bundle, 1.5 MB, of the same version (dashapp/vendor/README.md). Both the
dcc.Graph loader and assets/heatmap_queue.js load it through that address.
"""

from __future__ import annotations

from pathlib import Path

import flask

BUNDLE = Path(__file__).resolve().parent / "vendor" / "plotly-cartesian.min.js"
DASH_PLOTLY_PATH = "_dash-component-suites/plotly/package_data/plotly.min.js"


def register(server: flask.Flask, prefix: str = "/") -> None:
    def plotly_js() -> flask.Response:
        response = flask.send_file(BUNDLE, mimetype="application/javascript", max_age=86400)
        response.headers["X-Cnnviz-Bundle"] = "plotly.js cartesian"
        return response

    server.add_url_rule(prefix + DASH_PLOTLY_PATH, endpoint="cnnviz_plotly_js", view_func=plotly_js)
