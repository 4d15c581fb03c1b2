//! Token tolerance (contract §2): the fast CPU path against the reference over random grids and dtypes.
mod common;
use common::*;
use featjnd_kernels::{cpu, reference, Element, Reduce, TokenGrid};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn check<E: Element>(grid: &TokenGrid, seed: u64) -> Result<(), TestCaseError> {
    let j: Vec<E> = to(&positive(grid.numel(), seed, 0.01, 5.0));
    for reduce in [Reduce::Mean, Reduce::Rms, Reduce::Min] {
        let fast = cpu::token_tolerance(&j, grid, reduce).unwrap();
        let slow = reference::token_tolerance(&j, grid, reduce);
        prop_assert_eq!(fast.len(), grid.tokens());
        for (t, (a, b)) in fast.iter().zip(&slow).enumerate() {
            if reduce == Reduce::Min {
                prop_assert_eq!(a.to_bits(), b.to_bits(), "min, token {}", t);
            } else {
                prop_assert!(rel_close(*a as f64, *b as f64, 2e-6, 0.0), "{:?} token {}: {} vs {}", reduce, t, a, b);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn fast_matches_reference(grid in grids(), seed: u64) {
        for_dtypes!(check, &grid, seed);
    }
}

#[test]
fn known_answer_nchw_patch2() {
    // [1, 2, 2, 4] with p = 2: two tokens of K = 8.
    let j: Vec<f32> = (1..=16).map(|v| v as f32).collect();
    let g = TokenGrid::new(featjnd_kernels::FeatureShape::nchw(1, 2, 2, 4), 2).unwrap();
    let t = cpu::token_tolerance(&j, &g, Reduce::Mean).unwrap();
    // token 0: channel 0 {1,2,5,6}, channel 1 {9,10,13,14} -> 60/8
    assert_eq!(t, vec![7.5, 9.5]);
    assert_eq!(cpu::token_tolerance(&j, &g, Reduce::Min).unwrap(), vec![1.0, 3.0]);
}
