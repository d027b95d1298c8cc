"""The run store on real SQLite files: round trips, opening bad files, views."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest
from sqlalchemy.exc import OperationalError

from storage import (
    SCHEMA_VERSION,
    IterationRecord,
    LayerInfo,
    RunInfo,
    RunStore,
    RunWriter,
    StepRecord,
    StoreError,
    TensorRecord,
    codec,
    open_engine,
)


def _write_run(path, name="r", tensors=None, steps=None):
    engine = open_engine(path)
    writer = RunWriter.begin(
        engine, RunInfo(name=name, seed=7, optimizer="SGD", optimizer_settings={"lr": 0.5})
    )
    writer.set_layers(
        [LayerInfo(0, "fc", "Linear", (1, 3), (1, 2), 8, "fully connected", "z = Wx + b")]
    )
    tensors = (
        tensors
        if tensors is not None
        else [
            TensorRecord(
                "fc.weight", "param", np.arange(6, dtype=np.float32).reshape(2, 3), layer="fc"
            ),
            TensorRecord("target", "target", np.array([1], dtype=np.int64)),
        ]
    )
    steps = (
        steps
        if steps is not None
        else [
            StepRecord(
                "fc",
                "forward",
                "Linear",
                "z = Wx",
                "z = 1",
                inputs=["fc.weight"],
                outputs=["fc.weight"],
                reference="PyTorch",
                max_abs_diff=1e-8,
                verified=True,
            )
        ]
    )
    writer.add_iteration(
        IterationRecord(index=1, loss=0.25, tensors=tensors, steps=steps, learning_rate=0.5)
    )
    writer.finish()
    engine.dispose()
    return writer.run_id


def test_round_trip_is_lossless(db_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "i64": np.array([[1, -2], [3, 4]], dtype=np.int64),
        "bool": np.array([True, False, True]),
        "big_endian": np.arange(4, dtype=">f4"),
        "scalar": np.array(3.5, dtype=np.float32),
        "special": np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32),
    }
    run_id = _write_run(
        db_path, tensors=[TensorRecord(k, "intermediate", v) for k, v in arrays.items()], steps=[]
    )
    with RunStore(db_path) as store:
        record = store.load_iteration(run_id, 1)
    for name, array in arrays.items():
        stored = record.tensor(name).array
        assert stored.shape == array.shape
        np.testing.assert_array_equal(stored, array.astype(array.dtype.newbyteorder("<")))
        assert stored.dtype.byteorder in ("<", "=", "|")
    special = record.tensor("special").summary
    assert special["nan_count"] == 1 and special["inf_count"] == 2
    assert special["min"] == special["max"] == 1.0


def test_summary_columns_and_json_copy_are_readable_from_sql(db_path):
    weight = np.array([[1.0, -2.0], [3.0, 0.5]], dtype=np.float32)
    _write_run(db_path, tensors=[TensorRecord("fc.weight", "param", weight, layer="fc")], steps=[])
    with sqlite3.connect(db_path) as conn:
        row = conn.execute("SELECT min, max, mean, l2, numel, shape, dtype FROM tensors").fetchone()
        values = [
            v
            for (v,) in conn.execute(
                "SELECT value FROM tensor_elements WHERE name = 'fc.weight' ORDER BY flat_index"
            )
        ]
    assert row[:2] == (-2.0, 3.0)
    assert row[2] == pytest.approx(weight.mean())
    assert row[3] == pytest.approx(np.linalg.norm(weight))
    assert row[4:] == (4, "[2, 2]", "<f4")
    assert values == weight.ravel().tolist()


def test_large_tensors_have_no_json_copy(db_path):
    big = np.zeros(codec.JSON_COPY_MAX_NUMEL + 1, dtype=np.float32)
    _write_run(db_path, tensors=[TensorRecord("big", "intermediate", big)], steps=[])
    with sqlite3.connect(db_path) as conn:
        assert conn.execute(
            "SELECT elements IS NULL, length(data) FROM tensor_data"
        ).fetchone() == (1, big.nbytes)


def test_readers_see_runs_layers_and_steps(db_path):
    run_id = _write_run(db_path, name="<img src=x onerror=alert(1)>")
    with RunStore(db_path) as store:
        (run,) = store.list_runs()
        assert run.name == "<img src=x onerror=alert(1)>"
        assert run.status == "completed" and run.num_iterations == 1 and run.final_loss == 0.25
        assert run.learning_rate == 0.5
        full = store.get_run(run_id)
        assert [layer.name for layer in full.layers] == ["fc"]
        assert full.model_description.splitlines()[1] == "fc: Linear (1, 3) -> (1, 2), 8 params"
        assert full.layers[0].input_shape == (1, 3)
        (summary,) = store.iterations(run_id)
        assert (summary.index, summary.num_steps, summary.num_checked, summary.num_verified) == (
            1,
            1,
            1,
            1,
        )
        step = store.load_iteration(run_id, 1).steps[0]
        assert step.inputs == ["fc.weight"] and step.verified is True
        assert store.load_iteration(run_id, 2) is None
        assert store.get_run(999) is None
        assert store.integrity_check() == "ok"


def test_reader_never_writes(db_path):
    _write_run(db_path)
    before = db_path.read_bytes()
    with RunStore(db_path, readonly=True) as store:
        store.list_runs()
        with pytest.raises(OperationalError, match="readonly"):
            with store.engine.begin() as conn:
                conn.exec_driver_sql("DELETE FROM runs")
    assert db_path.read_bytes() == before


def test_missing_store_is_an_error_for_readers(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        RunStore(tmp_path / "nope.db")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is a text file, not a database\n" * 4, "is not a SQLite database"),
        (b"SQLite format 3\x00" + b"\xff" * 200, "cannot open"),
    ],
)
def test_bad_files_give_one_line_errors_and_stay_unchanged(tmp_path, content, message):
    path = tmp_path / "bad.db"
    path.write_bytes(content)
    for readonly in (True, False):
        with pytest.raises(StoreError, match=message) as info:
            open_engine(path, readonly=readonly)
        assert "\n" not in str(info.value)
    assert path.read_bytes() == content


def test_corrupt_store_is_reported(tmp_path, db_path):
    _write_run(db_path)
    broken = tmp_path / "broken.db"
    data = bytearray(db_path.read_bytes())
    data[100:4096] = b"\x00" * (4096 - 100)  # wipe the schema page
    broken.write_bytes(bytes(data))
    with pytest.raises(StoreError) as info:
        with RunStore(broken) as store:
            store.list_runs()
    assert "\n" not in str(info.value)
    assert broken.read_bytes() == bytes(data)


def test_newer_schema_version_is_refused_and_left_alone(db_path):
    _write_run(db_path)
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    before = db_path.read_bytes()
    for readonly in (True, False):
        with pytest.raises(StoreError, match="upgrade cnnviz"):
            open_engine(db_path, readonly=readonly)
    assert db_path.read_bytes() == before


def test_foreign_sqlite_file_is_not_taken_over(db_path):
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    with pytest.raises(StoreError, match="not a cnnviz run store"):
        open_engine(db_path)
    with sqlite3.connect(db_path) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["notes"]


def test_directory_and_unwritable_locations(tmp_path):
    with pytest.raises(StoreError, match="is a directory"):
        open_engine(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        open_engine(blocker / "runs.db")


def test_empty_file_becomes_a_store(db_path):
    db_path.touch()
    engine = open_engine(db_path)
    engine.dispose()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_foreign_keys_are_enforced(db_path):
    _write_run(db_path)
    engine = open_engine(db_path)
    with pytest.raises(Exception, match="FOREIGN KEY"):
        with engine.begin() as conn:
            conn.exec_driver_sql(
                'INSERT INTO iterations (run_id, "index", loss, warnings, created_at) '
                "VALUES (999, 1, 0.0, '[]', '2026-01-01')"
            )
    engine.dispose()


def test_copied_store_opens(tmp_path, db_path):
    _write_run(db_path)
    copy = tmp_path / "copy.db"
    shutil.copy(db_path, copy)
    with RunStore(copy) as store:
        assert len(store.list_runs()) == 1


def test_sqlalchemy_url_is_accepted(tmp_path):
    url = f"sqlite:///{tmp_path / 'url.db'}"
    run_id = _write_run(url)
    with RunStore(url) as store:
        assert store.get_run(run_id).name == "r"


def test_a_diverged_iteration_is_stored_with_a_null_loss(db_path):
    engine = open_engine(db_path)
    writer = RunWriter.begin(engine, RunInfo(name="diverged"))
    writer.add_iteration(IterationRecord(index=1, loss=float("nan"), tensors=[], steps=[]))
    writer.finish()
    engine.dispose()
    with RunStore(db_path) as store:
        (summary,) = store.iterations(writer.run_id)
        assert np.isnan(summary.loss) and np.isnan(store.load_iteration(writer.run_id, 1).loss)
        assert store.get_run(writer.run_id).final_loss is None
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT loss FROM iterations").fetchone() == (None,)


def test_truncated_tensors_keep_full_shape_and_summary_but_no_json_copy(db_path):
    full = np.arange(100, dtype=np.float32).reshape(10, 10)
    record = TensorRecord(
        "t",
        "activation",
        full.reshape(-1)[:20].copy(),
        shape=(10, 10),
        summary=codec.summarize(full),
    )
    run_id = _write_run(db_path, tensors=[record], steps=[])
    with RunStore(db_path) as store:
        stored = store.load_tensor(run_id, 1, "t")
    assert stored.shape == (10, 10) and stored.truncated
    np.testing.assert_array_equal(stored.array, full.reshape(-1)[:20])
    assert stored.summary["max"] == 99.0 and stored.summary["mean"] == pytest.approx(49.5)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT numel, stored_numel FROM tensors").fetchone() == (100, 20)
        assert conn.execute("SELECT elements FROM tensor_data").fetchone() == (None,)
