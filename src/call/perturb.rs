//! Perturbation at a matched per-sample NRMSE (contract §6) as one validated call: the arguments
//! every surface fills in, their checks in the contract's order, and the host run.
use crate::cpu::{self, perturb::NoiseSpec, PerturbReport};
use crate::cuda::raw;
use crate::error::{Error, Result};
use crate::with_elem;

use super::buf::{no_overlap, Buf, Elem};

/// What a perturbation reads and writes: `out = x + s_n·J⊙ξ`. `out` may be `x` itself (same
/// address and length, writable): the in-place call. `jnd = None` is `J ≡ 1`.
#[derive(Debug, Clone, Copy)]
pub struct PerturbArgs {
    /// The feature: f32, f16 or bf16, `samples` samples of equal size.
    pub x: Buf,
    /// The sample count `N` (the leading dimension).
    pub samples: usize,
    /// `J`, in `x`'s dtype, length and memory.
    pub jnd: Option<Buf>,
    pub out: Buf,
    pub nrmse: f64,
    pub noise: NoiseSpec,
    /// Where to copy the per-sample scales as well: `N` f32 in `x`'s memory.
    pub scales_out: Option<Buf>,
}

validated!(
    /// A perturbation whose arguments passed every check that does not read element values.
    PerturbCall(PerturbArgs); copy in_place: bool);

impl PerturbArgs {
    /// The checks of contract §6 and §7 before any element is read: `x`'s dtype and size, the
    /// samples, `J` (dtype, then length and memory), the output, the scales, `r`, then the
    /// aliasing rule.
    pub fn validate(self) -> Result<PerturbCall> {
        self.validate_with(&[])
    }

    /// [`PerturbArgs::validate`] where the caller's op also writes `extra_out` (a statistics
    /// buffer): it joins the aliasing rule.
    pub fn validate_with(self, extra_out: &[Buf]) -> Result<PerturbCall> {
        let x = &self.x;
        let dt = x.float_dtype()?;
        let (n, mem) = (x.len(), x.mem());
        if n == 0 || self.samples == 0 {
            return Err(Error::Empty("feature"));
        }
        if !n.is_multiple_of(self.samples) {
            return Err(Error::Shape(format!("{n} elements do not split into {} samples", self.samples)));
        }
        x.expect(dt.into(), n, mem)?;
        if let Some(j) = &self.jnd {
            if j.elem() != x.elem() {
                return Err(Error::Dtype(format!("{} is {}, {} is {}: they must match", x.name, dt.name(), j.name, j.elem().name())));
            }
            j.expect(dt.into(), n, mem)?;
        }
        self.out.expect_out(dt.into(), n, mem)?;
        let in_place = self.out.same_array(x);
        if in_place && !x.writable() {
            return Err(Error::Arg(format!("{} is read-only (in place)", x.name)));
        }
        if let Some(s) = &self.scales_out {
            s.expect_out(Elem::F32, self.samples, mem)?;
        }
        if !(self.nrmse.is_finite() && self.nrmse >= 0.0) {
            return Err(Error::Nrmse(self.nrmse));
        }
        let inputs: Vec<Buf> = [Some(*x), self.jnd].into_iter().flatten().collect();
        let mut outputs: Vec<Buf> = [Some(self.out), self.scales_out].into_iter().flatten().collect();
        outputs.extend_from_slice(extra_out);
        no_overlap(&inputs, &outputs, Some((self.out.name, x.name)))?;
        Ok(PerturbCall { a: self, in_place })
    }
}

impl PerturbCall {
    /// The host run of a sync-free call (contract §8) in `pool`, recorded in the statistics `s`
    /// (`raw::perturb_slots(samples)` slots) as the kernels would: the report, or the first bad
    /// element (with zero scales). Other errors are returned.
    pub fn record_host(&self, pool: Option<&rayon::ThreadPool>, s: &mut [i64]) -> Result<()> {
        match super::quantize::in_pool(pool, || self.run_host()) {
            Ok(rep) => raw::encode_perturb(s, None, &rep),
            Err(e) => match raw::bad_of_error(&e) {
                Some(b) => raw::encode_perturb(s, Some(b), &PerturbReport { scales: vec![0.0; self.a.samples], zero_samples: vec![] }),
                None => return Err(e),
            },
        }
        Ok(())
    }

    /// The CPU path (multi-threaded on the current rayon pool).
    pub(crate) fn run_host(&self) -> Result<PerturbReport> {
        let a = &self.a;
        a.x.on_host()?;
        let dt = a.x.float_dtype()?;
        // Every slice below: host arrays of a validated call, live, aligned and as long as
        // viewed (`Buf::new`'s contract, `validate`'s checks); the output overlaps no input
        // unless it is `x` itself (checked), so each mutable slice is the only view of its
        // memory; in place, `x` is viewed once, mutably, and `J` overlaps it nowhere.
        let report = with_elem!(dt, E => {
            // SAFETY: see above.
            let js: Option<&[E]> = a.jnd.map(|j| unsafe { j.slice() });
            if self.in_place {
                // SAFETY: see above.
                cpu::perturb_in_place::<E>(unsafe { a.x.slice_mut() }, js, a.samples, a.nrmse, a.noise)?
            } else {
                // SAFETY: see above.
                let (xs, os): (&[E], &mut [E]) = unsafe { (a.x.slice(), a.out.slice_mut()) };
                cpu::perturb::<E>(xs, js, a.samples, a.nrmse, a.noise, os)?
            }
        });
        if let Some(s) = &a.scales_out {
            // SAFETY: see above (a validated output of `samples == report.scales.len()` f32).
            unsafe { s.slice_mut::<f32>() }.copy_from_slice(&report.scales);
        }
        Ok(report)
    }
}
