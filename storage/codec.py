"""Tensor <-> bytes, losslessly and without pickle, plus the summary columns."""

from __future__ import annotations

import json
import math

import numpy as np

# Only plain numeric kinds ever come out of a store: bool, signed, unsigned, float.
_ALLOWED_KINDS = "biuf"

# Tensors up to this many elements also get a JSON copy for the sqlite3 shell.
JSON_COPY_MAX_NUMEL = 4096


class CodecError(ValueError):
    pass


def to_little_endian(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    if array.dtype.kind not in _ALLOWED_KINDS:
        raise CodecError(f"cannot store a tensor of dtype {array.dtype}")
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array


def encode(array: np.ndarray) -> tuple[bytes, str]:
    """Raw C-order little-endian bytes and the NumPy dtype string that reads them."""
    array = to_little_endian(array)
    return array.tobytes(order="C"), array.dtype.str


def encode_buffer(array: np.ndarray) -> tuple[memoryview, str]:
    """`encode` without copying the bytes: a view of them (sqlite3 binds any buffer as
    a BLOB), valid while `array` is not written to."""
    array = to_little_endian(array)
    return memoryview(array.reshape(-1).view(np.uint8)), array.dtype.str


def decode(data: bytes, dtype: str, shape: tuple[int, ...] | None) -> np.ndarray:
    """Inverse of `encode`. `shape` None gives the flat array (a truncated tensor)."""
    try:
        np_dtype = np.dtype(dtype)
    except TypeError as exc:
        raise CodecError(f"unknown dtype {dtype!r} in store") from exc
    if np_dtype.kind not in _ALLOWED_KINDS:
        raise CodecError(f"refusing to read dtype {dtype!r} from a store")
    flat = np.frombuffer(data, dtype=np_dtype).copy()
    return flat if shape is None else flat.reshape(shape)


# Elements converted to float64 at a time by `summarize`: small enough to stay in cache.
_SUMMARY_CHUNK = 1 << 15


def summarize(array: np.ndarray) -> dict[str, float | int | None]:
    """min, max, mean, std, l2 over the finite values; counts of NaN and Inf.

    One pass over memory: the tensor is read a cache-sized chunk at a time, each
    chunk in float64, and the chunks' counts, sums and squared deviations are merged
    (Chan et al.'s pairwise update), so the values agree with NumPy's two-pass
    `mean`/`std` to ~1e-12 without a float64 copy of the whole tensor. A tensor with
    NaN or Inf (its sum is not finite) takes the slower path that masks them out.
    """
    values = np.asarray(array)
    if values.dtype.kind == "b":
        values = values.astype(np.int64)
    flat = values.reshape(-1)
    if flat.size == 0:
        return _summary_of_finite(flat.astype(np.float64), 0, 0)
    count, mean, m2, sumsq = 0, 0.0, 0.0, 0.0
    low, high = math.inf, -math.inf
    # One float64 buffer for every chunk: a fresh chunk-sized array each time (two per
    # chunk before) is above malloc's mmap threshold, so each cost page faults.
    buffer = np.empty(min(flat.size, _SUMMARY_CHUNK), dtype=np.float64)
    for start in range(0, flat.size, _SUMMARY_CHUNK):
        raw = flat[start : start + _SUMMARY_CHUNK]
        n = raw.size
        chunk = buffer[:n]
        np.copyto(chunk, raw, casting="unsafe")  # the values astype(float64) gives
        chunk_mean = float(chunk.sum()) / n
        if not math.isfinite(chunk_mean):  # a NaN or Inf in this chunk
            return _summary_with_nonfinite(flat)
        # Extremes of the original values: the same numbers (the conversion to float64
        # keeps order), read at the original width.
        low = min(low, float(raw.min()))
        high = max(high, float(raw.max()))
        chunk -= chunk_mean  # in place: the buffer is this call's own
        chunk_m2 = float(np.dot(chunk, chunk))
        # The sum of squares from the same pass: sum x^2 = sum (x - m)^2 + n m^2 for the
        # chunk's mean m, two non-negative terms (no cancellation).
        sumsq += chunk_m2 + n * chunk_mean * chunk_mean
        total = count + n
        delta = chunk_mean - mean
        mean += delta * n / total
        m2 += chunk_m2 + delta * delta * count * n / total
        count = total
    return dict(
        min=low,
        max=high,
        mean=mean,
        std=math.sqrt(max(m2, 0.0) / count),
        l2=math.sqrt(sumsq),
        nan_count=0,
        inf_count=0,
    )


def _summary_with_nonfinite(flat: np.ndarray) -> dict[str, float | int | None]:
    values = flat.astype(np.float64, copy=False)
    nan_count = int(np.isnan(values).sum())
    inf_count = int(np.isinf(values).sum())
    return _summary_of_finite(values[np.isfinite(values)], nan_count, inf_count)


def _summary_of_finite(finite: np.ndarray, nan_count: int, inf_count: int) -> dict:
    if finite.size == 0:
        stats: dict[str, float | int | None] = dict(
            min=None, max=None, mean=None, std=None, l2=None
        )
    else:
        stats = dict(
            min=float(finite.min()),
            max=float(finite.max()),
            mean=float(finite.mean()),
            std=float(finite.std()),
            l2=float(math.sqrt(float(np.dot(finite, finite)))),
        )
    stats["nan_count"] = nan_count
    stats["inf_count"] = inf_count
    return stats


def json_elements(array: np.ndarray) -> str | None:
    """A JSON array of the flat values for small tensors (NaN/Inf as null), else None.

    The text is exactly what `json.dumps` of the values as Python numbers gives
    (`_json_reference`): floats as `repr` of the float64 value. orjson writes the same
    text about 20x faster for most values. Where its notation differs from `repr`, the
    values below 1e-4 (`0.00001` for `1e-05`, `1e-7` for `1e-07`) have their text
    rewritten into repr's notation (`_repr_notation`: the digits are the same), and
    those from 1e15 up are written by `repr`. Without orjson, or if its text ever differs
    on the probe values (`_orjson_agrees`), every value goes through the reference.
    """
    if array.size > JSON_COPY_MAX_NUMEL:
        return None
    flat = np.asarray(array).ravel()
    if _use_orjson() and flat.dtype.kind in "biuf" and flat.dtype.itemsize <= 8:
        return _json_fast(flat)
    return _json_reference(flat)


def _json_reference(flat: np.ndarray) -> str:
    """json.dumps of the values as Python numbers, a chunk at a time: each call holds
    the GIL throughout, and the tracer's training thread waits for it."""
    parts = []
    for start in range(0, flat.size, _JSON_CHUNK):
        chunk = flat[start : start + _JSON_CHUNK]
        if chunk.dtype.kind == "f":
            if np.isfinite(chunk).all():
                items = chunk.tolist()
            else:
                items = [float(v) if math.isfinite(v) else None for v in chunk.tolist()]
        elif chunk.dtype.kind == "b":
            items = [int(v) for v in chunk.tolist()]
        else:
            items = chunk.tolist()
        parts.append(json.dumps(items, separators=(",", ":"))[1:-1])
    return "[" + ",".join(parts) + "]"


# Values per json.dumps call in `_json_reference`.
_JSON_CHUNK = 512

# orjson's text equals repr's for 0 and for these magnitudes (both write the shortest
# digits that read back as the same float64, in positional notation).
_ORJSON_LOW, _ORJSON_HIGH = 1e-4, 1e15


def _repr_notation(item: str) -> str:
    """orjson's text of a value below 1e-4 in repr's notation: the digits are the same.

    orjson writes 1e-5 <= |v| < 1e-4 positionally, "0.0000" and the digits (repr:
    "1.2345e-05"), and smaller values with as many exponent digits as the exponent has
    ("1.5e-7"; repr: at least two, "1.5e-07"). Rewriting the text is about three times
    cheaper than repr of the value (gradients are often all below 1e-4)."""
    sign, body = ("-", item[1:]) if item[0] == "-" else ("", item)
    if body.startswith("0.0000"):
        digits = body[6:]
        return f"{sign}{digits[0]}.{digits[1:]}e-05" if len(digits) > 1 else f"{sign}{digits}e-05"
    mantissa, _, exponent = body.partition("e-")
    return f"{sign}{mantissa}e-0{exponent}" if len(exponent) == 1 else item


def _json_fast(flat: np.ndarray) -> str:
    import orjson

    if flat.dtype.kind == "b":
        flat = flat.astype(np.int8)  # JSON 0/1, as json.dumps of int(v)
    if flat.dtype.kind != "f":
        return orjson.dumps(np.ascontiguousarray(flat), option=orjson.OPT_SERIALIZE_NUMPY).decode()
    values = flat.astype(np.float64)  # the Python float of each value: what repr writes
    text = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY).decode()  # NaN/Inf: null
    with np.errstate(invalid="ignore"):
        magnitude = np.abs(values)  # NaN compares False: stays orjson's null
        tiny = np.flatnonzero((magnitude < _ORJSON_LOW) & (magnitude > 0))
        huge = np.flatnonzero((magnitude >= _ORJSON_HIGH) & (magnitude < math.inf))
    if tiny.size == 0 and huge.size == 0:
        return text
    items = text[1:-1].split(",")
    for i in tiny.tolist():
        items[i] = _repr_notation(items[i])
    for i, written in zip(huge.tolist(), map(repr, values[huge].tolist()), strict=True):
        items[i] = written
    return "[" + ",".join(items) + "]"


_ORJSON: list[bool] = []  # [usable], decided once


def _use_orjson() -> bool:
    if not _ORJSON:
        _ORJSON.append(_orjson_agrees())
    return _ORJSON[0]


def _orjson_agrees() -> bool:
    """orjson is installed and writes the probe values exactly as json.dumps does."""
    try:
        import orjson  # noqa: F401
    except ImportError:
        return False
    rng = np.random.default_rng(0)
    probes = [
        np.array([0.0, -0.0, 1.0, -1.5, 0.1, 1e-4, 999999999999999.9, np.nan, np.inf]),
        (rng.standard_normal(512) * 10.0 ** rng.integers(-4, 16, 512)).astype(np.float32),
        rng.standard_normal(256) * 10.0 ** rng.integers(-4, 16, 256),
        rng.integers(0, 2**32, 256, dtype=np.uint64).astype(np.uint32).view(np.float32),
        rng.integers(0, 2**63, 256, dtype=np.int64).view(np.float64),
        rng.integers(-(2**62), 2**62, 64, dtype=np.int64),
        np.array([True, False]),
    ]
    with np.errstate(invalid="ignore", over="ignore"):
        try:
            return all(_json_fast(p) == _json_reference(p) for p in probes)
        except Exception:  # noqa: BLE001 - any failure: the reference path
            return False
