"""Explain later: the raw truth of iterations traced with explanation off.

- `captures`: one row per unexplained iteration, its capture manifest as JSON text
  (the calls in order with their module specs, the optimizer's spec, and where each
  captured array is stored).
- `capture_arrays`: the captured arrays that `tensors` does not hold whole (tensors
  a storage bound truncated, optimizer state before the step, module buffers).
- `meta.schema_version` becomes 4.

Runs traced with explanation off before this revision have no manifest: `cnnviz
explain` says so and leaves them as they are. No view reads these tables.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

# BIGINT on PostgreSQL, as every key since 0003; SQLite's INTEGER is 64-bit already.
BigKey = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _set_version(version: int) -> None:
    op.execute(
        sa.text("UPDATE meta SET value = :v WHERE key = 'schema_version'").bindparams(
            v=str(version)
        )
    )


def upgrade() -> None:
    op.create_table(
        "captures",
        sa.Column(
            "iteration_id",
            BigKey,
            sa.ForeignKey(
                "iterations.id",
                ondelete="CASCADE",
                name="fk_captures_iteration_id_iterations",
            ),
            nullable=False,
        ),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("iteration_id", name="pk_captures"),
    )
    op.create_table(
        "capture_arrays",
        sa.Column(
            "iteration_id",
            BigKey,
            sa.ForeignKey(
                "iterations.id",
                ondelete="CASCADE",
                name="fk_capture_arrays_iteration_id_iterations",
            ),
            nullable=False,
        ),
        sa.Column("key", sa.String(40), nullable=False),
        sa.Column("dtype", sa.String(20), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("iteration_id", "key", name="pk_capture_arrays"),
    )
    _set_version(4)


def downgrade() -> None:
    op.drop_table("capture_arrays")
    op.drop_table("captures")
    _set_version(3)
