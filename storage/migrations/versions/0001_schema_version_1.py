"""The store as cnnviz 0.1.0 wrote it: store schema version 1.

Stores of that age carry no version table; `cnnviz db upgrade` recognises them by
`meta.schema_version = 1` and stamps them with this revision before upgrading.
Nothing to do here: every later revision starts from that schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
