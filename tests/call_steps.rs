//! Step allocation as validated calls (`featjnd_kernels::call`, contract §9): the nominal steps
//! and the measured budget on every executor (`common::exec`: the host, and CUDA where present)
//! against the slice API (`steps::allocate`, `steps::bisect_beta` with `cpu::quantize`), a bad
//! token tolerance by index on every executor, and every bad argument the core checks.
mod common;
use common::exec::each;
use common::*;
use featjnd_kernels::call::{AllocateArgs, Elem, MeasuredArgs};
use featjnd_kernels::cpu::{self, QuantOut};
use featjnd_kernels::{steps, Bits, Error, FeatureShape, Strategy, TokenGrid};

#[test]
fn allocation_matches_the_slice_api() {
    each(|ex| {
        for (t, seed) in [(1usize, 1u64), (7, 2), (17, 3), (1025, 4), (5137, 5)] {
            let jt = positive(t, seed, 0.05, 4.0);
            for strategy in [Strategy::Uniform, Strategy::Jnd, Strategy::Permuted { seed: 9 }] {
                let mut out = vec![0f32; t];
                let args = AllocateArgs {
                    token_tol: ex.input("jt", &jt, Elem::F32),
                    budget: 0.01,
                    strategy,
                    beta: 0.5,
                    out: ex.output("out", &mut out, Elem::F32),
                };
                ex.run(&args.validate().unwrap()).unwrap();
                let mut want = vec![0f32; t];
                steps::allocate_into(&jt, 0.01, strategy, 0.5, &mut want).unwrap();
                assert_eq!(out, want, "T = {t} {strategy:?}");
            }
        }
    });
}

#[test]
fn the_measured_budget_matches_the_slice_api() {
    each(|ex| {
        let shape = FeatureShape::nchw(2, 3, 14, 7);
        let g = TokenGrid::new(shape, 7).unwrap();
        let x = randn(g.numel(), 11, 1.5);
        let jt = positive(g.tokens(), 12, 0.1, 3.0);
        let mut out = vec![0f32; g.tokens()];
        let alloc = AllocateArgs {
            token_tol: ex.input("jt", &jt, Elem::F32),
            budget: 0.02,
            strategy: Strategy::Jnd,
            beta: 1.0,
            out: ex.output("out", &mut out, Elem::F32),
        };
        let call = MeasuredArgs { alloc, x: ex.input("x", &x, Elem::F32), shape, patch: 7, bits: Bits::B8 }.validate().unwrap();
        let m = ex.run(&call).unwrap();
        let want = steps::bisect_beta(0.02, |beta| {
            let mut s = vec![0f32; g.tokens()];
            steps::allocate_into(&jt, 0.02, Strategy::Jnd, beta, &mut s)?;
            Ok(cpu::quantize(&x, &g, &s, Bits::B8, QuantOut::default())?.mse(g.numel()))
        })
        .unwrap();
        assert_eq!((m.beta, m.measured_mse, m.evaluations), (want.beta, want.measured_mse, want.evaluations));
        assert!((m.measured_mse / 0.02 - 1.0).abs() <= steps::MEASURED_TOL);
        let mut s = vec![0f32; g.tokens()];
        steps::allocate_into(&jt, 0.02, Strategy::Jnd, m.beta, &mut s).unwrap();
        assert_eq!(out, s);
    });
}

#[test]
fn every_bad_argument_is_refused() {
    let mut jt = vec![1f32; 8];
    let mut out = vec![0f32; 8];
    let ok = AllocateArgs {
        token_tol: host("jt", &jt, Elem::F32),
        budget: 0.1,
        strategy: Strategy::Jnd,
        beta: 1.0,
        out: host_mut("out", &mut out, Elem::F32),
    };
    ok.validate().unwrap();
    let err = |a: AllocateArgs| a.validate().expect_err("refused");
    for b in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(err(AllocateArgs { budget: b, ..ok }), Error::Budget(_)), "budget {b}");
    }
    let ji = vec![1i16; 8];
    assert!(matches!(err(AllocateArgs { token_tol: host("jt", &ji, Elem::I16), ..ok }), Error::Arg(_)));
    let none: Vec<f32> = vec![];
    assert!(matches!(err(AllocateArgs { token_tol: host("jt", &none, Elem::F32), ..ok }), Error::Empty(_)));
    let mut short = vec![0f32; 7];
    assert!(matches!(err(AllocateArgs { out: host_mut("out", &mut short, Elem::F32), ..ok }), Error::Shape(_)));
    let e = err(AllocateArgs { out: host_mut("out", &mut jt[..], Elem::F32), ..ok });
    assert!(matches!(&e, Error::Arg(m) if m.contains("out overlaps jt")), "{e}");
    // The measured call: x's token count must match, and the output must not overlap x.
    let shape = FeatureShape::nchw(1, 2, 3, 3);
    let x = vec![1f32; 18];
    let e = MeasuredArgs { alloc: ok, x: host("x", &x, Elem::F32), shape, patch: 1, bits: Bits::B8 }.validate().expect_err("refused");
    assert!(matches!(&e, Error::Shape(m) if m.contains("9 tokens")), "{e}");
}

/// A bad token tolerance is found by the run, by index, before the output is written, on every
/// executor.
#[test]
fn a_bad_token_tolerance_names_its_index_on_every_executor() {
    each(|ex| {
        let mut bad = vec![1f32; 8];
        bad[5] = -2.0;
        let mut out = vec![0f32; 8];
        let call = AllocateArgs {
            token_tol: ex.input("jt", &bad, Elem::F32),
            budget: 0.1,
            strategy: Strategy::Jnd,
            beta: 1.0,
            out: ex.output("out", &mut out, Elem::F32),
        }
        .validate()
        .unwrap();
        let r = ex.run(&call);
        assert!(matches!(r, Err(Error::Jnd { index: 5, .. })), "{}: {r:?}", ex.name());
        assert!(out.iter().all(|&v| v == 0.0), "{}", ex.name());
    });
}
