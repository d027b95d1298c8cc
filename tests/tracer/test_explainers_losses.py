"""Property tests for the loss explainers: every setting of CrossEntropyLoss and
NLLLoss (class weights, label smoothing, ignore_index, probability targets,
extra dimensions, unbatched input, every reduction) and the pointwise losses,
traced through a real model, store and read-back, against PyTorch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_explainers_harness import assert_verified, layer_types, stored, titles, trace_run
from torch import nn

EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return tmp_path_factory.mktemp("losses") / "runs.db"


def _weighted_sum(seed):
    """Backward from sum(w * loss) with random w: an uneven upstream gradient for reduction='none'."""

    def reduce(loss):
        if loss.dim() == 0:
            return loss
        w = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed)) + 0.5
        return (loss * w).sum()

    return reduce


@st.composite
def classification_cases(draw):
    c = draw(st.integers(2, 5))
    layout = draw(st.sampled_from(["batch", "batch", "spatial", "unbatched"]))
    n = draw(st.integers(1, 4))
    lead = {"batch": (n,), "spatial": (n,), "unbatched": ()}[layout]
    extra = (draw(st.integers(1, 3)), draw(st.integers(1, 2))) if layout == "spatial" else ()
    probabilities = draw(st.booleans()) and layout != "unbatched"
    kwargs = dict(reduction=draw(st.sampled_from(["mean", "mean", "sum", "none"])))
    if draw(st.booleans()):
        kwargs["weight"] = torch.rand(c, generator=torch.Generator().manual_seed(c)) + 0.2
    if draw(st.booleans()):
        kwargs["label_smoothing"] = draw(st.sampled_from([0.05, 0.2, 0.5]))
    ignore = draw(st.booleans()) and not probabilities
    if ignore:
        kwargs["ignore_index"] = draw(st.sampled_from([0, -100]))
    return c, lead, extra, probabilities, ignore, kwargs, draw(st.integers(0, 2**16))


def _targets(c, lead, extra, probabilities, ignore, kwargs, gen):
    if probabilities:
        return torch.softmax(torch.randn(*lead, c, *extra, generator=gen) * 2, dim=1 if lead else 0)
    y = torch.randint(0, c, lead + extra, generator=gen)
    if ignore:
        # One row ignored and at least one counted (a mean over no rows is NaN, which the
        # store cannot hold as an iteration's loss).
        if y.numel() > 1:
            y.view(-1)[0] = kwargs["ignore_index"]
        y.view(-1)[-1] = c - 1 if kwargs["ignore_index"] == 0 else y.view(-1)[-1]
    return y


@EXAMPLES
@given(classification_cases())
def test_cross_entropy_matches_pytorch(db, case):
    c, lead, extra, probabilities, ignore, kwargs, seed = case
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    # Linear maps features to class logits; for (N, C, d1, d2) logits a 1x1 convolution does.
    features = 3
    if extra:
        model = nn.Sequential(nn.Conv2d(features, c, 1))
        x = torch.randn(*lead, features, *extra, generator=gen)
    else:
        model = nn.Sequential(nn.Linear(features, c))
        x = torch.randn(*lead, features, generator=gen)
    y = _targets(c, lead, extra, probabilities, ignore, kwargs, gen)
    criterion = nn.CrossEntropyLoss(**kwargs)
    records = trace_run(model, criterion, [(x, y)], db, reduce=_weighted_sum(seed))
    assert_verified(records, layer_types(model, criterion))
    record = records[0]
    assert titles(record, "loss", "forward") == [
        "Softmax: logits to probabilities",
        "Cross-entropy loss",
    ]
    assert titles(record, "loss", "backward") == ["Gradient of the loss with respect to the logits"]
    logits = stored(record, "0.out")
    assert stored(record, "loss.probs").shape == logits.shape
    assert stored(record, "loss.predicted").shape == (
        logits.shape[:1] + logits.shape[2:] if lead else ()
    )
    ignored = not probabilities and bool((y == criterion.ignore_index).any())
    plain = not (
        probabilities
        or ignored
        or "weight" in kwargs
        or "label_smoothing" in kwargs
        or extra
        or not lead
        or kwargs["reduction"] == "none"
    )
    names = {t.name for t in record.tensors}
    assert ("loss.target_weights" in names) == (not plain)
    assert ("loss.onehot" in names) == (not probabilities)


@st.composite
def nll_cases(draw):
    c = draw(st.integers(2, 5))
    n = draw(st.integers(1, 4))
    kwargs = dict(reduction=draw(st.sampled_from(["mean", "sum", "none"])))
    if draw(st.booleans()):
        kwargs["weight"] = torch.rand(c, generator=torch.Generator().manual_seed(c)) + 0.2
    ignore = draw(st.booleans())
    if ignore:
        kwargs["ignore_index"] = 1
    return c, n, ignore, kwargs, draw(st.integers(0, 2**16))


@EXAMPLES
@given(nll_cases())
def test_log_softmax_then_nll_matches_pytorch(db, case):
    c, n, ignore, kwargs, seed = case
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, c), nn.LogSoftmax(dim=1))
    x = torch.randn(n, 3, generator=gen)
    y = torch.randint(0, c, (n,), generator=gen)
    if ignore:
        y[0] = 1  # ignored ...
        y[-1] = 0  # ... and one row always counted (no 0/0 mean)
    criterion = nn.NLLLoss(**kwargs)
    records = trace_run(model, criterion, [(x, y)], db, reduce=_weighted_sum(seed))
    assert_verified(records, layer_types(model, criterion))
    record = records[0]
    assert titles(record, "loss", "forward") == ["Negative log-likelihood"]
    assert titles(record, "1", "backward") == ["LogSoftmax backward"]


POINTWISE = [
    lambda r: nn.MSELoss(reduction=r),
    lambda r: nn.L1Loss(reduction=r),
    lambda r: nn.SmoothL1Loss(reduction=r, beta=0.5),
    lambda r: nn.SmoothL1Loss(reduction=r, beta=0.0),
    lambda r: nn.HuberLoss(reduction=r, delta=0.7),
    lambda r: nn.BCEWithLogitsLoss(reduction=r),
    lambda r: nn.BCEWithLogitsLoss(
        reduction=r, weight=torch.tensor([0.5, 1.0, 2.0]), pos_weight=torch.tensor([1.0, 3.0, 0.5])
    ),
    lambda r: nn.BCELoss(reduction=r),
]


@EXAMPLES
@given(
    st.integers(0, len(POINTWISE) - 1),
    st.sampled_from(["mean", "sum", "none"]),
    st.integers(1, 4),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_pointwise_losses_match_pytorch(db, which, reduction, n, exact, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    criterion = POINTWISE[which](reduction)
    bce = isinstance(criterion, nn.BCELoss)
    model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid()) if bce else nn.Sequential(nn.Linear(2, 3))
    x = torch.randn(n, 2, generator=gen)
    if isinstance(criterion, (nn.BCELoss, nn.BCEWithLogitsLoss)):
        y = torch.rand(n, 3, generator=gen)
    elif exact:
        with torch.no_grad():
            y = model(x).clone()  # zero error everywhere: the kinks of L1 / smooth L1
            y[:, 0] += 1.0
    else:
        y = torch.randn(n, 3, generator=gen)
    records = trace_run(model, criterion, [(x, y)], db, reduce=_weighted_sum(seed))
    assert_verified(records, layer_types(model, criterion))
    record = records[0]
    assert len(titles(record, "loss", "forward")) == 1
    assert titles(record, "loss", "backward")[0].startswith("Gradient of the")
    assert stored(record, "loss.terms").shape == (n, 3)
