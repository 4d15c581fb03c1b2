//! CPU fused quantize / dequantize (contract §4), bit-identical with `kernels/quantize.cu`.
//!
//! Per element: `q = rint(x · inv_t)` (ties to even), clamped to ±Q, `x̂ = q · Δ_t`, with
//! `inv_t = 1/Δ_t` (one f32 division per token) and plain f32 multiplies (Rust never contracts to
//! FMA). Rounding uses the 1.5·2^23 trick on a value pre-clamped to ±(Q+1): exact ties-to-even for
//! |v| < 2^22, no libm call, and it vectorises on baseline x86-64.
use rayon::prelude::*;

use super::{first_bad, Bands, SyncPtr};
use crate::error::{Error, Result};
use crate::geom::{Bits, Layout, TokenGrid};
use crate::Element;

/// Where the symbols go.
pub enum Symbols<'a> {
    None,
    I8(&'a mut [i8]),
    I16(&'a mut [i16]),
}

/// Optional outputs of an out-of-place quantization.
pub struct QuantOut<'a, E> {
    pub symbols: Symbols<'a>,
    /// Reconstruction `x̂` (dtype of `x`).
    pub recon: Option<&'a mut [E]>,
    /// Per-token sum of squared error `e_t`.
    pub token_sse: Option<&'a mut [f32]>,
    /// Count a symbol histogram.
    pub histogram: bool,
}

impl<E> Default for QuantOut<'_, E> {
    fn default() -> Self {
        QuantOut { symbols: Symbols::None, recon: None, token_sse: None, histogram: false }
    }
}

/// Totals of one quantization.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantStats {
    /// Elements whose symbol was clamped to ±Q.
    pub clamped: u64,
    /// `Σ_t e_t` (f64 sum of the f32 token errors).
    pub total_sse: f64,
    /// Symbol histogram (`Bits::hist_bins` bins) when asked for.
    pub histogram: Option<Vec<u64>>,
}

impl QuantStats {
    /// Measured MSE per element.
    pub fn mse(&self, numel: usize) -> f64 {
        self.total_sse / numel as f64
    }
}

const ROUND_MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
const MAGIC_BITS: i32 = 0x4B40_0000; // bits of ROUND_MAGIC

/// Step source of a row: one per element (NCHW rows cross tokens) or one for the row (NTC).
/// Also the codec's (`codec::rows`).
pub(crate) trait StepAt: Copy {
    fn at(&self, i: usize) -> f32;
    /// Re-slices to exactly `n` (lets the compiler drop bounds checks and vectorise).
    fn prefix(self, n: usize) -> Self;
}
impl StepAt for f32 {
    #[inline(always)]
    fn at(&self, _: usize) -> f32 {
        *self
    }
    #[inline(always)]
    fn prefix(self, _: usize) -> Self {
        self
    }
}
impl StepAt for &[f32] {
    #[inline(always)]
    fn at(&self, i: usize) -> f32 {
        self[i]
    }
    #[inline(always)]
    fn prefix(self, n: usize) -> Self {
        &self[..n]
    }
}

/// The element loop. Writes symbols to `q`, `x̂` to `xh`, adds `(x−x̂)²` to `sse`; returns
/// (clamped, non-finite) counts. The integer symbol is read from the bits of `s + 1.5·2^23`
/// (its low mantissa bits hold `q`), so no float-to-int conversion is needed.
#[inline(always)]
fn quant_row<S: StepAt>(x: &[f32], inv: S, step: S, qmax: f32, q: &mut [i32], xh: &mut [f32], sse: &mut [f32]) -> (u32, u32) {
    let n = x.len();
    let (q, xh, sse) = (&mut q[..n], &mut xh[..n], &mut sse[..n]);
    let (inv, step) = (inv.prefix(n), step.prefix(n));
    let (mut cl, mut nf) = (0u32, 0u32);
    for i in 0..n {
        let v = x[i];
        nf += !(v.abs() < f32::INFINITY) as u32; // NaN and ±Inf
        let s = (v * inv.at(i)).clamp(-(qmax + 1.0), qmax + 1.0);
        let t = s + ROUND_MAGIC;
        let r = t - ROUND_MAGIC;
        cl += (r.abs() > qmax) as u32;
        let r = r.clamp(-qmax, qmax);
        let y = r * step.at(i);
        q[i] = ((t.to_bits() as i32) - MAGIC_BITS).clamp(-(qmax as i32), qmax as i32);
        xh[i] = y;
        let d = v - y;
        sse[i] += d * d;
    }
    (cl, nf)
}

/// `quant_row` compiled for AVX2 (8 lanes), chosen at run time; bit-identical (no FMA: Rust never
/// contracts, and the AVX2 build does the same IEEE operations).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quant_row_avx2<S: StepAt>(x: &[f32], inv: S, step: S, qmax: f32, q: &mut [i32], xh: &mut [f32], sse: &mut [f32]) -> (u32, u32) {
    quant_row(x, inv, step, qmax, q, xh, sse)
}

#[inline]
fn quant_row_best<S: StepAt>(x: &[f32], inv: S, step: S, qmax: f32, q: &mut [i32], xh: &mut [f32], sse: &mut [f32]) -> (u32, u32) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: `has_avx2` checked at run time that this CPU executes AVX2 instructions.
        return unsafe { quant_row_avx2(x, inv, step, qmax, q, xh, sse) };
    }
    quant_row(x, inv, step, qmax, q, xh, sse)
}

/// Symbols from the row of clamped integers (in range, so the casts are exact).
#[inline(always)]
fn narrow_symbols<S: Copy>(q: &[i32], dst: &mut [S], cast: impl Fn(i32) -> S) {
    for (d, &v) in dst.iter_mut().zip(q) {
        *d = cast(v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn narrow_symbols_avx2<S: Copy>(q: &[i32], dst: &mut [S], cast: impl Fn(i32) -> S) {
    narrow_symbols(q, dst, cast)
}

#[inline]
fn narrow_symbols_best<S: Copy>(q: &[i32], dst: &mut [S], cast: impl Fn(i32) -> S) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: `has_avx2` checked at run time that this CPU executes AVX2 instructions.
        return unsafe { narrow_symbols_avx2(q, dst, cast) };
    }
    narrow_symbols(q, dst, cast)
}

#[derive(Clone, Copy)]
enum SymPtr {
    None,
    I8(SyncPtr<i8>),
    I16(SyncPtr<i16>),
}

/// Raw form shared by the in-place and out-of-place entry points.
struct Raw<E> {
    x: SyncPtr<E>,
    recon: Option<SyncPtr<E>>,
    sym: SymPtr,
    sse: Option<SyncPtr<f32>>,
    hist: bool,
}

fn check_steps(steps: &[f32], grid: &TokenGrid) -> Result<()> {
    if steps.len() != grid.tokens() {
        return Err(Error::Shape(format!("{} steps for {} tokens", steps.len(), grid.tokens())));
    }
    check_steps_values(steps)
}

/// Contract §4.2: every step finite, > 0, with a finite reciprocal (the first bad one is named).
pub fn check_steps_values(steps: &[f32]) -> Result<()> {
    match first_bad_step(steps) {
        Some(t) => Err(step_error(t, steps[t])),
        None => Ok(()),
    }
}

/// The first step that is not finite, not > 0 or whose reciprocal is not finite (contract §4.2).
pub fn first_bad_step(steps: &[f32]) -> Option<usize> {
    steps.iter().position(|&d| !(d.is_finite() && d > 0.0 && (1.0 / d).is_finite()))
}

/// The error of a bad step `Δ[t] = value`, the same on every path (the kernels' bad-step cell
/// decodes to it too).
pub fn step_error(t: usize, value: f32) -> Error {
    Error::Arg(format!("step Δ[{t}] = {value} must be finite and > 0 (and 1/Δ finite)"))
}

/// Out-of-place quantization: `x` is never written.
pub fn quantize<E: Element>(x: &[E], grid: &TokenGrid, steps: &[f32], bits: Bits, out: QuantOut<'_, E>) -> Result<QuantStats> {
    if x.len() != grid.numel() {
        return Err(Error::Shape(format!("x has {} elements, the grid {}", x.len(), grid.numel())));
    }
    let n = x.len();
    let sym = match out.symbols {
        Symbols::None => SymPtr::None,
        Symbols::I8(s) if bits == Bits::B8 && s.len() == n => SymPtr::I8(SyncPtr(s.as_mut_ptr())),
        Symbols::I16(s) if bits == Bits::B16 && s.len() == n => SymPtr::I16(SyncPtr(s.as_mut_ptr())),
        _ => return Err(Error::Shape(format!("symbols must be {n} values of i{} for {}-bit symbols", bits.bits(), bits.bits()))),
    };
    if out.recon.as_ref().is_some_and(|r| r.len() != n) {
        return Err(Error::Shape(format!("reconstruction must have {n} elements")));
    }
    if out.token_sse.as_ref().is_some_and(|s| s.len() != grid.tokens()) {
        return Err(Error::Shape(format!("token_sse must have {} values", grid.tokens())));
    }
    check_steps(steps, grid)?;
    let raw = Raw {
        x: SyncPtr(x.as_ptr() as *mut E),
        recon: out.recon.map(|r| SyncPtr(r.as_mut_ptr())),
        sym,
        sse: out.token_sse.map(|s| SyncPtr(s.as_mut_ptr())),
        hist: out.histogram,
    };
    run(raw, grid, steps, bits)
}

/// In-place quantization: `x` becomes its reconstruction. If `x` holds a non-finite value the
/// call returns [`Error::NonFinite`] and `x` is unspecified (the check runs in the same pass).
pub fn quantize_in_place<E: Element>(
    x: &mut [E],
    grid: &TokenGrid,
    steps: &[f32],
    bits: Bits,
    symbols: Symbols<'_>,
    token_sse: Option<&mut [f32]>,
    histogram: bool,
) -> Result<QuantStats> {
    let p = SyncPtr(x.as_mut_ptr());
    let n = x.len();
    if n != grid.numel() {
        return Err(Error::Shape(format!("x has {n} elements, the grid {}", grid.numel())));
    }
    let sym = match symbols {
        Symbols::None => SymPtr::None,
        Symbols::I8(s) if bits == Bits::B8 && s.len() == n => SymPtr::I8(SyncPtr(s.as_mut_ptr())),
        Symbols::I16(s) if bits == Bits::B16 && s.len() == n => SymPtr::I16(SyncPtr(s.as_mut_ptr())),
        _ => return Err(Error::Shape(format!("symbols must be {n} values of i{} for {}-bit symbols", bits.bits(), bits.bits()))),
    };
    if token_sse.as_ref().is_some_and(|s| s.len() != grid.tokens()) {
        return Err(Error::Shape(format!("token_sse must have {} values", grid.tokens())));
    }
    check_steps(steps, grid)?;
    let raw = Raw { x: p, recon: Some(p), sym, sse: token_sse.map(|s| SyncPtr(s.as_mut_ptr())), hist: histogram };
    run(raw, grid, steps, bits)
}

struct Acc {
    clamped: u64,
    sse: f64,
    bad: usize,
    hist: Vec<u64>,
    /// The task's histogram counts not yet in `hist`.
    counts: HistCounts,
}

/// A symbol histogram counted into four interleaved `u32` tables: most symbols sit near 0, so
/// consecutive increments of one counter would wait on each other (a store-to-load chain per
/// element); four tables let four run at once. Flushed into `u64` bins before a counter could
/// overflow and at the end of a task.
struct HistCounts {
    tabs: Vec<u32>,
    nbins: usize,
    pending: u64,
}

impl HistCounts {
    fn new(nbins: usize) -> HistCounts {
        HistCounts { tabs: vec![0; 4 * nbins], nbins, pending: 0 }
    }

    fn count(&mut self, q: &[i32], bits: Bits, hist: &mut [u64]) {
        if self.pending + q.len() as u64 > u32::MAX as u64 {
            self.flush(hist);
        }
        self.pending += q.len() as u64;
        let (t01, t23) = self.tabs.split_at_mut(2 * self.nbins);
        let (t0, t1) = t01.split_at_mut(self.nbins);
        let (t2, t3) = t23.split_at_mut(self.nbins);
        let mut quads = q.chunks_exact(4);
        for c in &mut quads {
            t0[bits.bin(c[0])] += 1;
            t1[bits.bin(c[1])] += 1;
            t2[bits.bin(c[2])] += 1;
            t3[bits.bin(c[3])] += 1;
        }
        for &v in quads.remainder() {
            t0[bits.bin(v)] += 1;
        }
    }

    fn flush(&mut self, hist: &mut [u64]) {
        for (k, h) in hist.iter_mut().enumerate() {
            *h += (0..4).map(|i| self.tabs[i * self.nbins + k] as u64).sum::<u64>();
        }
        self.tabs.fill(0);
        self.pending = 0;
    }
}

struct Scratch {
    x: Vec<f32>,
    q: Vec<i32>,
    xh: Vec<f32>,
    sse: Vec<f32>,
    inv: Vec<f32>,
    step: Vec<f32>,
    tok: Vec<u32>,
    tsse: Vec<f32>,
}

fn run<E: Element>(raw: Raw<E>, grid: &TokenGrid, steps: &[f32], bits: Bits) -> Result<QuantStats> {
    let bands = Bands::new(*grid);
    let qmax = bits.qmax();
    let sl = bands.seg_len();
    let nchw = grid.shape.layout == Layout::Nchw;
    let nbins = if raw.hist { bits.hist_bins() } else { 0 };
    let raw = &raw;
    let new_acc = || Acc { clamped: 0, sse: 0.0, bad: usize::MAX, hist: vec![0; nbins], counts: HistCounts::new(nbins) };
    let acc = (0..bands.count)
        .into_par_iter()
        .with_min_len(bands.min_len())
        .fold(
            || {
                let v = || vec![0.0f32; sl];
                (new_acc(), Scratch { x: v(), q: vec![0; sl], xh: v(), sse: v(), inv: v(), step: v(), tok: Vec::new(), tsse: Vec::new() })
            },
            |(mut acc, mut s), b| {
                let (t0, nt) = bands.token_range(b);
                if nchw {
                    // Per-element steps of the segment, shared by every channel of the band.
                    bands.local_tokens(b, &mut s.tok);
                    for (e, &lt) in s.tok.iter().enumerate() {
                        let d = steps[t0 + lt as usize];
                        s.step[e] = d;
                        s.inv[e] = 1.0 / d;
                    }
                    s.sse[..s.tok.len()].fill(0.0);
                }
                bands.for_segments(b, |off, len, i| {
                    // SAFETY: segments of distinct bands are disjoint; `x` may alias `recon` (in
                    // place), so it is then copied to scratch before anything is written.
                    let xs: &[E] = unsafe { std::slice::from_raw_parts(raw.x.get().add(off), len) };
                    let in_place = raw.recon.is_some_and(|r| r.get() == raw.x.get());
                    let xv: &[f32] = match E::as_f32_slice(xs) {
                        Some(v) if !in_place => v,
                        _ => {
                            E::widen(xs, &mut s.x[..len]);
                            &s.x[..len]
                        }
                    };
                    // f32 out of place: x̂ goes straight into the output.
                    let direct: Option<&mut [f32]> = match raw.recon {
                        // SAFETY: `recon` holds `numel` elements (checked by the caller) and this
                        // band's segment `off..off + len` is written by this task alone.
                        Some(r) if !in_place => E::as_f32_slice_mut(unsafe { std::slice::from_raw_parts_mut(r.get().add(off), len) }),
                        _ => None,
                    };
                    let wrote_direct = direct.is_some();
                    let xh: &mut [f32] = match direct {
                        Some(d) => d,
                        None => &mut s.xh[..len],
                    };
                    let (cl, nf) = if nchw {
                        quant_row_best(xv, &s.inv[..len], &s.step[..len], qmax, &mut s.q, xh, &mut s.sse)
                    } else {
                        let d = steps[t0 + i];
                        s.sse[..len].fill(0.0);
                        let r = quant_row_best(xv, 1.0 / d, d, qmax, &mut s.q, xh, &mut s.sse);
                        let e = super::sum_lanes(&s.sse[..len]);
                        if let Some(sp) = raw.sse {
                            // SAFETY: token `t0 + i` < T (the length of `token_sse`, checked by
                            // the caller) belongs to this band, so only this task writes it.
                            unsafe { *sp.get().add(t0 + i) = e };
                        }
                        acc.sse += e as f64;
                        r
                    };
                    acc.clamped += cl as u64;
                    if nf > 0 {
                        acc.bad = acc.bad.min(off + first_bad(xv, |v| !v.is_finite()).unwrap());
                    }
                    if let (Some(r), false) = (raw.recon, wrote_direct) {
                        // SAFETY: as for `direct`: this task's own segment of `recon` (in place,
                        // `x`'s segment, already copied to scratch and no longer read).
                        E::narrow(&s.xh[..len], unsafe { std::slice::from_raw_parts_mut(r.get().add(off), len) });
                    }
                    match raw.sym {
                        SymPtr::None => {}
                        SymPtr::I8(sp) => {
                            // SAFETY: `symbols` holds `numel` elements; this segment is this task's.
                            let dst = unsafe { std::slice::from_raw_parts_mut(sp.get().add(off), len) };
                            narrow_symbols_best(&s.q[..len], dst, |v| v as i8);
                        }
                        SymPtr::I16(sp) => {
                            // SAFETY: `symbols` holds `numel` elements; this segment is this task's.
                            let dst = unsafe { std::slice::from_raw_parts_mut(sp.get().add(off), len) };
                            narrow_symbols_best(&s.q[..len], dst, |v| v as i16);
                        }
                    }
                    if raw.hist {
                        acc.counts.count(&s.q[..len], bits, &mut acc.hist);
                    }
                });
                if nchw {
                    s.tsse.clear();
                    s.tsse.resize(nt, 0.0);
                    for (e, &lt) in s.tok.iter().enumerate() {
                        s.tsse[lt as usize] += s.sse[e];
                    }
                    for (k, &e) in s.tsse.iter().enumerate() {
                        if let Some(sp) = raw.sse {
                            // SAFETY: token `t0 + k` < T belongs to this band: only this task writes it.
                            unsafe { *sp.get().add(t0 + k) = e };
                        }
                        acc.sse += e as f64;
                    }
                }
                (acc, s)
            },
        )
        .map(|(mut a, _)| {
            a.counts.flush(&mut a.hist);
            a
        })
        .reduce(new_acc, |mut a, b| {
            a.clamped += b.clamped;
            a.sse += b.sse;
            a.bad = a.bad.min(b.bad);
            a.hist.iter_mut().zip(&b.hist).for_each(|(x, y)| *x += y);
            a
        });
    if acc.bad != usize::MAX {
        // Out of place, x is intact; in place, the element may already be overwritten: report
        // the index and a NaN placeholder rather than read an unspecified buffer.
        let in_place = raw.recon.is_some_and(|r| r.get() == raw.x.get());
        // SAFETY: `acc.bad` < numel is an index of `x`, and every task has finished: out of
        // place, `x` is only read.
        let value = if in_place { f32::NAN } else { unsafe { (*raw.x.get().add(acc.bad)).to_f32() } };
        return Err(Error::NonFinite { index: acc.bad, value });
    }
    Ok(QuantStats { clamped: acc.clamped, total_sse: acc.sse, histogram: raw.hist.then_some(acc.hist) })
}
