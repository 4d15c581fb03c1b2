//! Fast CPU implementations of the ops of `docs/contract.md` on plain slices: rayon over *bands* of whole tokens,
//! each band streamed row by row through small f32 scratch rows (L1-resident), so every pass reads
//! memory once, allocates nothing per element, and the inner loops auto-vectorise.
//!
//! A band is one token row of a sample (NCHW: `W/p` tokens, visited as `C·p` rows of `W` elements)
//! or a run of whole tokens (NTC: rows of `K = C` contiguous elements).

pub mod perturb;
pub mod quantize;
pub mod token_stats;

pub use perturb::{perturb, perturb_in_place, PerturbReport};
pub use quantize::{check_steps_values, first_bad_step, quantize, quantize_in_place, step_error, QuantOut, QuantStats, Symbols};
pub use token_stats::{token_rms, token_tolerance};

use crate::geom::{Layout, TokenGrid};

/// A raw pointer that rayon tasks may share: every task writes a disjoint set of elements.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub *mut T);
// SAFETY: a SyncPtr is only handed to rayon tasks that touch disjoint elements through it (the
// bands and chunks of the CPU ops), so sending or sharing it creates no data race.
unsafe impl<T> Send for SyncPtr<T> {}
// SAFETY: as for Send.
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

/// The bands of a grid. NCHW: a band is `rows` consecutive token rows of one sample, visited
/// as one contiguous segment of `rows·p·W` elements per channel (long enough to vectorise and
/// amortise per-segment work). NTC: a run of whole tokens, one segment of `K` per token.
#[derive(Clone, Copy)]
pub(crate) struct Bands {
    pub grid: TokenGrid,
    pub count: usize,
    /// NCHW: token rows per band; NTC: tokens per band.
    pub per: usize,
    /// NCHW: bands per sample.
    per_sample: usize,
    /// Elements per full band.
    pub elems: usize,
}

/// Aim for segments of about this many elements.
const SEGMENT: usize = 2048;

impl Bands {
    pub fn new(grid: TokenGrid) -> Self {
        let [n, c, h, w] = grid.shape.dims;
        match grid.shape.layout {
            Layout::Nchw => {
                let p = grid.patch;
                let hp = h / p;
                // Segments of about SEGMENT elements; but where that leaves fewer bands than two
                // per thread (few, small samples: a 1 MiB [1, 256, 32, 32] was one band, so one
                // thread did all of it), shorter bands, down to one token row.
                let per = (SEGMENT / (p * w)).clamp(1, hp);
                let want = 2 * rayon::current_num_threads();
                let per = if n * hp.div_ceil(per) < want { hp.div_ceil(want.div_ceil(n)).clamp(1, per) } else { per };
                let per_sample = hp.div_ceil(per);
                Bands { grid, count: n * per_sample, per, per_sample, elems: c * per * p * w }
            }
            Layout::Ntc => {
                let k = grid.k().max(1);
                let per = (4096 / k).max(1);
                Bands { grid, count: grid.tokens().div_ceil(per), per, per_sample: 0, elems: per * k }
            }
        }
    }
    /// Bands per rayon task.
    pub fn min_len(&self) -> usize {
        (TASK_ELEMS / self.elems.max(1)).max(1)
    }
    /// Length of the longest segment (scratch size).
    pub fn seg_len(&self) -> usize {
        match self.grid.shape.layout {
            Layout::Nchw => self.per * self.grid.patch * self.grid.shape.dims[3],
            Layout::Ntc => self.grid.k(),
        }
    }
    /// NCHW: (sample, first token row, token rows) of band `b`.
    fn nchw_rows(&self, b: usize) -> (usize, usize, usize) {
        let hp = self.grid.shape.dims[2] / self.grid.patch;
        let (n, i) = (b / self.per_sample, b % self.per_sample);
        let th0 = i * self.per;
        (n, th0, self.per.min(hp - th0))
    }
    /// First token and token count of band `b`.
    pub fn token_range(&self, b: usize) -> (usize, usize) {
        match self.grid.shape.layout {
            Layout::Nchw => {
                let [_, _, h, w] = self.grid.shape.dims;
                let (p, (n, th0, rows)) = (self.grid.patch, self.nchw_rows(b));
                ((n * (h / p) + th0) * (w / p), rows * (w / p))
            }
            Layout::Ntc => {
                let t0 = b * self.per;
                (t0, self.per.min(self.grid.tokens() - t0))
            }
        }
    }
    /// NCHW: the band-local token of every element of a segment (same for all channels).
    pub fn local_tokens(&self, b: usize, out: &mut Vec<u32>) {
        let [_, _, _, w] = self.grid.shape.dims;
        let p = self.grid.patch;
        let (_, _, rows) = self.nchw_rows(b);
        out.clear();
        out.extend((0..rows * p * w).map(|e| ((e / (p * w)) * (w / p) + (e % w) / p) as u32));
    }
    /// Calls `f(flat_offset, len, i)` for every segment of band `b`: NCHW, one per channel
    /// (`i` = 0); NTC, one per token (`i` = token index within the band).
    #[inline]
    pub fn for_segments(&self, b: usize, mut f: impl FnMut(usize, usize, usize)) {
        let [_, c, h, w] = self.grid.shape.dims;
        match self.grid.shape.layout {
            Layout::Nchw => {
                let p = self.grid.patch;
                let (n, th0, rows) = self.nchw_rows(b);
                let len = rows * p * w;
                for ch in 0..c {
                    f(((n * c + ch) * h + th0 * p) * w, len, 0);
                }
            }
            Layout::Ntc => {
                let (t0, nt) = self.token_range(b);
                let k = self.grid.k();
                for i in 0..nt {
                    f((t0 + i) * k, k, i);
                }
            }
        }
    }
}

/// Does this CPU have AVX2? (Probed once; hot loops have an AVX2 build chosen at run time.)
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| std::is_x86_feature_detected!("avx2"))
}

/// Does this CPU have AVX2 and FMA? (Probed once; the noise generator's SIMD build needs both.)
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    static AVX2_FMA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2_FMA.get_or_init(|| has_avx2() && std::is_x86_feature_detected!("fma"))
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

/// `dst.copy_from_slice(src)` with streaming (non-temporal) stores where the CPU has AVX: the
/// lines are not read for ownership and do not evict the caches. Call [`stream_fence`] before
/// another thread may read `dst`.
#[inline]
pub(crate) fn stream_copy(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "stream_copy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: `has_avx2` checked at run time that this CPU executes AVX (and AVX2).
        return unsafe { stream_copy_avx(src, dst) };
    }
    dst.copy_from_slice(src)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn stream_copy_avx(src: &[f32], dst: &mut [f32]) {
    use std::arch::x86_64::{_mm256_loadu_ps, _mm256_stream_ps};
    let n = dst.len();
    // Plain stores up to the first 32-byte boundary of `dst`, streaming stores from there.
    let head = dst.as_ptr().align_offset(32).min(n);
    dst[..head].copy_from_slice(&src[..head]);
    let mut i = head;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n` = both lengths, so 8 f32 are read from `src[i..]` and written to
        // `dst[i..]`; `dst + i` is 32-byte aligned (`head` aligned it and `i` advances by 8 f32),
        // as `_mm256_stream_ps` requires.
        unsafe { _mm256_stream_ps(dst.as_mut_ptr().add(i), _mm256_loadu_ps(src.as_ptr().add(i))) };
        i += 8;
    }
    dst[i..].copy_from_slice(&src[i..]);
}

/// Orders this thread's streaming stores before its later stores (and so before the rayon join
/// that publishes them).
#[inline]
pub(crate) fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86_64 baseline; `sfence` has no operands.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    }
}

/// First index in `v` for which `bad` holds (slow path, only after a pass saw one).
pub(crate) fn first_bad(v: &[f32], bad: impl Fn(f32) -> bool) -> Option<usize> {
    v.iter().position(|&x| bad(x))
}
