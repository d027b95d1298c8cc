"""SIGTERM while a trace is open: the run ends `interrupted`, like Ctrl-C.

A scheduler (Slurm, Kubernetes, systemd, `docker stop`) ends a training process
with SIGTERM. Python's default is to die on the spot, which leaves the run
`running` until a reader finds its writer gone. While at least one `Trace` is open
(and only when it was opened on the main thread, the only one Python lets set
handlers), cnnviz watches SIGTERM:

- The open traces are told, so however the process then ends, they finish their
  runs as `interrupted` ("terminated (SIGTERM)"), not `failed` or `completed`.
- If SIGTERM had a Python handler already (yours, Lightning's), it is called and
  decides what happens: Lightning, for one, stops after the current batch.
- If it had the default action, `Terminated` is raised where the main thread is:
  a `SystemExit` with status 143 (128 + SIGTERM, what the shell reports for a
  process SIGTERM killed), so `finally` blocks and `with` blocks run, the trace
  writes what it had committed and closes, and the process exits 143 unless the
  code catches it.
- An ignored SIGTERM (`SIG_IGN`), or one handled outside Python, is left alone.

When the last trace closes, the previous handler comes back, unless someone
replaced ours meanwhile (then theirs stays). A SIGTERM that arrives while every
open trace is already closing is not raised in the middle of the closing (the run
would stay `running`): it is sent again once the last one has closed.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Protocol


class Terminated(SystemExit):
    """SIGTERM arrived while a trace was open and nothing else handled it."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


class _Watcher(Protocol):
    _closing: bool  # closing now: a SIGTERM waits until it has closed

    def _on_sigterm(self) -> None: ...


_lock = threading.Lock()
_watchers: list[_Watcher] = []
_previous = None  # SIGTERM's handler before ours; meaningful while _installed
_installed = False
_deferred = False  # a SIGTERM came while every trace was closing: sent again after


def _handler(signum, frame) -> None:
    global _deferred
    watchers = list(_watchers)
    for watcher in watchers:
        watcher._on_sigterm()
    if watchers and all(watcher._closing for watcher in watchers):
        _deferred = True
        return
    previous = _previous
    if callable(previous):
        previous(signum, frame)
        return
    if not watchers:  # ours outlived the traces (closed off the main thread): default
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


def watch(watcher: _Watcher) -> bool:
    """Tell `watcher` about SIGTERM from now on; False where it cannot be watched (not
    the main thread, SIGTERM ignored or handled outside Python)."""
    global _previous, _installed
    if threading.current_thread() is not threading.main_thread():
        return False
    with _lock:
        if not _installed:
            current = signal.getsignal(signal.SIGTERM)
            if current is None or current == signal.SIG_IGN:
                return False
            signal.signal(signal.SIGTERM, _handler)
            _previous, _installed = current, True
        _watchers.append(watcher)
    return True


def unwatch(watcher: _Watcher) -> None:
    """Stop telling `watcher`; the last one out puts the previous handler back."""
    global _previous, _installed, _deferred
    deferred = False
    with _lock:
        if watcher in _watchers:
            _watchers.remove(watcher)
        if _watchers or not _installed:
            return
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may; ours keeps calling the previous one
        if signal.getsignal(signal.SIGTERM) is _handler:
            signal.signal(signal.SIGTERM, _previous)
        _previous, _installed = None, False
        deferred, _deferred = _deferred, False
    if deferred:
        os.kill(os.getpid(), signal.SIGTERM)  # now to the handler that was there before
