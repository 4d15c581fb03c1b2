"""torch tensors (CPU) through DLPack: the same numbers as numpy, outputs allocated as tensors.
Each test prints SKIP (and passes) where torch is not importable."""

from __future__ import annotations

import numpy as np

import featjnd
from conftest import BF16, feature, tolerance_map

TORCH_DTYPES = ["float32", "float16", "bfloat16"]


def np_of(t):
    """A tensor's values as numpy (bf16 through ml_dtypes, or float32 without it)."""
    if str(t.dtype) == "torch.bfloat16":
        import torch

        bits = t.view(torch.int16).numpy()
        return bits.view(BF16) if BF16 is not None else (bits.astype(np.uint32) << 16).view(np.float32)
    return t.numpy()


def test_quantize_matches_numpy(rng, torch_or_skip):
    torch = torch_or_skip
    if torch is None:
        return
    for name in TORCH_DTYPES:
        xt = torch.from_numpy(feature(rng, (2, 5, 6, 9), np.float32)).to(getattr(torch, name))
        jt = torch.from_numpy(tolerance_map(rng, (2, 5, 6, 9), np.float32)).to(getattr(torch, name))
        r = featjnd.quantize_with_jnd(xt, jt, 0.01, patch=3)
        assert isinstance(r.symbols, torch.Tensor) and r.symbols.dtype == torch.int8
        assert isinstance(r.recon, torch.Tensor) and r.recon.dtype == xt.dtype
        assert isinstance(r.steps, torch.Tensor) and isinstance(r.token_tol, torch.Tensor)
        if name == "bfloat16" and BF16 is None:
            continue
        xn, jn = np_of(xt), np_of(jt)
        rn = featjnd.quantize_with_jnd(xn, jn, 0.01, patch=3)
        assert np.array_equal(r.symbols.numpy(), rn.symbols)
        assert np.array_equal(np_of(r.recon).view(np.uint8), rn.recon.view(np.uint8))
        assert np.array_equal(r.steps.numpy(), rn.steps) and r.total_sse == rn.total_sse
        assert np.array_equal(r.histogram, rn.histogram)


def test_perturb_and_noise(rng, torch_or_skip):
    torch = torch_or_skip
    if torch is None:
        return
    x = feature(rng, (3, 17, 7), np.float32)
    j = tolerance_map(rng, x.shape, np.float32)
    xt, jt = torch.from_numpy(x), torch.from_numpy(j)
    out, s = featjnd.perturb(xt, jt, nrmse=0.25, seed=4)
    want, ws = featjnd.perturb(x, j, nrmse=0.25, seed=4)
    assert isinstance(out, torch.Tensor) and isinstance(s, torch.Tensor)
    assert np.array_equal(out.numpy(), want) and np.array_equal(s.numpy(), ws)
    n = featjnd.noise(17, 3, 8, like=xt)
    assert isinstance(n, torch.Tensor) and np.array_equal(n.numpy(), featjnd.noise(17, 3, 8))
    # In place and into out=.
    y = xt.clone()
    featjnd.perturb(y, jt, nrmse=0.25, seed=4, in_place=True)
    assert torch.equal(y, out)
    buf = torch.empty_like(xt)
    featjnd.perturb(xt, jt, nrmse=0.25, seed=4, out=buf)
    assert torch.equal(buf, out)


def test_requires_grad_is_read_through_detach(rng, torch_or_skip):
    torch = torch_or_skip
    if torch is None:
        return
    x = torch.from_numpy(feature(rng, (2, 3, 4, 4), np.float32)).requires_grad_(True)
    r = featjnd.quantize(x, torch.full((32,), 0.1))
    assert not r.recon.requires_grad
    assert np.array_equal(r.symbols.numpy(), featjnd.quantize(x.detach().numpy(), np.full(32, 0.1, np.float32)).symbols)


def test_non_contiguous_tensor_is_a_value_error(rng, torch_or_skip):
    torch = torch_or_skip
    if torch is None:
        return
    x = torch.from_numpy(feature(rng, (2, 3, 4, 6), np.float32))
    for view in [x.transpose(2, 3), x[:, :, :, ::2], x[:1].expand(2, 3, 4, 6)]:
        try:
            featjnd.token_tolerance(view)
        except featjnd.NonContiguousError as e:
            assert isinstance(e, ValueError) and "not contiguous" in str(e)
        else:
            raise AssertionError("a non-contiguous tensor was accepted")


def test_errors_and_dtypes(rng, torch_or_skip):
    torch = torch_or_skip
    if torch is None:
        return
    j = torch.ones(2, 3, 4)
    j[1, 2, 3] = float("nan")
    try:
        featjnd.token_tolerance(j)
    except featjnd.JndError as e:
        assert e.index == 23
    else:
        raise AssertionError("no error")
    try:
        featjnd.token_tolerance(torch.ones(2, 3, 4, dtype=torch.float64))
    except featjnd.DtypeError as e:
        assert "float64" in str(e)
    else:
        raise AssertionError("no error")


def test_quantize_in_place_tensor(rng, torch_or_skip):
    torch = torch_or_skip
    if torch is None:
        return
    x = torch.from_numpy(feature(rng, (1, 7, 17), np.float32))
    steps = torch.full((7,), 0.2)
    want = featjnd.quantize(x, steps)
    y = x.clone()
    r = featjnd.quantize(y, steps, in_place=True)
    assert r.recon is y and torch.equal(y, want.recon)
