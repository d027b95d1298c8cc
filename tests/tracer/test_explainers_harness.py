"""Shared harness for the explainer tests, and tests of the registry itself.

Every explainer test runs a real model through the real tracer
(`tracer.session.Trace`, strict) into a real SQLite store, reads the
iteration back with `storage.RunStore`, and asserts on the stored steps:
each step that was checked against PyTorch is verified with
max_abs_diff <= 1e-5 * max(1, scale), where scale is the largest magnitude
among the tensors the step produced.

Set CNNVIZ_DIFF_REPORT=<file> to append, per layer type, the largest
max_abs_diff seen (one JSON line per traced run) -- used to report the worst
agreement over all hypothesis examples.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from storage import RunStore
from storage.records import IterationRecord, StepRecord
from tracer.explainers import explainer_for, registered_types
from tracer.session import Trace

TOL = 1e-5  # |ours - PyTorch| <= TOL * max(1, scale)


def trace_run(
    model: nn.Module,
    criterion: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    db: Path,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[IterationRecord]:
    """Train one iteration per batch inside a strict Trace and read every iteration back.

    `reduce` turns a non-scalar loss (reduction='none') into the scalar that
    backward starts from; the criterion's own output is what the tracer sees.
    """
    with Trace(model, optimizer, criterion, db=db, strict=True) as trace:
        for x, y in batches:
            with trace.iteration():
                model.zero_grad()  # .grad must hold this iteration's gradient only
                loss = criterion(model(x), y)
                (reduce(loss) if reduce else loss).backward()
                if optimizer is not None:
                    optimizer.step()
    with RunStore(db) as store:
        records = [
            store.load_iteration(trace.run_id, s.index) for s in store.iterations(trace.run_id)
        ]
    assert len(records) == len(batches)
    return records


def layer_types(
    model: nn.Module, criterion: nn.Module | None = None, loss_name: str = "loss"
) -> dict[str, str]:
    """Stored layer name -> module type name, to file each step's diff under its layer type."""
    kinds = {
        name: type(m).__name__
        for name, m in model.named_modules()
        if next(m.children(), None) is None
    }
    if criterion is not None:
        kinds[loss_name] = type(criterion).__name__
    return kinds


def step_scale(record: IterationRecord, step: StepRecord) -> float:
    """The largest finite magnitude among the tensors a step produced (as stored)."""
    scale = 0.0
    for name in step.outputs:
        array = np.asarray(record.tensor(name).array, dtype=np.float64)
        finite = np.abs(array[np.isfinite(array)])
        if finite.size:
            scale = max(scale, float(finite.max()))
    return scale


def assert_verified(
    records: list[IterationRecord],
    kinds: dict[str, str] | None = None,
    *,
    optimizer: str | None = None,
) -> dict[str, float]:
    """Every checked step verified within TOL; no warnings. Returns the worst diff per layer type."""
    worst: dict[str, float] = {}
    for record in records:
        assert record.warnings == [], record.warnings
        for step in record.steps:
            assert step.formula and step.formula_values, step.title
            for tex in (step.formula, step.formula_values):
                assert latex_balanced(tex), (step.title, tex)
            if step.verified is None:
                continue
            assert step.verified is True, (
                record.index,
                step.layer,
                step.title,
                step.reference,
                step.max_abs_diff,
            )
            scale = step_scale(record, step)
            assert step.max_abs_diff <= TOL * max(1.0, scale), (
                step.title,
                step.max_abs_diff,
                scale,
            )
            if step.phase == "update":
                kind = optimizer or "optimizer"
            else:
                kind = (kinds or {}).get(step.layer, step.layer)
            worst[kind] = max(worst.get(kind, 0.0), step.max_abs_diff)
    report = os.environ.get("CNNVIZ_DIFF_REPORT")
    if report and worst:
        with open(report, "a") as fh:
            fh.write(json.dumps(worst) + "\n")
    return worst


def latex_balanced(tex: str) -> bool:
    """Braces pair up (ignoring \\{ \\}) and every \\begin{env} has its \\end{env}."""
    depth = 0
    unescaped = tex.replace(r"\{", "").replace(r"\}", "")
    for ch in unescaped:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    envs = re.findall(r"\\(begin|end)\{(\w+)\}", tex)
    stack = []
    for kind, env in envs:
        if kind == "begin":
            stack.append(env)
        elif not stack or stack.pop() != env:
            return False
    return depth == 0 and not stack


def steps_of(record: IterationRecord, layer: str, phase: str | None = None) -> list[StepRecord]:
    return [s for s in record.steps if s.layer == layer and (phase is None or s.phase == phase)]


def titles(record: IterationRecord, layer: str, phase: str) -> list[str]:
    return [s.title for s in steps_of(record, layer, phase)]


def stored(record: IterationRecord, name: str) -> np.ndarray:
    return np.asarray(record.tensor(name).array, dtype=np.float64)


# ---------------------------------------------------------------- the registry


_PARAMS = [nn.Parameter(torch.zeros(2))]
REQUIRED = [
    nn.Conv2d(1, 1, 1),
    nn.MaxPool2d(2),
    nn.AvgPool2d(2),
    nn.AdaptiveAvgPool2d(1),
    nn.Linear(1, 1),
    nn.Flatten(),
    nn.Dropout(),
    nn.ReLU(),
    nn.LeakyReLU(),
    nn.Sigmoid(),
    nn.Tanh(),
    nn.Softmax(1),
    nn.LogSoftmax(1),
    nn.BatchNorm2d(1),
    nn.CrossEntropyLoss(),
    nn.NLLLoss(),
    nn.MSELoss(),
    torch.optim.SGD(_PARAMS, lr=0.1),
    torch.optim.Adam(_PARAMS),
    torch.optim.AdamW(_PARAMS),
]


@pytest.mark.parametrize("obj", REQUIRED, ids=lambda o: type(o).__name__)
def test_required_types_are_registered_with_a_formula(obj):
    assert type(obj) in registered_types()
    explainer = explainer_for(obj)
    assert explainer is not None and explainer.formula.strip()
    phase = "update" if isinstance(obj, torch.optim.Optimizer) else "backward"
    assert getattr(type(explainer), phase) is not getattr(type(explainer).__mro__[-2], phase, None)


def test_every_registered_layer_describes_itself_in_one_line():
    samples = [
        nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=2, groups=2, bias=False),
        nn.Conv2d(1, 1, 2, padding="same", padding_mode="reflect"),
        nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        nn.AvgPool2d(2, count_include_pad=False, divisor_override=3),
        nn.AdaptiveAvgPool2d((2, None)),
        nn.AdaptiveMaxPool2d(1),
        nn.Linear(3, 2),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Dropout2d(),
        nn.ReLU(inplace=True),
        nn.LeakyReLU(0.2),
        nn.ReLU6(),
        nn.Sigmoid(),
        nn.Tanh(),
        nn.ELU(),
        nn.SiLU(),
        nn.GELU("tanh"),
        nn.Softplus(),
        nn.PReLU(3),
        nn.Identity(),
        nn.Softmax(dim=1),
        nn.LogSoftmax(dim=-1),
        nn.BatchNorm2d(3, momentum=None),
        nn.BatchNorm1d(3, affine=False, track_running_stats=False),
        nn.CrossEntropyLoss(weight=torch.ones(3), label_smoothing=0.1),
        nn.NLLLoss(),
        nn.MSELoss(),
        nn.L1Loss(),
        nn.SmoothL1Loss(),
        nn.HuberLoss(),
        nn.BCELoss(),
        nn.BCEWithLogitsLoss(),
    ]
    for module in samples:
        explainer = explainer_for(module)
        assert explainer is not None, type(module).__name__
        text = explainer.describe(module)
        assert text and "\n" not in text, type(module).__name__
    params = _PARAMS
    for opt in (
        torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        torch.optim.Adam(params, amsgrad=True, weight_decay=0.1),
        torch.optim.AdamW(params),
        torch.optim.RMSprop(params, centered=True),
        torch.optim.Adagrad(params, lr_decay=0.1),
    ):
        text = explainer_for(opt).describe(opt)
        assert text.startswith(type(opt).__name__) and "\n" not in text


def test_a_subclass_with_its_own_forward_is_not_explained():
    class Doubled(nn.ReLU):
        def forward(self, x):
            return 2 * super().forward(x)

    assert explainer_for(Doubled()) is None
    assert explainer_for(nn.ReLU6()) is explainer_for(nn.Hardtanh())  # inherits Hardtanh's forward


def test_an_unsupported_setting_is_stored_raw_with_a_warning(tmp_path):
    # MSELoss with a broadcast target: the pointwise explainer raises Unsupported.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    criterion = nn.MSELoss()
    x, y = torch.randn(4, 3), torch.randn(1, 2)
    with pytest.warns(UserWarning):  # PyTorch's own broadcasting warning
        records = trace_run(model, criterion, [(x, y)], tmp_path / "r.db")
    record = records[0]
    assert any(
        "loss (MSELoss): unsupported setting" in w and "broadcast" in w for w in record.warnings
    )
    raw = steps_of(record, "loss")
    assert [s.phase for s in raw] == ["forward", "backward"]
    assert all("no matrix form" in s.title and s.verified is None for s in raw)
    # The layers before it are still explained and verified.
    assert all(s.verified for s in steps_of(record, "0"))


def test_the_latex_balance_check_catches_broken_formulas():
    assert latex_balanced(r"\frac{a}{b} + \begin{bmatrix}1 & 2\end{bmatrix} \{x\}")
    assert not latex_balanced(r"\frac{a}{b")
    assert not latex_balanced(r"x_{1}}")
    assert not latex_balanced(r"\begin{bmatrix}1\end{aligned}")
