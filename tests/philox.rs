//! Philox4x32-10 known answers (contract §5) and the counter/lane layout of the noise.
use featjnd_kernels::philox::Isa;
use featjnd_kernels::{philox, reference, NoiseKind};
use proptest::prelude::*;

/// The generator builds this CPU runs (the portable one always).
fn isas() -> Vec<Isa> {
    let v: Vec<Isa> = [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|i| i.available()).collect();
    eprintln!("noise builds under test: {v:?}");
    v
}

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
        for isa in isas() {
            for kind in [NoiseKind::Uniform, NoiseKind::Gaussian] {
                let mut v = vec![0.0f32; len];
                philox::fill_isa(isa, &mut v, offset, seed, stream, kind);
                for (i, &x) in v.iter().enumerate() {
                    let r = reference::noise_at(offset + i as u64, seed, stream, kind);
                    match kind {
                        NoiseKind::Uniform => prop_assert_eq!(x.to_bits(), r.to_bits(), "{:?} element {}", isa, i),
                        NoiseKind::Gaussian => prop_assert!(contract_close(x, r as f64), "{:?} element {}: {} vs {}", isa, i, x, r),
                    }
                }
            }
        }
    }

    #[test]
    fn simd_builds_agree_bit_for_bit(offset in 0u64..1_000_000, len in 1usize..700, seed: u64, stream: u32) {
        // AVX2 and AVX-512 compute the same words and convert them with the same code: identical
        // Gaussian noise too. The portable build matches them bit for bit on uniform noise.
        for kind in [NoiseKind::Uniform, NoiseKind::Gaussian] {
            let mut want = vec![0.0f32; len];
            philox::fill_isa(Isa::Avx2, &mut want, offset, seed, stream, kind);
            for isa in isas() {
                if kind == NoiseKind::Gaussian && isa == Isa::Portable {
                    continue;
                }
                let mut v = vec![0.0f32; len];
                philox::fill_isa(isa, &mut v, offset, seed, stream, kind);
                prop_assert!(v.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{:?} {:?}", isa, kind);
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

/// The f64 Box–Muller of the reference (`reference::noise_at`) for one pair.
fn bm_f64(u1: f32, u2: f32) -> (f64, f64) {
    let rad = (-2.0 * (u1 as f64).ln()).sqrt();
    let th = (std::f32::consts::TAU * u2) as f64;
    (rad * th.cos(), rad * th.sin())
}

/// The contract's Gaussian tolerance (§5.3).
fn contract_close(a: f32, b: f64) -> bool {
    (a as f64 - b).abs() <= 1e-5 * b.abs() + 1e-6
}

#[test]
fn f32_box_muller_within_tolerance_for_every_u1_and_u2() {
    use featjnd_kernels::boxmuller;
    // Every 24-bit u1 word once, paired with u2 word `m·2654435761 mod 2^24` (a bijection), so
    // every u1 (from 2^−25 up to the value that rounds to 1) and every θ is met once, through the
    // generator's build (AVX2+FMA here) and every 7th pair through the portable scalar one.
    const N: usize = 1 << 24;
    let u1: Vec<f32> = (0..N as u32).map(|m| philox::u1_of(m << 8)).collect();
    let u2: Vec<f32> = (0..N as u32).map(|m| philox::u01(m.wrapping_mul(2_654_435_761) << 8)).collect();
    let (mut c, mut s) = (vec![0.0f32; N], vec![0.0f32; N]);
    boxmuller::box_muller_slices(&u1, &u2, &mut c, &mut s);
    let (mut worst_rel, mut worst_frac) = (0.0f64, 0.0f64);
    for i in 0..N {
        let (wc, ws) = bm_f64(u1[i], u2[i]);
        assert!(contract_close(c[i], wc) && contract_close(s[i], ws), "u1 {} u2 {}: ({}, {}) vs ({wc}, {ws})", u1[i], u2[i], c[i], s[i]);
        for (a, b) in [(c[i] as f64, wc), (s[i] as f64, ws)] {
            let d = (a - b).abs();
            worst_frac = worst_frac.max(d / (1e-5 * b.abs() + 1e-6));
            if b.abs() > 1e-3 {
                worst_rel = worst_rel.max(d / b.abs());
            }
        }
        if i % 7 == 0 {
            let (a, b) = boxmuller::box_muller(u1[i], u2[i]);
            assert!(contract_close(a, wc) && contract_close(b, ws), "scalar: u1 {} u2 {}: ({a}, {b}) vs ({wc}, {ws})", u1[i], u2[i]);
        }
    }
    // A few f32 ulps (2.4e-7 and 2% when written), far inside the contract's tolerance.
    assert!(worst_rel < 1e-6 && worst_frac < 0.1, "worst relative error {worst_rel:e}, worst fraction of the tolerance {worst_frac:e}");
}

#[test]
fn box_muller_at_the_ends_of_u1() {
    use featjnd_kernels::boxmuller;
    // u1 = 2^−25 (the largest radius), the next values, and the top words: u(r0) + 2^−25 rounds
    // to exactly 1 for the all-ones word, and then both values are 0 (contract §5.3).
    let max = (50.0f64 * std::f64::consts::LN_2).sqrt();
    for m in [0u32, 1, 2, 3, 1 << 12, (1 << 24) - 3, (1 << 24) - 2, (1 << 24) - 1] {
        for q in [0u32, 1, 1 << 22, 1 << 23, 3 << 22, (1 << 24) - 1] {
            let (r0, r1) = (m << 8 | 0xff, q << 8);
            let (u1, u2) = (philox::u1_of(r0), philox::u01(r1));
            let (wc, ws) = bm_f64(u1, u2);
            let (a, b) = philox::box_muller(r0, r1);
            assert!(contract_close(a, wc) && contract_close(b, ws), "m {m} q {q}: ({a}, {b}) vs ({wc}, {ws})");
            let (mut c, mut s) = ([0.0f32; 8], [0.0f32; 8]);
            boxmuller::box_muller_slices(&[u1; 8], &[u2; 8], &mut c, &mut s);
            assert!(contract_close(c[0], wc) && contract_close(s[0], ws), "SIMD m {m} q {q}: ({}, {}) vs ({wc}, {ws})", c[0], s[0]);
            assert!((a as f64).hypot(b as f64) <= max * (1.0 + 1e-6));
            if m == (1 << 24) - 1 {
                assert_eq!(u1, 1.0);
                assert!(a == 0.0 && b == 0.0 && c[0] == 0.0 && s[0] == 0.0, "u1 = 1 gives ({a}, {b}), SIMD ({}, {})", c[0], s[0]);
            }
        }
    }
    assert_eq!(boxmuller::ln(1.0), 0.0);
}

#[test]
fn fast_ln_and_cos_sin_match_libm() {
    use featjnd_kernels::boxmuller;
    for m in (0u32..1 << 24).step_by(3) {
        let x = philox::u1_of(m << 8);
        let (a, b) = (boxmuller::ln(x) as f64, (x as f64).ln());
        assert!((a - b).abs() <= 4.0 * f32::EPSILON as f64 * b.abs() + 1e-12, "ln({x}) = {a} vs {b}");
        let th = std::f32::consts::TAU * philox::u01(m << 8);
        let (c, s) = boxmuller::cos_sin(th);
        let (wc, ws) = ((th as f64).cos(), (th as f64).sin());
        assert!((c as f64 - wc).abs() <= 2e-7 && (s as f64 - ws).abs() <= 2e-7, "cos/sin({th}) = ({c}, {s}) vs ({wc}, {ws})");
    }
}

#[test]
fn fill_is_the_same_however_the_range_is_split() {
    // Batches start at the call's first block: any split of a range must give the same bits.
    let (seed, sub) = (0xdead_beef_u64, 9u32);
    for isa in isas() {
        for kind in [NoiseKind::Uniform, NoiseKind::Gaussian] {
            let mut whole = vec![0.0f32; 1000];
            philox::fill_isa(isa, &mut whole, 13, seed, sub, kind);
            for cuts in [vec![1usize, 2, 3], vec![63, 64, 65, 129], vec![7, 500, 999]] {
                let mut parts = vec![0.0f32; 1000];
                let mut lo = 0;
                for hi in cuts.into_iter().chain([1000]) {
                    philox::fill_isa(isa, &mut parts[lo..hi], 13 + lo as u64, seed, sub, kind);
                    lo = hi;
                }
                assert!(parts.iter().zip(&whole).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?} {kind:?}");
            }
        }
    }
}

#[test]
fn fill_across_the_32_bit_block_boundary_and_extreme_keys() {
    // Block counters whose low word wraps (c1 = g >> 32 becomes 1 inside a batch), the largest
    // seed and subsequence, and a start inside a block, on every build.
    for (offset, seed, sub) in [(4 * ((1u64 << 32) - 9) + 3, u64::MAX, u32::MAX), (4 * (1u64 << 32) - 1, 0, 0), (u64::MAX / 8, 42, 7)] {
        for (isa, kind) in isas().into_iter().flat_map(|i| [(i, NoiseKind::Uniform), (i, NoiseKind::Gaussian)]) {
            let mut v = vec![0.0f32; 301];
            philox::fill_isa(isa, &mut v, offset, seed, sub, kind);
            for (i, &x) in v.iter().enumerate() {
                let r = reference::noise_at(offset + i as u64, seed, sub, kind);
                match kind {
                    NoiseKind::Uniform => assert_eq!(x.to_bits(), r.to_bits(), "{isa:?} element {i}"),
                    NoiseKind::Gaussian => assert!(contract_close(x, r as f64), "{isa:?} element {i}: {x} vs {r}"),
                }
            }
        }
    }
}
