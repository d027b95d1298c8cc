"""The Python API: wrap your own training loop and every iteration is traced.

    with cnnviz_trace(model, optimizer, criterion, db="runs.db", name="mine") as trace:
        for x, y in batches:
            with trace.iteration():
                optimizer.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()

The model is unchanged afterwards: hooks are removed and each module's
train/eval mode is restored, also when the loop raises.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from storage import RUN_COMPLETED, RUN_FAILED, RUN_INTERRUPTED, RunInfo, RunWriter, open_engine
from storage.records import IterationRecord

from .assemble import Bounds, build_iteration, layer_infos
from .capture import Capture
from .explainers import explainer_for


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("cnnviz")
    except Exception:
        return "unknown"


def describe_optimizer(optimizer) -> tuple[str, dict[str, Any]]:
    if optimizer is None:
        return "", {}
    group = optimizer.param_groups[0]
    settings = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in group.items()
        if k != "params" and isinstance(v, (int, float, bool, str, tuple, type(None)))
    }
    return type(optimizer).__name__, settings


def describe_model(model: nn.Module) -> str:
    params = sum(p.numel() for p in model.parameters())
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    return f"{type(model).__name__}: {len(leaves)} layers, {params} parameters"


class Trace:
    """Context manager over (model, optimizer, criterion, store)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        criterion: nn.Module | None = None,
        *,
        db: str | os.PathLike | None = None,
        name: str | None = None,
        seed: int | None = None,
        model_name: str | None = None,
        dataset: str = "",
        config: dict[str, Any] | None = None,
        every: int = 1,
        max_elements: int | None = None,
        layers: list[str] | None = None,
        strict: bool = False,
    ):
        if every < 1:
            raise ValueError("every must be a positive integer")
        self.model = model
        self.optimizer = optimizer
        self.criterion = criterion
        self.db = db
        self.every = every
        self.bounds = Bounds(max_elements=max_elements, layers=frozenset(layers) if layers else None)
        self.strict = strict
        optimizer_name, settings = describe_optimizer(optimizer)
        self.info = RunInfo(
            name=name or f"{model_name or type(model).__name__}-{dt.datetime.now():%Y%m%d-%H%M%S}",
            seed=seed,
            model_name=model_name or type(model).__name__,
            model_description=describe_model(model),
            optimizer=optimizer_name,
            optimizer_settings=settings,
            loss_name=type(criterion).__name__ if criterion is not None else "",
            dataset=dataset,
            config={
                **(config or {}),
                "every": every,
                "max_elements": max_elements,
                "layers": layers,
                "host": platform.node(),
                "pid": os.getpid(),
            },
            torch_version=torch.__version__,
            cnnviz_version=_version(),
        )
        self.index = 0  # iterations seen
        self.stored = 0  # iterations written
        self.losses: list[float] = []
        self.records: list[IterationRecord] = []  # the last stored record only, to bound memory
        self.run_id: int | None = None
        self._capture = Capture(model, optimizer, criterion)
        self._writer: RunWriter | None = None
        self._engine = None
        self._modes: list[tuple[nn.Module, bool]] = []
        self._layers_written = False

    def __enter__(self) -> Trace:
        self._engine = open_engine(self.db)
        try:
            self._writer = RunWriter.begin(self._engine, self.info)
        except BaseException:
            self._engine.dispose()
            raise
        self.run_id = self._writer.run_id
        self._modes = [(m, m.training) for m in self.model.modules()]
        if isinstance(self.criterion, nn.Module):
            self._modes += [(m, m.training) for m in self.criterion.modules()]
        self._capture.attach()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._capture.detach()
            for module, training in self._modes:
                module.train(training)
        finally:
            if self._writer is not None:
                if exc_type is None:
                    self._writer.finish(RUN_COMPLETED)
                elif issubclass(exc_type, KeyboardInterrupt):
                    self._writer.finish(RUN_INTERRUPTED, "interrupted")
                else:
                    self._writer.finish(RUN_FAILED, f"{exc_type.__name__}: {exc}".splitlines()[0])
            if self._engine is not None:
                self._engine.dispose()
        return False

    @contextmanager
    def iteration(self, loss: float | None = None) -> Iterator[Trace]:
        """Trace the forward, backward and optimizer step run inside this block."""
        if self._writer is None:
            raise RuntimeError("use Trace as a context manager: `with Trace(...) as trace:`")
        self.index += 1
        keep = (self.index - 1) % self.every == 0
        if not keep:
            yield self
            return
        self._capture.start()
        try:
            yield self
        except BaseException:
            self._capture.finish()  # discard the partial iteration
            raise
        captured = self._capture.finish()
        record = build_iteration(
            captured,
            self.index,
            optimizer=self.optimizer,
            bounds=self.bounds,
            strict=self.strict,
            loss_value=loss,
        )
        if not self._layers_written:
            self._writer.set_layers(layer_infos(captured))
            self._layers_written = True
        self._writer.add_iteration(record)
        self.stored += 1
        self.losses.append(record.loss)
        self.records = [record]


def trace(model, optimizer=None, criterion=None, **options) -> Trace:
    """`with trace(model, optimizer, criterion, db=...) as t:` -- see `Trace`."""
    return Trace(model, optimizer, criterion, **options)


def is_explained(module: nn.Module) -> bool:
    return explainer_for(module) is not None
