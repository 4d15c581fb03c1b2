//! The §5 noise `ξ` of flat elements `offset .. offset + len` into a caller's f32 array, as a
//! validated call (the only op with no input).
use crate::cpu::perturb::NoiseSpec;
use crate::error::{Error, Result};

use super::buf::{Buf, Elem};

#[derive(Debug, Clone, Copy)]
pub struct NoiseArgs {
    /// f32, any length (0 writes nothing).
    pub out: Buf,
    pub offset: u64,
    pub noise: NoiseSpec,
}

validated!(NoiseCall(NoiseArgs));

impl NoiseArgs {
    /// The output (f32, writable, aligned), then the counter range, which must not run past 2^64.
    pub fn validate(self) -> Result<NoiseCall> {
        let o = &self.out;
        if o.elem() != Elem::F32 {
            return Err(Error::Dtype(format!("{} is {}, expected f32", o.name, o.elem().name())));
        }
        o.expect_out(Elem::F32, o.len(), o.mem())?;
        if self.offset.checked_add(o.len() as u64).is_none() {
            return Err(Error::Arg(format!("noise of {} elements from offset {} runs past 2^64", o.len(), self.offset)));
        }
        Ok(NoiseCall { a: self })
    }
}

impl NoiseCall {
    pub(crate) fn run_host(&self) -> Result<()> {
        let a = &self.a;
        a.out.on_host()?;
        // SAFETY: a validated writable host output of `len` f32, the call's only array.
        crate::philox::fill(unsafe { a.out.slice_mut::<f32>() }, a.offset, a.noise.seed, a.noise.subsequence, a.noise.kind);
        Ok(())
    }
}
