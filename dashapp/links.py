"""URLs of the dashboard's pages and downloads, built in one place.

Every choice a page offers lives in its query string, so any view can be
bookmarked, shared and reached with the browser's back and forward buttons.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote, quote_plus, urlencode

RUNS = "/"
MODEL = "/model"
ITERATION = "/iteration"
COMPARE = "/compare"
DOWNLOAD = "/download"
DOWNLOAD_FORMATS = ("npy", "csv")


def _with_query(path: str, params: dict) -> str:
    # Numbers need no quoting: "run=5&it=1" is what urlencode gives, without its cost
    # (a page of 50 runs makes 150 of these links).
    query = "&".join(
        f"{quote_plus(k)}={v}" if type(v) is int else urlencode({k: v})
        for k, v in params.items()
        if v is not None and v != ""
    )
    return f"{path}?{query}" if query else path


def runs(sort: str | None = None, order: str | None = None, **query) -> str:
    """The runs page; `query` carries its other choices (page, per, model, seed, status,
    name, from, to, pick), each left out when None or empty."""
    return _with_query(RUNS, {"sort": sort, "order": order, **query})


def model(run_id: int) -> str:
    return _with_query(MODEL, {"run": run_id})


def iteration(
    run_id: int,
    index: int,
    anchor: str | None = None,
    *,
    phase: str | None = None,
    layer: str | None = None,
) -> str:
    """One iteration; `phase` ("input", "forward", "loss", "backward", "update", "whatif")
    and `layer` pick the part shown (none: the input)."""
    url = _with_query(ITERATION, {"run": run_id, "it": index, "phase": phase, "layer": layer})
    return f"{url}#{anchor}" if anchor else url


def selection(run_id: int, index: int) -> str:
    """A compare-page side: run 1, iteration 3 -> '1:3'."""
    return f"{run_id}:{index}"


def compare(
    a: tuple[int, int] | None = None,
    b: tuple[int, int] | None = None,
    *,
    layer: str | None = None,
    role: str | None = None,
    tensor: str | None = None,
    runs: Iterable[int] | None = None,
    index: Iterable[int] | None = None,
    first: bool = False,
    views: dict[str, str] | None = None,
) -> str:
    """`first`: the page also says where the two runs first diverge (storage.diverge).
    `views`: tensor panel views, {tensor name: 'SAMPLE,CHANNEL@ROW,COLUMN'} (1-based),
    written as the panels write them (`t.<tensor>` keys)."""
    params = {
        "a": selection(*a) if a else None,
        "b": selection(*b) if b else None,
        "layer": layer,
        "role": role,
        "tensor": tensor,
        "runs": ",".join(str(r) for r in runs) if runs else None,
        "slice": ",".join(str(i) for i in index) if index else None,
        "first": 1 if first else None,
        **{f"t.{name}": view for name, view in (views or {}).items()},
    }
    return _with_query(COMPARE, params)


def download(run_id: int, index: int, tensor: str, fmt: str) -> str:
    """/download/<run>/<iteration>/<tensor>.<npy|csv>; the name is percent-encoded."""
    if fmt not in DOWNLOAD_FORMATS:
        raise ValueError(f"unknown download format {fmt!r}")
    return f"{DOWNLOAD}/{int(run_id)}/{int(index)}/{quote(tensor, safe='')}.{fmt}"
