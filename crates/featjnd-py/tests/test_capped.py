"""The capped allocation (contract §3.5): featjnd.token_rms, caps_from_rms, allocate_steps_capped,
allocate_steps_capped_measured and quantize_capped against slow numpy references written from the
contract's text, at odd sizes, in every dtype, NCHW (patch 1 and 2) and NTC, and every bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

import featjnd
from conftest import DTYPE_IDS, FLOAT_DTYPES, feature, ref_token_tolerance, tokens_k, to_f32, tolerance_map

# (shape, layout, patch) with T = 1, 7, 17, 1025, 5137 tokens and odd K.
CAPPED_SHAPES = [
    ((1, 1, 1, 1), "nchw", 1),  # T = 1, K = 1
    ((1, 3, 1, 7), "nchw", 1),  # T = 7
    ((1, 3, 34, 2), "nchw", 2),  # T = 17, K = 12
    ((1, 5, 2, 2050), "nchw", 2),  # T = 1025, K = 20
    ((1, 5137, 3), "ntc", 1),  # T = 5137
    ((7, 1, 5), "ntc", 1),  # T = 7
    ((1, 17, 33), "ntc", 1),  # T = 17
    ((2, 7, 5, 3), "nchw", 1),  # T = 30, K = 7
]
CAPPED_IDS = ["x".join(map(str, s)) + f"-{l}-p{p}" for s, l, p in CAPPED_SHAPES]
TOKEN_COUNTS = [1, 7, 17, 1025, 5137]


def bits_of(a) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 2: np.uint16}[a.dtype.itemsize])


def assert_within_ulp(got, want, what=""):
    """Equal within one float32 ulp (the contract's bound between two computations of the scale)."""
    got, want = to_f32(got), to_f32(want)
    assert got.shape == want.shape, what
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    ulp = np.spacing(np.abs(want)).astype(np.float64)
    bad = np.flatnonzero(diff > ulp)
    assert bad.size == 0, f"{what}: {bad.size} steps off by more than 1 ulp, first t={bad[:1]}: {got[bad[:1]]} vs {want[bad[:1]]}"


# ---------------------------------------------------------------------------------------------
# references (contract §3.5)


def ref_caps(rms, kappa) -> np.ndarray:
    """c_t = f32(κ) · max(r_t, 2^-24 · max_t r_t), every operation in float32 (the max folds from 0)."""
    r = to_f32(rms)
    mx = np.float32(max(0.0, float(r.max())))
    floor = np.float32(mx * np.float32(2.0**-24))
    return (np.float32(kappa) * np.maximum(r, floor)).astype(np.float32)


def ref_capped_scales(jt, caps, budget):
    """(a, b) at β = 1 in float64: saturated S_c <= G gives (inf, sqrt(G/S_c)); otherwise (s, 1) with s
    the root of Σ min(s·j, c)² = G found by bisection (f is nondecreasing in s, f(0) = -G < 0 and
    f(max c/j) = S_c - G > 0)."""
    j = to_f32(jt).astype(np.float64)
    c = to_f32(caps).astype(np.float64)
    g = 12.0 * budget * len(j)
    sc = math.fsum(c * c)
    if sc <= g:
        return math.inf, math.sqrt(g / sc)
    lo, hi = 0.0, float((c / j).max())
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if math.fsum(np.minimum(mid * j, c) ** 2) < g:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi), 1.0


def ref_capped_steps(jt, caps, budget, beta=1.0) -> np.ndarray:
    """Δ_t = min(f32(a·β)·j_t, f32(b·β)·c_t): each scale rounded once to f32, one f32 multiply each."""
    a, b = ref_capped_scales(jt, caps, budget)
    fa, fb = np.float32(a * beta), np.float32(b * beta)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.minimum((fa * to_f32(jt)).astype(np.float32), (fb * to_f32(caps)).astype(np.float32))


def jt_caps(rng, t):
    jt = rng.uniform(0.05, 2.0, t).astype(np.float32)
    caps = np.exp(rng.uniform(-3.0, 1.0, t)).astype(np.float32)
    return jt, caps


# Budgets as a fraction of the saturation point S_c / (12 T): below it (some tokens capped, or
# none at the smallest), and above it (every step its cap scaled up).
REGIMES = {"uncapped": 1e-4, "some-capped": 0.3, "most-capped": 0.9, "saturated": 2.0}


# ---------------------------------------------------------------------------------------------
# token RMS


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,layout,patch", CAPPED_SHAPES, ids=CAPPED_IDS)
def test_token_rms(rng, shape, layout, patch, dtype):
    x = feature(rng, shape, dtype, scale=3.0)
    got = featjnd.token_rms(x, patch)
    t, _ = tokens_k(shape, layout, patch)
    assert got.dtype == np.float32 and got.shape == (t,)
    np.testing.assert_allclose(got, ref_token_tolerance(x, layout, patch, "rms"), rtol=1e-5)
    # Into out=, with the layout named.
    out = np.full(t, -1.0, np.float32)
    assert featjnd.token_rms(x, patch, layout.upper(), out=out) is out
    assert np.array_equal(bits_of(out), bits_of(got))


def test_token_rms_of_zero_tokens(rng):
    x = feature(rng, (1, 3, 4, 6), np.float32)
    x[:, :, :2, :2] = 0  # token 0 (patch 2) is all zero
    r = featjnd.token_rms(x, 2)
    assert r[0] == 0 and np.all(r[1:] > 0)
    c = featjnd.caps_from_rms(r)
    assert c[0] == np.float32(2) * np.float32(r.max() * np.float32(2.0**-24)) and c[0] > 0


# ---------------------------------------------------------------------------------------------
# caps


@pytest.mark.parametrize("t", TOKEN_COUNTS)
@pytest.mark.parametrize("kappa", [2.0, math.sqrt(12.0), 0.37])
def test_caps_from_rms(rng, t, kappa):
    rms = np.exp(rng.uniform(-5, 2, t)).astype(np.float32)
    rms[:: max(1, t // 3)] = 0.0 if t > 1 else rms[0]  # a few all-zero tokens (not all of them)
    got = featjnd.caps_from_rms(rms, kappa)
    assert got.dtype == np.float32 and got.shape == (t,)
    assert np.array_equal(bits_of(got), bits_of(ref_caps(rms, kappa)))  # float32 operations: exact
    assert np.all(got > 0)


def test_caps_default_kappa_is_2_and_out(rng):
    rms = rng.uniform(0.1, 3, 17).astype(np.float32)
    assert np.array_equal(featjnd.caps_from_rms(rms), np.float32(2) * rms)
    out = np.empty(17, np.float32)
    assert featjnd.caps_from_rms(rms, 3.0, out=out) is out
    assert np.array_equal(out, np.float32(3) * rms)


# ---------------------------------------------------------------------------------------------
# capped steps


@pytest.mark.parametrize("t", TOKEN_COUNTS)
@pytest.mark.parametrize("regime", list(REGIMES))
def test_capped_steps_match_the_bisection_reference(rng, t, regime):
    jt, caps = jt_caps(rng, t)
    d = REGIMES[regime] * math.fsum(caps.astype(np.float64) ** 2) / (12.0 * t)
    got = featjnd.allocate_steps_capped(jt, caps, d)
    assert got.dtype == np.float32 and got.shape == (t,)
    want = ref_capped_steps(jt, caps, d)
    assert_within_ulp(got, want, f"T={t} {regime}")
    # The nominal budget is met (up to the two f32 roundings of the scales).
    assert math.fsum(got.astype(np.float64) ** 2) / (12.0 * t) == pytest.approx(d, rel=1e-5)
    if regime == "saturated":
        # Every step is its cap scaled up by one factor b > 1.
        b = np.float32(math.sqrt(12.0 * d * t / math.fsum(caps.astype(np.float64) ** 2)))
        assert np.array_equal(got, (b * caps).astype(np.float32)) and b > 1
    else:
        assert np.all(got <= caps)  # no step above its cap
        if regime == "uncapped" and t > 1:
            # Far below saturation no token is capped: the Jnd steps.
            s = np.float32(math.sqrt(12.0 * d * t / math.fsum(jt.astype(np.float64) ** 2)))
            assert_within_ulp(got, (s * jt).astype(np.float32), "uncapped = jnd")


@pytest.mark.parametrize("beta", [0.25, 1.0, 1.7])
def test_capped_steps_beta_scales_both_terms(rng, beta):
    jt, caps = jt_caps(rng, 1025)
    for frac in (0.5, 3.0):
        d = frac * math.fsum(caps.astype(np.float64) ** 2) / (12.0 * 1025)
        got = featjnd.allocate_steps_capped(jt, caps, d, beta=beta)
        assert_within_ulp(got, ref_capped_steps(jt, caps, d, beta), f"beta={beta}")
        assert math.fsum(got.astype(np.float64) ** 2) / (12.0 * 1025) == pytest.approx(d * beta * beta, rel=1e-5)


def test_capped_steps_into_out_and_ties(rng):
    # Equal ratios c/j (ties) and equal tolerances: the steps stay a function of (j, c) alone.
    jt = np.full(17, 0.5, np.float32)
    caps = np.full(17, 1.0, np.float32)
    out = np.empty(17, np.float32)
    d = 0.5 * 17.0 / (12 * 17)
    assert featjnd.allocate_steps_capped(jt, caps, d, out=out) is out
    assert np.all(out == out[0])
    assert_within_ulp(out, ref_capped_steps(jt, caps, d))


# ---------------------------------------------------------------------------------------------
# measured budget and the chain


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,layout,patch", [CAPPED_SHAPES[2], CAPPED_SHAPES[3], CAPPED_SHAPES[6]], ids=[CAPPED_IDS[2], CAPPED_IDS[3], CAPPED_IDS[6]])
def test_capped_measured_budget(rng, shape, layout, patch, dtype):
    x = feature(rng, shape, dtype, scale=2.0)
    jt = featjnd.token_tolerance(tolerance_map(rng, shape, dtype), patch, "mean", layout)
    caps = featjnd.caps_from_rms(featjnd.token_rms(x, patch, layout))
    d = 0.02 * float(np.mean(to_f32(x).astype(np.float64) ** 2))
    steps, m = featjnd.allocate_steps_capped_measured(jt, caps, x, d, layout=layout, patch=patch)
    assert isinstance(m, featjnd.MeasuredBudget) and m.evaluations >= 1
    assert abs(m.measured_mse / d - 1) <= 1e-3
    # The steps are the capped steps at that beta, bit for bit, and measure what was reported.
    assert np.array_equal(bits_of(steps), bits_of(featjnd.allocate_steps_capped(jt, caps, d, beta=m.beta)))
    q = featjnd.quantize(x, steps, 8, patch, layout=layout)
    assert q.mse == pytest.approx(m.measured_mse, rel=1e-9)
    again = featjnd.allocate_steps_capped(jt, caps, d, measured_x=x, layout=layout, patch=patch)
    assert np.array_equal(bits_of(again), bits_of(steps))


def test_capped_measured_out_of_reach(rng):
    x = feature(rng, (1, 4, 6, 6), np.float32)
    jt = featjnd.token_tolerance(tolerance_map(rng, x.shape, np.float32))
    caps = featjnd.caps_from_rms(featjnd.token_rms(x))
    with pytest.raises(featjnd.UnreachableError) as e:
        featjnd.allocate_steps_capped_measured(jt, caps, x, 10.0 * float(np.mean(x.astype(np.float64) ** 2)))
    assert e.value.kind == "Unreachable"


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,layout,patch", CAPPED_SHAPES[1:], ids=CAPPED_IDS[1:])
def test_quantize_capped_is_the_composition(rng, shape, layout, patch, dtype):
    x = feature(rng, shape, dtype, scale=2.0)
    j = tolerance_map(rng, shape, dtype)
    d = 0.05
    r = featjnd.quantize_capped(x, j, d, patch=patch)
    jt = featjnd.token_tolerance(j, patch, "mean", layout)
    caps = featjnd.caps_from_rms(featjnd.token_rms(x, patch, layout), 2.0)
    steps = featjnd.allocate_steps_capped(jt, caps, d)
    assert np.array_equal(bits_of(r.token_tol), bits_of(jt)) and np.array_equal(bits_of(r.caps), bits_of(caps))
    assert np.array_equal(bits_of(r.steps), bits_of(steps))
    q = featjnd.quantize(x, steps, 8, patch, layout=layout)
    assert np.array_equal(bits_of(r.recon), bits_of(q.recon)) and np.array_equal(r.symbols, q.symbols)
    # Measured, at another κ: the chain's quantization measures what the bisection reported.
    rm = featjnd.quantize_capped(x, j, d, 3.0, patch=patch, measured=True)
    assert rm.measured is not None and abs(rm.measured.measured_mse / d - 1) <= 1e-3
    assert rm.mse == pytest.approx(rm.measured.measured_mse, rel=1e-9)
    assert np.array_equal(bits_of(rm.caps), bits_of(featjnd.caps_from_rms(featjnd.token_rms(x, patch, layout), 3.0)))


# ---------------------------------------------------------------------------------------------
# errors (contract §3.5, §7)


def test_token_rms_errors(rng):
    for dtype in FLOAT_DTYPES:
        x = feature(rng, (2, 3, 17, 17), dtype)
        x.reshape(-1)[1000] = np.nan
        x.reshape(-1)[1500] = np.inf
        with pytest.raises(featjnd.NonFiniteError, match=r"x\[1000\]") as e:
            featjnd.token_rms(x)
        assert e.value.kind == "NonFinite" and e.value.index == 1000 and np.isnan(e.value.value)
    x = feature(rng, (7, 5, 3), np.float32)
    x[6, 4, 2] = -np.inf
    with pytest.raises(featjnd.NonFiniteError) as e:
        featjnd.token_rms(x)
    assert e.value.index == x.size - 1 and e.value.value == -np.inf
    x = feature(rng, (1, 3, 4, 6), np.float32)
    with pytest.raises(featjnd.ShapeError):
        featjnd.token_rms(x, out=np.empty(23, np.float32))
    with pytest.raises(featjnd.ShapeError):
        featjnd.token_rms(x, out=np.empty(24, np.float16))
    with pytest.raises(featjnd.DtypeError):
        featjnd.token_rms(x, out=np.empty(24, np.float64))
    with pytest.raises(featjnd.DtypeError):
        featjnd.token_rms(x.astype(np.float64))
    with pytest.raises(featjnd.PatchError):
        featjnd.token_rms(x, 5)
    with pytest.raises(featjnd.ArgError):
        featjnd.token_rms(x, 0)
    with pytest.raises(featjnd.NonContiguousError):
        featjnd.token_rms(x[:, :, :, ::2])
    with pytest.raises(featjnd.ShapeError):
        featjnd.token_rms(x.reshape(-1))
    with pytest.raises(featjnd.ArgError, match="overlaps"):
        featjnd.token_rms(x, 2, out=x.reshape(-1)[:6])


@pytest.mark.parametrize("kappa", [0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e39])
def test_bad_kappa(rng, kappa):
    rms = rng.uniform(0.1, 1, 7).astype(np.float32)
    out = np.full(7, -1.0, np.float32)
    with pytest.raises(featjnd.ArgError, match="κ") as e:
        featjnd.caps_from_rms(rms, kappa, out=out)
    assert e.value.kind == "Arg"
    assert np.all(out == -1)  # nothing written


def test_caps_errors(rng):
    with pytest.raises(featjnd.ArgError, match="zero"):
        featjnd.caps_from_rms(np.zeros(17, np.float32))
    # A zero feature: its token RMS is fine, its caps are not.
    x = np.zeros((1, 3, 4, 6), np.float32)
    with pytest.raises(featjnd.ArgError, match="zero"):
        featjnd.caps_from_rms(featjnd.token_rms(x))
    with pytest.raises(featjnd.EmptyError):
        featjnd.caps_from_rms(np.zeros(0, np.float32))
    rms = rng.uniform(0.1, 1, 7).astype(np.float32)
    with pytest.raises(featjnd.ShapeError):
        featjnd.caps_from_rms(rms, out=np.empty(6, np.float32))
    with pytest.raises(featjnd.ArgError):
        featjnd.caps_from_rms(rms.astype(np.float16))
    with pytest.raises(featjnd.DtypeError):
        featjnd.caps_from_rms(rms.astype(np.float64))
    with pytest.raises(featjnd.ArgError):
        featjnd.caps_from_rms(rms.reshape(1, 7))
    with pytest.raises(featjnd.ArgError, match="overlaps"):
        featjnd.caps_from_rms(rms, out=rms)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf, -np.inf])
def test_bad_caps_name_the_first_index(rng, bad):
    jt, caps = jt_caps(rng, 17)
    caps[5] = bad
    caps[9] = -2.0
    out = np.full(17, -1.0, np.float32)
    with pytest.raises(featjnd.ArgError, match=r"c\[5\]") as e:
        featjnd.allocate_steps_capped(jt, caps, 0.01, out=out)
    assert e.value.kind == "Arg"
    assert np.all(out == -1)  # nothing written
    x = feature(rng, (1, 17, 3), np.float32)
    with pytest.raises(featjnd.ArgError, match=r"c\[5\]"):
        featjnd.allocate_steps_capped_measured(jt, caps, x, 0.01)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_bad_token_tolerance_in_capped(rng, bad):
    jt, caps = jt_caps(rng, 1025)
    jt[[700, 900]] = [bad, -1.0]
    caps[3] = np.nan  # j_t is checked first
    with pytest.raises(featjnd.JndError) as e:
        featjnd.allocate_steps_capped(jt, caps, 0.01)
    assert e.value.index == 700 and ((np.isnan(bad) and np.isnan(e.value.value)) or e.value.value == bad)


@pytest.mark.parametrize("budget", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_budget_in_capped(rng, budget):
    jt, caps = jt_caps(rng, 7)
    with pytest.raises(featjnd.BudgetError):
        featjnd.allocate_steps_capped(jt, caps, budget)
    x = feature(rng, (1, 7, 3), np.float32)
    with pytest.raises(featjnd.BudgetError):
        featjnd.allocate_steps_capped_measured(jt, caps, x, budget)


def test_capped_size_errors(rng):
    jt, caps = jt_caps(rng, 17)
    with pytest.raises(featjnd.ShapeError, match="caps has 16 values for 17 tokens"):
        featjnd.allocate_steps_capped(jt, caps[:16].copy(), 0.01)
    with pytest.raises(featjnd.ShapeError):
        featjnd.allocate_steps_capped(jt, caps, 0.01, out=np.empty(18, np.float32))
    with pytest.raises(featjnd.ShapeError):
        featjnd.allocate_steps_capped(jt, caps, 0.01, out=np.empty(17, np.float16))
    with pytest.raises(featjnd.EmptyError):
        featjnd.allocate_steps_capped(np.zeros(0, np.float32), np.zeros(0, np.float32), 0.01)
    with pytest.raises(featjnd.DtypeError):
        featjnd.allocate_steps_capped(jt.astype(np.float64), caps, 0.01)
    with pytest.raises(featjnd.ArgError):
        featjnd.allocate_steps_capped(jt.astype(np.float16), caps, 0.01)
    with pytest.raises(featjnd.ArgError):
        featjnd.allocate_steps_capped(jt, caps.astype(np.float16), 0.01)
    with pytest.raises(featjnd.ArgError, match="overlaps"):
        featjnd.allocate_steps_capped(jt, caps, 0.01, out=caps)
    x = feature(rng, (1, 17, 3), np.float32)
    with pytest.raises(featjnd.ShapeError):
        featjnd.allocate_steps_capped_measured(jt, caps[:16].copy(), x, 0.01)
    with pytest.raises(featjnd.ShapeError):
        featjnd.allocate_steps_capped_measured(jt[:16].copy(), caps[:16].copy(), x, 0.01)
    with pytest.raises(featjnd.ArgError):
        featjnd.allocate_steps_capped_measured(jt, caps, x, 0.01, bits=12)
    bad = x.copy()
    bad[0, 3, 1] = np.nan
    with pytest.raises(featjnd.NonFiniteError) as e:
        featjnd.allocate_steps_capped_measured(jt, caps, bad, 0.01)
    assert e.value.index == 10


def test_quantize_capped_errors(rng):
    x = feature(rng, (1, 3, 4, 6), np.float32)
    j = tolerance_map(rng, x.shape, np.float32)
    with pytest.raises(featjnd.ShapeError):
        featjnd.quantize_capped(x, j[:, :2].copy(), 0.01)
    bad_j = j.copy()
    bad_j.reshape(-1)[11] = 0
    bad_x = x.copy()
    bad_x.reshape(-1)[5] = np.nan
    with pytest.raises(featjnd.JndError) as e:  # J before x
        featjnd.quantize_capped(bad_x, bad_j, 0.01)
    assert e.value.index == 11
    with pytest.raises(featjnd.NonFiniteError) as e:
        featjnd.quantize_capped(bad_x, j, 0.01)
    assert e.value.index == 5
    with pytest.raises(featjnd.ArgError, match="zero"):
        featjnd.quantize_capped(np.zeros_like(x), j, 0.01)
    with pytest.raises(featjnd.ArgError, match="κ"):
        featjnd.quantize_capped(x, j, 0.01, kappa=0.0)


# ---------------------------------------------------------------------------------------------
# torch (CPU tensors; bfloat16 through torch)


def test_capped_on_torch(rng, torch_or_skip):
    torch = torch_or_skip
    if torch is None:
        return
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.from_numpy(feature(rng, (2, 5, 6, 4), np.float32, scale=2.0)).to(dt)
        j = torch.from_numpy(tolerance_map(rng, (2, 5, 6, 4), np.float32)).to(dt)
        r = featjnd.token_rms(x, 2)
        assert isinstance(r, torch.Tensor) and r.dtype == torch.float32 and r.shape == (12,)
        np.testing.assert_allclose(r.numpy(), ref_token_tolerance(x.float().numpy(), "nchw", 2, "rms"), rtol=1e-5)
        caps = featjnd.caps_from_rms(r)
        assert isinstance(caps, torch.Tensor)
        assert np.array_equal(caps.numpy(), ref_caps(r.numpy(), 2.0))
        jt = featjnd.token_tolerance(j, 2)
        steps = featjnd.allocate_steps_capped(jt, caps, 0.05)
        assert isinstance(steps, torch.Tensor)
        assert_within_ulp(steps.numpy(), ref_capped_steps(jt.numpy(), caps.numpy(), 0.05), str(dt))
        q = featjnd.quantize_capped(x, j, 0.05, patch=2)
        assert torch.equal(q.steps, steps) and q.recon.dtype == dt
        ms, m = featjnd.allocate_steps_capped_measured(jt, caps, x, 0.05, patch=2)
        assert isinstance(ms, torch.Tensor) and abs(m.measured_mse / 0.05 - 1) <= 1e-3
    # requires_grad tensors are read through .detach().
    jt = torch.rand(7, requires_grad=True) + 0.1
    assert featjnd.allocate_steps_capped(jt, torch.ones(7), 0.01).shape == (7,)
