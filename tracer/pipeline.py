"""The hand-off between the training thread and the work that can wait.

    training thread                       worker thread
    hooks -> copies -> CapturedIteration --queue(bounded)--> explain -> verify -> summarise -> write

The training thread only captures (hooks and NumPy copies) and puts the captured
iteration in a bounded queue; when the queue is full it waits, so memory stays
bounded and the loop is slowed to what the worker sustains. The worker handles
the iterations one at a time, in order, through one writer: one transaction per
iteration, as before.

The bound is in bytes (`queue_bytes`, default `DEFAULT_QUEUE_BYTES`): the host
copies of every captured iteration not yet written -- the one being captured,
those waiting, the one in the worker's hands -- stay within it. The training
thread reserves room for an iteration before capturing it (as much as the last
one took; `reserve`) and waits while there is none, so peak memory is the
untraced run's plus the bound (plus the worker's own working memory), whatever
the model. An iteration larger than the whole bound is not refused: it waits
until everything before it is written and is then captured alone. `queue_size`
caps, in addition, how many captured iterations wait in the queue.

Errors travel back: the first exception in the worker is kept, every iteration
after it is dropped, and the training thread raises it at its next hand-off or
when the run closes (`raise_pending`). Nothing is swallowed.

The worker is a thread (`Background`, the default) or a process of its own
(`ProcessWorker`, `Trace(worker="process")`, `cnnviz trace --worker process`).
The captured iteration is plain data (arrays, names, module and optimizer specs),
so either can take it; the process gets it pickled through a bounded
multiprocessing queue and writes through its own connection to the store.

The thread stays the default because it cost less, measured with
`bench/bench_pipeline.py` (LeNet-5, batch 64, variants interleaved, 4 rounds x 3
iterations, medians, on the shared 2-core machine at load 12): on the training
thread, x the np.save + fsync floor, thread / process: default bound background
2.19 / 4.88, off 2.33 / 6.07; full capture background 2.08 / 3.14, off 1.78 / 3.24;
end to end 18.96 / 26.94, 26.25 / 29.39, 63.89 / 86.30, 15.09 / 19.76. Pickling a
10 MB captured iteration into the queue holds the training process's GIL (77-600 ms
of hand-off per iteration measured there), and on a machine with no idle core the
process gains no CPU the thread did not have. On a machine with idle cores a
process escapes the GIL that the worker thread's Python (LaTeX, records) holds;
measure there with `--variants default/background,default/background@process`.
"""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

# Captured iterations waiting for the worker, at most. The byte bound is what bounds
# memory; this only keeps a model of tiny iterations from queueing without end. With 2
# (as before the byte bound) a LeNet-5 run waited for the worker after its third
# traced iteration while holding 30 MiB of its 512 MiB bound.
DEFAULT_QUEUE_SIZE = 16
# Bytes of host copies of captured iterations not yet written, at most (see above).
DEFAULT_QUEUE_BYTES = 512 * 2**20

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


_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*(?:([kmgt])(i?)b|([kmgtb]?))?\s*", re.IGNORECASE)


def parse_bytes(value) -> int:
    """A size in bytes: a positive integer, or a string such as "512MiB", "512M" (both
    2**20 bytes per M), "500MB" (10**6), "1.5GiB", "4096"."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        digits, unit, binary, bare = match.groups()
        if unit and not binary:  # KB, MB, GB, TB: powers of 1000
            scale = 1000 ** (1 + "kmgt".index(unit.lower()))
        else:
            scale = _UNITS[(unit or bare or "").lower()]
        number = int(float(digits) * scale)
    else:
        raise ValueError(f"{value!r} is not a size in bytes (e.g. 512MiB, 1GiB, 100000000)")
    if number < 1:
        raise ValueError(f"{value!r} is not a positive size in bytes")
    return number


def check_queue_options(queue_size, queue_bytes) -> int:
    """Check the queue's bounds; returns `queue_bytes` in bytes (see `parse_bytes`)."""
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise ValueError(f"queue_size must be a positive integer, not {queue_size!r}")
    try:
        return parse_bytes(queue_bytes)
    except ValueError as exc:
        raise ValueError(f"queue_bytes: {exc}") from None


class Budget:
    """The bytes of captured iterations not yet written (reserved, queued, in hand),
    held within `limit`; one over the limit alone is let through."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self.peak = 0  # the most held at once
        self._changed = threading.Condition()

    def acquire(self, nbytes: int, check: Callable[[], None]) -> int:
        """Take `nbytes`, waiting while they do not fit (`check` runs every 50 ms and
        may raise: the worker failed or stopped)."""
        with self._changed:
            while self.held and self.held + nbytes > self.limit:
                self._changed.wait(0.05)
                check()
            self._take(nbytes)
        return nbytes

    def add(self, nbytes: int) -> None:
        """Take (or, negative, give back) `nbytes` without waiting."""
        with self._changed:
            self._take(nbytes)
            if nbytes < 0:
                self._changed.notify_all()

    def release(self, nbytes: int) -> None:
        self.add(-nbytes)

    def _take(self, nbytes: int) -> None:
        self.held += nbytes
        self.peak = max(self.peak, self.held)


class Inline:
    """No worker: each iteration is handled on the training thread as it is handed off."""

    def __init__(self, handle: Callable[[Any], None]):
        self._handle = handle
        self.budget = Budget(0)

    def reserve(self, nbytes: int) -> int:
        return 0

    def release(self, nbytes: int) -> None:
        pass

    def put(self, job: Any, nbytes: int = 0, reserved: int = 0) -> None:
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
        max_bytes: int = DEFAULT_QUEUE_BYTES,
        name: str = "",
        passthrough: tuple[type[BaseException], ...] = (),
    ):
        max_bytes = check_queue_options(maxsize, max_bytes)
        self._handle = handle
        self.budget = Budget(max_bytes)
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
            item = self._queue.get()
            if item is _STOP:
                self._queue.task_done()
                return
            job, nbytes = item
            item = None
            try:
                if self._error is None and not self._drop:
                    self._handle(job)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                self._error = exc
            finally:
                job = None  # the iteration's arrays go before its bytes are given back
                self._queue.task_done()
                self.budget.release(nbytes)

    def _check(self) -> None:
        self.raise_pending()
        if not self._thread.is_alive():
            raise WorkerError("the cnnviz worker thread stopped")

    def reserve(self, nbytes: int) -> int:
        """Room for the next captured iteration (`nbytes`, estimated): waits until
        it fits the byte bound, or nothing is held. Returns what was reserved."""
        self.raise_pending()
        return self.budget.acquire(nbytes, self._check)

    def release(self, nbytes: int) -> None:
        """Give back a reservation that was not used (the iteration was dropped)."""
        self.budget.release(nbytes)

    def put(self, job: Any, nbytes: int = 0, reserved: int = 0) -> None:
        """Queue a job of `nbytes` (replacing the `reserved` bytes); waits while the
        queue is full. Raises the worker's error, if any."""

        def offer() -> bool:
            try:
                self._queue.put((job, nbytes), timeout=0.05)
            except queue.Full:
                return False
            return True  # the worker gives its bytes back, handled or dropped

        _hand_over(self, nbytes, reserved, offer)

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


def _hand_over(worker, nbytes: int, reserved: int, offer: Callable[[], bool]) -> None:
    """Queue a job of `nbytes` for `worker` (a `Background` or a `ProcessWorker`), in
    place of the `reserved` bytes: `offer` tries to queue it for a moment and says
    whether it did; while the queue is full the worker's error or death is checked
    between tries. Bytes of a job that was never queued are given back; those of a
    queued one come back when the worker is done with it, handled or dropped."""
    worker.budget.add(nbytes - reserved)
    queued = False
    try:
        worker.raise_pending()
        while not (queued := offer()):
            worker._check()
        worker.raise_pending()  # it failed while we waited: this job will be dropped
    finally:
        if not queued:
            worker.budget.release(nbytes)


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


# ---------------------------------------------------------------- the process worker


class ProcessWorker:
    """The worker as a separate process: the captured iteration (plain data: arrays,
    names, specs) is pickled into a bounded multiprocessing queue, and the process
    explains, verifies, summarises and writes it through its own connection to the
    store, one transaction per iteration. What the training loop needs back (loss,
    checks, warnings, timings) comes back per iteration, to `on_result`.

    `work` is a picklable `ProcessJob`; it runs in the child. Errors travel back as
    with the thread: the first one is raised at the next hand-off or at the end; a
    child that dies (killed, out of memory) is a `WorkerError`.
    """

    def __init__(
        self,
        work: ProcessJob,
        on_result: Callable[[Any], None],
        *,
        maxsize: int = DEFAULT_QUEUE_SIZE,
        max_bytes: int = DEFAULT_QUEUE_BYTES,
        passthrough: tuple[type[BaseException], ...] = (),
    ):
        import multiprocessing as mp
        from collections import deque

        max_bytes = check_queue_options(maxsize, max_bytes)
        self.budget = Budget(max_bytes)
        self._sizes: deque[int] = deque()  # the bytes of each job sent, in order
        # fork where there is one: the child starts at once with the tracer imported
        # (spawn would import torch again); it touches no torch tensor, only NumPy.
        methods = mp.get_all_start_methods()
        context = mp.get_context("fork" if "fork" in methods else "spawn")
        self._jobs = context.Queue(maxsize)
        self._results = context.Queue()
        self._drop = context.Event()
        self._on_result = on_result
        self._passthrough = passthrough
        self._sent = 0
        self._done = 0
        self._closed = False
        self._error: BaseException | None = None
        self._error_raised = False
        self._process = context.Process(
            target=_process_main,
            args=(work, self._jobs, self._results, self._drop),
            name="cnnviz-worker-process",
            daemon=True,
        )
        self._process.start()

    @property
    def in_flight(self) -> int:
        return self._sent - self._done

    @property
    def error(self) -> BaseException | None:
        self._collect()
        return self._error

    def _collect(self, block: bool = False, timeout: float = 0.05) -> None:
        """Take every result the child has sent (waiting up to `timeout` for one if `block`)."""
        while not self._closed:
            try:
                message = self._results.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                return
            block = False
            kind, payload = message
            if kind == "start":  # the child could not start (no job of ours)
                self._error = self._error or payload
                continue
            self._done += 1
            if self._sizes:
                self.budget.release(self._sizes.popleft())
            if kind == "ok":
                self._on_result(payload)
            elif kind == "error" and self._error is None:
                self._error = payload

    def _check(self) -> None:
        self._collect()
        self.raise_pending()
        if not self._process.is_alive():
            raise WorkerError(
                f"the cnnviz worker process stopped (exit code {self._process.exitcode})"
            )

    def reserve(self, nbytes: int) -> int:
        """As `Background.reserve`: the bytes come back as the child's results do."""
        self.raise_pending()
        budget = self.budget
        while budget.held and budget.held + nbytes > budget.limit:
            self._collect(block=True, timeout=0.05)
            self._check()
        budget.add(nbytes)
        return nbytes

    def release(self, nbytes: int) -> None:
        self.budget.release(nbytes)

    def put(self, job: Any, nbytes: int = 0, reserved: int = 0) -> None:
        def offer() -> bool:
            try:
                self._jobs.put(job, timeout=0.05)
            except queue.Full:
                return False
            self._sent += 1
            self._sizes.append(nbytes)  # given back as the child's result comes
            return True

        _hand_over(self, nbytes, reserved, offer)

    def raise_pending(self) -> None:
        self._collect()
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            error = self._error
            if isinstance(error, self._passthrough):
                raise error
            raise WorkerError(f"tracing failed in the background: {_describe(error)}") from error

    def close(self, *, drain: bool = True) -> None:
        """Stop the child: after the queued jobs (`drain`), or after the one in hand."""
        if self._closed:
            return
        if not drain:
            self._drop.set()
        if self._process.is_alive():
            try:
                self._jobs.put(_STOP_MESSAGE)
            except Exception:  # noqa: BLE001 - the queue is gone with the child
                pass
        while self._process.is_alive() or self.in_flight > 0:
            before = self._done
            self._collect(block=True, timeout=0.1)
            if not self._process.is_alive() and self._done == before:
                self._collect()
                break
        self._process.join()
        if self._error is None and self._process.exitcode not in (0, None) and self.in_flight:
            self._error = WorkerError(
                f"the cnnviz worker process stopped (exit code {self._process.exitcode}) "
                f"with {self.in_flight} iteration(s) not written"
            )
        self._closed = True
        # Jobs a dead child never took would keep the queue's feeder thread (and so
        # the interpreter's exit) waiting on a full pipe: drop them.
        self._jobs.cancel_join_thread()
        self._jobs.close()
        self._results.close()


_STOP_MESSAGE = "stop"


class ProcessJob:
    """What the worker process does with each job; subclassed by the tracer (picklable)."""

    def start(self) -> None:
        """Runs once in the child before the first job (open the store...)."""

    def handle(self, job: Any) -> Any:
        """Handle one job; the result goes back to the training process."""
        raise NotImplementedError

    def stop(self) -> None:
        """Runs once in the child at the end."""


def _process_main(work: ProcessJob, jobs, results, drop) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's
    _lower_priority()  # as the worker thread: the training process gets the CPU first
    failed = False
    try:
        work.start()
    except BaseException as exc:  # noqa: BLE001 - sent to the training process
        results.put(("start", _portable(exc)))
        failed = True
    try:
        while True:
            job = jobs.get()
            if isinstance(job, str) and job == _STOP_MESSAGE:
                return
            if failed or drop.is_set():
                results.put(("dropped", None))
                continue
            try:
                result = ("ok", work.handle(job))
            except BaseException as exc:  # noqa: BLE001 - sent to the training process
                failed = True
                result = ("error", _portable(exc))
            job = None  # its arrays go before the training process counts its bytes back
            results.put(result)
    finally:
        try:
            work.stop()
        finally:
            results.close()
            results.join_thread()


def _portable(exc: BaseException) -> BaseException:
    """The exception if it pickles (its type is importable and takes its message),
    else a WorkerError carrying its type and message."""
    import pickle

    try:
        copy = pickle.loads(pickle.dumps(exc))
        if type(copy) is type(exc):
            return exc
    except Exception:  # noqa: BLE001 - replaced by a plain one below
        pass
    return WorkerError(_describe(exc))
