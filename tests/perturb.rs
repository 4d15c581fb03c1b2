//! Perturbation at a matched NRMSE (SPEC §6): fast CPU path vs reference, exact NRMSE, seeds,
//! streams, zero samples.
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
    fn fast_matches_reference(samples in 1usize..4, len in prop::sample::select(vec![1usize, 7, 17, 1025, 8193, 20001]), seed: u64,
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
