"""examples/trace_my_model.py (the README's "Trace your own model") runs as a user
would run it, in its own process, and stores a verified trace of every layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from storage import RunStore

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "trace_my_model.py"


def test_the_example_traces_every_layer(tmp_path, cli_env):
    db = tmp_path / "mine.db"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), str(db)],
        cwd=tmp_path,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr  # every layer is explained
    lines = result.stdout.splitlines()
    assert lines[-1] == f"run 1 stored in {db}"
    losses = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("iteration ")]
    assert len(losses) == 5 and losses[-1] < losses[0]

    with RunStore(db) as store:
        (run,) = store.list_runs()
        info = store.get_run(run.id)
        summaries = store.iterations(run.id)
        record = store.load_iteration(run.id, 5)
    assert (info.name, info.status, info.num_iterations) == ("tiny-resnet", "completed", 5)
    assert info.optimizer == "SGD" and info.optimizer_settings["momentum"] == 0.9
    assert [round(s.loss, 4) for s in summaries] == losses
    layers = [(layer.name, layer.type) for layer in info.layers]
    assert layers == [
        ("stem", "Conv2d"),
        ("relu", "ReLU"),
        ("block.0", "Conv2d"),
        ("block.1", "ReLU"),
        ("block.2", "Conv2d"),
        ("add", "Add"),
        ("relu#2", "ReLU"),
        ("max_pool2d", "MaxPool2d"),
        ("flatten", "Flatten"),
        ("head", "Linear"),
        ("loss", "CrossEntropyLoss"),
    ]
    assert all(layer.explained for layer in info.layers)
    checked = [s for s in record.steps if s.verified is not None]
    assert checked and all(s.verified for s in checked)
    assert {s.phase for s in record.steps} == {"forward", "backward", "update"}
    assert record.warnings == []
    names = {t.name for t in record.tensors}
    assert {"input", "input.grad", "add.out.grad", "block.1.out", "head.weight.next"} <= names
    assert record.tensor("stem.X_col").truncated  # bounded by max_elements=5000 ...
    assert record.tensor("stem.X_col").shape == (32 * 8 * 8, 9)  # ... with its full shape kept
