"""LaTeX for matrices with real numbers: bmatrix, truncation with ellipses, number format.

A matrix beyond a readable size is shown with its first rows/columns, an
ellipsis, and its last row/column; the full values stay in the stored tensor.
"""

from __future__ import annotations

import math
import re
from functools import partial

import numpy as np

MAX_ROWS = 12
MAX_COLS = 10


def number_format(values: np.ndarray, all_finite: bool | None = None) -> str:
    """One format for a whole matrix so that its columns line up when read.
    `all_finite`: whether every value is finite, when the caller knows."""
    if values.dtype.kind in "biu":
        return "int"
    if all_finite is None:
        all_finite = bool(np.isfinite(values).all())
    finite = np.abs(values if all_finite else values[np.isfinite(values)])
    if finite.size == 0:
        return "fixed"
    largest = float(finite.max())
    nonzero = finite[finite > 0]
    smallest = float(nonzero.min()) if nonzero.size else 0.0
    if (
        largest >= 1e4
        or (largest < 1e-3 and largest > 0)
        or (0 < smallest < 1e-4 and largest < 1e-2)
    ):
        return "sci"
    return "fixed"


def fmt(value: float, style: str = "fixed") -> str:
    """A number as LaTeX: 4 decimals, or mantissa x 10^e for tiny or huge values."""
    if style == "int":
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return r"\text{NaN}"
    if math.isinf(value):
        return r"\infty" if value > 0 else r"-\infty"
    if style == "sci" and value != 0.0:
        mantissa, _, exponent = f"{value:.3e}".partition("e")
        return mantissa + _power(exponent)
    text = f"{value:.4f}"
    return "0.0000" if text == "-0.0000" else text


_POWERS: dict[str, str] = {}


def _power(exponent: str) -> str:
    """'-06' -> \\times 10^{-6}: the exponents of a matrix repeat, so each is built once."""
    power = _POWERS.get(exponent)
    if power is None:
        power = _POWERS[exponent] = rf"\times 10^{{{int(exponent)}}}"
    return power


_EXPONENT = re.compile(r"e([+-][0-9]+)")


def scalar(value: float) -> str:
    """A single number, with the format chosen for its own magnitude."""
    return fmt(value, number_format(np.asarray([value], dtype=np.float64)))


def _pick(n: int, limit: int) -> list[int | None]:
    """Indices to show out of n: all of them, or a head, None (ellipsis), and the last."""
    if n <= limit:
        return list(range(n))
    return list(range(limit - 2)) + [None, n - 1]


def bmatrix(
    values: np.ndarray,
    max_rows: int = MAX_ROWS,
    max_cols: int = MAX_COLS,
    style: str | None = None,
) -> str:
    """A 0-, 1- or 2-D array as a LaTeX bmatrix (1-D arrays are column vectors)."""
    array = np.asarray(values)
    if array.ndim == 0:
        return fmt(array.item(), style or number_format(array.reshape(1)))
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise ValueError(f"bmatrix takes at most 2 dimensions, got shape {array.shape}")
    rows = _pick(array.shape[0], max_rows)
    cols = _pick(array.shape[1], max_cols)
    # The shown cells as Python numbers, read once (indexing NumPy cell by cell costs
    # more than formatting them): the head rows and columns and the last, by slicing.
    shown = array
    if None in rows:
        shown = np.concatenate((shown[: max_rows - 2], shown[-1:]))
    if None in cols:
        shown = np.concatenate((shown[:, : max_cols - 2], shown[:, -1:]), axis=1)
    finite = shown.dtype.kind in "biu" or bool(np.isfinite(shown).all())
    if style is None:  # chosen from the cells shown: a large tensor is not scanned whole
        style = number_format(shown, finite)
    finite = finite or style == "int"
    gap = cols.index(None) if None in cols else None  # where the row's \cdots goes
    if style == "fixed" and finite:
        # One format call per row; then fmt(v, "fixed") is each cell, but for -0.0000
        # (a cell of its own: every cell is -?digits.4 digits, so the text only matches whole).
        cells = ["{:.4f}"] * shown.shape[1]
        if gap is not None:
            cells.insert(gap, r"\cdots")
        row_format = " & ".join(cells).format
        lines = [row_format(*row).replace("-0.0000", "0.0000") for row in shown.tolist()]
        return _assemble(lines, rows, cols)
    if style == "sci" and finite:
        # The same with "{:.3e}" cells; then zeros (fmt writes 0.0000) and exponents
        # (e-05 -> \times 10^{-5}) are rewritten in the matrix's text, each distinct
        # exponent once, longest first (e-100 before e-10). A zero is the only cell
        # whose mantissa starts 0 or -0, and no other text holds e+ or e-.
        cells = ["{:.3e}"] * shown.shape[1]
        if gap is not None:
            cells.insert(gap, r"\cdots")
        row_format = " & ".join(cells).format
        text = _assemble([row_format(*row) for row in shown.tolist()], rows, cols)
        text = text.replace("-0.000e+00", "0.0000").replace("0.000e+00", "0.0000")
        for exponent in sorted(set(_EXPONENT.findall(text)), key=len, reverse=True):
            text = text.replace("e" + exponent, _power(exponent))
        return text
    cells = partial(map, partial(fmt, style=style))
    lines = []
    for row in shown.tolist():
        texts = list(cells(row))
        if "-0.0000" in texts:
            texts = ["0.0000" if t == "-0.0000" else t for t in texts]
        if gap is not None:
            texts.insert(gap, r"\cdots")
        lines.append(" & ".join(texts))
    return _assemble(lines, rows, cols)


def _assemble(lines: list[str], rows: list[int | None], cols: list[int | None]) -> str:
    """The bmatrix of the shown rows' lines, with the row of dots where rows are left out."""
    if None in rows:
        dots = " & ".join(r"\ddots" if c is None else r"\vdots" for c in cols)
        lines.insert(rows.index(None), dots)
    return r"\begin{bmatrix}" + r" \\ ".join(lines) + r"\end{bmatrix}"


def row_vector(values: np.ndarray, max_cols: int = MAX_COLS) -> str:
    return bmatrix(np.asarray(values).reshape(1, -1), max_cols=max_cols)


def as_matrix(array: np.ndarray) -> tuple[np.ndarray, str]:
    """A 2-D view of an N-D tensor for a formula, and words saying which slice it is.

    (N, C, H, W) shows sample 1, channel 1 as H x W; (N, F) shows the N x F matrix.
    """
    array = np.asarray(array)
    if array.ndim <= 2:
        return array, ""
    lead = array.shape[:-2]
    index = (0,) * len(lead)
    if all(d == 1 for d in lead):
        return array[index], ""
    names = ["sample", "channel", "slice"]
    where = ", ".join(f"{names[min(i, 2)]} 1 of {d}" for i, d in enumerate(lead) if d > 1)
    return array[index], f"({where})"


def aligned(*lines: str) -> str:
    """Display math with one equation per line, aligned on '&'."""
    return r"\begin{aligned}" + r" \\ ".join(lines) + r"\end{aligned}"
