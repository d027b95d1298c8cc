"""Optimizer and gradient hooks: optimizer step pre/post hooks catch
parameters, their .grad and the optimizer's state around the update, and a
hook on each parameter catches what this iteration's backward passes add to
its .grad (gradient accumulation).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .records import to_numpy
from .spec import optimizer_spec, plain_group

CLIPPED = (
    "the gradients were scaled between backward and optimizer.step() (gradient "
    "clipping): the update steps use the scaled .grad, the backward steps check "
    "the gradient backward computed"
)


def settle_grads(cap) -> None:
    """Work out from a captured iteration's gradients whether they were clipped
    (`grad_scale`) or accumulated (`grads_at_start`): NumPy over the copies, which
    the worker does (`Capture.finish(settle=False)`, `CapturedIteration.settle`)."""
    scale = grad_scale(cap.grad_increments, cap.param_grads)
    if scale is not None and CLIPPED not in cap.problems:
        cap.problems.append(CLIPPED)
    cap.grads_at_start = grads_before(cap.grad_increments, cap.param_grads, scale)
    cap.grad_scale = scale
    cap.settled = True


def _close(a: float, b: float, rtol: float) -> bool:
    """np.isclose(a, b, rtol) of two finite numbers (atol 1e-8), without NumPy's overhead."""
    return abs(a - b) <= 1e-8 + rtol * abs(b)


def grad_scale(increments: dict, param_grads: dict) -> float | None:
    """The factor 0 < c < 1 when, for every parameter, .grad at the step was c times
    what this iteration's backward computed: the gradients were clipped
    (clip_grad_norm_, a trainer's max_grad_norm) or scaled between backward and
    optimizer.step(). None when they were not, or not all by one factor."""
    factor = None
    for name, increment in increments.items():
        total = param_grads.get(name)
        if total is None or total.shape != increment.shape or increment.dtype.kind != "f":
            return None
        if np.array_equal(total, increment):
            # The common case, .grad as backward left it: c = 1 without a float64 pass.
            if not np.isfinite(total).all():
                return None  # a diverged gradient (NaN/inf) is no clipping factor
            if not total.any():
                continue
            c = 1.0
        else:
            inc, tot = increment.astype(np.float64), total.astype(np.float64)
            if not (np.isfinite(inc).all() and np.isfinite(tot).all()):
                return None  # a diverged gradient (NaN/inf) is no clipping factor
            norm = float(np.sum(inc * inc))
            if norm == 0.0:
                continue
            c = float(np.sum(tot * inc)) / norm
            scale = max(float(np.max(np.abs(tot))), 1e-30)
            if not np.allclose(tot, c * inc, rtol=1e-5, atol=1e-6 * scale):
                return None
        if factor is not None and not _close(c, factor, 1e-4):
            return None
        factor = c if factor is None else factor
    if factor is None or not 0.0 < factor < 1.0 or _close(factor, 1.0, 1e-6):
        return None  # clipping only shrinks; c > 1 is accumulation (the same batch twice)
    return factor


def grads_before(
    increments: dict, param_grads: dict, scale: float | None = None
) -> dict[str, np.ndarray]:
    """What .grad held before this iteration's backward added to it, per parameter."""
    if scale is not None:
        return {}  # clipped, not accumulated: nothing was there before
    before = {}
    for name, increment in increments.items():
        total = param_grads.get(name)
        if (
            total is not None
            and total.shape == increment.shape
            and not np.array_equal(
                total, increment, equal_nan=True
            )  # NaN grads: diverged, not accumulated
        ):
            before[name] = total - increment
    return before


class OptimizerHooks:
    """The part of `Capture` that watches parameters and the optimizer."""

    def _increment_hook(self, name: str) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            self._backward_seen = True
            self._backward_in_step = self._backward_in_step or self._stepping
            if not self.active:
                return
            array = self._copy(grad)
            if array is None:
                return
            previous = self._grad_increments.get(name)
            if previous is not None:
                self._copies.wait()  # the sum reads both copies
            self._grad_increments[name] = array if previous is None else previous + array

        return hook

    def _store_param_grad(self, name: str, grad: torch.Tensor) -> None:
        array = self._copy(grad)
        if array is not None:
            self._param_grads[name] = array

    def _step_pre_hook(self, optimizer, args, kwargs):
        if not self.active:
            return
        with self._ours("before optimizer.step()"):
            self._steps_taken += 1
            if self._stepped:
                return  # a second step in one iteration: keep the values before the first
            self._stepped = True
            self._stepping = True
            self._optimizer_spec = optimizer_spec(optimizer)
            for group in optimizer.param_groups:
                settings = plain_group(group)
                for p in group["params"]:
                    name = self.param_names.get(id(p))
                    if name is None:
                        continue
                    self._param_groups[name] = settings
                    if p.grad is not None:
                        self._store_param_grad(name, p.grad)
                    if name not in self._params and (array := self._copy(p)) is not None:
                        self._params[name] = array
                    self._state_before[name] = _state(optimizer, p, self._copy)

    def _step_post_hook(self, optimizer, args, kwargs):
        if not self.active:
            return
        with self._ours("after optimizer.step()"):
            # optimizer.step(closure) runs forward and backward inside the step (LBFGS,
            # PyTorch Lightning): the gradients it used are there only now.
            regrad = self._stepping and self._backward_in_step
            self._stepping = False
            for group in optimizer.param_groups:
                for p in group["params"]:
                    name = self.param_names.get(id(p))
                    if name is None:
                        continue
                    if regrad and p.grad is not None:
                        self._store_param_grad(name, p.grad)
                    array = self._copy(p)
                    if array is not None:
                        self._params_after[name] = array
                    self._state_after[name] = _state(optimizer, p, self._copy)


def _state(
    optimizer: torch.optim.Optimizer, p: torch.Tensor, copy: Callable = to_numpy
) -> dict[str, np.ndarray]:
    state = {}
    for key, value in optimizer.state.get(p, {}).items():
        if torch.is_tensor(value):
            array = copy(value)
        elif isinstance(value, (bool, int, float)):
            array = np.asarray(value)
        else:
            continue
        if array is not None:
            state[str(key)] = array
    return state
