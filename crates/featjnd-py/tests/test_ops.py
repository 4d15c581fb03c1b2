"""Every op on numpy arrays against the independent references of conftest.py and the contract's
properties, at odd sizes and in every dtype."""

from __future__ import annotations

import math

import numpy as np
import pytest

import featjnd
from conftest import (
    BF16,
    DTYPE_IDS,
    FLOAT_DTYPES,
    ODD_SHAPES,
    SHAPE_IDS,
    entropy,
    feature,
    philox,
    ref_noise,
    ref_permutation,
    ref_quantize,
    ref_steps,
    ref_token_tolerance,
    tokens_k,
    to_f32,
    tolerance_map,
)

KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def bits_of(a: np.ndarray) -> np.ndarray:
    """The raw bits, for bit-exact comparisons in any float dtype."""
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 2: np.uint16}[a.dtype.itemsize])


# --------------------------------------------------------------------------------------------- §5


@pytest.mark.parametrize("counter,key,want", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, want):
    assert tuple(philox(counter, key)) == want  # the pure-Python reference
    assert tuple(featjnd._featjnd.philox4x32_10(list(counter), list(key))) == want


def test_known_answer_through_noise():
    # Counter (0,0,0,0), key (0,0) is block 0 of seed 0, subsequence 0: elements 0..3.
    got = featjnd.noise(4, offset=0, seed=0, noise="uniform")
    u = [np.float32(r >> 8) * np.float32(2.0**-24) for r in KNOWN_ANSWERS[0][2]]
    want = np.array([np.float32(np.float32(2) * v - np.float32(1)) * np.float32(1.7320508) for v in u], dtype=np.float32)
    assert np.array_equal(bits_of(got), bits_of(want))


@pytest.mark.parametrize("numel,offset,seed,sub", [(1, 0, 0, 0), (7, 3, 1, 0), (17, 5, 2**33 + 7, 3), (1025, 2**34 + 1, 42, 2**32 - 1)])
def test_uniform_noise_is_bit_exact(numel, offset, seed, sub):
    got = featjnd.noise(numel, offset, seed, "uniform", sub)
    assert got.dtype == np.float32 and got.shape == (numel,)
    assert np.array_equal(bits_of(got), bits_of(ref_noise(numel, offset, seed, sub, "uniform")))


@pytest.mark.parametrize("numel,offset,seed,sub", [(1, 0, 0, 0), (7, 1, 9, 0), (17, 6, 2**40, 5), (1025, 123, 7, 1)])
def test_gaussian_noise_matches_box_muller(numel, offset, seed, sub):
    got = featjnd.noise(numel, offset, seed, "gaussian", sub).astype(np.float64)
    want = ref_noise(numel, offset, seed, sub, "gaussian")
    assert np.all(np.abs(got - want) <= 1e-5 * np.abs(want) + 1e-6)
    assert np.all(np.abs(got) <= math.sqrt(50 * math.log(2)) + 1e-6)


def test_noise_is_addressed_by_flat_index():
    whole = featjnd.noise(1025, 0, 5)
    for off, n in [(0, 1), (1, 7), (3, 17), (1000, 25)]:
        assert np.array_equal(featjnd.noise(n, off, 5), whole[off : off + n])
    assert not np.array_equal(featjnd.noise(64, 0, 5, subsequence=1), whole[:64])
    out = np.empty(9, np.float32)
    assert featjnd.noise(9, 2, 5, out=out) is out and np.array_equal(out, whole[2:11])
    assert featjnd.noise(0).shape == (0,)


# --------------------------------------------------------------------------------------------- §2


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,layout,patch", ODD_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("reduce", ["mean", "rms", "min"])
def test_token_tolerance(rng, dtype, shape, layout, patch, reduce):
    j = tolerance_map(rng, shape, dtype)
    got = featjnd.token_tolerance(j, patch, reduce)
    t, _ = tokens_k(shape, layout, patch)
    assert got.dtype == np.float32 and got.shape == (t,)
    want = ref_token_tolerance(j, layout, patch, reduce)
    if reduce == "min":
        assert np.array_equal(got, want)  # Min is exact
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_token_tolerance_into_out_and_explicit_layout(rng):
    j = tolerance_map(rng, (2, 3, 4, 6), np.float32)
    out = np.empty(2 * 2 * 3, np.float32)
    assert featjnd.token_tolerance(j, 2, "mean", "NCHW", out=out) is out
    np.testing.assert_allclose(out, ref_token_tolerance(j, "nchw", 2, "mean"), rtol=1e-5)


def test_read_only_input_goes_through_the_array_interface(rng):
    j = tolerance_map(rng, (2, 3, 5), np.float32)
    ro = j.copy()
    ro.flags.writeable = False
    assert np.array_equal(featjnd.token_tolerance(ro), featjnd.token_tolerance(j))


# --------------------------------------------------------------------------------------------- §3


@pytest.mark.parametrize("t", [1, 7, 17, 1025])
@pytest.mark.parametrize("strategy", ["uniform", "jnd", "permuted"])
def test_allocate_steps_is_the_formula(rng, t, strategy):
    jt = rng.uniform(0.01, 3.0, t).astype(np.float32)
    for budget in [1e-4, 0.37, 12.0]:
        got = featjnd.allocate_steps(jt, budget, strategy, seed=3)
        assert got.dtype == np.float32 and got.shape == (t,)
        assert np.array_equal(got, ref_steps(jt, budget, strategy, seed=3))
        # The nominal budget: (1/T) Σ Δ²/12 = D up to the two roundings.
        nominal = float(np.mean(got.astype(np.float64) ** 2) / 12)
        assert abs(nominal / budget - 1) < 1e-5


@pytest.mark.parametrize("t", [1, 2, 7, 17, 1025])
def test_permutation(t):
    p = featjnd.permutation(t, 11)
    assert np.array_equal(p, ref_permutation(t, 11))
    assert np.array_equal(np.sort(p), np.arange(t))


def test_permuted_spends_the_jnd_multiset(rng):
    jt = rng.uniform(0.1, 2.0, 1025).astype(np.float32)
    a = featjnd.allocate_steps(jt, 0.01, "jnd")
    b = featjnd.allocate_steps(jt, 0.01, "permuted", seed=4)
    assert np.array_equal(np.sort(a), np.sort(b)) and not np.array_equal(a, b)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("strategy", ["uniform", "jnd", "permuted"])
def test_measured_budget(rng, dtype, strategy):
    x = feature(rng, (2, 7, 6, 10), dtype)
    jt = featjnd.token_tolerance(tolerance_map(rng, x.shape, dtype))
    budget = 0.02
    steps, m = featjnd.allocate_steps_measured(jt, x, budget, strategy, seed=2)
    assert abs(m.measured_mse / budget - 1) <= 1e-3 and m.evaluations >= 1
    assert np.array_equal(steps, ref_steps(jt, budget, strategy, seed=2, beta=m.beta))
    _, _, sse, _, _ = ref_quantize(x, steps, "nchw", 1, 8)
    assert abs(sse.sum() / x.size / budget - 1) <= 1.01e-3
    same = featjnd.allocate_steps(jt, budget, strategy, seed=2, measured_x=x)
    assert np.array_equal(same, steps)


# --------------------------------------------------------------------------------------------- §4


def check_quantize(x, steps, layout, patch, bits, r):
    q, xh, sse, clamped, hist = ref_quantize(x, steps, layout, patch, bits)
    assert r.symbols.dtype == (np.int8 if bits == 8 else np.int16) and r.symbols.shape == x.shape
    assert np.array_equal(r.symbols.astype(np.int64), q)  # bit-exact symbols
    assert r.recon.dtype == x.dtype and r.recon.shape == x.shape
    assert np.array_equal(bits_of(r.recon), bits_of(xh.astype(x.dtype)))  # bit-exact, RNE narrowing
    assert not np.any(np.signbit(r.recon[r.recon == 0]))  # never -0
    np.testing.assert_allclose(r.token_sse, sse, rtol=1e-4, atol=1e-30)
    np.testing.assert_allclose(r.total_sse, sse.sum(), rtol=1e-4, atol=1e-30)
    assert abs(r.mse - r.total_sse / x.size) <= 1e-12 * max(r.mse, 1e-300)
    assert r.clamped == clamped
    assert np.array_equal(r.histogram, hist) and r.histogram.sum() == x.size
    h = entropy(hist)
    assert abs(r.entropy_bits - h) < 1e-9
    assert abs(r.bits_per_element - (h + 16 / r.k)) < 1e-9


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,layout,patch", ODD_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("bits", [8, 16])
def test_quantize_is_bit_exact(rng, dtype, shape, layout, patch, bits):
    x = feature(rng, shape, dtype, scale=3.0)
    t, _ = tokens_k(shape, layout, patch)
    # Steps over a wide range: coarse (dead zone), fine (clamping), and ordinary.
    steps = np.exp(rng.uniform(np.log(1e-3), np.log(10.0), t)).astype(np.float32)
    r = featjnd.quantize(x, steps, bits, patch)
    assert r.tokens == t and r.steps is steps
    check_quantize(x, steps, layout, patch, bits, r)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
def test_quantize_ties_round_to_even(dtype):
    # x = (k + 1/2)·Δ exactly: every product is a tie.
    k = np.arange(-8, 8, dtype=np.float32)
    x = ((k + np.float32(0.5)) * np.float32(0.25)).reshape(1, 1, 16).astype(dtype)
    r = featjnd.quantize(x, np.array([0.25], np.float32))
    assert np.array_equal(r.symbols.reshape(-1), np.rint(k + 0.5).astype(np.int8))
    check_quantize(x, np.array([0.25], np.float32), "ntc", 1, 8, r)


def test_quantize_clamps_and_counts():
    x = np.array([[[-1e30, -300.0, -127.6, 0.1, 126.4, 1000.0, 3.0e38]]], np.float32)
    r = featjnd.quantize(x, np.array([1.0], np.float32))
    assert list(r.symbols.reshape(-1)) == [-127, -127, -127, 0, 126, 127, 127]
    assert r.clamped == 5


def test_quantize_outputs_optional_given_and_in_place(rng):
    x = feature(rng, (2, 3, 4, 4), np.float32)
    steps = np.full(32, 0.1, np.float32)
    full = featjnd.quantize(x, steps)
    r = featjnd.quantize(x, steps, symbols=False, recon=False, token_sse=False, histogram=False)
    assert r.symbols is None and r.recon is None and r.token_sse is None and r.histogram is None
    assert r.entropy_bits is None and r.clamped == full.clamped and r.total_sse == full.total_sse
    sym, rec, sse = np.empty(x.shape, np.int8), np.empty_like(x), np.empty(32, np.float32)
    r = featjnd.quantize(x, steps, symbols=sym, recon=rec, token_sse=sse)
    assert r.symbols is sym and r.recon is rec and r.token_sse is sse
    assert np.array_equal(sym, full.symbols) and np.array_equal(rec, full.recon)
    y = x.copy()
    r = featjnd.quantize(y, steps, in_place=True)
    assert r.recon is y and np.array_equal(y, full.recon) and np.array_equal(r.symbols, full.symbols)
    assert r.total_sse == full.total_sse


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("strategy", ["uniform", "jnd", "permuted"])
@pytest.mark.parametrize("reduce", ["mean", "rms", "min"])
def test_quantize_with_jnd_is_the_chain(rng, dtype, strategy, reduce):
    x = feature(rng, (2, 5, 6, 9), dtype)
    j = tolerance_map(rng, x.shape, dtype)
    r = featjnd.quantize_with_jnd(x, j, 0.01, strategy, seed=5, patch=3, reduce=reduce)
    jt = featjnd.token_tolerance(j, 3, reduce)
    assert np.array_equal(r.token_tol, jt)
    assert np.array_equal(r.steps, ref_steps(jt, 0.01, strategy, seed=5))
    check_quantize(x, r.steps, "nchw", 3, 8, r)
    assert r.measured is None


def test_quantize_with_jnd_measured(rng):
    x = feature(rng, (3, 17, 8), np.float32)
    j = tolerance_map(rng, x.shape, np.float32)
    r = featjnd.quantize_with_jnd(x, j, 0.05, measured=True)
    assert abs(r.mse / 0.05 - 1) <= 1e-3 and r.measured is not None
    assert r.measured.beta != 1.0 and abs(r.measured.measured_mse - r.mse) <= 1e-12


# --------------------------------------------------------------------------------------------- §6


def nrmse_per_sample(x, xp):
    xf = to_f32(x).astype(np.float64).reshape(x.shape[0], -1)
    d = to_f32(xp).astype(np.float64).reshape(x.shape[0], -1) - xf
    return np.linalg.norm(d, axis=1) / np.linalg.norm(xf, axis=1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,layout,patch", ODD_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
@pytest.mark.parametrize("with_j", [True, False])
def test_perturb_matches_nrmse_and_formula(rng, dtype, shape, layout, patch, kind, with_j):
    x = feature(rng, shape, dtype)
    j = tolerance_map(rng, shape, dtype) if with_j else None
    r = 0.3
    xp, scales = featjnd.perturb(x, j, nrmse=r, noise=kind, seed=9, subsequence=2)
    assert xp.dtype == x.dtype and xp.shape == x.shape and scales.dtype == np.float32
    assert scales.shape == (shape[0],)
    # The scale: s_n = r·‖x_n‖/‖J⊙ξ‖ (f64, rounded once).
    xi = ref_noise(x.size, 0, 9, 2, kind).reshape(shape[0], -1)
    jf = np.ones_like(xi) if j is None else to_f32(j).astype(np.float64).reshape(shape[0], -1)
    e = jf * xi
    xf = to_f32(x).astype(np.float64).reshape(shape[0], -1)
    s = r * np.linalg.norm(xf, axis=1) / np.linalg.norm(e, axis=1)
    np.testing.assert_allclose(scales, s, rtol=1e-5)
    # x' = x + s·(J·ξ): three f32 operations, then narrowing. Bit-exact for uniform noise given
    # the same s_n (the noise from featjnd.noise is what perturb draws).
    if kind == "uniform":
        e32 = (to_f32(j).reshape(shape[0], -1) if j is not None else np.float32(1)) * featjnd.noise(x.size, 0, 9, kind, 2).reshape(shape[0], -1)
        want = (to_f32(x).reshape(shape[0], -1) + (scales[:, None] * e32.astype(np.float32)).astype(np.float32)).astype(np.float32)
        assert np.array_equal(bits_of(xp.reshape(shape[0], -1)), bits_of(want.astype(dtype)))
    got = nrmse_per_sample(x, xp)
    tol = 1e-4 if dtype == np.float32 else 3e-2  # f16/bf16 outputs are narrowed
    if x.size // shape[0] >= 16 or dtype == np.float32:
        np.testing.assert_allclose(got, r, rtol=tol)


def test_perturb_zero_samples_zero_strength_in_place_and_out(rng):
    x = feature(rng, (3, 4, 5), np.float32)
    x[1] = 0
    xp, s = featjnd.perturb(x, nrmse=0.5)
    assert s[1] == 0 and np.array_equal(xp[1], x[1]) and s[0] > 0
    xp, s = featjnd.perturb(x, nrmse=0.0)
    assert np.array_equal(xp, x) and np.all(s == 0)
    y = x.copy()
    want, _ = featjnd.perturb(x, nrmse=0.2, seed=3)
    out, _ = featjnd.perturb(y, nrmse=0.2, seed=3, in_place=True)
    assert out is y and np.array_equal(y, want)
    buf = np.empty_like(x)
    out, _ = featjnd.perturb(x, nrmse=0.2, seed=3, out=buf)
    assert out is buf and np.array_equal(buf, want)


@pytest.mark.skipif(BF16 is None, reason="ml_dtypes is not installed")
def test_bf16_numpy_roundtrip(rng):
    x = feature(rng, (2, 3, 4, 4), BF16)
    r = featjnd.quantize(x, np.full(32, 0.05, np.float32))
    assert r.recon.dtype == BF16
    xp, _ = featjnd.perturb(x, nrmse=0.1)
    assert xp.dtype == BF16


def test_version():
    assert featjnd.__version__ and featjnd.CONTRACT_VERSION == 1
