"""Where two runs first differ: the first iteration, and the first step in execution order.

A reproducibility check over what the store already holds (same seed on two
machines, two torch versions, two seeds). No torch, and as little data as
possible leaves the database:

1. one metadata query pairs every tensor of run A with the tensor of the same
   name in run B, iteration by iteration, and reads only the summary columns
   (dtype, shape, min, max, mean, ...). A difference there is already a proof
   of divergence (a summary covers the whole tensor, even a truncated one), and
   it bounds the search: nothing after that iteration needs its bytes read;
2. the database compares the stored bytes of the pairs up to that bound
   (`a.data = b.data`, a memcmp inside SQLite) and returns only the flags;
3. only pairs whose bytes differ are decoded, to find the largest difference
   (and, with a tolerance, whether it is beyond it).

Two stores (two machines each writing its own, a SQLite file against a PostgreSQL
store): `first_divergence(engine_a, run_a, run_b, engine_b=...)` reads each side's
metadata with the same query and pairs it here, and compares the stored bytes of
the pairs up to the bound in chunks (bytes equality, still a memcmp) instead of
inside one database.

Execution order inside an iteration is the order of the steps: a tensor ranks
where the first step that reads or produces it stands (read before the step's
outputs, so a changed weight ranks before the output it changes). Tensors no
step names come last, in the order they were captured.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Engine, Text, and_, case, cast, func, select
from sqlalchemy.orm import aliased

from . import codec, schema

# Rank of tensors that no step reads or produces: after every step.
_UNLINKED_RANK = 1 << 40
_SUMMARY = ("min", "max", "mean", "std", "l2")


class DivergeError(ValueError):
    """The two runs cannot be compared (unknown run, nothing stored); one line for the user."""


@dataclass
class Divergence:
    """The first tensor, in execution order, that differs beyond the tolerance."""

    iteration: int
    tensor: str
    reason: str  # "values differ", "only in run A", "shapes differ", ...
    role: str | None = None
    layer: str | None = None
    step_position: int | None = None  # the step that first reads or produces it
    step_title: str | None = None
    step_phase: str | None = None
    step_layer: str | None = None
    max_abs_diff: float | None = None  # over the stored elements; inf for NaN against a number
    index: tuple[int, ...] | None = None  # where the largest difference is
    value_a: float | None = None
    value_b: float | None = None
    differing: int | None = None  # stored elements beyond the tolerance

    def where(self) -> str:
        if self.step_position is None:
            return f"iteration {self.iteration}"
        return (
            f"iteration {self.iteration}, step {self.step_position} "
            f"({self.step_layer} {self.step_phase}: {self.step_title})"
        )


@dataclass
class DivergenceReport:
    run_a: int
    run_b: int
    atol: float  # 0: bitwise
    iterations: int  # iterations compared (stored in both runs)
    tensors: int  # tensor pairs compared
    divergence: Divergence | None
    notes: list[str] = field(default_factory=list)
    # Where each run is stored, when the two are in different stores (for the summary).
    store_a: str | None = None
    store_b: str | None = None

    @property
    def identical(self) -> bool:
        return self.divergence is None

    def summary(self) -> str:
        """The one-line answer."""
        runs = f"runs {self.run_a} and {self.run_b}"
        if self.store_a is not None or self.store_b is not None:
            runs = f"run {self.run_a} of {self.store_a} and run {self.run_b} of {self.store_b}"
        if self.divergence is None:
            how = "are bitwise identical" if self.atol == 0 else f"agree within atol {self.atol:g}"
            return (
                f"{runs} {how} over {self.iterations} iteration{'s' if self.iterations != 1 else ''}"
                f" ({self.tensors} tensors)"
            )
        d = self.divergence
        line = f"{runs} first diverge at {d.where()}: {d.tensor} {d.reason}"
        if d.max_abs_diff is not None:
            at = "" if d.index is None else f" at [{', '.join(str(i) for i in d.index)}]"
            line += f", max |B - A| {d.max_abs_diff:.3g}{at}"
            if d.value_a is not None and d.value_b is not None:
                line += f" (A {d.value_a:.9g}, B {d.value_b:.9g})"
        return line


# ---------------------------------------------------------------- queries


def _iterations(engine: Engine, run_id: int) -> dict[int, int]:
    """iteration index -> iteration id."""
    stmt = select(schema.Iteration.index, schema.Iteration.id).where(
        schema.Iteration.run_id == run_id
    )
    with engine.connect() as connection:
        return dict(connection.execute(stmt).all())


def _tensor_ranks(engine: Engine, iteration_ids: list[int]) -> dict[int, int]:
    """tensor id -> 2 * (position of the first step naming it) + (1 if it is produced there)."""
    link = schema.StepTensor
    rank = func.min(2 * schema.Step.position + case((link.direction == "out", 1), else_=0)).label(
        "rank"
    )
    stmt = (
        select(link.tensor_id, rank)
        .join(schema.Step, schema.Step.id == link.step_id)
        .where(schema.Step.iteration_id.in_(iteration_ids))
        .group_by(link.tensor_id)
    )
    with engine.connect() as connection:
        return dict(connection.execute(stmt).all())


def _pair_query(engine: Engine, run_b: int, ids_a: list[int]):
    ta, tb = aliased(schema.Tensor), aliased(schema.Tensor)
    ia, ib = aliased(schema.Iteration), aliased(schema.Iteration)
    meta = ("dtype", "numel", "stored_numel", *_SUMMARY, "nan_count", "inf_count")
    stmt = (
        select(
            ia.index.label("iteration"),
            ta.id.label("a_id"),
            tb.id.label("b_id"),
            ta.name,
            ta.role,
            ta.layer,
            cast(ta.shape, Text).label("a_shape"),
            cast(tb.shape, Text).label("b_shape"),
            *(getattr(ta, c).label(f"a_{c}") for c in meta),
            *(getattr(tb, c).label(f"b_{c}") for c in meta),
        )
        .select_from(ta)
        .join(ia, ia.id == ta.iteration_id)
        .join(ib, and_(ib.run_id == run_b, ib.index == ia.index))
        .join(tb, and_(tb.iteration_id == ib.id, tb.name == ta.name), isouter=True)
        .where(ta.iteration_id.in_(ids_a))
    )
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(stmt)]


def _names_only_in(engine: Engine, run_x: int, run_y: int, ids_x: list[int]) -> list[tuple]:
    """(iteration, tensor id, name) of tensors of run_x's iterations that run_y's same iteration lacks."""
    tx, ty = aliased(schema.Tensor), aliased(schema.Tensor)
    ix, iy = aliased(schema.Iteration), aliased(schema.Iteration)
    missing = (
        select(ty.id)
        .join(iy, iy.id == ty.iteration_id)
        .where(iy.run_id == run_y, iy.index == ix.index, ty.name == tx.name)
        .exists()
    )
    stmt = (
        select(ix.index, tx.id, tx.name, tx.role, tx.layer)
        .join(ix, ix.id == tx.iteration_id)
        .where(tx.iteration_id.in_(ids_x), ~missing)
    )
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(stmt)]


def _bytes_differ(engine: Engine, run_b: int, ids_a: list[int]) -> set[int]:
    """Ids of A's tensors (in these iterations) whose stored bytes differ from B's same-named
    tensor: the database compares the blobs (a memcmp in SQLite) and returns only ids."""
    if not ids_a:
        return set()
    ta, tb = aliased(schema.Tensor), aliased(schema.Tensor)
    ia, ib = aliased(schema.Iteration), aliased(schema.Iteration)
    da, db = aliased(schema.TensorData), aliased(schema.TensorData)
    stmt = (
        select(ta.id)
        .join(ia, ia.id == ta.iteration_id)
        .join(ib, and_(ib.run_id == run_b, ib.index == ia.index))
        .join(tb, and_(tb.iteration_id == ib.id, tb.name == ta.name))
        .join(da, da.tensor_id == ta.id)
        .join(db, db.tensor_id == tb.id)
        .where(ta.iteration_id.in_(ids_a), da.data != db.data)
    )
    with engine.connect() as connection:
        return set(connection.execute(stmt).scalars())


_META = ("dtype", "numel", "stored_numel", *_SUMMARY, "nan_count", "inf_count")


def _metadata(engine: Engine, iteration_ids: list[int]) -> dict[tuple[int, str], dict]:
    """(iteration index, tensor name) -> id, role, layer, shape (as JSON text) and the
    summary columns of one store's tensors in these iterations (no bytes)."""
    if not iteration_ids:
        return {}
    t, it = schema.Tensor, schema.Iteration
    stmt = (
        select(it.index, t.id, t.name, t.role, t.layer, t.shape, *(getattr(t, c) for c in _META))
        .join(it, it.id == t.iteration_id)
        .where(t.iteration_id.in_(iteration_ids))
    )
    out = {}
    with engine.connect() as connection:
        for row in connection.execute(stmt):
            index, tensor_id, name, role, layer, shape, *meta = row
            # One spelling of the shape on both sides, whatever each database returns.
            out[(index, name)] = dict(
                id=tensor_id,
                role=role,
                layer=layer,
                shape=json.dumps([int(d) for d in shape]),
                **dict(zip(_META, meta, strict=True)),
            )
    return out


def _pair_across(engine_a: Engine, ids_a: list[int], engine_b: Engine, ids_b: list[int]):
    """`_pair_query` and `_names_only_in` for runs in two stores: each side's metadata is
    read with one query and the pairs are made here."""
    side_a, side_b = _metadata(engine_a, ids_a), _metadata(engine_b, ids_b)
    rows = []
    for (index, name), a in side_a.items():
        b = side_b.get((index, name))
        row = dict(
            iteration=index,
            a_id=a["id"],
            b_id=b["id"] if b else None,
            name=name,
            role=a["role"],
            layer=a["layer"],
            a_shape=a["shape"],
            b_shape=b["shape"] if b else None,
        )
        for c in _META:
            row[f"a_{c}"] = a[c]
            row[f"b_{c}"] = b[c] if b else None
        rows.append(row)
    extra_b = [
        (index, b["id"], name, b["role"], b["layer"])
        for (index, name), b in side_b.items()
        if (index, name) not in side_a
    ]
    return rows, extra_b


def _blobs(engine: Engine, tensor_ids: list[int]) -> dict[int, bytes]:
    stmt = select(schema.TensorData.tensor_id, schema.TensorData.data).where(
        schema.TensorData.tensor_id.in_(tensor_ids)
    )
    with engine.connect() as connection:
        return {i: bytes(data) for i, data in connection.execute(stmt)}


def _bytes_differ_across(
    engine_a: Engine, engine_b: Engine, pairs: list[tuple[int, int]], chunk: int = 256
) -> set[int]:
    """Ids of A's tensors whose stored bytes differ from their pair's in the other store,
    read a chunk of pairs at a time (bounded memory, one query per side and chunk)."""
    out = set()
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        a = _blobs(engine_a, [i for i, _ in part])
        b = _blobs(engine_b, [j for _, j in part])
        out.update(i for i, j in part if a.get(i) != b.get(j))
    return out


def _load(engine: Engine, tensor_id: int) -> tuple[np.ndarray, tuple[int, ...], bool]:
    stmt = (
        select(
            schema.TensorData.data,
            schema.Tensor.dtype,
            schema.Tensor.shape,
            schema.Tensor.numel,
            schema.Tensor.stored_numel,
        )
        .join(schema.Tensor, schema.Tensor.id == schema.TensorData.tensor_id)
        .where(schema.TensorData.tensor_id == tensor_id)
    )
    with engine.connect() as connection:
        data, dtype, shape, numel, stored = connection.execute(stmt).one()
    whole = numel == stored
    shape = tuple(int(d) for d in shape)
    return codec.decode(data, dtype, shape if whole else None), shape, whole


def _step(engine: Engine, iteration_id: int, position: int) -> tuple[str, str, str] | None:
    stmt = select(schema.Step.title, schema.Step.phase, schema.Step.layer).where(
        schema.Step.iteration_id == iteration_id, schema.Step.position == position
    )
    with engine.connect() as connection:
        row = connection.execute(stmt).first()
    return tuple(row) if row is not None else None


# ---------------------------------------------------------------- comparison


def _close(x, y, atol: float) -> bool:
    """Two summary values within atol (None is NULL: NaN or no finite values)."""
    if x is None or y is None:
        return x is None and y is None
    if atol == 0:
        return x == y
    return abs(x - y) <= atol


def _metadata_reason(row: dict, atol: float) -> str | None:
    """Why the metadata alone proves the pair differs beyond atol, or None."""
    if row["b_id"] is None:
        return "is only in run A"
    if row["a_dtype"] != row["b_dtype"]:
        return f"has dtype {row['a_dtype']} in A, {row['b_dtype']} in B"
    if row["a_shape"] != row["b_shape"]:
        return f"has shape {row['a_shape']} in A, {row['b_shape']} in B"
    if row["a_stored_numel"] != row["b_stored_numel"]:
        return "has a different number of stored elements"
    if row["a_nan_count"] != row["b_nan_count"] or row["a_inf_count"] != row["b_inf_count"]:
        return "has NaN or Inf in different places"
    # Each summary is within atol of the other's whenever every element is; std and the
    # L2 norm are only bitwise checks (their bound depends on the tensor's size).
    checked = _SUMMARY if atol == 0 else ("min", "max", "mean")
    for key in checked:
        if not _close(row[f"a_{key}"], row[f"b_{key}"], atol):
            return f"differs (its {key} is {row[f'a_{key}']!r} in A, {row[f'b_{key}']!r} in B)"
    return None


def compare_arrays(a: np.ndarray, b: np.ndarray, atol: float) -> dict | None:
    """Largest element-wise difference of two same-shaped arrays, or None when within atol.

    NaN equals NaN and an infinity equals itself; NaN against a number is an
    infinite difference.
    """
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(b64 - a64)
    same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
    diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
    beyond = diff > atol
    if not beyond.any():
        return None
    flat = int(np.argmax(diff))
    index = tuple(int(i) for i in np.unravel_index(flat, diff.shape)) if diff.ndim else ()
    return dict(
        max_abs_diff=float(diff.reshape(-1)[flat]),
        index=index,
        value_a=float(a64.reshape(-1)[flat]),
        value_b=float(b64.reshape(-1)[flat]),
        differing=int(beyond.sum()),
    )


def first_divergence(
    engine: Engine,
    run_a: int,
    run_b: int,
    *,
    atol: float = 0.0,
    engine_b: Engine | None = None,
) -> DivergenceReport:
    """Compare two runs iteration by iteration; see the module docstring. Run B is in
    `engine_b`'s store when given (two stores), else in the same store as run A."""
    if not (isinstance(atol, (int, float)) and math.isfinite(atol) and atol >= 0):
        raise DivergeError(f"atol must be a number >= 0, not {atol!r}")
    across = engine_b is not None and engine_b is not engine
    engine_a = engine
    engine_b = engine_b if across else engine
    its_a, its_b = _iterations(engine_a, run_a), _iterations(engine_b, run_b)
    for run_id, its in ((run_a, its_a), (run_b, its_b)):
        if not its:
            raise DivergeError(f"run {run_id} has no stored iterations")
    common = sorted(set(its_a) & set(its_b))
    notes = []
    # An iteration stored in one run only is a divergence at that iteration.
    structural = None
    only = sorted(set(its_a) ^ set(its_b))
    if only:
        first = only[0]
        side = "A" if first in its_a else "B"
        structural = Divergence(
            iteration=first,
            tensor="(the whole iteration)",
            reason=f"is stored in run {side} only",
        )
        common = [i for i in common if i < first]
    ids_a = [its_a[i] for i in common]
    ids_b = [its_b[i] for i in common]
    if across:
        rows, extra_b = _pair_across(engine_a, ids_a, engine_b, ids_b)
    else:
        rows = _pair_query(engine, run_b, ids_a) if ids_a else []
        extra_b = _names_only_in(engine, run_b, run_a, ids_b) if ids_b else []
    ranks = _tensor_ranks(engine_a, ids_a) if ids_a else {}

    def rank_of(tensor_id: int, ranks_map: dict[int, int]) -> int:
        return ranks_map.get(tensor_id, _UNLINKED_RANK + tensor_id)

    # Candidates in (iteration, rank) order: metadata proofs first, then byte checks.
    candidates: list[tuple[int, int, dict, str | None]] = []
    for row in rows:
        candidates.append(
            (row["iteration"], rank_of(row["a_id"], ranks), row, _metadata_reason(row, atol))
        )
    if extra_b:
        ranks_b = _tensor_ranks(engine_b, ids_b)
        for index, tensor_id, name, role, layer in extra_b:
            row = dict(
                iteration=index, a_id=None, b_id=tensor_id, name=name, role=role, layer=layer
            )
            candidates.append((index, rank_of(tensor_id, ranks_b), row, "is only in run B"))
    candidates.sort(key=lambda c: (c[0], c[1]))
    proven = [c for c in candidates if c[3] is not None]
    bound = (proven[0][0], proven[0][1]) if proven else None
    # Bytes are compared only up to the first proven divergence's iteration.
    last = bound[0] if bound is not None else (common[-1] if common else 0)
    if across:
        differ = _bytes_differ_across(
            engine_a,
            engine_b,
            [
                (row["a_id"], row["b_id"])
                for iteration, rank, row, reason in candidates
                if reason is None
                and row["a_id"] is not None
                and (bound is None or (iteration, rank) <= bound)
            ],
        )
    else:
        differ = _bytes_differ(engine, run_b, [its_a[i] for i in common if i <= last])
    found: Divergence | None = None
    for iteration, rank, row, reason in candidates:
        if bound is not None and (iteration, rank) > bound:
            break
        if reason is not None:
            found = _divergence(engine_a, engine_b, row, reason, atol)
        elif row["a_id"] in differ:
            a, shape, whole_a = _load(engine_a, row["a_id"])
            b, _, whole_b = _load(engine_b, row["b_id"])
            result = compare_arrays(a, b, atol)
            if result is None:
                continue
            if not (whole_a and whole_b):
                result["index"] = None  # a flat position in a truncated prefix
            found = Divergence(
                iteration=iteration,
                tensor=row["name"],
                reason=_differs(atol),
                role=row["role"],
                layer=row["layer"],
                **result,
            )
        else:
            continue
        found.iteration = iteration
        _attach_step(engine_a, engine_b, found, its_a.get(iteration), its_b.get(iteration), rank)
        break
    if found is None and structural is not None:
        found = structural
    if only and found is structural:
        notes.append(f"run A stores {len(its_a)} iterations, run B {len(its_b)}")
    return DivergenceReport(
        run_a=run_a,
        run_b=run_b,
        atol=float(atol),
        iterations=len(common),
        tensors=len(rows),
        divergence=found,
        notes=notes,
    )


def _differs(atol: float) -> str:
    return "differs" if atol == 0 else f"differs by more than {atol:g}"


def _divergence(
    engine_a: Engine, engine_b: Engine, row: dict, reason: str, atol: float
) -> Divergence:
    found = Divergence(
        iteration=row["iteration"],
        tensor=row["name"],
        reason=reason,
        role=row.get("role"),
        layer=row.get("layer"),
    )
    if row.get("a_id") is not None and row.get("b_id") is not None:
        if row["a_dtype"] == row["b_dtype"] and row["a_shape"] == row["b_shape"]:
            a, _, whole_a = _load(engine_a, row["a_id"])
            b, _, whole_b = _load(engine_b, row["b_id"])
            if a.shape == b.shape:
                result = compare_arrays(a, b, atol)
                if result is not None:
                    if not (whole_a and whole_b):
                        result["index"] = None
                    for key, value in result.items():
                        setattr(found, key, value)
                    if reason.startswith("differs"):  # the values say more than the summary
                        found.reason = _differs(atol)
                elif not (whole_a and whole_b):
                    found.reason += " beyond the stored elements"
    return found


def _attach_step(
    engine_a, engine_b, found: Divergence, iteration_a, iteration_b, rank: int
) -> None:
    if rank >= _UNLINKED_RANK:
        return
    only_b = found.reason == "is only in run B"
    iteration_id = iteration_b if only_b else iteration_a
    engine = engine_b if only_b else engine_a
    step = _step(engine, iteration_id, rank // 2) if iteration_id is not None else None
    if step is not None:
        found.step_position = rank // 2
        found.step_title, found.step_phase, found.step_layer = step
