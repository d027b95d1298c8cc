"""64-bit keys and element counts on PostgreSQL.

PostgreSQL's INTEGER is 32-bit: a team store that passes 2^31 tensors (or steps,
or links) could take no more. Every primary key and every foreign key becomes
BIGINT, their sequences `AS bigint`, and so do the counts that can pass 2^31
(`tensors.numel`, `stored_numel`, `nan_count`, `inf_count`, `layers.num_params`).
Each table is rewritten once (one ALTER TABLE per table), which takes time in
proportion to its size; the values are unchanged.

SQLite's INTEGER is 64-bit already: there only `meta.schema_version` becomes 3.

Views are dropped first and made again at the end: PostgreSQL refuses to change
the type of a column a view reads.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from storage import schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Every column widened, by table; the tables with a serial `id` come first in each.
WIDENED = {
    "runs": ("id",),
    "layers": ("id", "run_id", "num_params"),
    "iterations": ("id", "run_id"),
    "tensors": ("id", "iteration_id", "numel", "stored_numel", "nan_count", "inf_count"),
    "tensor_data": ("tensor_id",),
    "steps": ("id", "iteration_id"),
    "step_tensors": ("step_id", "tensor_id"),
}


def _set_version(version: int) -> None:
    op.execute(
        sa.text("UPDATE meta SET value = :v WHERE key = 'schema_version'").bindparams(
            v=str(version)
        )
    )


def _retype(type_name: str) -> None:
    bind = op.get_bind()
    for name in schema.VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for table, columns in WIDENED.items():
        changes = ", ".join(f'ALTER COLUMN "{c}" TYPE {type_name}' for c in columns)
        op.execute(f"ALTER TABLE {table} {changes}")
        if "id" in columns:
            sequence = bind.execute(
                sa.text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table}
            ).scalar()
            if sequence is not None:
                op.execute(f"ALTER SEQUENCE {sequence} AS {type_name}")
    for name, body in schema.views(bind.dialect.name).items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _retype("BIGINT")
    _set_version(3)


def downgrade() -> None:
    # Fails (and rolls back) on PostgreSQL when a value no longer fits 32 bits.
    if op.get_bind().dialect.name == "postgresql":
        _retype("INTEGER")
    _set_version(2)
