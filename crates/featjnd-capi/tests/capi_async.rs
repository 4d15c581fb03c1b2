//! The sync-free C calls (`fj_*_async`, `fj_*_stats_slots`, `fj_*_decode`) on a CPU context: they
//! run synchronously there and leave the kernels' statistics layout in host memory, so decoding
//! gives what the synchronous entry points give, bit for bit, and the same statuses for bad
//! inputs. The CUDA context (enqueue only, graph capture) is in tests/gpu.rs.
//!
//! Every `unsafe` block calls the C entry points with pointers to live Rust buffers of the sizes
//! the call documents (or deliberately bad ones, which the entry points must refuse).
mod common;
use common::{ctx, data, err, numel, CASES};
use featjnd::*;
use std::ffi::c_void;
use std::ptr::{null, null_mut};

fn feat(v: &[f32], layout: u32, dims: [u64; 4]) -> FjFeature {
    FjFeature { dtype: FJ_F32, layout, dims, data: v.as_ptr() as *const _ }
}

fn qopts(bits: u32, patch: u32, sym: *mut c_void, rec: *mut f32, sse: *mut f32, hist: *mut u64) -> FjQuantizeOptions {
    FjQuantizeOptions {
        size: std::mem::size_of::<FjQuantizeOptions>() as u32,
        bits,
        patch,
        pad0: 0,
        symbols: sym,
        recon: rec as *mut c_void,
        token_sse: sse,
        histogram: hist,
    }
}

/// Outputs of one quantization: symbols (as i16 room, enough for either width), recon, token errors.
struct Outs {
    sym: Vec<i16>,
    rec: Vec<f32>,
    sse: Vec<f32>,
}

impl Outs {
    fn new(n: usize, t: usize) -> Outs {
        Outs { sym: vec![0; n], rec: vec![0.0; n], sse: vec![0.0; t] }
    }
    fn opts(&mut self, bits: u32, patch: u32, hist: *mut u64) -> FjQuantizeOptions {
        qopts(bits, patch, self.sym.as_mut_ptr() as *mut c_void, self.rec.as_mut_ptr(), self.sse.as_mut_ptr(), hist)
    }
}

fn bits_eq(a: &[f32], b: &[f32], what: &str) {
    assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{what}");
}

#[test]
fn async_quantize_and_the_fused_chain_equal_the_synchronous_calls() {
    let c = ctx();
    for (i, (layout, dims, patch)) in CASES.into_iter().enumerate() {
        for bits in [8u32, 16] {
            let n = numel(layout, dims);
            let x: Vec<f32> = data(n, i as u64).iter().map(|v| v * 3.0).collect();
            let j: Vec<f32> = data(n, 100 + i as u64).iter().map(|v| v.abs() + 0.05).collect();
            let (fx, fj) = (feat(&x, layout, dims), feat(&j, layout, dims));
            let what = format!("{dims:?} layout {layout} bits {bits}");
            // SAFETY: live buffers of the documented sizes (see the module doc).
            unsafe {
                let mut t = 0u64;
                assert_eq!(fj_token_count(&fx, patch, &mut t), FJ_OK);
                let t = t as usize;
                // The synchronous chain: tolerances, steps, quantize (histogram on).
                let (mut jt, mut st) = (vec![0.0f32; t], vec![0.0f32; t]);
                assert_eq!(fj_token_tolerance(c, &fj, patch, FJ_RMS, jt.as_mut_ptr(), t as u64, null_mut()), FJ_OK, "{}", err());
                assert_eq!(fj_allocate_steps(c, jt.as_ptr(), t as u64, 0.02, FJ_JND, 0, st.as_mut_ptr()), FJ_OK, "{}", err());
                let mut want = Outs::new(n, t);
                let hb = if bits == 8 { 255 } else { 512 };
                let mut hist = vec![0u64; hb];
                let mut r = FjQuantizeResult::default();
                let o = want.opts(bits, patch, hist.as_mut_ptr());
                assert_eq!(fj_quantize(c, &fx, st.as_ptr(), &o, &mut r, null_mut()), FJ_OK, "{}", err());

                // fj_quantize_async with the same steps.
                let mut slots = 0u64;
                assert_eq!(fj_quantize_stats_slots(bits, &mut slots), FJ_OK);
                let mut stats = vec![-1i64; slots as usize];
                let mut got = Outs::new(n, t);
                let o = got.opts(bits, patch, null_mut());
                assert_eq!(fj_quantize_async(c, &fx, st.as_ptr(), &o, stats.as_mut_ptr(), slots, null_mut()), FJ_OK, "{}", err());
                let (mut r2, mut h2) = (FjQuantizeResult::default(), vec![0u64; hb]);
                let st_ = stats.as_ptr();
                assert_eq!(
                    fj_quantize_decode(c, &fx, null(), patch, bits, st_, slots, null_mut(), &mut r2, h2.as_mut_ptr()),
                    FJ_OK,
                    "{}",
                    err()
                );
                same(&want, &got, &r, &r2, &hist, &h2, &format!("async {what}"));

                // The fused chain.
                assert_eq!(fj_quantize_with_jnd_stats_slots(&fx, patch, bits, &mut slots), FJ_OK);
                let mut ws = vec![0i64; slots as usize];
                let mut steps = vec![0.0f32; t];
                let mut got = Outs::new(n, t);
                let o = got.opts(bits, patch, null_mut());
                let rc = fj_quantize_with_jnd_async(
                    c,
                    &fx,
                    &fj,
                    FJ_RMS,
                    0.02,
                    FJ_JND,
                    &o,
                    steps.as_mut_ptr(),
                    ws.as_mut_ptr(),
                    slots,
                    null_mut(),
                );
                assert_eq!(rc, FJ_OK, "{}", err());
                bits_eq(&steps, &st, &format!("fused steps {what}"));
                assert_eq!(fj_quantize_decode(c, &fx, &fj, patch, bits, ws.as_ptr(), slots, null_mut(), &mut r2, h2.as_mut_ptr()), FJ_OK);
                same(&want, &got, &r, &r2, &hist, &h2, &format!("fused {what}"));
            }
        }
    }
    // SAFETY: a live context made by `ctx`, used by no one after this.
    unsafe { fj_context_destroy(c) };
}

fn same(a: &Outs, b: &Outs, ra: &FjQuantizeResult, rb: &FjQuantizeResult, ha: &[u64], hb: &[u64], what: &str) {
    assert_eq!(a.sym, b.sym, "{what}: symbols");
    bits_eq(&a.rec, &b.rec, &format!("{what}: recon"));
    bits_eq(&a.sse, &b.sse, &format!("{what}: token errors"));
    assert_eq!(ha, hb, "{what}: histogram");
    assert_eq!((ra.clamped, ra.total_sse.to_bits(), ra.mse.to_bits()), (rb.clamped, rb.total_sse.to_bits(), rb.mse.to_bits()), "{what}");
    assert_eq!(
        (ra.entropy_bits.to_bits(), ra.bits_per_element.to_bits()),
        (rb.entropy_bits.to_bits(), rb.bits_per_element.to_bits()),
        "{what}"
    );
}

#[test]
fn async_perturb_equals_the_synchronous_call() {
    let c = ctx();
    let dims = [3u64, 5, 7, 9];
    let n = numel(FJ_NCHW, dims);
    let mut x = data(n, 7);
    x[n / 3..2 * n / 3].fill(0.0); // sample 1 is zero: reported, returned unchanged
    let j: Vec<f32> = data(n, 8).iter().map(|v| v.abs() + 0.1).collect();
    let (fx, fj) = (feat(&x, FJ_NCHW, dims), feat(&j, FJ_NCHW, dims));
    for noise in [FJ_GAUSSIAN, FJ_UNIFORM_NOISE] {
        for jp in [null(), &fj as *const FjFeature] {
            // SAFETY: live buffers of the documented sizes (see the module doc).
            unsafe {
                let (mut want, mut ws) = (vec![0.0f32; n], vec![0.0f32; 3]);
                let o = FjPerturbOptions {
                    size: std::mem::size_of::<FjPerturbOptions>() as u32,
                    noise,
                    seed: 9,
                    subsequence: 2,
                    pad0: 0,
                    scales: ws.as_mut_ptr(),
                };
                assert_eq!(fj_perturb(c, &fx, jp, 0.25, &o, want.as_mut_ptr() as *mut c_void, null_mut()), FJ_OK, "{}", err());
                let mut slots = 0u64;
                assert_eq!(fj_perturb_stats_slots(&fx, &mut slots), FJ_OK);
                let mut stats = vec![5i64; slots as usize];
                let (mut got, mut gs) = (vec![0.0f32; n], vec![0.0f32; 3]);
                let o = FjPerturbOptions { scales: null_mut(), ..o };
                let rc = fj_perturb_async(c, &fx, jp, 0.25, &o, got.as_mut_ptr() as *mut c_void, stats.as_mut_ptr(), slots, null_mut());
                assert_eq!(rc, FJ_OK, "{}", err());
                assert_eq!(fj_perturb_decode(c, &fx, jp, 0.25, stats.as_ptr(), slots, null_mut(), gs.as_mut_ptr()), FJ_OK, "{}", err());
                bits_eq(&got, &want, "perturbed");
                bits_eq(&gs, &ws, "scales");
                assert_eq!(gs[1], 0.0);
            }
        }
    }
    // SAFETY: a live context made by `ctx`, used by no one after this.
    unsafe { fj_context_destroy(c) };
}

#[test]
fn decode_gives_the_synchronous_status_and_bad_arguments_are_refused() {
    let c = ctx();
    let dims = [2u64, 4, 3, 3];
    let n = numel(FJ_NCHW, dims);
    let mut x = data(n, 1);
    let mut j: Vec<f32> = data(n, 2).iter().map(|v| v.abs() + 0.1).collect();
    x[29] = f32::NAN;
    j[5] = 0.0;
    let (fx, fj) = (feat(&x, FJ_NCHW, dims), feat(&j, FJ_NCHW, dims));
    let t = 18usize;
    let st = vec![0.5f32; t];
    let mut outs = Outs::new(n, t);
    // SAFETY: live buffers of the documented sizes, or deliberately bad ones (see the module doc).
    unsafe {
        let mut slots = 0u64;
        assert_eq!(fj_quantize_with_jnd_stats_slots(&fx, 1, 8, &mut slots), FJ_OK);
        let mut ws = vec![0i64; slots as usize];
        let mut steps = vec![0.0f32; t];
        let o = outs.opts(8, 1, null_mut());
        // The fused chain: a bad J first (as the synchronous token tolerance reports it).
        let rc = fj_quantize_with_jnd_async(c, &fx, &fj, FJ_MEAN, 0.01, FJ_JND, &o, steps.as_mut_ptr(), ws.as_mut_ptr(), slots, null_mut());
        assert_eq!(rc, FJ_OK, "{}", err());
        let mut r = FjQuantizeResult::default();
        assert_eq!(fj_quantize_decode(c, &fx, &fj, 1, 8, ws.as_ptr(), slots, null_mut(), &mut r, null_mut()), FJ_ERR_JND);
        let decoded = err();
        let mut jt = vec![0.0f32; t];
        assert_eq!(fj_token_tolerance(c, &fj, 1, FJ_MEAN, jt.as_mut_ptr(), t as u64, null_mut()), FJ_ERR_JND);
        assert_eq!(decoded, err());
        // Plain quantize of a NaN.
        let mut qs = 0u64;
        assert_eq!(fj_quantize_stats_slots(8, &mut qs), FJ_OK);
        let mut stats = vec![0i64; qs as usize];
        assert_eq!(fj_quantize_async(c, &fx, st.as_ptr(), &o, stats.as_mut_ptr(), qs, null_mut()), FJ_OK, "{}", err());
        assert_eq!(fj_quantize_decode(c, &fx, null(), 1, 8, stats.as_ptr(), qs, null_mut(), &mut r, null_mut()), FJ_ERR_NONFINITE);
        let decoded = err();
        assert!(decoded.contains("29"), "{decoded}");
        assert_eq!(fj_quantize(c, &fx, st.as_ptr(), &o, &mut r, null_mut()), FJ_ERR_NONFINITE);
        assert_eq!(decoded, err());
        // A bad step (ahead of the NaN x): taken by the async call, decoded as the synchronous
        // call's FJ_ERR_ARG with the same token and value (the kernels check steps on the device).
        let mut bad_steps = st.clone();
        bad_steps[5] = -1.0;
        bad_steps[8] = f32::NAN;
        assert_eq!(fj_quantize_async(c, &fx, bad_steps.as_ptr(), &o, stats.as_mut_ptr(), qs, null_mut()), FJ_OK, "{}", err());
        assert_eq!(fj_quantize_decode(c, &fx, null(), 1, 8, stats.as_ptr(), qs, null_mut(), &mut r, null_mut()), FJ_ERR_ARG);
        let decoded = err();
        assert!(decoded.contains("step Δ[5] = -1 "), "{decoded}");
        assert_eq!(fj_quantize(c, &fx, bad_steps.as_ptr(), &o, &mut r, null_mut()), FJ_ERR_ARG);
        assert_eq!(decoded, err());
        // Perturbation: a bad x before a bad J.
        let mut ps = 0u64;
        assert_eq!(fj_perturb_stats_slots(&fx, &mut ps), FJ_OK);
        let mut pstats = vec![0i64; ps as usize];
        let mut out = vec![0.0f32; n];
        let rc = fj_perturb_async(c, &fx, &fj, 0.1, null(), out.as_mut_ptr() as *mut c_void, pstats.as_mut_ptr(), ps, null_mut());
        assert_eq!(rc, FJ_OK, "{}", err());
        assert_eq!(fj_perturb_decode(c, &fx, &fj, 0.1, pstats.as_ptr(), ps, null_mut(), null_mut()), FJ_ERR_NONFINITE);
        let decoded = err();
        assert_eq!(fj_perturb(c, &fx, &fj, 0.1, null(), out.as_mut_ptr() as *mut c_void, null_mut()), FJ_ERR_NONFINITE);
        assert_eq!(decoded, err());

        // Bad statistics arrays: null, short, misaligned, overlapping an output; a histogram pointer.
        assert_eq!(fj_quantize_async(c, &fx, st.as_ptr(), &o, null_mut(), qs, null_mut()), FJ_ERR_NULL);
        assert_eq!(fj_quantize_async(c, &fx, st.as_ptr(), &o, stats.as_mut_ptr(), qs - 1, null_mut()), FJ_ERR_SHAPE);
        let mis = (stats.as_mut_ptr() as *mut u8).add(4) as *mut i64;
        assert_eq!(fj_quantize_async(c, &fx, st.as_ptr(), &o, mis, qs - 1, null_mut()), FJ_ERR_ALIGN);
        let mut big = vec![0i64; n];
        let o2 = qopts(8, 1, null_mut(), big.as_mut_ptr() as *mut f32, null_mut(), null_mut());
        assert_eq!(fj_quantize_async(c, &fx, st.as_ptr(), &o2, big.as_mut_ptr(), qs, null_mut()), FJ_ERR_ARG);
        let mut h = vec![0u64; 255];
        let o3 = outs.opts(8, 1, h.as_mut_ptr());
        assert_eq!(fj_quantize_async(c, &fx, st.as_ptr(), &o3, stats.as_mut_ptr(), qs, null_mut()), FJ_ERR_ARG);
        assert_eq!(fj_quantize_stats_slots(12, &mut qs), FJ_ERR_ARG);
        let rc =
            fj_quantize_with_jnd_async(c, &fx, &fj, FJ_MEAN, 0.01, FJ_PERMUTED, &o, steps.as_mut_ptr(), ws.as_mut_ptr(), slots, null_mut());
        assert_eq!(rc, FJ_ERR_ARG);
        let rc = fj_quantize_with_jnd_async(c, &fx, &fj, FJ_MEAN, -1.0, FJ_JND, &o, steps.as_mut_ptr(), ws.as_mut_ptr(), slots, null_mut());
        assert_eq!(rc, FJ_ERR_BUDGET);
        // The chain writes the steps while it reads x and J: steps over either are refused.
        let over_x = x.as_mut_ptr().add(3);
        let rc = fj_quantize_with_jnd_async(c, &fx, &fj, FJ_MEAN, 0.01, FJ_JND, &o, over_x, ws.as_mut_ptr(), slots, null_mut());
        assert_eq!(rc, FJ_ERR_ARG);
        assert!(err().contains("steps_out overlaps x"), "{}", err());
        let over_j = j.as_mut_ptr().add(5);
        let rc = fj_quantize_with_jnd_async(c, &fx, &fj, FJ_MEAN, 0.01, FJ_JND, &o, over_j, ws.as_mut_ptr(), slots, null_mut());
        assert_eq!(rc, FJ_ERR_ARG);
        assert!(err().contains("steps_out overlaps jnd"), "{}", err());
        let rc = fj_perturb_async(c, &fx, &fj, -0.5, null(), out.as_mut_ptr() as *mut c_void, pstats.as_mut_ptr(), ps, null_mut());
        assert_eq!(rc, FJ_ERR_BUDGET);
        let o4 = FjPerturbOptions {
            size: std::mem::size_of::<FjPerturbOptions>() as u32,
            noise: 0,
            seed: 0,
            subsequence: 0,
            pad0: 0,
            scales: out.as_mut_ptr(),
        };
        let rc = fj_perturb_async(c, &fx, null(), 0.1, &o4, pstats.as_mut_ptr() as *mut c_void, pstats.as_mut_ptr(), ps, null_mut());
        assert_eq!(rc, FJ_ERR_ARG, "{}", err());
        // A stream on a CPU context.
        assert_eq!(fj_quantize_async(c, &fx, st.as_ptr(), &o, stats.as_mut_ptr(), qs, 8 as *mut c_void), FJ_ERR_ARG);
        fj_context_destroy(c);
    }
}
