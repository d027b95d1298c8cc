"""Property tests for the optimizer explainers: each update written out with its
state over three iterations, checked against the parameters after
optimizer.step() and against the optimizer's own state (momentum buffers,
Adam's moments, the step count)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_explainers_harness import assert_verified, layer_types, stored, trace_run
from torch import nn

EXAMPLES = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PARAMS = ("0.weight", "0.bias", "2.weight")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return tmp_path_factory.mktemp("optim") / "runs.db"


def _train(db, make_optimizer, seed, iterations=3):
    """Three iterations on different batches of a Linear-Tanh-Linear classifier."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3, bias=False))
    optimizer = make_optimizer(model.parameters())
    criterion = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    batches = [
        (torch.randn(4, 3, generator=gen), torch.randint(0, 3, (4,), generator=gen))
        for _ in range(iterations)
    ]
    records = trace_run(model, criterion, batches, db, optimizer)
    assert_verified(records, layer_types(model, criterion), optimizer=type(optimizer).__name__)
    return records, optimizer


def _updates(record, param):
    return [s for s in record.steps if s.phase == "update" and s.title.endswith(f" {param}")]


@st.composite
def sgd_settings(draw):
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
    nesterov = momentum > 0 and draw(st.booleans())
    return dict(
        lr=draw(st.sampled_from([0.01, 0.1, 0.5])),
        momentum=momentum,
        dampening=0.0 if nesterov else draw(st.sampled_from([0.0, 0.3])),
        nesterov=nesterov,
        weight_decay=draw(st.sampled_from([0.0, 0.01, 0.1])),
        maximize=draw(st.booleans()),
    )


@EXAMPLES
@given(sgd_settings(), st.integers(0, 2**16))
def test_sgd_matches_pytorch(db, kwargs, seed):
    records, optimizer = _train(db, lambda p: torch.optim.SGD(p, **kwargs), seed)
    for record in records:
        for param in PARAMS:
            steps = _updates(record, param)
            assert steps[-1].title == f"SGD update of {param}"
            assert any(s.title.startswith("Momentum buffer") for s in steps) == bool(
                kwargs["momentum"]
            )
            assert any(s.title.startswith("Weight decay") for s in steps) == bool(
                kwargs["weight_decay"]
            )
            assert any(s.title.startswith("Maximize") for s in steps) == kwargs["maximize"]
    if kwargs["momentum"]:
        first, later = (_updates(r, "0.weight") for r in (records[0], records[2]))
        buffer_first = next(s for s in first if s.title.startswith("Momentum buffer"))
        buffer_later = next(s for s in later if s.title.startswith("Momentum buffer"))
        assert "first step" in buffer_first.formula  # the buffer starts as the gradient...
        assert r"\mu v_{\text{prev}}" in buffer_later.formula  # ... and is reused afterwards
        # Our buffer after the last step equals the optimizer's own, read back from the store.
        torch.testing.assert_close(
            torch.from_numpy(stored(records[2], "0.weight.momentum_buffer")).float(),
            optimizer.state[optimizer.param_groups[0]["params"][0]]["momentum_buffer"],
            atol=1e-6,
            rtol=1e-5,
        )


@st.composite
def adam_settings(draw):
    return draw(st.sampled_from([torch.optim.Adam, torch.optim.AdamW])), dict(
        lr=draw(st.sampled_from([1e-3, 0.01, 0.1])),
        betas=draw(st.sampled_from([(0.9, 0.999), (0.5, 0.9), (0.0, 0.99)])),
        eps=draw(st.sampled_from([1e-8, 1e-3])),
        weight_decay=draw(st.sampled_from([0.0, 0.0, 0.1])),
        amsgrad=draw(st.booleans()),
        maximize=draw(st.booleans()),
    )


@EXAMPLES
@given(adam_settings(), st.integers(0, 2**16))
def test_adam_and_adamw_match_pytorch(db, case, seed):
    kind, kwargs = case
    records, optimizer = _train(db, lambda p: kind(p, **kwargs), seed)
    name = kind.__name__
    for t, record in enumerate(records, start=1):
        for param in PARAMS:
            steps = _updates(record, param)
            update = steps[-1]
            assert update.title == f"{name} update of {param}"
            assert f"t = {t}:" in update.formula_values  # bias correction uses this step count
            assert "optimizer state step" in update.reference
            titles_ = [s.title for s in steps]
            assert f"First moment of {param}" in titles_ and f"Second moment of {param}" in titles_
            assert any(s.startswith("AMSGrad") for s in titles_) == kwargs["amsgrad"]
            decay = [s for s in titles_ if "weight decay" in s]
            if kwargs["weight_decay"]:
                assert decay == [
                    (
                        "Decoupled weight decay on "
                        if kind is torch.optim.AdamW
                        else "L2 weight decay on "
                    )
                    + param
                ]
            else:
                assert decay == []
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(
            torch.from_numpy(stored(records[-1], f"0.weight.{key}")).float(),
            state[key],
            atol=1e-7,
            rtol=1e-5,
        )


@EXAMPLES
@given(
    st.sampled_from(["rmsprop", "adagrad"]),
    st.sampled_from([0.0, 0.1]),
    st.booleans(),
    st.sampled_from([0.0, 0.5]),
    st.integers(0, 2**16),
)
def test_rmsprop_and_adagrad_match_pytorch(db, kind, weight_decay, flag, momentum, seed):
    if kind == "rmsprop":

        def make(p):
            return torch.optim.RMSprop(
                p, lr=0.01, momentum=momentum, centered=flag, weight_decay=weight_decay
            )
    else:

        def make(p):
            return torch.optim.Adagrad(
                p,
                lr=0.1,
                lr_decay=0.1 if flag else 0.0,
                weight_decay=weight_decay,
                initial_accumulator_value=momentum,
            )

    records, _ = _train(db, make, seed)
    label = "RMSprop" if kind == "rmsprop" else "Adagrad"
    for record in records:
        assert _updates(record, "0.weight")[-1].title == f"{label} update of 0.weight"
