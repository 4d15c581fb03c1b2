//! CPU token tolerance (contract §2), fused with the validation of J (finite, > 0), and the token RMS
//! of a feature (contract §3.5's caps), fused with its finiteness check: one reduction, two checks.
use rayon::prelude::*;

use super::{first_bad, sum_lanes, widen, Bands, SyncPtr};
use crate::error::{Error, Result};
use crate::geom::{Layout, Reduce, TokenGrid};
use crate::Element;

/// Not finite or not > 0 (two float compares: NaN fails both).
#[inline(always)]
fn bad_j(v: f32) -> bool {
    !(v > 0.0 && v < f32::INFINITY)
}

/// Not finite (a feature may be zero or negative).
#[inline(always)]
fn bad_x(v: f32) -> bool {
    !(v.abs() < f32::INFINITY)
}

/// Which values a reduction rejects.
#[derive(Clone, Copy, PartialEq)]
enum Check {
    /// A tolerance map: finite and > 0.
    Jnd,
    /// A feature: finite.
    Feature,
}

impl Check {
    #[inline(always)]
    fn bad(self, v: f32) -> bool {
        match self {
            Check::Jnd => bad_j(v),
            Check::Feature => bad_x(v),
        }
    }
}

/// Accumulates one segment into per-position accumulators and counts bad values, in one pass.
#[inline(always)]
fn accumulate(acc: &mut [f32], v: &[f32], reduce: Reduce, check: Check) -> u32 {
    let acc = &mut acc[..v.len()];
    let mut nbad = 0u32;
    match reduce {
        Reduce::Mean => acc.iter_mut().zip(v).for_each(|(a, &x)| {
            *a += x;
            nbad += check.bad(x) as u32;
        }),
        Reduce::Rms => acc.iter_mut().zip(v).for_each(|(a, &x)| {
            *a += x * x;
            nbad += check.bad(x) as u32;
        }),
        Reduce::Min => acc.iter_mut().zip(v).for_each(|(a, &x)| {
            *a = a.min(x);
            nbad += check.bad(x) as u32;
        }),
    }
    nbad
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn accumulate_avx2(acc: &mut [f32], v: &[f32], reduce: Reduce, check: Check) -> u32 {
    accumulate(acc, v, reduce, check)
}

#[inline]
fn accumulate_best(acc: &mut [f32], v: &[f32], reduce: Reduce, check: Check) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: `has_avx2` checked at run time that this CPU executes AVX2 instructions.
        return unsafe { accumulate_avx2(acc, v, reduce, check) };
    }
    accumulate(acc, v, reduce, check)
}

/// `j_t = reduce(J over token t)` for every token; errors on the first non-finite or non-positive J.
pub fn token_tolerance<E: Element>(jnd: &[E], grid: &TokenGrid, reduce: Reduce) -> Result<Vec<f32>> {
    if jnd.len() != grid.numel() {
        return Err(Error::Shape(format!("J has {} elements, the grid {}", jnd.len(), grid.numel())));
    }
    token_reduce(jnd, grid, reduce, Check::Jnd).map_err(|first| Error::Jnd { index: first, value: jnd[first].to_f32() })
}

/// `r_t = sqrt(Σ x² / K)` over token `t` of a feature (contract §3.5: the caps of the capped
/// allocation are `κ·r_t`); errors on the first non-finite `x`. Same reduction (and summation
/// order) as [`token_tolerance`] with `Reduce::Rms`.
pub fn token_rms<E: Element>(x: &[E], grid: &TokenGrid) -> Result<Vec<f32>> {
    if x.len() != grid.numel() {
        return Err(Error::Shape(format!("x has {} elements, the grid {}", x.len(), grid.numel())));
    }
    token_reduce(x, grid, Reduce::Rms, Check::Feature).map_err(|first| Error::NonFinite { index: first, value: x[first].to_f32() })
}

/// The shared reduction; `Err(i)` = the first flat index that `check` rejects.
fn token_reduce<E: Element>(jnd: &[E], grid: &TokenGrid, reduce: Reduce, check: Check) -> std::result::Result<Vec<f32>, usize> {
    let mut out = vec![0.0f32; grid.tokens()];
    let bands = Bands::new(*grid);
    let optr = SyncPtr(out.as_mut_ptr());
    let k = grid.k();
    let sl = bands.seg_len();
    let init = if reduce == Reduce::Min { f32::INFINITY } else { 0.0 };
    let finish = |a: f32| match reduce {
        Reduce::Min => a,
        Reduce::Mean => a / k as f32,
        Reduce::Rms => (a / k as f32).sqrt(),
    };
    let first = (0..bands.count)
        .into_par_iter()
        .with_min_len(bands.min_len())
        .fold(
            || (usize::MAX, vec![0.0f32; sl], vec![0.0f32; sl], Vec::<u32>::new(), Vec::<f32>::new()),
            |(mut bad, mut acc, mut scr, mut tok, mut tacc), b| {
                let (t0, nt) = bands.token_range(b);
                let o = optr;
                match grid.shape.layout {
                    Layout::Nchw => {
                        acc.fill(init);
                        bands.for_segments(b, |off, len, _| {
                            let v = widen(&jnd[off..off + len], &mut scr);
                            if accumulate_best(&mut acc, v, reduce, check) > 0 {
                                bad = bad.min(off + first_bad(v, |x| check.bad(x)).unwrap());
                            }
                        });
                        bands.local_tokens(b, &mut tok);
                        tacc.clear();
                        tacc.resize(nt, init);
                        for (e, &lt) in tok.iter().enumerate() {
                            let t = &mut tacc[lt as usize];
                            *t = if reduce == Reduce::Min { t.min(acc[e]) } else { *t + acc[e] };
                        }
                        for (i, &a) in tacc.iter().enumerate() {
                            // SAFETY: tokens `t0..t0 + nt` < T (the output's length) belong to this
                            // band: only this task writes them.
                            unsafe { *o.get().add(t0 + i) = finish(a) };
                        }
                    }
                    Layout::Ntc => bands.for_segments(b, |off, len, i| {
                        let v = widen(&jnd[off..off + len], &mut scr);
                        let a = match reduce {
                            Reduce::Mean => sum_lanes(v),
                            Reduce::Rms => {
                                acc[..len].iter_mut().zip(v).for_each(|(a, &x)| *a = x * x);
                                sum_lanes(&acc[..len])
                            }
                            Reduce::Min => v.iter().fold(f32::INFINITY, |m, &x| m.min(x)),
                        };
                        if v.iter().map(|&x| check.bad(x) as u32).sum::<u32>() > 0 {
                            bad = bad.min(off + first_bad(v, |x| check.bad(x)).unwrap());
                        }
                        // SAFETY: token `t0 + i` < T belongs to this band: only this task writes it.
                        unsafe { *o.get().add(t0 + i) = finish(a) };
                    }),
                }
                (bad, acc, scr, tok, tacc)
            },
        )
        .map(|(bad, ..)| bad)
        .min()
        .unwrap_or(usize::MAX);
    if first != usize::MAX {
        return Err(first);
    }
    Ok(out)
}
