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

/// The 4 words of Philox block `g` (flat elements `4g..4g+3`) for a seed and stream.
#[inline(always)]
pub fn block(g: u64, seed: u64, stream: u32) -> [u32; 4] {
    philox4x32_10([g as u32, (g >> 32) as u32, stream, 0], key_of(seed))
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
    let u1 = u01(r0) + 1.0 / 33_554_432.0;
    let u2 = u01(r1);
    let rad = (-2.0f32 * u1.ln()).sqrt();
    let th = std::f32::consts::TAU * u2;
    let (s, c) = th.sin_cos();
    (rad * c, rad * s)
}

/// The four noise values of block `g`.
#[inline(always)]
pub fn noise4(g: u64, seed: u64, stream: u32, kind: NoiseKind) -> [f32; 4] {
    let r = block(g, seed, stream);
    match kind {
        NoiseKind::Uniform => r.map(uniform_noise),
        NoiseKind::Gaussian => {
            let (a, b) = box_muller(r[0], r[1]);
            let (c, d) = box_muller(r[2], r[3]);
            [a, b, c, d]
        }
    }
}

/// Writes the noise of flat elements `offset .. offset + out.len()` into `out`.
pub fn fill(out: &mut [f32], offset: u64, seed: u64, stream: u32, kind: NoiseKind) {
    let mut i = 0usize;
    // Leading partial block.
    let lead = ((4 - (offset % 4)) % 4) as usize;
    if lead > 0 {
        let xi = noise4(offset / 4, seed, stream, kind);
        let l0 = (offset % 4) as usize;
        for l in l0..4 {
            if i < out.len() {
                out[i] = xi[l];
                i += 1;
            }
        }
    }
    let mut g = (offset + i as u64) / 4;
    while i + 4 <= out.len() {
        out[i..i + 4].copy_from_slice(&noise4(g, seed, stream, kind));
        i += 4;
        g += 1;
    }
    if i < out.len() {
        let xi = noise4(g, seed, stream, kind);
        let rest = out.len() - i;
        out[i..].copy_from_slice(&xi[..rest]);
    }
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
