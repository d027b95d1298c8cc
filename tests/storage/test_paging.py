"""A page of runs and a window of a tensor, read from a real SQLite file."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from storage import (
    RUN_COMPLETED,
    RUN_FAILED,
    IterationRecord,
    RunInfo,
    RunQuery,
    RunStore,
    RunWriter,
    StepRecord,
    TensorRecord,
    open_engine,
)


def _run(engine, name, seed, model, day, *, status=RUN_COMPLETED, loss=None, lr=0.1):
    info = RunInfo(
        name=name,
        seed=seed,
        model_name=model,
        optimizer="SGD",
        optimizer_settings={"lr": lr},
        loss_name="CrossEntropyLoss",
        started_at=dt.datetime(2026, 11, day, 12, 0),
    )
    writer = RunWriter.begin(engine, info)
    if loss is not None:
        writer.add_iteration(
            IterationRecord(
                index=1,
                loss=loss,
                tensors=[TensorRecord("x", "input", np.zeros(1, np.float32))],
                steps=[],
            )
        )
    writer.finish(status)
    return writer.run_id


@pytest.fixture
def many_runs(db_path):
    engine = open_engine(db_path)
    for i in range(30):
        _run(
            engine,
            f"run_{i}" if i % 2 else f"Run%{i}",
            seed=i % 5,
            model="lenet5" if i % 3 == 0 else "seed-cnn",
            day=1 + i % 10,
            status=RUN_FAILED if i == 7 else RUN_COMPLETED,
            loss=None if i % 4 == 0 else float(30 - i),
        )
    engine.dispose()
    with RunStore(db_path) as store:
        yield store


def test_pages_cover_every_run_once_in_order(many_runs):
    seen = []
    for offset in range(0, 30, 7):
        page = many_runs.run_page(RunQuery(offset=offset, limit=7))
        assert page.total == 30
        seen += [r.id for r in page.runs]
    assert seen == list(range(1, 31))


def test_sort_descending_puts_missing_values_last(many_runs):
    page = many_runs.run_page(RunQuery(sort="loss", descending=True, limit=100))
    losses = [r.final_loss for r in page.runs]
    present = [v for v in losses if v is not None]
    assert present == sorted(present, reverse=True)
    assert losses[len(present) :] == [None] * (30 - len(present))
    ascending = many_runs.run_page(RunQuery(sort="loss", limit=100))
    assert [r.final_loss for r in ascending.runs][: len(present)] == sorted(present)


def test_filters_combine(many_runs):
    every = many_runs.list_runs()
    page = many_runs.run_page(RunQuery(model="lenet5", seed=0, limit=100))
    expected = [r.id for r in every if r.model_name == "lenet5" and r.seed == 0]
    assert [r.id for r in page.runs] == expected and page.total == len(expected)
    failed = many_runs.run_page(RunQuery(status=RUN_FAILED))
    assert [r.id for r in failed.runs] == [8]
    assert failed.statuses == [RUN_COMPLETED, RUN_FAILED]
    assert failed.models == ["lenet5", "seed-cnn"]


def test_name_filter_is_a_substring_not_a_pattern(many_runs):
    page = many_runs.run_page(RunQuery(name="N%1", limit=100))  # case-insensitive, % literal
    assert sorted(r.name for r in page.runs) == sorted(
        r.name for r in many_runs.list_runs() if "n%1" in r.name.lower()
    )
    assert page.total > 0
    assert many_runs.run_page(RunQuery(name="_")).total == 15  # only the names with "_"


def test_date_bounds_are_whole_days(many_runs):
    page = many_runs.run_page(
        RunQuery(started_from=dt.date(2026, 11, 3), started_to=dt.date(2026, 11, 4), limit=100)
    )
    assert {r.started_at.day for r in page.runs} == {3, 4}
    assert page.total == 6


def _tensor_store(db_path, tensors):
    engine = open_engine(db_path)
    writer = RunWriter.begin(engine, RunInfo(name="t", model_name="m"))
    writer.add_iteration(
        IterationRecord(
            index=1,
            loss=0.0,
            tensors=tensors,
            steps=[StepRecord("l", "forward", "t", "f", "v", outputs=[tensors[0].name])],
        )
    )
    writer.finish()
    engine.dispose()
    return RunStore(db_path)


@pytest.mark.parametrize(
    "shape, dtype",
    [((7, 3, 50, 70), np.float32), ((120, 400), np.float64), ((300,), np.int64), ((), np.float32)],
)
def test_a_window_reads_exactly_those_elements(db_path, shape, dtype):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    with _tensor_store(db_path, [TensorRecord("a", "activation", array)]) as store:
        full = store.load_tensor(1, 1, "a").array
        planes = full.reshape(-1, *(full.shape[-2:] if full.ndim >= 2 else (full.size, 1)))
        for lead, row0, col0 in [((), 0, 0), ((5, 2), 40, 30), ((1, 1), 100, 100)]:
            window = store.tensor_window(1, 1, "a", lead=lead, row0=row0, col0=col0)
            rows, cols = window.values.shape
            assert window.stored.all()
            if len(shape) == 4:
                plane = full[window.lead]
            elif len(shape) == 2:
                plane = full
            else:
                plane = planes[0]
            expected = plane[
                window.row0 : window.row0 + rows, window.col0 : window.col0 + cols
            ].astype(np.float64)
            np.testing.assert_array_equal(window.values, expected)
            assert window.row0 + rows <= window.plane[0] and window.col0 + cols <= window.plane[1]
            assert window.tensor.summary["max"] == pytest.approx(float(array.max()))


def test_a_window_is_clamped_into_the_plane(db_path):
    array = np.arange(120 * 400, dtype=np.float32).reshape(120, 400)
    with _tensor_store(db_path, [TensorRecord("w", "param", array)]) as store:
        window = store.tensor_window(1, 1, "w", row0=100, col0=390, rows=64, cols=64)
        assert (window.row0, window.col0) == (56, 336)  # the last 64 rows and columns
        np.testing.assert_array_equal(window.values, array[56:120, 336:400])
        assert store.tensor_window(1, 1, "nope") is None
        assert store.tensor_window(1, 2, "w") is None


def test_a_truncated_tensor_reads_missing_elements_as_not_stored(db_path):
    full = np.arange(4 * 10, dtype=np.float32).reshape(4, 10)
    record = TensorRecord("big", "activation", full.ravel()[:25], shape=(4, 10))
    with _tensor_store(db_path, [record]) as store:
        window = store.tensor_window(1, 1, "big", rows=4, cols=10)
        assert window.stored.sum() == 25
        np.testing.assert_array_equal(window.values[window.stored], full.ravel()[:25])
        assert np.isnan(window.values[~window.stored]).all()


def test_a_new_model_appears_in_the_filter_list(db_path):
    engine = open_engine(db_path)
    _run(engine, "a", 0, "lenet5", 1)
    with RunStore(db_path) as store:
        assert store.run_page(RunQuery()).models == ["lenet5"]
        _run(engine, "b", 0, "resnet18", 2)  # written while the reader is open
        assert store.run_page(RunQuery()).models == ["lenet5", "resnet18"]
    engine.dispose()


def test_picker_search_matches_name_model_id_or_seed(many_runs):
    def found(text, limit=50):
        return [r.id for r in many_runs.find_runs(RunQuery(text=text, limit=limit))]

    assert found("RUN_1") == [2, 12, 14, 16, 18, 20]  # run_1, run_11, run_13 ... (_ literal)
    assert found("%") == [i for i in range(1, 31) if i % 2]  # "Run%0", "Run%2" ...: literal %
    assert found("lenet") == [i for i in range(1, 31) if (i - 1) % 3 == 0]
    # digits: the id, a seed, or the digits in a name
    assert 3 in found("3") and {r.seed for r in many_runs.find_runs(RunQuery(text="4"))} >= {4}
    assert found("3", limit=2) == found("3")[:2]
    assert found("no such run") == []


def test_an_iteration_without_bytes_and_its_history(db_path):
    engine = open_engine(db_path)
    writer = RunWriter.begin(engine, RunInfo(name="r", model_name="m"))
    arrays = {}
    for index in (1, 2, 5):  # not every iteration is stored
        w = np.arange(12, dtype=np.float32).reshape(3, 4) * index
        arrays[index] = w
        tensors = [
            TensorRecord("fc.weight", "param", w, layer="fc"),
            TensorRecord("fc.weight.grad", "param_grad", -w, layer="fc"),
            TensorRecord("fc.out", "activation", w[:1], layer="fc"),
        ]
        writer.add_iteration(IterationRecord(index, 1.0 / index, tensors, []))
    writer.finish()
    engine.dispose()
    with RunStore(db_path) as store:
        assert store.iteration_indices(1) == [1, 2, 5]
        assert store.iteration_indices(99) == []
        records = store.tensor_records(1, 5)
        assert [t.name for t in records] == ["fc.weight", "fc.weight.grad", "fc.out"]
        weight = records[0]
        assert weight.shape == (3, 4) and weight.array.size == 0 and weight.array.dtype == "<f4"
        assert weight.summary["max"] == 55.0 and weight.stored_numel == 12
        assert store.tensor_records(1, 3) is None
        history = store.summary_history([1], ["param", "param_grad"])
        assert [(run, it, name) for run, it, name, _, _ in history] == [
            (1, i, n) for i in (1, 2, 5) for n in ("fc.weight", "fc.weight.grad")
        ]
        expected = [float(np.linalg.norm(arrays[i].astype(np.float64))) for i in (1, 2, 5)]
        np.testing.assert_allclose([row[4] for row in history[::2]], expected, rtol=1e-6)
        assert store.loss_history([1, 2]) == [(1, 1, 1.0), (1, 2, 0.5), (1, 5, 0.2)]
