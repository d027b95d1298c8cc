"""The run store's tables (SQLAlchemy 2.x ORM) and its SQL views.

Documented table by table in docs/schema.md. ORM classes stay inside
`storage`; everything outside gets the records of `storage.records`.

Tensor bytes live in `tensor_data`, apart from the `tensors` metadata that
queries scan, so that listing or summarising tensors never pages through blobs.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .location import NAME_MAX

# Bump on any change to tables or views, with an Alembic revision under
# storage/migrations/versions; `storage.store` refuses other versions and names
# `cnnviz db upgrade` for older ones.
SCHEMA_VERSION = 4
# Alembic revisions, oldest first; the last is the one this code reads and writes.
REVISIONS = ("0001", "0002", "0003", "0004")
SCHEMA_REVISION = REVISIONS[-1]
# Not `alembic_version`: other tools sharing a database use that name.
VERSION_TABLE = "cnnviz_alembic_version"

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Keys and element counts are 64-bit everywhere. PostgreSQL's INTEGER is 32-bit (a
# team store passes 2^31 tensors), so it gets BIGINT (BIGSERIAL for the keys);
# SQLite's INTEGER is 64-bit already, and its rowid alias must be spelled INTEGER
# PRIMARY KEY, so SQLite keeps INTEGER. Revision 0003 widens older PostgreSQL stores.
BigKey = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Meta(Base):
    """Key/value facts about the file itself: schema_version, created_by."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    seed: Mapped[int | None] = mapped_column(BigInteger)  # 0 .. 2**32 - 1
    model_name: Mapped[str] = mapped_column(String(200))
    model_description: Mapped[str] = mapped_column(Text, default="")
    optimizer: Mapped[str] = mapped_column(String(100))
    optimizer_settings: Mapped[dict] = mapped_column(JSON, default=dict)
    learning_rate: Mapped[float | None]
    loss_name: Mapped[str] = mapped_column(String(100))
    dataset: Mapped[str] = mapped_column(Text, default="")
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    torch_version: Mapped[str] = mapped_column(String(50), default="")
    cnnviz_version: Mapped[str] = mapped_column(String(50), default="")
    status: Mapped[str] = mapped_column(String(20), index=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    final_loss: Mapped[float | None]
    num_iterations: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # The writing process, and when it last committed: a `running` run whose writer
    # is gone (same host, dead pid) or silent for long reads as `stale`.
    writer_host: Mapped[str | None] = mapped_column(String(255))
    writer_pid: Mapped[int | None] = mapped_column(Integer)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # "NaN at iteration k": the first iteration whose loss was not finite.
    divergence: Mapped[str | None] = mapped_column(String(100))

    layers: Mapped[list[Layer]] = relationship(
        back_populates="run", order_by="Layer.position", cascade="all, delete-orphan"
    )
    iterations: Mapped[list[Iteration]] = relationship(
        back_populates="run", order_by="Iteration.index", cascade="all, delete-orphan"
    )


class Layer(Base):
    __tablename__ = "layers"
    __table_args__ = (UniqueConstraint("run_id", "position"),)

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    run_id: Mapped[int] = mapped_column(
        BigKey, ForeignKey("runs.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int]
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(100))
    input_shape: Mapped[list | None] = mapped_column(JSON)
    output_shape: Mapped[list | None] = mapped_column(JSON)
    num_params: Mapped[int] = mapped_column(BigKey, default=0)
    description: Mapped[str] = mapped_column(Text, default="")
    formula: Mapped[str] = mapped_column(Text, default="")
    explained: Mapped[bool] = mapped_column(Boolean, default=True)

    run: Mapped[Run] = relationship(back_populates="layers")


class Iteration(Base):
    __tablename__ = "iterations"
    __table_args__ = (UniqueConstraint("run_id", "index"),)

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    run_id: Mapped[int] = mapped_column(
        BigKey, ForeignKey("runs.id", ondelete="CASCADE"), index=True
    )
    index: Mapped[int]  # 1-based
    loss: Mapped[float | None]  # NULL when the loss was NaN (SQLite stores no NaN)
    accuracy: Mapped[float | None]
    learning_rate: Mapped[float | None]
    warnings: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)

    run: Mapped[Run] = relationship(back_populates="iterations")
    tensors: Mapped[list[Tensor]] = relationship(
        back_populates="iteration", order_by="Tensor.id", cascade="all, delete-orphan"
    )
    steps: Mapped[list[Step]] = relationship(
        back_populates="iteration", order_by="Step.position", cascade="all, delete-orphan"
    )


class Tensor(Base):
    """Metadata and full-tensor summary statistics; the bytes are in TensorData."""

    __tablename__ = "tensors"
    __table_args__ = (UniqueConstraint("iteration_id", "name"),)

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    iteration_id: Mapped[int] = mapped_column(
        BigKey, ForeignKey("iterations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(300))
    layer: Mapped[str | None] = mapped_column(String(200), index=True)
    role: Mapped[str] = mapped_column(String(30), index=True)
    dtype: Mapped[str] = mapped_column(String(20))  # NumPy dtype string, little-endian: "<f4"
    shape: Mapped[list] = mapped_column(JSON)  # the full tensor's shape
    numel: Mapped[int] = mapped_column(BigKey)  # elements of the full tensor
    # elements stored (fewer when truncated by a bound)
    stored_numel: Mapped[int] = mapped_column(BigKey)
    min: Mapped[float | None] = mapped_column(Float)
    max: Mapped[float | None] = mapped_column(Float)
    mean: Mapped[float | None] = mapped_column(Float)
    std: Mapped[float | None] = mapped_column(Float)
    l2: Mapped[float | None] = mapped_column(Float)
    nan_count: Mapped[int] = mapped_column(BigKey, default=0)
    inf_count: Mapped[int] = mapped_column(BigKey, default=0)

    iteration: Mapped[Iteration] = relationship(back_populates="tensors")
    data: Mapped[TensorData] = relationship(
        back_populates="tensor", cascade="all, delete-orphan", uselist=False
    )


class TensorData(Base):
    """Raw little-endian bytes in C order, never pickled.

    `elements` is a JSON array copy of the flattened values for small tensors
    stored whole (up to storage.codec.JSON_COPY_MAX_NUMEL elements), so the sqlite3 shell can read them
    element by element through json_each (see the tensor_elements view).
    """

    __tablename__ = "tensor_data"

    tensor_id: Mapped[int] = mapped_column(
        BigKey, ForeignKey("tensors.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)
    elements: Mapped[str | None] = mapped_column(Text)

    tensor: Mapped[Tensor] = relationship(back_populates="data")


class Step(Base):
    __tablename__ = "steps"
    __table_args__ = (UniqueConstraint("iteration_id", "position"),)

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    iteration_id: Mapped[int] = mapped_column(
        BigKey, ForeignKey("iterations.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int]
    layer: Mapped[str] = mapped_column(String(200))
    phase: Mapped[str] = mapped_column(String(10))
    title: Mapped[str] = mapped_column(Text)
    formula: Mapped[str] = mapped_column(Text)
    formula_values: Mapped[str] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    max_abs_diff: Mapped[float | None] = mapped_column(Float)
    verified: Mapped[bool | None] = mapped_column(Boolean)
    note: Mapped[str] = mapped_column(Text, default="")

    iteration: Mapped[Iteration] = relationship(back_populates="steps")
    tensor_links: Mapped[list[StepTensor]] = relationship(
        back_populates="step", order_by="StepTensor.position", cascade="all, delete-orphan"
    )


class StepTensor(Base):
    """Which tensors a step reads ('in') and produces ('out')."""

    __tablename__ = "step_tensors"

    step_id: Mapped[int] = mapped_column(
        BigKey, ForeignKey("steps.id", ondelete="CASCADE"), primary_key=True
    )
    tensor_id: Mapped[int] = mapped_column(
        BigKey, ForeignKey("tensors.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    direction: Mapped[str] = mapped_column(String(3), primary_key=True)  # 'in' or 'out'
    position: Mapped[int]

    step: Mapped[Step] = relationship(back_populates="tensor_links")
    tensor: Mapped[Tensor] = relationship()


class Capture(Base):
    """The raw truth of an iteration traced with explanation off, kept until `cnnviz
    explain` explains it: the capture manifest (the calls in order with their module
    specs, the optimizer's spec, and where each captured array is), as JSON text.
    The row is deleted when the iteration is explained."""

    __tablename__ = "captures"

    iteration_id: Mapped[int] = mapped_column(
        BigKey, ForeignKey("iterations.id", ondelete="CASCADE"), primary_key=True
    )
    manifest: Mapped[str] = mapped_column(Text)  # JSON (tracer.rawtruth), never pickled


class CaptureArray(Base):
    """A captured array of an unexplained iteration that `tensors` does not hold whole:
    tensors a storage bound truncated, the optimizer's state before the step, module
    buffers before and after a call. Raw bytes as in `tensor_data`."""

    __tablename__ = "capture_arrays"

    iteration_id: Mapped[int] = mapped_column(
        BigKey, ForeignKey("iterations.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(40), primary_key=True)  # as the manifest names it
    dtype: Mapped[str] = mapped_column(String(20))
    shape: Mapped[list] = mapped_column(JSON)
    data: Mapped[bytes] = mapped_column(LargeBinary)


# Views for people who query the file with the sqlite3 shell. docs/schema.md
# documents them; tests/test_schema_docs.py runs the documented queries.
VIEWS = {
    "run_summary": """
        SELECT r.id AS run_id, r.name, r.seed, r.model_name, r.optimizer, r.learning_rate,
               r.status, r.num_iterations, r.final_loss, r.started_at, r.finished_at
        FROM runs r
    """,
    "iteration_losses": """
        SELECT r.id AS run_id, r.name AS run_name, r.seed, i.id AS iteration_id,
               i."index" AS iteration, i.loss, i.accuracy, i.learning_rate
        FROM iterations i JOIN runs r ON r.id = i.run_id
    """,
    "tensor_summary": """
        SELECT r.id AS run_id, r.name AS run_name, r.seed, i."index" AS iteration,
               t.id AS tensor_id, t.name, t.layer, t.role, t.dtype, t.shape, t.numel,
               t.stored_numel, t.min, t.max, t.mean, t.std, t.l2, t.nan_count, t.inf_count
        FROM tensors t
        JOIN iterations i ON i.id = t.iteration_id
        JOIN runs r ON r.id = i.run_id
    """,
    "tensor_elements": """
        SELECT r.id AS run_id, i."index" AS iteration, t.id AS tensor_id, t.name,
               t.layer, t.role, CAST(e.key AS INTEGER) AS flat_index, e.value AS value
        FROM tensors t
        JOIN tensor_data d ON d.tensor_id = t.id
        JOIN iterations i ON i.id = t.iteration_id
        JOIN runs r ON r.id = i.run_id,
        json_each(d.elements) AS e
        WHERE d.elements IS NOT NULL
    """,
    "step_summary": """
        SELECT r.id AS run_id, r.name AS run_name, i."index" AS iteration,
               s.position, s.layer, s.phase, s.title, s.formula, s.formula_values,
               s.reference, s.max_abs_diff, s.verified
        FROM steps s
        JOIN iterations i ON i.id = s.iteration_id
        JOIN runs r ON r.id = i.run_id
    """,
}

# PostgreSQL has no json_each: the same rows come from json_array_elements_text
# WITH ORDINALITY (1-based, hence the - 1), its text cast back to a number.
_POSTGRES_VIEWS = {
    "tensor_elements": """
        SELECT r.id AS run_id, i."index" AS iteration, t.id AS tensor_id, t.name,
               t.layer, t.role, CAST(e.ordinality - 1 AS INTEGER) AS flat_index,
               CAST(e.value AS DOUBLE PRECISION) AS value
        FROM tensors t
        JOIN tensor_data d ON d.tensor_id = t.id
        JOIN iterations i ON i.id = t.iteration_id
        JOIN runs r ON r.id = i.run_id
        CROSS JOIN LATERAL json_array_elements_text(CAST(d.elements AS JSON))
            WITH ORDINALITY AS e(value, ordinality)
        WHERE d.elements IS NOT NULL
    """,
}


def views(dialect: str) -> dict[str, str]:
    """The view bodies for a database dialect ("sqlite", "postgresql"), by view name."""
    return {**VIEWS, **_POSTGRES_VIEWS} if dialect == "postgresql" else dict(VIEWS)
