"""Formulas that fit: elide matrix columns with ⋯ until an equation fits its box.

The tracer prints each matrix with up to 12x10 entries. Several of them side by side
(X_col W^T + b = Z) are far wider than the page, and what disappears past the right
edge is the equation's result. `fit` estimates the typeset width of each line of a
formula from its LaTeX (characters at MathJax's display size, column gaps, brackets)
and, while a line is too wide, drops one more column from its widest matrix, next to
a \\cdots column (kept: the first columns and the last one). The page shows the fitted
formula and can expand the one the store holds (`fit` never changes a number that it
keeps, only which entries are shown).
"""

from __future__ import annotations

import functools
import itertools
import re

# The formula box at a 1280 px wide window is 820 px (steps column minus the label
# column); the estimate is calibrated on the LeNet-5 page (headless Chromium).
BUDGET_PX = 740
CHAR_PX = 11.7  # a digit or letter at MathJax's display size
SMALL = 0.7  # sub- and superscripts
COLUMN_GAP_PX = 23.0  # between matrix columns (2 x arraycolsep)
BRACKETS_PX = 26.0
MIN_COLUMNS = 2  # a matrix keeps at least its first column and the ⋯

_MATRIX = re.compile(r"\\begin\{([bpvBV]?matrix)\}(.*?)\\end\{\1\}", re.S)
_BLOCK = re.compile(r"\\begin\{(aligned|gathered)\}(.*?)\\end\{\1\}", re.S)
_TOKEN = re.compile(r"\\cnnvizblock([0-9]+)")
_ROW = re.compile(r"\\\\")
_ELIDED = {r"\cdots", r"\ddots", r"\vdots", r"\dots", r"\ldots"}
# Where a line too wide even with its matrices elided may break (kept on the next line).
_BREAKS = (r"\;\Rightarrow\;", r",\quad", r":\quad")
# A term of a long sum, just before its "- \cdots" (cross-entropy's "- \log 0.1061").
_TERM = re.compile(r"- \\log [-0-9.]+(?:\\times 10\^\{-?[0-9]+\})? (?=- \\cdots)")
_TERMS = re.compile(r"- \\log [-0-9.]")


@functools.lru_cache(maxsize=16384)
def _cells(body: str) -> tuple[tuple[str, ...], ...]:
    return tuple(
        tuple(c.strip() for c in row.split("&")) for row in _ROW.split(body) if row.strip()
    )


def _join(env: str, rows: list[list[str]]) -> str:
    return rf"\begin{{{env}}}" + r" \\ ".join(" & ".join(r) for r in rows) + rf"\end{{{env}}}"


@functools.lru_cache(maxsize=65536)
def text_px(tex: str) -> float:
    """About how wide a piece of LaTeX without matrices typesets, in px."""
    tex = re.sub(r"\\(?:text|mathrm|operatorname|mathbf)\{([^{}]*)\}", r"\1", tex)
    small = sum(len(m) for m in re.findall(r"[_^]\{([^{}]*)\}", tex))
    small += len(re.findall(r"[_^][^{\\]", tex))
    tex = re.sub(r"[_^]\{[^{}]*\}|[_^][^{\\]", "", tex)
    tex = re.sub(r"\\t?frac\{([^{}]*)\}\{([^{}]*)\}", lambda m: max(m[1], m[2], key=len), tex)
    tex = re.sub(r"\\quad", "MM", tex)
    tex = re.sub(r"\\(log|ln|exp|max|min|tanh|sinh|cosh|sin|cos|arg|det)(?![A-Za-z])", r"\1", tex)
    tex = re.sub(r"\\(?:left|right|big|Big|begin\{[a-z]*\}|end\{[a-z]*\}|[,;:! ])", "", tex)
    tex = re.sub(r"\\[A-Za-z]+", "M", tex)
    tex = re.sub(r"[{}&\s]", "", tex)
    return CHAR_PX * (len(tex) + SMALL * small)


def column_px(rows) -> list[float]:
    """The estimated width of each column of a matrix, px."""
    cells = [[text_px(c) for c in r] for r in rows]
    return [max(column) for column in itertools.zip_longest(*cells, fillvalue=0.0)]


def _columns_total(widths: list[float]) -> float:
    return sum(widths) + COLUMN_GAP_PX * max(len(widths) - 1, 0) + BRACKETS_PX


def matrix_px(rows) -> float:
    return _columns_total(column_px(rows))


def _split_lines(tex: str) -> list[str]:
    """The lines of `tex`: split at \\\\ outside matrices and aligned blocks."""
    hidden = _BLOCK.sub(lambda m: "B" * len(m[0]), _MATRIX.sub(lambda m: "M" * len(m[0]), tex))
    parts, start = [], 0
    for m in re.finditer(r"\\\\", hidden):
        parts.append(tex[start : m.start()])
        start = m.end()
    return [*parts, tex[start:]]


def _protect(line: str) -> tuple[str, list[tuple[str, float]]]:
    """Aligned blocks replaced by tokens; each block (fitted) with its width."""
    blocks: list[tuple[str, float]] = []

    def keep(m) -> str:
        body = r" \\ ".join(fit_line(part) for part in _split_lines(m[2]))
        width = max(line_px(part) for part in _split_lines(body))
        blocks.append((rf"\begin{{{m[1]}}}{body}\end{{{m[1]}}}", width))
        return rf"\cnnvizblock{len(blocks) - 1} "

    return _BLOCK.sub(keep, line), blocks


def _restore(line: str, blocks) -> str:
    return _TOKEN.sub(lambda m: blocks[int(m[1])][0], line)


def line_px(line: str, blocks=()) -> float:
    """The estimated width of one line (no \\\\ outside its blocks), px."""
    if not blocks and _BLOCK.search(line):
        line, blocks = _protect(line)
    width = sum(blocks[int(k)][1] for k in _TOKEN.findall(line))
    rest = _TOKEN.sub("", line)
    width += text_px(_MATRIX.sub("", rest))
    return width + sum(_body_px(m[2]) for m in _MATRIX.finditer(rest))


@functools.lru_cache(maxsize=16384)
def _body_px(body: str) -> float:
    return matrix_px(_cells(body))


def width_px(tex: str) -> float:
    """The estimated typeset width of a formula: its widest line."""
    return max(line_px(line) for line in _split_lines(tex))


# Heights at MathJax's display size (16 px text), calibrated like the widths above on
# the formulas of the seed CNN's and LeNet-5's pages: within 5% (18 px) for every formula
# with a matrix, within 14 px for the others.
ROW_PX = 28.5  # one matrix row
MATRIX_PX = -8.1  # a matrix besides its rows
VDOTS_ROW_PX = 15.7  # a row of \vdots is taller
SUPERSCRIPT_ROW_PX = 2.3  # rows with exponents (1.2\times 10^{-4}) are taller
TEXT_PX = 24.0
BIG_PX = 36.6  # \Big( ... \Big)
FRACTION_PX = 42.7
LIMITS_PX = 55.0  # \sum_n with its index below
LIMITS_FRACTION_PX = 60.7
LINE_GAP_PX = 6.0  # between the lines of a gathered or aligned block
_LIMITS = re.compile(r"\\(?:sum|prod)_")


def _matrix_height_px(body: str) -> float:
    rows = _cells(body)
    height = ROW_PX * len(rows) + MATRIX_PX
    if r"\vdots" in body:
        height += VDOTS_ROW_PX
    if "^{" in body:
        height += SUPERSCRIPT_ROW_PX * len(rows)
    return height


def _text_height_px(tex: str) -> float:
    limits, fraction = _LIMITS.search(tex), r"\frac" in tex
    if limits:
        return LIMITS_FRACTION_PX if fraction else LIMITS_PX
    if fraction:
        return FRACTION_PX
    return BIG_PX if r"\Big" in tex or r"\big" in tex else TEXT_PX


def _line_height_px(line: str) -> float:
    blocks: list[float] = []

    def block(m) -> str:
        blocks.append(height_px(m[2]))
        return " "

    rest = _BLOCK.sub(block, line)
    matrices = [_matrix_height_px(m[2]) for m in _MATRIX.finditer(rest)]
    return max([_text_height_px(_MATRIX.sub(" ", rest)), *blocks, *matrices])


@functools.lru_cache(maxsize=4096)
def height_px(tex: str) -> float:
    """About how tall a display formula typesets, px: its lines one under the other, each
    as tall as its tallest matrix, block or fraction. The page reserves this height
    before MathJax has typeset the formula (dashapp/layouts.py), so that what comes
    after it does not move when it is."""
    lines = _split_lines(tex)
    return sum(_line_height_px(line) for line in lines) + LINE_GAP_PX * (len(lines) - 1)


def _narrower(rows, least: int = MIN_COLUMNS, widths: list[float] | None = None):
    """The matrix with one column fewer (the one before the ⋯ column, or a new ⋯), and
    its column widths (`widths`: those of `rows`); None when it cannot narrow."""
    columns = max(len(r) for r in rows)
    if columns <= least or any(len(r) != columns for r in rows):
        return None
    widths = column_px(rows) if widths is None else widths
    elided = [c for c in range(columns) if all(r[c] in _ELIDED for r in rows)]
    if elided:
        gap = elided[-1]
        if gap == 0:
            return None
        # drop the column just before the ⋯ (the first and last columns stay while they can)
        drop = gap - 1 if gap >= 2 else gap + 1
        if drop >= columns:
            return None
        kept = [r[:drop] + r[drop + 1 :] for r in rows]
        return kept, widths[:drop] + widths[drop + 1 :]
    # no ⋯ yet: the second-to-last column becomes one
    dots = [(r"\ddots" if r[-2] == r"\vdots" else r"\cdots",) for r in rows]
    kept = [r[:-2] + d + r[-1:] for r, d in zip(rows, dots, strict=True)]
    return kept, widths[:-2] + [max(text_px(d[0]) for d in dots)] + widths[-1:]


def _elide(protected: str, blocks, budget: float, least: int) -> str:
    """Narrow the widest matrices (to `least` columns) until the line fits: the widest
    loses columns until the line fits or it is no wider than the next one, and so on."""
    for _ in range(200):  # each round narrows a matrix or stops
        excess = line_px(protected, blocks) - budget
        if excess <= 0:
            break
        found = sorted(((_body_px(m[2]), m) for m in _MATRIX.finditer(protected)), key=_first)
        for k, (width, m) in enumerate(found):
            runner_up = found[k + 1][0] if k + 1 < len(found) else 0.0
            smaller, rows = None, _cells(m[2])
            widths = column_px(rows)
            while (narrower := _narrower(rows, least, widths)) is not None:
                rows, widths = narrower
                smaller = rows
                now = _columns_total(widths)
                if width - now >= excess or now <= runner_up:
                    break
            if smaller is not None:
                protected = protected[: m.start()] + _join(m[1], smaller) + protected[m.end() :]
                break
        else:
            term = _TERM.search(protected)
            if term is None or len(_TERMS.findall(protected)) <= 2:
                break
            protected = protected[: term.start()] + protected[term.end() :]
    return protected


def _first(item) -> float:
    return -item[0]


def fit_line(line: str, budget: float = BUDGET_PX) -> str:
    """One line with its widest matrices narrowed until it fits (to 4 columns); if that is
    not enough, broken in two at a `\\Rightarrow` or `,\\quad`, else narrowed further."""
    original, blocks = _protect(line)
    protected = _elide(original, blocks, budget, least=4)
    if line_px(protected, blocks) > budget:
        for mark in _BREAKS:
            at = original.find(mark)
            if at > 0:
                left = _restore(original[:at], blocks)
                right = _restore(original[at + len(mark) :], blocks)
                if mark.startswith((",", ":")):  # "a,\quad b": the comma stays with a
                    left = left + mark[0]
                else:  # "a \Rightarrow b": the arrow starts the next line
                    right = mark + " " + right
                parts = (fit_line(left, budget), fit_line(right, budget))
                return r"\begin{gathered}" + r" \\ ".join(parts) + r"\end{gathered}"
        protected = _elide(protected, blocks, budget, least=MIN_COLUMNS)
    return _restore(protected, blocks)


@functools.lru_cache(maxsize=4096)
def fit(tex: str, budget: float = BUDGET_PX) -> str:
    """`tex` with matrix columns elided until every line fits `budget` px (if it can)."""
    if width_px(tex) <= budget:
        return tex
    return r" \\ ".join(fit_line(line, budget) for line in _split_lines(tex))


_LAYOUT_ONLY = re.compile(r"\\begin\{gathered\}|\\end\{gathered\}|\\\\|\\quad|\s+")


def elides(tex: str, fitted: str) -> bool:
    """Whether `fitted` leaves entries of `tex` out, rather than only breaking its lines."""
    return _LAYOUT_ONLY.sub("", tex) != _LAYOUT_ONLY.sub("", fitted)


FORMULA = "/formula"


def formula_url(run_id: int, index: int, position: int) -> str:
    """Where the page fetches a step's formula as stored (assets/formula_expand.js)."""
    return f"{FORMULA}/{int(run_id)}/{int(index)}/{int(position)}.tex"


def register(server) -> None:
    import flask

    from .data import current_store
    from .layouts import formula_tex

    def stored_formula(run_id: int, index: int, position: int):
        record = current_store().load_iteration(run_id, index, with_data=False)
        steps = [s for s in (record.steps if record else []) if s.position == position]
        if not steps:
            flask.abort(404)
        body = formula_tex(steps[0].formula_values)  # the same sanitising as on the page
        response = flask.Response(body, mimetype="text/plain")
        response.headers["Cache-Control"] = "private, max-age=3600"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    server.add_url_rule(
        f"{FORMULA}/<int:run_id>/<int:index>/<int:position>.tex",
        endpoint="cnnviz_formula",
        view_func=stored_formula,
        methods=["GET"],
    )
