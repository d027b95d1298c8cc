"""cnnviz tracer: turn a PyTorch training run into verified matrix-form records.

    from tracer import trace
    with trace(model, optimizer, criterion, db="runs.db") as t:
        for x, y in batches:
            with t.iteration():
                ...  # your usual zero_grad / forward / loss / backward / step

Attributes are imported lazily so that `cnnviz runs` starts without torch.
"""

from __future__ import annotations

__all__ = ["Trace", "trace"]


def __getattr__(name: str):
    if name in __all__:
        from . import session

        return getattr(session, name)
    raise AttributeError(name)
