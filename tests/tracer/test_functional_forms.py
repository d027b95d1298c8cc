"""A layer type is one module: its functional form is declared beside its explainer
(`@register(nn.GELU, functional=[F.gelu])`), and every registered layer type that
has a functional form in torch.nn.functional is explained when called that way."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tracer.assemble import build_iteration
from tracer.capture import Capture
from tracer.explainers import explainer_for, functional_forms, registered_types

# Registered layer types whose functional form is stored raw on purpose.
NOT_DECLARED = {
    # F.batch_norm takes the running statistics as arguments and updates them in
    # place; the explainer reads them as the module's buffers before and after.
    "batch_norm": {nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d},
}
# Functional names that do not follow the module's name.
ALIASES = {
    nn.BCEWithLogitsLoss: "binary_cross_entropy_with_logits",
    nn.BCELoss: "binary_cross_entropy",
}


def _key(name: str) -> str:
    return name.lower().replace("_", "")


def _functional_names(module_type: type) -> set[str]:
    """Names in torch.nn.functional that compute what `module_type` computes."""
    wanted = {_key(module_type.__name__), _key(module_type.__name__).removesuffix("loss")}
    found = {n for n in dir(F) if not n.startswith("_") and _key(n) in wanted}
    if module_type in ALIASES:
        found.add(ALIASES[module_type])
    return {n for n in found if callable(getattr(F, n))}


def test_every_registered_layer_with_a_functional_form_declares_it():
    declared = functional_forms()
    checked = 0
    for module_type in registered_types():
        if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
            continue  # optimizers
        for name in _functional_names(module_type):
            if module_type in NOT_DECLARED.get(name, set()):
                continue
            checked += 1
            func = getattr(F, name)
            assert declared.get(func) is module_type, f"F.{name} is not declared for {module_type}"
    assert checked >= 30


def test_functional_forms_are_declared_once():
    with pytest.raises(ValueError, match="already the functional form"):
        from tracer.explainers import Explainer, register

        @register(nn.Tanh, functional=[F.relu])
        class Clash(Explainer):
            pass

    assert explainer_for(nn.Tanh()).__class__.__name__ == "TanhExplainer"  # left as it was


class Holder(nn.Module):
    """Parameters for the calls that need them; `forward` calls one functional form."""

    def __init__(self, call):
        super().__init__()
        self.call = call
        self.child = nn.Identity()  # a container: calls in its forward are recorded
        self.w = nn.Parameter(torch.randn(3, 4) * 0.5)
        self.b = nn.Parameter(torch.randn(3) * 0.1)
        self.kernel = nn.Parameter(torch.randn(2, 2, 3, 3) * 0.3)
        self.slope = nn.Parameter(torch.tensor([0.2, -0.1]))

    def forward(self, x, x4, labels, targets):
        return self.call(self, x, x4, labels, targets)


def _score(x):
    return (x * torch.linspace(-1, 1, x.numel()).reshape(x.shape)).sum()


# One call of every functional form in torch.nn.functional; the test below checks
# that this table covers every declared one.
CALLS = {
    "relu": lambda m, x, x4, lb, t: F.relu(x),
    "relu_": lambda m, x, x4, lb, t: F.relu_(x * 1),
    "leaky_relu": lambda m, x, x4, lb, t: F.leaky_relu(x, 0.2),
    "leaky_relu_": lambda m, x, x4, lb, t: F.leaky_relu_(x * 1, 0.2),
    "hardtanh_": lambda m, x, x4, lb, t: F.hardtanh_(x * 1, -0.5, 0.5),
    "elu_": lambda m, x, x4, lb, t: F.elu_(x * 1, 0.7),
    "hardtanh": lambda m, x, x4, lb, t: F.hardtanh(x, -0.5, 0.5),
    "relu6": lambda m, x, x4, lb, t: F.relu6(x * 8),
    "sigmoid": lambda m, x, x4, lb, t: F.sigmoid(x),
    "tanh": lambda m, x, x4, lb, t: F.tanh(x),
    "elu": lambda m, x, x4, lb, t: F.elu(x, 0.7),
    "silu": lambda m, x, x4, lb, t: F.silu(x),
    "gelu": lambda m, x, x4, lb, t: F.gelu(x, approximate="tanh"),
    "softplus": lambda m, x, x4, lb, t: F.softplus(x, beta=2.0),
    "prelu": lambda m, x, x4, lb, t: F.prelu(x4, m.slope),
    "linear": lambda m, x, x4, lb, t: F.linear(x, m.w, m.b),
    "conv2d": lambda m, x, x4, lb, t: F.conv2d(x4, m.kernel, padding=1),
    "dropout": lambda m, x, x4, lb, t: F.dropout(x, 0.3, training=True),
    "dropout1d": lambda m, x, x4, lb, t: F.dropout1d(x4[:, :, 0], 0.5),
    "dropout2d": lambda m, x, x4, lb, t: F.dropout2d(x4, 0.5),
    "dropout3d": lambda m, x, x4, lb, t: F.dropout3d(x4.unsqueeze(2), 0.5),
    "softmax": lambda m, x, x4, lb, t: F.softmax(x, dim=1),
    "log_softmax": lambda m, x, x4, lb, t: F.log_softmax(x, dim=1),
    "max_pool2d": lambda m, x, x4, lb, t: F.max_pool2d(x4, 2),
    "avg_pool2d": lambda m, x, x4, lb, t: F.avg_pool2d(x4, 2),
    "adaptive_max_pool2d": lambda m, x, x4, lb, t: F.adaptive_max_pool2d(x4, 1),
    "adaptive_avg_pool2d": lambda m, x, x4, lb, t: F.adaptive_avg_pool2d(x4, (2, 1)),
    "cross_entropy": lambda m, x, x4, lb, t: F.cross_entropy(x, lb),
    "nll_loss": lambda m, x, x4, lb, t: F.nll_loss(x.log_softmax(1), lb, reduction="sum"),
    "mse_loss": lambda m, x, x4, lb, t: F.mse_loss(x, t),
    "l1_loss": lambda m, x, x4, lb, t: F.l1_loss(x, t),
    "smooth_l1_loss": lambda m, x, x4, lb, t: F.smooth_l1_loss(x, t, beta=0.5),
    "huber_loss": lambda m, x, x4, lb, t: F.huber_loss(x, t, delta=0.5),
    "binary_cross_entropy_with_logits": lambda m, x, x4, lb, t: F.binary_cross_entropy_with_logits(
        x, t.sigmoid()
    ),
    "binary_cross_entropy": lambda m, x, x4, lb, t: F.binary_cross_entropy(
        x.sigmoid(), t.sigmoid()
    ),
}


def test_every_declared_functional_form_has_a_call_below():
    in_f = {
        name
        for func in functional_forms()
        if getattr(F, (name := getattr(func, "__name__", "")), None) is func
    }
    assert in_f - set(CALLS) == set()


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_functional_form_is_explained_and_verified(name):
    torch.manual_seed(0)
    model = Holder(CALLS[name])
    x = torch.randn(2, 4, requires_grad=True)
    x4 = torch.randn(2, 2, 4, 4, requires_grad=True)
    labels, targets = torch.tensor([1, 3]), torch.randn(2, 4)
    capture = Capture(model, input_grad=True).attach()
    try:
        capture.start()
        out = model(x, x4, labels, targets)
        _score(out).backward()
        captured = capture.finish()
    finally:
        capture.detach()
    record = build_iteration(captured, 1, strict=True, loss_value=0.0)
    func = getattr(F, name)
    calls = [c for c in captured.calls if c.op and c.op.rsplit(".", 1)[-1] == func.__name__]
    assert calls, [c.op for c in captured.calls]
    call = calls[-1]
    assert call.module is not None and call.error is None, (call.kind, call.error)
    # The call holds a plain spec of the equivalent module, named by its registered type.
    assert call.kind == call.module.cls
    assert call.module.type == functional_forms()[func].__name__
    steps = [s for s in record.steps if s.layer == call.name]
    assert {s.phase for s in steps} == {"forward", "backward"}
    assert all(s.verified is not False for s in steps), [(s.title, s.max_abs_diff) for s in steps]
    assert any(s.verified for s in steps)
    assert not [w for w in record.warnings if w.startswith(f"{call.name} ")], record.warnings
