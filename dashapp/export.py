"""One run as one self-contained HTML file that opens from disk with no server.

`cnnviz export RUN --html FILE` writes: the run and its model (layers and
their formulas), the loss and the weight and gradient norms over iterations
(inline SVG), and every stored iteration's steps with their formulas, the
formulas with the real numbers, the check against autograd, and a heatmap of
every tensor a step reads or produces (the tensor's first plane, clipped to
EXPORT_ROWS x EXPORT_COLS like the dashboard clips to 64 x 64). Each formula has
a copy-as-LaTeX button.

Nothing is fetched: MathJax 3 (tex-svg-full, Apache 2.0, shipped in
dashapp/export_assets/) is inlined and draws formulas as SVG paths, so no font
files either. Plotly is not needed: heatmaps are HTML tables the page builds
from float32 bytes, charts are SVG written here. An iteration's steps are kept
as JSON in the file and built (and typeset) only when the reader opens that
iteration, so a 100-iteration LeNet-5 export opens as fast as a small one.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

from storage import IterationRecord, RunInfo, RunStore, names

from .formatting import format_diff, format_shape
from .tensorview import matrix_view

ASSETS = Path(__file__).resolve().parent / "export_assets"
MATHJAX = ASSETS / "mathjax-tex-svg-full.js"
EXPORT_ROWS = 24
EXPORT_COLS = 24
PHASE_COLORS = {"forward": "#0d6efd", "backward": "#d9480f", "update": "#198754"}


class ExportError(ValueError):
    """The run cannot be exported (unknown run, no iterations); one line for the user."""


# ---------------------------------------------------------------- data


def tensor_payload(record, *, max_rows: int = EXPORT_ROWS, max_cols: int = EXPORT_COLS) -> dict:
    """A tensor's first plane as the page draws it: float32 bytes (NaN where not stored)."""
    view = matrix_view(
        record.array, record.shape, role=record.role, max_rows=max_rows, max_cols=max_cols
    )
    values = view.values.astype("<f4")
    return {
        "name": record.name,
        "role": record.role,
        "shape": format_shape(record.shape),
        "rows": int(values.shape[0]),
        "cols": int(values.shape[1]),
        "data": base64.b64encode(values.tobytes()).decode("ascii"),
        "style": view.style,  # "fixed", "sci" or "int", as the dashboard prints them
        "caption": view.caption,
    }


def iteration_payload(record: IterationRecord) -> dict:
    """The steps of one iteration, each with the tensors it shows first."""
    by_name = {t.name: t for t in record.tensors}
    shown: set[str] = set()
    steps = []
    for step in record.steps:
        tensors = []
        for name in (*step.inputs, *step.outputs):
            if name in shown or name not in by_name:
                continue
            shown.add(name)
            tensors.append(tensor_payload(by_name[name]))
        steps.append(
            {
                "position": step.position,
                "layer": step.layer,
                "phase": step.phase,
                "title": step.title,
                "formula": safe_tex(step.formula),
                "values": safe_tex(step.formula_values),
                "check": check_text(step),
                "ok": step.verified,
                "note": step.note,
                "reads": list(step.inputs),
                "writes": list(step.outputs),
                "tensors": tensors,
            }
        )
    rest = [tensor_payload(t) for t in record.tensors if t.name not in shown]
    return {"index": record.index, "steps": steps, "other": rest}


def check_text(step) -> str:
    if step.verified is None:
        return "no PyTorch counterpart (intermediate)"
    mark = "✓ matches autograd" if step.verified else "✗ differs from autograd"
    return f"{mark}, max |Δ| = {format_diff(step.max_abs_diff)}"


def safe_tex(latex: str) -> str:
    """Shown, not run: the macros that link, style or load (as the dashboard does)."""
    from .layouts import neutralise_tex

    return neutralise_tex(latex)


# ---------------------------------------------------------------- charts (SVG)


def line_chart(
    series: Sequence[tuple[str, str, Sequence[float], Sequence[float]]],
    *,
    title: str,
    width: int = 460,
    height: int = 220,
) -> str:
    """An SVG line chart: (label, colour, xs, ys) per series; non-finite points are gaps."""
    pad_l, pad_r, pad_t, pad_b = 56, 12, 26, 34
    xs = [x for _, _, sx, _ in series for x in sx]
    ys = [y for _, _, _, sy in series for y in sy if y is not None and math.isfinite(y)]
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<text x="{pad_l}" y="16" class="chart-title">{html.escape(title)}</text>',
    ]
    if not xs or not ys:
        parts.append(f'<text x="{pad_l}" y="{height / 2}">no values</text></svg>')
        return "".join(parts)
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def px(x):
        return pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)

    def py(y):
        return height - pad_b - (y - y0) / (y1 - y0) * (height - pad_t - pad_b)

    parts.append(
        f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" '
        'class="axis"/>'
        f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" class="axis"/>'
    )
    for value in (y0, (y0 + y1) / 2, y1):
        parts.append(
            f'<text x="{pad_l - 4}" y="{py(value) + 4:.1f}" text-anchor="end" class="tick">'
            f"{value:.3g}</text>"
        )
    for value in sorted({x0, x1}):
        parts.append(
            f'<text x="{px(value):.1f}" y="{height - pad_b + 14}" text-anchor="middle" '
            f'class="tick">{value:g}</text>'
        )
    parts.append(
        f'<text x="{(pad_l + width - pad_r) / 2}" y="{height - 4}" text-anchor="middle" '
        'class="tick">iteration</text>'
    )
    for label, color, sx, sy in series:
        runs, current = [], []
        for x, y in zip(sx, sy):
            if y is None or not math.isfinite(y):
                if current:
                    runs.append(current)
                current = []
            else:
                current.append(f"{px(x):.1f},{py(y):.1f}")
        if current:
            runs.append(current)
        for points in runs:
            if len(points) == 1:
                cx, cy = points[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
            else:
                parts.append(
                    f'<polyline fill="none" stroke="{color}" stroke-width="1.8" '
                    f'points="{" ".join(points)}"><title>{html.escape(label)}</title></polyline>'
                )
    legend_x = pad_l + 8
    for i, (label, color, _, _) in enumerate(series):
        y = pad_t + 6 + 14 * i
        parts.append(
            f'<rect x="{legend_x}" y="{y - 8}" width="10" height="3" fill="{color}"/>'
            f'<text x="{legend_x + 14}" y="{y - 4}" class="legend">{html.escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def history_charts(store: RunStore, run: RunInfo) -> str:
    """Loss, and each weight's L2 norm and its gradient's, over the stored iterations."""
    its = store.iterations(run.id)
    charts = [
        line_chart(
            [("loss", "#6f42c1", [i.index for i in its], [i.loss for i in its])],
            title="Loss",
        )
    ]
    rows = store.tensor_history([run.id], roles=[names.ROLE_PARAM, names.ROLE_PARAM_GRAD])
    table: dict[str, dict[str, list]] = {}
    for row in rows:
        param = names.parse(row["name"]).of
        entry = table.setdefault(param, {"param": ([], []), "param_grad": ([], [])})
        xs, ys = entry[row["role"]]
        xs.append(row["index"])
        ys.append(row["l2"])
    for param, entry in table.items():
        charts.append(
            line_chart(
                [
                    ("‖weight‖₂", "#0d6efd", *entry["param"]),
                    ("‖gradient‖₂", "#d9480f", *entry["param_grad"]),
                ],
                title=f"{param}: L2 norms",
            )
        )
    return "".join(f'<div class="chart-box">{c}</div>' for c in charts)


# ---------------------------------------------------------------- page


def _formula_html(latex: str, label: str = "formula") -> str:
    tex = safe_tex(latex)
    return (
        f'<div class="formula"><div class="tex">\\[{html.escape(tex)}\\]</div>'
        f'<button type="button" class="copy" data-latex="{html.escape(tex, quote=True)}" '
        f'title="Copy the {label} as LaTeX">copy LaTeX</button></div>'
    )


def _json_script(element_id: str, payload) -> str:
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    # "</script" would end the element early and "<!--" would change how it is parsed:
    # "<" only occurs inside JSON strings, where "\u003c" is the same character.
    text = text.replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def render(store: RunStore, run_id: int, *, iterations: Sequence[int] | None = None) -> str:
    """The whole HTML document for one run."""
    run = store.get_run(run_id)
    if run is None:
        raise ExportError(f"there is no run {run_id} in {store.location}")
    summaries = store.iterations(run_id)
    if not summaries:
        raise ExportError(f"run {run_id} has no stored iterations")
    wanted = [s for s in summaries if iterations is None or s.index in set(iterations)]
    if iterations is not None:
        missing = sorted(set(iterations) - {s.index for s in summaries})
        if missing:
            raise ExportError(f"run {run_id} has no iteration {missing[0]}")
    esc = html.escape
    layers = "".join(
        f"<tr><td><code>{esc(layer.name)}</code></td><td>{esc(layer.type)}</td>"
        f"<td>{esc(format_shape(layer.input_shape) if layer.input_shape else '?')} → "
        f"{esc(format_shape(layer.output_shape) if layer.output_shape else '?')}</td>"
        f'<td class="num">{layer.num_params}</td><td>{esc(layer.description)}'
        f"{_formula_html(layer.formula, 'layer formula') if layer.formula else ''}</td></tr>"
        for layer in run.layers
    )
    facts = [
        ("model", run.model_name),
        ("optimizer", f"{run.optimizer} {json.dumps(run.optimizer_settings)}"),
        ("loss", run.loss_name),
        ("seed", "" if run.seed is None else str(run.seed)),
        ("dataset", run.dataset),
        ("status", run.status),
        ("torch", run.torch_version),
        ("cnnviz", run.cnnviz_version),
    ]
    iteration_blocks, scripts = [], []
    for summary in wanted:
        record = store.load_iteration(run_id, summary.index)
        acc = "" if summary.accuracy is None else f", accuracy {summary.accuracy:.2f}"
        head = (
            f"Iteration {summary.index}: loss {summary.loss:.6g}{acc}; "
            f"{summary.num_verified}/{summary.num_checked} steps match autograd"
        )
        warnings = "".join(f'<p class="warn">{esc(w)}</p>' for w in record.warnings)
        iteration_blocks.append(
            f'<details class="iteration" data-it="{summary.index}" id="iteration-{summary.index}">'
            f"<summary>{esc(head)}</summary>{warnings}"
            f'<div class="steps" id="steps-{summary.index}"></div></details>'
        )
        scripts.append(_json_script(f"data-{summary.index}", iteration_payload(record)))
    title = f"{run.name} · cnnviz"
    body = f"""
<header><h1>{esc(run.name)}</h1>
<p class="sub">run {run.id} · {len(wanted)} of {len(summaries)} stored iterations ·
exported from <code>{esc(str(store.location))}</code> by cnnviz; opens with no server and no network.</p>
<dl class="facts">{"".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts if v)}</dl>
</header>
<section><h2>Model</h2><pre class="desc">{esc(run.model_description)}</pre>
<table class="layers"><thead><tr><th>layer</th><th>type</th><th>shape</th><th>params</th>
<th>what it computes</th></tr></thead><tbody>{layers}</tbody></table></section>
<section><h2>Across iterations</h2><div class="charts">{history_charts(store, run)}</div></section>
<section><h2>Iterations</h2>
<p class="lead">Open an iteration to see every step from input to weight update: the formula,
the same formula with the real numbers, the check against PyTorch autograd, and the tensors it
reads and writes (blue negative, white zero, red positive; the first
{EXPORT_ROWS}&times;{EXPORT_COLS} of the first plane).</p>
{"".join(iteration_blocks)}</section>
"""
    return _DOCUMENT.format(
        title=esc(title),
        css=_CSS,
        body=body,
        data="".join(scripts),
        mathjax=MATHJAX.read_text(encoding="utf-8").replace("</script", "<\\/script"),
        script=_SCRIPT,
    )


def export_html(store: RunStore, run_id: int, path, *, iterations=None) -> int:
    """Write the export to `path`; returns its size in bytes."""
    document = render(store, run_id, iterations=iterations)
    data = document.encode("utf-8")
    Path(path).write_bytes(data)
    return len(data)


_DOCUMENT = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style>
<script>window.MathJax = {{tex: {{inlineMath: []}}, svg: {{fontCache: "global"}},
options: {{enableMenu: false}}, startup: {{typeset: false}}}};</script>
<script>{mathjax}</script>
</head><body>{body}{data}<script>{script}</script></body></html>
"""

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
  padding: 1rem 2rem 4rem; background: #f6f7f9; color: #212529; }
h1 { font-size: 1.6rem; margin: 0.2rem 0; } h2 { font-size: 1.2rem; margin: 1.6rem 0 0.6rem; }
.sub, .lead, .caption, .muted { color: #6c757d; } .caption { font-size: 0.8rem; }
code { color: #b02a5b; } pre.desc { background: white; padding: 0.5rem; border: 1px solid #dee2e6; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 0.1rem 1rem; margin: 0.5rem 0; }
dl.facts dt { color: #6c757d; } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
table.layers { border-collapse: collapse; background: white; width: 100%; }
table.layers td, table.layers th { border: 1px solid #dee2e6; padding: 0.3rem 0.5rem; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 0.75rem; }
.chart-box { background: white; border: 1px solid #dee2e6; border-radius: 0.4rem; }
.chart .axis { stroke: #adb5bd; } .chart .tick, .chart .legend { font-size: 10px; fill: #495057; }
.chart .chart-title { font-size: 12px; font-weight: 600; }
details.iteration { background: white; border: 1px solid #dee2e6; border-radius: 0.4rem;
  margin: 0.4rem 0; padding: 0.4rem 0.8rem; }
details.iteration > summary { cursor: pointer; font-weight: 600; }
.step { border-left: 4px solid #adb5bd; padding: 0.3rem 0 0.3rem 0.8rem; margin: 0.8rem 0; }
.step.forward { border-color: #0d6efd; } .step.backward { border-color: #d9480f; }
.step.update { border-color: #198754; }
.step h3 { font-size: 1rem; margin: 0; } .phase { text-transform: uppercase; font-size: 0.75rem;
  letter-spacing: 0.04em; color: #6c757d; margin-right: 0.4rem; }
.formula { display: flex; align-items: flex-start; gap: 0.5rem; }
.formula .tex { flex: 1 1 auto; min-width: 0; overflow-x: auto; }
.formula .copy { flex: none; margin-top: 0.2rem; font-size: 0.75rem; }
.check.ok { color: #198754; } .check.bad { color: #dc3545; } .note, .warn { font-size: 0.9rem; }
.warn { color: #8a6d00; }
.tensors { display: flex; flex-wrap: wrap; gap: 1rem; margin-top: 0.4rem; }
.tensor { background: #fbfbfc; border: 1px solid #e9ecef; padding: 0.3rem 0.5rem; max-width: 100%;
  overflow-x: auto; }
canvas.heat { display: block; }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function color(v, m) {
    if (!isFinite(v)) return "#ffffff";
    var t = m > 0 ? Math.max(-1, Math.min(1, v / m)) : 0;
    // white at zero to Plotly's RdBu ends: (178, 24, 43) positive, (33, 102, 172) negative
    var a = Math.abs(t), end = t >= 0 ? [178, 24, 43] : [33, 102, 172];
    return "rgb(" + end.map(function (e) { return Math.round(255 + (e - 255) * a); }).join(",") + ")";
  }
  // A canvas, not a table: a LeNet-5 iteration has ~90 tensors of up to 576 cells.
  function heatmap(t) {
    var bytes = atob(t.data), buf = new ArrayBuffer(bytes.length), u8 = new Uint8Array(buf);
    for (var i = 0; i < bytes.length; i++) u8[i] = bytes.charCodeAt(i);
    var v = new Float32Array(buf), m = 0;
    for (i = 0; i < v.length; i++) if (isFinite(v[i])) m = Math.max(m, Math.abs(v[i]));
    var box = el("div", "tensor");
    var head = el("div");
    head.appendChild(el("code", "", t.name));
    head.appendChild(el("span", "muted", " " + t.shape + " · " + t.role));
    box.appendChild(head);
    var text = t.rows <= 24 && t.cols <= 12, cw = text ? 58 : 16, ch = text ? 18 : 16;
    var canvas = el("canvas", "heat"), ratio = window.devicePixelRatio || 1;
    canvas.width = t.cols * cw * ratio; canvas.height = t.rows * ch * ratio;
    canvas.style.width = t.cols * cw + "px"; canvas.style.height = t.rows * ch + "px";
    canvas.dataset.name = t.name;
    var g = canvas.getContext("2d");
    g.scale(ratio, ratio);
    g.font = "11px ui-monospace, monospace"; g.textAlign = "right"; g.textBaseline = "middle";
    function label(x) {
      return t.style === "int" ? x.toFixed(0) : t.style === "sci" ? x.toExponential(2) : x.toFixed(4);
    }
    for (var r = 0; r < t.rows; r++) {
      for (var c = 0; c < t.cols; c++) {
        var x = v[r * t.cols + c];
        g.fillStyle = color(x, m);
        g.fillRect(c * cw, r * ch, cw - 1, ch - 1);
        if (text && isFinite(x)) {
          g.fillStyle = Math.abs(x) > 0.6 * m ? "#fff" : "#212529";
          g.fillText(label(x), c * cw + cw - 4, r * ch + ch / 2);
        }
      }
    }
    canvas.addEventListener("mousemove", function (e) {
      var rect = canvas.getBoundingClientRect();
      var c = Math.floor((e.clientX - rect.left) / cw), r = Math.floor((e.clientY - rect.top) / ch);
      var x = v[r * t.cols + c];
      canvas.title = r < t.rows && c < t.cols ? t.name + "[" + r + ", " + c + "] = " +
        (isFinite(x) ? x : "not stored") : "";
    });
    box.appendChild(canvas);
    if (t.caption) box.appendChild(el("div", "caption", t.caption));
    return box;
  }
  function formula(tex, label) {
    var box = el("div", "formula");
    box.appendChild(el("div", "tex", "\\[" + tex + "\\]"));
    var b = el("button", "copy", "copy LaTeX");
    b.type = "button"; b.dataset.latex = tex; b.title = "Copy the " + label + " as LaTeX";
    box.appendChild(b);
    return box;
  }
  function build(details) {
    var it = details.dataset.it, target = document.getElementById("steps-" + it);
    var data = JSON.parse(document.getElementById("data-" + it).textContent);
    data.steps.forEach(function (s) {
      var step = el("div", "step " + s.phase);
      step.id = "it" + it + "-step" + s.position;
      var h = el("h3");
      h.appendChild(el("span", "phase", s.phase));
      h.appendChild(document.createTextNode(s.position + ". " + s.layer + ": " + s.title));
      step.appendChild(h);
      if (s.formula) step.appendChild(formula(s.formula, "formula"));
      if (s.values) step.appendChild(formula(s.values, "formula with the numbers"));
      step.appendChild(el("div", "check " + (s.ok === true ? "ok" : s.ok === false ? "bad" : ""), s.check));
      if (s.note) step.appendChild(el("p", "note", s.note));
      var t = el("div", "tensors");
      s.tensors.forEach(function (x) { t.appendChild(heatmap(x)); });
      step.appendChild(t);
      target.appendChild(step);
    });
    if (data.other.length) {
      var rest = el("div", "step other");
      rest.appendChild(el("h3", "", "Tensors no step shows"));
      var t2 = el("div", "tensors");
      data.other.forEach(function (x) { t2.appendChild(heatmap(x)); });
      rest.appendChild(t2);
      target.appendChild(rest);
    }
    typeset(target);
  }
  // Formulas are typeset one per task, and only once they near the viewport: a LeNet-5
  // iteration has ~100 formulas with 12x10 matrices, seconds of MathJax work in all.
  var queue = Promise.resolve(), pending = 0;
  function pause() { return new Promise(function (r) { setTimeout(r, 0); }); }
  function enqueue(item) {
    pending++;
    queue = queue.then(pause).then(function () {
      return window.MathJax && MathJax.typesetPromise ? MathJax.typesetPromise([item]) : null;
    }).catch(function (e) { console.error(e); }).then(function () {
      item.dataset.typeset = "1";
      pending--;
    });
  }
  var seen = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (e) {
      if (e.isIntersecting) { seen.unobserve(e.target); enqueue(e.target); }
    });
  }, {rootMargin: "600px 0px"}) : null;
  function typeset(node) {
    node.querySelectorAll(".tex").forEach(function (item) {
      if (seen) seen.observe(item); else enqueue(item);
    });
  }
  function copy(text, button) {
    function done(ok) {
      var old = button.textContent;
      button.textContent = ok ? "copied" : "copy failed";
      setTimeout(function () { button.textContent = old; }, 1200);
    }
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(function () { done(true); }, function () {
        done(fallback(text));
      });
    } else done(fallback(text));
  }
  function fallback(text) {
    var area = el("textarea");
    area.value = text; document.body.appendChild(area); area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    area.remove();
    return ok;
  }
  document.addEventListener("click", function (e) {
    var b = e.target.closest && e.target.closest("button.copy");
    if (b) copy(b.dataset.latex, b);
  });
  document.querySelectorAll("details.iteration").forEach(function (d) {
    d.addEventListener("toggle", function () {
      if (d.open && !d.dataset.built) { d.dataset.built = "1"; build(d); }
    });
  });
  function start() {
    typeset(document.querySelector("section"));
    var hash = location.hash.match(/^#iteration-(\d+)$/);
    if (hash) { var d = document.getElementById("iteration-" + hash[1]); if (d) d.open = true; }
    // Ready once the formulas in view are typeset (the rest follow as they scroll in).
    setTimeout(function () { queue.then(function () { document.body.dataset.ready = "1"; }); }, 0);
  }
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) MathJax.startup.promise.then(start);
  else start();
})();
"""
