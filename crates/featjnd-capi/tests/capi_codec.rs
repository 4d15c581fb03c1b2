//! The codec's C entry points on a CPU context: round trips against `fj_quantize` and the Rust
//! codec, the size bound on hostile features, and every refusal: null pointers, bad options, a
//! too-small output buffer (`FJ_ERR_SPACE` with the size needed, nothing written), truncated and
//! damaged files (`FJ_ERR_FORMAT` naming the chunk or the header), outputs that do not match the
//! file (`FJ_ERR_DTYPE`, `FJ_ERR_SHAPE`, `FJ_ERR_ALIGN`, `FJ_ERR_ARG` for an overlap).
//! Deterministic: Philox data, no shared generator.
//!
//! Every `unsafe` block calls the C entry points with pointers to live Rust buffers of the sizes
//! the call documents (or deliberately null/misaligned/overlapping ones, which the entry points
//! must refuse before touching memory).
mod common;

use common::{ctx, data, err, numel, CASES};
use featjnd::*;
use std::mem::size_of;
use std::ptr::{null, null_mut};

fn opts(bits: u32, patch: u32, step_mode: u32, step_coding: u32) -> FjEncodeOptions {
    FjEncodeOptions {
        size: size_of::<FjEncodeOptions>() as u32,
        bits,
        patch,
        step_mode,
        step_coding,
        per_octave: 0,
        chunk_symbols: 0,
        pad0: 0,
        steps_out: null_mut(),
    }
}

fn feat(layout: u32, dims: [u64; 4], x: &[f32]) -> FjFeature {
    FjFeature { dtype: FJ_F32, layout, dims, data: x.as_ptr() as *const _ }
}

/// An output feature: its pointer comes from a mutable borrow (the call writes it).
fn feat_mut(layout: u32, dims: [u64; 4], x: &mut [f32]) -> FjFeature {
    FjFeature { dtype: FJ_F32, layout, dims, data: x.as_mut_ptr() as *const _ }
}

fn tokens(f: &FjFeature, patch: u32) -> usize {
    let mut t = 0u64;
    // SAFETY: a readable feature and a writable out-pointer.
    assert_eq!(unsafe { fj_token_count(f, patch, &mut t) }, FJ_OK, "{}", err());
    t as usize
}

/// Steps in about [0.02, 0.3], one per token.
fn steps_for(t: usize, seed: u64) -> Vec<f32> {
    data(t, seed).iter().map(|v| 0.02 + 0.1 * v.abs()).collect()
}

/// Encodes with a buffer of the bound's size; returns the file.
fn encode(c: *const FjContext, f: &FjFeature, steps: &[f32], o: &FjEncodeOptions) -> Vec<u8> {
    let (mut bound, mut len) = (0u64, 0u64);
    // SAFETY: live buffers of the documented sizes.
    unsafe {
        assert_eq!(fj_encode_bound(f, o, &mut bound), FJ_OK, "{}", err());
        let mut out = vec![0u8; bound as usize];
        let st = fj_encode(c, f, steps.as_ptr(), steps.len() as u64, o, out.as_mut_ptr(), bound, &mut len, null_mut());
        assert_eq!(st, FJ_OK, "{}", err());
        assert!(len <= bound && len > 0);
        out.truncate(len as usize);
        out
    }
}

fn decode_status(c: *const FjContext, file: &[u8], out: &FjFeature) -> i32 {
    // SAFETY: `file` is live for its length; `out` describes a live buffer of its dims (or a
    // deliberately wrong one the call must refuse before writing).
    unsafe { fj_decode(c, file.as_ptr(), file.len() as u64, out, null_mut()) }
}

#[test]
fn round_trips_equal_fj_quantize_and_the_rust_codec() {
    let c = ctx();
    for (k, &(layout, dims, patch)) in CASES.iter().enumerate() {
        let x = data(numel(layout, dims), 10 + k as u64);
        let f = feat(layout, dims, &x);
        let t = tokens(&f, patch);
        let steps = steps_for(t, 20 + k as u64);
        for bits in [8, 16] {
            let mut o = opts(bits, patch, FJ_STEPS_TOKEN, FJ_CODING_GRID);
            let mut stored = vec![0f32; t];
            o.steps_out = stored.as_mut_ptr();
            let file = encode(c, &f, &steps, &o);
            // fj_round_steps gives the stored steps; fj_quantize with them the decoded recon.
            let mut rounded = vec![0f32; t];
            // SAFETY: `t` floats each.
            assert_eq!(unsafe { fj_round_steps(steps.as_ptr(), t as u64, &o, rounded.as_mut_ptr()) }, FJ_OK, "{}", err());
            assert_eq!(rounded, stored);
            let mut recon = vec![0f32; x.len()];
            let qo = FjQuantizeOptions {
                size: size_of::<FjQuantizeOptions>() as u32,
                bits,
                patch,
                pad0: 0,
                symbols: null_mut(),
                recon: recon.as_mut_ptr() as *mut _,
                token_sse: null_mut(),
                histogram: null_mut(),
            };
            // SAFETY: live buffers of the documented sizes.
            assert_eq!(unsafe { fj_quantize(c, &f, rounded.as_ptr(), &qo, null_mut(), null_mut()) }, FJ_OK, "{}", err());
            let mut dec = vec![f32::NAN; x.len()];
            assert_eq!(decode_status(c, &file, &feat_mut(layout, dims, &mut dec)), FJ_OK, "{}", err());
            assert_eq!(dec.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), recon.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            // The Rust codec decodes the same file to the same values.
            let r = featjnd_kernels::codec::decode_recon(&file).unwrap();
            assert_eq!(r.recon, featjnd_kernels::codec::ElemVec::F32(recon));
        }
    }
    // SAFETY: a live context, not used after.
    unsafe { fj_context_destroy(c) };
}

#[test]
fn the_bound_holds_for_hostile_features() {
    let c = ctx();
    // Wide alphabets (16 bits, tiny steps), jumpy per-token steps, one-symbol chunks, f16 steps.
    let x: Vec<f32> = data(4099, 3).iter().map(|v| v * 1e4).collect();
    let f = feat(FJ_NTC, [1, 4099, 1, 0], &x);
    let jumpy: Vec<f32> = data(4099, 4).iter().map(|v| 2f32.powf(8.0 * v)).collect();
    for (bits, mode, coding, chunk) in [
        (16, FJ_STEPS_TENSOR, FJ_CODING_F32, 0),
        (16, FJ_STEPS_TOKEN, FJ_CODING_GRID, 1),
        (8, FJ_STEPS_TOKEN, FJ_CODING_GRID, 7),
        (16, FJ_STEPS_TOKEN, FJ_CODING_F16, 0),
        (16, FJ_STEPS_CHANNEL, FJ_CODING_GRID, 3),
    ] {
        let mut o = opts(bits, 1, mode, coding);
        o.chunk_symbols = chunk;
        o.per_octave = if coding == FJ_CODING_GRID { 64 } else { 0 };
        let steps: Vec<f32> = match (mode, coding) {
            (FJ_STEPS_TENSOR, _) => vec![0.5],
            (FJ_STEPS_CHANNEL, _) => vec![0.3],
            // f16 steps share one exponent: their ratios stay below 2^38.
            (_, FJ_CODING_F16) => jumpy.iter().map(|s| s.powf(0.25) * 0.05).collect(),
            _ => jumpy.iter().map(|s| s * 0.05).collect(),
        };
        encode(c, &f, &steps, &o); // asserts len <= bound
    }
    // SAFETY: a live context, not used after.
    unsafe { fj_context_destroy(c) };
}

#[test]
fn null_pointers_and_bad_options_are_refused() {
    let c = ctx();
    let x = data(3 * 17, 1);
    let f = feat(FJ_NTC, [1, 17, 3, 0], &x);
    let steps = steps_for(17, 2);
    let mut out = vec![0u8; 4096];
    let mut len = 7u64;
    let o = opts(8, 1, FJ_STEPS_TOKEN, FJ_CODING_GRID);
    let enc = |cx: *const FjContext,
               fx: *const FjFeature,
               s: *const f32,
               n: u64,
               oo: *const FjEncodeOptions,
               ob: *mut u8,
               cap: u64,
               l: *mut u64| {
        // SAFETY: live buffers of the documented sizes, or null pointers the call must refuse.
        unsafe { fj_encode(cx, fx, s, n, oo, ob, cap, l, null_mut()) }
    };
    let op = out.as_mut_ptr();
    assert_eq!(enc(null(), &f, steps.as_ptr(), 17, &o, op, 4096, &mut len), FJ_ERR_NULL);
    assert_eq!(enc(c, null(), steps.as_ptr(), 17, &o, op, 4096, &mut len), FJ_ERR_NULL);
    assert!(err().contains("x is null"), "{}", err());
    assert_eq!(enc(c, &f, null(), 17, &o, op, 4096, &mut len), FJ_ERR_NULL);
    assert!(err().contains("steps is null"), "{}", err());
    assert_eq!(enc(c, &f, steps.as_ptr(), 17, &o, op, 4096, null_mut()), FJ_ERR_NULL);
    assert_eq!(enc(c, &f, steps.as_ptr(), 17, &o, null_mut(), 4096, &mut len), FJ_ERR_NULL);
    assert_eq!(len, 7, "an error wrote out_len");
    // Bad codes and counts.
    let bad = |edit: fn(&mut FjEncodeOptions)| {
        let mut b = o;
        edit(&mut b);
        b
    };
    for (b, want, what) in [
        (bad(|b| b.step_mode = 9), FJ_ERR_ARG, "step_mode"),
        (bad(|b| b.step_coding = 7), FJ_ERR_ARG, "step_coding"),
        (bad(|b| b.step_coding = FJ_CODING_F32), FJ_ERR_ARG, "step_coding"),
        (bad(|b| b.per_octave = 3), FJ_ERR_ARG, "log grid of 3"),
        (bad(|b| b.chunk_symbols = (1 << 24) + 1), FJ_ERR_ARG, "chunk"),
        (bad(|b| b.bits = 3), FJ_ERR_ARG, "bits"),
        (bad(|b| b.size = 2), FJ_ERR_ARG, "size"),
        (bad(|b| b.patch = 2), FJ_ERR_ARG, "patch"),
    ] {
        assert_eq!(enc(c, &f, steps.as_ptr(), 17, &b, op, 4096, &mut len), want, "{what}: {}", err());
        assert!(err().contains(what), "{what}: {}", err());
    }
    // Wrong step counts for each mode.
    assert_eq!(enc(c, &f, steps.as_ptr(), 16, &o, op, 4096, &mut len), FJ_ERR_SHAPE, "{}", err());
    assert!(err().contains("steps must be 17 values"), "{}", err());
    assert_eq!(enc(c, &f, steps.as_ptr(), 2, &opts(8, 1, FJ_STEPS_TENSOR, 0), op, 4096, &mut len), FJ_ERR_SHAPE);
    assert_eq!(enc(c, &f, steps.as_ptr(), 17, &opts(8, 1, FJ_STEPS_CHANNEL, 0), op, 4096, &mut len), FJ_ERR_SHAPE);
    assert!(err().contains("steps must be 3 values"), "{}", err());
    // Values: a bad step, a NaN in x (named by index).
    let mut zero = steps.clone();
    zero[5] = 0.0;
    assert_eq!(enc(c, &f, zero.as_ptr(), 17, &o, op, 4096, &mut len), FJ_ERR_ARG);
    assert!(err().contains("Δ[5]"), "{}", err());
    let mut xn = x.clone();
    xn[40] = f32::NAN;
    assert_eq!(enc(c, &feat(FJ_NTC, [1, 17, 3, 0], &xn), steps.as_ptr(), 17, &o, op, 4096, &mut len), FJ_ERR_NONFINITE);
    assert!(err().contains("40"), "{}", err());
    // Overlaps: the file over x; steps_out over x (steps_out may be steps itself).
    let mut xs = x.clone();
    let xp = xs.as_mut_ptr();
    assert_eq!(enc(c, &feat(FJ_NTC, [1, 17, 3, 0], &xs), steps.as_ptr(), 17, &o, xp as *mut u8, 200, &mut len), FJ_ERR_ARG);
    assert!(err().contains("out overlaps x->data"), "{}", err());
    let mut so = o;
    so.steps_out = xp;
    assert_eq!(enc(c, &feat(FJ_NTC, [1, 17, 3, 0], &xs), steps.as_ptr(), 17, &so, op, 4096, &mut len), FJ_ERR_ARG);
    assert!(err().contains("opts->steps_out overlaps x->data"), "{}", err());
    let mut st2 = steps.clone();
    let p2 = st2.as_mut_ptr();
    so.steps_out = p2;
    assert_eq!(enc(c, &f, p2, 17, &so, op, 4096, &mut len), FJ_OK, "{}", err());
    assert_ne!(st2, steps, "steps_out == steps rounds in place");
    // A stream on a CPU context; a misaligned feature.
    // SAFETY: as above; the stream is refused before anything is read.
    let st = unsafe { fj_encode(c, &f, steps.as_ptr(), 17, &o, op, 4096, &mut len, 8 as *mut _) };
    assert_eq!(st, FJ_ERR_ARG);
    let raw = [0u8; 4 * 52];
    // Address arithmetic only: one byte into a live buffer (misaligned on purpose).
    let mis = FjFeature { dtype: FJ_F32, layout: FJ_NTC, dims: [1, 17, 3, 0], data: raw.as_ptr().wrapping_add(1) as *const _ };
    assert_eq!(enc(c, &mis, steps.as_ptr(), 17, &o, op, 4096, &mut len), FJ_ERR_ALIGN);
    // The bound, the header and rounding refuse nulls too.
    let mut b = 0u64;
    let mut info = FjFileInfo { size: size_of::<FjFileInfo>() as u32, ..Default::default() };
    // SAFETY: null pointers the calls must refuse, or live buffers.
    unsafe {
        assert_eq!(fj_encode_bound(null(), &o, &mut b), FJ_ERR_NULL);
        assert_eq!(fj_encode_bound(&f, &o, null_mut()), FJ_ERR_NULL);
        assert_eq!(fj_decode_info(null(), 10, &mut info), FJ_ERR_NULL);
        assert_eq!(fj_decode_info(out.as_ptr(), 10, null_mut()), FJ_ERR_NULL);
        let mut r = [0f32; 3];
        assert_eq!(fj_round_steps(null(), 3, &o, r.as_mut_ptr()), FJ_ERR_NULL);
        assert_eq!(fj_round_steps(steps.as_ptr(), 3, &o, null_mut()), FJ_ERR_NULL);
        assert_eq!(fj_round_steps(steps.as_ptr(), 0, &o, r.as_mut_ptr()), FJ_ERR_SHAPE);
        assert_eq!(fj_round_steps(zero.as_ptr(), 17, &o, st2.as_mut_ptr()), FJ_ERR_ARG);
        assert!(err().contains("Δ[5]"), "{}", err());
    }
    let file = encode(c, &f, &steps, &o);
    let mut dec = vec![0f32; x.len()];
    let fo = feat_mut(FJ_NTC, [1, 17, 3, 0], &mut dec);
    // SAFETY: null pointers the call must refuse, or live buffers.
    unsafe {
        assert_eq!(fj_decode(null(), file.as_ptr(), file.len() as u64, &fo, null_mut()), FJ_ERR_NULL);
        assert_eq!(fj_decode(c, null(), file.len() as u64, &fo, null_mut()), FJ_ERR_NULL);
        assert_eq!(fj_decode(c, file.as_ptr(), file.len() as u64, null(), null_mut()), FJ_ERR_NULL);
        let nodata = FjFeature { data: null(), ..fo };
        assert_eq!(fj_decode(c, file.as_ptr(), file.len() as u64, &nodata, null_mut()), FJ_ERR_NULL);
    }
    assert_eq!(decode_status(c, &file, &fo), FJ_OK, "{}", err());
    // SAFETY: a live context, not used after.
    unsafe { fj_context_destroy(c) };
}

#[test]
fn a_short_buffer_reports_the_size_and_writes_nothing() {
    let c = ctx();
    let x = data(2 * 7 * 5 * 3, 5);
    let f = feat(FJ_NCHW, [2, 7, 5, 3], &x);
    let steps = steps_for(30, 6);
    let o = opts(8, 1, FJ_STEPS_AUTO, FJ_CODING_GRID);
    let mut need = 0u64;
    // SAFETY: a null buffer of capacity 0 asks for the size; the rest are live buffers.
    unsafe {
        assert_eq!(fj_encode(c, &f, steps.as_ptr(), 30, &o, null_mut(), 0, &mut need, null_mut()), FJ_ERR_SPACE);
        assert!(err().contains(&format!("takes {need} bytes")), "{}", err());
        let mut out = vec![0x5au8; need as usize + 8];
        let mut len = 0u64;
        assert_eq!(fj_encode(c, &f, steps.as_ptr(), 30, &o, out.as_mut_ptr(), need - 1, &mut len, null_mut()), FJ_ERR_SPACE);
        assert_eq!(len, need);
        assert!(out.iter().all(|&b| b == 0x5a), "a short buffer was written");
        assert_eq!(fj_encode(c, &f, steps.as_ptr(), 30, &o, out.as_mut_ptr(), need, &mut len, null_mut()), FJ_OK, "{}", err());
        assert_eq!(len, need);
        assert_eq!(out[need as usize..], [0x5a; 8], "written past the file");
        let file = encode(c, &f, &steps, &o);
        assert_eq!(&out[..need as usize], &file[..], "the file does not depend on the buffer");
        // The async form on a CPU context is the same call.
        let mut again = vec![0u8; need as usize];
        assert_eq!(fj_encode_async(c, &f, steps.as_ptr(), 30, &o, again.as_mut_ptr(), need, &mut len, null_mut()), FJ_OK);
        assert_eq!(again, file);
    }
    // SAFETY: a live context, not used after.
    unsafe { fj_context_destroy(c) };
}

#[test]
fn damaged_files_name_the_chunk_or_the_header() {
    let c = ctx();
    let x = data(3 * 1025, 8);
    let f = feat(FJ_NTC, [1, 1025, 3, 0], &x);
    let steps = steps_for(1025, 9);
    let mut o = opts(8, 1, FJ_STEPS_TOKEN, FJ_CODING_GRID);
    o.chunk_symbols = 192; // 17 chunks
    let file = encode(c, &f, &steps, &o);
    let mut info = FjFileInfo { size: size_of::<FjFileInfo>() as u32, ..Default::default() };
    // SAFETY: live buffers of the documented sizes.
    assert_eq!(unsafe { fj_decode_info(file.as_ptr(), file.len() as u64, &mut info) }, FJ_OK, "{}", err());
    assert_eq!((info.version, info.dtype, info.layout, info.dims, info.elements), (3, FJ_F32, FJ_NTC, [1, 1025, 3, 0], 3075));
    assert_eq!((info.step_mode, info.step_coding, info.per_octave, info.tokens), (FJ_STEPS_TOKEN, FJ_CODING_GRID, 16, 1025));
    let mut dec = vec![0f32; 3075];
    let fo = feat_mut(FJ_NTC, [1, 1025, 3, 0], &mut dec);
    // Where the chunks are: the header says how long the index is; walk it.
    let h = featjnd_kernels::codec::decode(&file).unwrap().sections;
    let index = h.header + h.table + h.steps;
    let m = 17usize;
    let mut off = index + 8 * m + 4;
    for k in 0..m {
        let len = u32::from_le_bytes(file[index + 8 * k..index + 8 * k + 4].try_into().unwrap()) as usize;
        let mut bad = file.clone();
        bad[off + len / 2] ^= 0x04;
        assert_eq!(decode_status(c, &bad, &fo), FJ_ERR_FORMAT);
        assert!(err().starts_with(&format!("fjq: chunk {k} of {m}: checksum mismatch")), "chunk {k}: {}", err());
        off += len;
    }
    // A flipped byte in the header or the index, truncations of every kind.
    for at in [4usize, 9, 20, 60, index + 3] {
        let mut bad = file.clone();
        bad[at] ^= 0x01;
        assert_eq!(decode_status(c, &bad, &fo), FJ_ERR_FORMAT, "byte {at}");
        assert!(err().starts_with("fjq:"), "{}", err());
        // SAFETY: live buffers.
        assert_eq!(unsafe { fj_decode_info(bad.as_ptr(), bad.len() as u64, &mut info) }, FJ_ERR_FORMAT, "byte {at}");
    }
    for cut in [0usize, 3, 5, 40, index, index + 8 * m + 4, file.len() - 1] {
        assert_eq!(decode_status(c, &file[..cut], &fo), FJ_ERR_FORMAT, "cut at {cut}");
        assert!(err().starts_with("fjq:"), "cut at {cut}: {}", err());
    }
    assert!(err().contains("truncated"), "{}", err());
    // Outputs that do not fit the file: nothing is written.
    let mut other = vec![7.0f32; 3075];
    let wrong = [
        (FjFeature { dtype: FJ_F16, ..feat_mut(FJ_NTC, [1, 1025, 3, 0], &mut other) }, FJ_ERR_DTYPE),
        (feat_mut(FJ_NTC, [1, 3, 1025, 0], &mut other), FJ_ERR_SHAPE),
        (feat_mut(FJ_NCHW, [1, 1025, 3, 1], &mut other), FJ_ERR_SHAPE),
        (feat_mut(FJ_NTC, [1, 1024, 3, 0], &mut other), FJ_ERR_SHAPE),
        (FjFeature { dtype: 9, ..feat_mut(FJ_NTC, [1, 1025, 3, 0], &mut other) }, FJ_ERR_DTYPE),
        // Misaligned (two bytes in).
        (
            FjFeature {
                data: (other.as_mut_ptr() as *const u8).wrapping_add(2) as *const _,
                ..feat_mut(FJ_NTC, [1, 1025, 2, 0], &mut other)
            },
            FJ_ERR_ALIGN,
        ),
    ];
    for (w, want) in wrong {
        assert_eq!(decode_status(c, &file, &w), want, "{}", err());
    }
    assert!(other.iter().all(|&e| e == 7.0), "an error wrote the output");
    // An output over the file's own bytes (an f32 buffer that holds the file first).
    let mut both = vec![0f32; 3075 + file.len() / 4 + 1];
    let bp = both.as_mut_ptr() as *mut u8;
    // SAFETY: `both` has room for the file's bytes (4 per f32); the two do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(file.as_ptr(), bp, file.len()) };
    let over = FjFeature { dtype: FJ_F32, layout: FJ_NTC, dims: [1, 1025, 3, 0], data: bp as *const _ };
    // SAFETY: the output overlaps the file on purpose: the call must refuse it before writing.
    let st = unsafe { fj_decode(c, bp, file.len() as u64, &over, null_mut()) };
    assert_eq!(st, FJ_ERR_ARG, "{}", err());
    assert!(err().contains("overlaps"), "{}", err());
    // A shorter (older) info struct gets only its fields.
    let mut short = [0xffu8; 16];
    short[..4].copy_from_slice(&16u32.to_le_bytes());
    // SAFETY: `short` is writable for the 16 bytes its size declares.
    assert_eq!(unsafe { fj_decode_info(file.as_ptr(), file.len() as u64, short.as_mut_ptr() as *mut FjFileInfo) }, FJ_OK);
    assert_eq!(u32::from_le_bytes(short[4..8].try_into().unwrap()), 3, "version");
    assert_eq!(u32::from_le_bytes(short[12..16].try_into().unwrap()), FJ_NTC, "layout");
    // SAFETY: a live context, not used after.
    unsafe { fj_context_destroy(c) };
}

#[test]
fn version_2_files_and_f16_features_decode_too() {
    use featjnd_kernels::codec::{encode_with_format, Format, StepCoding, StepSpec};
    use featjnd_kernels::{Bits, FeatureShape, TokenGrid};
    let c = ctx();
    let g = TokenGrid::new(FeatureShape::nchw(2, 3, 4, 5), 1).unwrap();
    let x: Vec<half::f16> = data(120, 11).iter().map(|&v| half::f16::from_f32(v)).collect();
    let steps = steps_for(40, 12);
    for format in [Format::v2(), Format::default()] {
        let e = encode_with_format(&x, &g, StepSpec::Token(&steps), Bits::B8, StepCoding::F16, &format).unwrap();
        let mut info = FjFileInfo { size: size_of::<FjFileInfo>() as u32, ..Default::default() };
        // SAFETY: live buffers.
        assert_eq!(unsafe { fj_decode_info(e.bytes.as_ptr(), e.bytes.len() as u64, &mut info) }, FJ_OK, "{}", err());
        assert_eq!((info.version, info.dtype, info.dims, info.step_coding), (format.version as u32, FJ_F16, [2, 3, 4, 5], FJ_CODING_F16));
        let mut out = vec![half::f16::ZERO; 120];
        let fo = FjFeature { dtype: FJ_F16, layout: FJ_NCHW, dims: [2, 3, 4, 5], data: out.as_mut_ptr() as *const _ };
        assert_eq!(decode_status(c, &e.bytes, &fo), FJ_OK, "{}", err());
        assert_eq!(out, e.recon);
    }
    // SAFETY: a live context, not used after.
    unsafe { fj_context_destroy(c) };
}
