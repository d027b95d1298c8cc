"""Alembic migrations of the run store, shipped inside the package (as MLflow and
Optuna ship theirs). Run them with `cnnviz db upgrade`; see `storage.migrate`."""
