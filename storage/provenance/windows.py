"""Sliding windows (kernel, stride, padding) recovered from stored tensors.

Windows are not stored as numbers; they are recovered from the shapes and accepted
only when they reproduce a stored tensor (the im2col matrix, the pooling maxima, the
average pooling's window matrices), so a window that cannot be recovered is said
so instead of guessed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .. import npmath
from ..npmath import adaptive_bounds
from .core import Missing, NotExplained


@dataclass(frozen=True)
class Window:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return (
            (h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1,
            (w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1,
        )

    def cells(self, i: int, j: int) -> list[tuple[int, int]]:
        """Input (row, col) of each kernel position of output (i, j); outside the input
        (negative or past the end) in the padding."""
        out = []
        for a, b in itertools.product(range(self.kernel[0]), range(self.kernel[1])):
            r = i * self.stride[0] - self.padding[0] + a
            c = j * self.stride[1] - self.padding[1] + b
            out.append((r, c))
        return out


def _candidates(h, w, oh, ow, kernel=None):
    kernels = [kernel] if kernel else [(a, b) for a in range(1, h + 1) for b in range(1, w + 1)]
    for k in kernels:
        for s0, s1 in itertools.product(range(1, max(k[0], 1) + 2), range(1, max(k[1], 1) + 2)):
            for p0, p1 in itertools.product(range(k[0] // 2 + 1), range(k[1] // 2 + 1)):
                window = Window(k, (s0, s1), (p0, p1))
                if window.out_size(h, w) == (oh, ow):
                    yield window


def im2col(x: np.ndarray, window: Window, pad_value: float = 0.0) -> np.ndarray:
    """(N, C, H, W) -> (N*OH*OW, C*KH*KW), rows in (n, i, j) order, columns in (c, a, b)."""
    return npmath.im2col(x, window.kernel, window.stride, window.padding, (1, 1), pad_value)[0]


def conv_window(x: np.ndarray, x_col: np.ndarray, kernel: tuple[int, int], out_hw) -> Window:
    """The convolution's window: the one whose im2col of x is the stored X_col. When a
    storage bound kept only part of them, the only stride and padding that give these
    shapes (if one alone does; a wrong one would show in every cell's check)."""
    fitting = list(_candidates(x.shape[2], x.shape[3], *out_hw, kernel=tuple(kernel)))
    try:
        for window in fitting:
            if np.array_equal(im2col(np.asarray(x), window), np.asarray(x_col)):
                return window
    except Missing:
        if len(fitting) == 1:
            return fitting[0]
        raise
    raise NotExplained("the convolution's stride and padding could not be recovered")


def pool_window(x: np.ndarray, out: np.ndarray) -> Window:
    """The max pooling window: the one whose window maxima are the stored output
    (padding counts as -inf, so it never wins)."""
    planes = x.reshape(-1, 1, *x.shape[2:]).astype(np.float64)
    for window in _candidates(x.shape[2], x.shape[3], out.shape[2], out.shape[3]):
        cols = im2col(planes, window, pad_value=-np.inf)
        if np.array_equal(cols.max(axis=1).reshape(out.shape), out.astype(np.float64)):
            return window
    raise NotExplained("the pooling window could not be recovered")


def axis_windows(size: int, membership: np.ndarray, adaptive: bool = False):
    """Every way the rows of an average pooling's 0/1 window matrix (out, size) arise:
    kernel k, stride s, padding p (row i covers [i s - p, i s - p + k) ∩ input), or
    adaptive bounds (tried first for an adaptive layer). Yields (words, [(start, end)]
    per row) for each rule that reproduces it (one matrix can fit several)."""
    out = membership.shape[0]

    def matrix(bounds):
        m = np.zeros((out, size))
        for i, (a, b) in enumerate(bounds):
            m[i, max(a, 0) : min(b, size)] = 1
        return m

    def sliding():
        for k in range(1, size + 1):
            for p in range(k // 2 + 1):
                for s in range(1, k + 2):
                    yield (
                        f"kernel {k}, stride {s}, padding {p}",
                        [(i * s - p, i * s - p + k) for i in range(out)],
                    )

    fitted = [
        (
            f"adaptive: row i covers [⌊i·{size}/{out}⌋, ⌈(i+1)·{size}/{out}⌉)",
            adaptive_bounds(size, out),
        )
    ]
    rules = [*fitted, *sliding()] if adaptive else [*sliding(), *fitted]
    for words, bounds in rules:
        if np.array_equal(matrix(bounds), membership):
            yield words, bounds
