"""`cnnviz db upgrade`: bring a store to this cnnviz's schema with Alembic.

Readers and writers never migrate: they refuse an older store with one line that
names this command. Upgrading runs every step in one transaction (SQLite and
PostgreSQL both have transactional DDL), counts every table's rows and the tensor
bytes before and after, and commits only when they match and the schema check
passes; otherwise nothing changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, inspect, select, text

from . import schema
from .store import (
    StoreError,
    _check_sqlite_path,
    _create_schema,
    _make_engine,
    _one_line,
    _target,
    default_db,
    missing_schema_parts,
    stored_version,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


@dataclass
class UpgradeReport:
    location: str
    from_version: int | None  # None: the database was empty and got the schema
    to_version: int
    rows: dict[str, int]  # rows per table, the same before and after

    def line(self) -> str:
        kept = (
            f"{self.rows.get('runs', 0)} runs, {self.rows.get('iterations', 0)} iterations, "
            f"{self.rows.get('tensors', 0)} tensors"
        )
        if self.from_version is None:
            return f"{self.location}: created the store schema (version {self.to_version})"
        if self.from_version == self.to_version:
            return f"{self.location} is at store schema version {self.to_version}: nothing to do ({kept})"
        return (
            f"upgraded {self.location} from store schema version {self.from_version} "
            f"to {self.to_version}; kept {kept}"
        )


def alembic_config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    config = alembic_config(None)
    return ScriptDirectory.from_config(config).get_current_head()


def _counts(connection) -> dict[str, int]:
    """Rows per table (of those the database has: a revision may add tables) and bytes."""
    present = set(inspect(connection).get_table_names())
    counts = {
        table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
        for table in schema.Base.metadata.sorted_tables
        if table.name in present
    }
    data = schema.TensorData.__table__.c.data
    counts["tensor bytes"] = int(
        connection.execute(select(func.coalesce(func.sum(func.length(data)), 0))).scalar_one()
    )
    return counts


def upgrade(location: str | os.PathLike | None = None) -> UpgradeReport:
    """Upgrade the store at `location` to the head revision (StoreError: one line)."""
    from alembic import command

    location = str(location) if location is not None else default_db()
    target = _target(location)
    if target.path is not None:
        _check_sqlite_path(target.path, create=False)
    # Foreign keys off on SQLite: batch mode copies a table and drops the original,
    # which would otherwise cascade into every row that refers to it.
    engine = _make_engine(target, readonly=False, foreign_keys=False)
    try:
        with engine.begin() as connection:
            tables = set(inspect(connection).get_table_names())
            if "meta" not in tables:
                if tables:
                    raise StoreError(f"{location} is a database but not a cnnviz run store")
                _create_schema(connection)
                return UpgradeReport(location, None, schema.SCHEMA_VERSION, {})
            version = stored_version(connection, location)
            before = _counts(connection)
            config = alembic_config(connection)
            if schema.VERSION_TABLE not in tables:
                # Version 1 stores predate Alembic: they are exactly revision 0001.
                command.stamp(config, f"{version:04d}")
            command.upgrade(config, "head")
            after = _counts(connection)
            changed = [k for k in after if before.get(k, 0) != after[k]]
            if changed:
                raise StoreError(
                    f"upgrading {location} would change {', '.join(changed)}: rolled back"
                )
            missing = missing_schema_parts(connection)
            if missing:
                raise StoreError(f"upgrading {location} left {missing[0]} missing: rolled back")
            if connection.dialect.name == "sqlite":
                problems = connection.execute(text("PRAGMA foreign_key_check")).all()
                if problems:
                    raise StoreError(
                        f"upgrading {location} broke {len(problems)} references: rolled back"
                    )
        return UpgradeReport(location, version, schema.SCHEMA_VERSION, after)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot upgrade {location}: {_one_line(exc)}") from exc
    finally:
        engine.dispose()
