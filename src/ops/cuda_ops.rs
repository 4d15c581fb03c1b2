//! The CUDA side of [`super`]. Outputs are torch tensors on the same device; kernels run on torch's
//! current stream. Every statistic an op returns to the host (first bad index, clamp count, error
//! sums, histogram, norms, scales) lives in one zero-initialised i64 buffer ([`Stats`]): one memset
//! before, one device-to-host copy after: a single sync per op, and none inside the fused
//! J → j_t → Δ_t → quantize chain.
use tch::{Device as TDevice, Kind, Tensor};

use super::{Outs, Quantized, QuantizeOptions};
use crate::cpu::{perturb::NoiseSpec, PerturbReport};
use crate::cuda::{launch, Device};
use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::geom::{NoiseKind, Reduce, Strategy, TokenGrid};
use crate::params::*;
use crate::philox;

fn ptr(t: &Tensor) -> u64 {
    t.data_ptr() as u64
}

/// Zeroed device statistics, 8 bytes a slot.
struct Stats(Tensor);

impl Stats {
    fn new(o: usize, slots: usize) -> Self {
        Stats(Tensor::zeros([slots as i64], (Kind::Int64, TDevice::Cuda(o))))
    }
    fn slot(&self, i: usize) -> u64 {
        ptr(&self.0) + 8 * i as u64
    }
    /// One device-to-host copy (waits for the stream).
    fn read(&self) -> Result<Vec<i64>> {
        Vec::<i64>::try_from(self.0.to_device(TDevice::Cpu)).map_err(|e| Error::Cuda(e.to_string()))
    }
}

/// A bad cell holds `!index` (0 = none).
fn bad_of(v: i64) -> Option<usize> {
    (v != 0).then_some(!(v as u64) as usize)
}

/// Element `i` of a CUDA tensor as f32 (error messages only).
fn value_at(t: &Tensor, i: usize) -> f32 {
    t.flatten(0, -1).get(i as i64).to_kind(Kind::Float).double_value(&[]) as f32
}

fn noise_code(k: NoiseKind) -> u32 {
    match k {
        NoiseKind::Gaussian => FJ_NOISE_GAUSSIAN,
        NoiseKind::Uniform => FJ_NOISE_UNIFORM,
    }
}

/// Enqueues the token-stats kernel: `j_t` out, `Σ j_t²` into `sum_slot`, first bad J into `bad_slot`.
fn token_stats(o: usize, jnd: &Tensor, dt: Dtype, grid: &TokenGrid, reduce: Reduce, sum_slot: u64, bad_slot: u64) -> Result<Tensor> {
    let dev = Device::get(o)?;
    let jt = Tensor::empty([grid.tokens() as i64], (Kind::Float, TDevice::Cuda(o)));
    let p = FjTokenStatsParams {
        geom: grid.to_params(),
        jnd: ptr(jnd),
        token_tol: ptr(&jt),
        sum_sq: sum_slot,
        bad_index: bad_slot,
        reduce: match reduce {
            Reduce::Mean => FJ_REDUCE_MEAN,
            Reduce::Rms => FJ_REDUCE_RMS,
            Reduce::Min => FJ_REDUCE_MIN,
        },
        pad0: 0,
    };
    launch::token_stats(&dev, dt, &p, &dev.torch_stream())?;
    Ok(jt)
}

pub(super) fn token_tolerance(o: usize, jnd: &Tensor, dt: Dtype, grid: &TokenGrid, reduce: Reduce) -> Result<Tensor> {
    let stats = Stats::new(o, 1);
    let jt = token_stats(o, jnd, dt, grid, reduce, 0, stats.slot(0))?;
    if let Some(index) = bad_of(stats.read()?[0]) {
        return Err(Error::Jnd { index, value: value_at(jnd, index) });
    }
    Ok(jt)
}

/// Enqueues the step allocation. `sum_slot` is a device f64 `Σ j²` (from the token-stats kernel
/// when fused); without it torch reduces it on the device. Never syncs.
pub(super) fn allocate_steps(o: usize, jt: &Tensor, budget: f64, strategy: Strategy, beta: f64, sum_slot: Option<u64>) -> Result<Tensor> {
    let dev = Device::get(o)?;
    let t = jt.numel();
    let owned = match sum_slot {
        Some(_) => None,
        None => Some(jt.to_kind(Kind::Double).square().sum(Kind::Double)),
    };
    // The permutation depends only on (T, seed): made on the host, uploaded once.
    let perm = match strategy {
        Strategy::Permuted { seed } => {
            let p: Vec<i32> = philox::permutation(t, seed).into_iter().map(|v| v as i32).collect();
            Some(Tensor::from_slice(&p).to_device(TDevice::Cuda(o)))
        }
        _ => None,
    };
    let steps = Tensor::empty([t as i64], (Kind::Float, TDevice::Cuda(o)));
    let p = FjStepAllocParams {
        token_tol: ptr(jt),
        sum_sq: sum_slot.unwrap_or_else(|| ptr(owned.as_ref().unwrap())),
        perm: perm.as_ref().map_or(0, ptr),
        steps: ptr(&steps),
        budget,
        beta,
        tokens: t as u32,
        strategy: match strategy {
            Strategy::Uniform => FJ_STRATEGY_UNIFORM,
            Strategy::Jnd => FJ_STRATEGY_JND,
            Strategy::Permuted { .. } => FJ_STRATEGY_PERMUTED,
        },
    };
    launch::step_alloc(&dev, &p, &dev.torch_stream())?;
    Ok(steps)
}

// Slots of a quantization's statistics.
const Q_BAD_X: usize = 0;
const Q_CLAMP: usize = 1;
const Q_SSE: usize = 2;
const Q_BAD_J: usize = 3;
const Q_SUM_SQ: usize = 4;
const Q_HIST: usize = 5;

/// The fused chain: `J → j_t → Δ_t → quantize`, one sync at the end.
#[allow(clippy::too_many_arguments)]
pub(super) fn quantize_with_jnd(o: usize, x: &Tensor, dt: Dtype, jnd: &Tensor, dj: Dtype, grid: &TokenGrid, reduce: Reduce, budget: f64, strategy: Strategy, opts: &QuantizeOptions, outs: Outs) -> Result<(Tensor, Quantized)> {
    let stats = Stats::new(o, Q_HIST + opts.bits.hist_bins());
    let jt = token_stats(o, jnd, dj, grid, reduce, stats.slot(Q_SUM_SQ), stats.slot(Q_BAD_J))?;
    let steps = allocate_steps(o, &jt, budget, strategy, 1.0, Some(stats.slot(Q_SUM_SQ)))?;
    let q = quantize_with(o, x, dt, grid, &steps, opts, false, &stats, Some(jnd), outs)?;
    Ok((steps, q))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn quantize(o: usize, x: &Tensor, dt: Dtype, grid: &TokenGrid, steps: &Tensor, opts: &QuantizeOptions, in_place: bool, outs: Outs) -> Result<Quantized> {
    let stats = Stats::new(o, Q_HIST + if opts.histogram { opts.bits.hist_bins() } else { 0 });
    quantize_with(o, x, dt, grid, steps, opts, in_place, &stats, None, outs)
}

#[allow(clippy::too_many_arguments)]
fn quantize_with(o: usize, x: &Tensor, dt: Dtype, grid: &TokenGrid, steps: &Tensor, opts: &QuantizeOptions, in_place: bool, stats: &Stats, jnd: Option<&Tensor>, outs: Outs) -> Result<Quantized> {
    let dev = Device::get(o)?;
    let Outs { symbols, recon, token_sse } = outs;
    let p = FjQuantizeParams {
        geom: grid.to_params(),
        x: ptr(x),
        steps: ptr(steps),
        symbols: symbols.as_ref().map_or(0, ptr),
        recon: if in_place { ptr(x) } else { recon.as_ref().map_or(0, ptr) },
        token_sse: token_sse.as_ref().map_or(0, ptr),
        total_sse: stats.slot(Q_SSE),
        clamp_count: stats.slot(Q_CLAMP),
        histogram: if opts.histogram { stats.slot(Q_HIST) } else { 0 },
        bad_index: stats.slot(Q_BAD_X),
        bits: opts.bits.bits(),
        pad0: 0,
    };
    launch::quantize(&dev, dt, &p, &dev.torch_stream())?;
    let s = stats.read()?;
    if let (Some(j), Some(index)) = (jnd, bad_of(s[Q_BAD_J])) {
        return Err(Error::Jnd { index, value: value_at(j, index) });
    }
    if let Some(index) = bad_of(s[Q_BAD_X]) {
        let value = if in_place { f32::NAN } else { value_at(x, index) };
        return Err(Error::NonFinite { index, value });
    }
    let histogram = opts.histogram.then(|| s[Q_HIST..Q_HIST + opts.bits.hist_bins()].iter().map(|&v| v as u64).collect());
    Ok(Quantized {
        symbols,
        recon,
        token_sse,
        clamped: s[Q_CLAMP] as u64,
        total_sse: f64::from_bits(s[Q_SSE] as u64),
        mse: 0.0,
        histogram,
        rate: None,
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn perturb(o: usize, x: &Tensor, jnd: Option<&Tensor>, dt: Dtype, samples: usize, nrmse: f64, noise: NoiseSpec, out: Option<&Tensor>) -> Result<PerturbReport> {
    if !(nrmse.is_finite() && nrmse >= 0.0) {
        return Err(Error::Nrmse(nrmse));
    }
    let dev = Device::get(o)?;
    // Slots: bad x, bad J, then (Σx², Σ(Jξ)²) per sample, then the f32 scales packed two a slot.
    let stats = Stats::new(o, 2 + 2 * samples + samples.div_ceil(2));
    let numel = x.numel() as u64;
    let p = FjPerturbParams {
        x: ptr(x),
        jnd: jnd.map_or(0, ptr),
        out: out.map_or(ptr(x), ptr),
        norms: stats.slot(2),
        scales: stats.slot(2 + 2 * samples),
        bad_index: stats.slot(0),
        bad_jnd: stats.slot(1),
        numel,
        sample_len: numel / samples as u64,
        seed: noise.seed,
        nrmse,
        samples: samples as u32,
        stream: noise.stream,
        noise: noise_code(noise.kind),
        pad0: 0,
    };
    let s = dev.torch_stream();
    launch::perturb_norms(&dev, dt, &p, &s)?;
    launch::perturb_apply(&dev, dt, &p, &s)?;
    let v = stats.read()?;
    if let Some(index) = bad_of(v[0]) {
        return Err(Error::NonFinite { index, value: value_at(x, index) });
    }
    if let Some(index) = bad_of(v[1]) {
        return Err(Error::Jnd { index, value: value_at(jnd.unwrap(), index) });
    }
    let packed = &v[2 + 2 * samples..];
    let scales = (0..samples).map(|i| f32::from_bits((packed[i / 2] as u64 >> (32 * (i % 2))) as u32)).collect();
    let zero_samples = (0..samples).filter(|&i| !(f64::from_bits(v[2 + 2 * i] as u64) > 0.0)).collect();
    Ok(PerturbReport { scales, zero_samples })
}

pub(super) fn noise(o: usize, numel: usize, offset: u64, noise: NoiseSpec) -> Result<Tensor> {
    let dev = Device::get(o)?;
    let out = Tensor::empty([numel as i64], (Kind::Float, TDevice::Cuda(o)));
    if numel == 0 {
        return Ok(out);
    }
    let p = FjNoiseParams { out: ptr(&out), numel: numel as u64, offset, seed: noise.seed, stream: noise.stream, noise: noise_code(noise.kind) };
    launch::noise(&dev, &p, &dev.torch_stream())?;
    Ok(out)
}
