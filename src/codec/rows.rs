//! Quantization and dequantization of any flat range of a feature (a chunk of version 3), fused
//! with the entropy coder so that no whole-tensor symbol array is needed. The arithmetic is SPEC
//! §4's, bit for bit as [`crate::cpu::quantize`] (and the channel mode's quantizer):
//! `q = rint_half_even(clamp(x · inv, ±(Q+1)))` clamped to `±Q` with `inv = 1.0f / Δ`, and
//! `x̂ = f32(q) · Δ` narrowed to the dtype.
//!
//! A range is cut into *segments* in which the step is one value (the tensor mode, an NTC token
//! row, an NCHW channel plane) or a per-element pattern (an NCHW plane with per-token steps, an
//! NTC row with per-channel steps).

use crate::cpu::quantize::StepAt;
use crate::element::Element;
use crate::geom::{Layout, TokenGrid};

const ROUND_MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
const MAGIC_BITS: i32 = 0x4B40_0000;

/// Which step each element uses.
#[derive(Clone, Copy)]
pub(crate) enum StepMap<'a> {
    Tensor(f32),
    Token(&'a [f32]),
    Channel(&'a [f32]),
}

/// The steps of a feature, ready for any range: their reciprocals, computed once.
pub(crate) struct Steps<'a> {
    grid: TokenGrid,
    map: StepMap<'a>,
    inv: Vec<f32>,
}

/// Per-thread scratch: the per-element steps of one NCHW sample's plane (per-token steps).
#[derive(Default)]
pub(crate) struct Scratch {
    sample: Option<usize>,
    step: Vec<f32>,
    inv: Vec<f32>,
    xf: Vec<f32>,
    yf: Vec<f32>,
    ef: Vec<f32>,
}

/// The step of a segment.
#[derive(Clone, Copy)]
enum Seg<'s> {
    One(f32, f32),
    Each(&'s [f32], &'s [f32]),
}

impl<'a> Steps<'a> {
    pub(crate) fn new(grid: TokenGrid, map: StepMap<'a>) -> Steps<'a> {
        let inv = match map {
            StepMap::Tensor(s) => vec![1.0f32 / s],
            StepMap::Token(v) | StepMap::Channel(v) => v.iter().map(|&d| 1.0f32 / d).collect(),
        };
        Steps { grid, map, inv }
    }

    /// Calls `f(offset in the range, length, segment)` for the segments of `start..end`.
    fn for_segments(&self, start: usize, end: usize, sc: &mut Scratch, mut f: impl FnMut(usize, usize, Seg<'_>)) {
        let [_, a, b, c] = self.grid.shape.dims;
        let nchw = self.grid.shape.layout == Layout::Nchw;
        // Segment length: the run of elements sharing one step pattern.
        let (seg, kind) = match (self.map, nchw) {
            (StepMap::Tensor(_), _) => (end - start, 0),
            (StepMap::Token(_), false) => (b, 1),      // NTC token row of C
            (StepMap::Channel(_), false) => (b, 2),    // NTC row, per-channel steps
            (StepMap::Channel(_), true) => (b * c, 3), // NCHW channel plane
            (StepMap::Token(_), true) => (b * c, 4),   // NCHW plane, per-token steps
        };
        if seg == 0 {
            return;
        }
        let mut i = start;
        while i < end {
            let r = i / seg;
            let lo = i - r * seg;
            let len = (seg - lo).min(end - i);
            let off = i - start;
            match (kind, self.map) {
                (0, StepMap::Tensor(s)) => f(off, len, Seg::One(s, self.inv[0])),
                (1, StepMap::Token(v)) => f(off, len, Seg::One(v[r], self.inv[r])),
                (2, StepMap::Channel(v)) => f(off, len, Seg::Each(&v[lo..lo + len], &self.inv[lo..lo + len])),
                (3, StepMap::Channel(v)) => f(off, len, Seg::One(v[r % a], self.inv[r % a])),
                (4, StepMap::Token(v)) => {
                    let s = r / a;
                    if sc.sample != Some(s) {
                        let (p, w) = (self.grid.patch, c);
                        let tw = w / p;
                        let t0 = s * (b / p) * tw;
                        sc.step.resize(b * c, 0.0);
                        sc.inv.resize(b * c, 0.0);
                        for y in 0..b {
                            for x in 0..w {
                                let t = t0 + (y / p) * tw + x / p;
                                sc.step[y * w + x] = v[t];
                                sc.inv[y * w + x] = self.inv[t];
                            }
                        }
                        sc.sample = Some(s);
                    }
                    f(off, len, Seg::Each(&sc.step[lo..lo + len], &sc.inv[lo..lo + len]))
                }
                _ => unreachable!("segment kind matches the step map"),
            }
            i += len;
        }
    }
}

/// Totals of a quantized range.
#[derive(Default, Clone, Copy)]
pub(crate) struct QuantTotals {
    pub clamped: u64,
    pub sse: f64,
    /// Offset (in the range) of the first non-finite element.
    pub first_bad: Option<usize>,
}

/// Quantizes `x` (the elements `start..start + x.len()` of the feature) to symbol indices
/// `q + Q` in `idx`. With `stats`, also counts the clamped elements, the squared error and the
/// first non-finite element (otherwise the totals are zero: the caller already has them).
pub(crate) fn quantize<E: Element>(
    steps: &Steps,
    start: usize,
    x: &[E],
    qmax: f32,
    idx: &mut [u16],
    stats: bool,
    sc: &mut Scratch,
) -> QuantTotals {
    let mut tot = QuantTotals::default();
    let (mut xf, mut ef) = (std::mem::take(&mut sc.xf), std::mem::take(&mut sc.ef));
    steps.for_segments(start, start + x.len(), sc, |off, len, seg| {
        let xs = &x[off..off + len];
        if xf.len() < len {
            xf.resize(len, 0.0);
        }
        if stats && ef.len() < len {
            ef.resize(len, 0.0);
        }
        let xv = crate::cpu::widen(xs, &mut xf);
        let ix = &mut idx[off..off + len];
        let (cl, bad) = match (seg, stats) {
            (Seg::One(s, i), true) => quant_best::<f32, true>(xv, i, s, qmax, ix, &mut ef),
            (Seg::Each(s, i), true) => quant_best::<&[f32], true>(xv, i, s, qmax, ix, &mut ef),
            (Seg::One(s, i), false) => quant_best::<f32, false>(xv, i, s, qmax, ix, &mut ef),
            (Seg::Each(s, i), false) => quant_best::<&[f32], false>(xv, i, s, qmax, ix, &mut ef),
        };
        if stats {
            tot.clamped += cl as u64;
            tot.sse += crate::cpu::sum_lanes(&ef[..len]) as f64;
            if bad > 0 && tot.first_bad.is_none() {
                tot.first_bad = xv.iter().position(|v| !v.is_finite()).map(|p| off + p);
            }
        }
    });
    (sc.xf, sc.ef) = (xf, ef);
    tot
}

/// `out[i] = E(f32(sym[i]) · Δ)` for the elements `start..start + sym.len()`.
pub(crate) fn dequantize<E: Element>(steps: &Steps, start: usize, sym: &[i16], out: &mut [E], sc: &mut Scratch) {
    let mut yf = std::mem::take(&mut sc.yf);
    steps.for_segments(start, start + sym.len(), sc, |off, len, seg| {
        let q = &sym[off..off + len];
        let o = &mut out[off..off + len];
        match E::as_f32_slice_mut(o) {
            Some(o) => match seg {
                Seg::One(s, _) => dequant_best(q, s, o),
                Seg::Each(s, _) => dequant_best(q, s, o),
            },
            None => {
                if yf.len() < len {
                    yf.resize(len, 0.0);
                }
                match seg {
                    Seg::One(s, _) => dequant_best(q, s, &mut yf[..len]),
                    Seg::Each(s, _) => dequant_best(q, s, &mut yf[..len]),
                }
                E::narrow(&yf[..len], o);
            }
        }
    });
    sc.yf = yf;
}

/// The element loop: indices `q + Q`; with `STATS`, also `(x − x̂)²` into `e`.
/// Returns (clamped, non-finite). Plain per-element stores and integer counts only, so that it
/// vectorises (a float sum here would not: its order is fixed).
#[inline(always)]
fn quant_seg<S: StepAt, const STATS: bool>(x: &[f32], inv: S, step: S, qmax: f32, idx: &mut [u16], e: &mut [f32]) -> (u32, u32) {
    let n = x.len();
    let idx = &mut idx[..n];
    let e = if STATS { &mut e[..n] } else { &mut e[..0] };
    let (inv, step) = (inv.prefix(n), step.prefix(n));
    let (mut cl, mut nf) = (0u32, 0u32);
    let qi = qmax as i32;
    for i in 0..n {
        let v = x[i];
        nf += !(v.abs() < f32::INFINITY) as u32;
        let s = (v * inv.at(i)).clamp(-(qmax + 1.0), qmax + 1.0);
        let t = s + ROUND_MAGIC;
        idx[i] = (((t.to_bits() as i32) - MAGIC_BITS).clamp(-qi, qi) + qi) as u16;
        if STATS {
            let r = t - ROUND_MAGIC;
            cl += (r.abs() > qmax) as u32;
            let yv = r.clamp(-qmax, qmax) * step.at(i);
            let d = v - yv;
            e[i] = d * d;
        }
    }
    (cl, nf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quant_seg_avx2<S: StepAt, const STATS: bool>(x: &[f32], inv: S, step: S, qmax: f32, idx: &mut [u16], e: &mut [f32]) -> (u32, u32) {
    quant_seg::<S, STATS>(x, inv, step, qmax, idx, e)
}

#[inline]
fn quant_best<S: StepAt, const STATS: bool>(x: &[f32], inv: S, step: S, qmax: f32, idx: &mut [u16], e: &mut [f32]) -> (u32, u32) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx2() {
        // SAFETY: `has_avx2` checked at run time that this CPU executes AVX2 instructions.
        return unsafe { quant_seg_avx2::<S, STATS>(x, inv, step, qmax, idx, e) };
    }
    quant_seg::<S, STATS>(x, inv, step, qmax, idx, e)
}

#[inline(always)]
fn dequant_seg<S: StepAt>(q: &[i16], step: S, out: &mut [f32]) {
    let n = q.len();
    let (out, step) = (&mut out[..n], step.prefix(n));
    for i in 0..n {
        out[i] = q[i] as f32 * step.at(i);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dequant_seg_avx2<S: StepAt>(q: &[i16], step: S, out: &mut [f32]) {
    dequant_seg(q, step, out)
}

#[inline]
fn dequant_best<S: StepAt>(q: &[i16], step: S, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx2() {
        // SAFETY: `has_avx2` checked at run time that this CPU executes AVX2 instructions.
        return unsafe { dequant_seg_avx2(q, step, out) };
    }
    dequant_seg(q, step, out)
}
