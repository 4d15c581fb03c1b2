"""The ``.fjq`` codec (featjnd.encode / featjnd.decode): bit-exact round trips against
featjnd.quantize with the file's (rounded) steps, every dtype, NCHW and NTC, and corrupted files."""

from __future__ import annotations

import numpy as np
import pytest

import featjnd
from conftest import DTYPE_IDS, FLOAT_DTYPES, ODD_SHAPES, SHAPE_IDS, feature, tolerance_map


def _steps(rng, x, layout, patch, budget=0.01):
    jt = featjnd.token_tolerance(tolerance_map(rng, x.shape, x.dtype), patch, layout=layout)
    return featjnd.allocate_steps(jt, budget)


def _raw(a) -> bytes:
    return np.ascontiguousarray(a).tobytes()


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,layout,patch", ODD_SHAPES, ids=SHAPE_IDS)
def test_round_trip_is_bit_exact(rng, shape, layout, patch, dtype, bits):
    x = feature(rng, shape, dtype, scale=3.0)
    steps = _steps(rng, x, layout, patch)
    enc = featjnd.encode(x, steps, patch=patch, bits=bits)
    assert isinstance(enc.bytes, bytes) and enc.bytes[:4] == b"FJQ\0"
    assert enc.rate["file_bytes"] == len(enc.bytes)
    assert sum(enc.rate["sections"].values()) == len(enc.bytes)
    # The stored steps are the given ones on the default log grid (16 points per octave: relative
    # error <= 2^(1/32) - 1), or the one tensor step exactly.
    assert enc.steps.dtype == np.float32 and enc.steps.shape == steps.shape
    np.testing.assert_allclose(enc.steps, steps, rtol=2.0 ** (1 / 32) - 1 + 1e-6)
    assert enc.rate["step_bytes"] == enc.rate["sections"]["steps"]
    dec = featjnd.decode(enc.bytes)
    assert (dec.dtype, dec.layout, dec.patch, dec.bits) == (dtype.name, layout, patch, bits)
    assert dec.recon.dtype == dtype and dec.recon.shape == shape
    assert dec.symbols.dtype == (np.int8 if bits == 8 else np.int16)
    assert _raw(dec.steps) == _raw(enc.steps)
    assert dec.rate == enc.rate
    q = featjnd.quantize(x, enc.steps, bits, patch, layout=layout)
    assert _raw(dec.recon) == _raw(q.recon), "recon differs from featjnd.quantize with the stored steps"
    assert _raw(dec.symbols) == _raw(q.symbols)
    assert enc.clamped == q.clamped
    # The fused encoder (the C ABI's too) sums the errors per chunk segment in f32, featjnd.quantize
    # per token: equal within f32 summation error (contract §4.3).
    assert enc.mse == pytest.approx(q.mse, rel=1e-6)


def test_layout_argument_and_files(rng, tmp_path):
    x = feature(rng, (2, 6, 8), np.float32)
    steps = _steps(rng, x, "ntc", 1)
    enc = featjnd.encode(x, steps, layout="ntc")
    path = tmp_path / "f.fjq"
    enc.to_file(path)
    assert path.read_bytes() == enc.bytes
    dec = featjnd.Decoded.from_file(path)
    assert dec.layout == "ntc" and _raw(dec.recon) == _raw(featjnd.decode(bytearray(enc.bytes)).recon)
    # A 4-D feature read as NTC is a shape error.
    with pytest.raises(featjnd.ShapeError):
        featjnd.encode(feature(rng, (1, 2, 3, 4), np.float32), steps, layout="ntc")


def test_bad_arguments_are_errors(rng):
    x = feature(rng, (1, 3, 4), np.float32)
    with pytest.raises(featjnd.ShapeError):
        featjnd.encode(x, np.ones(2, np.float32))
    with pytest.raises(featjnd.ArgError):
        featjnd.encode(x, np.array([1.0, 0.0, 1.0], np.float32))
    with pytest.raises(featjnd.ArgError, match="cannot be stored"):
        featjnd.encode(x, np.array([1.0, 1e-40, 1.0], np.float32))
    with pytest.raises(featjnd.ArgError):
        featjnd.encode(x, np.ones(3, np.float32), bits=12)
    with pytest.raises(featjnd.DtypeError):
        featjnd.encode(x.astype(np.float64), np.ones(3, np.float32))
    bad = x.copy()
    bad[0, 1, 2] = np.nan
    with pytest.raises(featjnd.NonFiniteError):
        featjnd.encode(bad, np.ones(3, np.float32))


def test_corrupted_files_raise_featjnd_error(rng):
    x = feature(rng, (2, 5, 6, 6), np.float16)
    enc = featjnd.encode(x, _steps(rng, x, "nchw", 2, 0.05), patch=2)
    b = enc.bytes
    for i in range(len(b)):
        c = bytearray(b)
        c[i] ^= 0x01
        with pytest.raises(featjnd.Error, match="fjq:"):
            featjnd.decode(bytes(c))
    for cut in (0, 3, 6, 40, len(b) // 2, len(b) - 1):
        with pytest.raises(featjnd.Error, match="fjq:"):
            featjnd.decode(b[:cut])
    with pytest.raises(featjnd.Error, match="after the last chunk"):
        featjnd.decode(b + b"\0")
    # A featjnd.Error is a ValueError.
    with pytest.raises(ValueError):
        featjnd.decode(b"NPY\0" + b[4:])


def test_torch_round_trip(rng, torch_or_skip):
    torch = torch_or_skip
    if torch is None:
        return
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.randn(2, 3, 4, 6, dtype=torch.float32).to(dt)
        steps = torch.full((12,), 0.05)  # 2 samples x (4/2) x (6/2) tokens
        enc = featjnd.encode(x, steps, patch=2)
        assert isinstance(enc.steps, torch.Tensor)
        dec = featjnd.decode(enc.bytes, like=x)
        assert isinstance(dec.recon, torch.Tensor) and dec.recon.dtype == dt and dec.recon.shape == x.shape
        q = featjnd.quantize(x, enc.steps, 8, 2)
        bits_dt = torch.int32 if dt == torch.float32 else torch.int16
        assert torch.equal(dec.recon.view(bits_dt), q.recon.view(bits_dt))
        assert torch.equal(dec.symbols, q.symbols)


def test_step_modes_of_the_extension(rng):
    """The extension's optional ``step_mode``/``grid`` keywords: every mode round-trips and
    reports its side information."""
    from featjnd import _featjnd

    x = feature(rng, (2, 6, 4, 4), np.float32)
    tokens = np.ascontiguousarray(_steps(rng, x, "nchw", 1), dtype=np.float32)
    cases = [
        ("auto", None, tokens),
        ("token", 4, tokens),
        ("token-f16", None, tokens),
        ("tensor", None, np.array([0.05], np.float32)),
        ("channel", None, np.linspace(0.02, 0.08, 6).astype(np.float32)),
        ("channel-f16", None, np.linspace(0.02, 0.08, 6).astype(np.float32)),
    ]
    for mode, grid, st in cases:
        r = _featjnd.encode(x, "nchw", 1, st, 8, step_mode=mode, grid=grid)
        d = _featjnd.decode(r["bytes"])
        assert d["version"] == 3
        assert d["step_mode"] == r["step_mode"] == ("token" if mode == "auto" else mode)
        assert len(d["recon"]) == x.size * 4
        assert d["steps"] == r["steps"] and d["channel_steps"] == r["channel_steps"]
        assert d["rate"] == r["rate"]
        if mode.startswith("channel"):
            assert len(r["steps"]) == 0 and len(r["channel_steps"]) == 6 * 4
        else:
            assert len(r["steps"]) == 32 * 4
    assert _featjnd.encode(x, "nchw", 1, np.array([0.05], np.float32), 8, step_mode="tensor")["rate"]["step_bytes"] == 4
    with pytest.raises(featjnd.ArgError):
        _featjnd.encode(x, "nchw", 1, tokens, 8, step_mode="bogus")
    with pytest.raises(featjnd.ArgError):
        _featjnd.encode(x, "nchw", 1, tokens, 8, step_mode="token", grid=3)
    with pytest.raises(featjnd.ShapeError):
        _featjnd.encode(x, "nchw", 1, tokens, 8, step_mode="channel")


def _channel_quantize(x, steps_c, layout, bits):
    """contract §4 with the channel's step in place of the token's (docs/fjq-format.md): float32 ops."""
    qmax = np.float32(127 if bits == 8 else 32767)
    xf = x.astype(np.float32)
    shape = [1] * xf.ndim
    shape[1 if layout == "nchw" else 2] = -1
    st = steps_c.astype(np.float32).reshape(shape)
    inv = (np.float32(1) / st).astype(np.float32)
    q = np.clip(np.rint((xf * inv).astype(np.float32)), -qmax, qmax)
    return (q.astype(np.float32) * st).astype(np.float32).astype(x.dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,layout,patch", [((2, 6, 4, 4), "nchw", 2), ((3, 5, 7), "ntc", 1)], ids=["nchw-p2", "ntc"])
def test_step_modes_through_the_package(rng, shape, layout, patch, dtype):
    """featjnd.encode passes ``step_mode``/``grid`` through; Encoded/Decoded carry the mode, the grid
    size, the per-channel steps and the file's version."""
    x = feature(rng, shape, dtype, scale=2.0)
    tokens = _steps(rng, x, layout, patch)
    c = shape[1] if layout == "nchw" else shape[2]
    chan = np.linspace(0.02, 0.08, c).astype(np.float32)
    cases = [
        (None, None, tokens, "token", 16),
        ("auto", 8, tokens, "token", 8),
        ("token", 4, tokens, "token", 4),
        ("token-f16", None, tokens, "token-f16", None),
        ("tensor", None, np.array([0.05], np.float32), "tensor", None),
        ("channel", None, chan, "channel", 16),
        ("channel-f16", None, chan, "channel-f16", None),
    ]
    for mode, grid, st, want_mode, want_grid in cases:
        enc = featjnd.encode(x, st, patch=patch, layout=layout, step_mode=mode, grid=grid)
        assert (enc.step_mode, enc.per_octave) == (want_mode, want_grid), mode
        dec = featjnd.decode(enc.bytes)
        assert dec.version == 3 and (dec.step_mode, dec.per_octave) == (want_mode, want_grid), mode
        assert _raw(dec.steps) == _raw(enc.steps) and _raw(dec.channel_steps) == _raw(enc.channel_steps)
        assert dec.recon.dtype == dtype and dec.recon.shape == shape
        if want_mode.startswith("channel"):
            assert enc.steps.shape == (0,) and enc.channel_steps.shape == (c,)
            assert enc.channel_steps.dtype == np.float32
            np.testing.assert_allclose(enc.channel_steps, chan, rtol=2.0 ** (1 / 32) - 1 + 1e-6 if want_grid else 2.0**-10)
            assert _raw(dec.recon) == _raw(_channel_quantize(x, enc.channel_steps, layout, 8)), mode
        else:
            t = tokens.shape[0]
            assert enc.steps.shape == (t,) and enc.channel_steps.shape == (0,)
            if want_mode == "tensor":
                assert np.all(enc.steps == np.float32(0.05)) and enc.rate["step_bytes"] == 4
            q = featjnd.quantize(x, enc.steps, 8, patch, layout=layout)
            assert _raw(dec.recon) == _raw(q.recon) and _raw(dec.symbols) == _raw(q.symbols), mode
    # All-equal steps and no mode: the tensor mode.
    enc = featjnd.encode(x, np.full(tokens.shape, 0.03, np.float32), patch=patch, layout=layout)
    assert enc.step_mode == "tensor" and featjnd.decode(enc.bytes).step_mode == "tensor"
    with pytest.raises(featjnd.ArgError):
        featjnd.encode(x, tokens, patch=patch, layout=layout, step_mode="bogus")
    with pytest.raises(featjnd.ArgError):
        featjnd.encode(x, tokens, patch=patch, layout=layout, step_mode="token-f16", grid=16)
    with pytest.raises(featjnd.ShapeError):
        featjnd.encode(x, tokens, patch=patch, layout=layout, step_mode="channel")


def test_step_modes_on_torch(rng, torch_or_skip):
    torch = torch_or_skip
    if torch is None:
        return
    x = torch.randn(2, 6, 4, 4)
    enc = featjnd.encode(x, torch.linspace(0.02, 0.08, 6), step_mode="channel")
    assert isinstance(enc.channel_steps, torch.Tensor) and enc.channel_steps.shape == (6,)
    dec = featjnd.decode(enc.bytes, like=x)
    assert isinstance(dec.channel_steps, torch.Tensor) and torch.equal(dec.channel_steps, enc.channel_steps)
    assert dec.steps.shape == (0,) and dec.step_mode == "channel" and dec.version == 3
