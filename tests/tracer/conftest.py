"""Tracer tests run torch on one thread: the tensors are tiny, and two test workers
share two cores, so a thread pool only adds wake-up latency."""

from __future__ import annotations

import pytest

from tracer.train import one_torch_thread


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield
