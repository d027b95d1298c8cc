"""`cnnviz diverge` and storage.diverge on real traced runs.

The store holds the seed CNN traced from seed 0 three times (the third with one
weight nudged after a late iteration), once from seed 0 by one ulp, once from
seed 1, and once cut short. Every answer of the SQL search is checked against a
brute-force walk that loads every tensor of both runs in execution order.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from storage import RunStore
from storage.diverge import DivergeError, compare_arrays, first_divergence

ITERATIONS = 6
NUDGED_AFTER = 4  # the perturbation lands between iterations 4 and 5
NUDGE = 1e-3


def _trace(db, *, nudge=None, iterations=ITERATIONS, seed=0, name="run"):
    """The seed CNN through the public API; `nudge(model)` runs after iteration NUDGED_AFTER."""
    import torch

    from tracer.session import Trace
    from tracer.train import one_torch_thread, prepare, resolve, train

    config = resolve(model_name="seed-cnn", seed=seed, iterations=iterations)
    model, optimizer, criterion, x, y = prepare(config)
    done = []

    def after():
        done.append(1)
        if nudge is not None and len(done) == NUDGED_AFTER:
            with torch.no_grad():
                nudge(model)

    with one_torch_thread(), Trace(model, optimizer, criterion, db=db, name=name, seed=seed) as run:
        train(model, optimizer, criterion, x, y, config, run, after)
    return run.run_id


def _add(amount):
    def nudge(model):
        model.fc.weight[0, 0] += amount

    return nudge


def _one_ulp(model):
    w = model.fc.weight
    w[0, 0] = float(np.nextafter(np.float32(w[0, 0].item()), np.float32(np.inf)))


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("diverge") / "runs.db"
    ids = dict(
        base=_trace(path, name="base"),
        same=_trace(path, name="same"),
        nudged=_trace(path, nudge=_add(NUDGE), name="nudged"),
        ulp=_trace(path, nudge=_one_ulp, name="ulp"),
        seed1=_trace(path, seed=1, name="seed1"),
        short=_trace(path, iterations=NUDGED_AFTER, name="short"),
    )
    assert list(ids.values()) == [1, 2, 3, 4, 5, 6]
    return path


@pytest.fixture(scope="module")
def store(store_path):
    with RunStore(store_path) as store:
        yield store


def brute_force(store: RunStore, run_a: int, run_b: int, atol: float):
    """(iteration, tensor name) of the first difference, loading everything in Python."""
    for index in range(1, ITERATIONS + 1):
        rec_a = store.load_iteration(run_a, index)
        rec_b = store.load_iteration(run_b, index)
        if rec_a is None or rec_b is None:
            if rec_a is None and rec_b is None:
                return None
            return index, "(the whole iteration)"
        order: dict[str, float] = {}
        for step in rec_a.steps:
            for name in step.inputs:
                order.setdefault(name, 2 * step.position)
            for name in step.outputs:
                order.setdefault(name, 2 * step.position + 1)
        tensors_b = {t.name: t for t in rec_b.tensors}
        ranked = sorted(
            enumerate(rec_a.tensors), key=lambda it: order.get(it[1].name, 1e12 + it[0])
        )
        for _, ta in ranked:
            tb = tensors_b.get(ta.name)
            if tb is None or ta.array.shape != tb.array.shape:
                return index, ta.name
            a = ta.array.astype(np.float64)
            b = tb.array.astype(np.float64)
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            if atol == 0:
                if ta.array.tobytes() != tb.array.tobytes():
                    return index, ta.name
            elif (~same & ~(np.abs(a - b) <= atol)).any():
                return index, ta.name
    return None


def test_bitwise_identical_runs(store):
    report = first_divergence(store.engine, 1, 2)
    assert report.identical and report.divergence is None
    assert report.iterations == ITERATIONS and report.tensors > 40 * ITERATIONS
    assert report.summary() == (
        f"runs 1 and 2 are bitwise identical over {ITERATIONS} iterations ({report.tensors} tensors)"
    )
    assert brute_force(store, 1, 2, 0.0) is None


def test_late_perturbation_is_found_at_the_step_that_reads_it(store):
    report = first_divergence(store.engine, 1, 3)
    d = report.divergence
    # The nudge lands after iteration 4's update: iteration 5's first step that reads
    # fc.weight is the linear layer's forward step; everything before it is identical.
    assert (d.iteration, d.tensor, d.role, d.layer) == (
        NUDGED_AFTER + 1,
        "fc.weight",
        "param",
        "fc",
    )
    assert (d.step_layer, d.step_phase, d.step_title) == ("fc", "forward", "Linear layer")
    assert d.index == (0, 0) and d.differing == 1
    assert d.max_abs_diff == pytest.approx(NUDGE, rel=1e-3)
    assert d.value_b - d.value_a == pytest.approx(NUDGE, rel=1e-3)
    rec = store.load_iteration(1, NUDGED_AFTER + 1)
    step = next(s for s in rec.steps if s.position == d.step_position)
    assert "fc.weight" in step.inputs
    assert brute_force(store, 1, 3, 0.0) == (d.iteration, d.tensor)
    # The other way round, the same place.
    back = first_divergence(store.engine, 3, 1).divergence
    assert (back.iteration, back.tensor, back.index) == (d.iteration, d.tensor, d.index)


def test_one_ulp_is_a_bitwise_divergence_but_within_a_tolerance(store):
    bitwise = first_divergence(store.engine, 1, 4).divergence
    assert (bitwise.iteration, bitwise.tensor) == (NUDGED_AFTER + 1, "fc.weight")
    assert bitwise.max_abs_diff == pytest.approx(
        float(np.spacing(np.float32(bitwise.value_a))), rel=1e-6
    )
    loose = first_divergence(store.engine, 1, 4, atol=1e-4)
    assert loose.identical, loose.summary()
    assert loose.summary().startswith("runs 1 and 4 agree within atol 0.0001 over 6 iterations")
    assert brute_force(store, 1, 4, 1e-4) is None


@pytest.mark.parametrize("atol", [0.0, 1e-4, 0.05])
def test_sql_search_agrees_with_brute_force(store, atol):
    for run_a, run_b in ((1, 3), (3, 1), (1, 5), (5, 1), (3, 4)):
        report = first_divergence(store.engine, run_a, run_b, atol=atol)
        expected = brute_force(store, run_a, run_b, atol)
        got = None if report.identical else (report.divergence.iteration, report.divergence.tensor)
        assert got == expected, (run_a, run_b, atol, report.summary())
        if not report.identical and report.divergence.max_abs_diff is not None:
            assert report.divergence.max_abs_diff > atol


def test_a_run_cut_short_diverges_at_its_first_missing_iteration(store):
    report = first_divergence(store.engine, 1, 6)
    d = report.divergence
    assert (d.iteration, d.tensor, d.reason) == (
        NUDGED_AFTER + 1,
        "(the whole iteration)",
        "is stored in run A only",
    )
    assert report.iterations == NUDGED_AFTER
    assert "run A stores 6 iterations, run B 4" in report.notes


def test_bad_tolerance_is_refused(store):
    for atol in (-1.0, float("nan"), float("inf")):
        with pytest.raises(DivergeError):
            first_divergence(store.engine, 1, 2, atol=atol)


def test_compare_arrays_treats_nan_and_inf_as_values():
    a = np.array([1.0, np.nan, np.inf, 0.0], dtype=np.float32)
    assert compare_arrays(a, a.copy(), 0.0) is None
    b = a.copy()
    b[1] = 2.0
    result = compare_arrays(a, b, 10.0)
    assert result["max_abs_diff"] == np.inf and result["index"] == (1,)
    assert np.isnan(result["value_a"]) and result["value_b"] == 2.0


def _cli(args, env):
    return subprocess.run(
        [sys.executable, "-m", "tracer.cli", "diverge", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_cli_exit_status_and_one_line(store_path, cli_env):
    db = ["--db", str(store_path)]
    same = _cli(["1", "2", *db], cli_env)
    assert same.returncode == 0, same.stderr
    assert same.stdout.splitlines() == [same.stdout.strip()] and "bitwise identical" in same.stdout
    diverged = _cli(["1", "3", *db], cli_env)
    assert diverged.returncode == 1, diverged.stderr
    (line,) = diverged.stdout.splitlines()
    assert line.startswith(
        f"runs 1 and 3 first diverge at iteration {NUDGED_AFTER + 1}, step 6 (fc forward: Linear layer): "
        "fc.weight differs, max |B - A| 0.001 at [0, 0]"
    )
    unknown = _cli(["1", "99", *db], cli_env)
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.strip() == f"cnnviz diverge: error: there is no run 99 in {store_path}"


def _main(args, capsys) -> tuple[int, str, str]:
    """The same entry point in this process (cheaper than a process per argument check)."""
    from tracer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["diverge", *args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_cli_tolerance_and_bad_input(store_path, capsys):
    db = ["--db", str(store_path)]
    code, out, _ = _main(["1", "4", "--atol", "1e-4", *db], capsys)
    assert code == 0 and "agree within atol 0.0001" in out
    code, out, _ = _main(["1", "4", *db], capsys)
    assert code == 1 and "fc.weight differs" in out
    before = store_path.read_bytes()
    for args, message in (
        (["1", "2", "--atol", "-1"], "is not a number >= 0"),
        (["1", "2", "--atol", "nan"], "is not a number >= 0"),
        (["one", "2"], "'one' is not a valid integer"),
        (["1"], "Missing argument 'B'"),
        (["1", "2", "--db", str(store_path.parent / "none.db")], "no store at"),
    ):
        code, out, err = _main([*args, *db] if "--db" not in args else args, capsys)
        assert code == 2, (args, out, err)
        assert out == "" and len(err.splitlines()) == 1 and message in err
    assert store_path.read_bytes() == before


# ---------------------------------------------------------------- two stores


@pytest.fixture(scope="module")
def other_store(store_path, tmp_path_factory):
    """Another SQLite file: the same six runs copied (same ids), plus run 7, the seed-0
    run traced again into this file by its own process-less Trace, as a second machine would."""
    import shutil

    path = tmp_path_factory.mktemp("diverge_b") / "b.db"
    shutil.copyfile(store_path, path)
    assert _trace(path, name="elsewhere") == 7
    with RunStore(path) as other:
        yield other


def _key(report):
    d = report.divergence
    if d is None:
        return None
    return (d.iteration, d.tensor, d.reason, d.step_position, d.max_abs_diff, d.index, d.differing)


@pytest.mark.parametrize("atol", [0.0, 1e-4])
def test_two_stores_answer_as_one_store_does(store, other_store, atol):
    for run_a, run_b in ((1, 2), (1, 3), (3, 1), (1, 4), (1, 5), (1, 6), (6, 1)):
        one = first_divergence(store.engine, run_a, run_b, atol=atol)
        two = first_divergence(store.engine, run_a, run_b, atol=atol, engine_b=other_store.engine)
        assert _key(two) == _key(one), (run_a, run_b, atol, two.summary(), one.summary())
        assert (two.iterations, two.tensors) == (one.iterations, one.tensors)
    # Traced into its own file, the same seed is bitwise the same run.
    again = first_divergence(store.engine, 1, 7, engine_b=other_store.engine)
    assert again.identical, again.summary()


def test_cli_two_stores(store_path, other_store, capsys):
    b = str(other_store.location)
    args = ["--db", str(store_path), "--db-b", b]
    code, out, _ = _main(["1", "7", *args], capsys)
    assert code == 0
    assert out.strip() == (
        f"run 1 of {store_path} and run 7 of {b} are bitwise identical over "
        f"{ITERATIONS} iterations ({out.split('(')[1].split(')')[0]})"
    )
    code, out, _ = _main(["1", "3", *args], capsys)
    assert code == 1 and len(out.splitlines()) == 1
    assert out.startswith(f"run 1 of {store_path} and run 3 of {b} first diverge at iteration 5")
    for extra, message in (
        (["1", "99"], f"there is no run 99 in {b}"),
        (["1", "2", "--db-b", str(store_path.parent / "none.db")], "no store at"),
    ):
        argv = [*extra, "--db", str(store_path)]
        argv += [] if "--db-b" in extra else ["--db-b", b]
        code, out, err = _main(argv, capsys)
        assert code == 2 and out == "" and message in err and len(err.splitlines()) == 1


def test_a_postgresql_store_against_a_sqlite_file(store, pg_url):
    from storage.transfer import copy_run

    same, nudged = copy_run(store, 2, pg_url), copy_run(store, 3, pg_url)
    with RunStore(pg_url) as pg:
        identical = first_divergence(store.engine, 1, same, engine_b=pg.engine)
        assert identical.identical, identical.summary()
        found = first_divergence(store.engine, 1, nudged, engine_b=pg.engine)
        assert _key(found) == _key(first_divergence(store.engine, 1, 3))
        back = first_divergence(pg.engine, nudged, 1, engine_b=store.engine)
        assert _key(back) == _key(first_divergence(store.engine, 3, 1))
