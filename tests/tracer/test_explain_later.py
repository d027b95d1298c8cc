"""Explain later: a run traced with explanation off, explained afterwards by `cnnviz
explain` in another process from the stored raw truth alone, is the store an inline
trace writes, row by row; bad input changes nothing; an interrupted explain keeps
every iteration whole."""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from storage import Store
from tracer.capture import Capture
from tracer.capture.spec import ModuleSpec, OptimizerSpec
from tracer.cli import main
from tracer.explain import explain_run
from tracer.train import prepare, resolve, run_builtin

# (model, options): the seed CNN, LeNet-5 at its default bound (5000 elements: the
# batch of 8 inputs is truncated), BatchNorm + Dropout (running statistics carried
# from one iteration to the next), and Adam (its state before the step is raw truth).
RUNS = [
    ("seed-cnn", dict(iterations=2)),
    ("lenet5", dict(iterations=1, samples=8, batch_size=8)),
    ("small-cnn", dict(iterations=2, samples=16, batch_size=8)),
    ("seed-cnn", dict(iterations=2, optimizer="adam")),
]


def _dump(db: Path, run_id: int) -> dict:
    """Every stored row of one run that an explanation writes, without ids or times."""
    conn = sqlite3.connect(db)
    try:
        out = {
            "layers": conn.execute(
                "SELECT position, name, type, input_shape, output_shape, num_params, "
                "description, formula, explained FROM layers WHERE run_id = ? ORDER BY position",
                (run_id,),
            ).fetchall(),
            "run": conn.execute(
                "SELECT model_description, optimizer, optimizer_settings, num_iterations, "
                "final_loss, status FROM runs WHERE id = ?",
                (run_id,),
            ).fetchall(),
        }
        iterations = conn.execute(
            'SELECT id, "index", loss, accuracy, learning_rate, warnings FROM iterations '
            'WHERE run_id = ? ORDER BY "index"',
            (run_id,),
        ).fetchall()
        out["iterations"] = [row[1:] for row in iterations]
        for iteration_id, index, *_ in iterations:
            out[f"tensors {index}"] = conn.execute(
                "SELECT t.name, t.layer, t.role, t.dtype, t.shape, t.numel, t.stored_numel, "
                "t.min, t.max, t.mean, t.std, t.l2, t.nan_count, t.inf_count, d.data, "
                "d.elements FROM tensors t JOIN tensor_data d ON d.tensor_id = t.id "
                "WHERE t.iteration_id = ? ORDER BY t.id",
                (iteration_id,),
            ).fetchall()
            out[f"steps {index}"] = conn.execute(
                "SELECT position, layer, phase, title, formula, formula_values, reference, "
                "max_abs_diff, verified, note FROM steps WHERE iteration_id = ? "
                "ORDER BY position",
                (iteration_id,),
            ).fetchall()
            out[f"links {index}"] = conn.execute(
                "SELECT s.position, l.direction, l.position, t.name FROM step_tensors l "
                "JOIN steps s ON s.id = l.step_id JOIN tensors t ON t.id = l.tensor_id "
                "WHERE s.iteration_id = ? ORDER BY 1, 2, 3",
                (iteration_id,),
            ).fetchall()
            out[f"raw truth {index}"] = conn.execute(
                "SELECT (SELECT COUNT(*) FROM captures WHERE iteration_id = ?), "
                "(SELECT COUNT(*) FROM capture_arrays WHERE iteration_id = ?)",
                (iteration_id, iteration_id),
            ).fetchall()
    finally:
        conn.close()
    return out


def _assert_same(inline: dict, explained: dict) -> None:
    assert inline.keys() == explained.keys()
    for key in inline:
        assert len(inline[key]) == len(explained[key]), key
        for a, b in zip(inline[key], explained[key], strict=True):
            assert a == b, (key, str(a)[:200], str(b)[:200])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """The four runs traced inline into one store and with explanation off into another."""
    where = tmp_path_factory.mktemp("explain")
    for model, options in RUNS:
        run_builtin(model_name=model, seed=0, db=where / "inline.db", explain="inline", **options)
        run_builtin(model_name=model, seed=0, db=where / "off.db", explain="off", **options)
    return where


def test_explain_later_in_another_process_writes_what_inline_writes(traced, tmp_path, cli_env):
    off = tmp_path / "off.db"
    off.write_bytes((traced / "off.db").read_bytes())
    for run_id in range(1, len(RUNS) + 1):  # before: raw tensors and their raw truth
        dump = _dump(off, run_id)
        assert not any(explained for *_, explained in dump["layers"])
        for key, rows in dump.items():
            if key.startswith("raw truth"):
                assert rows[0][0] == 1  # one manifest per iteration
    # LeNet-5's bound keeps 5000 elements of the input: the full batch is raw truth.
    assert _dump(off, 2)["raw truth 1"][0][1] > 0
    # One other process explains every run, importing no model code: what it explains
    # comes from the store alone. The first run goes through the command line.
    script = (
        "import sys\n"
        "from tracer.cli import main\n"
        "from tracer.explain import explain_run\n"
        f"for run_id in range(2, {len(RUNS) + 1}):\n"
        f"    r = explain_run({str(off)!r}, run_id)\n"
        "    assert r.verified == r.checked > 0, r\n"
        "assert 'tracer.models' not in sys.modules and 'tracer.train' not in sys.modules\n"
        f"main(['explain', '1', '--db', {str(off)!r}])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=cli_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"run 1: explained 2 iterations in {off}; ")
    assert result.stdout.rstrip().endswith("checked steps match PyTorch")
    for run_id in range(1, len(RUNS) + 1):
        _assert_same(_dump(traced / "inline.db", run_id), _dump(off, run_id))
    with Store.open(off) as store:
        assert all(store.captured_indexes(r) == [] for r in range(1, len(RUNS) + 1))
        assert store.get_run(1).config["explained"]
        assert store.integrity_check() == "ok"


def _explain_cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", *args])
    return exit_info.value.code, capsys.readouterr().err


def test_bad_input_is_one_line_and_changes_nothing(traced, tmp_path, capsys):
    inline, off = tmp_path / "inline.db", tmp_path / "off.db"
    inline.write_bytes((traced / "inline.db").read_bytes())
    off.write_bytes((traced / "off.db").read_bytes())
    # An off run of an older cnnviz: no capture manifest (as `db upgrade` leaves it).
    with sqlite3.connect(off) as conn:
        conn.execute(
            "DELETE FROM captures WHERE iteration_id IN "
            "(SELECT id FROM iterations WHERE run_id = 4)"
        )
        conn.execute(
            "DELETE FROM capture_arrays WHERE iteration_id IN "
            "(SELECT id FROM iterations WHERE run_id = 4)"
        )
    conn.close()
    cases = [
        ((inline, "99"), "there is no run 99 in"),
        ((inline, "1"), "run 1 was traced with explanation on (inline): it is explained already"),
        ((off, "4"), "run 4 was traced with explanation off by an older cnnviz"),
        ((tmp_path / "none.db", "1"), "no store at"),
    ]
    for (db, run), expected in cases:
        before = _digest(db) if db.exists() else None
        code, err = _explain_cli(capsys, run, "--db", str(db))
        assert code == 2
        (line,) = err.splitlines()
        assert expected in line, line
        assert (_digest(db) if db.exists() else None) == before
    assert not (tmp_path / "none.db").exists()
    # Explained once, a second explain is refused.
    explain_run(str(off), 1)
    before = _digest(off)
    code, err = _explain_cli(capsys, "1", "--db", str(off))
    assert code == 2 and "run 1 is explained already" in err and len(err.splitlines()) == 1
    assert _digest(off) == before


def test_a_read_only_store_is_refused(traced, tmp_path, capsys):
    media = tmp_path / "media"
    media.mkdir()
    mounted = False
    if os.geteuid() == 0:  # root writes through file modes: use read-only media
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(media)],
                capture_output=True,
            ).returncode
            == 0
        )
        if not mounted:
            pytest.skip("needs to mount a filesystem (root)")
    try:
        store = media / "off.db"
        store.write_bytes((traced / "off.db").read_bytes())
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        else:
            store.chmod(0o444)
            media.chmod(0o555)
        before = _digest(store)
        code, err = _explain_cli(capsys, "1", "--db", str(store))
        assert code == 2 and len(err.splitlines()) == 1 and "not writable" in err, err
        assert _digest(store) == before
    finally:
        if mounted:
            subprocess.run(["umount", str(media)], check=False)
        else:
            media.chmod(0o755)


def test_a_killed_explain_keeps_every_iteration_whole(traced, tmp_path, cli_env):
    off = tmp_path / "off.db"
    off.write_bytes((traced / "off.db").read_bytes())
    # SIGKILL, in another process, once the first iteration's transaction committed.
    script = (
        "import os, signal\n"
        "from tracer.explain import explain_run\n"
        f"explain_run({str(off)!r}, 3, progress=lambda done, total: "
        "os.kill(os.getpid(), signal.SIGKILL))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=cli_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == -9, result.stderr
    with Store.open(off) as store:
        assert store.integrity_check() == "ok"
        assert store.captured_indexes(3) == [2]  # the first explained, the second still raw
        first, second = store.load_iteration(3, 1), store.load_iteration(3, 2)
        assert all(s.verified is not False for s in first.steps)
        assert any(s.verified for s in first.steps)
        assert all(s.verified is None for s in second.steps)
        assert "explained" not in store.get_run(3).config
    assert explain_run(str(off), 3).explained == 1
    _assert_same(_dump(traced / "inline.db", 3), _dump(off, 3))


def _plain(obj, path="cap", depth=0) -> None:
    """Walk a captured record: NumPy arrays, plain values, specs; never a torch object."""
    assert not isinstance(obj, (torch.Tensor, nn.Module, torch.optim.Optimizer)), path
    if depth > 8:
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            _plain(value, f"{path}[{key!r}]", depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _plain(value, f"{path}[{i}]", depth + 1)
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            _plain(getattr(obj, name), f"{path}.{name}", depth + 1)
    else:
        assert isinstance(obj, (np.ndarray, np.generic, str, int, float, bool, type(None))), (
            path,
            type(obj),
        )


def test_the_capture_record_is_plain_data():
    config = resolve(model_name="small-cnn", seed=0, iterations=1, samples=8, batch_size=4)
    model, optimizer, criterion, x, y = prepare(config)
    capture = Capture(model, optimizer, criterion).attach()
    try:
        capture.start()
        optimizer.zero_grad()
        criterion(model(x[:4]), y[:4]).backward()
        optimizer.step()
        cap = capture.finish()
    finally:
        capture.detach()
    _plain(cap)
    assert pickle.loads(pickle.dumps(cap)).calls[0].name == cap.calls[0].name
    bn = next(c.module for c in cap.calls if c.kind == "BatchNorm2d")
    assert isinstance(bn, ModuleSpec) and bn.type == "BatchNorm2d"
    assert (bn.eps, bn.momentum, bn.affine) == (1e-5, 0.1, True)
    assert set(bn.arrays) >= {"running_mean", "running_var"}
    dropout = next(c.module for c in cap.calls if c.kind == "Dropout")
    assert dropout.p == 0.25
    assert isinstance(cap.optimizer, OptimizerSpec) and cap.optimizer.type == "SGD"
    assert cap.optimizer.param_groups[0]["lr"] == config.lr


def test_a_module_with_no_explainer_is_named_and_never_imported():
    class Mystery(nn.Module):
        def forward(self, x):
            return x * 2

    model = nn.Sequential(nn.Linear(3, 3), Mystery())
    capture = Capture(model).attach()
    try:
        capture.start()
        model(torch.ones(2, 3)).sum().backward()
        cap = capture.finish()
    finally:
        capture.detach()
    spec = cap.calls[1].module
    assert spec.type is None and spec.cls == "Mystery" and spec.settings == {}
    # A spec that names an unregistered type, or one that exists in torch but has no
    # explainer, finds no explainer: nothing is looked up outside the registry.
    from tracer.explainers import explainer_for

    assert explainer_for(spec) is None
    assert explainer_for(ModuleSpec(type="os.system", lineage=("x",))) is None
    assert explainer_for(ModuleSpec(type="LSTM", lineage=("LSTM",))) is None
    assert explainer_for(ModuleSpec(type="Conv2d", lineage=("Conv2d",))) is not None


def test_explain_later_on_postgresql(pg_url, tmp_path):
    """The same on a PostgreSQL store: BYTEA raw truth, 64-bit keys, Core inserts."""
    options = dict(model_name="small-cnn", seed=0, iterations=2, samples=16, batch_size=8)
    run_builtin(db=tmp_path / "inline.db", explain="inline", **options)
    off = run_builtin(db=pg_url, explain="off", **options)
    with Store.open(pg_url) as store:
        assert store.captured_indexes(off.run_id) == [1, 2]
    result = explain_run(pg_url, off.run_id)
    assert result.explained == 2 and result.verified == result.checked > 0
    with Store.open(tmp_path / "inline.db") as a, Store.open(pg_url) as b:
        assert b.captured_indexes(off.run_id) == []
        layers = [(x.name, x.description, x.explained) for x in a.get_run(1).layers]
        assert layers == [
            (x.name, x.description, x.explained) for x in b.get_run(off.run_id).layers
        ]
        for index in (1, 2):
            left, right = a.load_iteration(1, index), b.load_iteration(off.run_id, index)
            assert (left.loss, left.warnings) == (right.loss, right.warnings)
            assert [t.name for t in left.tensors] == [t.name for t in right.tensors]
            for x, y in zip(left.tensors, right.tensors, strict=True):
                assert x.array.tobytes() == y.array.tobytes() and x.summary == y.summary
            steps = [
                (s.title, s.formula_values, s.reference, s.max_abs_diff, s.verified, s.note)
                for s in left.steps
            ]
            assert steps == [
                (s.title, s.formula_values, s.reference, s.max_abs_diff, s.verified, s.note)
                for s in right.steps
            ]
