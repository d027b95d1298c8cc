"""Which 2-D piece of a stored tensor a heatmap shows.

A heatmap shows a matrix the way the formula writes it: a 2-D tensor as it is,
a 1-D tensor as a column vector (as `\\begin{bmatrix}` prints it), a scalar as
a 1x1 matrix, and an N-D tensor as one (rows, cols) plane picked by its
leading indices (sample and channel of an activation, output and input
channel of a kernel). Planes beyond MAX_ROWS x MAX_COLS show their top-left
window, so a (64, 6, 28, 28) activation or a 50176-row im2col matrix stays a
fast page; the full values are in the downloads.

A tensor stored under a size bound holds only its first elements (C order);
the cells past them are `missing` and print as blanks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage import names

from .formatting import number_style

# The largest window a heatmap draws (cells beyond it are in the downloads).
MAX_ROWS = 64
MAX_COLS = 64
# Values are printed in the cells up to this size; bigger planes show them on hover.
TEXT_MAX_ROWS = 24
TEXT_MAX_COLS = 12

_WEIGHT_ROLES = set(names.WEIGHT_ROLES)


@dataclass(frozen=True)
class LeadDim:
    """One leading dimension of an N-D tensor, chosen with a selector."""

    axis: int
    label: str  # "sample", "channel", "out channel", ...
    size: int


@dataclass(frozen=True)
class MatrixView:
    values: np.ndarray  # (rows shown, cols shown) float64; NaN where missing
    missing: np.ndarray  # bool, same shape: True where the store holds no value
    style: str  # number style of the stored values (formatting.number_style)
    shape: tuple[int, ...]  # the full tensor's shape
    lead: tuple[LeadDim, ...]  # leading dimensions (N-D tensors only)
    lead_index: tuple[int, ...]  # 0-based index into `lead`
    plane: tuple[int, int]  # (rows, cols) of the whole plane
    caption: str  # which piece this is, in words ('' for a whole small matrix)
    origin: tuple[int, int] = (0, 0)  # 0-based (row, column) of the window's top-left cell
    role: str = ""  # the tensor's role (labels get a categorical scale)
    full_range: tuple[float, float] | None = None  # min, max over the full tensor (finite)

    @property
    def clipped(self) -> bool:
        return self.values.shape != self.plane

    @property
    def show_text(self) -> bool:
        rows, cols = self.values.shape
        return rows <= TEXT_MAX_ROWS and cols <= TEXT_MAX_COLS


def lead_dims(shape: tuple[int, ...], role: str = "") -> tuple[LeadDim, ...]:
    """The leading dimensions of an N-D tensor (everything but the last two)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) <= 2:
        return ()
    if role in _WEIGHT_ROLES and len(shape) == 4:
        names = ["out channel", "in channel"]
    else:
        names = ["sample", "channel"]
    names += [f"axis {i}" for i in range(len(names), len(shape) - 2)]
    return tuple(LeadDim(axis=i, label=names[i], size=shape[i]) for i in range(len(shape) - 2))


def plane_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (shape[0], 1)  # a column vector, as the formulas print 1-D tensors
    return (shape[-2], shape[-1])


def clamp_index(lead: tuple[LeadDim, ...], index) -> tuple[int, ...]:
    """A valid 0-based lead index from whatever a selector sent (None, out of range)."""
    index = list(index or ())
    out = []
    for i, dim in enumerate(lead):
        try:
            value = int(index[i]) if i < len(index) and index[i] is not None else 0
        except (TypeError, ValueError):
            value = 0
        out.append(min(max(value, 0), max(dim.size - 1, 0)))
    return tuple(out)


def matrix_view(
    array: np.ndarray,
    shape: tuple[int, ...] | None = None,
    *,
    role: str = "",
    lead_index=(),
    max_rows: int = MAX_ROWS,
    max_cols: int = MAX_COLS,
) -> MatrixView:
    """The plane of `array` at `lead_index`, clipped to max_rows x max_cols.

    `array` is what the store returned: the full tensor, or (when `shape` says
    the tensor is bigger) its first elements in C order.
    """
    array = np.asarray(array)
    shape = tuple(int(d) for d in (array.shape if shape is None else shape))
    lead = lead_dims(shape, role)
    index = clamp_index(lead, lead_index)
    rows, cols = plane_shape(shape)
    shown_rows, shown_cols = min(rows, max_rows), min(cols, max_cols)

    stored = array.ravel()
    plane_offset = 0
    if lead:
        plane_offset = int(np.ravel_multi_index(index, tuple(d.size for d in lead))) * rows * cols
    flat = plane_offset + np.arange(shown_rows)[:, None] * cols + np.arange(shown_cols)[None, :]
    missing = flat >= stored.size
    values = np.full((shown_rows, shown_cols), np.nan, dtype=np.float64)
    values[~missing] = stored[flat[~missing]].astype(np.float64)
    kept = stored[flat[~missing]]
    style = number_style(kept if kept.size else stored[:0])

    parts = [
        f"{d.label} {i + 1} of {d.size}" for d, i in zip(lead, index, strict=True) if d.size > 1
    ]
    if shown_rows < rows:
        parts.append(f"rows 1–{shown_rows} of {rows}")
    if shown_cols < cols:
        parts.append(f"columns 1–{shown_cols} of {cols}")
    gaps = int(missing.sum())
    if gaps:
        parts.append(f"{gaps} of these {missing.size} values not stored (store size bound)")
    return MatrixView(
        values=values,
        missing=missing,
        style=style,
        shape=shape,
        lead=lead,
        lead_index=index,
        plane=(rows, cols),
        caption="; ".join(parts),
    )


def caption_of(lead, index, origin, shown, plane, gaps: int = 0, size: int = 0) -> str:
    """Which piece of the tensor a window is, in words (1-based, as a reader counts)."""
    parts = [
        f"{d.label} {i + 1} of {d.size}" for d, i in zip(lead, index, strict=True) if d.size > 1
    ]
    for start, count, total, what in (
        (origin[0], shown[0], plane[0], "rows"),
        (origin[1], shown[1], plane[1], "columns"),
    ):
        if count < total:
            parts.append(f"{what} {start + 1}–{start + count} of {total}")
    if gaps:
        parts.append(f"{gaps} of these {size} values not stored (store size bound)")
    return "; ".join(parts)


def window_view(window) -> MatrixView:
    """A `storage.TensorWindow` as the view a heatmap draws (colours over the full tensor)."""
    tensor = window.tensor
    lead = lead_dims(tensor.shape, tensor.role)
    missing = ~window.stored
    kept = window.values[window.stored]
    style = number_style(kept.astype(window.dtype) if kept.size else np.zeros(0, window.dtype))
    summary = tensor.summary or {}
    low, high = summary.get("min"), summary.get("max")
    return MatrixView(
        values=window.values,
        missing=missing,
        style=style,
        shape=tuple(tensor.shape),
        lead=lead,
        lead_index=tuple(window.lead),
        plane=tuple(window.plane),
        caption=caption_of(
            lead,
            window.lead,
            (window.row0, window.col0),
            window.values.shape,
            window.plane,
            int(missing.sum()),
            missing.size,
        ),
        origin=(window.row0, window.col0),
        role=tensor.role,
        full_range=(float(low), float(high)) if low is not None and high is not None else None,
    )


def difference_view(a: MatrixView, b: MatrixView) -> MatrixView:
    """B - A cell by cell, for two views of equally shaped tensors at the same slice."""
    if a.values.shape != b.values.shape or a.shape != b.shape:
        raise ValueError(f"cannot subtract shape {a.shape} from shape {b.shape}")
    missing = a.missing | b.missing
    values = b.values - a.values
    values[missing] = np.nan
    kept = values[~missing]
    return MatrixView(
        values=values,
        missing=missing,
        style=number_style(kept),
        shape=a.shape,
        lead=a.lead,
        lead_index=a.lead_index,
        plane=a.plane,
        caption=a.caption,
        origin=a.origin,  # a panned window's indices, not 0..
    )
