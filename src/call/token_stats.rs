//! Per-token statistics as one validated call: the token tolerance `j_t` of a map `J` (contract
//! §2) and the token RMS `r_t` of a feature (§3.5), each into a caller's `T` floats.
use crate::cpu;
use crate::error::{Error, Result};
use crate::geom::{FeatureShape, Reduce, TokenGrid};
use crate::with_elem;

use super::buf::{no_overlap, Buf, Elem};

/// Which statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStat {
    /// `j_t` of a tolerance map (finite, > 0 elements).
    Tolerance(Reduce),
    /// `r_t` of a feature (finite elements).
    Rms,
}

#[derive(Debug, Clone, Copy)]
pub struct TokenStatsArgs {
    /// `J` or `x`: `shape.numel()` elements of f32, f16 or bf16.
    pub input: Buf,
    pub shape: FeatureShape,
    pub patch: usize,
    pub stat: TokenStat,
    /// `T` f32, in the input's memory.
    pub out: Buf,
}

validated!(TokenStatsCall(TokenStatsArgs); ref grid: TokenGrid);

impl TokenStatsArgs {
    /// The input's dtype, the grid, the input's and the output's type, length, memory and
    /// alignment, then the aliasing rule.
    pub fn validate(self) -> Result<TokenStatsCall> {
        let i = &self.input;
        let dt = i.float_dtype()?;
        let grid = TokenGrid::new(self.shape, self.patch)?;
        i.expect(dt.into(), grid.numel(), i.mem())?;
        if self.out.len() != grid.tokens() {
            let (o, t) = (&self.out, grid.tokens());
            return Err(Error::Shape(format!("{} has {} values, the feature has {t} tokens", o.name, o.len())));
        }
        self.out.expect_out(Elem::F32, grid.tokens(), i.mem())?;
        no_overlap(&[*i], &[self.out], None)?;
        Ok(TokenStatsCall { a: self, grid })
    }
}

impl TokenStatsCall {
    pub(crate) fn run_host(&self) -> Result<()> {
        let (a, g) = (&self.a, &self.grid);
        a.input.on_host()?;
        let dt = a.input.float_dtype()?;
        let v = with_elem!(dt, E => {
            // SAFETY: a validated host input of `numel` elements of `E`, only read; the output
            // overlaps it nowhere (checked).
            let xs: &[E] = unsafe { a.input.slice() };
            match a.stat {
                TokenStat::Tolerance(r) => cpu::token_tolerance::<E>(xs, g, r)?,
                TokenStat::Rms => cpu::token_rms::<E>(xs, g)?,
            }
        });
        // SAFETY: a validated writable host output of `T == v.len()` f32, overlapping nothing.
        unsafe { a.out.slice_mut::<f32>() }.copy_from_slice(&v);
        Ok(())
    }
}
