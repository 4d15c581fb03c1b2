//! The perturbation as one validated call (`featjnd_kernels::call`, contract §9): each case is
//! defined once and run on every executor (`common::exec`: the host, and CUDA where present)
//! against the reference, in place and out of place; a bad element by index on every executor;
//! and every bad argument the core checks, which every surface shares.
mod common;
use common::exec::{each, Exec};
use common::*;
use featjnd_kernels::call::{Buf, Elem, Mem, PerturbArgs};
use featjnd_kernels::cpu::perturb::NoiseSpec;
use featjnd_kernels::{reference, Element, Error, NoiseKind};
use half::{bf16, f16};

fn case<E: Element>(ex: &Exec, samples: usize, len: usize, with_j: bool, kind: NoiseKind, seed: u64) {
    let n = samples * len;
    let x: Vec<E> = to(&randn(n, seed, 2.0));
    let j: Vec<E> = to(&positive(n, seed ^ 3, 0.1, 2.0));
    let r = 0.4;
    let (want, want_scales) = reference::perturb(&x, with_j.then_some(&j[..]), samples, r, seed, 5, kind);
    let label = format!("{samples}×{len} J={with_j} {kind:?} {}", E::DTYPE.name());
    let dt: Elem = E::DTYPE.into();
    let mut out = vec![E::from_f32(0.0); n];
    let mut scales = vec![0f32; samples];
    let args = PerturbArgs {
        x: ex.input("x", &x, dt),
        samples,
        jnd: with_j.then(|| ex.input("J", &j, dt)),
        out: ex.output("out", &mut out, dt),
        nrmse: r,
        noise: NoiseSpec { kind, seed, subsequence: 5 },
        scales_out: Some(ex.output("scales", &mut scales, Elem::F32)),
    };
    let call = args.validate().unwrap();
    assert!(!call.in_place());
    let rep = ex.run(&call).unwrap();
    // f16/bf16 round each element once more than the f64 reference.
    let tol = if E::DTYPE == featjnd_kernels::Dtype::F32 { 1e-5 } else { 1e-2 };
    for (i, (a, b)) in out.iter().zip(&want).enumerate() {
        let (a, b) = (a.to_f32() as f64, b.to_f32() as f64);
        assert!(rel_close(a, b, tol, tol * 3.0), "{label}: x'[{i}] {a} vs {b}");
    }
    for (a, b) in rep.scales.iter().zip(&want_scales) {
        assert!(rel_close(*a as f64, *b, 2e-5, 0.0), "{label}: scale {a} vs {b}");
    }
    assert_eq!(scales, rep.scales, "{label}: scales_out");
    // In place: the same bits as out of place.
    let mut xi = x.clone();
    let xb = ex.output("x", &mut xi, dt);
    let call = PerturbArgs { x: xb, out: xb, scales_out: None, ..args }.validate().unwrap();
    assert!(call.in_place());
    ex.run(&call).unwrap();
    assert!(xi == out, "{label}: in place differs from out of place");
}

#[test]
fn every_executor_matches_the_reference() {
    each(|ex| {
        for (i, &(samples, len)) in [(1usize, 1usize), (1, 7), (3, 17), (2, 1025), (1, 5137)].iter().enumerate() {
            for (with_j, kind) in [(true, NoiseKind::Gaussian), (false, NoiseKind::Uniform)] {
                let seed = 40 + i as u64;
                case::<f32>(ex, samples, len, with_j, kind, seed);
                case::<f16>(ex, samples, len, with_j, kind, seed);
                case::<bf16>(ex, samples, len, with_j, kind, seed);
            }
        }
    });
}

#[test]
fn every_bad_argument_is_refused_before_anything_runs() {
    let x = vec![1f32; 24];
    let j = vec![1f32; 24];
    let mut out = vec![0f32; 24];
    let mut sc = vec![0f32; 2];
    let ok = PerturbArgs {
        x: host("x", &x, Elem::F32),
        samples: 2,
        jnd: Some(host("J", &j, Elem::F32)),
        out: host_mut("out", &mut out, Elem::F32),
        nrmse: 0.5,
        noise: NoiseSpec { kind: NoiseKind::Gaussian, seed: 1, subsequence: 0 },
        scales_out: Some(host_mut("scales", &mut sc, Elem::F32)),
    };
    ok.validate().unwrap();
    let err = |a: PerturbArgs| a.validate().expect_err("refused");
    let xi = vec![0i8; 24];
    assert!(matches!(err(PerturbArgs { x: host("x", &xi, Elem::I8), ..ok }), Error::Dtype(_)));
    assert!(matches!(err(PerturbArgs { samples: 0, ..ok }), Error::Empty(_)));
    assert!(matches!(err(PerturbArgs { samples: 5, ..ok }), Error::Shape(_)));
    let jh = vec![f16::ONE; 24];
    let e = err(PerturbArgs { jnd: Some(host("J", &jh, Elem::F16)), ..ok });
    assert!(matches!(&e, Error::Dtype(m) if m.contains("J is f16")), "{e}");
    let js = vec![1f32; 23];
    assert!(matches!(err(PerturbArgs { jnd: Some(host("J", &js, Elem::F32)), ..ok }), Error::Shape(_)));
    let e = err(PerturbArgs { out: host("out", &out, Elem::F32), ..ok });
    assert!(matches!(&e, Error::Arg(m) if m.contains("read-only")), "{e}");
    let mut sc3 = vec![0f32; 3];
    assert!(matches!(err(PerturbArgs { scales_out: Some(host_mut("scales", &mut sc3, Elem::F32)), ..ok }), Error::Shape(_)));
    for r in [-0.1, f64::NAN, f64::INFINITY] {
        assert!(matches!(err(PerturbArgs { nrmse: r, ..ok }), Error::Nrmse(_)), "r = {r}");
    }
    // Aliasing: the output on J; the scales inside the output; in place on a read-only x; in
    // place with J on x.
    let mut jj = j.clone();
    let e = err(PerturbArgs { out: host_mut("out", &mut jj, Elem::F32), jnd: Some(host("J", &jj, Elem::F32)), ..ok });
    assert!(matches!(&e, Error::Arg(m) if m.contains("out overlaps J")), "{e}");
    let e = err(PerturbArgs { scales_out: Some(host_mut("scales", &mut out[3..5], Elem::F32)), ..ok });
    assert!(matches!(&e, Error::Arg(m) if m.contains("scales overlaps out")), "{e}");
    // SAFETY: never dereferenced: the call is refused.
    let xw = unsafe { Buf::new("x", x.as_ptr() as usize, x.len(), Elem::F32, Mem::Host, true) };
    let e = err(PerturbArgs { out: xw, ..ok });
    assert!(matches!(&e, Error::Arg(m) if m.contains("read-only (in place)")), "{e}");
    let mut xm = x.clone();
    let xb = host_mut("x", &mut xm, Elem::F32);
    let e = err(PerturbArgs { x: xb, out: xb, jnd: Some(host("J", &xm, Elem::F32)), ..ok });
    assert!(matches!(&e, Error::Arg(m) if m.contains("x overlaps J")), "{e}");
}

/// A bad element is found before `x` is written, in place included (contract §7.2), with its
/// index, on every executor.
#[test]
fn a_bad_element_names_its_index_on_every_executor() {
    each(|ex| {
        let mut bad = vec![1f32; 24];
        bad[13] = f32::NAN;
        let mut o = vec![7f32; 24];
        let noise = NoiseSpec { kind: NoiseKind::Gaussian, seed: 1, subsequence: 0 };
        let a = PerturbArgs {
            x: ex.input("x", &bad, Elem::F32),
            samples: 2,
            jnd: None,
            out: ex.output("out", &mut o, Elem::F32),
            nrmse: 0.5,
            noise,
            scales_out: None,
        };
        let e = ex.run(&a.validate().unwrap()).unwrap_err();
        assert!(matches!(e, Error::NonFinite { index: 13, .. }), "{}: {e}", ex.name());
        let mut xi = bad.clone();
        let xb = ex.output("x", &mut xi, Elem::F32);
        let e = ex.run(&PerturbArgs { x: xb, out: xb, ..a }.validate().unwrap()).unwrap_err();
        assert!(matches!(e, Error::NonFinite { index: 13, .. }), "{}: in place: {e}", ex.name());
        assert!(xi.iter().zip(&bad).all(|(a, b)| a.to_bits() == b.to_bits()), "{}: x written", ex.name());
    });
}
