"""Tensor downloads: GET /download/<run>/<iteration>/<tensor>.npy|.csv

A Flask route on the Dash server. Every path part is checked (Flask's int
converter for run and iteration, `storage.names.check` and a format list for
the rest; the name may hold any character a tensor name can, "/" included) and looked up through `storage`; anything unknown is a 404. `.npy` is
written with allow_pickle=False; `.csv` has a comment header that gives the
tensor's shape, then its values as a matrix (N-D tensors as (prod of leading
dims, last dim) rows in C order).
"""

from __future__ import annotations

import io
import re

import flask
import numpy as np

from storage import TensorRecord, names

from .data import current_store
from .links import DOWNLOAD, DOWNLOAD_FORMATS

# A tensor name may hold "/" or quotes; the file it is saved as may not.
_FILENAME_UNSAFE = re.compile(r"[^\w.#@=+-]", re.ASCII)


def register(server: flask.Flask) -> None:
    server.add_url_rule(
        f"{DOWNLOAD}/<int:run_id>/<int:index>/<path:filename>",
        endpoint="cnnviz_download",
        view_func=download,
        methods=["GET"],
    )
    # Anything else under /download is a 404 too, not the app's page shell.
    server.add_url_rule(
        f"{DOWNLOAD}/<path:_rest>",
        endpoint="cnnviz_download_unknown",
        view_func=lambda _rest: flask.abort(404),
    )
    server.add_url_rule(
        DOWNLOAD, endpoint="cnnviz_download_root", view_func=lambda: flask.abort(404)
    )


def download(run_id: int, index: int, filename: str) -> flask.Response:
    name, dot, fmt = filename.rpartition(".")
    if not dot or fmt not in DOWNLOAD_FORMATS or not names.is_valid(name):
        flask.abort(404)
    record = current_store().load_tensor(run_id, index, name)
    if record is None:
        flask.abort(404)
    stem = f"run{run_id}-it{index}-{_FILENAME_UNSAFE.sub('_', name)}"
    if fmt == "npy":
        body, mimetype = npy_bytes(record), "application/octet-stream"
    else:
        body, mimetype = csv_text(record, run_id=run_id, index=index).encode("utf-8"), "text/csv"
    response = flask.Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{stem}.{fmt}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Cnnviz-Shape"] = ",".join(str(d) for d in record.shape)
    return response


def npy_bytes(record: TensorRecord) -> bytes:
    """The stored values as .npy: the full tensor, or (under a store size bound) the
    flat first elements that were kept."""
    buffer = io.BytesIO()
    np.save(
        buffer, np.asarray(record.array), allow_pickle=False
    )  # (ascontiguousarray would make 0-d 1-d)
    return buffer.getvalue()


def _value_format(array: np.ndarray) -> str:
    if array.dtype.kind in "biu":
        return "%d"
    # Enough digits to read back the exact float32 / float64 value.
    return "%.9g" if array.dtype.itemsize <= 4 else "%.17g"


def csv_text(record: TensorRecord, *, run_id: int, index: int) -> str:
    array = np.asarray(record.array)
    if array.dtype.kind == "b":
        array = array.astype(np.int64)
    shape = tuple(record.shape)
    header = [
        f"cnnviz run {run_id}, iteration {index}, tensor {record.name}",
        f"role {record.role}, shape ({', '.join(str(d) for d in shape)}), dtype {array.dtype.name}",
    ]
    if record.truncated:
        header.append(
            f"only the first {array.size} of {int(np.prod(shape))} values were stored; one per line, C order"
        )
        matrix = array.reshape(-1, 1)
    elif len(shape) == 0:
        matrix = array.reshape(1, 1)
    elif len(shape) == 1:
        header.append("one value per line (a column vector)")
        matrix = array.reshape(-1, 1)
    elif len(shape) == 2:
        matrix = array
    else:
        header.append(
            f"rows: indices over the first {len(shape) - 1} axes in C order; columns: the last axis"
        )
        matrix = array.reshape(-1, shape[-1])
    buffer = io.StringIO()
    np.savetxt(
        buffer,
        matrix,
        fmt=_value_format(array),
        delimiter=",",
        header="\n".join(header),
        comments="# ",
    )
    return buffer.getvalue()
