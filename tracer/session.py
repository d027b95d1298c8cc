"""The Python API: wrap your own training loop and every iteration is traced.

    with cnnviz_trace(model, optimizer, criterion, db="runs.db", name="mine") as trace:
        for x, y in batches:
            with trace.iteration():
                optimizer.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()

The model is unchanged afterwards: hooks are removed and each module's
train/eval mode is restored, also when the loop raises. Tracing never changes
what the model computes: a traced and an untraced run from the same seed give
bitwise identical losses and weights.

Layers, functional calls and optimizers that cnnviz cannot write in matrix form
are stored as raw tensors (inputs, outputs, gradients, values before and after
the update), and a `TraceWarning` naming each of them is issued once per run.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from storage import RUN_COMPLETED, RUN_FAILED, RUN_INTERRUPTED, RunInfo, RunWriter, open_engine
from storage.records import IterationRecord

from .assemble import Bounds, TraceError, build_iteration, layer_infos
from .capture import Capture
from .explainers import explainer_for


class TraceWarning(UserWarning):
    """Something was traced as raw tensors (no matrix form), or could not be captured."""


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
    return f"{type(model).__name__}: {len(leaves)} modules, {params} parameters"


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
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, not {every!r}")
        if max_elements is not None and (
            isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1
        ):
            raise ValueError(
                f"max_elements must be a positive integer or None, not {max_elements!r}"
            )
        if isinstance(layers, str):
            layers = [n.strip() for n in layers.split(",") if n.strip()]
        if layers is not None and not all(isinstance(n, str) and n for n in layers):
            raise ValueError("layers must be a list of layer names")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self.optimizer = optimizer
        self.criterion = criterion
        self.db = db
        self.every = every
        self.bounds = Bounds(
            max_elements=max_elements, layers=frozenset(layers) if layers else None
        )
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
        self.warned: list[str] = []  # every distinct warning of the run, in order
        # Seconds spent, over the stored iterations: inside the `iteration()` blocks
        # (the user's forward/backward/step with our hooks), building the records
        # (explain and verify), writing them to the store.
        self.timings = {"capture": 0.0, "explain": 0.0, "write": 0.0}
        self.run_id: int | None = None
        self._in_iteration = False
        self._pending_loss: float | None = None
        self._entered = False
        self._capture = Capture(model, optimizer, criterion)
        self._writer: RunWriter | None = None
        self._engine = None
        self._modes: list[tuple[nn.Module, bool]] = []
        self._layers_written = False

    def __enter__(self) -> Trace:
        if self._entered:
            raise RuntimeError("a Trace can be entered once; create a new one for another run")
        self._entered = True
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
        if _tf32_on_cuda(self.model):
            self._warn(
                "the model is on CUDA with TF32 allowed (torch.backends.cudnn.allow_tf32 or "
                "torch.backends.cuda.matmul.allow_tf32): PyTorch's convolutions and matrix products "
                "then round to 10-bit mantissas and differ from float32 arithmetic by about 1e-3, so "
                "steps will show as not matching; set both to False to check them exactly"
            )
        try:
            self._capture.attach()
        except BaseException as exc:
            self._writer.finish(RUN_FAILED, f"could not attach to the model: {exc}".splitlines()[0])
            self._engine.dispose()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._capture.detach()
            for module, training in self._modes:
                module.training = (
                    training  # the flag itself: no recursion, no user train() override
                )
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
            self._writer = None
            self._engine = None
        return False

    @contextmanager
    def iteration(self, loss: float | None = None) -> Iterator[Trace]:
        """Trace the forward, backward and optimizer step run inside this block."""
        if self._writer is None or self._engine is None:
            raise RuntimeError("use Trace as a context manager: `with Trace(...) as trace:`")
        if self._in_iteration:
            raise RuntimeError("trace.iteration() blocks cannot be nested")
        self.index += 1
        keep = (self.index - 1) % self.every == 0
        if not keep:
            self._in_iteration = True
            try:
                yield self
            finally:
                self._in_iteration = False
            return
        self._in_iteration = True
        self._pending_loss = None
        started = time.perf_counter()
        self._capture.start()
        try:
            yield self
        except BaseException:
            self._capture.finish()  # discard the partial iteration
            raise
        finally:
            self._in_iteration = False
        captured = self._capture.finish()
        self.timings["capture"] += time.perf_counter() - started
        started = time.perf_counter()
        record = self._build(
            captured, self._pending_loss if self._pending_loss is not None else loss
        )
        if not self._layers_written:
            self._writer.set_layers(layer_infos(captured))
            self._layers_written = True
        self.timings["explain"] += time.perf_counter() - started
        started = time.perf_counter()
        self._writer.add_iteration(record)
        self.timings["write"] += time.perf_counter() - started
        self.stored += 1
        self.losses.append(record.loss)
        self.records = [record]
        for message in record.warnings:
            self._warn(message)

    def set_loss(self, loss) -> None:
        """Record this iteration's loss (a number or a scalar tensor) when it is not the
        output of the criterion given to `Trace` (e.g. `F.cross_entropy` in the loop)."""
        if not self._in_iteration:
            raise RuntimeError("set_loss() belongs inside a `with trace.iteration():` block")
        self._pending_loss = (
            float(loss.detach().reshape(-1)[0]) if torch.is_tensor(loss) else float(loss)
        )

    def _build(self, captured, loss) -> IterationRecord:
        options = dict(
            optimizer=self.optimizer, bounds=self.bounds, strict=self.strict, loss_value=loss
        )
        try:
            return build_iteration(captured, self.index, **options)
        except TraceError:
            raise
        except Exception as exc:
            if self.strict:
                raise
            # Never let a bug in the matrix form cost the user's run: store the raw tensors.
            record = build_iteration(captured, self.index, explain=False, **options)
            record.warnings.insert(
                0, f"building the matrix form failed ({type(exc).__name__}: {exc})"
            )
            return record

    def _warn(self, message: str) -> None:
        # One line per distinct message and run; the iteration's own list keeps them all.
        key = message.split(" differs from PyTorch by ")[0]
        if key in self.warned:
            return
        self.warned.append(key)
        warnings.warn(f"cnnviz: {message}", TraceWarning, stacklevel=4)


def _tf32_on_cuda(model: nn.Module) -> bool:
    on_cuda = any(p.is_cuda for p in model.parameters())
    return on_cuda and (torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)


def trace(model, optimizer=None, criterion=None, **options) -> Trace:
    """`with trace(model, optimizer, criterion, db=...) as t:` -- see `Trace`."""
    return Trace(model, optimizer, criterion, **options)


def is_explained(module: nn.Module) -> bool:
    return explainer_for(module) is not None
