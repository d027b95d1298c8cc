"""Hugging Face `Trainer`: trace a `trainer.train()` with one callback.

    from tracer.huggingface import CnnvizCallback
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[CnnvizCallback("runs.db", every=10)])
    trainer.train()

Each optimizer step is an iteration, stored under the Trainer's step number
(`state.global_step` after the step, as its logs count); every `every`-th one is
traced. The loss is the `loss` the model returns (averaged over the micro-batches
of a step under gradient accumulation). A loss computed inside the model's forward
(`F.cross_entropy(logits, labels)`) is explained like `nn.CrossEntropyLoss`. Needs
the `transformers` package with `accelerate` (`pip install transformers accelerate`).

The Trainer has no event for a `train()` that raises: call `callback.close(error=exc)`
in your `except` so that the run is marked failed and the model loses its hooks
(otherwise the run is closed as `interrupted` when the interpreter exits). SIGTERM
ends the run `interrupted` and the process with status 143 (see `tracer.signals`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import TrainerCallback

from .session import Trace


def _torch_optimizer(optimizer):
    """The torch optimizer inside accelerate's wrapper (its step hooks fire)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class CnnvizCallback(TrainerCallback):
    """Opens a `Trace` when training begins, brackets each optimizer step with
    `begin` / `end`, and closes it when training ends."""

    def __init__(self, db: str | os.PathLike | None = None, *, every: int = 1, **options: Any):
        """`options` go to `Trace` (name, seed, criterion, max_elements, layers, explain...)."""
        self.db = db
        self.every = every
        self.options = options
        self.trace: Trace | None = None
        self._losses: list[torch.Tensor] = []
        self._handle = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        options = {"model_name": type(model).__name__, "seed": args.seed, **self.options}
        criterion = options.pop("criterion", None)
        self.trace = Trace(
            model, _torch_optimizer(optimizer), criterion, db=self.db, every=self.every, **options
        ).start()
        self._handle = model.register_forward_hook(self._take_loss)

    def _take_loss(self, module, args, output) -> None:
        """The model's `loss` output (a ModelOutput, a dict or a tuple's first element)."""
        if self.trace is None or not self.trace.in_iteration or not module.training:
            return
        loss = output.get("loss") if isinstance(output, dict) else None
        if loss is None and isinstance(output, (tuple, list)) and output:
            loss = output[0]
        if torch.is_tensor(loss) and loss.numel() == 1:
            self._losses.append(loss.detach())

    def on_step_begin(self, args, state, control, **kwargs):
        if self.trace is not None:
            self._losses = []
            self.trace.begin(step=state.global_step + 1)

    def on_step_end(self, args, state, control, **kwargs):
        if self.trace is None or not self.trace.in_iteration:
            return
        loss = None
        if self._losses:
            loss = float(torch.stack([t.float().reshape(()) for t in self._losses]).mean())
        self.trace.end(loss=loss)

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self, error: BaseException | None = None) -> None:
        """Close the trace: `on_train_end` does; the Trainer has no event for a failed
        `train()`, so call `callback.close(error=exc)` in your `except` (the run is
        then marked failed and the model left without hooks)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.trace is not None:
            self.trace.close(error=error)
