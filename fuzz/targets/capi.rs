//! The C entry points on a CPU context with descriptors, options and data decoded from the input:
//! any dtype/layout/enum code, dims up to 5, option struct sizes, null and misaligned pointers,
//! NaN/Inf/denormal data. Invariants: a known status and never FJ_ERR_PANIC; an argument error
//! leaves the output untouched.
//!
//! Shared by the libFuzzer target (`fuzz/fuzz_targets/capi.rs`) and the stable harness of the
//! test command (docs/fuzzing.md).
use featjnd::*;
use std::ptr::{null, null_mut};

/// Elements in every buffer: more than any descriptor below can address (5^4 = 625).
const CAP: usize = 640;
const STATUSES: [i32; 11] = [
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
];

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
        fj_context_destroy(c);
    }
}
