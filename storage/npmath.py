"""The NumPy math of the layer types and optimizers cnnviz writes out, in one place.

Pure and torch-free: arrays in, arrays out. The tracer's explainers compute every
matrix-form step with these functions (and check the result against PyTorch), and
the dashboard's what-if (`storage.whatif`) recomputes a whole stored iteration
with the same functions, so a step and its what-if can never disagree about the
math. Settings are plain numbers (kernel, stride, eps, ...), never modules.

Arithmetic runs in float64 on float32 inputs, as the explainers always did; the
order of operations is part of the contract (traced stores are byte-identical
whichever side computes), so change an expression here only on purpose.

Shapes follow PyTorch: images (N, C, H, W), linear inputs (N, features), class
scores (rows, classes).
"""

from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------- conv (im2col)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def im2col(x, kernel, stride, padding, dilation, pad_value=0.0):
    """(N, C, H, W) -> (N*OH*OW, C*KH*KW) patch matrix, columns ordered (c, kh, kw)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh = conv_output_size(h, kh, sh, ph, dh)
    ow = conv_output_size(w, kw, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    cols = np.empty((n, oh, ow, c, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i * dh : i * dh + sh * oh : sh, j * dw : j * dw + sw * ow : sw]
            cols[:, :, :, :, i, j] = window[:, :, :oh, :ow].transpose(0, 2, 3, 1)
    return cols.reshape(n * oh * ow, c * kh * kw), (oh, ow)


def col2im(cols, x_shape, kernel, stride, padding, dilation):
    """Adjoint of im2col: adds every patch entry back onto the input position it came
    from, so positions covered by several patches (overlapping windows) accumulate."""
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh = conv_output_size(h, kh, sh, ph, dh)
    ow = conv_output_size(w, kw, sw, pw, dw)
    cols = cols.reshape(n, oh, ow, c, kh, kw)
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i * dh : i * dh + sh * oh : sh, j * dw : j * dw + sw * ow : sw] += cols[
                :, :, :, :, i, j
            ].transpose(0, 3, 1, 2)
    return xp[:, :, ph : ph + h, pw : pw + w]


# PyTorch's padding modes and NumPy's names for the same rule.
NP_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad_index(h: int, w: int, pads, mode: str) -> np.ndarray:
    """(H+top+bottom, W+left+right) map: the flat input index each padded position
    copies, or -1 for a zero. One map serves the forward gather and its adjoint."""
    top, bottom, left, right = pads
    index = np.arange(h * w).reshape(h, w)
    width = ((top, bottom), (left, right))
    if mode == "zeros":
        return np.pad(index, width, constant_values=-1)
    return np.pad(index, width, mode=NP_PAD_MODES[mode])


def pad_input(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, C, H', W') following `pad_index`."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    return np.where(index >= 0, flat[:, :, np.maximum(index, 0)], 0.0)


def unpad_grad(dxp: np.ndarray, x_shape, index: np.ndarray) -> np.ndarray:
    """Adjoint of `pad_input`: the gradient of every padded copy goes back to its source."""
    n, c, h, w = x_shape
    dx = np.zeros((n, c, h * w), dtype=dxp.dtype)
    valid = index >= 0
    np.add.at(dx, (slice(None), slice(None), index[valid]), dxp[:, :, valid])
    return dx.reshape(x_shape)


def conv2d_forward(xp, w, b, geometry, groups: int = 1):
    """The convolution as one matrix product per group, on the already padded input.

    xp (N, C, H', W'), w (OC, C/G, KH, KW), b (OC,) or None, geometry = (kernel,
    stride, (0, 0), dilation) -> X_col (N*OH*OW, C*KH*KW), Y_col (N*OH*OW, OC),
    Y (N, OC, OH, OW)."""
    n, oc = xp.shape[0], w.shape[0]
    cg, ocg = xp.shape[1] // groups, oc // groups
    cols, ycols = [], []
    for g in range(groups):
        x_col, (oh, ow) = im2col(xp[:, g * cg : (g + 1) * cg], *geometry)
        w_flat = w[g * ocg : (g + 1) * ocg].reshape(ocg, -1)  # (OC/G, C/G*KH*KW)
        cols.append(x_col)
        ycols.append(x_col @ w_flat.T)  # (N*OH*OW, OC/G)
    y_col = np.concatenate(ycols, axis=1)  # (N*OH*OW, OC)
    if b is not None:
        y_col = y_col + b
    y = y_col.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2)  # -> (N, OC, OH, OW)
    x_col = cols[0] if groups == 1 else np.concatenate(cols, axis=1)
    return x_col, y_col, y


def conv2d_backward(xp, w, dy, geometry, groups: int = 1):
    """dY (N, OC, OH, OW) -> dY_col (N*OH*OW, OC), dW (like w), dX_col, and dL/dX_pad
    (like xp; `unpad_grad` takes it back to the unpadded input)."""
    n, oc = xp.shape[0], w.shape[0]
    cg, ocg = xp.shape[1] // groups, oc // groups
    dy = dy.reshape((n,) + dy.shape[-3:])  # (N, OC, OH, OW)
    dy_col = dy.transpose(0, 2, 3, 1).reshape(-1, oc)  # (N*OH*OW, OC)
    dw = np.empty_like(w)
    dxp = np.empty_like(xp)
    dx_cols = []
    for g in range(groups):
        x_col, _ = im2col(xp[:, g * cg : (g + 1) * cg], *geometry)
        w_flat = w[g * ocg : (g + 1) * ocg].reshape(ocg, -1)
        dy_g = dy_col[:, g * ocg : (g + 1) * ocg]
        dw[g * ocg : (g + 1) * ocg] = (dy_g.T @ x_col).reshape(w_flat.shape[0], *w.shape[1:])
        dx_col = dy_g @ w_flat  # (N*OH*OW, C/G*KH*KW)
        dx_cols.append(dx_col)
        dxp[:, g * cg : (g + 1) * cg] = col2im(dx_col, (n, cg, *xp.shape[2:]), *geometry)
    dx_col = dx_cols[0] if groups == 1 else np.concatenate(dx_cols, axis=1)
    return dy_col, dw, dx_col, dxp


def conv2d_bias_grad(dy: np.ndarray) -> np.ndarray:
    """The bias is added at every output position: dL/db_o sums dY over N, OH, OW."""
    return dy.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------- pooling


def pool_output_size(size, kernel, stride, padding, dilation, ceil_mode) -> int:
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def windows(x, kernel, stride, padding, dilation, out_hw, pad_value):
    """(N, C, H, W) -> (N, C, OH, OW, KH*KW) window values and (OH, OW, KH*KW) flat input index.

    Extra rows/columns beyond the padded input (ceil_mode) are filled with pad_value,
    and their index is -1 so that nothing is ever routed there.
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh, ow = out_hw
    need_h = (oh - 1) * sh + dh * (kh - 1) + 1
    need_w = (ow - 1) * sw + dw * (kw - 1) + 1
    extra_h = max(0, need_h - (h + 2 * ph))
    extra_w = max(0, need_w - (w + 2 * pw))
    planes = x.reshape(n * c, 1, h, w)
    padded = np.pad(
        planes, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)), constant_values=pad_value
    )
    cols, _ = im2col(padded, kernel, stride, (0, 0), dilation)  # (N*C*OH'*OW', KH*KW)
    oh_all = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow_all = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    vals = cols.reshape(n, c, oh_all, ow_all, kh * kw)[:, :, :oh, :ow]
    # The same unfolding of the positions tells which input element each window entry is.
    index = np.arange(h * w, dtype=np.float64).reshape(1, 1, h, w)
    index = np.pad(
        index, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)), constant_values=-1
    )
    idx_cols, _ = im2col(index, kernel, stride, (0, 0), dilation)
    idx = idx_cols.reshape(oh_all, ow_all, kh * kw)[:oh, :ow].astype(np.int64)
    return vals, idx


def max_pool2d(x, kernel, stride, padding, dilation, out_hw):
    """-> Y (N, C, OH, OW), the flat input index of each window's maximum (N, C, OH, OW),
    and the window values (N, C, OH, OW, KH*KW).

    Ties: PyTorch's CPU kernels keep the first strictly greater value in row-major
    order; np.argmax also returns the first maximum, so the routing is autograd's."""
    vals, idx = windows(x, kernel, stride, padding, dilation, out_hw, -np.inf)
    arg = np.argmax(vals, axis=-1)
    y = np.take_along_axis(vals, arg[..., None], axis=-1)[..., 0]
    src = np.take_along_axis(np.broadcast_to(idx, vals.shape), arg[..., None], axis=-1)[..., 0]
    return y, src, vals


def adaptive_bounds(size: int, out: int) -> list[tuple[int, int]]:
    """Adaptive pooling windows along one axis: [floor(i*H/OH), ceil((i+1)*H/OH))."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def adaptive_max_pool2d(x, out_hw):
    """-> Y (N, C, OH, OW) and the flat input index of each window's (first) maximum."""
    n, c, h, w = x.shape
    oh, ow = out_hw
    rows, cols = adaptive_bounds(h, oh), adaptive_bounds(w, ow)
    y = np.empty((n, c, oh, ow))
    src = np.empty((n, c, oh, ow), dtype=np.int64)
    for i, (h0, h1) in enumerate(rows):
        for j, (w0, w1) in enumerate(cols):
            win = x[:, :, h0:h1, w0:w1].reshape(n, c, -1)
            arg = win.argmax(axis=-1)  # first maximum, as PyTorch
            y[:, :, i, j] = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
            src[:, :, i, j] = (h0 + arg // (w1 - w0)) * w + (w0 + arg % (w1 - w0))
    return y, src


def max_pool_backward(dy, src, x_shape):
    """Route each window's gradient to its maximum: -> dX (N, C, H, W) and how many
    windows chose each input element (the same shape)."""
    n, c, h, w = x_shape
    dx = np.zeros((n * c, h * w))
    count = np.zeros((n * c, h * w))
    flat_src = src.reshape(n * c, -1)
    flat_dy = dy.reshape(n * c, -1)
    for plane in range(n * c):
        # np.add.at accumulates repeated indices: overlapping windows that chose
        # the same input element all send their gradient there.
        np.add.at(dx[plane], flat_src[plane], flat_dy[plane])
        np.add.at(count[plane], flat_src[plane], 1.0)
    return dx.reshape(n, c, h, w), count.reshape(n, c, h, w)


def avg_pool_matrices(
    x_shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override
):
    """R_h (OH, H), R_w (OW, W) window-membership matrices and the divisor map D (OH, OW)
    of AvgPool2d."""
    h, w = x_shape[2:]
    axes = []
    for a, size in enumerate((h, w)):
        k, s, p = kernel[a], stride[a], padding[a]
        out = pool_output_size(size, k, s, p, 1, ceil_mode)
        r = np.zeros((out, size))
        with_pad = np.zeros(out)
        for i in range(out):
            start = i * s - p
            end = min(start + k, size + p)  # windows past the right padding are cut (ceil_mode)
            with_pad[i] = end - start  # the window's size counting padding, as PyTorch's pool_size
            r[i, max(start, 0) : min(end, size)] = 1.0
        axes.append((r, with_pad))
    (rh, ph_), (rw, pw_) = axes
    if divisor_override:
        divisor = np.full((rh.shape[0], rw.shape[0]), float(divisor_override))
    elif count_include_pad:
        divisor = np.outer(ph_, pw_)
    else:
        divisor = np.outer(rh.sum(axis=1), rw.sum(axis=1))
    return rh, rw, divisor


def adaptive_avg_matrices(x_shape, out_hw):
    """R_h, R_w and D of AdaptiveAvgPool2d (D: each window's size)."""
    h, w = x_shape[2:]
    oh, ow = out_hw
    axes = []
    for size, out in ((h, oh), (w, ow)):
        r = np.zeros((out, size))
        for i, (a, b) in enumerate(adaptive_bounds(size, out)):
            r[i, a:b] = 1.0
        axes.append((r, r.sum(axis=1)))
    (rh, nh), (rw, nw) = axes
    return rh, rw, np.outer(nh, nw)


def avg_pool_forward(x, rh, rw, divisor):
    """Y = (R_h X R_w^T) ⊘ D per plane."""
    sums = np.einsum("ih,nchw,jw->ncij", rh, x, rw)  # R_h X R_w^T per plane
    return sums / np.where(divisor == 0, 1.0, divisor)


def avg_pool_backward(dy, rh, rw, divisor):
    """-> (dY ⊘ D, dX = R_h^T (dY ⊘ D) R_w per plane)."""
    scaled = dy / np.where(divisor == 0, 1.0, divisor)
    return scaled, np.einsum("ih,ncij,jw->nchw", rh, scaled, rw)


# ---------------------------------------------------------------- linear


def linear_forward(x, w, b):
    """X (N, in), W (out, in), b (out,) or None -> Z = X W^T + b (N, out)."""
    return x @ w.T + (b if b is not None else 0.0)


def linear_backward(x, w, dz):
    """-> dL/dW = dZ^T X, dL/db = sum of dZ over the rows, dL/dX = dZ W."""
    return dz.T @ x, dz.sum(axis=0), dz @ w


# ---------------------------------------------------------------- elementwise


def relu_forward(z):
    """-> A = max(0, Z) and the 0/1 mask (int8) of where Z > 0."""
    return np.maximum(z, 0.0), (z > 0).astype(np.int8)


def relu_backward(z, da):
    """dL/dZ = dL/dA ⊙ 1[Z > 0] (PyTorch's derivative at 0 is 0)."""
    return da * (z > 0).astype(np.float64)


def sigmoid(z: np.ndarray) -> np.ndarray:
    # Two branches so that exp never overflows: for z < 0, e^z / (1 + e^z).
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def flatten(x, start: int, end: int):
    """Merge dims start..end (row-major): the values do not change, only the shape."""
    shape = x.shape
    start, end = start % len(shape), end % len(shape)
    return x.reshape(shape[:start] + (int(np.prod(shape[start : end + 1])),) + shape[end + 1 :])


def dropout_forward(x, mask, p: float):
    """Y = X ⊙ M / (1-p) with the mask PyTorch drew (p = 1: all zeros, NaN kept)."""
    if p >= 1:
        return np.zeros_like(x) * x
    return x * np.broadcast_to(mask, x.shape) * (1.0 / (1.0 - p))


def dropout_backward(dy, mask, p: float):
    """dL/dX = dL/dY ⊙ M / (1-p)."""
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
    return dy * np.broadcast_to(mask, dy.shape) * scale


# ---------------------------------------------------------------- softmax and cross-entropy


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def class_coefficients(labels, num_classes: int, weight=None, smoothing=0.0, ignore_index=-100):
    """Class-index targets -> (A (R, C), onehot (R, C), valid (R,), D).

    A says how much each log-probability counts: L = -(1/D) sum A log p, with class
    weights w, label smoothing eps and ignored rows all folded in; D is the mean's
    denominator, the summed weights of the counted true classes."""
    c = num_classes
    w = weight if weight is not None else np.ones(c)
    valid = labels != ignore_index
    safe = np.where(valid, labels, 0)
    onehot = np.eye(c)[safe] * valid[:, None]
    picked_weight = w[safe] * valid  # w_{y_n}, 0 where ignored
    coef = (1 - smoothing) * onehot * w[safe][:, None] + (smoothing / c) * w[None, :] * valid[
        :, None
    ]
    return coef, onehot, valid, float(picked_weight.sum())


def probability_coefficients(targets, weight=None, smoothing=0.0):
    """Probability targets (R, C) -> A (R, C) = w ((1-eps) t + eps/C)."""
    c = targets.shape[1]
    w = weight if weight is not None else np.ones(c)
    return (targets * (1 - smoothing) + smoothing / c) * w


def cross_entropy_rows(z, coef):
    """Logits (R, C) -> probabilities, log-probabilities and each row's loss -sum_k A log p."""
    p = softmax(z, axis=1)
    logp = log_softmax(z, axis=1)
    return p, logp, -(coef * logp).sum(axis=1)


def cross_entropy_grad(p, coef, scale: float, upstream, valid):
    """dL/dz per row: (p sum_k A - A) / D times the gradient from after the loss;
    ignored rows get none, even when the mean is 0/0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        dz = (p * coef.sum(axis=1, keepdims=True) - coef) * scale * upstream
    dz[~valid] = 0.0
    return dz


# ---------------------------------------------------------------- batch normalisation


def channel_axes(x: np.ndarray) -> tuple[int, ...]:
    """The axes a channel's statistics run over: all but dim 1."""
    return (0,) + tuple(range(2, x.ndim))


def per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """(C,) -> (1, C, 1, ...) to broadcast against the input."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_stats(x):
    """-> per-channel mean and biased variance over N and the positions, and M."""
    axes = channel_axes(x)
    mu = x.mean(axis=axes)
    var = ((x - per_channel(mu, x.ndim)) ** 2).mean(axis=axes)  # biased
    return mu, var, int(np.prod([x.shape[a] for a in axes]))


def batch_norm_normalise(x, mu, var, eps: float):
    """-> 1/sqrt(var + eps) per channel and x̂ = (x - mu) / sqrt(var + eps)."""
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - per_channel(mu, x.ndim)) * per_channel(invstd, x.ndim)
    return invstd, xhat


def batch_norm_affine(xhat, gamma, beta):
    """y = gamma x̂ + beta per channel."""
    return xhat * per_channel(gamma, xhat.ndim) + (
        per_channel(beta, xhat.ndim) if beta is not None else 0.0
    )


def batch_norm_running(rm0, rv0, mu, var, m: int, factor: float):
    """Running statistics after one training call; the variance is made unbiased (M/(M-1))."""
    unbiased = var * m / (m - 1)
    return (1 - factor) * rm0 + factor * mu, (1 - factor) * rv0 + factor * unbiased, unbiased


def batch_norm_param_grads(dy, xhat):
    """-> dL/dgamma = sum dy x̂, dL/dbeta = sum dy, per channel."""
    axes = channel_axes(dy)
    return (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


def batch_norm_input_grad(dy, xhat, invstd, gamma, m: int):
    """dL/dx through the batch mean and variance, and its pieces:
    -> (dx, sum dy, sum dy x̂, the largest term's size per entry)."""
    axes = channel_axes(dy)
    g, shift = per_channel(gamma, dy.ndim), per_channel(invstd, dy.ndim)
    sum_dy = dy.sum(axis=axes, keepdims=True)
    sum_dy_xhat = (dy * xhat).sum(axis=axes, keepdims=True)
    dx = g * shift / m * (m * dy - sum_dy - xhat * sum_dy_xhat)
    return dx, sum_dy, sum_dy_xhat


def batch_norm_eval_input_grad(dy, invstd, gamma):
    """Running statistics are constants: dL/dx = gamma dy / sqrt(running_var + eps)."""
    return dy * per_channel(gamma, dy.ndim) * per_channel(invstd, dy.ndim)


# ---------------------------------------------------------------- optimizers


def weight_decay_grad(grad, w, weight_decay: float):
    """L2 weight decay folded into the gradient: g = grad + lambda W."""
    return grad + weight_decay * w


def momentum_buffer(prev, direction, momentum: float, dampening: float):
    """SGD's buffer: the gradient on the first step (prev None), then mu v + (1 - tau) g."""
    if prev is None:
        return direction.copy()
    return momentum * prev + (1 - dampening) * direction


def sgd_update(w, direction, lr: float):
    """W' = W - eta d."""
    return w - lr * direction


def adam_moments(m0, v0, grad, beta1: float, beta2: float):
    """-> m_t = b1 m + (1-b1) g and v_t = b2 v + (1-b2) g²."""
    return beta1 * m0 + (1 - beta1) * grad, beta2 * v0 + (1 - beta2) * grad**2


def adam_update(w, m, v, lr: float, beta1: float, beta2: float, eps: float, t: int):
    """-> (m̂, v̂, W') with the bias corrections of step t: W' = W - eta m̂ / (sqrt(v̂) + eps)."""
    bc1, bc2 = 1 - beta1**t, 1 - beta2**t
    m_hat, v_hat = m / bc1, v / bc2
    return m_hat, v_hat, w - lr * m_hat / (np.sqrt(v_hat) + eps)
