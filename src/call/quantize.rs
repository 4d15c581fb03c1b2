//! Fused quantize / dequantize (contract §4) as one validated call: the arguments every surface
//! fills in, their checks in the contract's order, the host run and the finishing (MSE, rate).
use crate::cpu::{self, QuantOut, QuantStats, Symbols};
use crate::cuda::raw::{self, BadElement, Input};
use crate::error::{Error, Result};
use crate::geom::{Bits, FeatureShape, TokenGrid};
use crate::rate::Rate;
use crate::with_elem;

use super::buf::{no_overlap, Buf, Elem};

/// What a quantization reads and writes. `recon` may be `x` itself (same address and length,
/// writable): the in-place call.
#[derive(Debug, Clone, Copy)]
pub struct QuantizeArgs {
    /// The feature: `shape.numel()` elements of f32, f16 or bf16.
    pub x: Buf,
    pub shape: FeatureShape,
    pub patch: usize,
    /// `T` f32 steps, in `x`'s memory.
    pub steps: Buf,
    pub bits: Bits,
    /// `numel` i8 (8 bits) or i16 (16 bits).
    pub symbols: Option<Buf>,
    /// `numel` elements of `x`'s dtype, or `x` itself.
    pub recon: Option<Buf>,
    /// `T` f32 per-token squared errors.
    pub token_sse: Option<Buf>,
    /// Count the symbol histogram (returned in the report).
    pub histogram: bool,
    /// Where to copy the histogram as well: `bits.hist_bins()` u64 in `x`'s memory.
    pub histogram_out: Option<Buf>,
}

validated!(
    /// A quantization whose arguments passed every check that does not read element values.
    QuantizeCall(QuantizeArgs); ref grid: TokenGrid; copy in_place: bool);

/// The one result of a quantization, on every surface.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    /// Elements whose symbol was clamped to ±Q.
    pub clamped: u64,
    /// `Σ e_t`.
    pub total_sse: f64,
    /// Measured MSE per element (`total_sse / numel`).
    pub mse: f64,
    pub histogram: Option<Vec<u64>>,
    /// Entropy and bits per element, where the histogram was counted.
    pub rate: Option<Rate>,
}

impl QuantizeReport {
    /// The finishing of every path: MSE and rate from the raw statistics (the CPU's, or the
    /// kernels' as decoded by `raw::decode_quantize`).
    pub fn finish(grid: &TokenGrid, s: QuantStats) -> QuantizeReport {
        let rate = s.histogram.as_ref().map(|h| Rate::from_histogram(h, grid.tokens(), grid.k()));
        QuantizeReport { clamped: s.clamped, total_sse: s.total_sse, mse: s.mse(grid.numel()), histogram: s.histogram, rate }
    }
}

/// The symbol element type of `bits`.
pub fn symbol_elem(bits: Bits) -> Elem {
    match bits {
        Bits::B8 => Elem::I8,
        Bits::B16 => Elem::I16,
    }
}

impl QuantizeArgs {
    /// The checks of contract §4 and §7 before any element is read: `x`'s dtype, the grid
    /// (patch, size limits), `x`'s length, the steps, each output (memory, type, length,
    /// alignment, writable), then the aliasing rule. `extra_in` are further arrays the caller's
    /// op reads (for the aliasing rule only).
    pub fn validate(self) -> Result<QuantizeCall> {
        self.validate_with(&[], &[])
    }

    /// [`QuantizeArgs::validate`] where the caller's op also reads `extra_in` and writes
    /// `extra_out` (a fused chain's `J`, a statistics buffer): they join the aliasing rule.
    pub fn validate_with(self, extra_in: &[Buf], extra_out: &[Buf]) -> Result<QuantizeCall> {
        let x = &self.x;
        let dt = x.float_dtype()?;
        let grid = TokenGrid::new(self.shape, self.patch)?;
        let (n, t, mem) = (grid.numel(), grid.tokens(), x.mem());
        x.expect(dt.into(), n, mem)?;
        self.steps.expect(Elem::F32, t, mem)?;
        if let Some(s) = &self.symbols {
            s.expect_out(symbol_elem(self.bits), n, mem)?;
        }
        let in_place = self.recon.is_some_and(|r| r.same_array(x));
        if let Some(r) = &self.recon {
            r.expect_out(dt.into(), n, mem)?;
        }
        if in_place && !x.writable() {
            return Err(Error::Arg(format!("{} is read-only (in place)", x.name)));
        }
        if let Some(s) = &self.token_sse {
            s.expect_out(Elem::F32, t, mem)?;
        }
        if let Some(h) = &self.histogram_out {
            if !self.histogram {
                return Err(Error::Arg(format!("{} is given but the histogram is not counted", h.name)));
            }
            h.expect_out(Elem::U64, self.bits.hist_bins(), mem)?;
        }
        let mut inputs = vec![*x, self.steps];
        inputs.extend_from_slice(extra_in);
        let mut outputs: Vec<Buf> = [self.symbols, self.recon, self.token_sse, self.histogram_out].into_iter().flatten().collect();
        outputs.extend_from_slice(extra_out);
        let recon_name = self.recon.map_or("", |r| r.name);
        no_overlap(&inputs, &outputs, Some((recon_name, x.name)))?;
        Ok(QuantizeCall { a: self, grid, in_place })
    }
}

/// Records a host quantization's outcome in the kernels' statistics layout
/// (`raw::quantize_slots(bits, true)` slots): its statistics, or the bad element of a
/// `NonFinite`/`Jnd` error; any other error is the call's own.
pub(crate) fn record(s: &mut [i64], r: Result<QuantizeReport>) -> Result<()> {
    match r {
        Ok(q) => raw::encode_quantize(s, None, q.clamped, q.total_sse, q.histogram.as_deref()),
        Err(e) => match raw::bad_of_error(&e) {
            Some(b) => raw::encode_quantize(s, Some(b), 0, 0.0, None),
            None => return Err(e),
        },
    }
    Ok(())
}

/// `f` in `pool` (or rayon's global one).
pub(crate) fn in_pool<T: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> T + Send) -> T {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

impl QuantizeCall {
    /// The host run of a sync-free call (contract §8) in `pool`: the outcome goes to the
    /// statistics `s` as the kernels would record it — a bad step (the first, with its value),
    /// else a non-finite `x`, else the statistics — so one decoder serves the host and the device
    /// and both report the same error with the same index. Other errors are returned.
    pub fn record_host(&self, pool: Option<&rayon::ThreadPool>, s: &mut [i64]) -> Result<()> {
        self.a.x.on_host()?;
        // SAFETY: a validated host input of `T` f32 (the steps share `x`'s memory), only read.
        let steps: &[f32] = unsafe { self.a.steps.slice() };
        if let Some(t) = cpu::first_bad_step(steps) {
            let b = BadElement { input: Input::Step(steps[t].to_bits()), index: t };
            raw::encode_quantize(s, Some(b), 0, 0.0, None);
            return Ok(());
        }
        record(s, in_pool(pool, || self.run_host()))
    }

    /// The CPU path (multi-threaded on the current rayon pool). The steps' values are checked
    /// before anything is read (contract §4.2).
    pub(crate) fn run_host(&self) -> Result<QuantizeReport> {
        let (a, g) = (&self.a, &self.grid);
        a.x.on_host()?;
        // Every slice below: host arrays of a validated call, so each is live, aligned and as long
        // as viewed (`Buf::new`'s contract, `validate`'s checks); outputs overlap no input and no
        // other output (checked), so each mutable slice is the only view of its memory; in place,
        // `x` is viewed once, mutably, and the steps overlap it nowhere.
        // SAFETY: see above.
        let steps: &[f32] = unsafe { a.steps.slice() };
        let symbols = match (&a.symbols, a.bits) {
            (None, _) => Symbols::None,
            // SAFETY: see above.
            (Some(s), Bits::B8) => Symbols::I8(unsafe { s.slice_mut() }),
            // SAFETY: see above.
            (Some(s), Bits::B16) => Symbols::I16(unsafe { s.slice_mut() }),
        };
        // SAFETY: see above.
        let token_sse = a.token_sse.map(|s| unsafe { s.slice_mut::<f32>() });
        let dt = a.x.float_dtype()?;
        let stats: QuantStats = with_elem!(dt, E => {
            if self.in_place {
                // SAFETY: see above.
                let xs: &mut [E] = unsafe { a.x.slice_mut() };
                cpu::quantize_in_place::<E>(xs, g, steps, a.bits, symbols, token_sse, a.histogram)?
            } else {
                // SAFETY: see above.
                let xs: &[E] = unsafe { a.x.slice() };
                // SAFETY: see above.
                let recon = a.recon.map(|r| unsafe { r.slice_mut::<E>() });
                cpu::quantize::<E>(xs, g, steps, a.bits, QuantOut { symbols, recon, token_sse, histogram: a.histogram })?
            }
        });
        if let (Some(out), Some(h)) = (&a.histogram_out, &stats.histogram) {
            // SAFETY: see above (a validated output of `hist_bins == h.len()` u64).
            unsafe { out.slice_mut::<u64>() }.copy_from_slice(h);
        }
        Ok(QuantizeReport::finish(g, stats))
    }
}
