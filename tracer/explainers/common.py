"""Small helpers the explainers share: float64 copies and LaTeX for N-D tensors."""

from __future__ import annotations

import numpy as np

from .. import latex


def f64(array) -> np.ndarray:
    """A float64 copy: our arithmetic runs in double precision on PyTorch's float32 inputs."""
    return np.asarray(array, dtype=np.float64)


def sub(where: str) -> str:
    """A LaTeX subscript naming the shown slice, e.g. _{\\text{(sample 1 of 4)}}; empty for 2-D tensors."""
    return rf"_{{\text{{{where}}}}}" if where else ""


def mat(array) -> str:
    """The 2-D slice of a tensor as a bmatrix (no slice label)."""
    return latex.bmatrix(latex.as_matrix(array)[0])


def named(symbol: str, array) -> str:
    """`symbol_{slice} = [matrix]` for a tensor of any rank."""
    view, where = latex.as_matrix(array)
    base = f"{{{symbol}}}" if where else symbol  # braces: X_{pad} then takes a second subscript
    return rf"{base}{sub(where)} = {latex.bmatrix(view)}"


def pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def channel_vector(values: np.ndarray) -> str:
    """A per-channel vector written as a row (channels read left to right)."""
    return latex.row_vector(np.asarray(values).reshape(-1))
