"""Shared fixtures and independent numpy references of the op contract (docs/contract.md).

Nothing here calls featjnd: the references follow the contract's text, in numpy float32
operations where the contract pins a float32 operation, and in float64 where it only promises a
tolerance.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import pytest

try:
    import ml_dtypes

    BF16: Optional[np.dtype] = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = None

try:
    import torch
except Exception:  # pragma: no cover - torch absent or broken
    torch = None

FLOAT_DTYPES = [np.dtype(np.float32), np.dtype(np.float16)] + ([BF16] if BF16 is not None else [])
DTYPE_IDS = [d.name for d in FLOAT_DTYPES]

# Odd sizes: (shape, layout, patch).
ODD_SHAPES = [
    ((1, 1, 1, 1), "nchw", 1),
    ((1, 7, 17, 1), "nchw", 1),
    ((2, 3, 7, 17), "nchw", 1),
    ((1, 17, 7, 1025), "nchw", 1),
    ((2, 5, 14, 21), "nchw", 7),
    ((3, 2, 6, 4), "nchw", 2),
    ((1, 1, 1), "ntc", 1),
    ((7, 17, 1025), "ntc", 1),
    ((1, 1025, 7), "ntc", 1),
    ((17, 1, 17), "ntc", 1),
]
SHAPE_IDS = ["x".join(map(str, s)) + f"-{l}-p{p}" for s, l, p in ODD_SHAPES]

_SKIPS: List[str] = []


@pytest.fixture
def torch_or_skip(request):
    """torch, or None after recording a SKIP line (the test then returns and passes)."""
    if torch is None:
        _SKIPS.append(f"SKIP {request.node.nodeid}: torch is not importable")
    return torch


def pytest_terminal_summary(terminalreporter):
    for line in _SKIPS:
        terminalreporter.write_line(line)
    if _SKIPS:
        terminalreporter.write_line(f"{len(_SKIPS)} test(s) printed SKIP (reasons above)")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def to_f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.float32)


def feature(rng, shape, dtype, scale=1.0) -> np.ndarray:
    """A feature exactly representable in `dtype`."""
    return (rng.standard_normal(shape) * scale).astype(np.float32).astype(dtype)


def tolerance_map(rng, shape, dtype) -> np.ndarray:
    """A positive, finite J in `dtype`."""
    return rng.uniform(0.05, 2.0, shape).astype(np.float32).astype(dtype)


# ---------------------------------------------------------------------------------------------
# §1 tokens


def token_index(shape, layout, patch) -> np.ndarray:
    """Token of every element (flat, row-major), straight from contract §1.3."""
    if layout == "ntc":
        n, t, c = shape
        return np.repeat(np.arange(n * t), c)
    n, c, h, w = shape
    nn, _, hh, ww = np.indices(shape)
    return ((nn * (h // patch) + hh // patch) * (w // patch) + ww // patch).reshape(-1)


def tokens_k(shape, layout, patch) -> Tuple[int, int]:
    if layout == "ntc":
        return shape[0] * shape[1], shape[2]
    n, c, h, w = shape
    return n * (h // patch) * (w // patch), c * patch * patch


# ---------------------------------------------------------------------------------------------
# §2 token tolerance (float64 reference; Min is exact)


def ref_token_tolerance(j, layout, patch, reduce) -> np.ndarray:
    tok = token_index(j.shape, layout, patch)
    t, k = tokens_k(j.shape, layout, patch)
    v = to_f32(j).reshape(-1).astype(np.float64)
    if reduce == "min":
        out = np.full(t, np.inf)
        np.minimum.at(out, tok, v)
        return out.astype(np.float32)
    if reduce == "mean":
        return (np.bincount(tok, weights=v, minlength=t) / k).astype(np.float32)
    return np.sqrt(np.bincount(tok, weights=v * v, minlength=t) / k).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# §5 Philox4x32-10, pure Python

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF


def philox(counter, key):
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & MASK, p1 & MASK, ((p0 >> 32) ^ c3 ^ k1) & MASK, p0 & MASK
        k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
    return [c0, c1, c2, c3]


def key_of(seed: int):
    return (seed & MASK, (seed >> 32) & MASK)


def words(flat_index: int, seed: int, subsequence: int):
    g = flat_index // 4
    return philox((g & MASK, (g >> 32) & MASK, subsequence, 0), key_of(seed))


def u01(r: int) -> np.float32:
    return np.float32(r >> 8) * np.float32(2.0**-24)


SQRT3 = np.float32(1.7320508)
TWO_PI = np.float32(6.2831855)


def ref_noise(numel, offset, seed, subsequence, kind) -> np.ndarray:
    """Uniform: bit-exact float32 (three f32 operations). Gaussian: float64 Box-Muller on the
    contract's float32 u1, theta (compare with a tolerance)."""
    out = np.empty(numel, dtype=np.float64 if kind == "gaussian" else np.float32)
    block = None
    for i in range(offset, offset + numel):
        if block is None or i % 4 == 0:
            block = words(i, seed, subsequence)
        lane = i % 4
        if kind == "uniform":
            u = u01(block[lane])
            out[i - offset] = np.float32(np.float32(np.float32(2) * u) - np.float32(1)) * SQRT3
        else:
            pair = lane // 2
            u1 = np.float32(u01(block[2 * pair]) + np.float32(2.0**-25))
            u2 = u01(block[2 * pair + 1])
            th = np.float32(TWO_PI * u2)
            rad = math.sqrt(-2.0 * math.log(float(u1)))
            out[i - offset] = rad * (math.cos(float(th)) if lane % 2 == 0 else math.sin(float(th)))
    return out


def ref_permutation(t: int, seed: int) -> np.ndarray:
    p = list(range(t))
    key = key_of(seed)
    for k in range(t - 1, 0, -1):
        u = float(u01(philox((k, 0, 0, 0), key)[0]))
        i = min(int(math.floor(u * (k + 1))), k)
        p[k], p[i] = p[i], p[k]
    return np.array(p, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# §3 steps


def seq_sum_sq(jt) -> float:
    """Σ j² in float64, summed in order (the CPU's order; the contract leaves it open)."""
    s = 0.0
    for v in to_f32(jt).astype(np.float64):
        s += v * v
    return s


def ref_steps(jt, budget, strategy, seed=0, beta=1.0) -> np.ndarray:
    jt = to_f32(jt)
    t = len(jt)
    if strategy == "uniform":
        return np.full(t, np.float32(math.sqrt(12.0 * budget) * beta), dtype=np.float32)
    s = np.float32(math.sqrt(12.0 * budget * t / seq_sum_sq(jt)) * beta)
    if strategy == "jnd":
        return (s * jt).astype(np.float32)
    return (s * jt[ref_permutation(t, seed)]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# §4 quantize


def ref_quantize(x, steps, layout, patch, bits):
    """(symbols int64, recon f32 before narrowing, token_sse f64, clamped, histogram)."""
    q_max = np.float32(127 if bits == 8 else 32767)
    tok = token_index(x.shape, layout, patch)
    t, _ = tokens_k(x.shape, layout, patch)
    steps = to_f32(steps)
    inv = (np.float32(1) / steps).astype(np.float32)  # one f32 division per token
    xf = to_f32(x).reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.rint((xf * inv[tok]).astype(np.float32))  # one f32 multiply, ties to even
    clamped = int(np.count_nonzero(np.abs(r) > q_max))
    q = np.clip(r, -q_max, q_max).astype(np.int64)
    xh = (q.astype(np.float32) * steps[tok]).astype(np.float32)  # one f32 multiply; q is +0 for 0
    err = (xf.astype(np.float64) - xh.astype(np.float64)) ** 2
    sse = np.bincount(tok, weights=err, minlength=t)
    if bits == 8:
        hist = np.bincount(q + 127, minlength=255)
    else:
        b = np.where(np.abs(q) <= 255, q + 255, 511)
        hist = np.bincount(b, minlength=512)
    return q.reshape(x.shape), xh.reshape(x.shape), sse, clamped, hist


def entropy(hist) -> float:
    h = np.asarray(hist, dtype=np.float64)
    p = h[h > 0] / h.sum()
    return float(-(p * np.log2(p)).sum())
