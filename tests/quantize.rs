//! Fused quantize / dequantize (contract §4): fast CPU path vs reference (bit-identical symbols and
//! reconstructions), and the properties of a uniform scalar quantizer.
mod common;
use common::*;
use featjnd_kernels::cpu::{self, QuantOut, Symbols};
use featjnd_kernels::{reference, steps, Bits, Element, Reduce, Strategy, TokenGrid};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn steps_for(grid: &TokenGrid, seed: u64, budget: f64) -> Vec<f32> {
    let j = positive(grid.numel(), seed ^ 5, 0.05, 2.0);
    let jt = cpu::token_tolerance(&j, grid, Reduce::Mean).unwrap();
    steps::allocate(&jt, budget, Strategy::Jnd).unwrap()
}

fn check<E: Element>(grid: &TokenGrid, seed: u64, budget: f64, bits: Bits) -> Result<(), TestCaseError> {
    let x: Vec<E> = to(&randn(grid.numel(), seed, 2.0));
    let st = steps_for(grid, seed, budget);
    let n = x.len();
    let mut recon = vec![E::from_f32(0.0); n];
    let mut sse = vec![0.0f32; grid.tokens()];
    let (mut s8, mut s16) = (vec![0i8; n], vec![0i16; n]);
    let symbols = if bits == Bits::B8 { Symbols::I8(&mut s8) } else { Symbols::I16(&mut s16) };
    let out = QuantOut { symbols, recon: Some(&mut recon), token_sse: Some(&mut sse), histogram: true };
    let stats = cpu::quantize(&x, grid, &st, bits, out).unwrap();
    let r = reference::quantize(&x, grid, &st, bits);
    let sym: Vec<i32> = if bits == Bits::B8 { s8.iter().map(|&v| v as i32).collect() } else { s16.iter().map(|&v| v as i32).collect() };
    prop_assert_eq!(&sym, &r.symbols);
    prop_assert!(recon == r.recon, "reconstruction differs from the reference");
    prop_assert_eq!(stats.clamped, r.clamped);
    prop_assert_eq!(stats.histogram.as_ref().unwrap(), &r.histogram);
    for (t, (a, b)) in sse.iter().zip(&r.token_sse).enumerate() {
        prop_assert!(rel_close(*a as f64, *b, 1e-4, 1e-30), "token {} sse {} vs {}", t, a, b);
    }
    let total: f64 = r.token_sse.iter().sum();
    prop_assert!(rel_close(stats.total_sse, total, 1e-4, 1e-30));
    // |x − x̂| ≤ Δ/2 unless clamped.
    let qmax = bits.qmax() as i32;
    for i in 0..n {
        let d = st[grid.token_of(i)] as f64;
        let err = (x[i].to_f32() as f64 - r.recon[i].to_f32() as f64).abs();
        if sym[i].abs() < qmax {
            // the reconstruction is narrowed to E: allow its rounding on top of Δ/2
            let narrow = (r.recon[i].to_f32() as f64).abs() * if E::DTYPE == featjnd_kernels::Dtype::F32 { 1e-7 } else { 8e-3 };
            prop_assert!(err <= d / 2.0 * (1.0 + 1e-6) + narrow, "|x−x̂| = {} > Δ/2 = {}", err, d / 2.0);
        }
    }
    // Quantizing x̂ again returns x̂ (where narrowing to E keeps x̂ within Δ/2 of q·Δ).
    if E::DTYPE == featjnd_kernels::Dtype::F32 || bits == Bits::B8 {
        let mut again = vec![E::from_f32(0.0); n];
        cpu::quantize(&recon, grid, &st, bits, QuantOut { recon: Some(&mut again), ..Default::default() }).unwrap();
        prop_assert!(again == recon, "requantizing x̂ changed it");
    }
    // In place gives the same reconstruction.
    let mut xi = x.clone();
    cpu::quantize_in_place(&mut xi, grid, &st, bits, Symbols::None, None, false).unwrap();
    prop_assert!(xi == recon);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn fast_matches_reference(grid in grids(), seed: u64, budget in prop::sample::select(vec![1e-6, 1e-3, 0.05, 2.0]), wide: bool) {
        let bits = if wide { Bits::B16 } else { Bits::B8 };
        for_dtypes!(check, &grid, seed, budget, bits);
    }
}

#[test]
fn ties_round_to_even() {
    // Step 0.25: x = k·0.125 hits every half-integer x/Δ exactly.
    let g = TokenGrid::new(featjnd_kernels::FeatureShape::ntc(1, 1, 4001), 1).unwrap();
    let x: Vec<f32> = (-2000..=2000).map(|k| k as f32 * 0.125).collect();
    let mut sym = vec![0i16; x.len()];
    let mut recon = vec![0.0f32; x.len()];
    cpu::quantize(&x, &g, &[0.25], Bits::B16, QuantOut { symbols: Symbols::I16(&mut sym), recon: Some(&mut recon), ..Default::default() })
        .unwrap();
    for (i, &v) in x.iter().enumerate() {
        let want = (v / 0.25).round_ties_even();
        assert_eq!(sym[i] as f32, want, "x = {v}");
        assert_eq!(recon[i], want * 0.25);
        assert!(recon[i].to_bits() != (-0.0f32).to_bits(), "x̂ must never be -0");
    }
    assert_eq!(sym[2000 + 1], 0); // 0.125/0.25 = 0.5 -> 0
    assert_eq!(sym[2000 + 3], 2); // 1.5 -> 2
    assert_eq!(sym[2000 - 5], -2); // -2.5 -> -2
}

#[test]
fn clamping_counts_and_histogram_bins() {
    let g = TokenGrid::new(featjnd_kernels::FeatureShape::ntc(1, 2, 4), 1).unwrap();
    let x = [1000.0f32, -1000.0, 0.2, 3.0, 300.0, -300.0, 0.0, 255.4];
    let mut s = vec![0i16; 8];
    let st =
        cpu::quantize(&x, &g, &[1.0, 1.0], Bits::B16, QuantOut { symbols: Symbols::I16(&mut s), histogram: true, ..Default::default() })
            .unwrap();
    assert_eq!(st.clamped, 0);
    let h = st.histogram.unwrap();
    assert_eq!(h.len(), 512);
    assert_eq!(h[511], 4, "1000, -1000, 300, -300 land in the overflow bin");
    assert_eq!(h[255], 2); // 0.2 and 0.0
    assert_eq!(h[255 + 255], 1); // 255.4 -> 255
    let mut s8 = vec![0i8; 8];
    let st =
        cpu::quantize(&x, &g, &[1.0, 1.0], Bits::B8, QuantOut { symbols: Symbols::I8(&mut s8), histogram: true, ..Default::default() })
            .unwrap();
    assert_eq!(st.clamped, 5);
    assert_eq!(&s8[..2], &[127, -127]);
    assert_eq!(st.histogram.unwrap().len(), 255);
}
