"""An independent check of the stored seed runs: plain NumPy loops, written from the
textbook definitions (no im2col, no torch, no tracer code), recompute all three
iterations from the stored initial weights and the stored inputs alone, and every
stored tensor must agree."""

from __future__ import annotations

import numpy as np
import pytest

from storage import RunStore

TOL = 1e-5


def conv_forward(x, w, b):  # x (H, W), w (2, 2)
    out = np.zeros((x.shape[0] - 1, x.shape[1] - 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = b + sum(w[a, c] * x[i + a, j + c] for a in range(2) for c in range(2))
    return out


def maxpool_forward(a):  # 2x2 windows, stride 1; the first maximum in scan order wins
    out = np.zeros((a.shape[0] - 1, a.shape[1] - 1))
    where = np.zeros(out.shape, dtype=np.int64)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            best, best_at = -np.inf, None
            for p in range(i, i + 2):
                for q in range(j, j + 2):
                    if a[p, q] > best:
                        best, best_at = a[p, q], p * a.shape[1] + q
            out[i, j], where[i, j] = best, best_at
    return out, where


def one_sample(x, y, params, n):
    """Forward and backward for one sample; gradients already divided by the batch size n."""
    cw, cb, fw, fb = params
    t = {}
    t["conv.out"] = z1 = conv_forward(x, cw, cb)
    t["relu.out"] = a1 = np.maximum(z1, 0)
    t["relu.mask"] = (z1 > 0).astype(float)
    t["pool.out"], t["pool.argmax"] = pooled, where = maxpool_forward(a1)
    t["flatten.out"] = v = pooled.reshape(-1)
    t["fc.out"] = z = fw @ v + fb
    e = np.exp(z - z.max())
    t["loss.probs"] = p = e / e.sum()
    t["loss.predicted"] = int(np.argmax(p))
    t["nll"] = -np.log(p[y])
    t["loss.onehot"] = onehot = np.eye(len(z))[y]
    t["fc.out.grad"] = dz = (p - onehot) / n
    t["fc.weight.grad"] = np.outer(dz, v)
    t["fc.bias.grad"] = dz
    t["flatten.out.grad"] = dv = fw.T @ dz
    t["pool.out.grad"] = dpool = dv.reshape(pooled.shape)
    da = np.zeros_like(a1)
    count = np.zeros_like(a1)
    for i in range(where.shape[0]):
        for j in range(where.shape[1]):
            r, c = divmod(where[i, j], a1.shape[1])
            da[r, c] += dpool[i, j]
            count[r, c] += 1
    t["relu.out.grad"] = da
    t["pool.route_count"] = count
    t["conv.out.grad"] = dz1 = da * (z1 > 0)
    dcw = np.zeros((2, 2))
    dx = np.zeros_like(x)
    for i in range(dz1.shape[0]):
        for j in range(dz1.shape[1]):
            for a in range(2):
                for c in range(2):
                    dcw[a, c] += dz1[i, j] * x[i + a, j + c]
                    dx[i + a, j + c] += dz1[i, j] * cw[a, c]
    t["conv.weight.grad"] = dcw
    t["conv.bias.grad"] = dz1.sum()
    t["input.grad"] = dx
    # The matrix-form intermediates, written from their definitions.
    t["conv.X_col"] = np.array(
        [[x[i + a, j + c] for a in range(2) for c in range(2)] for i in range(3) for j in range(3)]
    )
    t["conv.Y_col"] = z1.reshape(-1, 1)
    t["conv.dY_col"] = dz1.reshape(-1, 1)
    t["conv.dX_col"] = np.array(
        [
            [dz1[i, j] * cw[a, c] for a in range(2) for c in range(2)]
            for i in range(3)
            for j in range(3)
        ]
    )
    return t


def recompute(records, lr):
    """Yield, per iteration, every tensor name -> our value, chaining our own updates."""
    first = records[0]
    params = [
        first.tensor(n).array.astype(np.float64)
        for n in ("conv.weight", "conv.bias", "fc.weight", "fc.bias")
    ]
    for record in records:
        xs = record.tensor("input").array.astype(np.float64)  # (N, 1, 4, 4)
        ys = record.tensor("target").array
        n = len(ys)
        cw, cb, fw, fb = params[0][0, 0], params[1][0], params[2], params[3]
        samples = [one_sample(xs[k, 0], int(ys[k]), (cw, cb, fw, fb), n) for k in range(n)]

        def stack(key, shape=None, samples=samples):
            arr = np.stack([np.asarray(s[key], dtype=np.float64) for s in samples])
            return arr.reshape(shape) if shape else arr

        def total(key, samples=samples):
            return sum(s[key] for s in samples)

        ours = {
            "input": xs,
            "target": ys,
            "conv.out": stack("conv.out", (n, 1, 3, 3)),
            "relu.out": stack("relu.out", (n, 1, 3, 3)),
            "relu.mask": stack("relu.mask", (n, 1, 3, 3)),
            "pool.out": stack("pool.out", (n, 1, 2, 2)),
            "pool.argmax": stack("pool.argmax", (n, 1, 2, 2)),
            "pool.route_count": stack("pool.route_count", (n, 1, 3, 3)),
            "flatten.out": stack("flatten.out"),
            "fc.out": stack("fc.out"),
            "loss.value": np.mean([s["nll"] for s in samples]),
            "loss.probs": stack("loss.probs"),
            "loss.predicted": stack("loss.predicted"),
            "loss.onehot": stack("loss.onehot"),
            "fc.out.grad": stack("fc.out.grad"),
            "flatten.out.grad": stack("flatten.out.grad"),
            "pool.out.grad": stack("pool.out.grad", (n, 1, 2, 2)),
            "relu.out.grad": stack("relu.out.grad", (n, 1, 3, 3)),
            "conv.out.grad": stack("conv.out.grad", (n, 1, 3, 3)),
            "input.grad": stack("input.grad", (n, 1, 4, 4)),
            "conv.X_col": np.concatenate([s["conv.X_col"] for s in samples]),
            "conv.W_flat": cw.reshape(1, 4),
            "conv.Y_col": np.concatenate([s["conv.Y_col"] for s in samples]),
            "conv.dY_col": np.concatenate([s["conv.dY_col"] for s in samples]),
            "conv.dX_col": np.concatenate([s["conv.dX_col"] for s in samples]),
        }
        grads = [
            total("conv.weight.grad").reshape(1, 1, 2, 2),
            np.array([total("conv.bias.grad")]),
            total("fc.weight.grad"),
            total("fc.bias.grad"),
        ]
        for name, value, grad in zip(
            ("conv.weight", "conv.bias", "fc.weight", "fc.bias"), params, grads
        ):
            ours[name] = value
            ours[f"{name}.grad"] = grad
            ours[f"{name}.next"] = value - lr * grad
            ours[f"{name}.update"] = -lr * grad
        yield record, ours
        params = [
            ours[f"{name}.next"] for name in ("conv.weight", "conv.bias", "fc.weight", "fc.bias")
        ]


@pytest.mark.parametrize("run_id", [1, 2])
def test_stored_run_equals_independent_numpy(seed_store, run_id):
    with RunStore(seed_store) as store:
        run = store.get_run(run_id)
        records = [store.load_iteration(run_id, s.index) for s in store.iterations(run_id)]
    assert len(records) == 3
    for record, ours in recompute(records, run.learning_rate):
        stored = {t.name: t.array for t in record.tensors}
        assert set(stored) == set(ours), "every stored tensor is recomputed, nothing else"
        for name, value in ours.items():
            np.testing.assert_allclose(
                stored[name].astype(np.float64),
                np.reshape(value, stored[name].shape),
                atol=TOL,
                rtol=TOL,
                err_msg=f"iteration {record.index}: {name}",
            )
        assert record.loss == pytest.approx(float(ours["loss.value"]), abs=TOL)
        loss_step = next(s for s in record.steps if s.title == "Cross-entropy loss")
        assert loss_step.formula_values.endswith(f"= {float(ours['loss.value']):.4f}")


def test_batch_run_equals_independent_numpy(tmp_path):
    from tracer.train import run_builtin

    run = run_builtin(seed=11, samples=4, epochs=3, db=tmp_path / "b.db", strict=True)
    with RunStore(tmp_path / "b.db") as store:
        records = [store.load_iteration(run.run_id, i) for i in (1, 2, 3)]
    for record, ours in recompute(records, 0.1):
        for tensor in record.tensors:
            np.testing.assert_allclose(
                tensor.array.astype(np.float64),
                np.reshape(ours[tensor.name], tensor.array.shape),
                atol=TOL,
                rtol=TOL,
                err_msg=f"iteration {record.index}: {tensor.name}",
            )
