//! Counter-based random numbers: Philox4x32-10 (SPEC §5), bit-identical with `kernels/common.cuh`.
use crate::geom::NoiseKind;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;
#[allow(clippy::excessive_precision)]
const SQRT3: f32 = 1.732_050_807_568_877_2;

/// One Philox4x32-10 evaluation (the Random123 definition).
#[inline(always)]
pub fn philox4x32_10(mut c: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut k0, mut k1) = (key[0], key[1]);
    for _ in 0..10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [((p1 >> 32) as u32) ^ c[1] ^ k0, p1 as u32, ((p0 >> 32) as u32) ^ c[3] ^ k1, p0 as u32];
        k0 = k0.wrapping_add(W0);
        k1 = k1.wrapping_add(W1);
    }
    c
}

/// The key of a u64 seed: `(s & 0xffffffff, s >> 32)`.
#[inline(always)]
pub fn key_of(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// The 4 words of Philox block `g` (flat elements `4g..4g+3`) for a seed and subsequence (the third counter word).
#[inline(always)]
pub fn block(g: u64, seed: u64, subsequence: u32) -> [u32; 4] {
    philox4x32_10([g as u32, (g >> 32) as u32, subsequence, 0], key_of(seed))
}

/// `u = (r >> 8) · 2^-24` in `[0, 1)`, exact in f32.
#[inline(always)]
pub fn u01(r: u32) -> f32 {
    (r >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Unit-variance uniform noise `(2u − 1)·sqrt(3)`, one f32 operation per step.
#[inline(always)]
pub fn uniform_noise(r: u32) -> f32 {
    (2.0f32 * u01(r) - 1.0f32) * SQRT3
}

/// Box–Muller on a pair of words: `(sqrt(−2 ln u1)·cos(2πu2), sqrt(−2 ln u1)·sin(2πu2))`.
#[inline(always)]
pub fn box_muller(r0: u32, r1: u32) -> (f32, f32) {
    crate::boxmuller::box_muller(u01(r0) + 1.0 / 33_554_432.0, u01(r1))
}

/// The four noise values of block `g`.
#[inline(always)]
pub fn noise4(g: u64, seed: u64, subsequence: u32, kind: NoiseKind) -> [f32; 4] {
    let r = block(g, seed, subsequence);
    match kind {
        NoiseKind::Uniform => r.map(uniform_noise),
        NoiseKind::Gaussian => {
            let (a, b) = box_muller(r[0], r[1]);
            let (c, d) = box_muller(r[2], r[3]);
            [a, b, c, d]
        }
    }
}

/// Blocks generated together by the batched generator (structure of arrays, vectorises).
const LANES: usize = 8;

/// Philox4x32-10 for blocks `g0 .. g0+8`: `w[word][block]`. The same rounds as [`philox4x32_10`],
/// laid out so the compiler maps each round onto SIMD multiplies.
#[inline(always)]
fn blocks8(g0: u64, seed: u64, subsequence: u32) -> [[u32; LANES]; 4] {
    let [mut k0, mut k1] = key_of(seed);
    let mut c = [[0u32; LANES]; 4];
    for b in 0..LANES {
        let g = g0 + b as u64;
        c[0][b] = g as u32;
        c[1][b] = (g >> 32) as u32;
        c[2][b] = subsequence;
    }
    for _ in 0..10 {
        let mut n = [[0u32; LANES]; 4];
        for b in 0..LANES {
            let p0 = (M0 as u64) * (c[0][b] as u64);
            let p1 = (M1 as u64) * (c[2][b] as u64);
            n[0][b] = ((p1 >> 32) as u32) ^ c[1][b] ^ k0;
            n[1][b] = p1 as u32;
            n[2][b] = ((p0 >> 32) as u32) ^ c[3][b] ^ k1;
            n[3][b] = p0 as u32;
        }
        c = n;
        k0 = k0.wrapping_add(W0);
        k1 = k1.wrapping_add(W1);
    }
    c
}

/// [`blocks8`] with explicit AVX2: `vpmuludq` on the even and odd lanes gives the eight 32×32→64
/// products of a round in four multiplies. Bit-identical to the scalar rounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn blocks8_avx2(g0: u64, seed: u64, subsequence: u32) -> [[u32; LANES]; 4] {
    use std::arch::x86_64::*;
    let [k0, k1] = key_of(seed);
    let mut lo = [0u32; LANES];
    let mut hi = [0u32; LANES];
    for b in 0..LANES {
        let g = g0 + b as u64;
        lo[b] = g as u32;
        hi[b] = (g >> 32) as u32;
    }
    // SAFETY: `lo` and `hi` are 8 u32 = 32 bytes each, exactly one unaligned 256-bit load.
    let (mut c0, mut c1) =
        unsafe { (_mm256_loadu_si256(lo.as_ptr() as *const __m256i), _mm256_loadu_si256(hi.as_ptr() as *const __m256i)) };
    let mut c2 = _mm256_set1_epi32(subsequence as i32);
    let mut c3 = _mm256_setzero_si256();
    let (m0, m1) = (_mm256_set1_epi32(M0 as i32), _mm256_set1_epi32(M1 as i32));
    let (mut kk0, mut kk1) = (k0, k1);
    // (lo, hi) 32-bit halves of a * m for all 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mulhilo(a: __m256i, m: __m256i) -> (__m256i, __m256i) {
        let even = _mm256_mul_epu32(a, m);
        let odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
        let lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0b1010_1010);
        let hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0b1010_1010);
        (lo, hi)
    }
    for _ in 0..10 {
        let (lo0, hi0) = mulhilo(c0, m0);
        let (lo1, hi1) = mulhilo(c2, m1);
        let n0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(kk0 as i32));
        let n2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(kk1 as i32));
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        kk0 = kk0.wrapping_add(W0);
        kk1 = kk1.wrapping_add(W1);
    }
    let mut w = [[0u32; LANES]; 4];
    for (i, v) in [c0, c1, c2, c3].into_iter().enumerate() {
        // SAFETY: `w[i]` is 8 u32 = 32 bytes, exactly one unaligned 256-bit store.
        unsafe { _mm256_storeu_si256(w[i].as_mut_ptr() as *mut __m256i, v) };
    }
    w
}

/// Noise of 32 consecutive elements starting at block `g0` (element `4·g0`).
#[inline(always)]
fn noise32(g0: u64, seed: u64, subsequence: u32, kind: NoiseKind, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `has_avx2` checked at run time that this CPU executes AVX2 instructions.
    let w = if crate::cpu::has_avx2() { unsafe { blocks8_avx2(g0, seed, subsequence) } } else { blocks8(g0, seed, subsequence) };
    #[cfg(not(target_arch = "x86_64"))]
    let w = blocks8(g0, seed, subsequence);
    let out = &mut out[..4 * LANES];
    match kind {
        NoiseKind::Uniform => {
            // Convert word-major (contiguous, vectorises), then interleave to element order.
            let mut u = [[0.0f32; LANES]; 4];
            for l in 0..4 {
                for b in 0..LANES {
                    u[l][b] = uniform_noise(w[l][b]);
                }
            }
            for b in 0..LANES {
                out[4 * b..4 * b + 4].copy_from_slice(&[u[0][b], u[1][b], u[2][b], u[3][b]]);
            }
        }
        NoiseKind::Gaussian => {
            let (mut a, mut c) = ([0.0f32; 2 * LANES], [0.0f32; 2 * LANES]);
            for b in 0..LANES {
                a[2 * b] = u01(w[0][b]) + 1.0 / 33_554_432.0;
                c[2 * b] = u01(w[1][b]);
                a[2 * b + 1] = u01(w[2][b]) + 1.0 / 33_554_432.0;
                c[2 * b + 1] = u01(w[3][b]);
            }
            let mut z = [[0.0f32; 2]; 2 * LANES];
            crate::boxmuller::box_muller_batch(&a, &c, &mut z);
            for b in 0..LANES {
                out[4 * b] = z[2 * b][0];
                out[4 * b + 1] = z[2 * b][1];
                out[4 * b + 2] = z[2 * b + 1][0];
                out[4 * b + 3] = z[2 * b + 1][1];
            }
        }
    }
}

#[inline(always)]
fn fill_impl(out: &mut [f32], offset: u64, seed: u64, subsequence: u32, kind: NoiseKind) {
    let mut i = 0usize;
    // Leading partial block.
    if !offset.is_multiple_of(4) {
        let xi = noise4(offset / 4, seed, subsequence, kind);
        for &v in &xi[(offset % 4) as usize..] {
            if i < out.len() {
                out[i] = v;
                i += 1;
            }
        }
    }
    let mut g = (offset + i as u64) / 4;
    while i + 4 * LANES <= out.len() {
        noise32(g, seed, subsequence, kind, &mut out[i..]);
        i += 4 * LANES;
        g += LANES as u64;
    }
    while i < out.len() {
        let xi = noise4(g, seed, subsequence, kind);
        let m = (out.len() - i).min(4);
        out[i..i + m].copy_from_slice(&xi[..m]);
        i += m;
        g += 1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn fill_avx2(out: &mut [f32], offset: u64, seed: u64, subsequence: u32, kind: NoiseKind) {
    fill_impl(out, offset, seed, subsequence, kind)
}

/// Writes the noise of flat elements `offset .. offset + out.len()` into `out` (batched Philox,
/// an AVX2 build chosen at run time; the uniform noise is bit-identical to [`noise4`], the
/// Gaussian within a few f32 ulps of it).
pub fn fill(out: &mut [f32], offset: u64, seed: u64, subsequence: u32, kind: NoiseKind) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx2() {
        // SAFETY: `has_avx2` checked at run time that this CPU executes AVX2 instructions.
        return unsafe { fill_avx2(out, offset, seed, subsequence, kind) };
    }
    fill_impl(out, offset, seed, subsequence, kind)
}

/// Fisher–Yates permutation of `0..t` for the `Permuted{seed}` strategy (SPEC §3): for
/// `t = T−1 … 1` swap `t` with `floor(u·(t+1))`, `u` from Philox with counter `(t,0,0,0)`, lane 0.
pub fn permutation(t: usize, seed: u64) -> Vec<u32> {
    let mut p: Vec<u32> = (0..t as u32).collect();
    let key = key_of(seed);
    for k in (1..t).rev() {
        let u = u01(philox4x32_10([k as u32, 0, 0, 0], key)[0]);
        let i = ((u as f64) * ((k + 1) as f64)).floor() as usize;
        p.swap(k, i.min(k));
    }
    p
}
