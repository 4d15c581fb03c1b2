//! Step allocation under a noise budget (contract §3) as validated calls: the nominal steps from
//! token tolerances (§3.1–§3.3), and the measured budget (§3.4), whose bisection quantizes the
//! feature at every probe. Both run on the host from the `T` token tolerances, which are few: on
//! CUDA they make one trip to the host and are checked there exactly as on the CPU.
use crate::cpu::{self, QuantOut};
use crate::error::{Error, Result};
use crate::geom::{Bits, FeatureShape, Strategy, TokenGrid};
use crate::steps::{self, Measured};
use crate::with_elem;

use super::buf::{no_overlap, Buf, Elem};

/// Nominal steps `Δ_t` (times a common `β`) from token tolerances `j_t`.
#[derive(Debug, Clone, Copy)]
pub struct AllocateArgs {
    /// `T` f32 token tolerances.
    pub token_tol: Buf,
    pub budget: f64,
    pub strategy: Strategy,
    /// A common factor on the steps (1 for the nominal steps of §3.2).
    pub beta: f64,
    /// `T` f32, in the token tolerances' memory.
    pub out: Buf,
}

validated!(AllocateCall(AllocateArgs));

impl AllocateArgs {
    /// The budget, the token tolerances (f32, at least one), the output, then the aliasing rule.
    pub fn validate(self) -> Result<AllocateCall> {
        steps::check_budget(self.budget)?;
        let j = &self.token_tol;
        j.token_values("token tolerances", None)?;
        self.out.expect_out(Elem::F32, j.len(), j.mem())?;
        no_overlap(&[*j], &[self.out], None)?;
        Ok(AllocateCall { a: self })
    }
}

/// Steps whose measured quantize–dequantize MSE of `x` matches the budget (§3.4).
#[derive(Debug, Clone, Copy)]
pub struct MeasuredArgs {
    /// The allocation (its `beta` is ignored: the bisection sets it).
    pub alloc: AllocateArgs,
    /// The feature the probes quantize, in the token tolerances' memory.
    pub x: Buf,
    pub shape: FeatureShape,
    pub patch: usize,
    pub bits: Bits,
}

validated!(MeasuredCall(MeasuredArgs); ref grid: TokenGrid);

impl MeasuredArgs {
    /// The allocation's checks, then `x` (dtype, grid, length, memory) and the token count.
    pub fn validate(self) -> Result<MeasuredCall> {
        self.alloc.validate()?;
        let grid = measured_feature(&self.x, self.shape, self.patch, &self.alloc.token_tol, &self.alloc.out)?;
        Ok(MeasuredCall { a: self, grid })
    }
}

/// The checks a measured budget adds to its allocation (plain or capped): the feature `x` the
/// probes quantize (dtype, grid, length, the token tolerances' memory), one token tolerance per
/// token, and the steps output disjoint from `x`.
pub(crate) fn measured_feature(x: &Buf, shape: FeatureShape, patch: usize, token_tol: &Buf, out: &Buf) -> Result<TokenGrid> {
    let dt = x.float_dtype()?;
    let grid = TokenGrid::new(shape, patch)?;
    x.expect(dt.into(), grid.numel(), token_tol.mem())?;
    if token_tol.len() != grid.tokens() {
        return Err(Error::Shape(format!("{} has {} values, x has {} tokens", token_tol.name, token_tol.len(), grid.tokens())));
    }
    no_overlap(&[*x], &[*out], None)?;
    Ok(grid)
}

impl AllocateCall {
    /// The steps from host token tolerances `jt` (a validated host input, or the device's copy).
    pub(crate) fn steps(&self, jt: &[f32]) -> Result<Vec<f32>> {
        let a = &self.a;
        let mut v = vec![0f32; jt.len()];
        steps::allocate_into(jt, a.budget, a.strategy, a.beta, &mut v)?;
        Ok(v)
    }

    pub(crate) fn run_host(&self) -> Result<()> {
        let a = &self.a;
        a.token_tol.on_host()?;
        // SAFETY: a validated host input of `T` f32, only read; the output overlaps it nowhere.
        let v = self.steps(unsafe { a.token_tol.slice() })?;
        // SAFETY: a validated writable host output of `T` f32, overlapping nothing.
        unsafe { a.out.slice_mut::<f32>() }.copy_from_slice(&v);
        Ok(())
    }
}

impl MeasuredCall {
    /// The bisection on `β` from host token tolerances, with `mse(steps)` measuring one probe;
    /// returns the match and the final steps.
    pub(crate) fn bisect(&self, jt: &[f32], mut mse: impl FnMut(&[f32]) -> Result<f64>) -> Result<(Measured, Vec<f32>)> {
        let a = &self.a.alloc;
        let mut probe = vec![0f32; jt.len()];
        let m = steps::bisect_beta(a.budget, |beta| {
            steps::allocate_into(jt, a.budget, a.strategy, beta, &mut probe)?;
            mse(&probe)
        })?;
        steps::allocate_into(jt, a.budget, a.strategy, m.beta, &mut probe)?;
        Ok((m, probe))
    }

    pub(crate) fn run_host(&self) -> Result<Measured> {
        let (a, g) = (&self.a, &self.grid);
        a.x.on_host()?;
        let dt = a.x.float_dtype()?;
        // SAFETY: a validated host input of `T` f32, only read; the output overlaps it nowhere.
        let jt: &[f32] = unsafe { a.alloc.token_tol.slice() };
        let (m, v) = with_elem!(dt, E => {
            // SAFETY: a validated host input of `numel` elements of `E`, only read; the output
            // overlaps it nowhere (checked).
            let xs: &[E] = unsafe { a.x.slice() };
            self.bisect(jt, |s| Ok(cpu::quantize::<E>(xs, g, s, a.bits, QuantOut::default())?.mse(g.numel())))?
        });
        // SAFETY: a validated writable host output of `T` f32, overlapping nothing.
        unsafe { a.alloc.out.slice_mut::<f32>() }.copy_from_slice(&v);
        Ok(m)
    }
}
