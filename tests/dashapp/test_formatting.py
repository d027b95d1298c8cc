"""The heatmap cells read exactly like the tracer's formulas beside them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dashapp.formatting import (
    format_diff,
    format_matrix,
    format_number,
    format_scalar,
    format_shape,
    number_style,
)
from tracer import latex


def as_latex(text: str) -> str:
    """Our plain-text number in the tracer's LaTeX spelling."""
    if "e" in text and text not in ("inf", "-inf"):
        mantissa, exponent = text.split("e")
        return rf"{mantissa}\times 10^{{{int(exponent)}}}"
    return {"NaN": r"\text{NaN}", "inf": r"\infty", "-inf": r"-\infty"}.get(text, text)


magnitudes = st.sampled_from([1e-7, 1e-5, 1e-3, 0.05, 1.0, 30.0, 2e4, 1e6])
floats = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, width=32)


@st.composite
def matrices(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=6))
    base = draw(hnp.arrays(np.float32, shape, elements=floats))
    scale = draw(magnitudes)
    values = (base * np.float32(scale)).astype(np.float32)
    if draw(st.booleans()):
        values.flat[0] = 0.0
    return values


@settings(max_examples=200, deadline=None)
@given(matrices())
def test_style_and_digits_agree_with_the_tracer(values):
    style = number_style(values)
    assert style == latex.number_format(values)
    for value in values.ravel():
        assert as_latex(format_number(value, style)) == latex.fmt(value, style)


def test_integers_print_as_integers():
    values = np.array([[0, 3], [12, 1]], dtype=np.int64)
    assert number_style(values) == "int" == latex.number_format(values)
    assert format_matrix(values) == [["0", "3"], ["12", "1"]]


def test_missing_cells_are_blank_and_do_not_break_integer_formats():
    values = np.array([[1.0, np.nan]])
    assert format_matrix(values, "int", missing=np.array([[False, True]])) == [["1", ""]]


def test_non_finite_values_are_spelled_out():
    assert format_number(float("nan")) == "NaN"
    assert format_number(float("inf")) == "inf"
    assert format_number(float("-inf"), "sci") == "-inf"
    assert format_number(-0.00001) == "0.0000"  # no "-0.0000"


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.7576, "0.7576"), (3.6e-8, "3.600e-8"), (12345.0, "1.234e4"), (None, "")],
)
def test_scalars_get_their_own_format(value, text):
    assert format_scalar(value) == text
    if value is not None:
        assert as_latex(text) == latex.scalar(value)


def test_differences_and_shapes():
    assert format_diff(3.62e-8) == "3.6e-08"
    assert format_diff(0.0) == "0"
    assert format_diff(None) == "n/a"
    assert format_shape((64, 6, 28, 28)) == "64×6×28×28"
    assert format_shape(()) == "scalar"
