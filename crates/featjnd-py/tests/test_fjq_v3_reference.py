"""An independent decoder of ``.fjq`` version 3, written from ``docs/fjq-format.md`` alone in pure
Python and numpy (no featjnd code), run on files written by the Rust encoder: the reconstruction
must match featjnd.decode bit for bit, and featjnd.quantize with the stored steps.

It reads every version 3 field and checks every checksum; of the step modes it implements
``tensor``, ``token-f16``, ``channel`` (log grid, varints) and ``channel-f16``. (The ``token``
mode's grid indices are coded with constriction's ANS, version 2's coder, which is not rebuilt
here.)
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest

import featjnd
from conftest import BF16, feature


class Bad(Exception):
    pass


def _varint(b: bytes, pos: int):
    v, shift = 0, 0
    for _ in range(5):
        byte = b[pos]
        pos += 1
        v |= (byte & 0x7F) << shift
        if byte & 0x80 == 0:
            return v, pos
        shift += 7
    raise Bad("varint over 5 bytes")


def _unzigzag(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


def _table(b: bytes, entries: int):
    """(symbols ascending, frequencies) of the symbol table."""
    syms, freqs, pos = [], [], 0
    for i in range(entries):
        v, pos = _varint(b, pos)
        syms.append(_unzigzag(v) if i == 0 else syms[-1] + v + 1)
        f, pos = _varint(b, pos)
        freqs.append(f)
    if pos != len(b):
        raise Bad("table has trailing bytes")
    return syms, freqs


def _grid_mantissas(g_log2: int):
    """m[i] = f32(2^(i/G)): products of 2.0 square-rooted g - b times, over the set bits b of i."""
    out = []
    for i in range(1 << g_log2):
        v = 1.0
        for b in range(g_log2):
            if i >> b & 1:
                r = 2.0
                for _ in range(g_log2 - b):
                    r = math.sqrt(r)
                v *= r
        out.append(np.float32(v))
    return out


def _rans_chunk(chunk: bytes, n: int, lanes: int, precision: int, slot_sym, slot_freq, slot_bias):
    """n symbols of one chunk: N u32 states, then u16 words read in order by the lane that needs
    one (lane i mod N decodes symbol i)."""
    if len(chunk) < 4 * lanes or (len(chunk) - 4 * lanes) % 2:
        raise Bad("chunk size")
    x = list(struct.unpack_from(f"<{lanes}I", chunk, 0))
    words = struct.unpack_from(f"<{(len(chunk) - 4 * lanes) // 2}H", chunk, 4 * lanes)
    mask, p, out = (1 << precision) - 1, 0, []
    for i in range(n):
        j = i % lanes
        s = x[j] & mask
        v = slot_freq[s] * (x[j] >> precision) + slot_bias[s]
        if v < 1 << 16:
            v = (v << 16) | words[p]
            p += 1
        x[j] = v
        out.append(slot_sym[s])
    if p != len(words) or any(s != 1 << 16 for s in x):
        raise Bad("chunk does not end where it should")
    return out


def decode_v3(b: bytes):
    """Returns (dtype name, shape, layout, patch, bits, step mode, per-element steps, symbols, recon)."""
    if b[:4] != b"FJQ\0" or struct.unpack_from("<H", b, 4)[0] != 3:
        raise Bad("not a version 3 file")
    dtype, layout, bits, nd, scope, coding, g, reserved = b[6:14]
    (e, patch, alphabet, tokens, n, s_len, t_len) = struct.unpack_from("<hIIQQQI", b, 14)
    dims = struct.unpack_from(f"<{nd}Q", b, 52)
    o = 52 + 8 * nd
    precision, lanes, res3, chunk, count = struct.unpack_from("<BBHII", b, o)
    o += 12
    assert reserved == 0 and res3 == 0 and math.prod(dims) == n
    syms, freqs = _table(b[o : o + t_len], alphabet)
    assert sum(freqs) == 1 << precision
    o += t_len
    sec = b[o : o + s_len]
    o += s_len
    index = [struct.unpack_from("<II", b, o + 8 * c) for c in range(count)]
    o += 8 * count
    if zlib.crc32(b[:o]) != struct.unpack_from("<I", b, o)[0]:
        raise Bad("header checksum")
    o += 4

    # Steps: one value per scope unit.
    if scope == 0:
        mode = "tensor"
        units = [np.float32(struct.unpack("<f", sec)[0])]
    elif coding == 2:
        mode = "token-f16" if scope == 1 else "channel-f16"
        h = np.frombuffer(sec, "<u2").view(np.float16).astype(np.float32)
        units = [np.float32(math.ldexp(float(v), e)) for v in h]
    elif coding == 1 and scope == 2:
        mode = "channel"
        m = _grid_mantissas(int(math.log2(g)))
        units, pos, k = [], 0, 0
        while pos < len(sec):
            v, pos = _varint(sec, pos)
            k += _unzigzag(v)
            units.append(np.float32(math.ldexp(float(m[k % g]), e + k // g)))
    else:
        pytest.skip("the token log-grid mode needs version 2's ANS coder")

    # Symbols: chunk by chunk.
    if alphabet == 1:
        assert count == 0 and o == len(b)
        q = np.full(n, syms[0], np.int64)
    else:
        slot_sym, slot_freq, slot_bias = [], [], []
        for s, f in zip(syms, freqs):
            slot_sym += [s] * f
            slot_freq += [f] * f
            slot_bias += list(range(f))
        q = []
        for c, (length, crc) in enumerate(index):
            data = b[o : o + length]
            if len(data) != length or zlib.crc32(data) != crc:
                raise Bad(f"chunk {c} checksum")
            q += _rans_chunk(data, min(chunk, n - c * chunk), lanes, precision, slot_sym, slot_freq, slot_bias)
            o += length
        assert o == len(b)
        q = np.array(q, np.int64)

    # The step of every element.
    shape = tuple(int(d) for d in dims)
    units = np.array(units, np.float32)
    if mode == "tensor":
        per = np.full(shape, units[0], np.float32)
    elif scope == 2:
        view = [1] * nd
        view[1 if layout == 0 else 2] = -1
        per = np.broadcast_to(units.reshape(view), shape)
    elif layout == 0:
        nn, _, hh, ww = shape
        tok = units.reshape(nn, hh // patch, ww // patch)
        per = np.repeat(np.repeat(tok, patch, 1), patch, 2)[:, None, :, :]
        per = np.broadcast_to(per, shape)
    else:
        per = np.broadcast_to(units.reshape(shape[0], shape[1], 1), shape)
    recon = (q.reshape(shape).astype(np.float32) * per).astype(np.float32)
    name = ["float32", "float16", "bfloat16"][dtype]
    return name, shape, ["nchw", "ntc"][layout], patch, bits, mode, units, q.reshape(shape), recon


def _cast(recon32, name):
    if name == "float32":
        return recon32
    if name == "float16":
        return recon32.astype(np.float16)
    return recon32.astype(BF16)


def _raw(a) -> bytes:
    return np.ascontiguousarray(a).tobytes()


CASES = [
    # shape, layout, patch, dtype, bits, step_mode, steps
    ((1, 4, 200, 200), "nchw", 2, np.float32, 8, "token-f16", "token"),  # 160 000 symbols: 2 chunks
    ((2, 50, 30), "ntc", 1, np.float16, 16, "channel", "channel"),
    ((2, 6, 5, 5), "nchw", 1, np.float32, 8, "channel-f16", "channel"),
    ((1, 3, 9, 7), "nchw", 1, "bf16", 8, "tensor", "tensor"),
]


@pytest.mark.parametrize("shape,layout,patch,dtype,bits,mode,kind", CASES, ids=[c[5] + "-" + str(c[4]) for c in CASES])
def test_independent_decoder_matches(rng, shape, layout, patch, dtype, bits, mode, kind):
    if dtype == "bf16":
        if BF16 is None:
            pytest.skip("ml_dtypes is not installed")
        dtype = BF16
    x = feature(rng, shape, dtype, scale=2.0)
    if kind == "token":
        t = shape[0] * (shape[2] // patch) * (shape[3] // patch) if layout == "nchw" else shape[0] * shape[1]
        steps = rng.uniform(0.02, 0.2, t).astype(np.float32)
    elif kind == "channel":
        c = shape[1] if layout == "nchw" else shape[2]
        steps = np.linspace(0.01, 0.1, c).astype(np.float32)
    else:
        steps = np.array([0.07], np.float32)
    enc = featjnd.encode(x, steps, patch=patch, bits=bits, layout=layout, step_mode=mode)
    name, dshape, dlayout, dpatch, dbits, dmode, units, q, recon32 = decode_v3(enc.bytes)
    assert (dshape, dlayout, dpatch, dbits, dmode) == (shape, layout, patch, bits, mode)
    dec = featjnd.decode(enc.bytes)
    assert dec.version == 3
    assert _raw(q.astype(np.int8 if bits == 8 else np.int16)) == _raw(dec.symbols)
    assert _raw(_cast(recon32, name)) == _raw(dec.recon)
    stored = enc.channel_steps if kind == "channel" else enc.steps
    assert _raw(units if kind != "tensor" else np.full(stored.shape, units[0], np.float32)) == _raw(stored)
    if kind != "channel":
        ref = featjnd.quantize(x, enc.steps, bits, patch, layout=layout)
        assert _raw(_cast(recon32, name)) == _raw(ref.recon)


def test_one_symbol_file_and_damage(rng):
    x = np.zeros((1, 2, 4, 4), np.float32)
    enc = featjnd.encode(x, np.array([0.5], np.float32), step_mode="tensor")
    *_, q, recon = decode_v3(enc.bytes)
    assert not q.any() and not recon.any()
    y = feature(rng, (1, 4, 200, 200), np.float32)
    b = featjnd.encode(y, np.array([0.05], np.float32), step_mode="tensor").bytes
    # The last byte belongs to the second of two chunks: both decoders name the damage.
    c = bytearray(b)
    c[-1] ^= 0x10
    with pytest.raises(Bad, match="chunk 1 checksum"):
        decode_v3(bytes(c))
    with pytest.raises(featjnd.Error, match="chunk 1 of 2: checksum mismatch"):
        featjnd.decode(bytes(c))
