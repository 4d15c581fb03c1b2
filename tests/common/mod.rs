//! Shared test helpers: random features from fresh seeds, awkward shapes, dtype sweeps.
#![allow(dead_code)]
pub mod exec;

use featjnd_kernels::{philox, Element, FeatureShape, NoiseKind, TokenGrid};
use proptest::prelude::*;

/// Random grids with odd sizes: NCHW with patch 1–4 and NTC with C up to 1025.
pub fn grids() -> impl Strategy<Value = TokenGrid> {
    let nchw = (1usize..3, prop::sample::select(vec![1usize, 2, 7, 17, 33]), 1usize..5, 1usize..6, 1usize..4)
        .prop_map(|(n, c, hh, ww, p)| TokenGrid::new(FeatureShape::nchw(n, c, hh * p, ww * p), p).unwrap());
    let ntc = (1usize..3, 1usize..9, prop::sample::select(vec![1usize, 7, 17, 64, 1025]))
        .prop_map(|(n, t, c)| TokenGrid::new(FeatureShape::ntc(n, t, c), 1).unwrap());
    prop_oneof![nchw, ntc]
}

/// Gaussian values times `scale`, from Philox (fresh per seed).
pub fn randn(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut v = vec![0.0; len];
    philox::fill(&mut v, 0, seed, 77, NoiseKind::Gaussian);
    v.iter_mut().for_each(|x| *x *= scale);
    v
}

/// Positive tolerance-like values in [lo, lo + span).
pub fn positive(len: usize, seed: u64, lo: f32, span: f32) -> Vec<f32> {
    let mut v = vec![0.0; len];
    philox::fill(&mut v, 0, seed, 78, NoiseKind::Uniform);
    v.iter_mut().for_each(|x| *x = lo + span * (*x / 3f32.sqrt() + 1.0) / 2.0);
    v
}

pub fn to<E: Element>(v: &[f32]) -> Vec<E> {
    v.iter().map(|&x| E::from_f32(x)).collect()
}

/// Runs a generic test body for f32, f16 and bf16.
#[macro_export]
macro_rules! for_dtypes {
    ($f:ident $(, $a:expr)*) => {{
        $f::<f32>($($a),*)?;
        $f::<half::f16>($($a),*)?;
        $f::<half::bf16>($($a),*)?;
    }};
}

pub fn rel_close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= rel * b.abs() + abs
}

/// A host array a `featjnd_kernels::call` only reads, as its `Buf` (the test owns it for the
/// whole call).
pub fn host<T>(name: &'static str, v: &[T], elem: featjnd_kernels::call::Elem) -> featjnd_kernels::call::Buf {
    // SAFETY: `v` outlives every call made from this view in these tests; nothing writes it.
    unsafe { featjnd_kernels::call::Buf::new(name, v.as_ptr() as usize, v.len(), elem, featjnd_kernels::call::Mem::Host, false) }
}

/// A host array a `featjnd_kernels::call` may write, as its `Buf`.
pub fn host_mut<T>(name: &'static str, v: &mut [T], elem: featjnd_kernels::call::Elem) -> featjnd_kernels::call::Buf {
    // SAFETY: `v` outlives every call made from this view; the test reads it only after the call.
    unsafe { featjnd_kernels::call::Buf::new(name, v.as_mut_ptr() as usize, v.len(), elem, featjnd_kernels::call::Mem::Host, true) }
}
