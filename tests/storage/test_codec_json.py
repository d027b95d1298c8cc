"""The JSON copy of a small tensor (`tensor_data.elements`, read by the tensor_elements
view) is exactly the text json.dumps writes for the values as Python numbers, whether
orjson writes most of it (the fast path) or not: same text, so the same numbers in SQL."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from storage import codec


def plain_json(array: np.ndarray) -> str:
    """What the column holds, written the plain way: every value as a Python number,
    NaN and Inf as null."""
    values = np.asarray(array).ravel().tolist()
    if np.asarray(array).dtype.kind == "b":
        values = [int(v) for v in values]
    values = [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]
    return json.dumps(values, separators=(",", ":"))


def _arrays():
    rng = np.random.default_rng(11)
    n = codec.JSON_COPY_MAX_NUMEL
    # Every float32 bit pattern class: random bits cover all exponents, subnormals, NaN, Inf.
    bits32 = rng.integers(0, 2**32, 40 * n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    bits64 = rng.integers(0, 2**64, 10 * n, dtype=np.uint64).view(np.float64)
    decades = (rng.standard_normal(40 * n) * 10.0 ** rng.integers(-12, 20, 40 * n)).astype(
        np.float32
    )
    edges = np.array(
        [0.0, -0.0, 1e-4, -1e-4, 1e-5, 9.999999e-5, 1e15, 1e16, 999999999999999.9, 1.0, 0.1]
        + [np.nan, np.inf, -np.inf, 1e-45, 3.4028235e38, 5e-324, 1.7976931348623157e308]
    )
    yield "edges float64", edges
    yield "edges float32", edges.astype(np.float32)
    yield "edges float16", edges.astype(np.float16)
    for k in range(0, bits32.size, n):
        yield f"float32 bits {k}", bits32[k : k + n]
    for k in range(0, bits64.size, n):
        yield f"float64 bits {k}", bits64[k : k + n]
    for k in range(0, decades.size, n):
        yield f"float32 decades {k}", decades[k : k + n].reshape(-1, 64)
    yield "int64", rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    yield "uint64", rng.integers(0, 2**64 - 1, 100, dtype=np.uint64)
    yield "int8", rng.integers(-128, 127, 100, dtype=np.int8)
    yield "bool", rng.random(100) > 0.5
    yield "empty", np.zeros((0, 3), dtype=np.float32)


def test_orjson_is_used_where_installed():
    pytest.importorskip("orjson")
    assert codec._use_orjson()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_the_json_copy_is_what_json_dumps_writes():
    for what, array in _arrays():
        assert codec.json_elements(array) == plain_json(array), what


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_without_orjson_the_text_is_the_same(monkeypatch):
    monkeypatch.setattr(codec, "_ORJSON", [False])
    for what, array in list(_arrays())[:8]:
        assert codec.json_elements(array) == plain_json(array), what


def test_tensors_beyond_the_limit_get_no_copy():
    assert codec.json_elements(np.zeros(codec.JSON_COPY_MAX_NUMEL + 1)) is None
