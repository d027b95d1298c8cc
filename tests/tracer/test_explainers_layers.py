"""Property tests: every layer explainer, over many shapes and settings, through the
real tracer and store, agrees with PyTorch's forward output and autograd's gradients.

Each example builds a one-layer model (plus MSELoss against a random target, so
that the upstream gradient is dense and uneven), traces one or two SGD
iterations, and checks the stored steps.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_explainers_harness import assert_verified, layer_types, stored, titles, trace_run
from torch import nn

EXAMPLES = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def db_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("explainers")


def _run(db_dir, model, x, *, seed, iterations=1, optimizer=True, zeros=0.0):
    """Trace `model` on x with MSELoss against a random target; returns the records."""
    gen = torch.Generator().manual_seed(seed)
    if zeros:
        x = x * (torch.rand(x.shape, generator=gen) >= zeros)  # exact zeros at random places
    with torch.no_grad():
        target = torch.randn(model(x).shape, generator=gen)
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.05)
        if optimizer and list(model.parameters())
        else None
    )
    criterion = nn.MSELoss()
    records = trace_run(model, criterion, [(x, target)] * iterations, db_dir / "runs.db", opt)
    assert_verified(records, layer_types(model, criterion))
    return records


def _data(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- convolution


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = groups > 1 and draw(st.booleans())
    cin = groups * (1 if depthwise else draw(st.integers(1, 2)))
    cout = cin * draw(st.integers(1, 2)) if depthwise else groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    kind = draw(st.sampled_from(["int", "int", "valid", "same"]))
    if kind == "same":
        sh = sw = 1  # PyTorch: padding='same' needs stride 1
        padding = "same"
    elif kind == "valid":
        padding = "valid"
    else:
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = draw(st.integers(dh * (kh - 1) + 1, dh * (kh - 1) + 5)) + 2  # >= 3: reflect padding fits
    w = draw(st.integers(dw * (kw - 1) + 1, dw * (kw - 1) + 5)) + 2
    n = draw(st.integers(1, 4))
    bias = draw(st.booleans())
    conv = dict(
        in_channels=cin,
        out_channels=cout,
        kernel_size=(kh, kw),
        stride=(sh, sw),
        padding=padding,
        dilation=(dh, dw),
        groups=groups,
        bias=bias,
        padding_mode=mode,
    )
    return conv, (n, cin, h, w), draw(st.integers(0, 2**16))


@EXAMPLES
@given(conv_cases())
def test_conv2d_matches_pytorch(db_dir, case):
    kwargs, shape, seed = case
    torch.manual_seed(seed)
    conv = nn.Conv2d(**kwargs)
    records = _run(db_dir, nn.Sequential(conv), _data(seed, *shape), seed=seed, iterations=2)
    record = records[-1]
    assert titles(record, "0", "forward") == [
        "Unfold input patches (im2col)",
        "Convolution as one matrix product",
        "Reshape to the output feature map",
    ]
    backward = titles(record, "0", "backward")
    assert (
        backward[0] == "Gradient of the kernel" and backward[-1] == "Gradient of the input (col2im)"
    )
    assert ("Gradient of the bias" in backward) == kwargs["bias"]
    n, oc = shape[0], kwargs["out_channels"]
    out = stored(record, "0.out")
    assert stored(record, "0.Y_col").shape == (n * out.shape[2] * out.shape[3], oc)
    kh, kw = kwargs["kernel_size"]
    assert stored(record, "0.X_col").shape[1] == shape[1] * kh * kw
    for name in ("0.W_flat", "0.dY_col", "0.dX_col"):
        record.tensor(name)


# ---------------------------------------------------------------- pooling


@st.composite
def max_pool_cases(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    ceil = draw(st.booleans())
    h = draw(st.integers(d[0] * (k[0] - 1) + 1, 8))
    w = draw(st.integers(d[1] * (k[1] - 1) + 1, 8))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w)
    ties = draw(st.booleans())
    return (
        dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil),
        shape,
        ties,
        draw(st.integers(0, 2**16)),
    )


@EXAMPLES
@given(max_pool_cases())
def test_maxpool2d_matches_pytorch(db_dir, case):
    kwargs, shape, ties, seed = case
    x = _data(seed, *shape)
    if ties:
        x = torch.round(x)  # many equal values inside windows: the first maximum must win
    records = _run(db_dir, nn.Sequential(nn.MaxPool2d(**kwargs)), x, seed=seed)
    record = records[0]
    assert titles(record, "0", "forward") == [
        "Max pooling: each window, its maximum and where it is"
    ]
    assert titles(record, "0", "backward") == [
        "Max pooling backward: route to the argmax, accumulate overlaps"
    ]
    out = stored(record, "0.out")
    assert stored(record, "0.argmax").shape == out.shape
    # Every output routes to exactly one input: the route counts add up to the outputs.
    assert stored(record, "0.route_count").sum() == out.size


@st.composite
def avg_pool_cases(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    kwargs = dict(
        kernel_size=k,
        stride=s,
        padding=p,
        ceil_mode=draw(st.booleans()),
        count_include_pad=draw(st.booleans()),
        divisor_override=draw(st.sampled_from([None, None, 1, 3, 7])),
    )
    shape = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 3)),
        draw(st.integers(k[0], 8)),
        draw(st.integers(k[1], 8)),
    )
    return kwargs, shape, draw(st.integers(0, 2**16))


@EXAMPLES
@given(avg_pool_cases())
def test_avgpool2d_matches_pytorch(db_dir, case):
    kwargs, shape, seed = case
    records = _run(db_dir, nn.Sequential(nn.AvgPool2d(**kwargs)), _data(seed, *shape), seed=seed)
    record = records[0]
    assert titles(record, "0", "forward") == ["Average pooling as matrix products"]
    assert titles(record, "0", "backward") == ["Average pooling backward"]
    out = stored(record, "0.out")
    assert stored(record, "0.R_h").shape == (out.shape[2], shape[2])
    assert stored(record, "0.R_w").shape == (out.shape[3], shape[3])
    assert stored(record, "0.divisor").shape == out.shape[2:]


@st.composite
def adaptive_cases(draw):
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    out = (draw(st.one_of(st.none(), st.integers(1, 9))), draw(st.integers(1, 9)))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w)
    return out, shape, draw(st.booleans()), draw(st.integers(0, 2**16))


@EXAMPLES
@given(adaptive_cases())
def test_adaptive_pooling_matches_pytorch(db_dir, case):
    out, shape, use_max, seed = case
    layer = nn.AdaptiveMaxPool2d(out) if use_max else nn.AdaptiveAvgPool2d(out)
    x = _data(seed, *shape)
    records = _run(db_dir, nn.Sequential(layer), torch.round(x) if use_max else x, seed=seed)
    y = stored(records[0], "0.out")
    assert y.shape[2:] == (shape[2] if out[0] is None else out[0], out[1])


# ---------------------------------------------------------------- linear, flatten


@st.composite
def linear_cases(draw):
    fin, fout = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    lead = draw(st.sampled_from([(1,), (2,), (4,), (2, 3)]))
    return fin, fout, draw(st.booleans()), lead, draw(st.integers(0, 2**16))


@EXAMPLES
@given(linear_cases())
def test_linear_matches_pytorch(db_dir, case):
    fin, fout, bias, lead, seed = case
    torch.manual_seed(seed)
    records = _run(
        db_dir,
        nn.Sequential(nn.Linear(fin, fout, bias=bias)),
        _data(seed, *lead, fin),
        seed=seed,
        iterations=2,
    )
    backward = titles(records[-1], "0", "backward")
    assert backward == ["Gradient of the weights"] + (["Gradient of the bias"] if bias else []) + [
        "Gradient of the input"
    ]


@EXAMPLES
@given(st.integers(0, 3), st.integers(-1, 3), st.integers(1, 3), st.integers(0, 2**16))
def test_flatten_matches_pytorch(db_dir, start, end, n, seed):
    if end != -1 and end < start:
        start, end = end, start
    shape = (n, 2, 3, 2)
    records = _run(db_dir, nn.Sequential(nn.Flatten(start, end)), _data(seed, *shape), seed=seed)
    assert titles(records[0], "0", "forward") == ["Flatten"]
    assert titles(records[0], "0", "backward") == ["Unflatten the gradient"]


# ---------------------------------------------------------------- activations


ACTIVATIONS = [
    lambda: nn.ReLU(),
    lambda: nn.ReLU(inplace=True),
    lambda: nn.LeakyReLU(0.1),
    lambda: nn.LeakyReLU(0.3),
    lambda: nn.ReLU6(),
    lambda: nn.Hardtanh(-0.5, 0.5),
    lambda: nn.Sigmoid(),
    lambda: nn.Tanh(),
    lambda: nn.ELU(alpha=0.7),
    lambda: nn.SiLU(),
    lambda: nn.GELU(),
    lambda: nn.GELU(approximate="tanh"),
    lambda: nn.Softplus(beta=2.0, threshold=1.0),
    lambda: nn.PReLU(),
    lambda: nn.PReLU(3),
    lambda: nn.Identity(),
]


@EXAMPLES
@given(
    st.integers(0, len(ACTIVATIONS) - 1),
    st.sampled_from([(4,), (2, 3), (2, 3, 4), (1, 3, 2, 2)]),
    st.sampled_from([0.0, 0.3]),
    st.floats(0.5, 8.0),
    st.integers(0, 2**16),
)
def test_activations_match_pytorch(db_dir, which, shape, zeros, spread, seed):
    layer = ACTIVATIONS[which]()
    if (
        isinstance(layer, nn.PReLU)
        and layer.num_parameters > 1
        and (len(shape) < 2 or shape[1] != 3)
    ):
        shape = (2, 3)
    # The preceding Linear-free model sees exact zeros (the kinks) and large |z| (saturation).
    records = _run(
        db_dir, nn.Sequential(layer), _data(seed, *shape) * spread, seed=seed, zeros=zeros
    )
    record = records[0]
    assert len(titles(record, "0", "forward")) == 1
    assert titles(record, "0", "backward")[-1].endswith("backward")
    if not isinstance(layer, (nn.ReLU, nn.PReLU)):
        record.tensor("0.slope")  # the local derivative f'(Z) is stored


@EXAMPLES
@given(
    st.sampled_from([(5,), (2, 4), (2, 3, 4), (2, 3, 2, 2)]),
    st.data(),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_softmax_and_log_softmax_match_pytorch(db_dir, shape, data, log, seed):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    layer = nn.LogSoftmax(dim=dim) if log else nn.Softmax(dim=dim)
    records = _run(db_dir, nn.Sequential(layer), _data(seed, *shape) * 3, seed=seed)
    backward = titles(records[0], "0", "backward")
    assert backward == (
        ["LogSoftmax backward"] if log else ["Softmax backward (Jacobian-vector product)"]
    )


# ---------------------------------------------------------------- dropout


@EXAMPLES
@given(
    st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(1, 4),
    st.integers(0, 2**16),
)
def test_dropout_matches_pytorch(db_dir, p, training, channels, relu_first, n, seed):
    torch.manual_seed(seed)
    dropout = nn.Dropout2d(p) if channels else nn.Dropout(p)
    layers = ([nn.ReLU()] if relu_first else []) + [dropout]
    model = nn.Sequential(*layers)
    model.train(training)
    records = _run(db_dir, model, _data(seed, n, 3, 3, 2), seed=seed)
    name = str(len(layers) - 1)
    forward = titles(records[0], name, "forward")
    if training and p > 0:
        assert forward == ["Dropout (training): mask and scaling"]
        mask = stored(records[0], f"{name}.mask")
        assert set(mask.reshape(-1).tolist()) <= {0.0, 1.0}
        if p == 1.0:
            assert not mask.any()
    else:
        assert forward[0].startswith("Dropout (") and forward[0].endswith("identity)")


# ---------------------------------------------------------------- batch norm


@st.composite
def batchnorm_cases(draw):
    dims = draw(st.sampled_from([1, 2, 2, 2]))
    c = draw(st.integers(1, 3))
    n = draw(st.integers(1, 4))
    if dims == 2:
        shape = (n, c, draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    else:
        shape = draw(st.sampled_from([(n, c), (n, c, 3)]))
    kwargs = dict(
        affine=draw(st.booleans()),
        track_running_stats=draw(st.booleans()),
        momentum=draw(st.sampled_from([0.1, 0.5, None])),
        eps=draw(st.sampled_from([1e-5, 1e-3])),
    )
    training = draw(st.booleans())
    return dims, c, shape, kwargs, training, draw(st.integers(0, 2**16))


@EXAMPLES
@given(batchnorm_cases())
def test_batchnorm_matches_pytorch(db_dir, case):
    dims, c, shape, kwargs, training, seed = case
    values_per_channel = shape[0] * (
        shape[2] * shape[3] if len(shape) == 4 else (shape[2] if len(shape) == 3 else 1)
    )
    if (training or not kwargs["track_running_stats"]) and values_per_channel < 3:
        # PyTorch refuses one value per channel; with two, x̂ = ±1 and dL/dx is 0 up to
        # epsilon, so only PyTorch's float32 rounding would be compared.
        shape = (3 if values_per_channel == 1 else shape[0] + 1,) + shape[1:]
    torch.manual_seed(seed)
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(c, **kwargs)
    with torch.no_grad():
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        if bn.track_running_stats:
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    bn.train(training)
    x = _data(seed, *shape) * 2 + 0.5
    records = _run(db_dir, nn.Sequential(bn), x, seed=seed, iterations=2)
    record = records[-1]
    forward = titles(record, "0", "forward")
    batch_stats = training or not kwargs["track_running_stats"]
    assert (forward[0] == "Batch statistics per channel") == batch_stats
    assert ("Scale and shift" in forward) == kwargs["affine"]
    updates = training and kwargs["track_running_stats"]
    assert ("Update the running statistics" in forward) == updates
    if updates:
        assert stored(record, "0.running_mean").shape == (c,)
    backward = titles(record, "0", "backward")
    assert ("Gradients of gamma and beta" in backward) == kwargs["affine"]
    assert backward[-1].startswith("Gradient of the input")
