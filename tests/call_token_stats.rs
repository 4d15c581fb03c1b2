//! Per-token statistics as one validated call (`featjnd_kernels::call`, contract §9): the token
//! tolerance and the token RMS on every executor (`common::exec`: the host, and CUDA where
//! present) against the reference, on every dtype, layout and reduction; bad values by index on
//! every executor; and every bad argument the core checks.
mod common;
use common::exec::{each, Exec};
use common::*;
use featjnd_kernels::call::{Buf, Elem, Mem, TokenStat, TokenStatsArgs};
use featjnd_kernels::{reference, Element, Error, FeatureShape, Reduce, TokenGrid};
use half::{bf16, f16};

fn case<E: Element>(ex: &Exec, shape: FeatureShape, patch: usize, seed: u64) {
    let g = TokenGrid::new(shape, patch).unwrap();
    let j: Vec<E> = to(&positive(g.numel(), seed, 0.05, 3.0));
    let x: Vec<E> = to(&randn(g.numel(), seed ^ 1, 2.0));
    let dt: Elem = E::DTYPE.into();
    let label = format!("{shape:?} p={patch} {}", E::DTYPE.name());
    let mut out = vec![0f32; g.tokens()];
    for reduce in [Reduce::Mean, Reduce::Rms, Reduce::Min] {
        let args = TokenStatsArgs {
            input: ex.input("J", &j, dt),
            shape,
            patch,
            stat: TokenStat::Tolerance(reduce),
            out: ex.output("out", &mut out, Elem::F32),
        };
        ex.run(&args.validate().unwrap()).unwrap();
        for (a, b) in out.iter().zip(reference::token_tolerance(&j, &g, reduce)) {
            assert!(rel_close(*a as f64, b as f64, 1e-5, 0.0), "{label} {reduce:?}: {a} vs {b}");
        }
    }
    let args =
        TokenStatsArgs { input: ex.input("x", &x, dt), shape, patch, stat: TokenStat::Rms, out: ex.output("out", &mut out, Elem::F32) };
    ex.run(&args.validate().unwrap()).unwrap();
    for (a, b) in out.iter().zip(reference::token_rms(&x, &g)) {
        assert!(rel_close(*a as f64, b as f64, 1e-5, 1e-30), "{label} rms: {a} vs {b}");
    }
}

#[test]
fn every_executor_matches_the_reference() {
    each(|ex| {
        let shapes = [
            (FeatureShape::nchw(1, 1, 1, 1), 1),
            (FeatureShape::nchw(2, 7, 17, 3), 1),
            (FeatureShape::nchw(1, 3, 14, 7), 7),
            (FeatureShape::ntc(3, 17, 1025), 1),
            (FeatureShape::ntc(1, 1, 5137), 1),
        ];
        for (i, &(shape, patch)) in shapes.iter().enumerate() {
            case::<f32>(ex, shape, patch, i as u64);
            case::<f16>(ex, shape, patch, i as u64);
            case::<bf16>(ex, shape, patch, i as u64);
        }
    });
}

#[test]
fn every_bad_argument_is_refused_and_bad_values_name_their_index() {
    let shape = FeatureShape::nchw(1, 2, 4, 4);
    let mut j = vec![1f32; 32];
    let mut out = vec![0f32; 16];
    let ok = TokenStatsArgs {
        input: host("J", &j, Elem::F32),
        shape,
        patch: 1,
        stat: TokenStat::Tolerance(Reduce::Mean),
        out: host_mut("out", &mut out, Elem::F32),
    };
    ok.validate().unwrap();
    let err = |a: TokenStatsArgs| a.validate().expect_err("refused");
    let ji = vec![0i16; 32];
    assert!(matches!(err(TokenStatsArgs { input: host("J", &ji, Elem::I16), ..ok }), Error::Dtype(_)));
    assert!(matches!(err(TokenStatsArgs { patch: 3, ..ok }), Error::Patch { .. }));
    let mut short = vec![0f32; 15];
    let e = err(TokenStatsArgs { out: host_mut("out", &mut short, Elem::F32), ..ok });
    assert!(matches!(&e, Error::Shape(m) if m.contains("16 tokens")), "{e}");
    let e = err(TokenStatsArgs { out: host("out", &out, Elem::F32), ..ok });
    assert!(matches!(&e, Error::Arg(m) if m.contains("read-only")), "{e}");
    let e = err(TokenStatsArgs { out: host_mut("out", &mut j[4..20], Elem::F32), ..ok });
    assert!(matches!(&e, Error::Arg(m) if m.contains("out overlaps J")), "{e}");
    // SAFETY: never dereferenced: the call is refused.
    let dev = unsafe { Buf::new("out", out.as_ptr() as usize, 16, Elem::F32, Mem::Cuda(0), true) };
    assert!(matches!(err(TokenStatsArgs { out: dev, ..ok }), Error::MixedDevices(_)));
}

/// Values: J ≤ 0 and a non-finite x are found by the run, by flat index, on every executor.
#[test]
fn bad_values_name_their_index_on_every_executor() {
    each(|ex| {
        let shape = FeatureShape::nchw(1, 2, 4, 4);
        let mut bad = vec![1f32; 32];
        bad[21] = 0.0;
        let mut out = vec![0f32; 16];
        let a = TokenStatsArgs {
            input: ex.input("J", &bad, Elem::F32),
            shape,
            patch: 1,
            stat: TokenStat::Tolerance(Reduce::Mean),
            out: ex.output("out", &mut out, Elem::F32),
        };
        let r = ex.run(&a.validate().unwrap());
        assert!(matches!(r, Err(Error::Jnd { index: 21, .. })), "{}: {r:?}", ex.name());
        bad[21] = f32::INFINITY;
        let mut out = vec![0f32; 16];
        let a =
            TokenStatsArgs { input: ex.input("x", &bad, Elem::F32), stat: TokenStat::Rms, out: ex.output("out", &mut out, Elem::F32), ..a };
        let r = ex.run(&a.validate().unwrap());
        assert!(matches!(r, Err(Error::NonFinite { index: 21, .. })), "{}: {r:?}", ex.name());
    });
}
