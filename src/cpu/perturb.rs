//! CPU perturbation at a matched per-sample NRMSE (contract §6). Two passes over chunks of each
//! sample. Out of place with an f32 output the noise is made once: pass 1 writes `J ⊙ ξ` into the
//! output while it reduces the norms, pass 2 scales it and adds `x`. In place, and for f16/bf16
//! outputs, pass 2 regenerates ξ from its Philox counters (§6.2). Either way the result is the
//! same: `x + s·(J·ξ)` with the same three f32 operations on the same values.
use rayon::prelude::*;

use super::{first_bad, widen, SyncPtr};
use crate::error::{Error, Result};
use crate::geom::NoiseKind;
use crate::{philox, Element};

/// Elements per chunk (one rayon item): partial sums in f32 over a chunk, chunk sums in f64.
const CHUNK: usize = 8192;
/// Elements per sub-block of a chunk: noise, x, J and scratch stay in L1.
const SUB: usize = 1024;
/// Out of place f32 with `x`, `J` and the output together above this size: pass 1 streams `J ⊙ ξ`
/// to the output (it will not be in cache for pass 2 anyway).
const STREAM_BYTES: usize = 48 << 20;

/// Which noise, from which counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct NoiseSpec {
    pub kind: NoiseKind,
    pub seed: u64,
    pub subsequence: u32,
}

/// What a perturbation did, per sample.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PerturbReport {
    /// `s_n` (0 for a sample returned unchanged).
    pub scales: Vec<f32>,
    /// Samples with `‖x_n‖ = 0`, returned unchanged.
    pub zero_samples: Vec<usize>,
}

pub(crate) fn check_args<E>(x_len: usize, jnd: Option<&[E]>, samples: usize, nrmse: f64) -> Result<()> {
    if x_len == 0 || samples == 0 {
        return Err(Error::Empty("feature"));
    }
    if !x_len.is_multiple_of(samples) {
        return Err(Error::Shape(format!("{x_len} elements do not split into {samples} samples")));
    }
    if let Some(j) = jnd {
        if j.len() != x_len {
            return Err(Error::Shape(format!("J has {} elements, x {x_len}", j.len())));
        }
    }
    if !(nrmse.is_finite() && nrmse >= 0.0) {
        return Err(Error::Nrmse(nrmse));
    }
    Ok(())
}

/// `out = x + s_n · J ⊙ ξ` with `s_n` chosen so that every sample's NRMSE is `nrmse`.
/// `jnd = None` means `J ≡ 1` (the unstructured baseline).
pub fn perturb<E: Element>(
    x: &[E],
    jnd: Option<&[E]>,
    samples: usize,
    nrmse: f64,
    noise: NoiseSpec,
    out: &mut [E],
) -> Result<PerturbReport> {
    check_args(x.len(), jnd, samples, nrmse)?;
    if out.len() != x.len() {
        return Err(Error::Shape(format!("output has {} elements, x {}", out.len(), x.len())));
    }
    run(SyncPtr(x.as_ptr() as *mut E), jnd, samples, x.len(), nrmse, noise, SyncPtr(out.as_mut_ptr()))
}

/// In-place variant. The finiteness checks run in pass 1, before anything is written.
pub fn perturb_in_place<E: Element>(x: &mut [E], jnd: Option<&[E]>, samples: usize, nrmse: f64, noise: NoiseSpec) -> Result<PerturbReport> {
    check_args(x.len(), jnd, samples, nrmse)?;
    let p = SyncPtr(x.as_mut_ptr());
    run(p, jnd, samples, x.len(), nrmse, noise, p)
}

fn run<E: Element>(
    x: SyncPtr<E>,
    jnd: Option<&[E]>,
    samples: usize,
    numel: usize,
    nrmse: f64,
    noise: NoiseSpec,
    out: SyncPtr<E>,
) -> Result<PerturbReport> {
    let len = numel / samples;
    let per = len.div_ceil(CHUNK);
    let chunk = |c: usize| -> (usize, usize, usize) {
        let (n, i) = (c / per, c % per);
        let lo = n * len + i * CHUNK;
        (n, lo, (lo + CHUNK).min((n + 1) * len))
    };
    // Out of place with an f32 output, pass 1 leaves `J ⊙ ξ` in the output and pass 2 reads it
    // back: the noise is made once. In place (`x` is still needed in pass 2) and for f16/bf16
    // outputs (2 bytes cannot hold the f32 `J ⊙ ξ`, and rounding it would break the bit-exact
    // pass 2 of §6.2) pass 2 regenerates it from the same counters.
    let in_place = x.get() == out.get();
    let store = !in_place && E::DTYPE == crate::Dtype::F32;
    // A large output is written with streaming stores in pass 1 (no read-for-ownership of lines
    // that pass 2 would fetch from memory again anyway); a small one stays in the caches.
    let stream = store && 3 * numel * std::mem::size_of::<E>() > STREAM_BYTES;
    // SAFETY: `x` holds `numel` elements and `lo..hi` is one chunk inside it. In place (`out ==
    // x`) this view is only taken in pass 1 and for the error report, when nothing writes, and
    // chunks of different tasks are disjoint.
    let xs = |lo: usize, hi: usize| -> &[E] { unsafe { std::slice::from_raw_parts(x.get().add(lo), hi - lo) } };
    // SAFETY: `out` holds `numel` elements and `lo..hi` is one chunk inside it, written by one
    // task alone. Out of place it is disjoint from `x` and `J` (`perturb` takes `&mut [E]`);
    // in place it is `x`'s own chunk, and no other view of that chunk is alive in pass 2.
    let outs = |lo: usize, hi: usize| -> &mut [E] { unsafe { std::slice::from_raw_parts_mut(out.get().add(lo), hi - lo) } };

    // Pass 1: per-chunk sums of x² and (J ξ)², max |x| and max (J ξ)², plus the first bad index
    // of x and of J; `J ⊙ ξ` written to the output when `store`.
    let parts: Vec<Part> = (0..samples * per)
        .into_par_iter()
        .map(|c| {
            let (_, lo, hi) = chunk(c);
            let dst = if store { E::as_f32_slice_mut(outs(lo, hi)) } else { None };
            stats_chunk(xs(lo, hi), jnd.map(|j| &j[lo..hi]), dst, stream, lo, noise)
        })
        .collect();
    let (mut badx, mut badj) = (usize::MAX, usize::MAX);
    let mut sums = vec![Part::default(); samples];
    for (c, p) in parts.iter().enumerate() {
        let s = &mut sums[c / per];
        s.sum_x += p.sum_x;
        s.sum_e += p.sum_e;
        s.max_x = s.max_x.max(p.max_x);
        s.max_e = s.max_e.max(p.max_e);
        badx = badx.min(p.badx);
        badj = badj.min(p.badj);
    }
    if badx != usize::MAX {
        return Err(Error::NonFinite { index: badx, value: xs(badx, badx + 1)[0].to_f32() });
    }
    if badj != usize::MAX {
        return Err(Error::Jnd { index: badj, value: jnd.unwrap()[badj].to_f32() });
    }
    let scales: Vec<f32> =
        sums.iter().map(|p| if p.sum_x > 0.0 && p.sum_e > 0.0 { (nrmse * p.sum_x.sqrt() / p.sum_e.sqrt()) as f32 } else { 0.0 }).collect();
    check_overflow::<E>(&sums, &scales, nrmse)?;

    // Pass 2: x + s·(J·ξ), from the stored `J ⊙ ξ` or with ξ regenerated.
    (0..samples * per).into_par_iter().for_each(|c| {
        let (n, lo, hi) = chunk(c);
        let s = scales[n];
        if in_place {
            if s != 0.0 {
                apply_chunk(None, jnd.map(|j| &j[lo..hi]), outs(lo, hi), lo, s, noise);
            }
        } else if s == 0.0 {
            outs(lo, hi).copy_from_slice(xs(lo, hi));
        } else if store {
            add_stored(xs(lo, hi), outs(lo, hi), s);
        } else {
            apply_chunk(Some(xs(lo, hi)), jnd.map(|j| &j[lo..hi]), outs(lo, hi), lo, s, noise);
        }
    });
    let zero_samples = sums.iter().enumerate().filter(|(_, s)| !(s.sum_x > 0.0)).map(|(i, _)| i).collect();
    Ok(PerturbReport { scales, zero_samples })
}

/// Pass 1 over one chunk (`lo` its flat offset), in sub-blocks of [`SUB`] that stay in L1: ξ from
/// Philox into `e` (the output's f32 view when given, else scratch), `e ← J·ξ`, and the chunk's
/// statistics. An AVX2 build is chosen at run time.
fn stats_chunk<E: Element>(x: &[E], j: Option<&[E]>, e: Option<&mut [f32]>, stream: bool, lo: usize, noise: NoiseSpec) -> Part {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: `has_avx2_fma` checked at run time that this CPU executes AVX2 and FMA.
        return unsafe { stats_chunk_avx2(x, j, e, stream, lo, noise) };
    }
    stats_chunk_impl(x, j, e, stream, lo, noise)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn stats_chunk_avx2<E: Element>(x: &[E], j: Option<&[E]>, e: Option<&mut [f32]>, stream: bool, lo: usize, noise: NoiseSpec) -> Part {
    stats_chunk_impl(x, j, e, stream, lo, noise)
}

#[inline(always)]
fn stats_chunk_impl<E: Element>(x: &[E], j: Option<&[E]>, mut e: Option<&mut [f32]>, stream: bool, lo: usize, noise: NoiseSpec) -> Part {
    let (mut sx, mut sj, mut xi) = ([0.0f32; SUB], [0.0f32; SUB], [0.0f32; SUB]);
    let mut acc = Acc::default();
    for s0 in (0..x.len()).step_by(SUB) {
        let s1 = (s0 + SUB).min(x.len());
        let m = s1 - s0;
        let xv = widen(&x[s0..s1], &mut sx);
        let ev = match e.as_deref_mut() {
            Some(e) if !stream => &mut e[s0..s1],
            _ => &mut xi[..m],
        };
        philox::fill(ev, (lo + s0) as u64, noise.seed, noise.subsequence, noise.kind);
        match j {
            Some(j) => acc.add_j(xv, widen(&j[s0..s1], &mut sj), ev),
            None => acc.add(xv, ev),
        }
        if let (true, Some(e)) = (stream, e.as_deref_mut()) {
            super::stream_copy(&xi[..m], &mut e[s0..s1]);
        }
    }
    if stream {
        super::stream_fence();
    }
    // Non-finite x makes Σx² non-finite; bad J makes min J ≤ 0 or Σ(Jξ)² non-finite (NaN, ±∞).
    // Either only triggers the scan, which decides (a finite sum can also overflow).
    let mut p = acc.part();
    if !p.sum_x.is_finite() {
        p.badx = first_bad_in(x, |v| !v.is_finite()).map_or(usize::MAX, |i| lo + i);
    }
    if let Some(j) = j {
        if !(acc.min_j() > 0.0) || !p.sum_e.is_finite() {
            p.badj = first_bad_in(j, |v| !(v.is_finite() && v > 0.0)).map_or(usize::MAX, |i| lo + i);
        }
    }
    p
}

/// First index of `v` where `bad` holds (the slow path after a pass-1 trigger).
fn first_bad_in<E: Element>(v: &[E], bad: impl Fn(f32) -> bool) -> Option<usize> {
    let mut buf = [0.0f32; SUB];
    v.chunks(SUB).enumerate().find_map(|(k, c)| first_bad(widen(c, &mut buf), &bad).map(|i| k * SUB + i))
}

/// Pass 2 from the stored noise: `out ← x + s·out` (f32 out of place; `out` holds `J ⊙ ξ`).
fn add_stored<E: Element>(x: &[E], out: &mut [E], s: f32) {
    let (Some(x), Some(o)) = (E::as_f32_slice(x), E::as_f32_slice_mut(out)) else { unreachable!("stored noise needs f32") };
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: `has_avx2` checked at run time that this CPU executes AVX2 instructions.
        return unsafe { add_stored_avx2(x, o, s) };
    }
    add_stored_impl(x, o, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn add_stored_avx2(x: &[f32], o: &mut [f32], s: f32) {
    add_stored_impl(x, o, s)
}

#[inline(always)]
fn add_stored_impl(x: &[f32], o: &mut [f32], s: f32) {
    // Multiply, then add (no FMA): the contract's three f32 operations, the first done in pass 1.
    o.iter_mut().zip(x).for_each(|(o, &x)| *o = x + s * *o);
}

/// Pass 2 with ξ regenerated: `dst ← x + s·(J·ξ)`, `x = None` meaning in place (`dst` is `x`).
fn apply_chunk<E: Element>(x: Option<&[E]>, j: Option<&[E]>, dst: &mut [E], lo: usize, s: f32, noise: NoiseSpec) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: `has_avx2_fma` checked at run time that this CPU executes AVX2 and FMA.
        return unsafe { apply_chunk_avx2(x, j, dst, lo, s, noise) };
    }
    apply_chunk_impl(x, j, dst, lo, s, noise)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn apply_chunk_avx2<E: Element>(x: Option<&[E]>, j: Option<&[E]>, dst: &mut [E], lo: usize, s: f32, noise: NoiseSpec) {
    apply_chunk_impl(x, j, dst, lo, s, noise)
}

#[inline(always)]
fn apply_chunk_impl<E: Element>(x: Option<&[E]>, j: Option<&[E]>, dst: &mut [E], lo: usize, s: f32, noise: NoiseSpec) {
    let (mut sx, mut sj, mut xi) = ([0.0f32; SUB], [0.0f32; SUB], [0.0f32; SUB]);
    for s0 in (0..dst.len()).step_by(SUB) {
        let s1 = (s0 + SUB).min(dst.len());
        let m = s1 - s0;
        let xi = &mut xi[..m];
        philox::fill(xi, (lo + s0) as u64, noise.seed, noise.subsequence, noise.kind);
        if let Some(j) = j {
            xi.iter_mut().zip(widen(&j[s0..s1], &mut sj)).for_each(|(e, &j)| *e *= j);
        }
        let d = &mut dst[s0..s1];
        let v: &mut [f32] = match (x, E::as_f32_slice_mut(d)) {
            // f32 in place: update the output directly.
            (None, Some(d)) => d,
            (x, _) => {
                E::widen(x.map_or(&*d, |x| &x[s0..s1]), &mut sx[..m]);
                &mut sx[..m]
            }
        };
        v.iter_mut().zip(&*xi).for_each(|(v, &e)| *v += s * e);
        if !(x.is_none() && E::DTYPE == crate::Dtype::F32) {
            E::narrow(&sx[..m], &mut dst[s0..s1]);
        }
    }
}

/// Pass-1 accumulators: 16 lanes of f32 partial sums and extrema (the loops vectorise).
struct Acc {
    sx: [f32; 16],
    se: [f32; 16],
    mx: [f32; 16],
    me: [f32; 16],
    mj: [f32; 16],
}

impl Default for Acc {
    fn default() -> Self {
        Acc { sx: [0.0; 16], se: [0.0; 16], mx: [0.0; 16], me: [0.0; 16], mj: [f32::INFINITY; 16] }
    }
}

/// `max`/`min` that compile to one instruction (NaN handling does not matter: a NaN trips the
/// sums' check and the chunk is scanned).
#[inline(always)]
fn fmax(a: f32, b: f32) -> f32 {
    if b > a {
        b
    } else {
        a
    }
}
#[inline(always)]
fn fmin(a: f32, b: f32) -> f32 {
    if b < a {
        b
    } else {
        a
    }
}

impl Acc {
    #[inline(always)]
    fn lane(&mut self, l: usize, x: f32, e: f32) {
        let e2 = e * e;
        self.sx[l] += x * x;
        self.se[l] += e2;
        self.mx[l] = fmax(self.mx[l], x.abs());
        self.me[l] = fmax(self.me[l], e2);
    }
    /// `e` holds ξ (J ≡ 1).
    #[inline(always)]
    fn add(&mut self, x: &[f32], e: &[f32]) {
        let (xc, ec) = (x.chunks_exact(16), e.chunks_exact(16));
        let (xr, er) = (xc.remainder(), ec.remainder());
        for (x, e) in xc.zip(ec) {
            for l in 0..16 {
                self.lane(l, x[l], e[l]);
            }
        }
        for (l, (&x, &e)) in xr.iter().zip(er).enumerate() {
            self.lane(l, x, e);
        }
    }
    /// `e` holds ξ on entry and `J·ξ` on return.
    #[inline(always)]
    fn add_j(&mut self, x: &[f32], j: &[f32], e: &mut [f32]) {
        let n16 = x.len() / 16 * 16;
        for ((x, j), e) in x[..n16].chunks_exact(16).zip(j[..n16].chunks_exact(16)).zip(e[..n16].chunks_exact_mut(16)) {
            for l in 0..16 {
                let v = e[l] * j[l];
                e[l] = v;
                self.lane(l, x[l], v);
                self.mj[l] = fmin(self.mj[l], j[l]);
            }
        }
        for (l, ((&x, &j), e)) in x[n16..].iter().zip(&j[n16..]).zip(&mut e[n16..]).enumerate() {
            let v = *e * j;
            *e = v;
            self.lane(l, x, v);
            self.mj[l] = fmin(self.mj[l], j);
        }
    }
    fn min_j(&self) -> f32 {
        self.mj.iter().fold(f32::INFINITY, |a, &b| fmin(a, b))
    }
    /// The chunk's sums (f32 lanes added pairwise, then to f64) and extrema.
    fn part(&self) -> Part {
        let sum = |v: &[f32; 16]| {
            let h: [f32; 8] = std::array::from_fn(|l| v[l] + v[l + 8]);
            super::sum_lanes(&h) as f64
        };
        Part {
            sum_x: sum(&self.sx),
            sum_e: sum(&self.se),
            max_x: self.mx.iter().fold(0.0, |a, &b| fmax(a, b)),
            max_e: self.me.iter().fold(0.0, |a, &b| fmax(a, b)),
            badx: usize::MAX,
            badj: usize::MAX,
        }
    }
}

/// Pass-1 statistics of one chunk, or (summed) of one sample.
#[derive(Clone, Copy)]
struct Part {
    sum_x: f64,
    sum_e: f64,
    max_x: f32,
    max_e: f32,
    badx: usize,
    badj: usize,
}

impl Default for Part {
    fn default() -> Self {
        Part { sum_x: 0.0, sum_e: 0.0, max_x: 0.0, max_e: 0.0, badx: usize::MAX, badj: usize::MAX }
    }
}

/// Refuses, before anything is written, a strength whose result could leave the output dtype's
/// finite range: `|x + s·Jξ| ≤ max|x| + s·max|Jξ|` per sample (a file of infinities is never a
/// valid answer). The bound is tight to within the largest element, so it only refuses strengths
/// at the very edge of the range.
fn check_overflow<E: Element>(sums: &[Part], scales: &[f32], nrmse: f64) -> Result<()> {
    for (n, (p, &s)) in sums.iter().zip(scales).enumerate() {
        let bound = p.max_x as f64 + s as f64 * (p.max_e as f64).sqrt();
        if !s.is_finite() || bound * (1.0 + 1e-6) > E::MAX_FINITE as f64 {
            return Err(Error::Overflow(format!(
                "NRMSE {nrmse:e} on sample {n} would give values up to {bound:e}, beyond the largest finite {} ({:e})",
                E::DTYPE.name(),
                E::MAX_FINITE
            )));
        }
    }
    Ok(())
}
