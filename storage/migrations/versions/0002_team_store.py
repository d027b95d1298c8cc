"""Team store: 64-bit seeds, the writer's liveness, and divergence on the run.

- `runs.seed` becomes BIGINT (PostgreSQL's INTEGER is 32-bit; seeds go to 2^32 - 1).
- `runs.writer_host`, `runs.writer_pid`, `runs.heartbeat_at`: who writes a run and
  when it last wrote, so readers can tell a live run from one whose writer died.
  Backfilled from `config` (host, pid) and the last iteration's `created_at`.
- `runs.divergence`: "NaN at iteration k" for the first iteration whose loss was
  not finite. Backfilled from `iterations.loss` (NULL there means NaN).
- `meta.schema_version` becomes 2.

Views are dropped first and made again at the end: SQLite's batch mode copies
tables, which views over them would not survive.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import json
import math

import sqlalchemy as sa
from alembic import op

from storage import schema

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = ("writer_host", "writer_pid", "heartbeat_at", "divergence")


def _drop_views() -> None:
    for name in schema.VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")


def _create_views() -> None:
    dialect = op.get_bind().dialect.name
    for name, body in schema.views(dialect).items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def _set_version(version: int) -> None:
    op.execute(
        sa.text("UPDATE meta SET value = :v WHERE key = 'schema_version'").bindparams(
            v=str(version)
        )
    )


def upgrade() -> None:
    bind = op.get_bind()
    _drop_views()
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("writer_host", sa.String(255), nullable=True))
        batch.add_column(sa.Column("writer_pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("divergence", sa.String(100), nullable=True))
    if bind.dialect.name != "sqlite":  # SQLite's INTEGER is 64-bit already
        op.alter_column("runs", "seed", type_=sa.BigInteger(), existing_nullable=True)

    runs = bind.execute(sa.text("SELECT id, config FROM runs")).all()
    for run_id, config in runs:
        config = json.loads(config) if isinstance(config, str) else (config or {})
        host, pid = config.get("host"), config.get("pid")
        bind.execute(
            sa.text(
                "UPDATE runs SET writer_host = :host, writer_pid = :pid, heartbeat_at = "
                "(SELECT MAX(created_at) FROM iterations WHERE run_id = :id) WHERE id = :id"
            ),
            dict(
                host=str(host)[:255] if host is not None else None,
                pid=pid if isinstance(pid, int) and 0 < pid < 2**31 else None,
                id=run_id,
            ),
        )
    first: dict[int, str] = {}
    rows = bind.execute(
        sa.text('SELECT run_id, "index", loss FROM iterations ORDER BY run_id, "index"')
    )
    for run_id, index, loss in rows:
        if run_id not in first and (loss is None or not math.isfinite(loss)):
            kind = "NaN" if loss is None or math.isnan(loss) else ("inf" if loss > 0 else "-inf")
            first[run_id] = f"{kind} at iteration {index}"
    for run_id, divergence in first.items():
        bind.execute(
            sa.text("UPDATE runs SET divergence = :d WHERE id = :id"),
            dict(d=divergence, id=run_id),
        )
    _set_version(2)
    _create_views()


def downgrade() -> None:
    bind = op.get_bind()
    _drop_views()
    if bind.dialect.name != "sqlite":
        op.alter_column("runs", "seed", type_=sa.Integer(), existing_nullable=True)
    with op.batch_alter_table("runs") as batch:
        for name in _COLUMNS:
            batch.drop_column(name)
    _set_version(1)
    _create_views()
