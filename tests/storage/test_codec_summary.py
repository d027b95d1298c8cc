"""The summary columns, computed in one chunked pass, agree with NumPy's two-pass
statistics of the whole tensor (in float64) to ~1e-12, NaN and Inf included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from storage import codec


def two_pass(array: np.ndarray) -> dict:
    """What the summary columns mean, written the plain way."""
    values = np.asarray(array)
    values = (values.astype(np.int64) if values.dtype.kind == "b" else values).astype(np.float64)
    values = values.ravel()
    finite = values[np.isfinite(values)]
    stats = dict(nan_count=int(np.isnan(values).sum()), inf_count=int(np.isinf(values).sum()))
    if finite.size == 0:
        return {**stats, "min": None, "max": None, "mean": None, "std": None, "l2": None}
    return {
        **stats,
        "min": float(finite.min()),
        "max": float(finite.max()),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "l2": math.sqrt(float(np.dot(finite, finite))),
    }


def _arrays():
    rng = np.random.default_rng(7)
    big = (rng.standard_normal(300_001) * 3 + 1000).astype(np.float32)  # mean >> std, 10 chunks
    with_nan = rng.standard_normal(70_000).astype(np.float32)
    with_nan[[5, 40_000]] = np.nan
    with_nan[[6, 69_999]] = [np.inf, -np.inf]
    return {
        "float32 across chunks, large mean": big,
        "float64 4-D": rng.standard_normal((3, 5, 7, 11)),
        "constant": np.full(100_000, 0.1, dtype=np.float32),
        "NaN and Inf": with_nan,
        "all NaN": np.full(10, np.nan),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "int64 labels": rng.integers(0, 10, 1000),
        "bool mask": rng.random(5000) > 0.5,
        "one element": np.array([-2.5], dtype=np.float32),
    }


@pytest.mark.parametrize("name", list(_arrays()))
def test_one_pass_summary_matches_two_pass_statistics(name):
    array = _arrays()[name]
    ours, expected = codec.summarize(array), two_pass(array)
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        if value is None or key.endswith("_count"):
            assert ours[key] == value, key
        else:
            assert ours[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
