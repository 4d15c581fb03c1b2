//! CPU token tolerance (SPEC §2), fused with the validation of J (finite, > 0).
use rayon::prelude::*;

use super::{first_bad, sum_lanes, widen, Bands, SyncPtr};
use crate::error::{Error, Result};
use crate::geom::{Layout, Reduce, TokenGrid};
use crate::Element;

fn bad_j(v: f32) -> bool {
    !(v.is_finite() && v > 0.0)
}

/// `j_t = reduce(J over token t)` for every token; errors on the first non-finite or non-positive J.
pub fn token_tolerance<E: Element>(jnd: &[E], grid: &TokenGrid, reduce: Reduce) -> Result<Vec<f32>> {
    if jnd.len() != grid.numel() {
        return Err(Error::Shape(format!("J has {} elements, the grid {}", jnd.len(), grid.numel())));
    }
    let mut out = vec![0.0f32; grid.tokens()];
    let bands = Bands::new(*grid);
    let optr = SyncPtr(out.as_mut_ptr());
    let (k, p) = (grid.k(), grid.patch);
    let first = (0..bands.count)
        .into_par_iter()
        .with_min_len(bands.min_len())
        .fold(
            || (usize::MAX, vec![0.0f32; bands.row_len()], vec![0.0f32; bands.row_len()]),
            |(mut bad, mut acc, mut scr), b| {
                let (t0, nt) = bands.token_range(b);
                let o = optr;
                let finish = |a: f32| match reduce {
                    Reduce::Min => a,
                    Reduce::Mean => a / k as f32,
                    Reduce::Rms => (a / k as f32).sqrt(),
                };
                match grid.shape.layout {
                    Layout::Nchw => {
                        acc.fill(if reduce == Reduce::Min { f32::INFINITY } else { 0.0 });
                        bands.for_rows(b, |off, _| {
                            let v = widen(&jnd[off..off + acc.len()], &mut scr);
                            let mut nbad = 0u32;
                            match reduce {
                                Reduce::Mean => acc.iter_mut().zip(v).for_each(|(a, &x)| *a += x),
                                Reduce::Rms => acc.iter_mut().zip(v).for_each(|(a, &x)| *a += x * x),
                                Reduce::Min => acc.iter_mut().zip(v).for_each(|(a, &x)| *a = a.min(x)),
                            }
                            v.iter().for_each(|&x| nbad += bad_j(x) as u32);
                            if nbad > 0 {
                                bad = bad.min(off + first_bad(v, bad_j).unwrap());
                            }
                        });
                        for tw in 0..nt {
                            let s = &acc[tw * p..tw * p + p];
                            let a = if reduce == Reduce::Min {
                                s.iter().fold(f32::INFINITY, |m, &x| m.min(x))
                            } else {
                                s.iter().sum()
                            };
                            unsafe { *o.0.add(t0 + tw) = finish(a) };
                        }
                    }
                    Layout::Ntc => bands.for_rows(b, |off, i| {
                        let v = widen(&jnd[off..off + k], &mut scr);
                        let a = match reduce {
                            Reduce::Mean => sum_lanes(v),
                            Reduce::Rms => {
                                acc.iter_mut().zip(v).for_each(|(a, &x)| *a = x * x);
                                sum_lanes(&acc)
                            }
                            Reduce::Min => v.iter().fold(f32::INFINITY, |m, &x| m.min(x)),
                        };
                        if v.iter().map(|&x| bad_j(x) as u32).sum::<u32>() > 0 {
                            bad = bad.min(off + first_bad(v, bad_j).unwrap());
                        }
                        unsafe { *o.0.add(t0 + i) = finish(a) };
                    }),
                }
                (bad, acc, scr)
            },
        )
        .map(|(bad, _, _)| bad)
        .min()
        .unwrap_or(usize::MAX);
    if first != usize::MAX {
        return Err(Error::Jnd { index: first, value: jnd[first].to_f32() });
    }
    Ok(out)
}
