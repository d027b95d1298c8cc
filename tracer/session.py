"""The Python API: wrap your own training loop and every iteration is traced.

    with cnnviz_trace(model, optimizer, criterion, db="runs.db", name="mine") as trace:
        for x, y in batches:
            with trace.iteration():
                optimizer.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()

Or, like a logger, open and close it yourself and number the iterations with
your own steps (notebooks, trainer callbacks: `tracer.lightning`,
`tracer.huggingface`):

    t = Trace(model, optimizer, criterion, db="runs.db").start()
    for step, (x, y) in enumerate(batches, start=1):
        t.begin(step)
        ...  # zero_grad, forward, loss, backward, step
        t.end()
    t.close()

The model is unchanged afterwards: hooks are removed and each module's
train/eval mode is restored, also when the loop raises. Tracing never changes
what the model computes: a traced and an untraced run from the same seed give
bitwise identical losses and weights.

Layers, functional calls and optimizers that cnnviz cannot write in matrix form
are stored as raw tensors (inputs, outputs, gradients, values before and after
the update), and a `TraceWarning` naming each of them is issued once per run.

Only the capture runs on the training thread: hooks, NumPy copies, and a hand-off.
With `explain="background"` (the default) a worker thread explains, verifies,
summarises and writes each iteration (see `tracer.pipeline`); `"inline"` does all
of it on the training thread before the block returns; `"off"` writes the raw
tensors only, in the worker, with the raw truth `cnnviz explain` explains them
from later (`tracer.explain`). `worker="process"` makes the worker a process of
its own instead of a thread. An error in the worker is raised at the next
`iteration()` or when the `with` block ends. The captured iterations not yet
written are bounded in bytes (`queue_bytes`, default 512 MiB, see
`tracer.pipeline`): the loop waits at `iteration()` for room rather than holding
more; an iteration larger than the bound is captured alone.
"""

from __future__ import annotations

import atexit
import datetime as dt
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from storage import RUN_COMPLETED, RUN_FAILED, RUN_INTERRUPTED, RunInfo, RunWriter, open_engine
from storage.records import IterationRecord

from .assemble import NOT_EXPLAINED, Bounds, TraceError, build_record, layer_infos  # noqa: F401
from .capture import Capture
from .capture.inputgrad import fill_input_grad
from .explainers import explainer_for
from .pipeline import (
    DEFAULT_QUEUE_BYTES,
    DEFAULT_QUEUE_SIZE,
    Background,
    Inline,
    ProcessJob,
    ProcessWorker,
    check_queue_options,
)
from .signals import Terminated, unwatch, watch

EXPLAIN_MODES = ("inline", "background", "off")
DEFAULT_EXPLAIN = "background"
# Where `background` and `off` do their work: a thread of this process, or a process
# of its own (see `tracer.pipeline`; the bench measures both).
WORKERS = ("thread", "process")
# A run whose loop waited for the worker this long, and for this share of the run since
# its first traced iteration, ends with a hint to trace fewer steps.
WAIT_HINT_SECONDS = 2.0
WAIT_HINT_SHARE = 0.3
DEFAULT_WORKER = "thread"


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
        explain: str = DEFAULT_EXPLAIN,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        full_check: bool = False,
        worker: str = DEFAULT_WORKER,
        input_grad: bool = True,
        queue_bytes: int | str = DEFAULT_QUEUE_BYTES,
    ):
        if explain not in EXPLAIN_MODES:
            raise ValueError(f"explain must be one of {', '.join(EXPLAIN_MODES)}, not {explain!r}")
        if worker not in WORKERS:
            raise ValueError(f"worker must be one of {', '.join(WORKERS)}, not {worker!r}")
        queue_bytes = check_queue_options(queue_size, queue_bytes)
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
            max_elements=max_elements,
            layers=frozenset(layers) if layers else None,
            full_check=bool(full_check),
        )
        self.strict = strict
        self.explain = explain
        self.worker = worker
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
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
                "explain": explain,
                "worker": worker,
                "full_check": bool(full_check),
                "input_grad": bool(input_grad),
                "host": platform.node(),
                "pid": os.getpid(),
            },
            torch_version=torch.__version__,
            cnnviz_version=_version(),
        )
        self.index = 0  # iterations seen
        self.stored = 0  # iterations written
        self.losses: list[float] = []
        # The last stored record, only when `keep_last_record` is set (benches): it holds
        # an iteration's arrays after they are written, outside the queue's bound.
        self.keep_last_record = False
        self.records: list[IterationRecord] = []
        # One (index, loss, accuracy, checked, verified, worst difference) per stored iteration.
        self.rows: list[tuple] = []
        self.warned: list[str] = []  # every distinct warning of the run, in order
        # Seconds spent, over the stored iterations: on the training thread inside the
        # `iteration()` blocks (the user's forward/backward/step with our hooks and
        # copies), handing off (waiting for room in the queue), and in the worker (or
        # inline) building the records (explain and verify) and writing them.
        self.timings = {"capture": 0.0, "handoff": 0.0, "explain": 0.0, "write": 0.0}
        self.run_id: int | None = None
        self._in_iteration = False
        self._traced = False  # whether the open iteration is traced (every `every`-th)
        self._started = 0.0
        self._first_traced: float | None = None  # when the first traced iteration began
        self._steps = 0  # begin() calls from that one on, traced or not
        self._last_end = 0.0  # when the last iteration ended
        self._pending_loss: float | None = None
        self._reserved = 0  # bytes of the queue's bound taken for the open iteration
        self._estimate = 0  # bytes the last captured iteration took
        self._entered = False
        # input_grad: autograd also computes dL/d(input), the reference for the first
        # layer's input-gradient step. It is not free: PyTorch's CPU convolution
        # backward for the input is the largest single cost of tracing LeNet-5.
        # On CPU the worker thread computes it instead, once the first traced iteration
        # shows it gets autograd's array (`tracer.capture.inputgrad`); with the worker
        # process, which runs no torch, the training thread does at the hand-off.
        self._capture = Capture(
            model, optimizer, criterion, input_grad=bool(input_grad), input_grad_later=True
        )
        self._writer: RunWriter | None = None
        self._engine = None
        self._modes: list[tuple[nn.Module, bool]] = []
        self._layers_written = False
        self._pipeline: Inline | Background | None = None
        self._messages: list[str] = []  # warnings from the worker, issued on the training thread
        self._terminated = False  # SIGTERM arrived while the trace was open (tracer.signals)
        self._closing = False

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
        if self.explain == "inline":
            self._pipeline = Inline(self._handle)
        elif self.worker == "process":
            job = _StoreJob(self.db, self.run_id, self.bounds, self.strict, self.explain != "off")
            self._pipeline = ProcessWorker(
                job,
                self._on_result,
                maxsize=self.queue_size,
                max_bytes=self.queue_bytes,
                passthrough=(TraceError,),
            )
        else:
            self._pipeline = Background(
                self._handle,
                maxsize=self.queue_size,
                max_bytes=self.queue_bytes,
                passthrough=(TraceError,),
            )
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
            self._pipeline.close()
            self._writer.finish(RUN_FAILED, f"could not attach to the model: {exc}".splitlines()[0])
            self._engine.dispose()
            raise
        # SIGTERM ends the run `interrupted` (tracer.signals), and a trace still open
        # when the interpreter exits is closed then (a Trainer that raised, a
        # forgotten close()), so its run does not stay `running`.
        watch(self)
        atexit.register(self._close_at_exit)
        return self

    def _on_sigterm(self) -> None:
        self._terminated = True

    def _close_at_exit(self) -> None:
        if self._writer is None:
            return
        try:
            if self._in_iteration:
                self._abandon()
            why = Terminated() if self._terminated else _ExitedOpen()
            self.__exit__(type(why), why, None)
        except BaseException as exc:  # the interpreter is going: one line, no traceback
            print(f"cnnviz: could not close run {self.run_id} at exit: {exc}", file=sys.stderr)

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._closing = True
        worker_error = None
        try:
            self._capture.detach()
            for module, training in self._modes:
                module.training = (
                    training  # the flag itself: no recursion, no user train() override
                )
        finally:
            try:
                if self._pipeline is not None:
                    # Iterations already captured are whole: write them, unless the user
                    # pressed Ctrl-C or SIGTERM came (then only the one in the worker's
                    # hands finishes: a scheduler's grace period is short).
                    self._pipeline.close(drain=not self._stopped(exc_type))
                    worker_error = getattr(self._pipeline, "error", None)
                    if exc_type is None and worker_error is None:
                        self._hint_at_waiting()
                self._flush_messages()
            finally:
                self._finish(exc_type, exc, worker_error)
        if exc_type is None and self._pipeline is not None:
            self._pipeline.raise_pending()
        return False

    def _hint_at_waiting(self) -> None:
        """Say so when the loop spent much of the run waiting for the worker.

        A long run settles at the worker's pace once the queue is full: explaining and
        writing an iteration can take several training steps (LeNet-5 at the default
        bound: about 50 ms of the worker's CPU against a 10 ms step). Tracing every k-th
        step lets it keep up."""
        waited = self.timings["handoff"]
        if self.explain == "inline" or self._first_traced is None or self.stored < 2:
            return
        span = self._last_end - self._first_traced  # the loop's time, not the final drain
        if waited < WAIT_HINT_SECONDS or waited < WAIT_HINT_SHARE * span:
            return
        worker = (self.timings["explain"] + self.timings["write"]) / self.stored
        step = max((span - waited) / self._steps, 1e-6)  # a step of the loop, not waiting
        every = max(self.every + 1, math.ceil(worker / step))
        self._warn(
            f"the training loop waited for the worker {waited:.1f} s of {span:.1f} s "
            f"({waited / span:.0%}): it explains and writes a traced iteration in about "
            f"{1000 * worker:.0f} ms, {worker / step:.1f} of this loop's steps; trace with "
            f"`every={every}` or more (`--every {every}`) to let it keep up"
        )

    def _stopped(self, exc_type) -> bool:
        """Whether the run ends because someone stopped it: Ctrl-C, or an exception
        after SIGTERM (ours, Lightning's SIGTERMException, the user's handler's)."""
        if exc_type is None:
            return False
        return issubclass(exc_type, (KeyboardInterrupt, Terminated)) or self._terminated

    def _finish(self, exc_type, exc, worker_error) -> None:
        try:
            if self._writer is not None:
                if exc_type is None and worker_error is None:
                    self._writer.finish(RUN_COMPLETED)
                elif exc_type is not None and issubclass(exc_type, _ExitedOpen):
                    self._writer.finish(RUN_INTERRUPTED, str(exc))
                elif self._stopped(exc_type):
                    terminated = self._terminated or issubclass(exc_type, Terminated)
                    self._writer.finish(
                        RUN_INTERRUPTED, "terminated (SIGTERM)" if terminated else "interrupted"
                    )
                elif exc_type is None or exc is worker_error:
                    why = f"{type(worker_error).__name__}: {worker_error}".splitlines()[0]
                    self._writer.finish(RUN_FAILED, f"tracing failed in the background: {why}")
                else:
                    self._writer.finish(RUN_FAILED, f"{exc_type.__name__}: {exc}".splitlines()[0])
        finally:
            if self._engine is not None:
                self._engine.dispose()
            self._writer = None
            self._engine = None
            atexit.unregister(self._close_at_exit)
            unwatch(self)  # last: a SIGTERM held back while closing is sent again here

    # ------------------------------------------------ explicit open/close, like a logger

    @property
    def in_iteration(self) -> bool:
        """Whether `begin()` opened an iteration that `end()` has not closed."""
        return self._in_iteration

    def start(self) -> Trace:
        """Open the run and attach the hooks: `t = Trace(...).start()`, then `t.begin()` /
        `t.end()` around each iteration and `t.close()` at the end (notebooks, trainer
        callbacks). The same as entering `with Trace(...) as t:`."""
        return self.__enter__()

    def close(self, error: BaseException | None = None) -> None:
        """Finish the run: detach the hooks, write what is queued, mark the run
        completed (or failed with `error`). Closing twice, or a trace never started,
        does nothing."""
        if self._writer is None:
            return
        if self._in_iteration:
            self._abandon()
        if error is None:
            self.__exit__(None, None, None)
        else:
            self.__exit__(type(error), error, error.__traceback__)

    def begin(self, step: int | None = None) -> bool:
        """Start an iteration: what runs until `end()` (forward, backward, optimizer
        step) is traced. `step` is your own step number (1, 2, ...; increasing), the
        iteration's index in the store; without it iterations are counted from 1.
        Returns whether this iteration is traced (every `every`-th step is)."""
        if self._writer is None or self._engine is None:
            raise RuntimeError(
                "the trace is not open: use it as a context manager (`with Trace(...) as t:`) "
                "or call t.start() first"
            )
        if self._in_iteration:
            raise RuntimeError(
                "an iteration is already open: call end() first "
                "(trace.iteration() blocks cannot be nested)"
            )
        index = self._next_index(step)
        self._pipeline.raise_pending()  # the worker failed on an earlier iteration
        self._flush_messages()
        traced = (index - 1) % self.every == 0
        if traced:
            # Room in the queue's byte bound for this iteration's copies (as many as the
            # last one's): the loop waits here, before the step, while there is none.
            waited = time.perf_counter()
            self._reserved = self._pipeline.reserve(self._estimate)
            self.timings["handoff"] += time.perf_counter() - waited
        self.index = index
        self._traced = traced
        self._in_iteration = True
        if self._first_traced is not None or traced:
            self._steps += 1
        if self._traced:
            self._pending_loss = None
            self._started = time.perf_counter()
            if self._first_traced is None:
                self._first_traced = self._started
            self._capture.start()
        return self._traced

    def end(self, loss: float | None = None) -> None:
        """Finish the iteration `begin()` opened and hand it over to be explained and
        stored. `loss`: this iteration's loss when the criterion given to Trace did not
        compute it (a number or a scalar tensor)."""
        if not self._in_iteration:
            raise RuntimeError("no iteration is open: call begin() first")
        self._in_iteration = False
        self._last_end = time.perf_counter()
        if not self._traced:
            return
        captured = self._capture.finish(settle=False)  # settled by the worker
        if self.worker == "process" and captured.input_grad_from is not None:
            fill_input_grad(captured)  # with torch, which the worker process does not run
        if self._pending_loss is not None:
            loss_value = self._pending_loss
        else:
            loss_value = _as_float(loss) if loss is not None else None
        handed = time.perf_counter()
        self.timings["capture"] += handed - self._started
        reserved, self._reserved = self._reserved, 0
        self._estimate = captured.nbytes
        self._pipeline.put((captured, self.index, loss_value), captured.nbytes, reserved)
        del captured  # the worker's now: its bytes are given back once it is written
        if self.explain != "inline":
            self.timings["handoff"] += time.perf_counter() - handed
        self._flush_messages()

    def _abandon(self) -> None:
        """Drop the open iteration (its block raised): nothing of it is stored."""
        self._in_iteration = False
        if self._traced:
            self._capture.finish()
            reserved, self._reserved = self._reserved, 0
            self._pipeline.release(reserved)

    def _next_index(self, step) -> int:
        if step is None:
            return self.index + 1
        if isinstance(step, bool) or not isinstance(step, int) or step < 1 or step <= self.index:
            raise ValueError(
                f"step must be an integer of at least {max(1, self.index + 1)} (steps increase; "
                f"the last was {self.index}), not {step!r}"
            )
        return step

    @contextmanager
    def iteration(self, loss: float | None = None, *, step: int | None = None) -> Iterator[Trace]:
        """Trace the forward, backward and optimizer step run inside this block
        (`begin(step)` and `end(loss)` around it)."""
        self.begin(step)
        try:
            yield self
        except BaseException:
            self._abandon()  # discard the partial iteration
            raise
        self.end(loss)

    def _handle(self, job) -> None:
        """Build and write one captured iteration (in the worker thread, or inline)."""
        captured, index, loss = job
        started = time.perf_counter()
        record = self._build(captured.settle(), index, loss)
        if not self._layers_written:
            self._writer.set_layers(layer_infos(captured, explained=self.explain != "off"))
            self._layers_written = True
        explained = time.perf_counter()
        self._writer.add_iteration(record)
        self.records = [record] if self.keep_last_record else []
        self._on_result(
            _Written(
                _row(record), record.warnings, explained - started, time.perf_counter() - explained
            )
        )

    def _on_result(self, written: _Written) -> None:
        """An iteration is written (inline, by the worker thread, or by the worker process)."""
        self.timings["explain"] += written.explain_s
        self.timings["write"] += written.write_s
        self.stored += 1
        self.losses.append(written.row[1])
        self.rows.append(written.row)
        self._messages.extend(written.warnings)

    def _flush_messages(self) -> None:
        while self._messages:
            self._warn(self._messages.pop(0))

    def set_loss(self, loss) -> None:
        """Record this iteration's loss (a number or a scalar tensor) when it is not the
        output of the criterion given to `Trace` (e.g. `F.cross_entropy` in the loop)."""
        if not self._in_iteration:
            raise RuntimeError("set_loss() belongs inside a `with trace.iteration():` block")
        self._pending_loss = _as_float(loss)

    def _build(self, captured, index: int, loss) -> IterationRecord:
        return build_record(
            captured,
            index,
            loss,
            bounds=self.bounds,
            strict=self.strict,
            explain=self.explain != "off",
            optimizer=self.optimizer,
        )

    def _warn(self, message: str) -> None:
        # One line per distinct message and run; the iteration's own list keeps them all.
        key = message.split(" differs from PyTorch by ")[0]
        if key in self.warned:
            return
        self.warned.append(key)
        warnings.warn(f"cnnviz: {message}", TraceWarning, stacklevel=_user_stacklevel())


class _ExitedOpen(Exception):
    """How a trace still open at interpreter exit is closed."""

    def __init__(self) -> None:
        super().__init__("the process exited with the trace still open (close() was not called)")


@dataclass
class _Written:
    """What the training loop learns of an iteration once it is written."""

    row: tuple  # (index, loss, accuracy, checked, verified, worst difference)
    warnings: list[str]
    explain_s: float
    write_s: float


class _StoreJob(ProcessJob):
    """The worker process's work: build each captured iteration's record and write it
    through the process's own connection to the store (see `pipeline.ProcessWorker`)."""

    def __init__(self, db, run_id: int, bounds: Bounds, strict: bool, explain: bool):
        self.db, self.run_id, self.bounds = db, run_id, bounds
        self.strict, self.explain = strict, explain

    def start(self) -> None:
        from threadpoolctl import threadpool_limits

        # One BLAS thread, as on the training side (`train.one_torch_thread`): the
        # float64 sums then come out as the thread worker's, to the bit.
        self._limits = threadpool_limits(limits=1)
        self._engine = open_engine(self.db)
        self._writer = RunWriter(self._engine, self.run_id)
        self._layers_written = False

    def handle(self, job) -> _Written:
        captured, index, loss = job
        started = time.perf_counter()
        record = build_record(
            captured.settle(),
            index,
            loss,
            bounds=self.bounds,
            strict=self.strict,
            explain=self.explain,
        )
        if not self._layers_written:
            self._writer.set_layers(layer_infos(captured, explained=self.explain))
            self._layers_written = True
        explained = time.perf_counter()
        self._writer.add_iteration(record)
        return _Written(
            _row(record), record.warnings, explained - started, time.perf_counter() - explained
        )

    def stop(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.dispose()


def _as_float(loss) -> float:
    return float(loss.detach().reshape(-1)[0]) if torch.is_tensor(loss) else float(loss)


def _user_stacklevel() -> int:
    """The stacklevel of the first frame outside cnnviz's tracer and contextlib: warnings
    are issued from several places (iteration start and end, exit) and point at the user."""
    import contextlib

    ours = (os.path.dirname(os.path.abspath(__file__)), os.path.abspath(contextlib.__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(ours):
        frame, level = frame.f_back, level + 1
    return level


def _row(record: IterationRecord) -> tuple:
    checked = [s for s in record.steps if s.verified is not None]
    verified = sum(1 for s in checked if s.verified)
    worst = max((s.max_abs_diff for s in checked), default=0.0)
    return (record.index, record.loss, record.accuracy, len(checked), verified, worst)


def _tf32_on_cuda(model: nn.Module) -> bool:
    on_cuda = any(p.is_cuda for p in model.parameters())
    return on_cuda and (torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)


def trace(model, optimizer=None, criterion=None, **options) -> Trace:
    """`with trace(model, optimizer, criterion, db=...) as t:` -- see `Trace`."""
    return Trace(model, optimizer, criterion, **options)


def is_explained(module: nn.Module) -> bool:
    return explainer_for(module) is not None
