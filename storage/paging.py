"""Reads that cost what is shown, not what is stored: a page of runs, a window of a tensor.

`run_page` filters, sorts and counts in SQL and returns one page of runs, so the
runs page costs the same at 10 and 10,000 runs. `tensor_window` reads the bytes of
one window of one tensor plane with `substr` on its BLOB (one range per row of the
window), so a 64x64 view of a (64, 6, 28, 28) activation reads 16 KiB, not 1.2 MB,
and never decodes the rest. Both take an Engine and are reached as methods of
`storage.RunStore`. `substr` on a BLOB (SQLite) or bytea (PostgreSQL) counts bytes.
"""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import numpy as np
from sqlalchemy import Engine, func, or_, select

from . import schema
from .records import RUN_RUNNING, RunPage, RunQuery, TensorRecord, TensorWindow

# Sort keys of the runs list -> the column they sort by (NULLs last in either order).
RUN_SORTS = {
    "id": schema.Run.id,
    "name": func.lower(schema.Run.name),
    "seed": schema.Run.seed,
    "model": func.lower(schema.Run.model_name),
    "lr": schema.Run.learning_rate,
    "status": schema.Run.status,
    "iterations": schema.Run.num_iterations,
    "loss": schema.Run.final_loss,
    "created": schema.Run.started_at,
}

NULLABLE_SORTS = {"seed", "lr", "loss"}

# Runs are listed from plain rows of the table (attribute access as on the ORM class,
# without building and tracking an ORM object per row: a third of a page's read).
RUN_ROWS = schema.Run.__table__

# At most this many rows and columns in one window read (a page never draws more).
MAX_WINDOW = 256


def _contains(column, text: str):
    """column contains `text`, any case; % and _ in `text` match themselves."""
    text = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.lower(column).like(f"%{text}%", escape="\\")


def _filtered(stmt, query: RunQuery):
    run = schema.Run
    if query.model:
        stmt = stmt.where(run.model_name == query.model)
    if query.seed is not None:
        stmt = stmt.where(run.seed == query.seed)
    if query.status:
        stmt = stmt.where(run.status == query.status)
    if query.name:
        # A substring, not a pattern: % and _ in what the user typed match themselves.
        stmt = stmt.where(_contains(run.name, query.name))
    if query.text and query.text.strip():
        text = query.text.strip()
        either = [_contains(run.name, text), _contains(run.model_name, text)]
        if text.isascii() and text.isdigit() and len(text) <= 18:
            either += [run.id == int(text), run.seed == int(text)]
        stmt = stmt.where(or_(*either))
    if query.started_from is not None:
        stmt = stmt.where(run.started_at >= dt.datetime.combine(query.started_from, dt.time()))
    if query.started_to is not None:
        end = dt.datetime.combine(query.started_to + dt.timedelta(days=1), dt.time())
        stmt = stmt.where(run.started_at < end)
    return stmt


# Per engine: (largest run id, number of runs) -> the model names. Listing them scans
# every run row (model_name has no index); a run's model never changes, so the list
# only changes when runs are added or deleted, which the id and the count show.
_MODELS: dict[int, tuple[tuple[int, int], list[str]]] = {}


def _model_names(engine: Engine, session, count: int | None = None) -> list[str]:
    """`count`: the number of runs when the caller has just counted them all."""
    # Two scalar subqueries: max(id) alone walks the primary key to its end, while
    # max and count in one SELECT scan every row for both.
    if count is None:
        count = select(func.count(schema.Run.id)).scalar_subquery()
    key = tuple(
        session.execute(select(select(func.max(schema.Run.id)).scalar_subquery(), count)).one()
    )
    cached = _MODELS.get(id(engine))
    if cached is not None and cached[0] == key:
        return list(cached[1])
    names = list(
        session.scalars(select(schema.Run.model_name).distinct().order_by(schema.Run.model_name))
    )
    _MODELS[id(engine)] = (key, names)
    return names


def _plain_rows(session, stmt) -> list[SimpleNamespace]:
    """The rows of `stmt` as plain objects: each column an attribute, as on a Row, but
    read at attribute speed (a Row's attribute lookup is most of listing a run)."""
    result = session.execute(stmt)
    keys = list(result.keys())
    return [SimpleNamespace(**dict(zip(keys, values, strict=True))) for values in result]


def _narrowed(query: RunQuery) -> bool:
    """Whether `query` filters runs (its count is then not the store's)."""
    return _filtered(select(schema.Run.id), query).whereclause is not None


def _statuses_statement():
    status = schema.Run.status
    first = select(func.min(status).label("status")).cte("statuses", recursive=True)
    following = select(
        select(func.min(status)).where(status > first.c.status).scalar_subquery()
    ).where(first.c.status.is_not(None))
    found = first.union_all(following)
    return select(found.c.status).where(found.c.status.is_not(None))


# The distinct statuses, smallest first, as a skip scan of the status index: one index
# probe per status (a handful) instead of reading every run's entry.
STATUSES = _statuses_statement()


def _statuses(session) -> list[str]:
    return list(session.scalars(STATUSES))


def run_page(engine: Engine, query: RunQuery, to_info) -> RunPage:
    """One page of runs (`to_info` turns an ORM row into a RunInfo) and the counts around it."""
    from sqlalchemy.orm import Session

    column = RUN_SORTS.get(query.sort, schema.Run.id)
    order = column.desc() if query.descending else column.asc()
    # NULLs last only where a column has them: "ORDER BY id" alone walks the primary key.
    keys = ([column.is_(None)] if query.sort in NULLABLE_SORTS else []) + [order]
    if query.sort != "id":
        keys.append(schema.Run.id)  # ties: oldest first
    # Sort and cut the ids alone, then read the page's rows: the sort carries no JSON.
    page_ids = (
        _filtered(select(schema.Run.id), query)
        .order_by(*keys)
        .offset(max(query.offset, 0))
        .limit(max(query.limit, 1))
    )
    count = _filtered(select(func.count(schema.Run.id)), query)
    with Session(engine) as session:
        ids = list(session.scalars(page_ids))
        rows = {
            row.id: row
            for row in _plain_rows(session, select(RUN_ROWS).where(schema.Run.id.in_(ids)))
        }
        runs = [to_info(rows[i]) for i in ids]
        total = session.execute(count).scalar_one()
        models = _model_names(engine, session, None if _narrowed(query) else int(total))
        statuses = _statuses(session)
        # Stored `running` is not enough: a run whose writer died reads as stale and
        # must not keep the page polling (the few running rows are checked one by one).
        alive = RUN_RUNNING in statuses and any(
            to_info(row).status == RUN_RUNNING
            for row in _plain_rows(
                session, select(RUN_ROWS).where(schema.Run.status == RUN_RUNNING)
            )
        )
    return RunPage(
        runs=runs,
        total=int(total),
        models=models,
        statuses=statuses,
        any_running=alive,
    )


def plane_of(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of a tensor's planes: the last two axes, a 1-D tensor as a column."""
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (shape[0], 1)
    return (shape[-2], shape[-1])


def _clamp(value: int, low: int, high: int) -> int:
    return min(max(int(value), low), max(high, low))


def tensor_window(
    engine: Engine,
    run_id: int,
    index: int,
    name: str,
    *,
    lead=(),
    row0: int = 0,
    col0: int = 0,
    rows: int = 64,
    cols: int = 64,
) -> TensorWindow | None:
    """Rows row0.. and columns col0.. of the plane at `lead`, clamped into the tensor.

    None when the iteration holds no tensor of that name. Elements past what a size
    bound stored come back NaN with `stored` False.
    """
    tensor_stmt = (
        select(schema.Tensor)
        .join(schema.Iteration)
        .where(
            schema.Iteration.run_id == run_id,
            schema.Iteration.index == index,
            schema.Tensor.name == name,
        )
    )
    with engine.connect() as connection:
        row = connection.execute(tensor_stmt).mappings().one_or_none()
        if row is None:
            return None
        shape = tuple(int(d) for d in row["shape"])
        dtype = np.dtype(row["dtype"])
        if dtype.kind not in "biuf":
            raise ValueError(f"refusing to read dtype {row['dtype']!r} from a store")
        n_rows, n_cols = plane_of(shape)
        leading = shape[:-2] if len(shape) > 2 else ()
        lead = tuple(
            _clamp(lead[i] if i < len(lead) and lead[i] is not None else 0, 0, size - 1)
            for i, size in enumerate(leading)
        )
        rows = _clamp(rows, 1, MAX_WINDOW)
        cols = _clamp(cols, 1, MAX_WINDOW)
        row0 = _clamp(row0, 0, n_rows - rows)
        col0 = _clamp(col0, 0, n_cols - cols)
        rows, cols = min(rows, n_rows), min(cols, n_cols)
        plane_start = int(np.ravel_multi_index(lead, leading)) * n_rows * n_cols if leading else 0
        size = dtype.itemsize
        starts = [plane_start + (row0 + r) * n_cols + col0 for r in range(rows)]
        data = schema.TensorData.data
        pieces = (
            connection.execute(
                select(*[func.substr(data, s * size + 1, cols * size) for s in starts]).where(
                    schema.TensorData.tensor_id == row["id"]
                )
            ).one()
            if rows
            else ()
        )
    values = np.full((rows, cols), np.nan, dtype=np.float64)
    stored = np.zeros((rows, cols), dtype=bool)
    for r, piece in enumerate(pieces):
        got = np.frombuffer(bytes(piece or b""), dtype=dtype)[:cols]
        values[r, : got.size] = got.astype(np.float64)
        stored[r, : got.size] = True
    summary = {
        key: row[key] for key in ("min", "max", "mean", "std", "l2", "nan_count", "inf_count")
    }
    record = TensorRecord(
        name=row["name"],
        role=row["role"],
        array=np.empty((0,), dtype=dtype),
        layer=row["layer"],
        shape=shape,
        summary=summary,
        id=row["id"],
        stored_numel=row["stored_numel"],
    )
    return TensorWindow(
        tensor=record,
        lead=lead,
        row0=row0,
        col0=col0,
        plane=(n_rows, n_cols),
        values=values,
        stored=stored,
        dtype=dtype.str,
    )


def find_runs(engine: Engine, query: RunQuery, to_info) -> list:
    """The runs of one page, without the counts `run_page` adds (a picker's options)."""
    from sqlalchemy.orm import Session

    column = RUN_SORTS.get(query.sort, schema.Run.id)
    order = column.desc() if query.descending else column.asc()
    keys = ([column.is_(None)] if query.sort in NULLABLE_SORTS else []) + [order]
    if query.sort != "id":
        keys.append(schema.Run.id)
    page_ids = (
        _filtered(select(schema.Run.id), query)
        .order_by(*keys)
        .offset(max(query.offset, 0))
        .limit(max(query.limit, 1))
    )
    with Session(engine) as session:
        ids = list(session.scalars(page_ids))
        rows = {
            row.id: row
            for row in _plain_rows(session, select(RUN_ROWS).where(schema.Run.id.in_(ids)))
        }
        return [to_info(rows[i]) for i in ids]


def recent_runs(engine: Engine, limit: int) -> list:
    """(id, name, seed) of the `limit` most recent runs: what a run picker labels, read
    without the rest of each run."""
    run = schema.Run
    stmt = select(run.id, run.name, run.seed).order_by(run.id.desc()).limit(max(limit, 1))
    with engine.connect() as connection:
        return list(connection.execute(stmt))


def iteration_indices(engine: Engine, run_id: int) -> list[int]:
    """The indices of a run's stored iterations, in order (one indexed read, no steps)."""
    stmt = (
        select(schema.Iteration.index)
        .where(schema.Iteration.run_id == run_id)
        .order_by(schema.Iteration.index)
    )
    with engine.connect() as connection:
        return [int(i) for i in connection.scalars(stmt)]


def tensor_records(engine: Engine, run_id: int, index: int) -> list[TensorRecord] | None:
    """Every tensor of one iteration without its bytes: name, role, layer, shape, dtype
    (as an empty array), the stored summaries and how many elements are stored.
    None when the run stores no such iteration."""
    iteration = select(schema.Iteration.id).where(
        schema.Iteration.run_id == run_id, schema.Iteration.index == index
    )
    t = schema.Tensor
    columns = (t.id, t.name, t.role, t.layer, t.dtype, t.shape, t.stored_numel)
    summaries = (t.min, t.max, t.mean, t.std, t.l2, t.nan_count, t.inf_count)
    with engine.connect() as connection:
        iteration_id = connection.execute(iteration).scalar_one_or_none()
        if iteration_id is None:
            return None
        rows = connection.execute(
            select(*columns, *summaries).where(t.iteration_id == iteration_id).order_by(t.id)
        ).all()
    return [
        TensorRecord(
            name=row.name,
            role=row.role,
            array=np.empty((0,), dtype=np.dtype(row.dtype)),
            layer=row.layer,
            shape=tuple(int(d) for d in row.shape),
            summary={c.key: getattr(row, c.key) for c in summaries},
            id=row.id,
            stored_numel=row.stored_numel,
        )
        for row in rows
    ]


def summary_history(
    engine: Engine, run_ids, roles, column: str = "l2"
) -> list[tuple[int, int, str, str, float | None]]:
    """(run id, iteration, tensor name, role, stored summary) of every tensor of these
    roles in these runs, in run, iteration and store order: one query over the summary
    columns, no tensor bytes (the norms-over-iterations figure).

    `role || ''` keeps SQLite from walking the role index, which holds every run's
    tensors of that role; the few runs' iterations lead to their tensors instead."""
    t, it = schema.Tensor, schema.Iteration
    value = {"l2": t.l2, "mean": t.mean, "std": t.std, "min": t.min, "max": t.max}[column]
    stmt = (
        select(it.run_id, it.index, t.name, t.role, value)
        .join(it, it.id == t.iteration_id)
        .where(it.run_id.in_(list(run_ids)), (t.role + "").in_(list(roles)))
        .order_by(it.run_id, it.index, t.id)
    )
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(stmt)]


def loss_history(engine: Engine, run_ids) -> list[tuple[int, int, float | None]]:
    """(run id, iteration, loss) of these runs, in run and iteration order."""
    it = schema.Iteration
    stmt = (
        select(it.run_id, it.index, it.loss)
        .where(it.run_id.in_(list(run_ids)))
        .order_by(it.run_id, it.index)
    )
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(stmt)]
