"""The tensor-name grammar (storage/names.py): every builder parses back to what built it."""

from __future__ import annotations

import pytest

from storage import names


def rebuild(parsed: names.TensorName) -> str:
    """The name again, from what `parse` read: the builders invert the parser."""
    if parsed.kind == names.KIND_GRAD:
        return names.grad(parsed.of)
    if parsed.kind == names.KIND_GRAD_PART:
        return names.grad_part(parsed.of, parsed.use)
    if parsed.kind == names.KIND_GRAD_BEFORE:
        return names.grad_before(parsed.of)
    if parsed.kind == names.KIND_NEXT:
        return names.next_value(parsed.of)
    if parsed.kind == names.KIND_UPDATE:
        return names.update(parsed.of)
    if parsed.kind == names.KIND_STATE:
        return names.state(parsed.of, parsed.key)
    assert parsed.kind == names.KIND_VALUE
    return parsed.of


@pytest.mark.parametrize(
    ("name", "kind", "of", "extra"),
    [
        (names.model_input(), names.KIND_VALUE, "input", None),
        (names.model_input(2), names.KIND_VALUE, "input2", None),
        (names.model_input(key="mask"), names.KIND_VALUE, "input.mask", None),
        (names.TARGET, names.KIND_VALUE, "target", None),
        (names.call_input("conv1"), names.KIND_VALUE, "conv1.in", None),
        (names.call_input("add", 1, 2), names.KIND_VALUE, "add.in1", None),
        (names.output("conv1"), names.KIND_VALUE, "conv1.out", None),
        (names.output(names.numbered("conv1", 2)), names.KIND_VALUE, "conv1#2.out", None),
        (names.output("lstm", "1.0"), names.KIND_VALUE, "lstm.out.1.0", None),
        (names.loss_value("loss"), names.KIND_VALUE, "loss.value", None),
        (names.intermediate("conv1", "X_col"), names.KIND_VALUE, "conv1.X_col", None),
        (names.grad("conv1.out"), names.KIND_GRAD, "conv1.out", None),
        (names.grad("conv1.weight"), names.KIND_GRAD, "conv1.weight", None),
        (names.grad(names.output("a#2")), names.KIND_GRAD, "a#2.out", None),
        (names.grad_part("relu.out", "add"), names.KIND_GRAD_PART, "relu.out", "add"),
        (
            names.grad_part("block.0.weight", names.numbered("block.0", 3)),
            names.KIND_GRAD_PART,
            "block.0.weight",
            "block.0#3",
        ),
        (names.grad_before("fc.bias"), names.KIND_GRAD_BEFORE, "fc.bias", None),
        (names.next_value("fc.bias"), names.KIND_NEXT, "fc.bias", None),
        (names.update("fc.bias"), names.KIND_UPDATE, "fc.bias", None),
        (names.state("fc.bias", "exp_avg"), names.KIND_STATE, "fc.bias", "exp_avg"),
        (names.state("fc.bias", "momentum_buffer"), names.KIND_STATE, "fc.bias", "momentum_buffer"),
        # Module names may hold any character but "." (PyTorch's rule), "/" and "@" included.
        (names.grad_part("a/b.out", "c@d"), names.KIND_GRAD_PART, "a/b.out", "c@d"),
        (names.grad("x y.out"), names.KIND_GRAD, "x y.out", None),
    ],
)
def test_every_builder_parses_back(name, kind, of, extra):
    parsed = names.parse(name)
    assert (parsed.kind, parsed.of) == (kind, of)
    assert extra in (parsed.use, parsed.key)
    assert rebuild(parsed) == name
    assert parsed.is_gradient == (
        kind in (names.KIND_GRAD, names.KIND_GRAD_PART, names.KIND_GRAD_BEFORE)
    )


def test_numbered_calls_split_back():
    assert names.numbered("conv1", 1) == "conv1"
    assert names.split_call(names.numbered("conv1", 2)) == ("conv1", 2)
    assert names.split_call("block.0#12") == ("block.0", 12)
    assert names.split_call("conv1") == ("conv1", 1)
    assert names.split_call("odd#name") == ("odd#name", 1)  # not a call number
    assert names.split_call("#3") == ("#3", 1)


def test_child_joins_like_named_modules():
    assert names.child("", "add") == "add"
    assert names.child("block", "add") == "block.add"


@pytest.mark.parametrize(
    "bad",
    ["", "a" * (names.MAX_LENGTH + 1), "conv\n.out", "x\x00", "name\u202e", 7, None],
)
def test_check_refuses_what_a_store_or_url_cannot_hold(bad):
    assert not names.is_valid(bad)
    with pytest.raises(ValueError):
        names.check(bad)
    if isinstance(bad, str) and bad:
        with pytest.raises(ValueError):
            names.parse(bad)


def test_check_passes_names_at_the_limit():
    assert names.check("a" * names.MAX_LENGTH) == "a" * names.MAX_LENGTH


def test_the_roles_are_the_stores_roles():
    from storage import ROLES
    from storage.records import ROLE_PARAM

    assert ROLES is names.ROLES and ROLE_PARAM is names.ROLE_PARAM
    assert set(names.GRADIENT_ROLES) <= set(ROLES) and set(names.WEIGHT_ROLES) <= set(ROLES)


def test_the_store_refuses_a_name_the_grammar_refuses(tmp_path):
    import numpy as np

    from storage import IterationRecord, RunInfo, RunWriter, TensorRecord, open_engine

    engine = open_engine(tmp_path / "runs.db")
    writer = RunWriter.begin(engine, RunInfo(name="bad name"))
    bad = TensorRecord("conv\n.out", "activation", np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="control character"):
        writer.add_iteration(IterationRecord(1, 0.1, [bad], []))
    good = TensorRecord("relu.out.grad@add", "activation_grad", np.ones(2, np.float32))
    writer.add_iteration(IterationRecord(1, 0.1, [good], []))
    writer.finish()
    engine.dispose()
