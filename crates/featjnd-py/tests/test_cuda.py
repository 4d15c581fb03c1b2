"""torch CUDA tensors through DLPack: every op on the GPU against the same op on the CPU, on
torch's current stream and on a caller-given stream. Runs where torch sees a CUDA device (the
device machine: scripts/gpu-check.sh); prints SKIP and passes everywhere else.

Bit-identical where the contract says so (symbols and reconstructions given the same steps,
uniform noise); within the contract's tolerances otherwise (token tolerances and steps: reduction
order; Gaussian noise: transcendental functions).
"""

from __future__ import annotations

import numpy as np
import pytest

import featjnd
from conftest import _SKIPS, feature, tolerance_map

try:
    import torch
except Exception:  # pragma: no cover - torch absent or broken
    torch = None

SHAPES = [((1, 1, 1, 1), 1), ((2, 7, 5, 3), 1), ((3, 17, 6, 10), 2), ((2, 33, 1025), 1)]
DTYPES = ["float32", "float16", "bfloat16"]


def _gpu(name):
    if torch is None or not torch.cuda.is_available():
        _SKIPS.append(f"SKIP {name}: no CUDA device visible to torch")
        return False
    return True


def _bits(t):
    """A tensor's raw bits on the host, for bitwise comparison."""
    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.view(torch.int16).numpy()
    if t.dtype == torch.float32:
        return t.view(torch.int32).numpy()
    return t.numpy()


def _pair(rng, shape, name):
    dt = getattr(torch, name)
    x = torch.from_numpy(feature(rng, shape, np.float32)).to(dt)
    j = torch.from_numpy(tolerance_map(rng, shape, np.float32)).to(dt)
    return x, j


def test_quantize_on_gpu_is_bit_identical_to_cpu(rng):
    if not _gpu("test_quantize_on_gpu_is_bit_identical_to_cpu"):
        return
    for shape, patch in SHAPES:
        for name in DTYPES:
            x, j = _pair(rng, shape, name)
            jt = featjnd.token_tolerance(j, patch=patch)
            steps = featjnd.allocate_steps(jt, 0.01)
            rc = featjnd.quantize(x, steps, patch=patch)
            rg = featjnd.quantize(x.cuda(), steps.cuda(), patch=patch)
            assert rg.symbols.is_cuda and rg.recon.is_cuda, "outputs stay on the input's device"
            what = f"{shape} {name} p{patch}"
            assert np.array_equal(_bits(rg.symbols), _bits(rc.symbols)), what
            assert np.array_equal(_bits(rg.recon), _bits(rc.recon)), what
            assert rg.clamped == rc.clamped, what
            np.testing.assert_allclose(rg.token_sse.cpu().numpy(), rc.token_sse.numpy(), rtol=1e-4, atol=1e-30, err_msg=what)
            # Token tolerances reduce in another order on the device: equal to rounding.
            np.testing.assert_allclose(featjnd.token_tolerance(j.cuda(), patch=patch).cpu().numpy(), jt.numpy(), rtol=1e-5, err_msg=what)


def test_perturb_and_noise_on_gpu_match_cpu(rng):
    if not _gpu("test_perturb_and_noise_on_gpu_match_cpu"):
        return
    for kind in ["uniform", "gaussian"]:
        nc = featjnd.noise(4099, offset=3, seed=11, noise=kind)
        ng = featjnd.noise(4099, offset=3, seed=11, noise=kind, like=torch.empty(0, device="cuda"))
        if kind == "uniform":
            assert np.array_equal(_bits(ng), _bits(torch.as_tensor(nc))), "uniform noise is bit-identical"
        else:
            np.testing.assert_allclose(ng.cpu().numpy(), np.asarray(nc), rtol=1e-5, atol=1e-6)
    for shape, _ in SHAPES:
        x, j = _pair(rng, shape, "float32")
        xc, sc = featjnd.perturb(x, j, nrmse=0.3, seed=5)
        xg, sg = featjnd.perturb(x.cuda(), j.cuda(), nrmse=0.3, seed=5)
        assert xg.is_cuda
        np.testing.assert_allclose(np.asarray(sg.cpu() if hasattr(sg, "cpu") else sg), np.asarray(sc), rtol=1e-5)
        scale = float(x.abs().max())
        np.testing.assert_allclose(xg.cpu().numpy(), xc.numpy(), rtol=1e-5, atol=1e-5 * scale)


def test_ops_run_on_a_caller_stream(rng):
    if not _gpu("test_ops_run_on_a_caller_stream"):
        return
    x, j = _pair(rng, (2, 16, 8, 8), "float32")
    xd, jd = x.cuda(), j.cuda()
    expect = featjnd.quantize_with_jnd(xd, jd, 0.01)
    s = torch.cuda.Stream()
    # The current stream (torch's) and an explicit `stream=`: the same bits either way.
    with torch.cuda.stream(s):
        on_current = featjnd.quantize_with_jnd(xd, jd, 0.01)
    on_given = featjnd.quantize_with_jnd(xd, jd, 0.01, stream=s)
    torch.cuda.synchronize()
    for r in (on_current, on_given):
        assert np.array_equal(_bits(r.symbols), _bits(expect.symbols))
        assert np.array_equal(_bits(r.recon), _bits(expect.recon))


def test_gpu_errors_name_the_first_bad_index(rng):
    if not _gpu("test_gpu_errors_name_the_first_bad_index"):
        return
    x, j = _pair(rng, (2, 4, 4, 4), "float32")
    x = x.cuda()
    x.view(-1)[37] = float("nan")
    try:
        featjnd.perturb(x, nrmse=0.1)
    except featjnd.Error as e:
        assert e.index == 37, e
    else:  # pragma: no cover
        raise AssertionError("a NaN in x on the GPU must be an error")


def _within_ulp(got, want, what):
    got, want = got.detach().cpu().numpy().astype(np.float64), want.detach().cpu().numpy()
    assert np.all(np.abs(got - want.astype(np.float64)) <= np.spacing(np.abs(want)).astype(np.float64)), what


def test_capped_allocation_on_gpu_matches_cpu(rng):
    """Token RMS (reduction order: to rounding), caps (float32 operations: bit-identical), capped
    steps (the device solver bisects: within one f32 ulp, contract §3.5), the measured budget and
    the capped chain."""
    if not _gpu("test_capped_allocation_on_gpu_matches_cpu"):
        return
    for shape, patch in SHAPES + [((1, 5137, 3), 1)]:
        for name in DTYPES:
            x, j = _pair(rng, shape, name)
            what = f"{shape} {name} p{patch}"
            rc = featjnd.token_rms(x, patch=patch)
            rg = featjnd.token_rms(x.cuda(), patch=patch)
            assert rg.is_cuda, what
            np.testing.assert_allclose(rg.cpu().numpy(), rc.numpy(), rtol=1e-5, err_msg=what)
            cc = featjnd.caps_from_rms(rc)
            cg = featjnd.caps_from_rms(rc.cuda())
            assert cg.is_cuda and np.array_equal(_bits(cg), _bits(cc)), what
            jt = featjnd.token_tolerance(j, patch=patch)
            for frac in (0.3, 0.9, 2.0):
                d = frac * float((cc.double() ** 2).mean()) / 12.0
                for beta in (1.0, 0.6):
                    sc = featjnd.allocate_steps_capped(jt, cc, d, beta=beta)
                    sg = featjnd.allocate_steps_capped(jt.cuda(), cc.cuda(), d, beta=beta)
                    assert sg.is_cuda
                    _within_ulp(sg, sc, f"{what} frac={frac} beta={beta}")
            if shape != (1, 1, 1, 1):
                d = 0.02 * float(x.double().pow(2).mean())
                sg, mg = featjnd.allocate_steps_capped_measured(jt.cuda(), cc.cuda(), x.cuda(), d, patch=patch)
                assert sg.is_cuda and abs(mg.measured_mse / d - 1) <= 1e-3, what
                assert featjnd.quantize(x.cuda(), sg, patch=patch).mse == pytest.approx(mg.measured_mse, rel=1e-6), what
            qc = featjnd.quantize_capped(x, j, 0.05, patch=patch)
            qg = featjnd.quantize_capped(x.cuda(), j.cuda(), 0.05, patch=patch)
            _within_ulp(qg.steps, qc.steps, what)
            if np.array_equal(_bits(qg.steps), _bits(qc.steps)):
                assert np.array_equal(_bits(qg.recon), _bits(qc.recon)), what


def test_capped_gpu_errors_match_cpu(rng):
    if not _gpu("test_capped_gpu_errors_match_cpu"):
        return
    x, j = _pair(rng, (2, 4, 4, 4), "float32")
    xd = x.cuda()
    xd.view(-1)[37] = float("nan")
    xd.view(-1)[40] = float("inf")
    with pytest.raises(featjnd.NonFiniteError) as e:
        featjnd.token_rms(xd)
    assert e.value.index == 37 and np.isnan(e.value.value)
    with pytest.raises(featjnd.ArgError, match="zero"):
        featjnd.caps_from_rms(torch.zeros(5, device="cuda"))
    with pytest.raises(featjnd.ArgError, match="κ"):
        featjnd.caps_from_rms(torch.ones(5, device="cuda"), 0.0)
    jt = torch.rand(17, device="cuda") + 0.1
    caps = torch.rand(17, device="cuda") + 0.1
    bad = caps.clone()
    bad[3], bad[9] = 0.0, float("nan")
    out = torch.full((17,), -1.0, device="cuda")
    with pytest.raises(featjnd.ArgError, match=r"c\[3\]"):
        featjnd.allocate_steps_capped(jt, bad, 0.01, out=out)
    assert bool((out == -1).all()), "nothing written on a bad cap"
    badj = jt.clone()
    badj[2] = -1.0
    with pytest.raises(featjnd.JndError) as e:
        featjnd.allocate_steps_capped(badj, bad, 0.01)
    assert e.value.index == 2 and e.value.value == -1.0
    with pytest.raises(featjnd.ShapeError):
        featjnd.allocate_steps_capped(jt, caps[:16].contiguous(), 0.01)
    with pytest.raises(featjnd.BudgetError):
        featjnd.allocate_steps_capped(jt, caps, 0.0)
    with pytest.raises(featjnd.DeviceError):
        featjnd.allocate_steps_capped(jt, caps.cpu(), 0.01)


def test_sync_free_calls_on_gpu_decode_like_the_cpu(rng):
    """Contract 8 on the GPU: quantize_async, the async chain and perturb_async only enqueue;
    decoding gives the CPU's statistics bit for bit, and a bad step the CPU's error."""
    if not _gpu("test_sync_free_calls_on_gpu_decode_like_the_cpu"):
        return
    x = feature(rng, (2, 7, 5, 3), np.float32)
    j = tolerance_map(rng, x.shape, np.float32)
    t = 2 * 5 * 3
    steps = rng.uniform(0.01, 0.5, t).astype(np.float32)
    bad = steps.copy()
    bad[4] = 0.0
    seen = []
    for dev in ["cpu", "cuda"]:
        xd, jd = torch.from_numpy(x).to(dev), torch.from_numpy(j).to(dev)
        sym = torch.zeros(x.shape, dtype=torch.int8, device=dev)
        st = featjnd.stats_buffer(featjnd.quantize_with_jnd_stats_slots(t), xd)
        featjnd.quantize_async(xd, torch.from_numpy(steps).to(dev), st, symbols=sym)
        d = featjnd.quantize_decode(st, xd)
        sym_bytes = sym.cpu().numpy().tobytes()
        steps_out = torch.zeros(t, dtype=torch.float32, device=dev)
        featjnd.quantize_with_jnd_async(xd, jd, steps_out, st, budget=0.02, symbols=sym)
        c = featjnd.quantize_decode(st, xd, j=jd)
        featjnd.quantize_async(xd, torch.from_numpy(bad).to(dev), st)
        with pytest.raises(featjnd.ArgError) as e:
            featjnd.quantize_decode(st, xd)
        out = torch.zeros_like(xd)
        pst = featjnd.stats_buffer(featjnd.perturb_stats_slots(2), xd)
        featjnd.perturb_async(xd, jd, out, pst, nrmse=0.2, seed=1)
        p = featjnd.perturb_decode(pst, xd, 0.2, j=jd)
        seen.append(((d["clamped"], str(e.value), sym_bytes, p[1]), (d["total_sse"], c["total_sse"])))
    assert seen[0][0] == seen[1][0]
    np.testing.assert_allclose(seen[0][1], seen[1][1], rtol=1e-4)
