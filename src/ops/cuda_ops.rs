//! The CUDA side of [`super`]: buffers are torch tensors on the same device (stream-ordered by
//! torch's caching allocator), kernels run on torch's current stream, and results come back to the
//! host only where an op returns host values (statistics, errors): one sync at the end of an op.
use tch::{Device as TDevice, Kind, Tensor};

use super::{with_elem, Quantized, QuantizeOptions};
use crate::cpu::{perturb::NoiseSpec, PerturbReport};
use crate::cuda::{launch, Device};
use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::geom::{Bits, NoiseKind, Reduce, Strategy, TokenGrid};
use crate::params::*;
use crate::{philox, Element};

fn ptr(t: &Tensor) -> u64 {
    t.data_ptr() as u64
}

/// A u64 "first bad index" cell, initialised to u64::MAX (all ones).
fn bad_cell(o: usize) -> Tensor {
    Tensor::full([1], -1i64, (Kind::Int64, TDevice::Cuda(o)))
}

fn read_bad(bad: &Tensor) -> Option<usize> {
    let v = bad.to_device(TDevice::Cpu).int64_value(&[0]);
    (v != -1).then_some(v as usize)
}

/// Reads element `i` of a CUDA tensor as f32 (for error messages).
fn value_at(t: &Tensor, i: usize) -> f32 {
    t.flatten(0, -1).get(i as i64).to_kind(Kind::Float).double_value(&[]) as f32
}

fn noise_code(k: NoiseKind) -> u32 {
    match k {
        NoiseKind::Gaussian => FJ_NOISE_GAUSSIAN,
        NoiseKind::Uniform => FJ_NOISE_UNIFORM,
    }
}

/// Enqueues the token-stats kernel; returns `(j_t, Σ j_t², bad cell)` without syncing.
pub(super) fn token_tolerance_async(o: usize, jnd: &Tensor, dt: Dtype, grid: &TokenGrid, reduce: Reduce) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = Device::get(o)?;
    let jt = Tensor::empty([grid.tokens() as i64], (Kind::Float, TDevice::Cuda(o)));
    let sum = Tensor::zeros([1], (Kind::Double, TDevice::Cuda(o)));
    let bad = bad_cell(o);
    let p = FjTokenStatsParams {
        geom: grid.to_params(),
        jnd: ptr(jnd),
        token_tol: ptr(&jt),
        sum_sq: ptr(&sum),
        bad_index: ptr(&bad),
        reduce: match reduce {
            Reduce::Mean => FJ_REDUCE_MEAN,
            Reduce::Rms => FJ_REDUCE_RMS,
            Reduce::Min => FJ_REDUCE_MIN,
        },
        pad0: 0,
    };
    launch::token_stats(&dev, dt, &p, &dev.torch_stream())?;
    Ok((jt, sum, bad))
}

fn check_jnd(bad: &Tensor, jnd: &Tensor) -> Result<()> {
    match read_bad(bad) {
        Some(index) => Err(Error::Jnd { index, value: value_at(jnd, index) }),
        None => Ok(()),
    }
}

pub(super) fn token_tolerance(o: usize, jnd: &Tensor, dt: Dtype, grid: &TokenGrid, reduce: Reduce) -> Result<(Tensor, Tensor)> {
    let (jt, sum, bad) = token_tolerance_async(o, jnd, dt, grid, reduce)?;
    check_jnd(&bad, jnd)?;
    Ok((jt, sum))
}

/// Steps on the device. `sum_sq` (device f64) comes from the token-stats kernel when fused; else
/// it is reduced here by torch on the device. Never syncs.
pub(super) fn allocate_steps(o: usize, jt: &Tensor, budget: f64, strategy: Strategy, beta: f64, sum_sq: Option<&Tensor>) -> Result<Tensor> {
    let dev = Device::get(o)?;
    let t = jt.numel();
    let owned;
    let sum = match sum_sq {
        Some(s) => s,
        None => {
            owned = jt.to_kind(Kind::Double).square().sum(Kind::Double).reshape([1]);
            &owned
        }
    };
    // The permutation depends only on (T, seed): computed on the host, uploaded once.
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
        sum_sq: ptr(sum),
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

#[allow(clippy::too_many_arguments)]
pub(super) fn quantize(o: usize, x: &Tensor, dt: Dtype, grid: &TokenGrid, steps: &Tensor, opts: &QuantizeOptions, in_place: bool, _pending_jnd: Option<(&Tensor, &Tensor)>) -> Result<Quantized> {
    let dev = Device::get(o)?;
    let d = TDevice::Cuda(o);
    let sizes = x.size();
    let sym_kind = if opts.bits == Bits::B8 { Kind::Int8 } else { Kind::Int16 };
    let symbols = opts.symbols.then(|| Tensor::empty(sizes.as_slice(), (sym_kind, d)));
    let recon = (opts.recon && !in_place).then(|| Tensor::empty(sizes.as_slice(), (x.kind(), d)));
    let token_sse = opts.token_sse.then(|| Tensor::empty([grid.tokens() as i64], (Kind::Float, d)));
    let total = Tensor::zeros([1], (Kind::Double, d));
    let clamp = Tensor::zeros([1], (Kind::Int64, d));
    let hist = opts.histogram.then(|| Tensor::zeros([opts.bits.hist_bins() as i64], (Kind::Int64, d)));
    let bad = bad_cell(o);
    let p = FjQuantizeParams {
        geom: grid.to_params(),
        x: ptr(x),
        steps: ptr(steps),
        symbols: symbols.as_ref().map_or(0, ptr),
        recon: if in_place { ptr(x) } else { recon.as_ref().map_or(0, ptr) },
        token_sse: token_sse.as_ref().map_or(0, ptr),
        total_sse: ptr(&total),
        clamp_count: ptr(&clamp),
        histogram: hist.as_ref().map_or(0, ptr),
        bad_index: ptr(&bad),
        bits: opts.bits.bits(),
        pad0: 0,
    };
    launch::quantize(&dev, dt, &p, &dev.torch_stream())?;
    if let Some(index) = read_bad(&bad) {
        let value = if in_place { f32::NAN } else { value_at(x, index) };
        return Err(Error::NonFinite { index, value });
    }
    let total_sse = total.to_device(TDevice::Cpu).double_value(&[0]);
    let clamped = clamp.to_device(TDevice::Cpu).int64_value(&[0]) as u64;
    let histogram = hist.map(|h| Vec::<i64>::try_from(h.to_device(TDevice::Cpu)).unwrap_or_default().into_iter().map(|v| v as u64).collect());
    Ok(Quantized { symbols, recon, token_sse, clamped, total_sse, mse: 0.0, histogram, rate: None })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn perturb(o: usize, x: &Tensor, jnd: Option<&Tensor>, dt: Dtype, samples: usize, nrmse: f64, noise: NoiseSpec, out: Option<&Tensor>) -> Result<PerturbReport> {
    if !(nrmse.is_finite() && nrmse >= 0.0) {
        return Err(Error::Nrmse(nrmse));
    }
    let dev = Device::get(o)?;
    let d = TDevice::Cuda(o);
    let norms = Tensor::zeros([2 * samples as i64], (Kind::Double, d));
    let scales = Tensor::zeros([samples as i64], (Kind::Float, d));
    let (badx, badj) = (bad_cell(o), bad_cell(o));
    let numel = x.numel() as u64;
    let p = FjPerturbParams {
        x: ptr(x),
        jnd: jnd.map_or(0, ptr),
        out: out.map_or(ptr(x), ptr),
        norms: ptr(&norms),
        scales: ptr(&scales),
        bad_index: ptr(&badx),
        bad_jnd: ptr(&badj),
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
    if let Some(index) = read_bad(&badx) {
        return Err(Error::NonFinite { index, value: value_at(x, index) });
    }
    if let Some(index) = read_bad(&badj) {
        return Err(Error::Jnd { index, value: value_at(jnd.unwrap(), index) });
    }
    let n: Vec<f64> = Vec::try_from(norms.to_device(TDevice::Cpu)).map_err(|e: tch::TchError| Error::Cuda(e.to_string()))?;
    let scales: Vec<f32> = Vec::try_from(scales.to_device(TDevice::Cpu)).map_err(|e: tch::TchError| Error::Cuda(e.to_string()))?;
    let zero_samples = (0..samples).filter(|&i| !(n[2 * i] > 0.0)).collect();
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

#[allow(dead_code)]
fn _elem_used<E: Element>() {}
#[allow(unused_imports)]
use with_elem as _;
