"""Built-in models: their architecture and data, that the default settings train,
that tracing them changes no bit, and the `cnnviz trace` options that pick them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import cnnviz

from storage import RunStore
from tracer.models import BUILTIN_MODELS, LeNet5, SmallCNN, bar_blob_patterns, digit_glyphs
from tracer.train import resolve, run_builtin, train_untraced


def test_lenet5_has_the_papers_shapes():
    model = LeNet5()
    shapes = {}
    for name, module in model.named_children():
        module.register_forward_hook(
            lambda m, a, out, name=name: shapes.__setitem__(name, tuple(out.shape))
        )
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert shapes["conv1"] == (2, 6, 28, 28) and shapes["pool1"] == (2, 6, 14, 14)
    assert shapes["conv2"] == (2, 16, 10, 10) and shapes["pool2"] == (2, 16, 5, 5)
    assert shapes["fc1"] == (2, 120) and shapes["fc2"] == (2, 84)
    assert sum(p.numel() for p in model.parameters()) == 61706  # 156 + 2416 + 48120 + 10164 + 850


def test_small_cnn_has_batchnorm_and_dropout():
    model = SmallCNN()
    kinds = [type(m).__name__ for m in model.children()]
    assert kinds.count("BatchNorm2d") == 2 and "Dropout" in kinds
    assert model(torch.zeros(3, 3, 16, 16)).shape == (3, 4)


@pytest.mark.parametrize(
    "make, shape, classes",
    [
        (digit_glyphs, (1, 32, 32), 10),
        (bar_blob_patterns, (3, 16, 16), 4),
    ],
)
def test_data_is_deterministic_balanced_and_seed_dependent(make, shape, classes):
    x, y = make(40, 3)
    x2, y2 = make(40, 3)
    x3, _ = make(40, 4)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, x3)
    assert x.shape == (40, *shape) and y.dtype == torch.long
    assert np.bincount(y.numpy(), minlength=classes).tolist() == [40 // classes] * classes
    assert torch.isfinite(x).all()


def test_glyphs_draw_the_segments_of_their_digit():
    x, y = digit_glyphs(200, 0)
    # "8" lights every segment, "1" two of them: an 8 has far more ink than a 1.
    ink = {d: float(x[y == d].sum(dim=(1, 2, 3)).mean()) for d in (1, 8)}
    assert ink[8] > ink[1] + 100


@pytest.mark.parametrize("name", ["lenet5", "small-cnn"])
def test_the_default_settings_lower_the_loss(name):
    config = resolve(model_name=name)
    losses = train_untraced(config)
    assert len(losses) == config.iterations
    start, end = np.mean(losses[:5]), np.mean(losses[-10:])
    assert end < start - 0.5, (start, end)


@pytest.mark.parametrize(
    "name, options, strict",
    [
        ("seed-cnn", dict(samples=3, batch_size=2, epochs=2), True),
        ("lenet5", dict(samples=12, batch_size=6, iterations=3, max_elements=256), True),
        ("lenet5", dict(samples=8, iterations=2, optimizer="adam", max_elements=64), True),
        (
            "small-cnn",
            dict(
                samples=12,
                batch_size=6,
                iterations=3,
                optimizer="momentum",
                weight_decay=1e-3,
                max_elements=256,
            ),
            True,
        ),
    ],
)
def test_tracing_a_builtin_model_changes_no_bit(db_path, name, options, strict):
    plain = train_untraced(resolve(model_name=name, seed=1, **options))
    run = run_builtin(model_name=name, seed=1, db=db_path, strict=strict, **options)
    assert run.losses == plain  # floats compared exactly
    with RunStore(db_path) as store:
        records = [store.load_iteration(run.run_id, s.index) for s in store.iterations(run.run_id)]
        info = store.get_run(run.run_id)
    assert len(records) == len(plain)
    assert all(layer.explained for layer in info.layers), [
        x.name for x in info.layers if not x.explained
    ]
    for record in records:
        checked = [s for s in record.steps if s.verified is not None]
        assert checked and all(s.verified for s in checked)
        assert record.warnings == []
    assert info.config["optimizer"] == options.get("optimizer", "sgd")


def test_cli_trace_lenet5_and_models_listing(tmp_path):
    db = tmp_path / "runs.db"
    result = cnnviz(
        "trace",
        "--model",
        "lenet5",
        "--db",
        db,
        "--samples",
        "8",
        "--iterations",
        "2",
        "--optimizer",
        "momentum",
        "--momentum",
        "0.5",
        "--weight-decay",
        "0.01",
        "--max-elements",
        "100",
        "--name",
        "tiny-lenet",
    )
    assert result.returncode == 0, result.stderr
    assert "run 1 'tiny-lenet' stored" in result.stdout
    with RunStore(db) as store:
        info = store.get_run(1)
    assert (info.model_name, info.num_iterations, info.optimizer) == ("lenet5", 2, "SGD")
    assert (
        info.optimizer_settings["momentum"] == 0.5
        and info.optimizer_settings["weight_decay"] == 0.01
    )
    assert [layer.name for layer in info.layers][:3] == ["conv1", "relu1", "pool1"]


def test_models_lists_every_builtin_with_its_defaults(capsys):
    from tracer.cli import main

    main(["models"])
    out = capsys.readouterr().out
    for name in BUILTIN_MODELS:
        assert f"\n{name} " in out
    assert "lr 0.05, 640 samples, batch 64, 10 epochs, max-elements 5000" in out


BAD = [
    (["--model", "resnet50"], "unknown model 'resnet50'; choose from seed-cnn, lenet5, small-cnn"),
    (["--optimizer", "lbfgs"], "'lbfgs' is not one of"),
    (
        ["--optimizer", "adam", "--momentum", "0.9"],
        "momentum applies to sgd and momentum, not adam",
    ),
    (["--momentum", "1"], "1.0 is not in [0, 1)"),
    (["--optimizer", "momentum", "--momentum", "0"], "needs a momentum above 0"),
    (["--weight-decay", "-0.1"], "is not a number >= 0"),
    (["--weight-decay", "inf"], "is not a number >= 0"),
    (["--every", "0"], "--every"),
    (["--max-elements", "-5"], "neither a positive integer nor 'all'"),
    (
        ["--layers", "conv1,nope", "--model", "lenet5"],
        "unknown layer 'nope' for lenet5; choose from conv1",
    ),
    (["--iterations", "0"], "--iterations"),
    (["--lr", "0"], "is not a positive number"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_trace_options_are_one_line_exit_2_and_leave_the_store_alone(
    tmp_path, seed_store, capsys, args, message
):
    from tracer.cli import main

    db = tmp_path / "copy.db"
    db.write_bytes(seed_store.read_bytes())
    before = db.read_bytes()
    with pytest.raises(SystemExit) as exit_:
        main(["trace", "--db", str(db), *args])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert db.read_bytes() == before
    assert not (tmp_path / "copy.db-wal").exists()


def test_a_bad_layer_name_is_one_line(tmp_path):
    result = cnnviz("trace", "--db", tmp_path / "r.db", "--model", "lenet5", "--layers", "fc9")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(
        "cnnviz trace: error: Invalid value for '--layers': unknown layer 'fc9'"
    )
    assert not (tmp_path / "r.db").exists()
