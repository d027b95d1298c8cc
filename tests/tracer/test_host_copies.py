"""Host copies of captured tensors (`tracer.capture.copies`): synchronous on CPU,
non_blocking into pinned memory on a side stream on CUDA (those tests skip without
a GPU; they run where a device is lent)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tracer.capture import Capture, to_numpy
from tracer.capture.copies import HostCopies

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _step(model, optimizer, x, y):
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()


def _inplace_model() -> nn.Module:
    # The conv output is overwritten by the in-place ReLU after it is captured, and
    # the parameters by the optimizer's in-place update: a copy that read them late
    # would see the new values.
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 4),
    )


def _captured(model, optimizer, x, y, copies: HostCopies):
    capture = Capture(model, optimizer, None).attach()
    capture._copies = copies
    try:
        capture.start()
        _step(model, optimizer, x, y)
        return capture.finish()
    finally:
        capture.detach()


def _arrays(cap) -> dict[str, np.ndarray]:
    out = {f"value:{k}": v.array for k, v in cap.values.items()}
    out |= {f"grad:{k}": v for k, v in cap.grads.items()}
    out |= {f"param:{k}": v for k, v in cap.params.items()}
    out |= {f"param_grad:{k}": v for k, v in cap.param_grads.items()}
    out |= {f"after:{k}": v for k, v in cap.params_after.items()}
    for name, state in cap.state_after.items():
        out |= {f"state:{name}.{k}": v for k, v in state.items()}
    return out


def test_cpu_copies_are_the_synchronous_copies_and_make_no_stream():
    copies = HostCopies()
    t = torch.randn(4, 5)
    a = copies.copy(t)
    np.testing.assert_array_equal(a, to_numpy(t))
    t.add_(1.0)  # a copy, not a view of the tensor
    assert not np.array_equal(a, t.numpy())
    copies.wait()
    assert copies.streams == 0 and copies.pending == 0


def test_to_numpy_copies_every_kind_of_cpu_tensor_without_aliasing_it():
    leaf = torch.randn(3, 4, requires_grad=True)
    cases = {
        "requires grad": leaf * 2,
        "transposed": torch.arange(12.0).reshape(3, 4).t(),
        "strided slice": torch.arange(20.0)[::3],
        "negative view": torch.arange(6.0)._neg_view(),
        "int64": torch.arange(5),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.empty(0, 3),
    }
    for what, tensor in cases.items():
        array = to_numpy(tensor)
        expected = tensor.detach().resolve_neg().clone().numpy()
        assert array.dtype == expected.dtype and array.shape == expected.shape, what
        np.testing.assert_array_equal(array, expected, err_msg=what)
        if tensor.numel():
            assert not np.shares_memory(array, tensor.detach().numpy(force=True)), what
    # Widened where NumPy has no (exact) dtype; nothing for what a store cannot hold.
    half = torch.tensor([1.5, -2.25], dtype=torch.bfloat16)
    assert to_numpy(half).dtype == np.float32
    np.testing.assert_array_equal(to_numpy(half), [1.5, -2.25])
    assert to_numpy(torch.randn(2, dtype=torch.complex64)) is None
    assert to_numpy(torch.empty(2, device="meta")) is None
    sparse = torch.eye(3).to_sparse()
    np.testing.assert_array_equal(to_numpy(sparse), np.eye(3, dtype=np.float32))


def test_cpu_buffers_are_reused_only_once_nothing_refers_to_them():
    copies = HostCopies()
    big = torch.arange(64 * 1024, dtype=torch.float32).reshape(256, 256)  # 256 KiB, pooled
    first = copies.copy(big)
    kept = first.reshape(-1)[:10]  # a view (a bounded tensor's first elements) outlives it
    del first
    second = copies.copy(big + 1)
    assert not np.shares_memory(second, kept)  # the view keeps its buffer in use
    np.testing.assert_array_equal(kept, np.arange(10, dtype=np.float32))
    del kept
    third = copies.copy(big + 2)  # the first buffer is free now: reused, refilled
    np.testing.assert_array_equal(third, (big + 2).numpy())
    assert copies.buffers.nbytes == 2 * big.numel() * 4
    held = torch.from_numpy(third)  # a tensor over the array keeps it too
    del third
    np.testing.assert_array_equal(copies.copy(big + 3), (big + 3).numpy())
    np.testing.assert_array_equal(held.numpy(), (big + 2).numpy())
    # Buffers nobody used for `keep` iterations are dropped.
    for _ in range(copies.buffers.keep + 1):
        copies.buffers.next_iteration()
    assert copies.buffers.nbytes == 2 * big.numel() * 4  # both still referred to
    del held, second
    for _ in range(copies.buffers.keep + 1):
        copies.buffers.next_iteration()
    assert copies.buffers.nbytes == 0


def test_a_cpu_capture_uses_the_synchronous_path():
    torch.manual_seed(0)
    model = _inplace_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 4, (4,))
    copies = HostCopies()
    cap = _captured(model, optimizer, x, y, copies)
    assert copies.streams == 0
    # The conv output as captured is the value before the in-place ReLU changed it.
    assert (cap.values["0.out"].array < 0).any()


@needs_cuda
@pytest.mark.gpu
def test_cuda_copies_snapshot_the_value_before_later_in_place_ops():
    copies = HostCopies()
    t = torch.randn(4096, 4096, device="cuda")
    expected = t.cpu().numpy()
    a = copies.copy(t)
    assert copies.streams == 1 and copies.pending == 1
    for _ in range(20):  # queued on the current stream right after the copy was issued
        t.mul_(2.0).add_(1.0)
    copies.wait()
    np.testing.assert_array_equal(a, expected)
    assert copies.pending == 0


@needs_cuda
@pytest.mark.gpu
def test_cuda_copies_do_not_wait_for_the_kernels_queued_after_them():
    """The copy runs on its side stream beside the compute queued after it: its end
    event is reached before a long kernel queued after it on the compute stream ends."""
    copies = HostCopies()
    t = torch.randn(2048, 2048, device="cuda")
    big = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    copies.copy(t)
    side = copies._streams[t.device]
    copied = torch.cuda.Event()
    copied.record(side)
    for _ in range(30):
        big = big @ big / 4096.0  # long work on the compute stream
    computed = torch.cuda.Event()
    computed.record()
    copied.synchronize()
    assert not computed.query(), "the copy waited for the compute queued after it"
    copies.wait()
    torch.cuda.synchronize()


@needs_cuda
@pytest.mark.gpu
def test_a_cuda_capture_copies_asynchronously_the_same_numbers():
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))
    results = []
    # Two runs compared bit for bit: cuDNN's deterministic kernels.
    deterministic, benchmark = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        for asynchronous in (False, True):
            results.append(_run_on_cuda(x, y, asynchronous))
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = (
            deterministic,
            benchmark,
        )
    sync, asynchronous = results
    assert sync.keys() == asynchronous.keys()
    for key in sync:
        np.testing.assert_array_equal(asynchronous[key], sync[key], err_msg=key)
    assert (asynchronous["value:0.out"] < 0).any()  # before the in-place ReLU


def _run_on_cuda(x, y, asynchronous: bool) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    model = _inplace_model().cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    copies = HostCopies(asynchronous=asynchronous)
    cap = None
    for _ in range(2):  # the second step has optimizer state and reuses pinned memory
        cap = _captured(model, optimizer, x.cuda(), y.cuda(), copies)
    assert copies.streams == (1 if asynchronous else 0)
    return _arrays(cap)
