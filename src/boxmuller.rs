//! Branch-free Box–Muller for the CPU path (SPEC §5): `sqrt(−2 ln u1)·(cos, sin)(θ)`, `θ` the f32
//! product `2π·u2`, evaluated in f64 with short series so that a loop over many pairs vectorises
//! (libm's scalar ln/sin/cos made the Gaussian noise 4× slower than the uniform). Accuracy: a few
//! 1e-14 relative in f64, so the f32 results are within 1–2 ulps of a correctly rounded Box–Muller;
//! `docs/contract.md` §5 compares Gaussian noise with relative tolerance 1e-5.

const LN2: f64 = std::f64::consts::LN_2;
const FRAC_PI_2: f64 = std::f64::consts::FRAC_PI_2;
const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5 · 2^52: (v + ROUND) − ROUND rounds to nearest

/// ln(x) for finite x > 0 (normal): x = m·2^e, m in [√½, √2), ln m = 2·atanh((m−1)/(m+1)).
#[inline(always)]
pub fn ln(x: f64) -> f64 {
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    let big = m > std::f64::consts::SQRT_2;
    let m = if big { m * 0.5 } else { m };
    let e = (e + big as i64) as f64;
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // 2s · Σ s^(2k) / (2k+1), k ≤ 7: the next term is below 1e-13 relative for |s| ≤ 0.1716.
    let mut p = 1.0 / 15.0;
    for d in [13.0, 11.0, 9.0, 7.0, 5.0, 3.0, 1.0] {
        p = p * s2 + 1.0 / d;
    }
    2.0 * s * p + e * LN2
}

/// (cos θ, sin θ) for θ in [0, 2π] (reduced by the nearest multiple of π/2).
#[inline(always)]
pub fn cos_sin(th: f64) -> (f64, f64) {
    let k = (th / FRAC_PI_2 + ROUND) - ROUND;
    let r = th - k * FRAC_PI_2;
    let r2 = r * r;
    // Taylor series to r^15 / r^16: |r| ≤ π/4 leaves a remainder below 1e-16.
    let s = -1.0 / 1_307_674_368_000.0; // −1/15!
    let c = 1.0 / 20_922_789_888_000.0; // 1/16!
                                        // Horner with the alternating 1/n! coefficients.
    let sin_r = r
        * (1.0
            + r2 * (-1.0 / 6.0
                + r2 * (1.0 / 120.0
                    + r2 * (-1.0 / 5040.0 + r2 * (1.0 / 362_880.0 + r2 * (-1.0 / 39_916_800.0 + r2 * (1.0 / 6_227_020_800.0 + r2 * s)))))));
    let cos_r = 1.0
        + r2 * (-0.5
            + r2 * (1.0 / 24.0
                + r2 * (-1.0 / 720.0
                    + r2 * (1.0 / 40_320.0
                        + r2 * (-1.0 / 3_628_800.0 + r2 * (1.0 / 479_001_600.0 + r2 * (-1.0 / 87_178_291_200.0 + r2 * c)))))));
    // Quadrant k (0..=4; 4 is 0 again).
    let (q1, q2, q3) = (k == 1.0, k == 2.0, k == 3.0);
    let cos = if q1 {
        -sin_r
    } else if q2 {
        -cos_r
    } else if q3 {
        sin_r
    } else {
        cos_r
    };
    let sin = if q1 {
        cos_r
    } else if q2 {
        -sin_r
    } else if q3 {
        -cos_r
    } else {
        sin_r
    };
    (cos, sin)
}

/// One Box–Muller pair from `u1` (never 0) and `u2` in [0, 1).
#[inline(always)]
pub fn box_muller(u1: f32, u2: f32) -> (f32, f32) {
    let rad = (-2.0 * ln(u1 as f64)).sqrt();
    let th = (std::f32::consts::TAU * u2) as f64;
    let (c, s) = cos_sin(th);
    ((rad * c) as f32, (rad * s) as f32)
}

/// Box–Muller over arrays of pairs (the loop the compiler vectorises).
#[inline(always)]
pub fn box_muller_batch(u1: &[f32; 16], u2: &[f32; 16], out: &mut [[f32; 2]; 16]) {
    for i in 0..16 {
        let (a, b) = box_muller(u1[i], u2[i]);
        out[i] = [a, b];
    }
}
