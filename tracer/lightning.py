"""PyTorch Lightning: trace a `Trainer.fit` with one callback.

    from tracer.lightning import CnnvizCallback
    trainer = L.Trainer(callbacks=[CnnvizCallback("runs.db", every=10)])
    trainer.fit(module, data)

The LightningModule is the traced model: call `self(x)` in `training_step` so that
its forward is the traced forward. Each training batch is an iteration, stored
under its number (1, 2, ...: Lightning's `global_step + 1` without gradient
accumulation); every `every`-th one is traced, with the loss `training_step`
returned. Needs the `lightning` package (`pip install lightning`).

SIGTERM goes to Lightning's own handler, which stops after the current batch and
raises its SIGTERMException; the run is then marked `interrupted` (see
`tracer.signals`) and the process exits as Lightning decides (status 0).
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from .session import Trace


class CnnvizCallback(pl.Callback):
    """Opens a `Trace` when training starts, brackets each training batch with
    `begin` / `end`, and closes it when training ends (or fails)."""

    def __init__(
        self,
        db: str | os.PathLike | None = None,
        *,
        every: int = 1,
        criterion: nn.Module | str | None = None,
        **options: Any,
    ):
        """`criterion`: the loss module, or the name of the LightningModule's attribute
        holding it (e.g. "loss_fn"), so that its step is explained too. `options` go
        to `Trace` (name, seed, max_elements, layers, explain, strict, ...)."""
        super().__init__()
        self.db = db
        self.every = every
        self.criterion = criterion
        self.options = options
        self.trace: Trace | None = None
        self._batches = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizers = trainer.optimizers
        if len(optimizers) > 1:
            raise ValueError("cnnviz traces one optimizer; this LightningModule configures several")
        criterion = self.criterion
        if isinstance(criterion, str):
            criterion = getattr(pl_module, criterion)
        self.trace = Trace(
            pl_module,
            optimizers[0] if optimizers else None,
            criterion,
            db=self.db,
            every=self.every,
            **{"model_name": type(pl_module).__name__, **self.options},
        ).start()
        self._batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.trace is not None:
            self._batches += 1
            self.trace.begin(step=self._batches)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.trace is None or not self.trace.in_iteration:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.trace.end(loss=loss if torch.is_tensor(loss) or isinstance(loss, float) else None)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.trace is not None:
            self.trace.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.trace is not None:
            self.trace.close(error=exception)
