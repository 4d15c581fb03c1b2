//! GPU vs CPU: every CUDA kernel against the CPU path on the same inputs (bit-identical where SPEC
//! says so). Each test prints why it skips where no usable GPU exists (CI has none).
use featjnd::ops::{self, Noise, QuantizeOptions};
use featjnd::{Bits, Layout, NoiseKind, Reduce, Strategy};
use tch::{Device, Kind, Tensor};

fn gpu() -> Option<Device> {
    featjnd::cuda::load_torch_cuda();
    if let Err(e) = featjnd::cuda::available() {
        println!("SKIP (no GPU): {e}");
        return None;
    }
    if !tch::Cuda::is_available() {
        println!("SKIP (no GPU): libtorch sees no CUDA (libtorch_cuda.so not loadable)");
        return None;
    }
    Some(Device::Cuda(0))
}

const KINDS: [Kind; 3] = [Kind::Float, Kind::Half, Kind::BFloat16];

/// Shapes with awkward sizes: (layout, sizes, patch).
fn shapes() -> Vec<(Layout, Vec<i64>, usize)> {
    vec![
        (Layout::Nchw, vec![1, 1, 1, 1], 1),
        (Layout::Nchw, vec![2, 7, 5, 3], 1),
        (Layout::Nchw, vec![3, 17, 6, 10], 2),
        (Layout::Nchw, vec![1, 64, 28, 28], 4),
        (Layout::Nchw, vec![2, 256, 14, 14], 1),
        (Layout::Ntc, vec![1, 1, 1], 1),
        (Layout::Ntc, vec![2, 7, 17], 1),
        (Layout::Ntc, vec![3, 33, 1025], 1),
        (Layout::Ntc, vec![2, 50, 768], 1),
        (Layout::Ntc, vec![1, 3, 5137], 1),
    ]
}

fn feature(sizes: &[i64], kind: Kind, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    (Tensor::randn(sizes, (Kind::Float, Device::Cpu)) * 3.0).to_kind(kind)
}
fn jnd(sizes: &[i64], kind: Kind, seed: i64) -> Tensor {
    tch::manual_seed(seed + 1000);
    (Tensor::rand(sizes, (Kind::Float, Device::Cpu)) * 2.0 + 0.05).to_kind(kind)
}

fn bits_eq(a: &Tensor, b: &Tensor, what: &str) {
    let a = a.to_device(Device::Cpu).contiguous();
    let b = b.to_device(Device::Cpu).contiguous();
    assert_eq!(a.size(), b.size(), "{what}: sizes");
    // Compare the raw bits (f16/bf16 compared as i16, f32 as i32).
    let view = |t: &Tensor| match t.kind() {
        Kind::Float => t.view_dtype(Kind::Int),
        Kind::Half | Kind::BFloat16 => t.view_dtype(Kind::Int16),
        _ => t.shallow_clone(),
    };
    let ne = view(&a).ne_tensor(&view(&b)).sum(Kind::Int64).int64_value(&[]);
    assert_eq!(ne, 0, "{what}: {ne} elements differ bitwise");
}

fn close(a: &Tensor, b: &Tensor, rel: f64, abs: f64, what: &str) {
    let a = a.to_device(Device::Cpu).to_kind(Kind::Double);
    let b = b.to_device(Device::Cpu).to_kind(Kind::Double);
    let err = (&a - &b).abs() - (b.abs() * rel + abs);
    let worst = err.max().double_value(&[]);
    assert!(worst <= 0.0, "{what}: off by {worst} beyond rel {rel} + abs {abs}");
}

#[test]
fn noise_gpu_matches_cpu() {
    let Some(d) = gpu() else { return };
    for (numel, offset) in [(1usize, 0u64), (7, 3), (1025, 6), (100_003, 1 << 33)] {
        for kind in [NoiseKind::Uniform, NoiseKind::Gaussian] {
            let spec = Noise { kind, seed: 0xfeed_beef_1234, stream: 3 };
            let g = ops::noise(numel, offset, spec, d).unwrap();
            let c = ops::noise(numel, offset, spec, Device::Cpu).unwrap();
            match kind {
                NoiseKind::Uniform => bits_eq(&g, &c, "uniform noise"),
                NoiseKind::Gaussian => close(&g, &c, 1e-5, 1e-6, "gaussian noise"),
            }
        }
    }
}

#[test]
fn token_tolerance_gpu_matches_cpu() {
    let Some(d) = gpu() else { return };
    for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate() {
        for kind in KINDS {
            let j = jnd(&sizes, kind, i as i64);
            for reduce in [Reduce::Mean, Reduce::Rms, Reduce::Min] {
                let c = ops::token_tolerance(&j, layout, patch, reduce).unwrap();
                let g = ops::token_tolerance(&j.to_device(d), layout, patch, reduce).unwrap();
                close(&g, &c, 1e-5, 0.0, &format!("{layout:?} {sizes:?} p{patch} {kind:?} {reduce:?}"));
            }
        }
    }
}

#[test]
fn step_allocation_gpu_matches_cpu() {
    let Some(d) = gpu() else { return };
    let jt = jnd(&[1031], Kind::Float, 5);
    for strategy in [Strategy::Uniform, Strategy::Jnd, Strategy::Permuted { seed: 9 }] {
        for beta in [1.0, 0.37] {
            let c = ops::allocate_steps_scaled(&jt, 0.02, strategy, beta).unwrap();
            let g = ops::allocate_steps_scaled(&jt.to_device(d), 0.02, strategy, beta).unwrap();
            // Σj² is reduced in another order on the device: the f32 scale may differ by an ulp.
            close(&g, &c, 3e-7, 0.0, &format!("{strategy:?} β={beta}"));
        }
    }
}

#[test]
fn quantize_gpu_is_bit_identical_to_cpu() {
    let Some(d) = gpu() else { return };
    for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate() {
        for kind in KINDS {
            let x = feature(&sizes, kind, 100 + i as i64);
            let j = jnd(&sizes, kind, 100 + i as i64);
            let jt = ops::token_tolerance(&j, layout, patch, Reduce::Mean).unwrap();
            for bits in [Bits::B8, Bits::B16] {
                // A coarse budget (clamping rare) and a fine one (clamping common for 8 bits).
                for budget in [0.05, 1e-6] {
                    let st = ops::allocate_steps(&jt, budget, Strategy::Jnd).unwrap();
                    let opts = QuantizeOptions { bits, ..Default::default() };
                    let c = ops::quantize(&x, layout, patch, &st, &opts).unwrap();
                    let g = ops::quantize(&x.to_device(d), layout, patch, &st.to_device(d), &opts).unwrap();
                    let what = format!("{layout:?} {sizes:?} p{patch} {kind:?} {bits:?} D={budget}");
                    bits_eq(g.symbols.as_ref().unwrap(), c.symbols.as_ref().unwrap(), &format!("symbols {what}"));
                    bits_eq(g.recon.as_ref().unwrap(), c.recon.as_ref().unwrap(), &format!("recon {what}"));
                    close(g.token_sse.as_ref().unwrap(), c.token_sse.as_ref().unwrap(), 1e-4, 1e-30, &format!("token sse {what}"));
                    assert_eq!(g.clamped, c.clamped, "clamped {what}");
                    assert_eq!(g.histogram, c.histogram, "histogram {what}");
                    assert!((g.total_sse - c.total_sse).abs() <= 1e-4 * c.total_sse.abs() + 1e-30, "total sse {what}");
                    // In place on the device gives the same reconstruction.
                    let mut xi = x.to_device(d);
                    ops::quantize_(&mut xi, layout, patch, &st.to_device(d), &opts).unwrap();
                    bits_eq(&xi, c.recon.as_ref().unwrap(), &format!("in-place recon {what}"));
                }
            }
        }
    }
}

#[test]
fn fused_jnd_chain_on_gpu_matches_cpu() {
    let Some(d) = gpu() else { return };
    for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate() {
        let x = feature(&sizes, Kind::Float, 300 + i as i64);
        let j = jnd(&sizes, Kind::Float, 300 + i as i64);
        let opts = QuantizeOptions::default();
        let (sc, qc) = ops::quantize_with_jnd(&x, &j, layout, patch, Reduce::Rms, 0.01, Strategy::Jnd, &opts).unwrap();
        let (sg, qg) = ops::quantize_with_jnd(&x.to_device(d), &j.to_device(d), layout, patch, Reduce::Rms, 0.01, Strategy::Jnd, &opts).unwrap();
        close(&sg, &sc, 1e-6, 0.0, &format!("fused steps {sizes:?}"));
        assert!((qg.mse - qc.mse).abs() <= 1e-3 * qc.mse, "fused mse {} vs {}", qg.mse, qc.mse);
    }
}

#[test]
fn measured_budget_on_gpu() {
    let Some(d) = gpu() else { return };
    let sizes = [2i64, 32, 12, 12];
    let x = feature(&sizes, Kind::Float, 7).to_device(d);
    let j = jnd(&sizes, Kind::Float, 7).to_device(d);
    let jt = ops::token_tolerance(&j, Layout::Nchw, 1, Reduce::Mean).unwrap();
    for budget in [0.5, 4.0] {
        let (st, m) = ops::allocate_steps_measured(&x, Layout::Nchw, 1, &jt, budget, Strategy::Jnd, Bits::B8).unwrap();
        let q = ops::quantize(&x, Layout::Nchw, 1, &st, &QuantizeOptions::default()).unwrap();
        assert!((q.mse / budget - 1.0).abs() <= 1e-3, "measured {} for D={budget}", q.mse);
        assert!((m.measured_mse - q.mse).abs() <= 1e-9 * q.mse);
    }
}

#[test]
fn perturb_gpu_matches_cpu() {
    let Some(d) = gpu() else { return };
    for (i, (_, sizes, _)) in shapes().into_iter().enumerate() {
        for kind in KINDS {
            let x = feature(&sizes, kind, 500 + i as i64);
            let j = jnd(&sizes, kind, 500 + i as i64);
            for noise in [NoiseKind::Uniform, NoiseKind::Gaussian] {
                for jv in [None, Some(&j)] {
                    let spec = Noise { kind: noise, seed: 11 + i as u64, stream: 2 };
                    let (oc, rc) = ops::perturb(&x, jv, 0.3, spec).unwrap();
                    let jg = jv.map(|t| t.to_device(d));
                    let (og, rg) = ops::perturb(&x.to_device(d), jg.as_ref(), 0.3, spec).unwrap();
                    let what = format!("{sizes:?} {kind:?} {noise:?} J={}", jv.is_some());
                    let tol = if kind == Kind::Float { 1e-5 } else { 1e-2 };
                    let scale = x.to_kind(Kind::Double).abs().max().double_value(&[]);
                    close(&og, &oc, tol, tol * scale, &what);
                    for (a, b) in rg.scales.iter().zip(&rc.scales) {
                        assert!((a - b).abs() <= 1e-5 * b.abs(), "scale {a} vs {b} {what}");
                    }
                    assert_eq!(rg.zero_samples, rc.zero_samples);
                }
            }
        }
    }
}

#[test]
fn gpu_errors_name_the_first_bad_index() {
    let Some(d) = gpu() else { return };
    let sizes = [2i64, 8, 6, 6];
    let x = feature(&sizes, Kind::Float, 1);
    let j = jnd(&sizes, Kind::Float, 1);
    let _ = x.get(1).get(3).get(2).get(4).fill_(f64::NAN);
    let _ = x.get(1).get(5).get(0).get(0).fill_(f64::INFINITY);
    let want = ((8 + 3) * 6 + 2) * 6 + 4;
    let jt = ops::token_tolerance(&j, Layout::Nchw, 1, Reduce::Mean).unwrap();
    let st = ops::allocate_steps(&jt, 0.01, Strategy::Jnd).unwrap().to_device(d);
    let xg = x.to_device(d);
    match ops::quantize(&xg, Layout::Nchw, 1, &st, &QuantizeOptions::default()) {
        Err(featjnd::Error::NonFinite { index, .. }) => assert_eq!(index, want),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    let jg = j.to_device(d);
    let _ = jg.get(0).get(2).get(1).get(1).fill_(0.0);
    match ops::token_tolerance(&jg, Layout::Nchw, 1, Reduce::Mean) {
        Err(featjnd::Error::Jnd { index, .. }) => assert_eq!(index, ((2) * 6 + 1) * 6 + 1),
        other => panic!("expected Jnd, got {other:?}"),
    }
    // In-place perturbation with a bad x leaves x untouched.
    let mut xp = xg.copy();
    let before = xp.copy();
    assert!(matches!(ops::perturb_(&mut xp, None, 0.1, Noise::default()), Err(featjnd::Error::NonFinite { .. })));
    let same = xp.isnan().logical_and(&before.isnan()).logical_or(&xp.eq_tensor(&before)).all().int64_value(&[]);
    assert_eq!(same, 1, "in-place perturb wrote despite a bad x");
}

/// Regression for 32-bit index overflow: a tensor with more than 2^31 elements (f16, 4 GiB).
#[test]
fn index_past_2_pow_31() {
    let Some(d) = gpu() else { return };
    let (t, k) = (2_097_169i64, 1025i64); // T*K = 2^31 + 2,114,577
    let x = Tensor::ones([1, t, k], (Kind::Half, d)) * 1.3;
    let steps = Tensor::full([t], 0.25, (Kind::Float, d));
    let _ = x.get(0).get(t - 1).get(k - 2).fill_(-2.6); // indices < 2^31: `get` is fine here
    let opts = QuantizeOptions { bits: Bits::B8, symbols: true, recon: false, token_sse: true, histogram: true };
    let q = ops::quantize(&x, Layout::Ntc, 1, &steps, &opts).unwrap();
    let sym = q.symbols.unwrap();
    assert_eq!(sym.get(0).get(t - 1).get(k - 2).int64_value(&[]), -10); // -2.6/0.25 = -10.4
    assert_eq!(sym.get(0).get(t - 1).get(k - 1).int64_value(&[]), 5); // 1.3 (f16 1.2998) / 0.25 = 5.2
    let h = q.histogram.unwrap();
    assert_eq!(h.iter().sum::<u64>(), (t * k) as u64);
    drop(x);
    let x = Tensor::ones([1, t * k], (Kind::Half, d));
    // tch's `get` truncates indices to 32 bits (a NaN set with it lands at t*k - 1 - 2^32 + ...):
    // set the last element through `narrow`, which takes a 64-bit start.
    let _ = x.narrow(1, t * k - 1, 1).fill_(f64::NAN);
    let torch_at = x.isnan().flatten(0, -1).nonzero().view([-1]);
    assert_eq!(Vec::<i64>::try_from(torch_at.to_device(Device::Cpu)).unwrap(), vec![t * k - 1]);
    match ops::perturb(&x, None, 0.1, Noise::default()) {
        Err(featjnd::Error::NonFinite { index, .. }) => assert_eq!(index as i64, t * k - 1),
        other => panic!("expected NonFinite past 2^31, got {other:?}"),
    }
}

/// SPEC §7 mixed devices (only testable where a GPU exists). Added after the last GPU session:
/// not yet run on a GPU.
#[test]
fn mixed_devices_are_a_typed_error() {
    let Some(d) = gpu() else { return };
    let x = feature(&[1, 4, 4, 4], Kind::Float, 9);
    let j = jnd(&[1, 4, 4, 4], Kind::Float, 9);
    let jt = ops::token_tolerance(&j, Layout::Nchw, 1, Reduce::Mean).unwrap();
    let st = ops::allocate_steps(&jt, 0.01, Strategy::Jnd).unwrap();
    let r = ops::quantize(&x.to_device(d), Layout::Nchw, 1, &st, &QuantizeOptions::default());
    assert!(matches!(r, Err(featjnd::Error::MixedDevices(_))), "{r:?}");
    let r = ops::perturb(&x.to_device(d), Some(&j), 0.1, Noise::default());
    assert!(matches!(r, Err(featjnd::Error::MixedDevices(_))), "{r:?}");
}

// ---- The C ABI on device pointers (a CUDA context) against a CPU context on the same data. ----

mod capi_device {
    use super::*;
    use featjnd::capi::*;
    use std::ffi::{c_void, CStr};
    use std::ptr::{null, null_mut};

    fn err() -> String {
        unsafe { CStr::from_ptr(fj_last_error()) }.to_string_lossy().into_owned()
    }
    fn context(device: i32) -> *mut FjContext {
        let o = FjContextOptions { size: std::mem::size_of::<FjContextOptions>() as u32, device, num_threads: 0 };
        let mut c = null_mut();
        assert_eq!(unsafe { fj_context_create(&o, &mut c) }, FJ_OK, "{}", err());
        c
    }
    fn code(k: Kind) -> u32 {
        match k {
            Kind::Float => FJ_F32,
            Kind::Half => FJ_F16,
            _ => FJ_BF16,
        }
    }
    fn feat(t: &Tensor, layout: Layout) -> FjFeature {
        let s = t.size();
        let (l, dims) = match layout {
            Layout::Nchw => (FJ_NCHW, [s[0] as u64, s[1] as u64, s[2] as u64, s[3] as u64]),
            Layout::Ntc => (FJ_NTC, [s[0] as u64, s[1] as u64, s[2] as u64, 0]),
        };
        FjFeature { dtype: code(t.kind()), layout: l, dims, data: t.data_ptr() as *const c_void }
    }
    fn p<T>(t: &Tensor) -> *mut T {
        t.data_ptr() as *mut T
    }

    /// Token tolerances and steps through one context; outputs are tensors on `dev`.
    fn tolerances_and_steps(c: *const FjContext, j: &Tensor, layout: Layout, patch: usize, dev: Device, stream: *mut c_void) -> (Tensor, Tensor) {
        let fj = feat(j, layout);
        let mut t = 0u64;
        unsafe {
            assert_eq!(fj_token_count(&fj, patch as u32, &mut t), FJ_OK);
            let jt = Tensor::zeros([t as i64], (Kind::Float, dev));
            let steps = Tensor::zeros([t as i64], (Kind::Float, dev));
            tch::Cuda::synchronize(0);
            assert_eq!(fj_token_tolerance(c, &fj, patch as u32, FJ_MEAN, p(&jt), t, stream), FJ_OK, "{}", err());
            assert_eq!(fj_allocate_steps(c, p(&jt), t, 0.01, FJ_JND, 0, p(&steps)), FJ_OK, "{}", err());
            (jt.to_device(Device::Cpu), steps.to_device(Device::Cpu))
        }
    }

    /// The fused quantization with given steps: symbols, reconstruction, token errors, histogram
    /// (on the host) and the result struct.
    fn quantize(c: *const FjContext, x: &Tensor, steps: &Tensor, layout: Layout, patch: usize, dev: Device, stream: *mut c_void) -> (Vec<Tensor>, FjQuantizeResult) {
        let steps = steps.to_device(dev);
        let sym = Tensor::zeros(x.size(), (Kind::Int8, dev));
        let rec = Tensor::zeros(x.size(), (x.kind(), dev));
        let sse = Tensor::zeros([steps.numel() as i64], (Kind::Float, dev));
        let hist = Tensor::zeros([255], (Kind::Int64, dev));
        tch::Cuda::synchronize(0);
        let o = FjQuantizeOptions { size: std::mem::size_of::<FjQuantizeOptions>() as u32, bits: 8, patch: patch as u32, pad0: 0, symbols: p(&sym), recon: p(&rec), token_sse: p(&sse), histogram: p(&hist) };
        let mut r = FjQuantizeResult::default();
        assert_eq!(unsafe { fj_quantize(c, &feat(x, layout), p(&steps), &o, &mut r, stream) }, FJ_OK, "{}", err());
        (vec![sym, rec, sse, hist].into_iter().map(|t| t.to_device(Device::Cpu)).collect(), r)
    }

    #[test]
    fn c_abi_on_device_pointers_matches_the_cpu_context() {
        let Some(d) = gpu() else { return };
        let (cpu, gpu_ctx) = (context(-1), context(0));
        // One non-default stream (the caller's) and the legacy default stream (NULL).
        let dev = featjnd::cuda::Device::get(0).unwrap();
        let own = dev.ctx.new_stream().unwrap();
        for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate().filter(|(i, _)| i % 2 == 1 || *i == 0) {
            for kind in KINDS {
                let (x, j) = (feature(&sizes, kind, 900 + i as i64), jnd(&sizes, kind, 900 + i as i64));
                let (xd, jd) = (x.to_device(d), j.to_device(d));
                let (jc, sc) = tolerances_and_steps(cpu, &j, layout, patch, Device::Cpu, null_mut());
                let (hc, rc) = quantize(cpu, &x, &sc, layout, patch, Device::Cpu, null_mut());
                for stream in [null_mut(), own.cu_stream() as *mut c_void] {
                    let what = format!("{sizes:?} {kind:?} patch {patch} stream {stream:p}");
                    // Token reductions run in another order on the device: equal to rounding.
                    let (jg, sg) = tolerances_and_steps(gpu_ctx, &jd, layout, patch, d, stream);
                    close(&jg, &jc, 1e-5, 0.0, &format!("token tolerance {what}"));
                    close(&sg, &sc, 1e-4, 0.0, &format!("steps {what}"));
                    // Given the same steps, quantization is bit-identical (SPEC §4).
                    let (hg, rg) = quantize(gpu_ctx, &xd, &sc, layout, patch, d, stream);
                    for (k, name) in [(0, "symbols"), (1, "reconstruction"), (3, "histogram")] {
                        bits_eq(&hg[k], &hc[k], &format!("{name} {what}"));
                    }
                    close(&hg[2], &hc[2], 1e-4, 1e-30, &format!("token sse {what}"));
                    assert_eq!(rg.clamped, rc.clamped, "{what}");
                    assert!((rg.total_sse - rc.total_sse).abs() <= 1e-4 * rc.total_sse, "{what}");
                    assert_eq!(rg.entropy_bits, rc.entropy_bits, "{what}");
                }
                // Perturbation: out of place with scales, on the caller's stream.
                let samples = sizes[0] as usize;
                let o = FjPerturbOptions { size: std::mem::size_of::<FjPerturbOptions>() as u32, noise: FJ_GAUSSIAN, seed: 5, stream: 3, pad0: 0, scales: null_mut() };
                let (oc, og) = (Tensor::zeros(x.size(), (kind, Device::Cpu)), Tensor::zeros(x.size(), (kind, d)));
                let (sc, sg) = (Tensor::zeros([samples as i64], (Kind::Float, Device::Cpu)), Tensor::zeros([samples as i64], (Kind::Float, d)));
                tch::Cuda::synchronize(0);
                unsafe {
                    let oc_opts = FjPerturbOptions { scales: p(&sc), ..o };
                    assert_eq!(fj_perturb(cpu, &feat(&x, layout), &feat(&j, layout), 0.3, &oc_opts, p(&oc), null_mut()), FJ_OK, "{}", err());
                    let og_opts = FjPerturbOptions { scales: p(&sg), ..o };
                    assert_eq!(fj_perturb(gpu_ctx, &feat(&xd, layout), &feat(&jd, layout), 0.3, &og_opts, p(&og), own.cu_stream() as *mut c_void), FJ_OK, "{}", err());
                }
                let tol = if kind == Kind::Float { 1e-5 } else { 1e-2 };
                let scale = x.to_kind(Kind::Double).abs().max().double_value(&[]);
                close(&og, &oc, tol, tol * scale, &format!("perturb {sizes:?} {kind:?}"));
                close(&sg, &sc, 1e-5, 0.0, &format!("scales {sizes:?} {kind:?}"));
            }
        }
        unsafe {
            fj_context_destroy(cpu);
            fj_context_destroy(gpu_ctx);
        }
    }

    #[test]
    fn c_abi_device_context_rejects_host_pointers_short_buffers_and_bad_values() {
        let Some(d) = gpu() else { return };
        let c = context(0);
        let x = feature(&[2, 4, 4, 4], Kind::Float, 77);
        let xd = x.to_device(d);
        let out = Tensor::full([32], 7.0, (Kind::Float, d));
        unsafe {
            // Host memory given to a device context.
            let host = feat(&x, Layout::Nchw);
            assert_eq!(fj_token_tolerance(c, &host, 1, FJ_MEAN, p(&out), 32, null_mut()), FJ_ERR_ARG);
            assert!(err().contains("not CUDA device memory"), "{}", err());
            // A device buffer shorter than its dims say (a plain cuMemAlloc of 16 floats: torch's
            // caching allocator would hide it inside a larger block).
            let dev = featjnd::cuda::Device::get(0).unwrap();
            dev.ctx.bind_to_thread().unwrap();
            let short = cudarc::driver::result::malloc_sync(64).unwrap();
            let mut f = feat(&xd, Layout::Nchw);
            f.data = short as *const c_void;
            assert_eq!(fj_token_tolerance(c, &f, 1, FJ_MEAN, p(&out), 32, null_mut()), FJ_ERR_ARG);
            assert!(err().contains("needs 512 bytes"), "{}", err());
            cudarc::driver::result::free_sync(short).unwrap();
            // J <= 0 names its index; nothing but the op's own output is touched.
            let bad_j = xd.abs() + 0.5;
            let _ = bad_j.flatten(0, -1).narrow(0, 37, 1).fill_(-1.0);
            assert_eq!(fj_token_tolerance(c, &feat(&bad_j, Layout::Nchw), 1, FJ_MEAN, p(&out), 32, null_mut()), FJ_ERR_JND);
            assert!(err().contains("37"), "{}", err());
            // A NaN in x: quantize reports its index.
            let steps = Tensor::full([32], 0.1, (Kind::Float, d));
            let xn = xd.copy();
            let _ = xn.flatten(0, -1).narrow(0, 101, 1).fill_(f64::NAN);
            let sym = Tensor::zeros([2, 4, 4, 4], (Kind::Int8, d));
            let o = FjQuantizeOptions { size: std::mem::size_of::<FjQuantizeOptions>() as u32, bits: 8, patch: 1, pad0: 0, symbols: p(&sym), recon: null_mut(), token_sse: null_mut(), histogram: null_mut() };
            tch::Cuda::synchronize(0);
            assert_eq!(fj_quantize(c, &feat(&xn, Layout::Nchw), p(&steps), &o, null_mut(), null_mut()), FJ_ERR_NONFINITE);
            assert!(err().contains("101"), "{}", err());
            // Host steps for a device context.
            let hs = [0.1f32; 32];
            assert_eq!(fj_quantize(c, &feat(&xd, Layout::Nchw), hs.as_ptr(), &o, null_mut(), null_mut()), FJ_ERR_ARG);
            assert_eq!(fj_perturb(c, &feat(&xd, Layout::Nchw), null(), -1.0, null(), p(&xd), null_mut()), FJ_ERR_BUDGET);
            fj_context_destroy(c);
        }
    }
}
