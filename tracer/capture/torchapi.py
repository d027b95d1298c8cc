"""The private torch entry points the capture uses, each behind one function that
says None when this torch release lacks it; the callers then take a fallback built
from public APIs and the capture's own state (tests run both paths).

- `torch._C._current_graph_task_id()`: whether autograd's engine is running a
  backward in this thread (then a module call is activation checkpointing's
  recomputation, not the forward). Fallback: `Capture` remembers that a gradient
  hook fired since the model's forward started (`ModuleHooks._in_backward`).
- `torch.overrides._get_current_function_mode_stack()`: whether our
  TorchFunctionMode is the innermost one, so that leaving it pops ours and not a
  mode the user entered inside forward and left entered. Fallback: ours is taken
  to be innermost, which a `with` block of the user's always restores.

`Tensor._version` (the in-place version counter that autograd checks saved
tensors against) is read directly: in-place ops cannot be told apart without it.
"""

from __future__ import annotations

import torch
import torch.overrides

# What this torch release provides (None: absent). Read once; tests set them to None
# to run the fallbacks, as on a release without them.
CURRENT_GRAPH_TASK_ID = getattr(torch._C, "_current_graph_task_id", None)
FUNCTION_MODE_STACK = getattr(torch.overrides, "_get_current_function_mode_stack", None)


def graph_task_running() -> bool | None:
    """Whether autograd's engine runs a backward in this thread; None: torch cannot say."""
    if CURRENT_GRAPH_TASK_ID is None:
        return None
    try:
        return CURRENT_GRAPH_TASK_ID() != -1
    except Exception:
        return None


def mode_is_innermost(mode) -> bool | None:
    """Whether `mode` is the innermost active TorchFunctionMode; None: torch cannot say."""
    stack = _mode_stack()
    return None if stack is None else bool(stack) and stack[-1] is mode


def mode_is_active(mode) -> bool | None:
    """Whether `mode` is anywhere on the TorchFunctionMode stack; None: torch cannot say."""
    stack = _mode_stack()
    return None if stack is None else mode in stack


def _mode_stack() -> list | None:
    if FUNCTION_MODE_STACK is None:
        return None
    try:
        return list(FUNCTION_MODE_STACK())
    except Exception:
        return None
