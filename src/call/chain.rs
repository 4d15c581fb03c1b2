//! The fused chains as one validated call: a quantization whose steps are made on the way from
//! `J`'s token tolerances, by a [`StepRule`] — a strategy (`J → j_t → Δ_t → quantize`, contract
//! §2–§4) or the capped allocation (`x, J → r_t, j_t → c_t → Δ_t → quantize`, §3.5). On the host
//! the chain runs the ops one after the other; on CUDA its launches are enqueued back to back
//! with one sync at the end ([`super::Cuda::chain`]), so errors are reported in the CPU's order
//! from one read of the statistics.
use crate::cpu;
use crate::cuda::raw;
use crate::error::{Error, Result};
use crate::geom::{Reduce, Strategy};
use crate::steps;
use crate::with_elem;

use super::buf::{no_overlap, Buf};
use super::quantize::{in_pool, record, QuantizeArgs, QuantizeCall, QuantizeReport};
use crate::cuda::raw::{BadElement, Input};

/// The steps a chain writes: `quantize.steps` must be a writable output here.
fn check_chain(q: &QuantizeArgs, jnd: &Buf) -> Result<()> {
    let n = q.shape.numel();
    let dj = jnd.float_dtype()?;
    if jnd.len() != n {
        return Err(Error::Shape(format!("{} has {} elements, {} has {n}", jnd.name, jnd.len(), q.x.name)));
    }
    jnd.expect(dj.into(), n, q.x.mem())?;
    if !q.steps.writable() {
        return Err(Error::Arg(format!("{} is read-only (the chain writes the steps)", q.steps.name)));
    }
    Ok(())
}

/// The quantization's checks with `J` among its inputs; then the steps, which the chain writes,
/// must overlap neither `x` nor `J` (the quantization's own rule keeps them apart from its
/// outputs).
fn validate_quantize(q: QuantizeArgs, jnd: Buf) -> Result<QuantizeCall> {
    let (x, steps) = (q.x, q.steps);
    let call = q.validate_with(&[jnd], &[])?;
    no_overlap(&[x, jnd], &[steps], None)?;
    Ok(call)
}

/// How a chain makes its steps from the token tolerances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepRule {
    /// The nominal steps of contract §3.2 for a strategy.
    Strategy(Strategy),
    /// The capped allocation of §3.5, caps `κ·r_t` from `x`'s token RMS, nominal budget (β = 1).
    Capped { kappa: f32 },
}

/// The quantization of `quantize.x` with steps from `J`'s token tolerances by `rule`; the steps go
/// to `quantize.steps` (`T` f32, written).
#[derive(Debug, Clone, Copy)]
pub struct ChainArgs {
    pub quantize: QuantizeArgs,
    pub jnd: Buf,
    pub reduce: Reduce,
    pub budget: f64,
    pub rule: StepRule,
}

validated!(ChainCall(ChainArgs); ref quantize: QuantizeCall);

impl ChainArgs {
    /// `J` (a float array of `x`'s length, in `x`'s memory), `κ`, the budget, then the
    /// quantization's checks with `J` among the inputs, and the steps kept apart from `x` and `J`.
    pub fn validate(self) -> Result<ChainCall> {
        check_chain(&self.quantize, &self.jnd)?;
        if let StepRule::Capped { kappa } = self.rule {
            raw::check_kappa(kappa)?;
        }
        steps::check_budget(self.budget)?;
        let quantize = validate_quantize(self.quantize, self.jnd)?;
        Ok(ChainCall { a: self, quantize })
    }
}

impl ChainCall {
    /// The host run of the sync-free chain (contract §8, a strategy's steps) in `pool`, recorded
    /// in the statistics `s` as the kernels would: a bad `J` element, else the first bad `j_t`
    /// (with its value), else the quantization's ([`QuantizeCall::record_host`]); the steps are
    /// written unless `J` or a `j_t` is bad. Other errors are returned.
    pub fn record_host(&self, pool: Option<&rayon::ThreadPool>, s: &mut [i64]) -> Result<()> {
        let StepRule::Strategy(strategy) = self.a.rule else {
            return Err(Error::Arg("the capped chain has no sync-free form: use the synchronous call".into()));
        };
        let a = self.quantize.args();
        a.x.on_host()?;
        let jt = match in_pool(pool, || self.token_tolerance()) {
            Ok(jt) => jt,
            Err(e) => return record(s, Err(e)),
        };
        if let Some(t) = jt.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            raw::encode_quantize(s, Some(BadElement { input: Input::TokenTol(jt[t].to_bits()), index: t }), 0, 0.0, None);
            return Ok(());
        }
        // SAFETY: as in `run_host`.
        steps::allocate_into(&jt, self.a.budget, strategy, 1.0, unsafe { a.steps.slice_mut::<f32>() })?;
        self.quantize.record_host(pool, s)
    }

    /// The CPU's order of errors: a bad `J`; for the capped rule a non-finite `x` and a zero
    /// feature; a bad `j_t` (or cap); then the quantization's.
    pub(crate) fn run_host(&self) -> Result<QuantizeReport> {
        let (a, q) = (&self.a, &self.quantize);
        q.args().x.on_host()?;
        let jt = self.token_tolerance()?;
        // SAFETY: a validated writable host output of `T` f32 that overlaps no other array of the
        // call (the aliasing rule, with the steps among the outputs); the quantization below only
        // reads it, after this view is gone.
        let out = unsafe { q.args().steps.slice_mut::<f32>() };
        match a.rule {
            StepRule::Strategy(strategy) => steps::allocate_into(&jt, a.budget, strategy, 1.0, out)?,
            StepRule::Capped { kappa } => {
                let x = &q.args().x;
                // SAFETY: a validated host input of `numel` elements of its dtype, only read.
                let rms = with_elem!(x.float_dtype()?, E => cpu::token_rms::<E>(unsafe { x.slice() }, q.grid()))?;
                steps::allocate_capped_into(&jt, &steps::caps_from_rms(&rms, kappa)?, a.budget, 1.0, out)?;
            }
        }
        q.run_host()
    }

    /// `j_t` of the chain's `J` on the host.
    fn token_tolerance(&self) -> Result<Vec<f32>> {
        let jnd = &self.a.jnd;
        // SAFETY: a validated host input of `numel` elements of its dtype, only read.
        with_elem!(jnd.float_dtype()?, E => cpu::token_tolerance::<E>(unsafe { jnd.slice() }, self.quantize.grid(), self.a.reduce))
    }
}
