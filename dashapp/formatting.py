"""Numbers as the dashboard prints them: the same digits as the tracer's formulas.

The tracer writes matrices in LaTeX with one format per matrix (4 decimals, or
mantissa and exponent when the values are tiny or huge; see
`tracer.latex.number_format`). A heatmap cell must read exactly like the entry
of the formula printed beside it, so the rule is repeated here in plain text
(the dashboard does not import the tracer); tests/dashapp/test_formatting.py
checks that both rules agree.
"""

from __future__ import annotations

import math

import numpy as np

FIXED = "fixed"
SCI = "sci"
INT = "int"


def number_style(values: np.ndarray) -> str:
    """FIXED, SCI or INT for a whole matrix, so that its entries line up."""
    values = np.asarray(values)
    if values.dtype.kind in "biu":
        return INT
    finite = np.abs(values[np.isfinite(values)]) if values.size else values
    if finite.size == 0:
        return FIXED
    largest = float(finite.max())
    nonzero = finite[finite > 0]
    smallest = float(nonzero.min()) if nonzero.size else 0.0
    if largest >= 1e4 or (0 < largest < 1e-3) or (0 < smallest < 1e-4 and largest < 1e-2):
        return SCI
    return FIXED


def format_number(value: float, style: str = FIXED) -> str:
    """One entry in plain text: "0.1234", "-1.234e-05", "3", "NaN", "inf"."""
    if style == INT:
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if style == SCI and value != 0.0:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    text = f"{value:.4f}"
    return "0.0000" if text == "-0.0000" else text


def format_matrix(
    values: np.ndarray, style: str | None = None, missing: np.ndarray | None = None
) -> list[list[str]]:
    """Cell texts of a 2-D array; cells flagged in `missing` (not stored) read as ''."""
    values = np.asarray(values)
    style = style or number_style(values)
    gaps = np.zeros(values.shape, dtype=bool) if missing is None else np.asarray(missing)
    return [
        ["" if gap else format_number(v, style) for v, gap in zip(row, gap_row, strict=True)]
        for row, gap_row in zip(values.tolist(), gaps.tolist(), strict=True)
    ]


def format_scalar(value: float | None) -> str:
    """A single number with a format chosen for its own magnitude; '' for None."""
    if value is None:
        return ""
    return format_number(value, number_style(np.asarray([value], dtype=np.float64)))


def format_diff(value: float | None) -> str:
    """A difference as a short exponent form: 3.6e-08, or 0 for exact agreement."""
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    return f"{value:.1e}"


def format_shape(shape) -> str:
    """(64, 6, 28, 28) -> '64×6×28×28'; () -> 'scalar'."""
    shape = tuple(int(d) for d in (shape or ()))
    return "×".join(str(d) for d in shape) if shape else "scalar"
