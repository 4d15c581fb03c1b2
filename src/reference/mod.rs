//! Slow, obviously-correct versions of the ops, written straight from `docs/contract.md` with explicit index
//! arithmetic and f64 sums. Used only by the tests (the fast paths must match them).
use crate::geom::{Bits, NoiseKind, Reduce, TokenGrid};
use crate::{philox, Element};

/// contract §2, token by token: every element of the tensor is assigned to its token by `token_of`.
pub fn token_tolerance<E: Element>(jnd: &[E], grid: &TokenGrid, reduce: Reduce) -> Vec<f32> {
    let t = grid.tokens();
    let mut sum = vec![0.0f64; t];
    let mut min = vec![f64::INFINITY; t];
    for (i, v) in jnd.iter().enumerate() {
        let v = v.to_f32() as f64;
        let tok = grid.token_of(i);
        sum[tok] += if reduce == Reduce::Rms { v * v } else { v };
        min[tok] = min[tok].min(v);
    }
    let k = grid.k() as f64;
    (0..t)
        .map(|i| match reduce {
            Reduce::Mean => (sum[i] / k) as f32,
            Reduce::Rms => (sum[i] / k).sqrt() as f32,
            Reduce::Min => min[i] as f32,
        })
        .collect()
}

/// Result of the reference quantizer.
pub struct RefQuant<E> {
    pub symbols: Vec<i32>,
    pub recon: Vec<E>,
    pub token_sse: Vec<f64>,
    pub clamped: u64,
    pub histogram: Vec<u64>,
}

/// contract §4 element by element, with `f32::round_ties_even` (the libm/IEEE rint).
pub fn quantize<E: Element>(x: &[E], grid: &TokenGrid, steps: &[f32], bits: Bits) -> RefQuant<E> {
    let qmax = bits.qmax();
    let mut out = RefQuant {
        symbols: vec![0; x.len()],
        recon: vec![E::from_f32(0.0); x.len()],
        token_sse: vec![0.0; grid.tokens()],
        clamped: 0,
        histogram: vec![0; bits.hist_bins()],
    };
    for (i, v) in x.iter().enumerate() {
        let t = grid.token_of(i);
        let inv = 1.0f32 / steps[t];
        let v = v.to_f32();
        let mut q = (v * inv).round_ties_even();
        if q.abs() > qmax {
            out.clamped += 1;
            q = q.clamp(-qmax, qmax);
        }
        let qi = q as i32;
        let xh = (qi as f32) * steps[t];
        out.symbols[i] = qi;
        out.recon[i] = E::from_f32(xh);
        let d = (v - xh) as f64;
        out.token_sse[t] += d * d;
        out.histogram[bits.bin(qi)] += 1;
    }
    out
}

/// contract §5: the noise of flat element `i`, one Philox call per element (no block reuse).
pub fn noise_at(i: u64, seed: u64, subsequence: u32, kind: NoiseKind) -> f32 {
    let r = philox::philox4x32_10([(i / 4) as u32, ((i / 4) >> 32) as u32, subsequence, 0], philox::key_of(seed));
    let lane = (i % 4) as usize;
    match kind {
        NoiseKind::Uniform => {
            let u = (r[lane] >> 8) as f32 / 16_777_216.0;
            (2.0 * u - 1.0) * 3.0f32.sqrt()
        }
        NoiseKind::Gaussian => {
            let pair = lane / 2;
            let u1 = (r[2 * pair] >> 8) as f32 / 16_777_216.0 + 1.0 / 33_554_432.0;
            let u2 = (r[2 * pair + 1] >> 8) as f32 / 16_777_216.0;
            // The angle is the f32 product 2π·u2 (contract §5 computes it in f32); the rest in f64.
            let rad = (-2.0 * (u1 as f64).ln()).sqrt();
            let th = (std::f32::consts::TAU * u2) as f64;
            (if lane.is_multiple_of(2) { rad * th.cos() } else { rad * th.sin() }) as f32
        }
    }
}

/// contract §6 with f64 sums and the noise materialised: returns `x'` and the scales.
pub fn perturb<E: Element>(
    x: &[E],
    jnd: Option<&[E]>,
    samples: usize,
    nrmse: f64,
    seed: u64,
    subsequence: u32,
    kind: NoiseKind,
) -> (Vec<E>, Vec<f64>) {
    let len = x.len() / samples;
    let mut out = vec![E::from_f32(0.0); x.len()];
    let mut scales = vec![0.0; samples];
    for n in 0..samples {
        let r = n * len..(n + 1) * len;
        let e: Vec<f64> =
            r.clone().map(|i| jnd.map_or(1.0, |j| j[i].to_f32() as f64) * noise_at(i as u64, seed, subsequence, kind) as f64).collect();
        let nx = r.clone().map(|i| (x[i].to_f32() as f64).powi(2)).sum::<f64>().sqrt();
        let ne = e.iter().map(|v| v * v).sum::<f64>().sqrt();
        let s = if nx > 0.0 && ne > 0.0 { nrmse * nx / ne } else { 0.0 };
        scales[n] = s;
        for (k, i) in r.enumerate() {
            out[i] = E::from_f32((x[i].to_f32() as f64 + s * e[k]) as f32);
        }
    }
    (out, scales)
}

/// Contract §3.5 by an independent route: `s` by plain bisection in `f64` (no sorting, no closed
/// form), saturation by the definition; returns the steps with `β = 1`.
pub fn capped_steps(jt: &[f32], caps: &[f32], budget: f64) -> Vec<f32> {
    let g = 12.0 * budget * jt.len() as f64;
    let spent = |s: f64| -> f64 { jt.iter().zip(caps).map(|(&j, &c)| (s * j as f64).min(c as f64).powi(2)).sum() };
    let sc: f64 = caps.iter().map(|&c| (c as f64).powi(2)).sum();
    let (a, b) = if sc <= g {
        (f64::INFINITY, (g / sc).sqrt())
    } else {
        let (mut lo, mut hi) = (0.0f64, jt.iter().zip(caps).map(|(&j, &c)| c as f64 / j as f64).fold(0.0, f64::max));
        for _ in 0..2000 {
            let mid = 0.5 * (lo + hi);
            if mid <= lo || mid >= hi {
                break;
            }
            if spent(mid) < g {
                lo = mid
            } else {
                hi = mid
            }
        }
        (0.5 * (lo + hi), 1.0)
    };
    jt.iter().zip(caps).map(|(&j, &c)| ((a as f32) * j).min((b as f32) * c)).collect()
}

/// Token RMS of a feature, `sqrt(Σ x² / K)` per token in `f64` (contract §3.5).
pub fn token_rms<E: Element>(x: &[E], grid: &TokenGrid) -> Vec<f32> {
    let mut sum = vec![0.0f64; grid.tokens()];
    for (i, v) in x.iter().enumerate() {
        let v = v.to_f32() as f64;
        sum[grid.token_of(i)] += v * v;
    }
    sum.iter().map(|s| (s / grid.k() as f64).sqrt() as f32).collect()
}
