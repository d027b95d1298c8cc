"""What if: one stored iteration recomputed with an edited learning rate, torch-free.

Arrays in, arrays out. The forward pass, the loss and the backward pass of an
iteration do not depend on its learning rate, so an edited learning rate changes
only the update: w' = w - eta d, with d the stored gradient (plain SGD) or the
stored momentum buffer (SGD with momentum: the buffer does not depend on eta
either). Every recomputed tensor comes with the stored one, so a page can mark
what changed and by how much. Editing one input or weight element (a full
forward and backward recompute) is not here yet: `NotAvailable` says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .records import IterationRecord


class NotAvailable(LookupError):
    """This what-if cannot be computed for this run; the message says why."""


@dataclass
class Changed:
    name: str  # "fc.weight.next" or "fc.weight.update"
    stored: np.ndarray
    recomputed: np.ndarray

    @property
    def difference(self) -> np.ndarray:
        return self.recomputed.astype(np.float64) - self.stored.astype(np.float64)

    @property
    def max_abs_diff(self) -> float:
        diff = self.difference
        return float(np.abs(diff).max()) if diff.size else 0.0


def with_learning_rate(
    record: IterationRecord, optimizer: str, settings: Mapping[str, object], lr: float
) -> list[Changed]:
    """The iteration's update recomputed with learning rate `lr`: w' and w' - w per parameter."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise NotAvailable(f"the learning rate must be a positive number, not {lr!r}")
    if optimizer != "SGD":
        raise NotAvailable(
            f"what-if is available for SGD runs, not {optimizer or 'this optimizer'}"
        )
    if settings.get("weight_decay") or settings.get("maximize") or settings.get("nesterov"):
        raise NotAvailable(
            "what-if is not available for SGD with weight decay, Nesterov or maximize"
        )
    arrays = {t.name: t.array for t in record.tensors if not t.truncated}
    momentum = bool(settings.get("momentum"))
    out: list[Changed] = []
    eta = np.float32(lr)
    for name in [t.name for t in record.tensors if t.name.endswith(".next")]:
        param = name.removesuffix(".next")
        direction = f"{param}.state.momentum_buffer" if momentum else f"{param}.grad"
        if param not in arrays or direction not in arrays or name not in arrays:
            raise NotAvailable(f"{param} is not stored whole in this iteration")
        w = arrays[param].astype(np.float32)
        new = w - eta * arrays[direction].astype(np.float32)  # (same shape as w)
        out.append(Changed(name, arrays[name], new))
        if f"{param}.update" in arrays:
            out.append(Changed(f"{param}.update", arrays[f"{param}.update"], new - w))
    if not out:
        raise NotAvailable("this iteration stores no weight update")
    return out
