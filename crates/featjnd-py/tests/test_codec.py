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
    # The stored steps are the given ones at f16 precision (relative error <= 2^-11).
    assert enc.steps.dtype == np.float32 and enc.steps.shape == steps.shape
    np.testing.assert_allclose(enc.steps, steps, rtol=2.0**-11)
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
    assert enc.mse == pytest.approx(q.mse, rel=1e-12)


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
        featjnd.encode(x, np.array([1.0, 1e-20, 1.0], np.float32))
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
    with pytest.raises(featjnd.Error, match="checksum mismatch"):
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
