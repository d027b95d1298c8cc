"""The logger-style API (start / begin(step) / end / close) and the callbacks for
PyTorch Lightning and the Hugging Face Trainer, run through the examples under
examples/ on tiny models: every `every`-th step traced under the user's step
number, the run completes, every step verified, and the training bitwise the same
as without cnnviz."""

from __future__ import annotations

import importlib.util
import os
import runpy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from storage import RunStore
from tracer import Trace

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str) -> dict:
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"example_{name}")


def needs(module: str) -> None:
    """Skip without the optional package, or fail under CI, where scripts/test.sh installs
    the extras (unless told to leave them out with CNNVIZ_SKIP_INTEGRATIONS=1)."""
    if os.environ.get("CNNVIZ_SKIP_INTEGRATIONS") == "1":
        pytest.skip("CNNVIZ_SKIP_INTEGRATIONS=1")
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{module} is not installed (scripts/test.sh installs it)")
        pytest.skip(f"{module} is not installed")


def stored(db, run_id):
    with RunStore(db) as store:
        info = store.get_run(run_id)
        records = [store.load_iteration(run_id, s.index) for s in store.iterations(run_id)]
    return info, records


def assert_verified(records):
    for record in records:
        checked = [s for s in record.steps if s.verified is not None]
        assert checked and all(s.verified for s in checked), [
            (s.layer, s.title, s.max_abs_diff) for s in record.steps if s.verified is False
        ]
        assert {s.phase for s in record.steps} == {"forward", "backward", "update"}
        assert record.warnings == []


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_open_close_with_the_users_step_numbers(tmp_path):
    main = example("open_close")["main"]
    plain_trace, plain, plain_losses = main(tmp_path / "plain.db", traced=False)
    assert plain_trace.run_id is None  # never started: nothing stored
    t, model, losses = main(tmp_path / "runs.db", steps=6, every=2)
    assert losses == plain_losses  # bitwise: floats compared with ==
    assert_same_weights(plain, model)
    info, records = stored(tmp_path / "runs.db", t.run_id)
    assert (info.name, info.status, info.num_iterations) == ("open-close", "completed", 3)
    assert [r.index for r in records] == [1, 3, 5]
    assert [r.loss for r in records] == pytest.approx([losses[k] for k in (1, 3, 5)], rel=1e-6)
    assert_verified(records)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_steps_are_the_users_and_misuse_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3)
    t = Trace(model, optimizer, db=tmp_path / "runs.db", every=10)
    with pytest.raises(RuntimeError, match="start"):
        t.begin(1)
    t.close()  # never started: nothing to do
    assert t.start() is t
    with pytest.raises(RuntimeError, match="begin"):
        t.end()
    traced = []
    for step in (100, 105, 110, 111, 121):  # your own numbering, with gaps
        traced.append(t.begin(step))
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
        t.set_loss(0.5)
        t.end()
    assert traced == [False, False, False, True, True]  # (step - 1) % every == 0
    for bad in (121, 3, 0, -1, 1.5, True, "122"):
        with pytest.raises(ValueError, match="step must be an integer"):
            t.begin(bad)
    t.begin(200)
    with pytest.raises(RuntimeError, match="already open"):
        t.begin(201)
    t.close()  # the open iteration is dropped, the run completes
    t.close()
    info, records = stored(tmp_path / "runs.db", t.run_id)
    assert info.status == "completed" and [r.index for r in records] == [111, 121]
    assert [r.loss for r in records] == [0.5, 0.5]


def test_close_with_an_error_marks_the_run_failed(tmp_path):
    model = torch.nn.Linear(3, 2)
    t = Trace(model, db=tmp_path / "runs.db").start()
    t.begin()
    t.close(error=ValueError("the data loader broke"))
    with RunStore(tmp_path / "runs.db") as store:
        info = store.get_run(t.run_id)
    assert info.status == "failed" and "the data loader broke" in (info.error or "")


def test_lightning_callback_traces_every_other_step(tmp_path):
    needs("lightning")
    import lightning.pytorch as pl

    main = example("lightning_callback")["main"]
    _, plain = main(tmp_path / "plain.db", traced=False)

    class Losses(pl.Callback):
        def __init__(self):
            self.losses = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    seen = Losses()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own notices
        t, module = main(tmp_path / "runs.db", steps=6, every=2, callbacks=[seen])
    assert_same_weights(plain, module)
    info, records = stored(tmp_path / "runs.db", t.run_id)
    assert (info.name, info.status) == ("lightning", "completed")
    assert [(layer.name, layer.type) for layer in info.layers] == [
        ("net.0", "Linear"),
        ("net.1", "Tanh"),
        ("net.2", "Linear"),
        ("loss", "CrossEntropyLoss"),
    ]
    assert [r.index for r in records] == [1, 3, 5]
    assert [r.loss for r in records] == pytest.approx([seen.losses[k] for k in (0, 2, 4)])
    assert_verified(records)
    assert info.optimizer == "SGD" and info.optimizer_settings["momentum"] == 0.9


def test_huggingface_callback_traces_every_other_step(tmp_path):
    needs("transformers")
    needs("accelerate")
    main = example("huggingface_callback")["main"]
    _, plain = main(tmp_path / "plain.db", traced=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t, model = main(tmp_path / "runs.db", steps=6, every=2)
    assert_same_weights(plain, model)
    info, records = stored(tmp_path / "runs.db", t.run_id)
    assert (info.name, info.status, info.optimizer) == ("huggingface", "completed", "AdamW")
    assert [(layer.name, layer.type) for layer in info.layers] == [
        ("hidden", "Linear"),
        ("gelu", "GELU"),  # F.gelu, explained like nn.GELU
        ("head", "Linear"),
        ("cross_entropy", "CrossEntropyLoss"),  # the loss the model computes
    ]
    assert [r.index for r in records] == [1, 3, 5]  # the Trainer's step numbers
    for record in records:
        loss = record.tensor("cross_entropy.out").array
        assert record.loss == pytest.approx(float(np.asarray(loss).reshape(-1)[0]))
    assert_verified(records)


def test_huggingface_callback_closes_a_failed_run(tmp_path):
    needs("transformers")
    needs("accelerate")
    from transformers import Trainer, TrainingArguments

    from tracer.huggingface import CnnvizCallback

    module = example("huggingface_callback")

    class Breaks(module["TinyClassifier"]):
        calls = 0

        def forward(self, features, labels=None):
            Breaks.calls += 1
            if Breaks.calls == 3:
                raise RuntimeError("out of memory, say")
            return super().forward(features, labels)

    torch.manual_seed(0)
    rows = [{"features": torch.randn(4), "labels": i % 3} for i in range(32)]
    model, callback = Breaks(), CnnvizCallback(tmp_path / "runs.db", name="breaks")
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=5,
        per_device_train_batch_size=8,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback])
    with pytest.raises(RuntimeError, match="out of memory"):
        try:
            trainer.train()
        except BaseException as exc:
            callback.close(error=exc)
            raise
    info, records = stored(tmp_path / "runs.db", callback.trace.run_id)
    assert info.status == "failed" and "out of memory" in info.error
    assert [r.index for r in records] == [1, 2]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
