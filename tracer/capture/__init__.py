"""Hooks that capture one training iteration without changing the user's loop.

- `core`: `Capture`, its lifecycle and how tensors are named;
- `modules`: module hooks (leaf modules, containers, the root model);
- `functional`: functional calls in a forward, through a `TorchFunctionMode`;
- `optimizer`: optimizer step pre/post hooks and per-parameter gradient hooks;
- `records`: the plain-data records an iteration is captured into.

Handles are kept and removed in `Capture.detach`.
"""

from .core import Capture
from .records import CapturedCall, CapturedIteration, CapturedValue, iter_tensors, to_numpy

__all__ = [
    "Capture",
    "CapturedCall",
    "CapturedIteration",
    "CapturedValue",
    "iter_tensors",
    "to_numpy",
]
