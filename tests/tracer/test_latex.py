"""The LaTeX of matrices with real numbers (`tracer.latex.bmatrix`)."""

from __future__ import annotations

import numpy as np

from tracer.latex import bmatrix


def test_small_matrices_show_every_cell_in_four_decimals():
    assert bmatrix(np.array([[1.0, -0.5], [0.25, 2.0]], dtype=np.float32)) == (
        r"\begin{bmatrix}1.0000 & -0.5000 \\ 0.2500 & 2.0000\end{bmatrix}"
    )
    assert bmatrix(np.array([1, 2, 3])) == r"\begin{bmatrix}1 \\ 2 \\ 3\end{bmatrix}"


def test_negative_zero_nan_and_infinity_are_written_as_such():
    values = np.array([[-0.0, -1e-5, 1.5, np.nan, np.inf, -np.inf]])
    assert bmatrix(values) == (
        r"\begin{bmatrix}0.0000 & 0.0000 & 1.5000 & \text{NaN} & \infty & -\infty\end{bmatrix}"
    )
    assert bmatrix(np.array([[-0.0, -1e-5, 1.5]])) == (
        r"\begin{bmatrix}0.0000 & 0.0000 & 1.5000\end{bmatrix}"
    )


def test_large_matrices_show_head_ellipsis_and_last_row_and_column():
    values = np.arange(5 * 6, dtype=np.float64).reshape(5, 6)
    assert bmatrix(values, max_rows=3, max_cols=3) == (
        r"\begin{bmatrix}0.0000 & \cdots & 5.0000 \\ \vdots & \ddots & \vdots \\ "
        r"24.0000 & \cdots & 29.0000\end{bmatrix}"
    )


def test_tiny_or_huge_values_are_written_in_scientific_notation():
    assert bmatrix(np.array([[2.5e-6, 0.0]])) == (
        r"\begin{bmatrix}2.500\times 10^{-6} & 0.0000\end{bmatrix}"
    )


def _cells_one_by_one(values, max_rows=12, max_cols=10):
    """bmatrix written the plain way: fmt() of each shown cell, in one style for the matrix."""
    from tracer.latex import _pick, fmt, number_format

    array = np.asarray(values).reshape(np.shape(values)[0], -1)
    rows, cols = _pick(array.shape[0], max_rows), _pick(array.shape[1], max_cols)
    shown = array[[r for r in rows if r is not None]][:, [c for c in cols if c is not None]]
    style = number_format(shown)
    lines = []
    for r in rows:
        if r is None:
            lines.append(" & ".join(r"\ddots" if c is None else r"\vdots" for c in cols))
            continue
        lines.append(" & ".join(r"\cdots" if c is None else fmt(array[r, c], style) for c in cols))
    return r"\begin{bmatrix}" + r" \\ ".join(lines) + r"\end{bmatrix}"


def test_every_cell_is_what_fmt_writes_for_it():
    rng = np.random.default_rng(5)
    for k in range(400):
        shape = (int(rng.integers(1, 16)), int(rng.integers(1, 14)))
        values = rng.standard_normal(shape) * 10.0 ** float(rng.integers(-9, 7))
        if k % 3 == 0:
            values.flat[rng.integers(0, values.size, 3)] = [-0.0, 0.0, -1e-7]
        if k % 7 == 0:
            values.flat[rng.integers(0, values.size)] = [np.nan, np.inf, -np.inf][k % 3]
        if k % 5 == 0:
            values = values.astype(np.float32)
        if k % 11 == 0:
            values = rng.integers(-50, 50, shape)
        assert bmatrix(values) == _cells_one_by_one(values), (k, values)


def test_exponents_that_begin_alike_are_written_apart():
    values = np.array([[1.5e-10, 2.5e-100, -0.0], [3e-11, 0.0, 4.25e-101]])
    assert bmatrix(values) == _cells_one_by_one(values)
    assert r"1.500\times 10^{-10} & 2.500\times 10^{-100} & 0.0000" in bmatrix(values)
