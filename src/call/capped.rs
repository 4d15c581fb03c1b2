//! The capped allocation (contract §3.5) as validated calls: caps from token RMS values, capped
//! steps from token tolerances and caps, and the capped steps matched to a measured budget
//! (§3.4). On CUDA the solve runs on the device (`fj_capped_solve`), once per call.
use crate::cpu::{self, QuantOut};
use crate::cuda::raw;
use crate::error::{Error, Result};
use crate::geom::{Bits, FeatureShape, TokenGrid};
use crate::steps::{self, Measured};
use crate::with_elem;

use super::buf::{no_overlap, Buf, Elem};
use super::steps::measured_feature;

/// Caps `c_t = κ·max(r_t, 2^-24·max_t r_t)` from token RMS values.
#[derive(Debug, Clone, Copy)]
pub struct CapsArgs {
    pub rms: Buf,
    pub kappa: f32,
    /// `T` f32, in the RMS values' memory.
    pub out: Buf,
}

validated!(CapsCall(CapsArgs));

impl CapsArgs {
    pub fn validate(self) -> Result<CapsCall> {
        self.rms.token_values("token RMS", None)?;
        raw::check_kappa(self.kappa)?;
        self.out.expect_out(Elem::F32, self.rms.len(), self.rms.mem())?;
        no_overlap(&[self.rms], &[self.out], None)?;
        Ok(CapsCall { a: self })
    }
}

impl CapsCall {
    pub(crate) fn run_host(&self) -> Result<()> {
        let a = &self.a;
        a.rms.on_host()?;
        // SAFETY: a validated host input of `T` f32, only read; the output overlaps it nowhere.
        let v = steps::caps_from_rms(unsafe { a.rms.slice() }, a.kappa)?;
        // SAFETY: a validated writable host output of `T` f32, overlapping nothing.
        unsafe { a.out.slice_mut::<f32>() }.copy_from_slice(&v);
        Ok(())
    }
}

/// Capped steps `min(f32(a·β)·j_t, f32(b·β)·c_t)`.
#[derive(Debug, Clone, Copy)]
pub struct CappedArgs {
    pub token_tol: Buf,
    pub caps: Buf,
    pub budget: f64,
    pub beta: f64,
    /// `T` f32, in the inputs' memory.
    pub out: Buf,
}

validated!(CappedCall(CappedArgs));

impl CappedArgs {
    /// The token tolerances and caps (f32, `T` each, one memory), the budget, the output, then
    /// the aliasing rule. Their values are checked by the run (the solver), before any step is
    /// written.
    pub fn validate(self) -> Result<CappedCall> {
        self.token_tol.token_values("token tolerances", None)?;
        self.caps.token_values("caps", Some(self.token_tol.len()))?;
        if self.caps.mem() != self.token_tol.mem() {
            return Err(Error::MixedDevices(format!(
                "{} is in {}, {} in {}",
                self.caps.name,
                self.caps.mem(),
                self.token_tol.name,
                self.token_tol.mem()
            )));
        }
        steps::check_budget(self.budget)?;
        self.out.expect_out(Elem::F32, self.token_tol.len(), self.token_tol.mem())?;
        no_overlap(&[self.token_tol, self.caps], &[self.out], None)?;
        Ok(CappedCall { a: self })
    }
}

impl CappedCall {
    pub(crate) fn run_host(&self) -> Result<()> {
        let a = &self.a;
        a.token_tol.on_host()?;
        // SAFETY: validated host inputs of `T` f32, only read; the output overlaps them nowhere.
        let (j, c): (&[f32], &[f32]) = unsafe { (a.token_tol.slice(), a.caps.slice()) };
        let mut v = vec![0f32; j.len()];
        steps::allocate_capped_into(j, c, a.budget, a.beta, &mut v)?;
        // SAFETY: a validated writable host output of `T` f32, overlapping nothing.
        unsafe { a.out.slice_mut::<f32>() }.copy_from_slice(&v);
        Ok(())
    }
}

/// Capped steps matched to the measured budget of quantizing `x` (its `beta` is ignored).
#[derive(Debug, Clone, Copy)]
pub struct CappedMeasuredArgs {
    pub capped: CappedArgs,
    pub x: Buf,
    pub shape: FeatureShape,
    pub patch: usize,
    pub bits: Bits,
}

validated!(CappedMeasuredCall(CappedMeasuredArgs); ref grid: TokenGrid);

impl CappedMeasuredArgs {
    pub fn validate(self) -> Result<CappedMeasuredCall> {
        self.capped.validate()?;
        let grid = measured_feature(&self.x, self.shape, self.patch, &self.capped.token_tol, &self.capped.out)?;
        Ok(CappedMeasuredCall { a: self, grid })
    }
}

impl CappedMeasuredCall {
    pub(crate) fn run_host(&self) -> Result<Measured> {
        let (a, g) = (&self.a, &self.grid);
        a.x.on_host()?;
        let c = &a.capped;
        // SAFETY: validated host inputs of `T` f32, only read; the output overlaps them nowhere.
        let (j, cp): (&[f32], &[f32]) = unsafe { (c.token_tol.slice(), c.caps.slice()) };
        let mut probe = vec![0f32; j.len()];
        let dt = a.x.float_dtype()?;
        let m = with_elem!(dt, E => {
            // SAFETY: a validated host input of `numel` elements of `E`, only read.
            let xs: &[E] = unsafe { a.x.slice() };
            steps::bisect_beta(c.budget, |beta| {
                steps::allocate_capped_into(j, cp, c.budget, beta, &mut probe)?;
                Ok(cpu::quantize::<E>(xs, g, &probe, a.bits, QuantOut::default())?.mse(g.numel()))
            })?
        });
        steps::allocate_capped_into(j, cp, c.budget, m.beta, &mut probe)?;
        // SAFETY: a validated writable host output of `T` f32, overlapping nothing.
        unsafe { c.out.slice_mut::<f32>() }.copy_from_slice(&probe);
        Ok(m)
    }
}
