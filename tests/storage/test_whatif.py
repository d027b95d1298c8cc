"""storage.whatif: an iteration's update recomputed with another learning rate."""

from __future__ import annotations

import numpy as np
import pytest

from storage import RunStore
from storage.whatif import NotAvailable, with_learning_rate


@pytest.fixture(scope="module")
def seed_run(seed_store):
    with RunStore(seed_store) as store:
        return store.get_run(1), store.load_iteration(1, 2)


def test_the_stored_learning_rate_gives_back_the_stored_update(seed_run):
    run, record = seed_run
    changed = with_learning_rate(record, run.optimizer, run.optimizer_settings, run.learning_rate)
    names = [c.name for c in changed]
    params = [t.name for t in record.tensors if t.role == "param"]
    assert names == [n for p in params for n in (f"{p}.next", f"{p}.update")]
    for item in changed:  # float32 arithmetic as torch's SGD does it
        assert item.max_abs_diff <= 1e-7, item.name


def test_another_learning_rate_scales_the_step(seed_run):
    run, record = seed_run
    lr = run.learning_rate
    changed = {c.name: c for c in with_learning_rate(record, "SGD", run.optimizer_settings, 3 * lr)}
    for name in ("conv.weight", "fc.bias"):
        w, g = record.tensor(name).array, record.tensor(f"{name}.grad").array
        np.testing.assert_allclose(changed[f"{name}.next"].recomputed, w - 3 * lr * g, rtol=1e-6)
        stored_step = record.tensor(f"{name}.update").array
        np.testing.assert_allclose(
            changed[f"{name}.update"].recomputed, 3 * stored_step, rtol=1e-5, atol=1e-7
        )
        # the difference to the stored run is the extra step, -2 eta g
        np.testing.assert_allclose(
            changed[f"{name}.next"].difference, -2 * lr * g, rtol=1e-5, atol=1e-7
        )


def test_what_is_not_available_says_so(seed_run):
    run, record = seed_run
    for optimizer, settings, lr, words in (
        ("Adam", run.optimizer_settings, 0.1, "not Adam"),
        ("SGD", {**run.optimizer_settings, "weight_decay": 0.01}, 0.1, "weight decay"),
        ("SGD", run.optimizer_settings, 0.0, "positive number"),
        ("SGD", run.optimizer_settings, float("nan"), "positive number"),
    ):
        with pytest.raises(NotAvailable, match=words):
            with_learning_rate(record, optimizer, settings, lr)
