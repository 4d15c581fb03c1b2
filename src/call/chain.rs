//! The two fused chains as validated calls: the JND-guided quantization `J → j_t → Δ_t →
//! quantize` (contract §2–§4) and the capped one `x, J → r_t, j_t → c_t → Δ_t → quantize`
//! (§3.5). Each is a quantization whose steps are an output of the chain. On the host the chain
//! runs the ops one after the other; on CUDA its launches are enqueued back to back with one sync
//! at the end ([`super::Cuda::jnd_chain`], [`super::Cuda::capped_chain`]), so errors are reported
//! in the CPU's order from one read of the statistics.
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

/// The quantization of `quantize.x` with steps allocated from `J`'s token tolerances; the steps
/// go to `quantize.steps` (`T` f32, written).
#[derive(Debug, Clone, Copy)]
pub struct JndChainArgs {
    pub quantize: QuantizeArgs,
    pub jnd: Buf,
    pub reduce: Reduce,
    pub budget: f64,
    pub strategy: Strategy,
}

#[derive(Debug, Clone, Copy)]
pub struct JndChainCall {
    pub(crate) q: QuantizeCall,
    pub(crate) jnd: Buf,
    pub(crate) reduce: Reduce,
    pub(crate) budget: f64,
    pub(crate) strategy: Strategy,
}

impl JndChainArgs {
    /// `J` (a float array of `x`'s length, in `x`'s memory), the budget, then the quantization's
    /// checks with `J` among the inputs, and the steps kept apart from `x` and `J`.
    pub fn validate(self) -> Result<JndChainCall> {
        check_chain(&self.quantize, &self.jnd)?;
        steps::check_budget(self.budget)?;
        let q = validate_quantize(self.quantize, self.jnd)?;
        Ok(JndChainCall { q, jnd: self.jnd, reduce: self.reduce, budget: self.budget, strategy: self.strategy })
    }
}

impl JndChainCall {
    pub fn quantize(&self) -> &QuantizeCall {
        &self.q
    }
    pub fn jnd(&self) -> &Buf {
        &self.jnd
    }

    /// The host run of the sync-free chain (contract §8) in `pool`, recorded in the statistics `s`
    /// as the kernels would: a bad `J` element, else the first bad `j_t` (with its value), else
    /// the quantization's ([`QuantizeCall::record_host`]); the steps are written unless `J` or a
    /// `j_t` is bad. Other errors are returned.
    pub fn record_host(&self, pool: Option<&rayon::ThreadPool>, s: &mut [i64]) -> Result<()> {
        let a = self.q.args();
        a.x.on_host()?;
        let jt = match in_pool(pool, || token_tolerance(&self.jnd, &self.q, self.reduce)) {
            Ok(jt) => jt,
            Err(e) => return record(s, Err(e)),
        };
        if let Some(t) = jt.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            raw::encode_quantize(s, Some(BadElement { input: Input::TokenTol(jt[t].to_bits()), index: t }), 0, 0.0, None);
            return Ok(());
        }
        // SAFETY: as in `run_host`.
        steps::allocate_into(&jt, self.budget, self.strategy, 1.0, unsafe { a.steps.slice_mut::<f32>() })?;
        self.q.record_host(pool, s)
    }

    pub(crate) fn run_host(&self) -> Result<QuantizeReport> {
        let a = self.q.args();
        a.x.on_host()?;
        let jt = token_tolerance(&self.jnd, &self.q, self.reduce)?;
        // SAFETY: a validated writable host output of `T` f32 that overlaps no other array of the
        // call (the aliasing rule, with the steps among the outputs); the quantization below only
        // reads it, after this view is gone.
        steps::allocate_into(&jt, self.budget, self.strategy, 1.0, unsafe { a.steps.slice_mut::<f32>() })?;
        self.q.run_host()
    }
}

/// `j_t` of a chain's `J` on the host.
fn token_tolerance(jnd: &Buf, q: &QuantizeCall, reduce: Reduce) -> Result<Vec<f32>> {
    let dj = jnd.float_dtype()?;
    // SAFETY: a validated host input of `numel` elements of its dtype, only read.
    with_elem!(dj, E => cpu::token_tolerance::<E>(unsafe { jnd.slice() }, q.grid(), reduce))
}

/// The quantization of `quantize.x` with capped steps: tolerances from `J`, caps `κ·r_t` from
/// `x`'s token RMS, the capped allocation for the nominal budget (β = 1); the steps go to
/// `quantize.steps`.
#[derive(Debug, Clone, Copy)]
pub struct CappedChainArgs {
    pub quantize: QuantizeArgs,
    pub jnd: Buf,
    pub reduce: Reduce,
    pub kappa: f32,
    pub budget: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct CappedChainCall {
    pub(crate) q: QuantizeCall,
    pub(crate) jnd: Buf,
    pub(crate) reduce: Reduce,
    pub(crate) kappa: f32,
    pub(crate) budget: f64,
}

impl CappedChainArgs {
    /// `J`, `κ`, the budget, then the quantization's checks (as [`JndChainArgs::validate`]).
    pub fn validate(self) -> Result<CappedChainCall> {
        check_chain(&self.quantize, &self.jnd)?;
        raw::check_kappa(self.kappa)?;
        steps::check_budget(self.budget)?;
        let q = validate_quantize(self.quantize, self.jnd)?;
        Ok(CappedChainCall { q, jnd: self.jnd, reduce: self.reduce, kappa: self.kappa, budget: self.budget })
    }
}

impl CappedChainCall {
    pub fn quantize(&self) -> &QuantizeCall {
        &self.q
    }
    pub fn jnd(&self) -> &Buf {
        &self.jnd
    }

    /// The CPU's order of errors: a bad `J`, a non-finite `x`, a zero feature, a bad `j_t` or
    /// cap; then the quantization.
    pub(crate) fn run_host(&self) -> Result<QuantizeReport> {
        let a = self.q.args();
        a.x.on_host()?;
        let jt = token_tolerance(&self.jnd, &self.q, self.reduce)?;
        let dt = a.x.float_dtype()?;
        // SAFETY: a validated host input of `numel` elements of its dtype, only read.
        let rms = with_elem!(dt, E => cpu::token_rms::<E>(unsafe { a.x.slice() }, self.q.grid()))?;
        let caps = steps::caps_from_rms(&rms, self.kappa)?;
        // SAFETY: as in `JndChainCall::run_host`.
        steps::allocate_capped_into(&jt, &caps, self.budget, 1.0, unsafe { a.steps.slice_mut::<f32>() })?;
        self.q.run_host()
    }
}
