"""Alembic environment: always on a connection handed over by `storage.migrate`.

The version table is `cnnviz_alembic_version`, not `alembic_version`: a team's
database may hold other tools' tables (MLflow and Optuna have collided on the
default name). SQLite gets batch mode for its limited ALTER TABLE.
"""

from alembic import context

from storage import schema

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=schema.Base.metadata,
    version_table=schema.VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
