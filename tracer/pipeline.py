"""The hand-off between the training thread and the work that can wait.

    training thread                       worker thread
    hooks -> copies -> CapturedIteration --queue(bounded)--> explain -> verify -> summarise -> write

The training thread only captures (hooks and NumPy copies) and puts the captured
iteration in a bounded queue; when the queue is full it waits, so memory stays
bounded and the loop is slowed to what the worker sustains. The worker handles
the iterations one at a time, in order, through one writer: one transaction per
iteration, as before.

Errors travel back: the first exception in the worker is kept, every iteration
after it is dropped, and the training thread raises it at its next hand-off or
when the run closes (`raise_pending`). Nothing is swallowed.

A thread, not a process: the worker's NumPy work releases the GIL in its large
array operations, the captured arrays need no pickling or copying across a
process boundary, and the explainers read module settings that a process would
have to be sent. Measured on the 2-core development machine: pickling a
captured LeNet-5 iteration (9.2 MB, modules stripped) and sending it to another
process through a pipe cost the training thread 31 + 44 ms, against 17-90 ms
that the worker thread adds to the capture through the GIL and the shared cores
(resnet18-cifar: 1.0 s + 0.3 s for 142 MB, against a 0.5 s step).
`bench/bench_pipeline.py` measures what the thread costs the training thread.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

DEFAULT_QUEUE_SIZE = 2  # captured iterations waiting for the worker, at most

# While the worker runs, the interpreter hands the GIL over every 0.5 ms instead
# of every 5 ms: each torch call of the training thread releases the GIL and must
# take it back, and with the default interval it can wait 5 ms for the worker's
# Python (LaTeX, records) every time.
_SWITCH_INTERVAL = 0.0005

# The worker thread runs this much nicer than the training thread (Linux: a thread's
# own priority), so that on a machine with no idle core the training thread gets the
# CPU first and the worker takes what is left. 0: the same priority.
WORKER_NICENESS = 10

_STOP = object()


class WorkerError(RuntimeError):
    """The background worker failed on an iteration; the cause is chained."""


class Inline:
    """No worker: each iteration is handled on the training thread as it is handed off."""

    def __init__(self, handle: Callable[[Any], None]):
        self._handle = handle

    def put(self, job: Any) -> None:
        self._handle(job)

    def raise_pending(self) -> None:
        pass

    def close(self, *, drain: bool = True) -> None:
        pass

    @property
    def in_flight(self) -> int:
        return 0


class Background:
    """One worker thread handling the jobs put in a bounded queue, in order."""

    def __init__(
        self,
        handle: Callable[[Any], None],
        *,
        maxsize: int = DEFAULT_QUEUE_SIZE,
        name: str = "",
        passthrough: tuple[type[BaseException], ...] = (),
    ):
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"queue_size must be a positive integer, not {maxsize!r}")
        self._handle = handle
        self._passthrough = passthrough  # raised as they are, not wrapped in WorkerError
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._error: BaseException | None = None
        self._error_raised = False
        self._drop = False  # set on interrupt: queued jobs are dropped, not handled
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, _SWITCH_INTERVAL))
        self._thread = threading.Thread(
            target=self._run, name=f"cnnviz-worker{'-' + name if name else ''}", daemon=True
        )
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return self._queue.unfinished_tasks

    def _run(self) -> None:
        _lower_priority()
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                if self._error is None and not self._drop:
                    self._handle(job)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                self._error = exc
            finally:
                self._queue.task_done()

    def put(self, job: Any) -> None:
        """Queue a job; waits while the queue is full. Raises the worker's error, if any."""
        self.raise_pending()
        while True:
            try:
                self._queue.put(job, timeout=0.05)
            except queue.Full:
                pass
            else:
                self.raise_pending()  # failed while we waited: this job will be dropped
                return
            self.raise_pending()
            if not self._thread.is_alive():
                raise WorkerError("the cnnviz worker thread stopped")

    def raise_pending(self) -> None:
        """Raise the worker's first error in the calling thread (once)."""
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            error = self._error
            if isinstance(error, self._passthrough):
                raise error
            raise WorkerError(f"tracing failed in the background: {_describe(error)}") from error

    @property
    def error(self) -> BaseException | None:
        return self._error

    def close(self, *, drain: bool = True) -> None:
        """Stop the worker: after the queued jobs (`drain`), or after the one in hand."""
        if not self._thread.is_alive():
            sys.setswitchinterval(self._switch)
            return
        if not drain:
            self._drop = True
        try:
            self._queue.put(_STOP)
            self._thread.join()
        finally:
            sys.setswitchinterval(self._switch)


def _lower_priority() -> None:
    """Give the calling thread (the worker) a lower CPU priority than the training thread."""
    niceness = WORKER_NICENESS
    if not niceness or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
    except OSError:
        pass


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
