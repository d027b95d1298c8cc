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
