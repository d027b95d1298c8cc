"""Activations, entry by entry: A = f(Z), the local slope f'(Z) the explainer stored,
and dL/dZ = dL/dA · f'(Z). ReLU keeps its 0/1 mask; PReLU learns its slopes.

A layer's constants (LeakyReLU's α, Hardtanh's bounds, Softplus's β, GELU's
approximation) are not stored as numbers: they are recovered from the stored
tensors, and a set of constants is used only if it reproduces the layer's whole
stored output (or slope), so a cell is never explained with a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .. import names, npmath
from .core import Context, NotExplained, cell, dot, fmt, layer_rule, prov, term, unknown

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(z):
    return npmath.sigmoid(np.asarray(z, dtype=np.float64))


def _gelu_inner(z):
    return math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)


# type -> (f(z, k), f'(z, k), f as text, f' as text); k: the constants
Table = dict[str, tuple[Callable, Callable, str, str]]
FUNCTIONS: Table = {
    "LeakyReLU": (
        lambda z, k: np.where(z > 0, z, k["α"] * z),
        lambda z, k: np.where(z > 0, 1.0, k["α"]),
        "z if z > 0 else α·z",
        "1 if z > 0 else α",
    ),
    "Hardtanh": (
        lambda z, k: np.clip(z, k["a"], k["b"]),
        lambda z, k: ((z > k["a"]) & (z < k["b"])).astype(np.float64),
        "min(max(z, a), b)",
        "1[a < z < b]",
    ),
    "Sigmoid": (
        lambda z, k: _sigmoid(z),
        lambda z, k: _sigmoid(z) * (1 - _sigmoid(z)),
        "1/(1 + e^(-z))",
        "σ(z)(1 - σ(z))",
    ),
    "Tanh": (lambda z, k: np.tanh(z), lambda z, k: 1 - np.tanh(z) ** 2, "tanh(z)", "1 - tanh²(z)"),
    "ELU": (
        lambda z, k: np.where(z > 0, z, k["α"] * np.expm1(np.minimum(z, 0.0))),
        lambda z, k: np.where(z > 0, 1.0, k["α"] * np.exp(np.minimum(z, 0.0))),
        "z if z > 0 else α(e^z - 1)",
        "1 if z > 0 else α e^z",
    ),
    "SiLU": (
        lambda z, k: z * _sigmoid(z),
        lambda z, k: _sigmoid(z) * (1 + z * (1 - _sigmoid(z))),
        "z·σ(z)",
        "σ(z)(1 + z(1 - σ(z)))",
    ),
    "GELU": (
        lambda z, k: (
            0.5 * z * (1 + np.tanh(_gelu_inner(z)))
            if k["approximate"] == "tanh"
            else 0.5 * z * (1 + _erf(z / math.sqrt(2.0)))
        ),
        lambda z, k: (
            0.5 * (1 + np.tanh(_gelu_inner(z)))
            + 0.5
            * z
            * (1 - np.tanh(_gelu_inner(z)) ** 2)
            * math.sqrt(2.0 / math.pi)
            * (1 + 3 * 0.044715 * z**2)
            if k["approximate"] == "tanh"
            else 0.5 * (1 + _erf(z / math.sqrt(2.0)))
            + z * np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
        ),
        "z·Φ(z), Φ(z) = (1 + erf(z/√2))/2",
        "Φ(z) + z·φ(z)",
    ),
    "Softplus": (
        lambda z, k: np.where(k["β"] * z > k["t"], z, np.logaddexp(0.0, k["β"] * z) / k["β"]),
        lambda z, k: np.where(k["β"] * z > k["t"], 1.0, _sigmoid(k["β"] * z)),
        "log(1 + e^(βz))/β (z if βz > t)",
        "σ(βz) (1 if βz > t)",
    ),
    "Identity": (lambda z, k: z, lambda z, k: np.ones_like(z), "z", "1"),
}
FUNCTIONS["ReLU6"] = FUNCTIONS["Hardtanh"]  # a subclass: Hardtanh from 0 to 6


def _candidates(kind: str, z: np.ndarray, out, slope) -> list[dict]:
    """Constants to try, recovered from the stored tensors first, then PyTorch's defaults."""
    z = z.astype(np.float64)
    neg = z < 0
    if kind == "LeakyReLU":
        found = []
        if out is not None and neg.any():
            found.append(float(np.median(out[neg] / z[neg])))
        if slope is not None and (z <= 0).any():
            found.append(float(np.median(slope[z <= 0])))
        return [{"α": v} for v in [*found, 0.01]]
    if kind == "ELU":
        found = []
        if out is not None and (z < -1e-3).any():
            m = z < -1e-3
            found.append(float(np.median(out[m] / np.expm1(z[m]))))
        if slope is not None and (z <= 0).any():
            m = z <= 0
            found.append(float(np.median(slope[m] / np.exp(z[m]))))
        return [{"α": v} for v in [*found, 1.0]]
    if kind == "ReLU6":
        return [{"a": 0.0, "b": 6.0}]
    if kind == "Hardtanh":
        a = b = None
        if out is not None:
            below, above = z < out, z > out
            a = float(np.max(out[below])) if below.any() else None
            b = float(np.min(out[above])) if above.any() else None
        lows = [a] if a is not None else [-1.0, 0.0, -math.inf]
        highs = [b] if b is not None else [1.0, 6.0, math.inf]
        return [{"a": lo, "b": hi} for lo in lows for hi in highs]
    if kind == "Softplus":
        betas = [1.0]
        if slope is not None:
            s = slope.astype(np.float64)
            m = (np.abs(z) > 1e-3) & (s > 1e-6) & (s < 1 - 1e-6)
            if m.any():
                betas.insert(0, float(np.median(np.log(s[m] / (1 - s[m])) / z[m])))
        return [{"β": b, "t": t} for b in betas for t in (20.0,)]
    if kind == "GELU":
        return [{"approximate": "none"}, {"approximate": "tanh"}]
    return [{}]


def _tolerant(ours, stored) -> bool:
    stored = np.asarray(stored, dtype=np.float64)
    return bool(np.allclose(ours, stored, rtol=1e-5, atol=1e-6, equal_nan=True))


def constants(ctx: Context, kind: str, z_name: str, layer: str) -> dict:
    """The layer's constants: the first candidate reproducing its stored output and slope."""
    a = ctx.arrays
    z = np.asarray(a[z_name], dtype=np.float64)
    out_n, slope_n = names.output(layer), names.intermediate(layer, "slope")
    out = np.asarray(a[out_n], dtype=np.float64) if ctx.has(out_n) else None
    slope = np.asarray(a[slope_n], dtype=np.float64) if ctx.has(slope_n) else None
    f, df, _, _ = FUNCTIONS[kind]
    for k in _candidates(kind, z, out, slope):
        if out is not None and out.shape == z.shape and not _tolerant(f(z, k), out):
            continue
        if slope is not None and slope.shape == z.shape and not _tolerant(df(z, k), slope):
            continue
        return k
    raise NotExplained(f"the constants of {layer} ({kind}) could not be recovered from its tensors")


def _words(k: dict) -> str:
    parts = [f"{key} = {v if isinstance(v, str) else fmt(v)}" for key, v in k.items()]
    return f" with {', '.join(parts)}" if parts else ""


@layer_rule(*FUNCTIONS)
def elementwise(ctx: Context, step, name, index):
    a, layer = ctx.arrays, step.layer
    kind = ctx.kind(layer)
    f, df, f_text, df_text = FUNCTIONS[kind]
    x_name = ctx.layer_input(step)
    out_n, slope_n = names.output(layer), names.intermediate(layer, "slope")
    if name in (out_n, slope_n):
        k = constants(ctx, kind, x_name, layer)
        z = term(x_name, a, index)
        fn, text, symbol = (f, f_text, "A") if name == out_n else (df, df_text, "f'")
        value = float(fn(np.float64(z.value), k))
        return prov(
            name,
            index,
            value,
            kind.lower() if name == out_n else f"{kind.lower()}-slope",
            f"{symbol}{cell(index)} = {text}{_words(k)}, at z = {fmt(z.value)}: {fmt(value)}",
            [z],
        )
    if ctx.is_grad_of(name, x_name, layer):
        g, s = term(names.grad(out_n), a, index), term(slope_n, a, index)
        value = np.float64(g.value) * s.value
        return prov(
            name,
            index,
            value,
            f"{kind.lower()}-grad",
            f"dL/dZ{cell(index)} = dL/dA · f'(Z) = ({fmt(g.value)})({fmt(s.value)}) = {fmt(value)}",
            [g, s],
        )
    raise unknown(name, step)


@layer_rule("ReLU")
def relu(ctx: Context, step, name, index):
    a, layer = ctx.arrays, step.layer
    out_n, mask_n = names.output(layer), names.intermediate(layer, "mask")
    x_name = ctx.layer_input(step)
    if name in (out_n, mask_n):
        t = term(x_name, a, index)
        if name == mask_n:
            value = 1.0 if t.value > 0 else 0.0
            return prov(
                name,
                index,
                value,
                "relu-mask",
                f"M{cell(index)} = 1[Z > 0] = 1[{fmt(t.value)} > 0] = {int(value)}",
                [t],
            )
        value = max(0.0, t.value)
        return prov(
            name,
            index,
            value,
            "relu",
            f"A{cell(index)} = max(0, {fmt(t.value)}) = {fmt(value)}",
            [t],
        )
    if ctx.is_grad_of(name, x_name, layer):
        g, m = term(names.grad(out_n), a, index), term(mask_n, a, index)
        value = g.value * m.value
        return prov(
            name,
            index,
            value,
            "relu-grad",
            f"dL/dZ{cell(index)} = dL/dA·M = ({fmt(g.value)})({fmt(m.value)}) = {fmt(value)}",
            [g, m],
        )
    raise unknown(name, step)


def _prelu_channel(weight, z_shape, index) -> tuple[int, ...]:
    """The slope an entry uses: the only one, or its channel's (dim 1)."""
    if weight.size == 1:
        return (0,) * weight.ndim
    return (index[1],) if len(z_shape) >= 2 else (index[0],)


@layer_rule("PReLU")
def prelu(ctx: Context, step, name, index):
    a, layer = ctx.arrays, step.layer
    out_n = names.output(layer)
    w_n = ctx.param(layer, "weight")
    x_name = ctx.layer_input(step)
    weight, z = a[w_n], a[x_name]
    out_grad = names.grad(out_n)
    if name == out_n or ctx.is_grad_of(name, x_name, layer):
        zi, s = term(x_name, a, index), term(w_n, a, _prelu_channel(weight, z.shape, index))
        if name == out_n:
            value = zi.value if zi.value > 0 else np.float64(s.value) * zi.value
            return prov(
                name,
                index,
                value,
                "prelu",
                f"A{cell(index)} = z if z > 0 else a·z, z = {fmt(zi.value)}, a = {fmt(s.value)}: {fmt(value)}",
                [zi, s],
            )
        g = term(out_grad, a, index)
        value = g.value if zi.value > 0 else np.float64(s.value) * g.value
        return prov(
            name,
            index,
            value,
            "prelu-grad",
            f"dL/dZ{cell(index)} = dL/dA · (1 if z > 0 else a) = ({fmt(g.value)}) · "
            f"({'1' if zi.value > 0 else fmt(s.value)}) = {fmt(value)}  (z = {fmt(zi.value)})",
            [g, zi, s],
        )
    if ctx.is_grad_of(name, w_n, layer):
        cells = [
            c
            for c in np.ndindex(*z.shape)
            if weight.size == 1 or _prelu_channel(weight, z.shape, c) == tuple(index)
        ]
        zs = [term(x_name, a, c) for c in cells if a[x_name][c] <= 0]
        gs = [term(out_grad, a, t.index) for t in zs]
        total, text = dot(zs, gs)
        return prov(
            name,
            index,
            total,
            "prelu-slope-grad",
            f"dL/da{cell(index)} = Σ over entries with z ≤ 0 of z·dL/dA = {text or '0'} = {fmt(total)}",
            zs + gs,
        )
    raise unknown(name, step)
