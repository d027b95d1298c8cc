"""Host copies of captured tensors, made without stalling the training loop on CUDA.

On CPU a copy is a synchronous memcpy into a host buffer that is used again once
nothing refers to it any more (`HostBuffers`): a captured iteration's arrays go
back to the pool when the worker has written it and dropped them, and the next
iterations copy into the same, already mapped, memory. Fresh memory for every
copy cost the training thread page faults (about a fifth of a resnet18-cifar
capture) and left the freed copies fragmenting the heap (tens of MiB per
iteration in flight on resnet18-cifar).

On CUDA, `HostCopies.copy(t)` returns at once with a NumPy view of pinned host
memory that the copy has not filled yet:

    current stream:  ... op -> t -> snapshot = t.clone() -> next op (may change t in place) ...
    side stream:                      wait ---------> snapshot -> pinned host (non_blocking) -> event

- the snapshot is a device copy taken on the stream that produced `t`, so an
  in-place op queued after the hook (ReLU(inplace=True), the optimizer's update)
  cannot change what is copied, and the compute stream never waits for the host copy;
- the side stream waits for the snapshot, then copies it into a pinned buffer
  with `non_blocking=True` (an asynchronous DMA that overlaps the kernels that follow);
- `snapshot.record_stream(side)` keeps its device memory from being reused before
  the side stream has read it;
- `wait()` synchronises on the events recorded after the copies: `Capture.finish()`
  calls it before the iteration is handed off (and anything that reads a copy
  during the iteration calls it first), so no array is read before it is filled.
  Pinned buffers come from PyTorch's caching host allocator: a buffer goes back to
  it when the worker drops the array, and the allocator reuses it only after the
  copies recorded on it are done, so the next iteration never writes into memory
  the worker still reads.

Everything here is public torch API. A copy that cannot be made this way (a dtype
NumPy lacks, a quantized tensor...) falls back to the synchronous `to_numpy`.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import torch

from .records import NUMPY_DTYPES, cpu_view, to_numpy

# Smaller copies come from malloc as before: its small blocks are cheap and reused.
POOL_MIN_BYTES = 64 * 1024


class HostBuffers:
    """Host buffers for CPU copies, each used again once nothing refers to it.

    A buffer is an array of one shape and dtype that owns its memory; every view
    made from it (a slice, a reshape, a bounded tensor's first elements) keeps it
    as its base, so its reference count says whether any array made from it is
    still alive anywhere (a queued iteration, a record, a user's reference). Only
    a buffer nothing refers to is reused: the numbers in an array never change
    while anyone can read them. Buffers unused for `keep` iterations are dropped,
    so shapes that come back rarely (a short last batch) do not pile up.
    """

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._by_key: dict[tuple, list[list]] = {}  # (shape, dtype) -> [[buffer, last used]]
        self._iteration = 0
        self._lock = threading.Lock()
        # The reference count of a buffer only the pool holds, as `_unused` sees it.
        self._free = 0
        self._free = max(2, self._count([np.empty(1), 0]))

    @staticmethod
    def _count(entry: list) -> int:
        buffer = entry[0]
        return sys.getrefcount(buffer)

    def copy(self, tensor: torch.Tensor) -> np.ndarray | None:
        """A copy of a CPU tensor in a recycled buffer, or None where `to_numpy` makes
        it (another device or layout, a dtype widened there, a small tensor). The
        tensor is read through `cpu_view`, without a torch operator."""
        source = cpu_view(tensor)
        if source is None or source.nbytes < POOL_MIN_BYTES:
            return None
        key = (source.shape, source.dtype)
        free = self._free
        with self._lock:
            entries = self._by_key.get(key)
            if entries is None:
                entries = self._by_key[key] = []
            for entry in entries:
                if self._count(entry) <= free:
                    entry[1] = self._iteration
                    buffer = entry[0]
                    break
            else:
                buffer = np.empty(source.shape, source.dtype)
                entries.append([buffer, self._iteration])
        np.copyto(buffer, source)
        return buffer

    def next_iteration(self) -> None:
        """Start counting a new iteration; drop the buffers unused for `keep` of them."""
        with self._lock:
            self._iteration += 1
            oldest = self._iteration - self.keep
            free = self._free
            for key in list(self._by_key):
                entries = self._by_key[key]
                entries[:] = [e for e in entries if e[1] >= oldest or self._count(e) > free]
                if not entries:
                    del self._by_key[key]

    def clear(self) -> None:
        with self._lock:
            self._by_key.clear()

    @property
    def nbytes(self) -> int:
        """Bytes in the pool's buffers, used or not."""
        return sum(e[0].nbytes for entries in self._by_key.values() for e in entries)


class HostCopies:
    """Makes the host copies of one capture; asynchronous for CUDA tensors."""

    def __init__(self, *, asynchronous: bool = True):
        self.asynchronous = asynchronous
        self.buffers = HostBuffers()  # the CPU copies' recycled memory
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._events: list[torch.cuda.Event] = []
        self._lock = threading.Lock()  # backward hooks run on autograd's device threads
        self.pending = 0  # copies issued since the last wait()
        self.nbytes = 0  # host bytes copied since the last `take_nbytes()` (the queue's bound)

    def copy(self, tensor: torch.Tensor) -> np.ndarray | None:
        """A host copy of `tensor` (never a view of live memory), or None for a tensor a
        store cannot hold. For a CUDA tensor the array is filled once `wait()` returned."""
        if self.asynchronous and tensor.is_cuda:
            try:
                array = self._copy_async(tensor)
            except Exception:
                array = to_numpy(tensor)
        else:
            try:
                array = self.buffers.copy(tensor)
            except Exception:
                array = None
            if array is None:
                array = to_numpy(tensor)
        if array is not None:
            self.nbytes += array.nbytes  # (a lost update under threads only undercounts a copy)
        return array

    def take_nbytes(self) -> int:
        """The bytes copied since the last call, and start counting again."""
        nbytes, self.nbytes = self.nbytes, 0
        return nbytes

    def _copy_async(self, tensor: torch.Tensor) -> np.ndarray | None:
        t = tensor.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.is_quantized:
            return to_numpy(tensor)
        if t.is_complex():
            return None
        if t.dtype not in NUMPY_DTYPES:  # widened to float32 on the device, as `to_numpy` does
            if not t.dtype.is_floating_point:
                return to_numpy(tensor)
            t = t.float()  # float16, bfloat16, float8: NumPy has no (or no exact) dtype
        device = t.device
        current = torch.cuda.current_stream(device)
        snapshot = t.clone(memory_format=torch.contiguous_format)  # (on `current`)
        host = torch.empty(snapshot.shape, dtype=snapshot.dtype, pin_memory=True)
        side = self._side_stream(device)
        event = torch.cuda.Event()
        with self._lock:
            side.wait_stream(current)
            with torch.cuda.stream(side):
                host.copy_(snapshot, non_blocking=True)
            snapshot.record_stream(side)
            event.record(side)
            self._events.append(event)
            self.pending += 1
        return host.numpy()  # the array keeps `host` (and its pinned block) alive

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream:
        stream = self._streams.get(device)
        if stream is None:
            with self._lock:
                stream = self._streams.get(device)
                if stream is None:
                    stream = self._streams[device] = torch.cuda.Stream(device)
        return stream

    def wait(self) -> None:
        """Block until every copy issued so far is in host memory."""
        with self._lock:
            events, self._events = self._events, []
            self.pending = 0
        for event in events:
            event.synchronize()

    @property
    def streams(self) -> int:
        """Side streams created (0 on CPU: the synchronous path never makes one)."""
        return len(self._streams)
