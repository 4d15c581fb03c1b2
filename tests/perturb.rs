//! Perturbation at a matched NRMSE (contract §6): fast CPU path vs reference, exact NRMSE, seeds,
//! streams, zero samples; odd sizes for every dtype and both forms (out of place: the noise stored
//! in an f32 output or regenerated for f16/bf16; in place: regenerated), through the slice API and
//! the tensor API with NCHW and NTC shapes. Deterministic inputs (Philox), never torch's RNG.
mod common;
use common::*;
use featjnd_kernels::cpu::{self, perturb::NoiseSpec};
use featjnd_kernels::{reference, Element, NoiseKind};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn nrmse<E: Element>(x: &[E], y: &[E], samples: usize) -> Vec<f64> {
    let len = x.len() / samples;
    (0..samples)
        .map(|n| {
            let r = n * len..(n + 1) * len;
            let d: f64 = r.clone().map(|i| (y[i].to_f32() as f64 - x[i].to_f32() as f64).powi(2)).sum();
            let e: f64 = r.map(|i| (x[i].to_f32() as f64).powi(2)).sum();
            (d / e).sqrt()
        })
        .collect()
}

fn check<E: Element>(samples: usize, len: usize, seed: u64, r: f64, kind: NoiseKind, with_j: bool) -> Result<(), TestCaseError> {
    let x: Vec<E> = to(&randn(samples * len, seed, 3.0));
    let j: Vec<E> = to(&positive(samples * len, seed ^ 1, 0.01, 4.0));
    let jv = with_j.then_some(j.as_slice());
    let spec = NoiseSpec { kind, seed, subsequence: 5 };
    let mut out = vec![E::from_f32(0.0); x.len()];
    let rep = cpu::perturb(&x, jv, samples, r, spec, &mut out).unwrap();
    let (want, scales) = reference::perturb(&x, jv, samples, r, seed, 5, kind);
    for (a, b) in rep.scales.iter().zip(&scales) {
        prop_assert!(rel_close(*a as f64, *b, 2e-5, 0.0), "scale {} vs {}", a, b);
    }
    let tol = if E::DTYPE == featjnd_kernels::Dtype::F32 { 2e-5 } else { 8e-3 };
    for (i, (a, b)) in out.iter().zip(&want).enumerate() {
        let (a, b) = (a.to_f32() as f64, b.to_f32() as f64);
        prop_assert!(rel_close(a, b, tol, tol * 3.0 * r.max(0.1)), "x'[{}] {} vs {}", i, a, b);
    }
    if E::DTYPE == featjnd_kernels::Dtype::F32 && r > 0.0 && len > 1 {
        for got in nrmse(&x, &out, samples) {
            prop_assert!(rel_close(got, r, 1e-5, 0.0), "measured NRMSE {} for {}", got, r);
        }
    }
    // Same seed, same bits; in place gives the same output.
    let mut again = x.clone();
    cpu::perturb_in_place(&mut again, jv, samples, r, spec).unwrap();
    prop_assert!(again == out);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn fast_matches_reference(samples in 1usize..4, len in prop::sample::select(vec![1usize, 7, 17, 1025, 5137, 8193, 20001]), seed: u64,
                              r in prop::sample::select(vec![0.0, 0.05, 0.3, 1.0]), uniform: bool, with_j: bool) {
        let kind = if uniform { NoiseKind::Uniform } else { NoiseKind::Gaussian };
        for_dtypes!(check, samples, len, seed, r, kind, with_j);
    }
}

#[test]
fn different_stream_different_noise_and_zero_sample_unchanged() {
    let mut x = randn(3 * 100, 4, 1.0);
    x[100..200].fill(0.0);
    let mut a = vec![0.0f32; 300];
    let mut b = vec![0.0f32; 300];
    let r1 = cpu::perturb(&x, None, 3, 0.2, NoiseSpec { kind: NoiseKind::Gaussian, seed: 1, subsequence: 0 }, &mut a).unwrap();
    cpu::perturb(&x, None, 3, 0.2, NoiseSpec { kind: NoiseKind::Gaussian, seed: 1, subsequence: 1 }, &mut b).unwrap();
    assert!(a.iter().zip(&b).filter(|(p, q)| p != q).count() > 150);
    assert_eq!(r1.zero_samples, vec![1]);
    assert_eq!(r1.scales[1], 0.0);
    assert_eq!(&a[100..200], &x[100..200]);
}

/// The brief's odd sizes, every dtype, both noises, with and without J, both forms (`check` runs
/// out of place against the reference and in place against out of place, bit for bit).
#[test]
fn odd_sizes_every_dtype_both_forms() {
    let run = || -> Result<(), TestCaseError> {
        for (k, &len) in [1usize, 7, 17, 1025, 5137].iter().enumerate() {
            for samples in [1usize, 2, 3] {
                for (kind, with_j, r) in [
                    (NoiseKind::Gaussian, true, 0.05),
                    (NoiseKind::Gaussian, false, 1.0),
                    (NoiseKind::Uniform, true, 0.3),
                    (NoiseKind::Uniform, false, 0.05),
                ] {
                    let seed = 0x5eed_0000 + (k * 16 + samples) as u64;
                    for_dtypes!(check, samples, len, seed, r, kind, with_j);
                }
            }
        }
        Ok(())
    };
    run().unwrap();
}

/// A tensor large enough for pass 1 to stream `J ⊙ ξ` to the output (x, J and x' together above
/// 48 MiB), with samples of odd length so that chunks start unaligned: same answer as the
/// reference, and as in place (which regenerates the noise) bit for bit.
#[test]
fn streamed_noise_matches_reference_and_in_place() {
    let (samples, len) = (3usize, 1_398_103usize);
    let x = randn(samples * len, 21, 2.0);
    let j = positive(samples * len, 22, 0.05, 3.0);
    for kind in [NoiseKind::Gaussian, NoiseKind::Uniform] {
        let spec = NoiseSpec { kind, seed: 99, subsequence: 3 };
        let mut out = vec![0.0f32; x.len()];
        let rep = cpu::perturb(&x, Some(&j), samples, 0.2, spec, &mut out).unwrap();
        let (want, scales) = reference::perturb(&x, Some(&j), samples, 0.2, 99, 3, kind);
        for (a, b) in rep.scales.iter().zip(&scales) {
            assert!(rel_close(*a as f64, *b, 2e-5, 0.0), "scale {a} vs {b}");
        }
        let bad = out.iter().zip(&want).position(|(&a, &b)| !rel_close(a as f64, b as f64, 2e-5, 2e-5 * 3.0 * 0.2));
        assert!(bad.is_none(), "{kind:?}: x'[{}] {} vs {}", bad.unwrap(), out[bad.unwrap()], want[bad.unwrap()]);
        let mut again = x.clone();
        cpu::perturb_in_place(&mut again, Some(&j), samples, 0.2, spec).unwrap();
        assert!(again.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "{kind:?}: in place differs");
    }
}

/// Refused inputs leave `x` untouched in place, and out of place report the first bad index of the
/// stored-noise path as of the regenerating one.
#[test]
fn bad_values_are_found_on_every_path() {
    for (bad_x, bad_j) in
        [(Some((1usize, 1030usize, f32::NAN)), None), (None, Some((0usize, 7usize, 0.0f32))), (None, Some((2, 5000, f32::INFINITY)))]
    {
        let (samples, len) = (3usize, 5137usize);
        let mut x = randn(samples * len, 5, 1.0);
        let mut j = positive(samples * len, 6, 0.1, 1.0);
        if let Some((n, i, v)) = bad_x {
            x[n * len + i] = v;
        }
        if let Some((n, i, v)) = bad_j {
            j[n * len + i] = v;
        }
        let spec = NoiseSpec::default();
        let want = bad_x.or(bad_j).map(|(n, i, _)| n * len + i).unwrap();
        let index = |e: featjnd_kernels::Error| match e {
            featjnd_kernels::Error::NonFinite { index, .. } | featjnd_kernels::Error::Jnd { index, .. } => index,
            other => panic!("{other:?}"),
        };
        let mut out = vec![0.0f32; x.len()];
        assert_eq!(index(cpu::perturb(&x, Some(&j), samples, 0.1, spec, &mut out).unwrap_err()), want);
        let mut out16 = vec![half::f16::ZERO; x.len()];
        let (x16, j16): (Vec<half::f16>, Vec<half::f16>) = (to(&x), to(&j));
        assert_eq!(index(cpu::perturb(&x16, Some(&j16), samples, 0.1, spec, &mut out16).unwrap_err()), want);
        let mut xi = x.clone();
        assert_eq!(index(cpu::perturb_in_place(&mut xi, Some(&j), samples, 0.1, spec).unwrap_err()), want);
        assert!(xi.iter().zip(&x).all(|(a, b)| a.to_bits() == b.to_bits()), "in place wrote on error");
    }
}

/// The tensor API on NCHW and NTC shapes whose per-sample sizes are the odd sizes above: the
/// allocating, `_into` and in-place forms for every dtype against the reference.
#[cfg(feature = "torch")]
#[test]
fn tensor_api_nchw_and_ntc_every_dtype_and_form() {
    use featjnd_kernels::ops::{self, Noise};
    use tch::{Kind, Tensor};
    let shapes: [&[i64]; 10] = [
        &[2, 1, 1, 1],
        &[3, 7, 1, 1],
        &[1, 1, 17, 1],
        &[2, 25, 41, 1],
        &[2, 11, 1, 467],
        &[2, 1, 1],
        &[1, 7, 1],
        &[3, 1, 17],
        &[2, 25, 41],
        &[1, 11, 467],
    ];
    fn values<E: Element>(t: &Tensor) -> Vec<E> {
        let v: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap();
        v.iter().map(|&a| E::from_f32(a)).collect()
    }
    fn one<E: Element>(shape: &[i64], kind: Kind, seed: u64, noise: NoiseKind, with_j: bool) {
        let numel: i64 = shape.iter().product();
        let samples = shape[0] as usize;
        let x = Tensor::from_slice(&randn(numel as usize, seed, 1.5)).reshape(shape).to_kind(kind);
        let j = Tensor::from_slice(&positive(numel as usize, seed ^ 7, 0.05, 2.0)).reshape(shape).to_kind(kind);
        let (xv, jv) = (values::<E>(&x), values::<E>(&j));
        let jt = with_j.then_some(&j);
        let spec = Noise { kind: noise, seed, subsequence: 2 };
        let (want, _) = reference::perturb(&xv, with_j.then_some(jv.as_slice()), samples, 0.1, seed, 2, noise);
        let (a, _) = ops::perturb(&x, jt, 0.1, spec).unwrap();
        let b = x.empty_like();
        ops::perturb_into(&x, jt, 0.1, spec, &b).unwrap();
        let mut c = x.copy();
        ops::perturb_(&mut c, jt, 0.1, spec).unwrap();
        let tol = if E::DTYPE == featjnd_kernels::Dtype::F32 { 2e-5 } else { 8e-3 };
        for (form, t) in [("perturb", &a), ("perturb_into", &b), ("perturb_", &c)] {
            assert_eq!(t.size(), shape, "{form}");
            let got = values::<E>(t);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let (g, w) = (g.to_f32() as f64, w.to_f32() as f64);
                assert!(rel_close(g, w, tol, tol * 0.3), "{form} {shape:?} {kind:?} {noise:?} J={with_j}: x'[{i}] {g} vs {w}");
            }
        }
        // The three forms agree bit for bit.
        let (va, vb, vc) = (values::<E>(&a), values::<E>(&b), values::<E>(&c));
        assert!(va == vb && vb == vc, "{shape:?} {kind:?}: forms differ");
    }
    for (k, shape) in shapes.iter().enumerate() {
        for (noise, with_j) in [(NoiseKind::Gaussian, true), (NoiseKind::Uniform, false), (NoiseKind::Uniform, true)] {
            let seed = 1000 + k as u64;
            one::<f32>(shape, Kind::Float, seed, noise, with_j);
            one::<half::f16>(shape, Kind::Half, seed, noise, with_j);
            one::<half::bf16>(shape, Kind::BFloat16, seed, noise, with_j);
        }
    }
}
