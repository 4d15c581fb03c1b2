//! CPU perturbation at a matched per-sample NRMSE (SPEC §6). Two passes over chunks of each
//! sample; the noise is regenerated from its Philox counters in pass 2, never stored.
use rayon::prelude::*;

use super::{first_bad, widen, SyncPtr};
use crate::error::{Error, Result};
use crate::geom::NoiseKind;
use crate::{philox, Element};

/// Elements per chunk (a multiple of 4: chunks start on Philox blocks within a sample).
const CHUNK: usize = 8192;

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
    // SAFETY: `x` holds `numel` elements and `lo..hi` is one chunk inside it. In place (`out ==
    // x`) a chunk is read through this slice only before the same task writes it (pass 2 widens
    // it to scratch first), and chunks of different tasks are disjoint.
    let xs = |lo: usize, hi: usize| -> &[E] { unsafe { std::slice::from_raw_parts(x.get().add(lo), hi - lo) } };
    let scratch = || (vec![0.0f32; CHUNK], vec![0.0f32; CHUNK], vec![0.0f32; CHUNK]);
    let bad_j = |v: f32| !(v.is_finite() && v > 0.0);

    // Pass 1: per-chunk sums of x² and (J ξ)², max |x| and max (J ξ)², plus the first bad index
    // of x and of J.
    let parts: Vec<Part> = (0..samples * per)
        .into_par_iter()
        .map_init(scratch, |(sx, sj, xi), c| {
            let (_, lo, hi) = chunk(c);
            let m = hi - lo;
            let xv = widen(xs(lo, hi), sx);
            philox::fill(&mut xi[..m], lo as u64, noise.seed, noise.subsequence, noise.kind);
            let (mut badx, mut badj) = (usize::MAX, usize::MAX);
            if xv.iter().map(|v| !v.is_finite() as u32).sum::<u32>() > 0 {
                badx = lo + first_bad(xv, |v| !v.is_finite()).unwrap();
            }
            let e = &mut xi[..m];
            if let Some(j) = jnd {
                let jv = widen(&j[lo..hi], sj);
                if jv.iter().map(|&v| bad_j(v) as u32).sum::<u32>() > 0 {
                    badj = lo + first_bad(jv, bad_j).unwrap();
                }
                e.iter_mut().zip(jv).for_each(|(e, &j)| *e *= j);
            }
            e.iter_mut().for_each(|e| *e *= *e);
            let max_x = xv.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let max_e = e.iter().fold(0.0f32, |a, &v| a.max(v));
            let qx = super::sum_lanes(sx_sq(xv, &mut sj[..m]));
            Part { sum_x: qx as f64, sum_e: super::sum_lanes(e) as f64, max_x, max_e, badx, badj }
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

    // Pass 2: regenerate ξ and write x + s·(J·ξ).
    (0..samples * per).into_par_iter().for_each_init(scratch, |(sx, sj, xi), c| {
        let (n, lo, hi) = chunk(c);
        let m = hi - lo;
        let s = scales[n];
        E::widen(xs(lo, hi), &mut sx[..m]);
        // SAFETY: `out` holds `numel` elements; this chunk is written by this task alone, and
        // (in place) its input slice above is no longer used.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(lo), m) };
        if s == 0.0 {
            E::narrow(&sx[..m], dst);
            return;
        }
        philox::fill(&mut xi[..m], lo as u64, noise.seed, noise.subsequence, noise.kind);
        if let Some(j) = jnd {
            let jv = widen(&j[lo..hi], sj);
            xi[..m].iter_mut().zip(jv).for_each(|(e, &j)| *e *= j);
        }
        sx[..m].iter_mut().zip(&xi[..m]).for_each(|(v, &e)| *v += s * e);
        E::narrow(&sx[..m], dst);
    });
    let zero_samples = sums.iter().enumerate().filter(|(_, s)| !(s.sum_x > 0.0)).map(|(i, _)| i).collect();
    Ok(PerturbReport { scales, zero_samples })
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
                "NRMSE {nrmse} on sample {n} would give values up to {bound:e}, beyond the largest finite {} ({:e})",
                E::DTYPE.name(),
                E::MAX_FINITE
            )));
        }
    }
    Ok(())
}

/// Squares of `x` into `buf` (returns it).
#[inline]
fn sx_sq<'a>(x: &[f32], buf: &'a mut [f32]) -> &'a [f32] {
    buf.iter_mut().zip(x).for_each(|(b, &v)| *b = v * v);
    buf
}
