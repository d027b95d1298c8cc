"""Which 2-D piece of a stored tensor a heatmap shows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dashapp.tensorview import (
    MAX_COLS,
    MAX_ROWS,
    clamp_index,
    difference_view,
    lead_dims,
    matrix_view,
)


def test_a_matrix_is_shown_as_it_is():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = matrix_view(a)
    np.testing.assert_array_equal(view.values, a)
    assert view.plane == (3, 4) and view.caption == "" and view.show_text and not view.clipped


def test_a_vector_is_a_column_and_a_scalar_one_cell():
    view = matrix_view(np.array([1.0, 2.0, 3.0], dtype=np.float32))
    assert view.values.shape == (3, 1)
    np.testing.assert_array_equal(view.values[:, 0], [1, 2, 3])
    assert matrix_view(np.float32(2.5)).values.tolist() == [[2.5]]


def test_an_activation_plane_is_picked_by_sample_and_channel():
    a = np.random.default_rng(0).standard_normal((64, 6, 28, 28)).astype(np.float32)
    view = matrix_view(a, role="activation", lead_index=(3, 2))
    np.testing.assert_array_equal(view.values, a[3, 2])
    assert [d.label for d in view.lead] == ["sample", "channel"]
    assert view.caption == "sample 4 of 64; channel 3 of 6"
    assert not view.show_text  # 28 x 28 values are too many to print


def test_kernels_have_output_and_input_channels():
    assert [d.label for d in lead_dims((8, 3, 5, 5), "param_grad")] == ["out channel", "in channel"]
    assert [d.label for d in lead_dims((2, 3, 4, 5, 6), "activation")] == [
        "sample",
        "channel",
        "axis 2",
    ]


def test_tall_matrices_show_their_top_left_window():
    a = np.arange(50176 * 25, dtype=np.float32).reshape(50176, 25)
    view = matrix_view(a)
    assert view.values.shape == (MAX_ROWS, 25) and view.clipped
    np.testing.assert_array_equal(view.values, a[:MAX_ROWS])
    assert "rows 1–64 of 50176" in view.caption
    wide = matrix_view(np.zeros((2, 1000), dtype=np.float32))
    assert wide.values.shape == (2, MAX_COLS) and "columns 1–64 of 1000" in wide.caption


def test_a_bounded_tensor_shows_what_was_stored_and_marks_the_rest_missing():
    full = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    stored = full.ravel()[:20]  # a store bound kept the first 20 elements
    view = matrix_view(stored, full.shape, role="activation", lead_index=(0, 1))
    # plane (0, 1) covers flat elements 16..31: 16..19 stored, 20..31 not
    expected_missing = np.arange(16).reshape(4, 4) >= 4
    np.testing.assert_array_equal(view.missing, expected_missing)
    np.testing.assert_array_equal(view.values[~view.missing], full[0, 1].ravel()[:4])
    assert np.isnan(view.values[view.missing]).all()
    assert "12 of these 16 values not stored" in view.caption


def test_out_of_range_indices_are_clamped():
    lead = lead_dims((4, 3, 2, 2))
    assert clamp_index(lead, (9, -1)) == (3, 0)
    assert clamp_index(lead, ("x", None)) == (0, 0)
    assert clamp_index(lead, ()) == (0, 0)


def test_the_difference_is_b_minus_a_at_the_same_slice():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((2, 3, 5, 5))
    va = matrix_view(a, role="activation", lead_index=(1, 2))
    vb = matrix_view(b, role="activation", lead_index=(1, 2))
    np.testing.assert_allclose(difference_view(va, vb).values, b[1, 2] - a[1, 2])
    with pytest.raises(ValueError):
        difference_view(va, matrix_view(np.zeros((5, 5))))


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=3, max_dims=4, max_side=5),
        elements=st.floats(-10, 10, width=32),
    ),
    st.data(),
)
def test_every_plane_equals_numpy_indexing(array, data):
    lead = array.shape[:-2]
    index = tuple(data.draw(st.integers(0, d - 1)) for d in lead)
    view = matrix_view(array, lead_index=index)
    np.testing.assert_array_equal(view.values, array[index].astype(np.float64))
    assert not view.missing.any()
