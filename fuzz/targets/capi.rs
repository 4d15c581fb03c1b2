//! The C entry points on a CPU context with descriptors, options and data decoded from the input:
//! any dtype/layout/enum code, dims up to 5, option struct sizes, null and misaligned pointers,
//! NaN/Inf/denormal data. Invariants: a known status and never FJ_ERR_PANIC; an argument error
//! leaves the output untouched. The codec: the feature is encoded with options from the input
//! (the file never longer than `fj_encode_bound`), then the file is damaged from the input (bits
//! flipped, then, for version 3, its header checksum and sometimes every chunk's CRC recomputed so
//! the header fields, the index and the rANS chunks see hostile values; or cut short) and given to
//! `fj_decode_info` and `fj_decode`.
//!
//! Shared by the libFuzzer target (`fuzz/fuzz_targets/capi.rs`) and the stable harness of the
//! test command (docs/fuzzing.md).
use featjnd::*;
use std::ptr::{null, null_mut};

#[path = "v3_checksums.rs"]
mod v3_checksums;

/// Elements in every buffer: more than any descriptor below can address (5^4 = 625).
const CAP: usize = 640;
const STATUSES: [i32; 13] = [
    FJ_OK,
    FJ_ERR_NULL,
    FJ_ERR_ARG,
    FJ_ERR_SHAPE,
    FJ_ERR_DTYPE,
    FJ_ERR_ALIGN,
    FJ_ERR_NONFINITE,
    FJ_ERR_JND,
    FJ_ERR_BUDGET,
    FJ_ERR_UNREACHABLE,
    FJ_ERR_DEVICE,
    FJ_ERR_FORMAT,
    FJ_ERR_SPACE,
];

/// CRC-32 (IEEE, reflected), bit by bit: what the format's checksums are.
fn crc32(b: &[u8]) -> u32 {
    let mut c = !0u32;
    for &v in b {
        c ^= v as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
        }
    }
    !c
}

struct Bytes<'a>(&'a [u8]);
impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        b
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |a, _| a << 8 | self.u8() as u64)
    }
}

fn ok(st: i32) {
    if !STATUSES.contains(&st) {
        // SAFETY: fj_last_error returns this thread's NUL-terminated message, valid until the next call.
        let msg = unsafe { std::ffi::CStr::from_ptr(fj_last_error()) }.to_string_lossy();
        panic!("status {st}: {msg}");
    }
}

/// One input (the fuzz target's body; also run by the stable harness).
pub fn run(data: &[u8]) {
    let mut b = Bytes(data);
    let dtype = (b.u8() % 4) as u32;
    let layout = (b.u8() % 3) as u32;
    let dims = [0; 4].map(|_| (b.u8() % 6) as u64);
    let ptr_kind = b.u8() % 4;
    let patch = (b.u8() % 4) as u32;
    let reduce = (b.u8() % 4) as u32;
    let bits = [0u32, 8, 16, 3][(b.u8() % 4) as usize];
    let size = [0u32, 2, 4, 12, 48, 4096][(b.u8() % 6) as usize];
    let strategy = (b.u8() % 4) as u32;
    let budget = [-1.0, 0.0, 1e-6, 1e-3, 0.5, 1e30, f64::NAN, f64::INFINITY][(b.u8() % 8) as usize];
    let nrmse = [-0.5, 0.0, 0.3, 1e10, f64::NAN][(b.u8() % 5) as usize];
    let noise = (b.u8() % 3) as u32;
    let with_j = b.u8() % 2 == 1;
    let in_place = b.u8() % 2 == 1;
    let seed = b.u64();
    // The rest is raw data for x (and J, shifted): any bit pattern, NaN and Inf included.
    let mut raw = vec![0u8; 4 * CAP + 4];
    for (i, v) in b.0.iter().enumerate().take(raw.len()) {
        raw[i] = *v;
    }
    let mut x: Vec<u32> = raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let j: Vec<u32> = x.iter().map(|v| v.rotate_left(7) & 0x7f7f_ffff).collect(); // mostly positive, finite
    let mut recon = x.clone();
    let base = x.as_mut_ptr() as *const u8;
    let xp = match ptr_kind {
        0 | 3 => base as *const _,
        1 => null(),
        // SAFETY: one byte into `x`'s buffer (misaligned on purpose), still inside it.
        _ => (unsafe { base.add(1) }) as *const _,
    };
    let f = FjFeature { dtype, layout, dims, data: xp };
    let jf = FjFeature { dtype, layout, dims, data: j.as_ptr() as *const _ };
    let mut c = null_mut();
    // SAFETY: every pointer is null, misaligned on purpose, or a live buffer of `CAP` elements
    // (more than any descriptor here can address); the entry points must refuse the bad ones.
    unsafe {
        assert_eq!(fj_context_create(null(), &mut c), FJ_OK);
        let mut t = 0u64;
        let st = fj_token_count(&f, patch, &mut t);
        ok(st);
        let len = if st == FJ_OK { t } else { 3 };
        let mut out = vec![-7.0f32; CAP];
        let st = fj_token_tolerance(c, &jf, patch, reduce, out.as_mut_ptr(), len, null_mut());
        ok(st);
        if st != FJ_OK {
            assert!(out.iter().all(|&v| v == -7.0), "an error wrote to the output");
        }
        let jt: Vec<f32> = if st == FJ_OK { out[..len as usize].to_vec() } else { vec![1.0; CAP] };
        let mut steps = vec![-7.0f32; CAP];
        let st = fj_allocate_steps(c, jt.as_ptr(), (jt.len() as u64).min(len), budget, strategy, seed, steps.as_mut_ptr());
        ok(st);
        if st != FJ_OK {
            assert!(steps.iter().all(|&v| v == -7.0), "an error wrote the steps");
            steps.fill(0.25);
        }
        let mut sym = vec![0x55u8; 2 * CAP];
        let mut sse = vec![0f32; CAP];
        let mut hist = vec![0u64; 512];
        let q = FjQuantizeOptions {
            size,
            bits,
            patch,
            pad0: 0,
            symbols: sym.as_mut_ptr() as *mut _,
            recon: if in_place && ptr_kind == 0 { xp as *mut _ } else { recon.as_mut_ptr() as *mut _ },
            token_sse: sse.as_mut_ptr(),
            histogram: hist.as_mut_ptr(),
        };
        let mut r = FjQuantizeResult::default();
        ok(fj_quantize(c, &f, steps.as_ptr(), &q, &mut r, null_mut()));
        let mut scales = vec![0f32; 8];
        let po = FjPerturbOptions { size, noise, seed, subsequence: (seed >> 32) as u32, pad0: 0, scales: scales.as_mut_ptr() };
        let mut pout = vec![0u32; CAP];
        let outp = if in_place && ptr_kind == 0 { xp as *mut _ } else { pout.as_mut_ptr() as *mut _ };
        ok(fj_perturb(c, &f, if with_j { &jf } else { null() }, nrmse, &po, outp, null_mut()));
        // The codec on a feature made valid from the same bytes (the descriptor checks are the
        // calls' above), so that most inputs reach the coder and the decoder.
        let fv = FjFeature { dtype: dtype % 3, layout: layout % 2, dims: dims.map(|d| d.max(1)), data: base as *const _ };
        let cpatch = if seed >> 61 == 0 { patch } else { 1 };
        // One input in sixteen: a small feature's encode and decode cost about a millisecond
        // (model tables), the other calls microseconds.
        if seed % 16 == 3 {
            codec(c, &fv, &steps, seed, size, bits, cpatch, &mut recon);
        }
        fj_context_destroy(c);
    }
}

/// The codec's part of one input: encode `f` (the bound holds), damage the file, decode it. `c` is
/// a live context; `f` describes a live buffer of `CAP` elements (any bits); `steps` and `out` hold
/// `CAP` values.
#[allow(clippy::too_many_arguments)]
fn codec(c: *const FjContext, f: &FjFeature, steps: &[f32], seed: u64, size: u32, bits: u32, patch: u32, out: &mut [u32]) {
    let mut tokens = 3u64;
    // SAFETY: a readable descriptor (its data is not read) and a writable counter.
    unsafe { fj_token_count(f, patch, &mut tokens) };
    // Independent choices from the one seed (SplitMix64 of seed and choice: a seed of zeros, which
    // mutated inputs often hold, still varies them).
    let pick = |k: u32, n: u64| {
        let mut z = seed ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n) as usize
    };
    // Mostly valid options (so that most inputs reach the coder), some bad codes.
    let step_mode =
        [FJ_STEPS_AUTO, FJ_STEPS_TOKEN, FJ_STEPS_TENSOR, FJ_STEPS_CHANNEL, FJ_STEPS_AUTO, FJ_STEPS_TOKEN, FJ_STEPS_TOKEN, 7][pick(3, 8)];
    let step_coding = match step_mode {
        FJ_STEPS_TENSOR => [FJ_CODING_F32, FJ_CODING_GRID][pick(7, 2)],
        _ => [FJ_CODING_GRID, FJ_CODING_GRID, FJ_CODING_GRID, FJ_CODING_F16, FJ_CODING_F16, FJ_CODING_GRID, FJ_CODING_F16, 5][pick(7, 8)],
    };
    let per_octave = match step_coding {
        FJ_CODING_GRID => [0u32, 0, 1, 16, 64, 2, 4, 3][pick(11, 8)],
        _ => [0u32, 0, 0, 0, 0, 0, 0, 16][pick(11, 8)],
    };
    let mut stored = vec![-7.0f32; CAP];
    let o = FjEncodeOptions {
        // The run's option size and width a quarter of the time (some invalid), else valid ones.
        size: if size == 48 || pick(61, 4) != 0 { std::mem::size_of::<FjEncodeOptions>() as u32 } else { size },
        // 16 bits one time in eight: its 65535-bin histogram and model tables cost ~2 ms a call.
        bits: if pick(67, 4) != 0 { [8, 8, 8, 8, 8, 8, 8, 16][pick(71, 8)] } else { bits },
        patch,
        step_mode,
        step_coding,
        per_octave,
        chunk_symbols: [0u32, 1, 7, 64, 1000, 0, 5, 1 << 25][pick(13, 8)],
        pad0: 0,
        steps_out: if pick(17, 3) == 0 { null_mut() } else { stored.as_mut_ptr() },
    };
    let channels = if f.layout == FJ_NTC { f.dims[2] } else { f.dims[1] };
    let want = match step_mode {
        FJ_STEPS_TENSOR => 1,
        FJ_STEPS_CHANNEL => channels,
        _ => tokens,
    };
    let steps_len = if pick(19, 8) == 0 { tokens ^ 1 } else { want }.min(CAP as u64);
    // A quarter of the time the run's steps where usable (allocated from J, or 0.25), else steps
    // in [2^-7, 2^3] from the seed; now and then a bad one.
    let mut steps: Vec<f32> = if pick(73, 4) == 0 {
        steps.iter().map(|&s| if s.is_finite() && s > 0.0 { s } else { 0.125 }).collect()
    } else {
        (0..CAP).map(|i| (2.0f32).powi(pick(79 + i as u32, 11) as i32 - 7) * (1.0 + pick(83 + i as u32, 64) as f32 / 64.0)).collect()
    };
    if pick(47, 16) == 0 {
        steps[pick(53, want.clamp(1, CAP as u64))] = [0.0, -1.0, f32::NAN, 1e-40][pick(59, 4)];
    }
    let mut bound = 0u64;
    // SAFETY: every pointer is null, misaligned on purpose, or a live buffer larger than any
    // descriptor here can address (`CAP` elements, 16·`CAP` bytes of file); the file slices are
    // live for their lengths; the entry points must refuse the bad ones.
    unsafe {
        let sb = fj_encode_bound(f, &o, &mut bound);
        ok(sb);
        let mut file = vec![0u8; 16 * CAP];
        let mut flen = 0u64;
        let full = file.len() as u64;
        let cap = [full, full, full, full, full, full, 0, 40][pick(23, 8)];
        let st = fj_encode(c, f, steps.as_ptr(), steps_len, &o, file.as_mut_ptr(), cap, &mut flen, null_mut());
        ok(st);
        if st == FJ_OK || st == FJ_ERR_SPACE {
            assert_eq!(sb, FJ_OK, "fj_encode accepted what fj_encode_bound refused");
            assert!(flen <= bound, "a file of {flen} bytes, the bound {bound}");
        }
        if st != FJ_OK {
            assert!(stored.iter().all(|&v| v == -7.0) || st == FJ_ERR_SPACE, "a failed encode wrote steps_out");
            return;
        }
        file.truncate(flen as usize);
        // Damage: up to three flipped bits, then fix-ups or a cut.
        let flips = pick(29, 4);
        let cut = pick(41, 4) == 2;
        for k in 0..flips {
            let at = pick(31 + 5 * k as u32, file.len() as u64);
            file[at] ^= 1 << pick(37 + k as u32, 8);
        }
        match pick(41, 4) {
            0 => v3_checksums::fix_v3(&mut file, false, crc32),
            1 => v3_checksums::fix_v3(&mut file, true, crc32),
            2 => file.truncate(pick(43, file.len() as u64)),
            _ => {}
        }
        let mut info = FjFileInfo { size: std::mem::size_of::<FjFileInfo>() as u32, ..Default::default() };
        let si = fj_decode_info(file.as_ptr(), file.len() as u64, &mut info);
        ok(si);
        let fo = FjFeature { data: out.as_mut_ptr() as *const _, ..*f };
        let sd = fj_decode(c, file.as_ptr(), file.len() as u64, &fo, null_mut());
        ok(sd);
        if si != FJ_OK {
            assert_ne!(sd, FJ_OK, "fj_decode took a file whose header fj_decode_info refused");
        }
        if flips == 0 && !cut {
            assert_eq!(
                (si, sd),
                (FJ_OK, FJ_OK),
                "an intact file did not decode: {}",
                std::ffi::CStr::from_ptr(fj_last_error()).to_string_lossy()
            );
        }
    }
}
