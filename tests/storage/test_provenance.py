"""storage.provenance on the seed CNN: every cell of every tensor a step computes,
in every stored iteration, recomputed from the cells its provenance reads."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from storage import RunStore
from storage.provenance import NotExplained, Window, explain_cell, im2col, pool_window

# The only tensors no step computes: the batch, the labels, the weights at the start.
GIVENS = {"input", "target", "conv.weight", "conv.bias", "fc.weight", "fc.bias"}


@pytest.fixture(scope="module")
def seed_run(seed_store):
    with RunStore(seed_store) as store:
        run = store.get_run(1)
        records = [store.load_iteration(1, i.index) for i in store.iterations(1)]
    return run, records


def _explain(run, record, name, index):
    return explain_cell(
        record,
        {layer.name: layer.type for layer in run.layers},
        name,
        index,
        optimizer=run.optimizer,
        settings=run.optimizer_settings,
    )


def test_every_computed_cell_of_the_seed_cnn_recomputes_its_stored_value(seed_run):
    run, records = seed_run
    for record in records:
        walked = 0
        for tensor in record.tensors:
            computed = tensor.name not in GIVENS
            for index in itertools.product(*(range(d) for d in tensor.array.shape)):
                if not computed:
                    with pytest.raises(NotExplained, match="given of this iteration"):
                        _explain(run, record, tensor.name, index)
                    continue
                prov = _explain(run, record, tensor.name, index)
                assert prov.matches, (record.index, tensor.name, index, prov.formula)
                assert prov.stored == float(tensor.array[index])
                shown = f"{prov.recomputed:.6g}"  # the result is written out
                assert shown in prov.formula or str(int(prov.recomputed)) in prov.formula
                for term in prov.terms:  # every value shown is the stored one
                    assert term.value == float(record.tensor(term.tensor).array[term.index])
                walked += 1
        assert walked > 150


def test_a_conv_output_is_its_patch_times_the_kernel_plus_bias(seed_run):
    run, records = seed_run
    record = records[0]
    prov = _explain(run, record, "conv.Y_col", (4, 0))
    assert prov.kind == "conv" and prov.matches
    reads = prov.reads()
    assert reads["conv.X_col"] == [(4, k) for k in range(4)]
    assert reads["conv.W_flat"] == [(0, k) for k in range(4)]
    assert reads["conv.bias"] == [(0,)]
    assert prov.formula.startswith("Y_col[4,0] = Σ_k X_col[4,k]·W_flat[0,k] + b[0] = (")


def test_a_gradient_sums_every_path_overlapping_pool_windows(seed_run):
    """Pool 2x2 stride 1 on 3x3: the centre can win up to four windows; its gradient
    is the sum of the upstream gradients of exactly the windows it won."""
    run, records = seed_run
    record = records[0]
    argmax = record.tensor("pool.argmax").array
    counts = np.bincount(argmax.reshape(-1), minlength=9).reshape(3, 3)
    h, w = np.unravel_index(int(np.argmax(counts)), counts.shape)
    prov = _explain(run, record, "relu.out.grad", (0, 0, int(h), int(w)))
    upstream = [t for t in prov.terms if t.tensor == "pool.out.grad"]
    assert len(upstream) == counts[h, w] and prov.matches
    # col2im: every input pixel sums the dX_col entries of all patches that copied it
    prov = _explain(run, record, "input.grad", (0, 0, 1, 1))
    assert len(prov.reads()["conv.dX_col"]) == 4 and prov.matches


def test_windows_are_recovered_and_checked():
    x = np.arange(2 * 1 * 5 * 5, dtype=np.float32).reshape(2, 1, 5, 5)
    window = Window((3, 3), (2, 2), (1, 1))
    cols = im2col(x, window)
    assert cols.shape == (2 * 3 * 3, 9)
    assert cols[0, 0] == 0 and cols[0, 4] == x[0, 0, 0, 0]  # padding, then the centre
    out = im2col(x.reshape(-1, 1, 5, 5), Window((2, 2), (1, 1), (0, 0))).max(axis=1)
    assert pool_window(x, out.reshape(2, 1, 4, 4)) == Window((2, 2), (1, 1), (0, 0))


def test_bad_cells_say_why(seed_run):
    run, records = seed_run
    with pytest.raises(NotExplained, match="has no cell"):
        _explain(run, records[0], "fc.out", (0, 9))
    with pytest.raises(NotExplained, match="no.such is not stored in this iteration"):
        _explain(run, records[0], "no.such", (0,))


def test_a_truncated_tensor_explains_the_cells_it_kept_and_says_which_it_did_not(seed_run):
    """A storage bound keeps a tensor's first elements (C order): a cell whose terms were
    all kept is explained; one that reads beyond them names the missing cell."""
    import copy

    from storage.records import TensorRecord

    run, records = seed_run
    record = copy.deepcopy(records[0])
    whole = record.tensor("fc.weight").array
    kept = whole.shape[1]  # the first row: what fc.out[:, 0] reads
    record.tensors = [
        TensorRecord(t.name, t.role, whole.reshape(-1)[:kept], t.layer, shape=whole.shape)
        if t.name == "fc.weight"
        else t
        for t in record.tensors
    ]
    assert record.tensor("fc.weight").truncated
    prov = _explain(run, record, "fc.out", (0, 0))
    assert prov.matches and prov.reads()["fc.weight"] == [(0, k) for k in range(kept)]
    with pytest.raises(NotExplained, match=r"reads fc.weight\[1,0\], beyond the first"):
        _explain(run, record, "fc.out", (0, 1))
    with pytest.raises(NotExplained, match=r"fc.weight\[1,0\] is not stored: a storage bound kept"):
        _explain(run, record, "fc.weight", (1, 0))
    assert _explain(run, record, "fc.weight.next", (0, 1)).matches
    with pytest.raises(NotExplained, match=r"reads fc.weight\[1,1\], beyond the first"):
        _explain(run, record, "fc.weight.next", (1, 1))
    # a rule that needs the whole tensor (to recover a window, say) is told so
    from storage.provenance.core import Missing, Prefix

    with pytest.raises(Missing) as missing:
        np.asarray(Prefix("fc.weight", whole.reshape(-1)[:kept], whole.shape))
    assert missing.value.reason() == "reads all of fc.weight, which is not stored whole"


def test_a_momentum_update_reads_the_stored_buffer(tmp_path):
    from tracer.train import run_builtin

    db = tmp_path / "momentum.db"
    run_builtin(seed=0, db=db, optimizer="momentum", iterations=2)
    with RunStore(db) as store:
        run = store.get_run(1)
        record = store.load_iteration(1, 2)
    for tensor in record.tensors:
        if not tensor.name.endswith(".next"):
            continue
        for index in itertools.product(*(range(d) for d in tensor.array.shape)):
            prov = _explain(run, record, tensor.name, index)
            assert prov.matches and "w - η v" in prov.formula, prov.formula
            # the buffer the update step reads: ours, checked against PyTorch's state
            assert prov.terms[1].tensor == tensor.name.removesuffix(".next") + ".momentum_buffer"


def test_long_sums_are_written_with_their_ends_and_computed_whole():
    from storage.provenance import MAX_WRITTEN_TERMS, Term, _dot

    a = [Term("x", (i,), float(i)) for i in range(400)]
    b = [Term("w", (i,), 1.0) for i in range(400)]
    total, text = _dot(a, b)
    assert total == sum(range(400))
    assert text.count(")(") == MAX_WRITTEN_TERMS  # products written out
    assert "… (388 more terms)" in text and text.endswith("(398)(1) + (399)(1)")


def test_small_cnn_batchnorm_and_dropout_cells_recompute(tmp_path):
    """small-cnn adds BatchNorm2d and Dropout: 20 random cells of every tensor a step
    computes (plus its first and last cell), recomputed and checked."""
    import random

    from tracer.train import run_builtin

    db = tmp_path / "small.db"
    run_builtin(
        model_name="small-cnn",
        seed=0,
        db=db,
        samples=4,
        batch_size=4,
        iterations=1,
        max_elements=None,
    )
    with RunStore(db) as store:
        run = store.get_run(1)
        record = store.load_iteration(1, 1)
    rng = random.Random(0)
    givens = {"input", "target", "dropout.mask"} | {
        t.name for t in record.tensors if t.role == "param" or t.name.endswith(".before")
    }
    kinds = set()
    for tensor in record.tensors:
        cells = list(itertools.product(*(range(d) for d in tensor.array.shape)))
        picked = {cells[0], cells[-1], *rng.sample(cells, min(20, len(cells)))}
        for index in picked:
            if tensor.name in givens:
                with pytest.raises(NotExplained):
                    _explain(run, record, tensor.name, index)
                continue
            prov = _explain(run, record, tensor.name, index)
            assert prov.matches, (tensor.name, index, prov.formula)
            kinds.add(prov.kind)
    assert {
        "bn-mean",
        "bn-var",
        "bn-normalise",
        "bn-affine",
        "bn-running",
        "bn-input-grad",
    } <= kinds
    assert {"dropout", "dropout-grad", "bn-weight-grad"} <= kinds
