//! GPU vs CPU: every CUDA kernel against the CPU path on the same inputs (bit-identical where
//! `docs/contract.md` says so). Each test prints why it skips where no usable GPU exists (CI has none).
use featjnd_kernels::ops::{self, Noise, QuantizeOptions};
use featjnd_kernels::{Bits, Layout, NoiseKind, Reduce, Strategy};
use tch::{Device, Kind, Tensor};

#[path = "common/gpu.rs"]
mod gpu_common;
use gpu_common::*;

#[test]
fn noise_gpu_matches_cpu() {
    let Some(d) = gpu() else { return };
    for (numel, offset) in [(1usize, 0u64), (7, 3), (1025, 6), (100_003, 1 << 33)] {
        for kind in [NoiseKind::Uniform, NoiseKind::Gaussian] {
            let spec = Noise { kind, seed: 0xfeed_beef_1234, subsequence: 3 };
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
        let (sg, qg) =
            ops::quantize_with_jnd(&x.to_device(d), &j.to_device(d), layout, patch, Reduce::Rms, 0.01, Strategy::Jnd, &opts).unwrap();
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
                    let spec = Noise { kind: noise, seed: 11 + i as u64, subsequence: 2 };
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
        Err(featjnd_kernels::Error::NonFinite { index, .. }) => assert_eq!(index, want),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    let jg = j.to_device(d);
    let _ = jg.get(0).get(2).get(1).get(1).fill_(0.0);
    match ops::token_tolerance(&jg, Layout::Nchw, 1, Reduce::Mean) {
        Err(featjnd_kernels::Error::Jnd { index, .. }) => assert_eq!(index, ((2) * 6 + 1) * 6 + 1),
        other => panic!("expected Jnd, got {other:?}"),
    }
    // In-place perturbation with a bad x leaves x untouched.
    let mut xp = xg.copy();
    let before = xp.copy();
    assert!(matches!(ops::perturb_(&mut xp, None, 0.1, Noise::default()), Err(featjnd_kernels::Error::NonFinite { .. })));
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
    let h = q.report.histogram.unwrap();
    assert_eq!(h.iter().sum::<u64>(), (t * k) as u64);
    drop(x);
    let x = Tensor::ones([1, t * k], (Kind::Half, d));
    // tch's `get` truncates indices to 32 bits (a NaN set with it lands at t*k - 1 - 2^32 + ...):
    // set the last element through `narrow`, which takes a 64-bit start.
    let _ = x.narrow(1, t * k - 1, 1).fill_(f64::NAN);
    let torch_at = x.isnan().flatten(0, -1).nonzero().view([-1]);
    assert_eq!(Vec::<i64>::try_from(torch_at.to_device(Device::Cpu)).unwrap(), vec![t * k - 1]);
    match ops::perturb(&x, None, 0.1, Noise::default()) {
        Err(featjnd_kernels::Error::NonFinite { index, .. }) => assert_eq!(index as i64, t * k - 1),
        other => panic!("expected NonFinite past 2^31, got {other:?}"),
    }
}

/// contract §7 mixed devices (only testable where a GPU exists). Added after the last GPU session:
/// not yet run on a GPU.
#[test]
fn mixed_devices_are_a_typed_error() {
    let Some(d) = gpu() else { return };
    let x = feature(&[1, 4, 4, 4], Kind::Float, 9);
    let j = jnd(&[1, 4, 4, 4], Kind::Float, 9);
    let jt = ops::token_tolerance(&j, Layout::Nchw, 1, Reduce::Mean).unwrap();
    let st = ops::allocate_steps(&jt, 0.01, Strategy::Jnd).unwrap();
    let r = ops::quantize(&x.to_device(d), Layout::Nchw, 1, &st, &QuantizeOptions::default());
    assert!(matches!(r, Err(featjnd_kernels::Error::MixedDevices(_))), "{r:?}");
    let r = ops::perturb(&x.to_device(d), Some(&j), 0.1, Noise::default());
    assert!(matches!(r, Err(featjnd_kernels::Error::MixedDevices(_))), "{r:?}");
}

// ---- the capped allocation (contract §3.5) ----

/// Every element of `a` within `n` f32 ulps of `b` (positive finite values: the bit patterns
/// order as the values, so the ulp distance is the difference of the patterns).
fn within_ulps(a: &Tensor, b: &Tensor, n: i64, what: &str) {
    let a = Vec::<f32>::try_from(a.to_device(Device::Cpu).contiguous()).unwrap();
    let b = Vec::<f32>::try_from(b.to_device(Device::Cpu).contiguous()).unwrap();
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (t, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(*x > 0.0 && x.is_finite() && *y > 0.0 && y.is_finite(), "{what}: step {t} = {x} vs {y}");
        let d = (x.to_bits() as i64 - y.to_bits() as i64).abs();
        assert!(d <= n, "{what}: step {t} is {x} on the GPU, {y} on the CPU ({d} ulps)");
    }
}

/// Caps spanning several orders of magnitude (some tokens far below their tolerance-scaled step,
/// so that both capped and free tokens occur), from Philox.
fn caps_for(t: i64, seed: i64) -> Tensor {
    let c = feature(&[t], Kind::Float, seed).abs() * 2.0 + 1e-3;
    let scale = jnd(&[t], Kind::Float, seed + 7).log10().round(); // roughly 10^-1 .. 10^0
    (c * Tensor::from(10.0f32).pow(&(scale * 3.0))).to_kind(Kind::Float)
}

fn nominal(steps: &Tensor) -> f64 {
    let s = steps.to_device(Device::Cpu).to_kind(Kind::Double);
    (&s * &s).mean(Kind::Double).double_value(&[]) / 12.0
}

#[test]
fn capped_steps_gpu_match_cpu() {
    let Some(d) = gpu() else { return };
    for (i, t) in [1i64, 7, 17, 1025, 5137].into_iter().enumerate() {
        let jt = jnd(&[t], Kind::Float, 40 + i as i64);
        let caps = caps_for(t, 40 + i as i64);
        let sc = (&caps * &caps).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]) / 12.0;
        // Far below saturation, near it (a few tokens free), just past it, far past it.
        for budget in [sc * 1e-4, sc * 0.05, sc * 0.6, sc * 0.99, sc * 1.01, sc * 50.0] {
            for beta in [1.0, 0.37] {
                let what = format!("T={t} D={budget:e} β={beta}");
                let c = ops::allocate_steps_capped(&jt, &caps, budget, beta).unwrap();
                let g = ops::allocate_steps_capped(&jt.to_device(d), &caps.to_device(d), budget, beta).unwrap();
                assert_eq!(g.device(), d, "{what}: steps on the input's device");
                // Bisection vs sort-and-sweep: one f32 ulp at most (contract §3.5).
                within_ulps(&g, &c, 1, &what);
                let m = nominal(&g);
                assert!((m / (budget * beta * beta) - 1.0).abs() <= 1e-5, "{what}: nominal MSE {m:e}");
                // No step above its cap times the saturated factor, none above its Jnd share.
                let reference = featjnd_kernels::reference::capped_steps(
                    &Vec::<f32>::try_from(&jt).unwrap(),
                    &Vec::<f32>::try_from(&caps).unwrap(),
                    budget,
                );
                if beta == 1.0 {
                    within_ulps(&g, &Tensor::from_slice(&reference), 2, &format!("{what} vs reference"));
                }
            }
        }
    }
}

#[test]
fn token_rms_and_caps_gpu_match_cpu() {
    let Some(d) = gpu() else { return };
    for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate() {
        for kind in KINDS {
            let x = feature(&sizes, kind, 600 + i as i64);
            let what = format!("{layout:?} {sizes:?} p{patch} {kind:?}");
            let rc = ops::token_rms(&x, layout, patch).unwrap();
            let rg = ops::token_rms(&x.to_device(d), layout, patch).unwrap();
            assert_eq!(rg.device(), d);
            // f32 sums in another order (contract §2).
            close(&rg, &rc, 1e-5, 0.0, &format!("token rms {what}"));
            let cc = ops::caps_from_rms(&rc, 2.0).unwrap();
            // From the same r_t, the caps are bit-identical (one max, two f32 multiplies).
            bits_eq(&ops::caps_from_rms(&rc.to_device(d), 2.0).unwrap(), &cc, &format!("caps {what}"));
            let cg = ops::caps_from_rms(&rg, 2.0).unwrap();
            close(&cg, &cc, 1e-5, 0.0, &format!("caps from the GPU rms {what}"));
        }
    }
    // A zero token gets the floor 2^-24·max, κ times.
    let x = Tensor::from_slice(&[0.0f32, 0.0, 3.0, 4.0]).reshape([1, 2, 2]);
    let r = ops::token_rms(&x.to_device(d), Layout::Ntc, 1).unwrap();
    let c = Vec::<f32>::try_from(ops::caps_from_rms(&r, 2.0).unwrap().to_device(Device::Cpu)).unwrap();
    let r1 = (12.5f32).sqrt();
    assert_eq!(c, vec![2.0 * (r1 * (1.0 / 16_777_216.0)), 2.0 * r1]);
}

#[test]
fn fused_capped_chain_on_gpu_matches_cpu() {
    let Some(d) = gpu() else { return };
    for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate() {
        for kind in KINDS {
            let x = feature(&sizes, kind, 700 + i as i64);
            let j = jnd(&sizes, kind, 700 + i as i64);
            let opts = QuantizeOptions::default();
            let what = format!("{layout:?} {sizes:?} p{patch} {kind:?}");
            // Unsaturated (x has RMS 3, caps ~6: D = 0.5 is well below) and saturated.
            for budget in [0.5, 1e3] {
                let (sc, qc) = ops::quantize_capped(&x, &j, layout, patch, Reduce::Mean, 2.0, budget, &opts).unwrap();
                let (sg, qg) =
                    ops::quantize_capped(&x.to_device(d), &j.to_device(d), layout, patch, Reduce::Mean, 2.0, budget, &opts).unwrap();
                // The token sums (J and x) run in another order on the device: 1e-5, not an ulp.
                close(&sg, &sc, 1e-5, 0.0, &format!("fused capped steps {what} D={budget}"));
                assert!((nominal(&sg) / budget - 1.0).abs() <= 1e-5, "nominal {what} D={budget}");
                assert!((qg.mse - qc.mse).abs() <= 1e-3 * qc.mse + 1e-12, "fused capped mse {} vs {} {what}", qg.mse, qc.mse);
                // Given the GPU's steps, the quantization is the plain one, bit for bit.
                let q = ops::quantize(&x.to_device(d), layout, patch, &sg, &opts).unwrap();
                bits_eq(q.symbols.as_ref().unwrap(), qg.symbols.as_ref().unwrap(), &format!("symbols {what}"));
                assert_eq!(q.histogram, qg.histogram, "histogram {what}");
            }
        }
    }
}

#[test]
fn capped_measured_budget_on_gpu() {
    let Some(d) = gpu() else { return };
    let sizes = [2i64, 32, 12, 12];
    let x = feature(&sizes, Kind::Float, 17).to_device(d);
    let j = jnd(&sizes, Kind::Float, 17).to_device(d);
    let jt = ops::token_tolerance(&j, Layout::Nchw, 1, Reduce::Mean).unwrap();
    let caps = ops::caps_from_rms(&ops::token_rms(&x, Layout::Nchw, 1).unwrap(), 2.0).unwrap();
    for budget in [0.5, 4.0] {
        let (st, m) = ops::allocate_steps_capped_measured(&x, Layout::Nchw, 1, &jt, &caps, budget, Bits::B8).unwrap();
        assert_eq!(st.device(), d);
        let q = ops::quantize(&x, Layout::Nchw, 1, &st, &QuantizeOptions::default()).unwrap();
        assert!((q.mse / budget - 1.0).abs() <= 1e-3, "measured {} for D={budget}", q.mse);
        assert!((m.measured_mse - q.mse).abs() <= 1e-9 * q.mse);
        // The CPU finds a β that also passes; the two need not be the same β, but both match D.
        let xc = x.to_device(Device::Cpu);
        let (_, mc) = ops::allocate_steps_capped_measured(
            &xc,
            Layout::Nchw,
            1,
            &jt.to_device(Device::Cpu),
            &caps.to_device(Device::Cpu),
            budget,
            Bits::B8,
        )
        .unwrap();
        assert!((mc.measured_mse / budget - 1.0).abs() <= 1e-3);
    }
}

#[test]
fn capped_gpu_errors_match_cpu() {
    use featjnd_kernels::Error;
    let Some(d) = gpu() else { return };
    // A non-finite x: the first index, from the token RMS and from the fused chain.
    let sizes = [2i64, 8, 6, 6];
    let x = feature(&sizes, Kind::Float, 3);
    let j = jnd(&sizes, Kind::Float, 3);
    let _ = x.get(1).get(3).get(2).get(4).fill_(f64::NAN);
    let _ = x.get(1).get(5).get(0).get(0).fill_(f64::NEG_INFINITY);
    let want = ((8 + 3) * 6 + 2) * 6 + 4;
    let (xg, jg) = (x.to_device(d), j.to_device(d));
    match ops::token_rms(&xg, Layout::Nchw, 1) {
        Err(Error::NonFinite { index, value }) => assert!(index == want && value.is_nan(), "{index} {value}"),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    match ops::quantize_capped(&xg, &jg, Layout::Nchw, 1, Reduce::Mean, 2.0, 0.1, &QuantizeOptions::default()) {
        Err(Error::NonFinite { index, .. }) => assert_eq!(index, want),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    // A bad J is reported before a bad x, as on the CPU.
    let _ = jg.get(0).get(1).get(0).get(0).fill_(-1.0);
    match ops::quantize_capped(&xg, &jg, Layout::Nchw, 1, Reduce::Mean, 2.0, 0.1, &QuantizeOptions::default()) {
        Err(Error::Jnd { index, .. }) => assert_eq!(index, 36),
        other => panic!("expected Jnd, got {other:?}"),
    }
    // NTC with a non-finite f16 element.
    let xn = feature(&[1, 5, 9], Kind::Half, 4);
    let _ = xn.get(0).get(3).get(7).fill_(f64::INFINITY);
    match ops::token_rms(&xn.to_device(d), Layout::Ntc, 1) {
        Err(Error::NonFinite { index, .. }) => assert_eq!(index, 3 * 9 + 7),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    // A zero feature: Arg on both devices, from the caps and from the fused chain.
    let z = Tensor::zeros([1, 4, 2, 2], (Kind::Float, Device::Cpu));
    let jz = jnd(&[1, 4, 2, 2], Kind::Float, 5);
    for dev in [Device::Cpu, d] {
        let r = ops::token_rms(&z.to_device(dev), Layout::Nchw, 1).unwrap();
        assert!(matches!(ops::caps_from_rms(&r, 2.0), Err(Error::Arg(_))), "{dev:?}");
        let q = ops::quantize_capped(
            &z.to_device(dev),
            &jz.to_device(dev),
            Layout::Nchw,
            1,
            Reduce::Mean,
            2.0,
            0.1,
            &QuantizeOptions::default(),
        );
        assert!(matches!(q, Err(Error::Arg(_))), "{dev:?}: {q:?}");
        assert!(matches!(ops::caps_from_rms(&r, f32::NAN), Err(Error::Arg(_))), "{dev:?}");
    }
    // Bad token tolerances and caps: the first index, the CPU's variants, on both devices.
    let jt = jnd(&[9], Kind::Float, 6);
    let caps = caps_for(9, 6);
    let (jbad, cbad) = (jt.copy(), caps.copy());
    let _ = jbad.get(5).fill_(f64::NAN);
    let _ = jbad.get(7).fill_(0.0);
    let _ = cbad.get(3).fill_(0.0);
    let _ = cbad.get(4).fill_(f64::INFINITY);
    for dev in [Device::Cpu, d] {
        let on = |t: &Tensor| t.to_device(dev);
        match ops::allocate_steps_capped(&on(&jbad), &on(&cbad), 0.1, 1.0) {
            Err(Error::Jnd { index, .. }) => assert_eq!(index, 5, "{dev:?}"),
            other => panic!("{dev:?}: expected Jnd, got {other:?}"),
        }
        match ops::allocate_steps_capped(&on(&jt), &on(&cbad), 0.1, 1.0) {
            Err(Error::Arg(m)) => assert!(m.contains("c[3]"), "{dev:?}: {m}"),
            other => panic!("{dev:?}: expected Arg, got {other:?}"),
        }
        let short = on(&caps).narrow(0, 0, 8);
        assert!(matches!(ops::allocate_steps_capped(&on(&jt), &short, 0.1, 1.0), Err(Error::Shape(_))), "{dev:?}");
        assert!(matches!(ops::allocate_steps_capped(&on(&jt), &on(&caps), -1.0, 1.0), Err(Error::Budget(_))), "{dev:?}");
    }
    assert!(matches!(ops::allocate_steps_capped(&jt.to_device(d), &caps, 0.1, 1.0), Err(Error::MixedDevices(_))));
}

// ---- the sync-free calls (contract §8): enqueue only, statistics in a caller workspace ----

/// Output buffers of a quantization on `dev`.
fn outs_on(x: &Tensor, tokens: i64, dev: Device) -> [Tensor; 3] {
    [Tensor::zeros(x.size(), (Kind::Int8, dev)), Tensor::zeros(x.size(), (x.kind(), dev)), Tensor::zeros([tokens], (Kind::Float, dev))]
}

fn bufs_of(o: &[Tensor; 3]) -> ops::QuantizeBuffers<'_> {
    ops::QuantizeBuffers { symbols: Some(&o[0]), recon: Some(&o[1]), token_sse: Some(&o[2]) }
}

#[test]
fn async_calls_on_gpu_match_the_synchronous_calls_and_cpu() {
    let Some(d) = gpu() else { return };
    let q = QuantizeOptions::default();
    for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate() {
        for kind in KINDS {
            let what = format!("{layout:?} {sizes:?} p{patch} {kind:?}");
            let (x, j) = (feature(&sizes, kind, 300 + i as i64), jnd(&sizes, kind, 300 + i as i64));
            let (xd, jd) = (x.to_device(d), j.to_device(d));
            let t = ops::grid_of(&x, layout, patch).unwrap().tokens() as i64;
            // The fused chain: its steps as the synchronous device chain's (Σj² is an atomic f64
            // sum: equal to an ulp), and given those steps, quantization bit-identical to the CPU.
            let (sync_steps, _) = ops::quantize_with_jnd(&xd, &jd, layout, patch, Reduce::Mean, 0.02, Strategy::Jnd, &q).unwrap();
            let o = outs_on(&xd, t, d);
            let st = Tensor::zeros([t], (Kind::Float, d));
            let mut ws = ops::stats_buffer(ops::quantize_with_jnd_stats_slots(Bits::B8, t as usize), d).unwrap();
            let _ = ws.fill_(-1); // the call zeroes what it needs on the stream
            let p = ops::quantize_with_jnd_async(&xd, &jd, layout, patch, Reduce::Mean, 0.02, Strategy::Jnd, &q, &bufs_of(&o), &st, &ws)
                .unwrap();
            let got = p.decode().unwrap();
            close(&st, &sync_steps, 3e-7, 0.0, &format!("fused steps {what}"));
            let cpu = ops::quantize(&x, layout, patch, &st.to_device(Device::Cpu), &q).unwrap();
            bits_eq(&o[0], cpu.symbols.as_ref().unwrap(), &format!("fused symbols {what}"));
            bits_eq(&o[1], cpu.recon.as_ref().unwrap(), &format!("fused recon {what}"));
            assert_eq!((got.clamped, &got.histogram), (cpu.clamped, &cpu.histogram), "{what}");
            assert!((got.total_sse - cpu.total_sse).abs() <= 1e-4 * cpu.total_sse.max(1e-30), "{what}");
            // The plain async quantization with the CPU's steps: bit-identical to the CPU.
            let steps = jnd(&[t], Kind::Float, i as i64) * 0.25;
            let o = outs_on(&xd, t, d);
            let qws = ops::stats_buffer(ops::quantize_stats_slots(Bits::B8), d).unwrap();
            let got = ops::quantize_async(&xd, layout, patch, &steps.to_device(d), &q, &bufs_of(&o), &qws).unwrap().decode().unwrap();
            let cpu = ops::quantize(&x, layout, patch, &steps, &q).unwrap();
            bits_eq(&o[0], cpu.symbols.as_ref().unwrap(), &format!("symbols {what}"));
            bits_eq(&o[1], cpu.recon.as_ref().unwrap(), &format!("recon {what}"));
            assert_eq!((got.clamped, &got.histogram), (cpu.clamped, &cpu.histogram), "{what}");
            // The async perturbation against the synchronous device call.
            let spec = Noise { kind: NoiseKind::Gaussian, seed: 11, subsequence: 2 };
            let (want, rep) = ops::perturb(&xd, Some(&jd), 0.2, spec).unwrap();
            let out = xd.zeros_like();
            let pws = ops::stats_buffer(ops::perturb_stats_slots(sizes[0] as usize), d).unwrap();
            let got = ops::perturb_async(&xd, Some(&jd), 0.2, spec, &out, &pws).unwrap().decode().unwrap();
            let tol = if kind == Kind::Float { 1e-5 } else { 1e-2 };
            close(&out, &want, tol, tol * x.to_kind(Kind::Double).abs().max().double_value(&[]), &format!("perturb {what}"));
            assert_eq!(got.zero_samples, rep.zero_samples, "{what}");
        }
    }
}

#[test]
fn async_chain_on_gpu_two_launch_and_fallback_forms_match_cpu() {
    // At most FJ_CHAIN_MAX_PARTS (512) token-stats blocks the chain runs as two launches without a
    // memset (NCHW: 32 tokens a block, NTC: 8); above, as memset + three launches. Both sides of
    // the boundary, with a workspace full of garbage and then reused without clearing: each call
    // must clear what it accumulates into itself.
    let Some(d) = gpu() else { return };
    let q = QuantizeOptions::default();
    for (layout, sizes) in [
        (Layout::Nchw, vec![1i64, 8, 128, 128]), // 16 384 tokens: 512 blocks, two launches
        (Layout::Nchw, vec![1, 8, 128, 129]),    // 16 512 tokens: 516 blocks, fallback
        (Layout::Ntc, vec![1, 4096, 16]),        // 512 blocks, two launches
        (Layout::Ntc, vec![1, 4097, 16]),        // 513 blocks, fallback
    ] {
        let what = format!("{layout:?} {sizes:?}");
        let (x, j) = (feature(&sizes, Kind::Float, 7), jnd(&sizes, Kind::Float, 7));
        let (xd, jd) = (x.to_device(d), j.to_device(d));
        let t = ops::grid_of(&x, layout, 1).unwrap().tokens() as i64;
        let (sync_steps, _) = ops::quantize_with_jnd(&xd, &jd, layout, 1, Reduce::Mean, 0.02, Strategy::Jnd, &q).unwrap();
        let mut ws = ops::stats_buffer(ops::quantize_with_jnd_stats_slots(Bits::B8, t as usize), d).unwrap();
        let _ = ws.fill_(-1);
        let mut first = None;
        for round in 0..2 {
            let o = outs_on(&xd, t, d);
            let st = Tensor::zeros([t], (Kind::Float, d));
            let got = ops::quantize_with_jnd_async(&xd, &jd, layout, 1, Reduce::Mean, 0.02, Strategy::Jnd, &q, &bufs_of(&o), &st, &ws)
                .unwrap()
                .decode()
                .unwrap();
            close(&st, &sync_steps, 3e-7, 0.0, &format!("steps {what} round {round}"));
            let cpu = ops::quantize(&x, layout, 1, &st.to_device(Device::Cpu), &q).unwrap();
            bits_eq(&o[0], cpu.symbols.as_ref().unwrap(), &format!("symbols {what} round {round}"));
            bits_eq(&o[1], cpu.recon.as_ref().unwrap(), &format!("recon {what} round {round}"));
            assert_eq!((got.clamped, &got.histogram), (cpu.clamped, &cpu.histogram), "{what} round {round}");
            // Same counts; the total error is an atomic f64 sum (its order varies between runs).
            match &first {
                None => first = Some((got.clamped, got.histogram.clone(), got.total_sse)),
                Some((c, h, e)) => {
                    assert_eq!((c, h), (&got.clamped, &got.histogram), "{what}: the second call on the same workspace differs");
                    assert!((e - got.total_sse).abs() <= 1e-9 * e.abs(), "{what}: total error {e} then {}", got.total_sse);
                }
            }
        }
    }
}

#[test]
fn async_errors_on_gpu_decode_like_the_cpu() {
    use featjnd_kernels::Error;
    let Some(d) = gpu() else { return };
    let sizes = [2i64, 5, 3, 4];
    let (x, j) = (feature(&sizes, Kind::Float, 1), jnd(&sizes, Kind::Float, 1));
    let _ = x.view([-1]).get(37).fill_(f64::NAN);
    let _ = j.view([-1]).get(11).fill_(-0.5);
    let t = 2 * 3 * 4;
    let q = QuantizeOptions::default();
    let steps = jnd(&[t], Kind::Float, 3);
    for (dev, ws_dev) in [(Device::Cpu, Device::Cpu), (d, d)] {
        let (xd, jd) = (x.to_device(dev), j.to_device(dev));
        let o = outs_on(&xd, t, dev);
        let st = Tensor::zeros([t], (Kind::Float, dev));
        let ws = ops::stats_buffer(ops::quantize_with_jnd_stats_slots(Bits::B8, t as usize), ws_dev).unwrap();
        let e = ops::quantize_with_jnd_async(&xd, &jd, Layout::Nchw, 1, Reduce::Mean, 0.1, Strategy::Jnd, &q, &bufs_of(&o), &st, &ws)
            .unwrap()
            .decode();
        assert!(matches!(e, Err(Error::Jnd { index: 11, .. })), "{dev:?}: {e:?}");
        let e = ops::quantize_async(&xd, Layout::Nchw, 1, &steps.to_device(dev), &q, &bufs_of(&o), &ws).unwrap().decode();
        assert!(matches!(e, Err(Error::NonFinite { index: 37, .. })), "{dev:?}: {e:?}");
        let out = xd.zeros_like();
        let spec = Noise { kind: NoiseKind::Uniform, seed: 1, subsequence: 0 };
        let e = ops::perturb_async(&xd, Some(&jd), 0.1, spec, &out, &ws).unwrap().decode();
        assert!(matches!(e, Err(Error::NonFinite { index: 37, .. })), "{dev:?}: {e:?}");
    }
    // A workspace on another device than x is refused before anything is enqueued.
    let (xd, o) = (x.to_device(d), outs_on(&x.to_device(d), t, d));
    let host_ws = ops::stats_buffer(ops::quantize_stats_slots(Bits::B8), Device::Cpu).unwrap();
    let e = ops::quantize_async(&xd, Layout::Nchw, 1, &steps.to_device(d), &q, &bufs_of(&o), &host_ws);
    assert!(matches!(e, Err(Error::Arg(_))), "{e:?}");
}

/// Contract §8: a bad step on CUDA is found by the quantization kernels (no host round trip) and
/// decodes to the CPU's error, token and value; the chain's overflowing uniform step likewise.
#[test]
fn async_bad_steps_on_gpu_decode_like_the_cpu() {
    let Some(d) = gpu() else { return };
    let sizes = [2i64, 5, 3, 4];
    let (x, j) = (feature(&sizes, Kind::Float, 1), jnd(&sizes, Kind::Float, 1));
    let _ = x.view([-1]).get(37).fill_(f64::NAN);
    let t = 2 * 3 * 4;
    let q = QuantizeOptions::default();
    let steps = jnd(&[t], Kind::Float, 3);
    let _ = steps.get(7).fill_(0.0);
    let _ = steps.get(9).fill_(f64::NAN);
    let mut seen = Vec::new();
    for dev in [Device::Cpu, d] {
        let (xd, jd) = (x.to_device(dev), j.to_device(dev));
        let o = outs_on(&xd, t, dev);
        let st = Tensor::zeros([t], (Kind::Float, dev));
        let ws = ops::stats_buffer(ops::quantize_with_jnd_stats_slots(Bits::B8, t as usize), dev).unwrap();
        let e = ops::quantize_async(&xd, Layout::Nchw, 1, &steps.to_device(dev), &q, &bufs_of(&o), &ws).unwrap().decode().unwrap_err();
        let c = ops::quantize_with_jnd_async(&xd, &jd, Layout::Nchw, 1, Reduce::Mean, 1e300, Strategy::Uniform, &q, &bufs_of(&o), &st, &ws)
            .unwrap()
            .decode()
            .unwrap_err();
        seen.push((format!("{e:?}"), format!("{c:?}")));
    }
    assert_eq!(seen[0], seen[1], "CPU and CUDA decode different errors");
    assert!(seen[0].0.contains("step Δ[7] = 0 "), "{:?}", seen[0]);
    assert!(seen[0].1.contains("step Δ[0] = inf"), "{:?}", seen[0]);
}

#[test]
fn a_batch_on_gpu_equals_single_calls_and_the_cpu() {
    let Some(d) = gpu() else { return };
    // 1, 7, 17, 1025 and 5137 elements among them; both layouts; 40 items, so two launches.
    let base = [
        (Layout::Ntc, vec![1i64, 1, 1], 1usize),
        (Layout::Ntc, vec![1, 1, 7], 1),
        (Layout::Nchw, vec![1, 17, 1, 1], 1),
        (Layout::Ntc, vec![1, 1, 1025], 1),
        (Layout::Nchw, vec![1, 11, 467, 1], 1),
        (Layout::Nchw, vec![2, 7, 6, 4], 2),
        (Layout::Ntc, vec![3, 33, 64], 1),
        (Layout::Nchw, vec![1, 64, 28, 28], 4),
    ];
    let shapes: Vec<_> = (0..40).map(|i| base[i % base.len()].clone()).collect();
    for kind in KINDS {
        let q = QuantizeOptions::default();
        let xs: Vec<Tensor> = shapes.iter().enumerate().map(|(i, (_, s, _))| feature(s, kind, 500 + i as i64)).collect();
        let ts: Vec<i64> = shapes.iter().zip(&xs).map(|((l, _, p), x)| ops::grid_of(x, *l, *p).unwrap().tokens() as i64).collect();
        let steps: Vec<Tensor> = ts.iter().enumerate().map(|(i, &t)| jnd(&[t], Kind::Float, i as i64) * 0.2).collect();
        let (xg, sg): (Vec<Tensor>, Vec<Tensor>) =
            (xs.iter().map(|x| x.to_device(d)).collect(), steps.iter().map(|s| s.to_device(d)).collect());
        let outs: Vec<[Tensor; 3]> = xg.iter().zip(&ts).map(|(x, &t)| outs_on(x, t, d)).collect();
        let items: Vec<ops::QuantizeItem> = (0..xs.len())
            .map(|i| ops::QuantizeItem { x: &xg[i], layout: shapes[i].0, patch: shapes[i].2, steps: &sg[i], bufs: bufs_of(&outs[i]) })
            .collect();
        let ws = ops::stats_buffer(ops::quantize_batch_stats_slots(Bits::B8, items.len()), d).unwrap();
        let got = ops::quantize_batch_async(&items, &q, &ws).unwrap().decode();
        for (i, g) in got.into_iter().enumerate() {
            let g = g.unwrap();
            let what = format!("item {i} {:?} {kind:?}", shapes[i].1);
            let one = outs_on(&xg[i], ts[i], d);
            let ows = ops::stats_buffer(ops::quantize_stats_slots(Bits::B8), d).unwrap();
            let single = ops::quantize_async(&xg[i], shapes[i].0, shapes[i].2, &sg[i], &q, &bufs_of(&one), &ows).unwrap().decode().unwrap();
            for k in 0..3 {
                bits_eq(&outs[i][k], &one[k], &format!("{what} output {k}"));
            }
            assert_eq!((g.clamped, &g.histogram), (single.clamped, &single.histogram), "{what}");
            let cpu = ops::quantize(&xs[i], shapes[i].0, shapes[i].2, &steps[i], &q).unwrap();
            bits_eq(&outs[i][0], cpu.symbols.as_ref().unwrap(), &format!("{what} vs cpu"));
            assert!((g.total_sse - cpu.total_sse).abs() <= 1e-4 * cpu.total_sse.max(1e-30), "{what}");
        }
    }
}

#[test]
fn a_perturbation_batch_on_gpu_equals_single_calls() {
    let Some(d) = gpu() else { return };
    // 40 items (two chunks of launches), 1 to 5137 elements per sample, with and without J.
    let base: [Vec<i64>; 6] = [vec![1, 1], vec![1, 7], vec![2, 17], vec![1, 1025], vec![3, 5137], vec![2, 7, 5, 3]];
    for kind in KINDS {
        let shapes: Vec<&Vec<i64>> = (0..40).map(|i| &base[i % base.len()]).collect();
        let xs: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| feature(s, kind, 700 + i as i64).to_device(d)).collect();
        let js: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| jnd(s, kind, 700 + i as i64).to_device(d)).collect();
        let outs: Vec<Tensor> = xs.iter().map(|x| x.zeros_like()).collect();
        let items: Vec<ops::PerturbItem> = (0..xs.len())
            .map(|i| ops::PerturbItem {
                x: &xs[i],
                jnd: (i % 2 == 0).then_some(&js[i]),
                nrmse: 0.02 * (i + 1) as f64,
                noise: Noise { kind: if i % 3 == 0 { NoiseKind::Uniform } else { NoiseKind::Gaussian }, seed: i as u64, subsequence: 1 },
                out: &outs[i],
            })
            .collect();
        let ws = ops::stats_buffer(ops::perturb_batch_stats_slots(&items), d).unwrap();
        let got = ops::perturb_batch_async(&items, &ws).unwrap().decode();
        for (i, (it, g)) in items.iter().zip(got).enumerate() {
            let what = format!("item {i} {:?} {kind:?}", shapes[i]);
            let one = it.x.zeros_like();
            let ows = ops::stats_buffer(ops::perturb_stats_slots(it.x.size()[0] as usize), d).unwrap();
            let rep = ops::perturb_async(it.x, it.jnd, it.nrmse, it.noise, &one, &ows).unwrap().decode().unwrap();
            let g = g.unwrap();
            // The same kernels on the same data; the per-sample norms are atomic f64 sums, so a
            // scale may differ in its last bit between two runs.
            close(&Tensor::from_slice(&g.scales), &Tensor::from_slice(&rep.scales), 1e-6, 0.0, &format!("{what}: scales"));
            assert_eq!(g.zero_samples, rep.zero_samples, "{what}");
            let tol = if kind == Kind::Float { 1e-5 } else { 1e-2 };
            close(&outs[i], &one, tol, tol * it.x.to_kind(Kind::Double).abs().max().double_value(&[]), &what);
        }
    }
}
