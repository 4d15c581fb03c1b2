//! Box–Muller in `f32` for the CPU path (contract §5.3): `sqrt(−2 ln u1)·(cos θ, sin θ)` with
//! `θ = 2π·u2` the contract's `f32` product. `ln` is the Cephes `logf` scheme (mantissa in
//! `[√½, √2)`, a degree-9 polynomial of `f = m − 1`, `ln 2` split in two), `cos`/`sin` the Cephes
//! `sinf`/`cosf` polynomials on `|r| ≤ π/4` after a three-part Cody–Waite reduction by the nearest
//! multiple of `π/2`. Each piece is within 1–2 `f32` ulps; a whole value stays within a few ulps
//! (relative ≤ 1e-6) of the `f64` reference (`reference::noise_at`), well inside the contract's
//! `|a − b| ≤ 1e-5·|b| + 1e-6` (`tests/philox.rs` sweeps every `u1` and every `u2`).
//!
//! Two builds of the same formulas: [`box_muller`] (portable scalar, separate multiply and add)
//! and an AVX2+FMA one over 8 pairs (the noise generator's hot path; fused multiply-adds, so its
//! results may differ from the scalar one by an ulp). Neither is bit-identical with CUDA's
//! `logf`/`sincosf`; compare Gaussian noise with the tolerance, never bitwise.

const SQRT_2: f32 = std::f32::consts::SQRT_2;
/// `ln 2 = LN2_HI + LN2_LO`, `LN2_HI` with few mantissa bits (exact products with the exponent).
#[allow(clippy::excessive_precision)] // 355/512 exactly
const LN2_HI: f32 = 0.693_359_375;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes `logf`: `ln(1+f) = f − f²/2 + f³·P(f)`, `P` highest degree first.
#[allow(clippy::excessive_precision)]
const LOG_P: [f32; 9] = [
    7.037_683_629_2e-2,
    -1.151_461_031_0e-1,
    1.167_699_874_0e-1,
    -1.242_014_084_6e-1,
    1.424_932_278_7e-1,
    -1.666_805_766_5e-1,
    2.000_071_476_5e-1,
    -2.499_999_399_3e-1,
    3.333_333_117_4e-1,
];
const FRAC_2_PI: f32 = std::f32::consts::FRAC_2_PI;
/// `π/2 = PIO2_1 + PIO2_2 + PIO2_3` (Cephes' `π/4` split, doubled): `k·PIO2_1` and `k·PIO2_2` are
/// exact for the quadrants `k ≤ 4` that `θ ∈ [0, 2π)` needs.
#[allow(clippy::excessive_precision)]
const PIO2_1: f32 = 1.570_312_5;
#[allow(clippy::excessive_precision)]
const PIO2_2: f32 = 4.837_512_969_970_703_125e-4;
#[allow(clippy::excessive_precision)]
const PIO2_3: f32 = 7.549_789_954_891_882_16e-8;
/// Cephes `sinf`: `sin r = r + r·z·(S0·z² + S1·z + S2)`, `z = r²`.
#[allow(clippy::excessive_precision)]
const SIN_P: [f32; 3] = [-1.951_529_589_1e-4, 8.332_160_873_6e-3, -1.666_665_461_1e-1];
/// Cephes `cosf`: `cos r = 1 − z/2 + z²·(C0·z² + C1·z + C2)`.
#[allow(clippy::excessive_precision)]
const COS_P: [f32; 3] = [2.443_315_711_809_948e-5, -1.388_731_625_493_765e-3, 4.166_664_568_298_827e-2];

/// `ln x` for normal `x > 0` (here `x = u1 ∈ [2^−25, 1]`); `ln 1 = 0` exactly.
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    if m > SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let ef = e as f32;
    let f = m - 1.0; // exact: m ∈ [√½, √2]
    let z = f * f;
    let mut p = LOG_P[0];
    for &c in &LOG_P[1..] {
        p = p * f + c;
    }
    let mut y = f * z * p;
    y += ef * LN2_LO;
    y += -0.5 * z;
    f + y + ef * LN2_HI
}

/// `(cos θ, sin θ)` for `θ ∈ [0, 2π]`.
#[inline(always)]
pub fn cos_sin(th: f32) -> (f32, f32) {
    // Nearest quadrant (θ ≥ 0: +0.5 and truncation; either neighbour of a tie works).
    let ki = (th * FRAC_2_PI + 0.5) as i32;
    let k = ki as f32;
    let r = ((th - k * PIO2_1) - k * PIO2_2) - k * PIO2_3;
    let z = r * r;
    let s = r + ((SIN_P[0] * z + SIN_P[1]) * z + SIN_P[2]) * z * r;
    let c = 1.0 - 0.5 * z + ((COS_P[0] * z + COS_P[1]) * z + COS_P[2]) * z * z;
    // Quadrant k (0..=4), without branches (random quadrants would mispredict): odd k swaps cos
    // and sin; cos is negated for k ∈ {1, 2}, sin for k ∈ {2, 3}.
    let swap = 0u32.wrapping_sub((ki & 1) as u32);
    let (cb, sb) = (c.to_bits(), s.to_bits());
    let cos = (cb & !swap) | (sb & swap);
    let sin = (sb & !swap) | (cb & swap);
    let cos_sign = (((ki + 1) & 2) as u32) << 30;
    let sin_sign = ((ki & 2) as u32) << 30;
    (f32::from_bits(cos ^ cos_sign), f32::from_bits(sin ^ sin_sign))
}

/// One Box–Muller pair from `u1 ∈ (0, 1]` and `θ = 2π·u2` (already the contract's `f32` product).
#[inline(always)]
pub fn box_muller_theta(u1: f32, th: f32) -> (f32, f32) {
    let rad = (-2.0 * ln(u1)).sqrt();
    let (c, s) = cos_sin(th);
    (rad * c, rad * s)
}

/// One Box–Muller pair from `u1 ∈ (0, 1]` and `u2 ∈ [0, 1)`.
#[inline(always)]
pub fn box_muller(u1: f32, u2: f32) -> (f32, f32) {
    box_muller_theta(u1, std::f32::consts::TAU * u2)
}

/// Box–Muller over slices of pairs with the generator's build (AVX2+FMA where the CPU has it, in
/// groups of 8; the portable scalar code otherwise and for the last `len % 8`): `c[i], s[i]` from
/// `u1[i], u2[i]`. For tests and probes; the generator calls the 8-pair kernel directly.
pub fn box_muller_slices(u1: &[f32], u2: &[f32], c: &mut [f32], s: &mut [f32]) {
    let n = u1.len();
    assert!(u2.len() == n && c.len() == n && s.len() == n, "box_muller_slices: lengths differ");
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx2_fma() {
        while i + 8 <= n {
            let (a, b) = (u1[i..i + 8].try_into().unwrap(), u2[i..i + 8].try_into().unwrap());
            // SAFETY: `has_avx2_fma` checked at run time that this CPU executes AVX2 and FMA.
            let (cc, ss) = unsafe { x86::box_muller8_arrays(a, b) };
            c[i..i + 8].copy_from_slice(&cc);
            s[i..i + 8].copy_from_slice(&ss);
            i += 8;
        }
    }
    for k in i..n {
        (c[k], s[k]) = box_muller(u1[k], u2[k]);
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Box–Muller on 8 pairs: `u1` (never 0) and `θ = 2π·u2` → `(rad·cos θ, rad·sin θ)`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn box_muller8(u1: __m256, th: __m256) -> (__m256, __m256) {
        // ln u1.
        let bits = _mm256_castps_si256(u1);
        let e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127));
        let m =
            _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)), _mm256_set1_epi32(0x3f80_0000)));
        let big = _mm256_cmp_ps::<_CMP_GT_OQ>(m, _mm256_set1_ps(SQRT_2));
        // m/2 and e+1 where m > √2 (the mask is all ones, i.e. −1, there).
        let m = _mm256_mul_ps(m, _mm256_blendv_ps(_mm256_set1_ps(1.0), _mm256_set1_ps(0.5), big));
        let ef = _mm256_cvtepi32_ps(_mm256_sub_epi32(e, _mm256_castps_si256(big)));
        let f = _mm256_sub_ps(m, _mm256_set1_ps(1.0));
        let z = _mm256_mul_ps(f, f);
        let mut p = _mm256_set1_ps(LOG_P[0]);
        for &c in &LOG_P[1..] {
            p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
        }
        let y = _mm256_mul_ps(_mm256_mul_ps(f, z), p);
        let y = _mm256_fmadd_ps(ef, _mm256_set1_ps(LN2_LO), y);
        let y = _mm256_fmadd_ps(_mm256_set1_ps(-0.5), z, y);
        let ln = _mm256_fmadd_ps(ef, _mm256_set1_ps(LN2_HI), _mm256_add_ps(f, y));
        let rad = _mm256_sqrt_ps(_mm256_mul_ps(ln, _mm256_set1_ps(-2.0)));

        // cos θ, sin θ.
        let k = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(th, _mm256_set1_ps(FRAC_2_PI)));
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(PIO2_1), th);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(PIO2_2), r);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(PIO2_3), r);
        let z = _mm256_mul_ps(r, r);
        let ps = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(SIN_P[0]), z, _mm256_set1_ps(SIN_P[1])), z, _mm256_set1_ps(SIN_P[2]));
        let s = _mm256_fmadd_ps(_mm256_mul_ps(ps, z), r, r);
        let pc = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(COS_P[0]), z, _mm256_set1_ps(COS_P[1])), z, _mm256_set1_ps(COS_P[2]));
        let c = _mm256_fmadd_ps(_mm256_mul_ps(pc, z), z, _mm256_fnmadd_ps(_mm256_set1_ps(0.5), z, _mm256_set1_ps(1.0)));
        // Quadrant k (0..=4): odd k swaps cos and sin; cos is negated for k ∈ {1, 2}, sin for
        // k ∈ {2, 3}.
        let ki = _mm256_cvtps_epi32(k);
        let one = _mm256_set1_epi32(1);
        let two = _mm256_set1_epi32(2);
        let swap = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(ki, one), one));
        let cos_sign = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(_mm256_add_epi32(ki, one), two), 30));
        let sin_sign = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(ki, two), 30));
        let cos = _mm256_xor_ps(_mm256_blendv_ps(c, s, swap), cos_sign);
        let sin = _mm256_xor_ps(_mm256_blendv_ps(s, c, swap), sin_sign);
        (_mm256_mul_ps(rad, cos), _mm256_mul_ps(rad, sin))
    }

    /// [`box_muller8`] on arrays, from `u1` and `u2` (θ formed as the contract's `f32` product).
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn box_muller8_arrays(u1: &[f32; 8], u2: &[f32; 8]) -> ([f32; 8], [f32; 8]) {
        // SAFETY: each array is 8 f32 = 32 bytes, exactly one unaligned 256-bit load.
        let (a, b) = unsafe { (_mm256_loadu_ps(u1.as_ptr()), _mm256_loadu_ps(u2.as_ptr())) };
        let (c, s) = box_muller8(a, _mm256_mul_ps(b, _mm256_set1_ps(std::f32::consts::TAU)));
        let (mut co, mut so) = ([0.0f32; 8], [0.0f32; 8]);
        // SAFETY: each array is 8 f32 = 32 bytes, exactly one unaligned 256-bit store.
        unsafe {
            _mm256_storeu_ps(co.as_mut_ptr(), c);
            _mm256_storeu_ps(so.as_mut_ptr(), s);
        }
        (co, so)
    }
}
