//! Decoding the statistics of a sync-free call (contract §8) as validated calls, once for every
//! surface that has no tensor handle to keep (the C ABI's `fj_*_decode`, the Python package's
//! `*_decode`): the statistics are read (on CUDA: copied on the executor's stream, which is
//! synchronized — the one sync the caller chose), and the result is what the synchronous call
//! returns, or its error with the index the kernels (or the host run) recorded and the offending
//! value read back from `x` or `J`.
use crate::cpu::PerturbReport;
use crate::cuda::raw::{self, BadElement, Input};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::geom::{Bits, FeatureShape, TokenGrid};
use crate::with_elem;

use super::buf::{Buf, Elem};
use super::quantize::QuantizeReport;

/// `x` (a float array of `numel` elements) and `J` (the same, when given) in `stats`' memory.
fn check_inputs(stats: &Buf, x: &Buf, jnd: &Option<Buf>, numel: usize) -> Result<()> {
    x.expect(x.float_dtype()?.into(), numel, stats.mem())?;
    if let Some(j) = jnd {
        j.expect(j.float_dtype()?.into(), numel, stats.mem())?;
    }
    Ok(())
}

/// The value of a bad element for the message, read from the host array it indexes (NaN where
/// that array is not given; a step or token tolerance carries its own).
fn host_value(b: BadElement, x: &Buf, jnd: &Option<Buf>) -> f32 {
    let src = match b.input {
        Input::X => Some(x),
        Input::Jnd => jnd.as_ref(),
        Input::TokenTol(_) | Input::Step(_) => None,
    };
    let Some(a) = src.filter(|a| b.index < a.len()) else { return f32::NAN };
    let Some(dt) = a.elem().dtype() else { return f32::NAN };
    // SAFETY: a validated host array of its dtype holding element `b.index` (checked), only read.
    with_elem!(dt, E => unsafe { a.slice::<E>() }[b.index].to_f32())
}

/// A quantization's statistics (`fj_quantize_async`, `…_with_jnd_async` or a batch item's slice)
/// with the `x` (and `J`) it was given.
#[derive(Debug, Clone, Copy)]
pub struct QuantizeDecodeArgs {
    /// `raw::quantize_slots(bits, true)` i64 (the surface takes the first of a longer array).
    pub stats: Buf,
    pub x: Buf,
    pub jnd: Option<Buf>,
    pub shape: FeatureShape,
    pub patch: usize,
    pub bits: Bits,
}

validated!(QuantizeDecodeCall(QuantizeDecodeArgs); ref grid: TokenGrid);

impl QuantizeDecodeArgs {
    pub fn validate(self) -> Result<QuantizeDecodeCall> {
        let grid = TokenGrid::new(self.shape, self.patch)?;
        self.stats.expect(Elem::I64, raw::quantize_slots(self.bits, true), self.stats.mem())?;
        check_inputs(&self.stats, &self.x, &self.jnd, grid.numel())?;
        Ok(QuantizeDecodeCall { a: self, grid })
    }
}

impl QuantizeDecodeCall {
    /// The report, or the error of the first bad element the statistics name.
    pub(crate) fn finish(&self, v: &[i64], error: impl FnOnce(BadElement) -> Error) -> Result<QuantizeReport> {
        let (bad, s) = raw::decode_quantize(v, self.a.bits, true);
        if let Some(b) = bad {
            return Err(error(b));
        }
        Ok(QuantizeReport::finish(&self.grid, s))
    }

    pub(crate) fn run_host(&self) -> Result<QuantizeReport> {
        let a = &self.a;
        a.stats.on_host()?;
        // SAFETY: a validated host array of `quantize_slots` i64 that the finished call wrote.
        let v: &[i64] = unsafe { a.stats.slice() };
        self.finish(v, |b| b.error(host_value(b, &a.x, &a.jnd)))
    }
}

/// A perturbation's statistics (`fj_perturb_async` or a batch item's slice) with its `x`, `J`
/// and `r`.
#[derive(Debug, Clone, Copy)]
pub struct PerturbDecodeArgs {
    /// `raw::perturb_slots(samples)` i64.
    pub stats: Buf,
    pub x: Buf,
    /// The first dimension of `x`.
    pub samples: usize,
    pub jnd: Option<Buf>,
    pub nrmse: f64,
}

validated!(PerturbDecodeCall(PerturbDecodeArgs));

impl PerturbDecodeArgs {
    pub fn validate(self) -> Result<PerturbDecodeCall> {
        if self.samples == 0 || !self.x.len().is_multiple_of(self.samples) {
            return Err(Error::Shape(format!("{} has {} elements: not {} samples", self.x.name, self.x.len(), self.samples)));
        }
        self.stats.expect(Elem::I64, raw::perturb_slots(self.samples), self.stats.mem())?;
        check_inputs(&self.stats, &self.x, &self.jnd, self.x.len())?;
        Ok(PerturbDecodeCall { a: self })
    }
}

impl PerturbDecodeCall {
    /// The report (per-sample scales, zero samples), or the error of the first bad element, or a
    /// scale beyond f32.
    pub(crate) fn finish(&self, v: &[i64], error: impl FnOnce(BadElement) -> Error) -> Result<PerturbReport> {
        let (bad, report) = raw::decode_perturb(v, self.a.samples);
        if let Some(b) = bad {
            return Err(error(b));
        }
        raw::check_scales(&report, self.a.nrmse)?;
        Ok(report)
    }

    pub(crate) fn run_host(&self) -> Result<PerturbReport> {
        let a = &self.a;
        a.stats.on_host()?;
        // SAFETY: a validated host array of `perturb_slots` i64 that the finished call wrote.
        let v: &[i64] = unsafe { a.stats.slice() };
        self.finish(v, |b| b.error(host_value(b, &a.x, &a.jnd)))
    }
}
