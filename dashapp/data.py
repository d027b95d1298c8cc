"""The pages' access to the store, and the checks on what a URL names.

Each app keeps one read-only `storage.RunStore` (SQLite opened with mode=ro);
pages and callbacks reach it through the Flask app that serves the request.
Whatever a URL names (a run id, an iteration, a layer) is parsed strictly and
looked up; anything unknown raises `NotFound`, which the pages turn into the
friendly not-found page.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import flask
import numpy as np

from storage import IterationRecord, RunInfo, RunQuery, RunStore
from storage.provenance import Prefix

STORE_KEY = "cnnviz.store"
LOCATION_KEY = "CNNVIZ_STORE"

_INT = re.compile(r"[0-9]{1,9}")
_SELECTION = re.compile(r"([0-9]{1,9}):([0-9]{1,9})")


class NotFound(LookupError):
    """The URL names something the store does not hold; the message says what."""


def current_store() -> RunStore:
    return flask.current_app.extensions[STORE_KEY]


def store_location() -> str:
    return flask.current_app.config[LOCATION_KEY]


def _single(value, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):  # ?run=1&run=2 arrives as a list
        raise NotFound(f"the address gives {what} more than once")
    return str(value).strip()


def parse_text(value, what: str) -> str | None:
    """One word from the query string; None when absent or empty."""
    return _single(value, what) or None


def parse_int(value, what: str, *, minimum: int = 1) -> int | None:
    """A positive integer from the query string; None when absent or empty."""
    text = _single(value, what)
    if not text:
        return None
    if not _INT.fullmatch(text) or int(text) < minimum:
        raise NotFound(f"{what} {text!r} is not a valid number")
    return int(text)


def parse_selection(value, what: str) -> tuple[int, int] | None:
    """'1:3' (run 1, iteration 3) from the query string; None when absent or empty."""
    text = _single(value, what)
    if not text:
        return None
    match = _SELECTION.fullmatch(text)
    if not match or int(match.group(2)) < 1:
        raise NotFound(f"{what} {text!r} is not of the form RUN:ITERATION, e.g. 1:3")
    return int(match.group(1)), int(match.group(2))


def parse_int_list(value, what: str) -> list[int] | None:
    """'1,2,3' from the query string; None when absent or empty."""
    text = _single(value, what)
    if not text:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(_INT.fullmatch(p) for p in parts):
        raise NotFound(f"{what} {text!r} is not a comma-separated list of numbers")
    return list(dict.fromkeys(int(p) for p in parts))


def require_run(store: RunStore, run_id: int) -> RunInfo:
    run = store.get_run(run_id)
    if run is None:
        raise NotFound(f"there is no run {run_id} in this store")
    return run


def require_iteration(
    store: RunStore, run: RunInfo, index: int, *, with_data: bool = True
) -> IterationRecord:
    record = store.load_iteration(run.id, index, with_data=with_data)
    if record is None:
        count = run.num_iterations
        stored = (
            f"it has {count} iteration{'s' if count != 1 else ''}"
            if count
            else "it has no iterations yet"
        )
        raise NotFound(f"run {run.id} has no iteration {index}: {stored}")
    return record


def default_run(store: RunStore) -> RunInfo | None:
    """The run a page shows when the URL names none: the most recent one."""
    latest = store.run_page(RunQuery(limit=1, sort="id", descending=True)).runs
    return store.get_run(latest[0].id) if latest else None


def require_stored(store: RunStore, run: RunInfo, index: int) -> None:
    """NotFound unless the run stores iteration `index` (without loading it)."""
    if not any(s.index == index for s in store.iterations(run.id)):
        count = run.num_iterations
        stored = (
            f"it has {count} iteration{'s' if count != 1 else ''}"
            if count
            else "it has no iterations yet"
        )
        raise NotFound(f"run {run.id} has no iteration {index}: {stored}")


def keep_found(maxsize: int):
    """Like functools.lru_cache, but None (not stored, or not yet) is not kept: the
    iteration a running run commits next is found on the next call. Nor is an
    iteration traced with explanation off and not explained yet (`unexplained`):
    `cnnviz explain` replaces it, once."""

    def decorate(load):
        kept: OrderedDict = OrderedDict()
        lock = threading.Lock()

        @functools.wraps(load)
        def cached(*args):
            with lock:
                if args in kept:
                    kept.move_to_end(args)
                    return kept[args]
            value = load(*args)
            if value is not None and not getattr(value, "unexplained", False):
                with lock:
                    kept[args] = value
                    while len(kept) > maxsize:
                        kept.popitem(last=False)
            return value

        cached.cache_clear = kept.clear
        return cached

    return decorate


@keep_found(maxsize=4)
def cached_iteration(store: RunStore, run_id: int, index: int) -> IterationRecord | None:
    """An iteration with its tensors, kept for the next clicks on the same page.

    A committed iteration never changes (one transaction per iteration), so the
    what-if and provenance clicks on one page read the store once."""
    return store.load_iteration(run_id, index)


@keep_found(maxsize=16)
def cached_steps(store: RunStore, run_id: int, index: int) -> IterationRecord | None:
    """An iteration's steps and tensor metadata, without tensor bytes."""
    return store.load_iteration(run_id, index, with_data=False)


class StoredArrays(Mapping):
    """name -> whole stored tensor of one iteration, read from the store on first use.

    A provenance answer reads a few tensors of an iteration, not all of them: this
    keeps the first click on a LeNet-5 page from loading ~90 tensors. A tensor the
    store holds truncated is a `storage.provenance.Prefix` of its kept elements."""

    def __init__(self, store: RunStore, run_id: int, index: int, names):
        self._store, self._run, self._index = store, run_id, index
        self._names = list(names)
        self._known = set(self._names)
        self._loaded: dict[str, np.ndarray | None] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._known:
            raise KeyError(name)
        if name not in self._loaded:
            record = self._store.load_tensor(self._run, self._index, name)
            if record is None:
                self._loaded[name] = None
            elif record.truncated:  # its kept cells still have an answer
                self._loaded[name] = Prefix(name, record.array, record.shape)
            else:
                self._loaded[name] = record.array
        array = self._loaded[name]
        if array is None:
            raise KeyError(name)
        return array

    def __contains__(self, name) -> bool:
        """Known without reading it: every tensor the iteration lists is stored (whole,
        or its first elements as a Prefix)."""
        return name in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class PreviousArrays(Mapping):
    """The tensors of the iteration before, read only when an answer needs one (an
    optimizer's state before the step is that iteration's state after it)."""

    def __init__(self, store: RunStore, run_id: int, index: int):
        self._store, self._run, self._index = store, run_id, index

    def _arrays(self) -> Mapping[str, np.ndarray]:
        if self._index < 1:
            return {}
        return cached_arrays(self._store, self._run, self._index) or {}

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays())

    def __len__(self) -> int:
        return len(self._arrays())


@keep_found(maxsize=8)
def cached_arrays(store: RunStore, run_id: int, index: int) -> StoredArrays | None:
    """The lazily read tensors of one iteration, shared by the clicks on its page."""
    record = cached_steps(store, run_id, index)
    if record is None:
        return None
    return StoredArrays(store, run_id, index, [t.name for t in record.tensors])
