//! The capped allocation (contract §3.5) as validated calls (`featjnd_kernels::call`, §9): caps,
//! capped steps and their measured budget on every executor (`common::exec`: the host, and CUDA
//! where present) against the slice API, bad values by index on every executor, and the bad
//! arguments the core checks.
mod common;
use common::exec::each;
use common::*;
use featjnd_kernels::call::{CappedArgs, CappedMeasuredArgs, CapsArgs, Elem};
use featjnd_kernels::cpu::{self, QuantOut};
use featjnd_kernels::{steps, Bits, Error, FeatureShape, TokenGrid};

#[test]
fn caps_and_capped_steps_match_the_slice_api() {
    each(|ex| {
        for (t, seed) in [(1usize, 1u64), (7, 2), (17, 3), (1025, 4), (5137, 5)] {
            let rms = positive(t, seed, 0.01, 3.0);
            let jt = positive(t, seed ^ 7, 0.05, 4.0);
            let mut caps = vec![0f32; t];
            let call = CapsArgs { rms: ex.input("rms", &rms, Elem::F32), kappa: 2.0, out: ex.output("caps", &mut caps, Elem::F32) }
                .validate()
                .unwrap();
            ex.run(&call).unwrap();
            assert_eq!(caps, steps::caps_from_rms(&rms, 2.0).unwrap(), "T = {t}");
            let mut out = vec![0f32; t];
            let args = CappedArgs {
                token_tol: ex.input("jt", &jt, Elem::F32),
                caps: ex.input("caps", &caps, Elem::F32),
                budget: 0.05,
                beta: 0.7,
                out: ex.output("out", &mut out, Elem::F32),
            };
            ex.run(&args.validate().unwrap()).unwrap();
            let mut want = vec![0f32; t];
            steps::allocate_capped_into(&jt, &caps, 0.05, 0.7, &mut want).unwrap();
            assert_eq!(out, want, "T = {t}");
        }
    });
}

#[test]
fn the_capped_measured_budget_matches_the_slice_api() {
    each(|ex| {
        let shape = FeatureShape::ntc(2, 17, 33);
        let g = TokenGrid::new(shape, 1).unwrap();
        let x = randn(g.numel(), 21, 1.0);
        let jt = positive(g.tokens(), 22, 0.1, 3.0);
        let caps = steps::caps_from_rms(&cpu::token_rms(&x, &g).unwrap(), 2.0).unwrap();
        let mut out = vec![0f32; g.tokens()];
        let capped = CappedArgs {
            token_tol: ex.input("jt", &jt, Elem::F32),
            caps: ex.input("caps", &caps, Elem::F32),
            budget: 0.01,
            beta: 1.0,
            out: ex.output("out", &mut out, Elem::F32),
        };
        let call = CappedMeasuredArgs { capped, x: ex.input("x", &x, Elem::F32), shape, patch: 1, bits: Bits::B8 }.validate().unwrap();
        let m = ex.run(&call).unwrap();
        let want = steps::bisect_beta(0.01, |beta| {
            let mut s = vec![0f32; g.tokens()];
            steps::allocate_capped_into(&jt, &caps, 0.01, beta, &mut s)?;
            Ok(cpu::quantize(&x, &g, &s, Bits::B8, QuantOut::default())?.mse(g.numel()))
        })
        .unwrap();
        assert_eq!((m.beta, m.measured_mse, m.evaluations), (want.beta, want.measured_mse, want.evaluations));
        let mut s = vec![0f32; g.tokens()];
        steps::allocate_capped_into(&jt, &caps, 0.01, m.beta, &mut s).unwrap();
        assert_eq!(out, s);
    });
}

#[test]
fn bad_arguments_are_refused() {
    let rms = vec![1f32; 6];
    let mut out = vec![0f32; 6];
    let caps = CapsArgs { rms: host("rms", &rms, Elem::F32), kappa: 2.0, out: host_mut("out", &mut out, Elem::F32) };
    for k in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(CapsArgs { kappa: k, ..caps }.validate(), Err(Error::Arg(_))), "kappa {k}");
    }
    let none: Vec<f32> = vec![];
    assert!(matches!(CapsArgs { rms: host("rms", &none, Elem::F32), ..caps }.validate(), Err(Error::Empty(_))));
    let jt = vec![1f32; 6];
    let c5 = vec![1f32; 5];
    let ok = CappedArgs {
        token_tol: host("jt", &jt, Elem::F32),
        caps: host("caps", &rms, Elem::F32),
        budget: 0.1,
        beta: 1.0,
        out: host_mut("out", &mut out, Elem::F32),
    };
    ok.validate().unwrap();
    let e = CappedArgs { caps: host("caps", &c5, Elem::F32), ..ok }.validate().unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("caps")), "{e}");
    assert!(matches!(CappedArgs { budget: -1.0, ..ok }.validate(), Err(Error::Budget(_))));
    let mut c = rms.clone();
    let e = CappedArgs { caps: host("caps", &c, Elem::F32), out: host_mut("out", &mut c, Elem::F32), ..ok }.validate().unwrap_err();
    assert!(matches!(&e, Error::Arg(m) if m.contains("out overlaps caps")), "{e}");
    assert!(out.iter().all(|&v| v == 0.0));
}

/// A bad cap or token tolerance is found by the run, by index, before a step is written, with the
/// same error on every executor.
#[test]
fn bad_caps_and_tolerances_name_their_index_on_every_executor() {
    each(|ex| {
        let ok = vec![1f32; 6];
        let mut bad = vec![1f32; 6];
        bad[4] = f32::NAN;
        for (jt, caps) in [(&ok, &bad), (&bad, &ok)] {
            let mut out = vec![0f32; 6];
            let call = CappedArgs {
                token_tol: ex.input("jt", jt, Elem::F32),
                caps: ex.input("caps", caps, Elem::F32),
                budget: 0.1,
                beta: 1.0,
                out: ex.output("out", &mut out, Elem::F32),
            }
            .validate()
            .unwrap();
            let r = ex.run(&call);
            let want_cap = std::ptr::eq(caps, &bad);
            match &r {
                Err(Error::Arg(m)) if want_cap => assert!(m.contains("c[4]"), "{}: {m}", ex.name()),
                Err(Error::Jnd { index: 4, .. }) if !want_cap => {}
                _ => panic!("{}: cap bad {want_cap}: {r:?}", ex.name()),
            }
            assert!(out.iter().all(|&v| v == 0.0), "{}: steps written", ex.name());
        }
    });
}
