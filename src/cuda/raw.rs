//! The ops on raw device pointers and a caller-chosen stream: parameter structs filled, kernels
//! enqueued, and the one statistics buffer decoded. Shared by the tensor API (`ops::cuda_ops`,
//! torch's stream and allocator) and the C ABI (`capi::device`, the caller's stream, cudarc
//! allocations), so the slot layouts exist once.
//!
//! Every statistic an op returns to the host (first bad index, clamp count, error sums, histogram,
//! norms, scales) lives in one zero-initialised buffer of 8-byte slots: one memset before, one
//! device-to-host copy after.
use cudarc::driver::CudaStream;

use super::{launch, Device};
use crate::cpu::{perturb::NoiseSpec, PerturbReport};
use crate::element::Dtype;
use crate::error::Result;
use crate::geom::{Bits, NoiseKind, Reduce, Strategy, TokenGrid};
use crate::params::*;

/// Address of slot `i` of a statistics buffer at `base`.
pub fn slot(base: u64, i: usize) -> u64 {
    base + 8 * i as u64
}

/// A bad-index cell holds `!index` (0 = none).
pub fn bad_of(v: i64) -> Option<usize> {
    (v != 0).then_some(!(v as u64) as usize)
}

fn noise_code(k: NoiseKind) -> u32 {
    match k {
        NoiseKind::Gaussian => FJ_NOISE_GAUSSIAN,
        NoiseKind::Uniform => FJ_NOISE_UNIFORM,
    }
}

/// Enqueues the token-stats kernel: `j_t` into `token_tol`, `Σ j_t²` into `sum_slot` (0 = skip),
/// `!index` of the first bad J into `bad_slot`.
#[allow(clippy::too_many_arguments)]
pub fn token_stats(dev: &Device, dt: Dtype, grid: &TokenGrid, reduce: Reduce, jnd: u64, token_tol: u64, sum_slot: u64, bad_slot: u64, stream: &CudaStream) -> Result<()> {
    let p = FjTokenStatsParams {
        geom: grid.to_params(),
        jnd,
        token_tol,
        sum_sq: sum_slot,
        bad_index: bad_slot,
        reduce: match reduce {
            Reduce::Mean => FJ_REDUCE_MEAN,
            Reduce::Rms => FJ_REDUCE_RMS,
            Reduce::Min => FJ_REDUCE_MIN,
        },
        pad0: 0,
    };
    launch::token_stats(dev, dt, &p, stream)
}

/// Enqueues the step allocation from `tokens` tolerances and a device f64 `Σ j²` at `sum_sq`;
/// `perm` is the device i32 permutation for [`Strategy::Permuted`] (0 otherwise).
#[allow(clippy::too_many_arguments)]
pub fn step_alloc(dev: &Device, token_tol: u64, tokens: usize, sum_sq: u64, perm: u64, steps: u64, budget: f64, strategy: Strategy, beta: f64, stream: &CudaStream) -> Result<()> {
    let p = FjStepAllocParams {
        token_tol,
        sum_sq,
        perm,
        steps,
        budget,
        beta,
        tokens: tokens as u32,
        strategy: match strategy {
            Strategy::Uniform => FJ_STRATEGY_UNIFORM,
            Strategy::Jnd => FJ_STRATEGY_JND,
            Strategy::Permuted { .. } => FJ_STRATEGY_PERMUTED,
        },
    };
    launch::step_alloc(dev, &p, stream)
}

// Slots of a quantization's statistics.
pub const Q_BAD_X: usize = 0;
const Q_CLAMP: usize = 1;
const Q_SSE: usize = 2;
pub const Q_BAD_J: usize = 3;
pub const Q_SUM_SQ: usize = 4;
const Q_HIST: usize = 5;

/// Slots a quantization needs.
pub fn quantize_slots(bits: Bits, histogram: bool) -> usize {
    Q_HIST + if histogram { bits.hist_bins() } else { 0 }
}

/// Device pointers of one quantization (0 = output not wanted; `recon == x` in place).
pub struct QuantPtrs {
    pub x: u64,
    pub steps: u64,
    pub symbols: u64,
    pub recon: u64,
    pub token_sse: u64,
}

/// Enqueues the fused quantize kernel with its statistics at `stats`.
#[allow(clippy::too_many_arguments)]
pub fn quantize(dev: &Device, dt: Dtype, grid: &TokenGrid, p: &QuantPtrs, bits: Bits, histogram: bool, stats: u64, stream: &CudaStream) -> Result<()> {
    let q = FjQuantizeParams {
        geom: grid.to_params(),
        x: p.x,
        steps: p.steps,
        symbols: p.symbols,
        recon: p.recon,
        token_sse: p.token_sse,
        total_sse: slot(stats, Q_SSE),
        clamp_count: slot(stats, Q_CLAMP),
        histogram: if histogram { slot(stats, Q_HIST) } else { 0 },
        bad_index: slot(stats, Q_BAD_X),
        bits: bits.bits(),
        pad0: 0,
    };
    launch::quantize(dev, dt, &q, stream)
}

/// A quantization's statistics, read back.
pub struct QuantStats {
    pub bad_x: Option<usize>,
    pub bad_j: Option<usize>,
    pub clamped: u64,
    pub total_sse: f64,
    pub histogram: Option<Vec<u64>>,
}

pub fn decode_quantize(s: &[i64], bits: Bits, histogram: bool) -> QuantStats {
    QuantStats {
        bad_x: bad_of(s[Q_BAD_X]),
        bad_j: bad_of(s[Q_BAD_J]),
        clamped: s[Q_CLAMP] as u64,
        total_sse: f64::from_bits(s[Q_SSE] as u64),
        histogram: histogram.then(|| s[Q_HIST..Q_HIST + bits.hist_bins()].iter().map(|&v| v as u64).collect()),
    }
}

/// Slots a perturbation of `samples` samples needs: bad x, bad J, (Σx², Σ(Jξ)²) per sample, then
/// the f32 scales packed two a slot.
pub fn perturb_slots(samples: usize) -> usize {
    2 + 2 * samples + samples.div_ceil(2)
}

/// Enqueues the two perturbation kernels (norms, then apply) with statistics at `stats`.
/// `jnd` 0 means J ≡ 1; `out == x` in place.
#[allow(clippy::too_many_arguments)]
pub fn perturb(dev: &Device, dt: Dtype, x: u64, jnd: u64, out: u64, numel: usize, samples: usize, nrmse: f64, noise: NoiseSpec, stats: u64, stream: &CudaStream) -> Result<()> {
    let p = FjPerturbParams {
        x,
        jnd,
        out,
        norms: slot(stats, 2),
        scales: slot(stats, 2 + 2 * samples),
        bad_index: slot(stats, 0),
        bad_jnd: slot(stats, 1),
        numel: numel as u64,
        sample_len: (numel / samples) as u64,
        seed: noise.seed,
        nrmse,
        samples: samples as u32,
        subsequence: noise.subsequence,
        noise: noise_code(noise.kind),
        pad0: 0,
    };
    launch::perturb_norms(dev, dt, &p, stream)?;
    launch::perturb_apply(dev, dt, &p, stream)
}

/// A perturbation's statistics: first bad x, first bad J, and the report.
pub fn decode_perturb(v: &[i64], samples: usize) -> (Option<usize>, Option<usize>, PerturbReport) {
    let packed = &v[2 + 2 * samples..];
    let scales = (0..samples).map(|i| f32::from_bits((packed[i / 2] as u64 >> (32 * (i % 2))) as u32)).collect();
    let zero_samples = (0..samples).filter(|&i| !(f64::from_bits(v[2 + 2 * i] as u64) > 0.0)).collect();
    (bad_of(v[0]), bad_of(v[1]), PerturbReport { scales, zero_samples })
}

/// Enqueues the noise kernel: `numel` f32 values of `ξ` from flat index `offset` into `out`.
pub fn noise(dev: &Device, out: u64, numel: usize, offset: u64, noise: NoiseSpec, stream: &CudaStream) -> Result<()> {
    let p = FjNoiseParams { out, numel: numel as u64, offset, seed: noise.seed, subsequence: noise.subsequence, noise: noise_code(noise.kind) };
    launch::noise(dev, &p, stream)
}
