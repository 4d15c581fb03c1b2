//! The fused chains as one validated call (`featjnd_kernels::call::chain`, contract §9): on every
//! executor (`common::exec`: the host, and CUDA where present), the JND chain equals token
//! tolerance → step allocation → quantization through the slice API bit for bit, and the capped
//! chain equals token tolerance, token RMS, caps, capped allocation → quantization; the CPU's
//! order of value errors on every executor; every bad argument the chain adds to the
//! quantization's (steps read-only or overlapping `x` or `J`, `J`'s length, the budget, `κ`).
mod common;
use common::exec::{each, Exec};
use common::*;
use featjnd_kernels::call::{Buf, ChainArgs, Elem, QuantizeArgs, StepRule};
use featjnd_kernels::cpu::{self, QuantOut, Symbols};
use featjnd_kernels::{steps, Bits, Element, Error, FeatureShape, Reduce, Strategy, TokenGrid};
use half::{bf16, f16};

/// The quantization part of a chain: symbols, reconstruction, token SSE and the histogram.
struct Outs<E> {
    steps: Vec<f32>,
    sym: Vec<i8>,
    recon: Vec<E>,
    sse: Vec<f32>,
}

impl<E: Element> Outs<E> {
    fn new(g: &TokenGrid) -> Self {
        Outs { steps: vec![0.0; g.tokens()], sym: vec![0; g.numel()], recon: vec![E::from_f32(0.0); g.numel()], sse: vec![0.0; g.tokens()] }
    }
    fn args(&mut self, ex: &Exec, x: &[E], g: &TokenGrid) -> QuantizeArgs {
        QuantizeArgs {
            x: ex.input("x", x, E::DTYPE.into()),
            shape: g.shape,
            patch: g.patch,
            steps: ex.output("steps", &mut self.steps, Elem::F32),
            bits: Bits::B8,
            symbols: Some(ex.output("symbols", &mut self.sym, Elem::I8)),
            recon: Some(ex.output("recon", &mut self.recon, E::DTYPE.into())),
            token_sse: Some(ex.output("token_sse", &mut self.sse, Elem::F32)),
            histogram: true,
            histogram_out: None,
        }
    }
    /// The same quantization through the slice API with `steps`.
    fn check(&self, x: &[E], g: &TokenGrid, steps: &[f32], r: &featjnd_kernels::call::QuantizeReport, label: &str) {
        assert_eq!(self.steps, steps, "{label}: steps");
        let mut want = Outs::<E>::new(g);
        let out =
            QuantOut { symbols: Symbols::I8(&mut want.sym), recon: Some(&mut want.recon), token_sse: Some(&mut want.sse), histogram: true };
        let s = cpu::quantize(x, g, steps, Bits::B8, out).unwrap();
        assert_eq!(self.sym, want.sym, "{label}: symbols");
        assert!(self.recon == want.recon, "{label}: reconstruction");
        assert_eq!(self.sse, want.sse, "{label}: token sse");
        assert_eq!((r.clamped, r.total_sse, &r.histogram), (s.clamped, s.total_sse, &s.histogram), "{label}: statistics");
    }
}

fn grids() -> Vec<TokenGrid> {
    [
        (FeatureShape::nchw(1, 1, 1, 1), 1),
        (FeatureShape::nchw(1, 7, 17, 3), 1),
        (FeatureShape::nchw(2, 3, 14, 7), 7),
        (FeatureShape::ntc(3, 17, 1025), 1),
        (FeatureShape::ntc(1, 1, 5137), 1),
    ]
    .into_iter()
    .map(|(s, p)| TokenGrid::new(s, p).unwrap())
    .collect()
}

fn jnd_chain_case<E: Element>(ex: &Exec, g: &TokenGrid, seed: u64) {
    let x: Vec<E> = to(&randn(g.numel(), seed, 2.0));
    let j: Vec<E> = to(&positive(g.numel(), seed ^ 5, 0.05, 2.0));
    for (reduce, strategy) in
        [(Reduce::Mean, Strategy::Jnd), (Reduce::Rms, Strategy::Uniform), (Reduce::Min, Strategy::Permuted { seed: 11 })]
    {
        let mut o = Outs::<E>::new(g);
        let call = ChainArgs {
            quantize: o.args(ex, &x, g),
            jnd: ex.input("J", &j, E::DTYPE.into()),
            reduce,
            budget: 0.02,
            rule: StepRule::Strategy(strategy),
        }
        .validate()
        .unwrap();
        let r = ex.run(&call).unwrap();
        let jt = cpu::token_tolerance(&j, g, reduce).unwrap();
        let label = format!("{:?} p={} {} {reduce:?} {strategy:?}", g.shape, g.patch, E::DTYPE.name());
        o.check(&x, g, &steps::allocate(&jt, 0.02, strategy).unwrap(), &r, &label);
    }
}

fn capped_chain_case<E: Element>(ex: &Exec, g: &TokenGrid, seed: u64) {
    let x: Vec<E> = to(&randn(g.numel(), seed, 2.0));
    let j: Vec<E> = to(&positive(g.numel(), seed ^ 5, 0.05, 2.0));
    let mut o = Outs::<E>::new(g);
    let call = ChainArgs {
        quantize: o.args(ex, &x, g),
        jnd: ex.input("J", &j, E::DTYPE.into()),
        reduce: Reduce::Mean,
        budget: 0.02,
        rule: StepRule::Capped { kappa: 2.0 },
    }
    .validate()
    .unwrap();
    let r = ex.run(&call).unwrap();
    let jt = cpu::token_tolerance(&j, g, Reduce::Mean).unwrap();
    let caps = steps::caps_from_rms(&cpu::token_rms(&x, g).unwrap(), 2.0).unwrap();
    let label = format!("capped {:?} p={} {}", g.shape, g.patch, E::DTYPE.name());
    o.check(&x, g, &steps::allocate_capped(&jt, &caps, 0.02).unwrap(), &r, &label);
}

#[test]
fn the_jnd_chain_equals_its_ops_in_sequence() {
    each(|ex| {
        for (i, g) in grids().iter().enumerate() {
            jnd_chain_case::<f32>(ex, g, 40 + i as u64);
            jnd_chain_case::<f16>(ex, g, 50 + i as u64);
            jnd_chain_case::<bf16>(ex, g, 60 + i as u64);
        }
    });
}

#[test]
fn the_capped_chain_equals_its_ops_in_sequence() {
    each(|ex| {
        for (i, g) in grids().iter().enumerate() {
            capped_chain_case::<f32>(ex, g, 70 + i as u64);
            capped_chain_case::<f16>(ex, g, 80 + i as u64);
            capped_chain_case::<bf16>(ex, g, 90 + i as u64);
        }
    });
}

#[test]
fn bad_arguments_are_refused() {
    fn err<T>(r: Result<T, Error>) -> Error {
        r.map(|_| ()).unwrap_err()
    }
    let ex = &Exec::host();
    let g = TokenGrid::new(FeatureShape::ntc(1, 6, 4), 1).unwrap();
    let x = randn(24, 1, 1.0);
    let j = vec![0.5f32; 24];
    let j_short = vec![0.5f32; 23];
    let mut o = Outs::<f32>::new(&g);
    let q = o.args(ex, &x, &g);
    let jb = host("J", &j, Elem::F32);
    let ok = ChainArgs { quantize: q, jnd: jb, reduce: Reduce::Mean, budget: 0.02, rule: StepRule::Strategy(Strategy::Jnd) };
    ok.validate().unwrap();
    // The chain writes the steps: read-only steps, or steps inside x or J, are refused.
    let ro = host("steps", &o.steps, Elem::F32);
    assert!(
        matches!(err(ChainArgs { quantize: QuantizeArgs { steps: ro, ..q }, ..ok }.validate()), Error::Arg(m) if m.contains("read-only"))
    );
    let x_buf = host("x", &x, Elem::F32);
    // Steps over x's own first six values.
    // SAFETY: never written (validation refuses the call).
    let over_x = unsafe { Buf::new("steps", x.as_ptr() as usize, 6, Elem::F32, featjnd_kernels::call::Mem::Host, true) };
    let e = err(ChainArgs { quantize: QuantizeArgs { x: x_buf, steps: over_x, ..q }, ..ok }.validate());
    assert!(matches!(&e, Error::Arg(m) if m.contains("steps overlaps x")), "{e}");
    // SAFETY: never written (validation refuses the call).
    let over_j = unsafe { Buf::new("steps", j.as_ptr() as usize + 8, 6, Elem::F32, featjnd_kernels::call::Mem::Host, true) };
    let e = err(ChainArgs { quantize: QuantizeArgs { steps: over_j, ..q }, ..ok }.validate());
    assert!(matches!(&e, Error::Arg(m) if m.contains("steps overlaps J")), "{e}");
    assert!(matches!(err(ChainArgs { jnd: host("J", &j_short, Elem::F32), ..ok }.validate()), Error::Shape(_)));
    assert!(matches!(err(ChainArgs { jnd: host("J", &j, Elem::I8), ..ok }.validate()), Error::Dtype(_)));
    for b in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(err(ChainArgs { budget: b, ..ok }.validate()), Error::Budget(_)), "budget {b}");
    }
    let capped = ChainArgs { quantize: q, jnd: jb, reduce: Reduce::Mean, budget: 0.02, rule: StepRule::Capped { kappa: 2.0 } };
    capped.validate().unwrap();
    for k in [0.0, -1.0, f32::NAN] {
        assert!(matches!(err(ChainArgs { rule: StepRule::Capped { kappa: k }, ..capped }.validate()), Error::Arg(_)), "kappa {k}");
    }
    assert!(matches!(err(ChainArgs { budget: 0.0, ..capped }.validate()), Error::Budget(_)));
    // The capped rule has no sync-free form.
    let mut stats = vec![0i64; 1024];
    assert!(matches!(capped.validate().unwrap().record_host(None, &mut stats), Err(Error::Arg(m)) if m.contains("sync-free")));
}

/// The capped chain (κ = 2) or the JND one, D = 0.02, on the host.
fn run(ex: &Exec, quantize: QuantizeArgs, jnd: Buf, capped: bool) -> Result<featjnd_kernels::call::QuantizeReport, Error> {
    let rule = if capped { StepRule::Capped { kappa: 2.0 } } else { StepRule::Strategy(Strategy::Jnd) };
    ex.run(&ChainArgs { quantize, jnd, reduce: Reduce::Mean, budget: 0.02, rule }.validate().unwrap())
}

#[test]
fn value_errors_come_in_the_cpus_order_before_any_step_is_written() {
    each(|ex| {
        let g = TokenGrid::new(FeatureShape::ntc(1, 5, 4), 1).unwrap();
        let mut x = randn(20, 3, 1.0);
        let mut j = vec![0.5f32; 20];
        x[13] = f32::NAN;
        j[17] = 0.0;
        for capped in [false, true] {
            let mut o = Outs::<f32>::new(&g);
            o.steps.fill(-7.0);
            let q = o.args(ex, &x, &g);
            let jb = ex.input("J", &j, Elem::F32);
            let r = run(ex, q, jb, capped);
            // J is reduced first: its bad element is reported before x's.
            assert!(matches!(r, Err(Error::Jnd { index: 17, .. })), "capped {capped}: {r:?}");
            // On the host nothing is written; on a device the outputs are unspecified (contract §7.2).
            if ex.name() == "host" {
                assert!(o.steps.iter().all(|&s| s == -7.0), "capped {capped}: steps written");
            }
        }
        // With J valid, x's NaN: the capped chain finds it in the token RMS, the JND chain in the
        // quantization; both name element 13.
        j[17] = 0.5;
        for capped in [false, true] {
            let mut o = Outs::<f32>::new(&g);
            let q = o.args(ex, &x, &g);
            let jb = ex.input("J", &j, Elem::F32);
            let r = run(ex, q, jb, capped);
            assert!(matches!(r, Err(Error::NonFinite { index: 13, .. })), "capped {capped}: {r:?}");
        }
        x[13] = 0.0;
        // A zero feature: no cap exists (the capped chain), the JND chain quantizes it.
        let zero = vec![0f32; 20];
        let mut o = Outs::<f32>::new(&g);
        let q = o.args(ex, &zero, &g);
        let r = run(ex, q, ex.input("J", &j, Elem::F32), true);
        assert!(matches!(&r, Err(Error::Arg(m)) if m.contains("zero")), "a zero feature has no caps: {r:?}");
    });
}
