//! Philox4x32-10 known answers (SPEC §5) and the counter/lane layout of the noise.
use featjnd_kernels::{philox, reference, NoiseKind};
use proptest::prelude::*;

#[test]
fn known_answers() {
    let cases: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        ([0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
        ([u32::MAX; 4], [u32::MAX; 2], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
        ([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0], [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]),
    ];
    for (ctr, key, want) in cases {
        assert_eq!(philox::philox4x32_10(ctr, key), want, "counter {ctr:08x?} key {key:08x?}");
    }
}

#[test]
fn seed_splits_into_key_low_high() {
    assert_eq!(philox::key_of(0x1234_5678_9abc_def0), [0x9abc_def0, 0x1234_5678]);
}

proptest! {
    #[test]
    fn fill_matches_per_element_reference(offset in 0u64..1_000_000, len in 1usize..300, seed: u64, stream: u32) {
        for kind in [NoiseKind::Uniform, NoiseKind::Gaussian] {
            let mut v = vec![0.0f32; len];
            philox::fill(&mut v, offset, seed, stream, kind);
            for (i, &x) in v.iter().enumerate() {
                let r = reference::noise_at(offset + i as u64, seed, stream, kind);
                match kind {
                    NoiseKind::Uniform => prop_assert_eq!(x.to_bits(), r.to_bits()),
                    NoiseKind::Gaussian => prop_assert!((x - r).abs() <= 1e-5 * r.abs() + 1e-6, "{} vs {}", x, r),
                }
            }
        }
    }

    #[test]
    fn different_streams_give_different_noise(seed: u64, s in 0u32..1000) {
        let (mut a, mut b) = (vec![0.0f32; 64], vec![0.0f32; 64]);
        philox::fill(&mut a, 0, seed, s, NoiseKind::Gaussian);
        philox::fill(&mut b, 0, seed, s + 1, NoiseKind::Gaussian);
        prop_assert!(a.iter().zip(&b).filter(|(x, y)| x != y).count() > 60);
    }
}

#[test]
fn noise_moments() {
    for kind in [NoiseKind::Uniform, NoiseKind::Gaussian] {
        let mut v = vec![0.0f32; 1 << 18];
        philox::fill(&mut v, 0, 7, 0, kind);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "{kind:?} mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "{kind:?} variance {var}");
    }
}

#[test]
fn permutation_is_a_permutation_and_seeded() {
    for t in [1usize, 2, 7, 17, 1025] {
        let p = philox::permutation(t, 42);
        let mut s = p.clone();
        s.sort_unstable();
        assert_eq!(s, (0..t as u32).collect::<Vec<_>>());
        assert_eq!(p, philox::permutation(t, 42));
    }
    assert_ne!(philox::permutation(1025, 1), philox::permutation(1025, 2));
}

#[test]
fn fastmath_matches_libm() {
    use featjnd_kernels::boxmuller;
    for i in 1..200_000u32 {
        let x = i as f64 / 200_000.0;
        let (a, b) = (boxmuller::ln(x), x.ln());
        assert!((a - b).abs() <= 1e-13 * b.abs().max(1e-3), "ln({x}) = {a} vs {b}");
        let th = x * std::f64::consts::TAU;
        let (c, s) = boxmuller::cos_sin(th);
        assert!((c - th.cos()).abs() <= 1e-15 && (s - th.sin()).abs() <= 1e-15, "cos/sin({th})");
    }
    // Near the zeros of cos, relative accuracy still holds (what the 1e-5 GPU comparison needs).
    let th = std::f32::consts::FRAC_PI_2 as f64;
    let (c, _) = boxmuller::cos_sin(th);
    assert!((c - th.cos()).abs() <= 1e-8 * th.cos().abs(), "{c} vs {}", th.cos());
    assert_eq!(boxmuller::ln(1.0), 0.0);
}
