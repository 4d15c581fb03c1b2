"""The sync-free calls (contract 8) on numpy arrays: each equals its synchronous call bit for bit
once decoded, a bad input decodes to the synchronous call's error (same kind, index and message),
batches equal their single calls, and bad statistics arrays are clear errors. (On CUDA the same
calls are only enqueued; that path is exercised by test_cuda.py where a GPU exists.)"""

from __future__ import annotations

import numpy as np
import pytest

import featjnd
from conftest import DTYPE_IDS, FLOAT_DTYPES, feature, tolerance_map, tokens_k

SHAPES = [(1, 1, 1, 1), (2, 7, 5, 3), (1, 17, 1025)]


def outs(x, tokens, bits=8):
    return (
        np.zeros(x.shape, dtype=np.int8 if bits == 8 else np.int16),
        np.zeros_like(x),
        np.zeros(tokens, dtype=np.float32),
    )


def same_stats(d, r):
    assert d["clamped"] == r.clamped
    assert d["total_sse"] == r.total_sse
    assert d["mse"] == r.mse
    assert np.array_equal(d["histogram"], r.histogram)
    assert d["bits_per_element"] == r.bits_per_element


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bits", [8, 16])
def test_quantize_async_decodes_to_the_synchronous_call(rng, dtype, shape, bits):
    x = feature(rng, shape, dtype, 3.0)
    t, _ = tokens_k(shape, "nchw" if len(shape) == 4 else "ntc", 1)
    steps = rng.uniform(0.01, 0.5, t).astype(np.float32)
    r = featjnd.quantize(x, steps, bits)
    sym, rec, sse = outs(x, t, bits)
    stats = featjnd.stats_buffer(featjnd.quantize_stats_slots(bits), x)
    featjnd.quantize_async(x, steps, stats, bits, symbols=sym, recon=rec, token_sse=sse)
    same_stats(featjnd.quantize_decode(stats, x, bits), r)
    assert np.array_equal(sym, r.symbols)
    assert np.array_equal(rec.view(np.uint8), r.recon.view(np.uint8))
    assert np.array_equal(sse, r.token_sse)


@pytest.mark.parametrize("strategy", ["jnd", "uniform"])
def test_the_async_chain_decodes_to_the_fused_call(rng, strategy):
    x = feature(rng, (2, 6, 6, 4), np.float32)
    j = tolerance_map(rng, x.shape, np.float32)
    t, _ = tokens_k(x.shape, "nchw", 2)
    r = featjnd.quantize_with_jnd(x, j, 0.02, strategy, patch=2)
    sym, rec, sse = outs(x, t)
    steps = np.zeros(t, dtype=np.float32)
    stats = featjnd.stats_buffer(featjnd.quantize_with_jnd_stats_slots(t), x)
    featjnd.quantize_with_jnd_async(x, j, steps, stats, budget=0.02, strategy=strategy, patch=2, symbols=sym, recon=rec, token_sse=sse)
    same_stats(featjnd.quantize_decode(stats, x, patch=2, j=j), r)
    assert np.array_equal(steps, r.steps)
    assert np.array_equal(sym, r.symbols)
    with pytest.raises(featjnd.ArgError, match="permut"):
        featjnd.quantize_with_jnd_async(x, j, steps, stats, budget=0.02, strategy="permuted", patch=2)


def test_perturb_async_decodes_to_the_synchronous_call(rng):
    x = feature(rng, (3, 5, 7), np.float32)
    j = tolerance_map(rng, x.shape, np.float32)
    x[1] = 0.0  # a zero sample
    want, scales = featjnd.perturb(x, j, nrmse=0.3, seed=4)
    out = np.zeros_like(x)
    stats = featjnd.stats_buffer(featjnd.perturb_stats_slots(3), x)
    featjnd.perturb_async(x, j, out, stats, nrmse=0.3, seed=4)
    got, zero = featjnd.perturb_decode(stats, x, 0.3, j=j)
    assert np.array_equal(got, scales)
    assert zero == [1]
    assert np.array_equal(out, want)


def raised(f):
    with pytest.raises(featjnd.Error) as e:
        f()
    return e.value


def same_error(a, b):
    assert (type(a), a.kind, str(a), a.index) == (type(b), b.kind, str(b), b.index)


def test_bad_inputs_decode_to_the_synchronous_calls_errors(rng):
    x = feature(rng, (2, 5, 3, 4), np.float32)
    j = tolerance_map(rng, x.shape, np.float32)
    t = 2 * 3 * 4
    steps = rng.uniform(0.01, 0.5, t).astype(np.float32)
    bad_x, bad_j, bad_steps = x.copy(), j.copy(), steps.copy()
    bad_x.reshape(-1)[37] = np.nan
    bad_j.reshape(-1)[11] = -0.5
    bad_steps[7], bad_steps[9] = 0.0, np.nan
    sym, rec, sse = outs(x, t)
    stats = featjnd.stats_buffer(featjnd.quantize_with_jnd_stats_slots(t), x)
    # A non-finite x; a bad step ahead of it (the kernels check steps on the device).
    for xx, ss, kind in [(bad_x, steps, featjnd.NonFiniteError), (bad_x, bad_steps, featjnd.ArgError)]:
        sync = raised(lambda: featjnd.quantize(xx, ss))
        featjnd.quantize_async(xx, ss, stats, symbols=sym, recon=rec, token_sse=sse)
        dec = raised(lambda: featjnd.quantize_decode(stats, xx))
        same_error(sync, dec)
        assert isinstance(dec, kind)
    assert "step Δ[7] = 0 " in str(dec)
    # The chain: a bad J first; an absurd budget makes every uniform step +Inf.
    st = np.zeros(t, dtype=np.float32)
    for jj, budget, strategy in [(bad_j, 0.01, "jnd"), (j, 1e300, "uniform")]:
        sync = raised(lambda: featjnd.quantize_with_jnd(bad_x, jj, budget, strategy))
        featjnd.quantize_with_jnd_async(bad_x, jj, st, stats, budget=budget, strategy=strategy, symbols=sym, recon=rec, token_sse=sse)
        same_error(sync, raised(lambda: featjnd.quantize_decode(stats, bad_x, j=jj)))
    # Perturbation: a bad x before a bad J.
    pst = featjnd.stats_buffer(featjnd.perturb_stats_slots(2), x)
    out = np.zeros_like(x)
    for xx, jj in [(bad_x, bad_j), (x, bad_j)]:
        sync = raised(lambda: featjnd.perturb(xx, jj, nrmse=0.2))
        featjnd.perturb_async(xx, jj, out, pst, nrmse=0.2)
        same_error(sync, raised(lambda: featjnd.perturb_decode(pst, xx, 0.2, j=jj)))


def test_batches_equal_their_single_calls(rng):
    xs = [feature(rng, s, np.float32) for s in [(1, 1, 17), (1, 3, 14, 7), (2, 2, 9)]]
    layouts = ["ntc", "nchw", "ntc"]
    patches = [1, 7, 1]
    steps = [rng.uniform(0.01, 0.5, tokens_k(x.shape, lay, p)[0]).astype(np.float32) for x, lay, p in zip(xs, layouts, patches)]
    steps[2][1] = -1.0  # item 2 has a bad step
    per = featjnd.quantize_stats_slots(8)
    stats = featjnd.stats_buffer(3 * per, xs[0])
    bufs = [outs(x, len(s)) for x, s in zip(xs, steps)]
    items = [
        {"x": x, "steps": s, "layout": lay, "patch": p, "symbols": b[0], "recon": b[1], "token_sse": b[2]}
        for x, s, lay, p, b in zip(xs, steps, layouts, patches, bufs)
    ]
    featjnd.quantize_batch_async(items, stats)
    for i in range(2):
        r = featjnd.quantize(xs[i], steps[i], patch=patches[i], layout=layouts[i])
        same_stats(featjnd.quantize_decode(stats[i * per :], xs[i], patch=patches[i], layout=layouts[i]), r)
        assert np.array_equal(bufs[i][0], r.symbols)
    with pytest.raises(featjnd.ArgError, match=r"step Δ\[1\] = -1 "):
        featjnd.quantize_decode(stats[2 * per :], xs[2])
    # Two items writing one buffer are refused before anything runs.
    clash = [dict(items[0]), dict(items[0])]
    with pytest.raises(featjnd.ArgError, match="overlaps"):
        featjnd.quantize_batch_async(clash, stats)
    # Perturbation batches: offsets, and each item as its single call.
    ps = [feature(rng, s, np.float32) for s in [(2, 9), (3, 4, 5)]]
    outs_p = [np.zeros_like(p) for p in ps]
    pstats = featjnd.stats_buffer(sum(featjnd.perturb_stats_slots(p.shape[0]) for p in ps), ps[0])
    offsets = featjnd.perturb_batch_async([{"x": p, "out": o, "nrmse": 0.1, "seed": 3} for p, o in zip(ps, outs_p)], pstats)
    assert offsets == [0, featjnd.perturb_stats_slots(2)]
    for p, o, off in zip(ps, outs_p, offsets):
        want, scales = featjnd.perturb(p, nrmse=0.1, seed=3)
        assert np.array_equal(o, want)
        assert np.array_equal(featjnd.perturb_decode(pstats[off:], p, 0.1)[0], scales)


def test_bad_statistics_arrays_are_clear_errors(rng):
    x = feature(rng, (1, 4, 8), np.float32)
    steps = np.full(4, 0.1, dtype=np.float32)
    slots = featjnd.quantize_stats_slots(8)
    with pytest.raises(featjnd.ShapeError, match="needs"):
        featjnd.quantize_async(x, steps, np.zeros(slots - 1, dtype=np.int64))
    with pytest.raises(featjnd.ShapeError, match="int64"):
        featjnd.quantize_async(x, steps, np.zeros(slots, dtype=np.float32))
    with pytest.raises(featjnd.ArgError):
        featjnd.quantize_stats_slots(12)
    # The statistics may not overlap an output.
    both = np.zeros(slots + 64, dtype=np.int64)
    with pytest.raises(featjnd.ArgError, match="overlaps"):
        featjnd.quantize_async(x, steps, both, token_sse=both[2:4].view(np.float32)[:4])
    # More slots than needed are fine (the first ones are used).
    featjnd.quantize_async(x, steps, np.zeros(slots + 5, dtype=np.int64))
