//! The rANS encoder's group loop in AVX2 (8 lanes per vector, 1, 2 or 4 vectors), chosen at run
//! time. It writes exactly what the scalar loop of [`super::rans::Encoder::encode`] writes: groups
//! from the last to the first, lanes from the highest to the lowest, each lane that renormalises
//! pushing its low 16 bits. In a vector the pushed words are packed (highest lane first) with a
//! shuffle chosen by the mask of the lanes that renormalise. The division `⌊x / f⌋` is done in
//! f64 (`x · (1/f)`, floored, corrected by one where `x / f` is an integer that rounded down).

use std::arch::x86_64::*;

/// Per symbol index: `freq << 16 | cum` (both below `2^16`) and `1/f` in f64, `2^16` entries
/// each (so that any `u16` index is inside; indices past the model's are never used).
pub(crate) struct Tables {
    fc: Vec<u32>,
    rcp: Vec<f64>,
}

impl Tables {
    /// `freq[k]`, `cum[k]` of every symbol index (0 for symbols that do not occur).
    pub(crate) fn new(freq: &[u32], cum: &[u32]) -> Tables {
        let (mut fc, mut rcp) = (vec![0u32; 1 << 16], vec![0.0f64; 1 << 16]);
        for (k, (&f, &c)) in freq.iter().zip(cum).enumerate().take(1 << 16) {
            fc[k] = (f << 16) | c;
            rcp[k] = if f == 0 { 0.0 } else { 1.0 / f as f64 };
        }
        Tables { fc, rcp }
    }
}

/// `PACK[m][k]`: the lane of the `k`-th renormalising lane of mask `m`, highest lane first.
static PACK: [[u32; 8]; 256] = {
    let mut t = [[0u32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let (mut k, mut j) = (0usize, 8usize);
        while j > 0 {
            j -= 1;
            if m & (1 << j) != 0 {
                t[m][k] = j as u32;
                k += 1;
            }
        }
        m += 1;
    }
    t
};

/// Encodes the whole groups `idx[..full]` (`full` a multiple of `8·V`), from the last group to the
/// first, updating the lane states `x` and pushing words into `words` from `*len` on.
///
/// # Safety
/// The CPU must support AVX2 and POPCNT; `x.len() == 8·V`; `1 ≤ precision ≤ 16`; `words` has
/// room for `*len + idx.len() + 8` words. (Every index of `idx` should have a non-zero frequency;
/// any other only makes a wrong chunk, never a bad memory access.)
#[target_feature(enable = "avx2,popcnt")]
pub(crate) unsafe fn encode_groups<const V: usize>(
    tables: &Tables,
    precision: u32,
    x: &mut [u32],
    idx: &[u16],
    words: &mut [u16],
    len: &mut usize,
) {
    let n = 8 * V;
    assert!(x.len() == n && idx.len().is_multiple_of(n) && words.len() >= *len + idx.len() + 8 && (1..=16).contains(&precision));
    assert!(tables.fc.len() == 1 << 16 && tables.rcp.len() == 1 << 16);
    // SAFETY: AVX2 and POPCNT are available (the caller's contract). `x` holds `8·V` states
    // (asserted); the index loads read 8 values inside a group of `idx` (a multiple of `8·V`
    // long, asserted); the gathers index the `2^16`-entry tables (asserted) with `u16` values;
    // each word store writes 8 words at `*len`, and `*len` grows by at most one per symbol, so with
    // the asserted room every store ends inside `words`.
    unsafe {
        let mut xs = [_mm256_setzero_si256(); V];
        for (v, s) in xs.iter_mut().enumerate() {
            *s = _mm256_loadu_si256(x.as_ptr().add(8 * v) as *const __m256i);
        }
        let lo16 = _mm256_set1_epi32(0xffff);
        let sign = _mm256_set1_epi32(i32::MIN);
        let two31 = _mm256_set1_pd(2147483648.0);
        let shift_max = _mm_cvtsi32_si128(32 - precision as i32);
        let shift_r = _mm_cvtsi32_si128(precision as i32);
        let (fc, rcp) = (tables.fc.as_ptr() as *const i32, tables.rcp.as_ptr());
        let wp = words.as_mut_ptr();
        for g in idx.chunks_exact(n).rev() {
            for v in (0..V).rev() {
                let k = _mm256_cvtepu16_epi32(_mm_loadu_si128(g.as_ptr().add(8 * v) as *const __m128i));
                let e = _mm256_i32gather_epi32::<4>(fc, k);
                let freq = _mm256_srli_epi32::<16>(e);
                let cum = _mm256_and_si256(e, lo16);
                let xmax = _mm256_sll_epi32(freq, shift_max);
                let st = xs[v];
                // x ≥ x_max, unsigned: max(x, x_max) == x.
                let big = _mm256_cmpeq_epi32(_mm256_max_epu32(st, xmax), st);
                let m = _mm256_movemask_ps(_mm256_castsi256_ps(big)) as usize;
                // Push the low halves of the renormalising lanes, highest lane first.
                let picked =
                    _mm256_permutevar8x32_epi32(_mm256_and_si256(st, lo16), _mm256_loadu_si256(PACK[m].as_ptr() as *const __m256i));
                let packed = _mm256_permute4x64_epi64::<0b10_00_10_00>(_mm256_packus_epi32(picked, picked));
                _mm_storeu_si128(wp.add(*len) as *mut __m128i, _mm256_castsi256_si128(packed));
                *len += (m as u32).count_ones() as usize;
                let st = _mm256_blendv_epi8(st, _mm256_srli_epi32::<16>(st), big);
                // q = ⌊x / f⌋ in f64 (x as unsigned: flip the sign bit, convert, add 2^31).
                let xlo = _mm256_add_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(_mm256_xor_si256(st, sign))), two31);
                let xhi = _mm256_add_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256::<1>(_mm256_xor_si256(st, sign))), two31);
                let rlo = _mm256_i32gather_pd::<8>(rcp, _mm256_castsi256_si128(k));
                let rhi = _mm256_i32gather_pd::<8>(rcp, _mm256_extracti128_si256::<1>(k));
                let qlo = _mm256_cvttpd_epi32(_mm256_floor_pd(_mm256_mul_pd(xlo, rlo)));
                let qhi = _mm256_cvttpd_epi32(_mm256_floor_pd(_mm256_mul_pd(xhi, rhi)));
                let mut q = _mm256_set_m128i(qhi, qlo);
                // One too small at most (never too large): x − q·f ≥ f → q + 1.
                let mut r = _mm256_sub_epi32(st, _mm256_mullo_epi32(q, freq));
                let fix = _mm256_cmpeq_epi32(_mm256_max_epu32(r, freq), r);
                q = _mm256_sub_epi32(q, fix); // fix is −1 where set
                r = _mm256_sub_epi32(r, _mm256_and_si256(fix, freq));
                xs[v] = _mm256_add_epi32(_mm256_add_epi32(_mm256_sll_epi32(q, shift_r), r), cum);
            }
        }
        for (v, s) in xs.iter().enumerate() {
            _mm256_storeu_si256(x.as_mut_ptr().add(8 * v) as *mut __m256i, *s);
        }
    }
}
