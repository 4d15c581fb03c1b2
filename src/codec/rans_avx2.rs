//! The rANS decoder's group loop in AVX2 (8 lanes per vector, 1, 2 or 4 vectors), chosen at run
//! time. It decodes exactly as the scalar loop of [`super::rans::Decoder::decode`]: lanes in order,
//! each lane that falls below `2^16` after its symbol takes the next 16-bit word of the stream.
//! In a vector the words are loaded 8 at a time and spread to the lanes that need one with a
//! shuffle chosen by the mask of those lanes (lane `j` takes word `popcount(mask & (2^j − 1))`).

use std::arch::x86_64::*;

/// The slot tables of a model in the layout the gathers want: `fb[slot] = freq << 16 | bias` and
/// `sym[slot] = q`, `2^16` entries each (slots `≥ 2^R` are never read).
pub(crate) struct Tables {
    fb: Vec<u32>,
    sym: Vec<i32>,
}

impl Tables {
    pub(crate) fn new(table: &[(i32, u32)]) -> Tables {
        let (mut fb, mut sym) = (vec![0u32; 1 << 16], vec![0i32; 1 << 16]);
        let mut cum = 0usize;
        for &(q, f) in table {
            for b in 0..f as usize {
                fb[cum + b] = (f << 16) | b as u32;
                sym[cum + b] = q;
            }
            cum += f as usize;
        }
        Tables { fb, sym }
    }
}

/// `EXPAND[m][j]`: the word lane `j` takes when the lanes of mask `m` take one each.
static EXPAND: [[u32; 8]; 256] = {
    let mut t = [[0u32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let mut j = 0;
        let mut k = 0u32;
        while j < 8 {
            t[m][j] = k;
            if m & (1 << j) != 0 {
                k += 1;
            }
            j += 1;
        }
        m += 1;
    }
    t
};

/// Decodes whole groups of `8·V` symbols into `out` while at least `8·V` words remain (so every
/// 8-word load stays inside `words`); returns how many symbols it decoded. `x` (the `8·V` lane
/// states) and `p` (the next word) carry over to the scalar loop.
///
/// # Safety
/// The CPU must support AVX2 and POPCNT; `x.len() == 8·V`; `precision ≤ 16`; `tables` belongs to
/// the model of `precision`.
#[target_feature(enable = "avx2,popcnt")]
pub(crate) unsafe fn decode_groups<const V: usize>(
    tables: &Tables,
    precision: u32,
    x: &mut [u32],
    words: &[u16],
    p: &mut usize,
    out: &mut [i16],
) -> usize {
    let n = 8 * V;
    assert!(x.len() == n && tables.fb.len() == 1 << 16 && tables.sym.len() == 1 << 16 && precision <= 16);
    // SAFETY: AVX2 is available (the caller's contract). Loads and stores: `x` has `8·V` values
    // (asserted); each word load reads 8 words at `*p`, and `*p + 8·V ≤ words.len()` holds at the
    // start of a group while a group consumes at most `8·V` words, so every load of the group ends
    // by `words.len()`; the gathers index the `2^16`-entry tables with `slot & (2^R − 1) < 2^16`;
    // the symbol stores write `8·V` values at the start of each `out` group of `8·V` values.
    unsafe {
        let mut xs = [_mm256_setzero_si256(); V];
        for (v, s) in xs.iter_mut().enumerate() {
            *s = _mm256_loadu_si256(x.as_ptr().add(8 * v) as *const __m256i);
        }
        let mask = _mm256_set1_epi32(((1u32 << precision) - 1) as i32);
        let lo16 = _mm256_set1_epi32(0xffff);
        let zero = _mm256_setzero_si256();
        let shift = _mm_cvtsi32_si128(precision as i32);
        let (fb, sym) = (tables.fb.as_ptr() as *const i32, tables.sym.as_ptr());
        let mut done = 0;
        for g in out.chunks_exact_mut(n) {
            if words.len() - *p < n {
                break;
            }
            let mut q = [zero; V];
            for v in 0..V {
                let st = xs[v];
                let slot = _mm256_and_si256(st, mask);
                let e = _mm256_i32gather_epi32::<4>(fb, slot);
                q[v] = _mm256_i32gather_epi32::<4>(sym, slot);
                let freq = _mm256_srli_epi32::<16>(e);
                let bias = _mm256_and_si256(e, lo16);
                let nx = _mm256_add_epi32(_mm256_mullo_epi32(freq, _mm256_srl_epi32(st, shift)), bias);
                let need = _mm256_cmpeq_epi32(_mm256_srli_epi32::<16>(nx), zero);
                let m = _mm256_movemask_ps(_mm256_castsi256_ps(need)) as u32;
                let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(words.as_ptr().add(*p) as *const __m128i));
                let spread = _mm256_permutevar8x32_epi32(w, _mm256_loadu_si256(EXPAND[m as usize].as_ptr() as *const __m256i));
                let renorm = _mm256_or_si256(_mm256_slli_epi32::<16>(nx), spread);
                xs[v] = _mm256_blendv_epi8(nx, renorm, need);
                *p += m.count_ones() as usize;
            }
            // i32 → i16 in lane order: packs works per 128-bit half, permute puts the halves back.
            let mut v = 0;
            while v + 1 < V {
                let pk = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(q[v], q[v + 1]));
                _mm256_storeu_si256(g.as_mut_ptr().add(8 * v) as *mut __m256i, pk);
                v += 2;
            }
            if v < V {
                let pk = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(q[v], q[v]));
                _mm_storeu_si128(g.as_mut_ptr().add(8 * v) as *mut __m128i, _mm256_castsi256_si128(pk));
            }
            done += n;
        }
        for (v, s) in xs.iter().enumerate() {
            _mm256_storeu_si256(x.as_mut_ptr().add(8 * v) as *mut __m256i, *s);
        }
        done
    }
}
