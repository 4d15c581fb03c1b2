//! Fast CPU implementations of the SPEC ops on plain slices: rayon over *bands* of whole tokens,
//! each band streamed row by row through small f32 scratch rows (L1-resident), so every pass reads
//! memory once, allocates nothing per element, and the inner loops auto-vectorise.
//!
//! A band is one token row of a sample (NCHW: `W/p` tokens, visited as `C·p` rows of `W` elements)
//! or a run of whole tokens (NTC: rows of `K = C` contiguous elements).

pub mod perturb;
pub mod quantize;
pub mod token_stats;

pub use perturb::{perturb, perturb_in_place, PerturbReport};
pub use quantize::{quantize, quantize_in_place, QuantOut, QuantStats, Symbols};
pub use token_stats::token_tolerance;

use crate::geom::{Layout, TokenGrid};

/// A raw pointer that rayon tasks may share: every task writes a disjoint set of elements.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub *mut T);
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    #[inline(always)]
    pub fn get(self) -> *mut T {
        self.0
    }
}

/// Elements a rayon task should cover at least (amortises scheduling).
pub(crate) const TASK_ELEMS: usize = 1 << 16;

/// The bands of a grid: how many, and how many tokens each holds (the last NTC band may be short).
#[derive(Clone, Copy)]
pub(crate) struct Bands {
    pub grid: TokenGrid,
    pub count: usize,
    /// Tokens per band.
    pub tokens: usize,
    /// Elements per band (full band).
    pub elems: usize,
}

impl Bands {
    pub fn new(grid: TokenGrid) -> Self {
        let [n, c, h, w] = grid.shape.dims;
        match grid.shape.layout {
            Layout::Nchw => {
                let p = grid.patch;
                Bands { grid, count: n * (h / p), tokens: w / p, elems: c * p * w }
            }
            Layout::Ntc => {
                let k = grid.k().max(1);
                let per = (4096 / k).max(1);
                let t = grid.tokens();
                Bands { grid, count: t.div_ceil(per), tokens: per, elems: per * k }
            }
        }
    }
    /// Bands per rayon task.
    pub fn min_len(&self) -> usize {
        (TASK_ELEMS / self.elems.max(1)).max(1)
    }
    /// Length of the scratch rows a band needs.
    pub fn row_len(&self) -> usize {
        match self.grid.shape.layout {
            Layout::Nchw => self.grid.shape.dims[3],
            Layout::Ntc => self.grid.k(),
        }
    }
    /// First token and token count of band `b`.
    pub fn token_range(&self, b: usize) -> (usize, usize) {
        let t0 = b * self.tokens;
        (t0, self.tokens.min(self.grid.tokens() - t0))
    }
    /// Calls `f(flat_offset)` for every row of band `b`, in memory order within a channel.
    /// NCHW rows have `W` elements, element `w` in token `t0 + w/p`; NTC rows are whole tokens.
    #[inline]
    pub fn for_rows(&self, b: usize, mut f: impl FnMut(usize, usize)) {
        let [_, c, h, w] = self.grid.shape.dims;
        match self.grid.shape.layout {
            Layout::Nchw => {
                let p = self.grid.patch;
                let (n, th) = (b / (h / p), b % (h / p));
                for ch in 0..c {
                    for r in 0..p {
                        f(((n * c + ch) * h + th * p + r) * w, 0);
                    }
                }
            }
            Layout::Ntc => {
                let (t0, nt) = self.token_range(b);
                let k = self.grid.k();
                for i in 0..nt {
                    f((t0 + i) * k, i);
                }
            }
        }
    }
}

/// Sum of a slice with 8 independent f32 accumulators (vectorises; order: lanes, then lanes summed).
#[inline]
pub(crate) fn sum_lanes(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &r in rest {
        s += r;
    }
    s
}

/// Widens `src` into `scratch` unless it already is f32; returns the f32 view.
#[inline]
pub(crate) fn widen<'a, E: crate::Element>(src: &'a [E], scratch: &'a mut [f32]) -> &'a [f32] {
    match E::as_f32_slice(src) {
        Some(s) => s,
        None => {
            let s = &mut scratch[..src.len()];
            E::widen(src, s);
            s
        }
    }
}

/// First index in `v` for which `bad` holds (slow path, only after a pass saw one).
pub(crate) fn first_bad(v: &[f32], bad: impl Fn(f32) -> bool) -> Option<usize> {
    v.iter().position(|&x| bad(x))
}
