//! The CUDA side of [`super`]: outputs are torch tensors on the input's device, kernels run on
//! torch's current stream, and the statistics buffer (layout in [`crate::cuda::raw`]) is a torch
//! i64 tensor: one memset before, one device-to-host copy after, so a single sync per op and none
//! inside the fused J → j_t → Δ_t → quantize chain.
use tch::{Device as TDevice, Kind, Tensor};

use super::{Outs, Quantized, QuantizeOptions};
use crate::cpu::{perturb::NoiseSpec, PerturbReport};
use crate::cuda::raw::{self, QuantPtrs, Q_BAD_J, Q_SUM_SQ};
use crate::cuda::Device;
use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::geom::{Reduce, Strategy, TokenGrid};
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
    fn base(&self) -> u64 {
        ptr(&self.0)
    }
    fn slot(&self, i: usize) -> u64 {
        raw::slot(self.base(), i)
    }
    /// One device-to-host copy (waits for the stream).
    fn read(&self) -> Result<Vec<i64>> {
        Vec::<i64>::try_from(self.0.to_device(TDevice::Cpu)).map_err(|e| Error::Cuda(e.to_string()))
    }
}

/// Element `i` of a CUDA tensor as f32 (error messages only).
fn value_at(t: &Tensor, i: usize) -> f32 {
    t.flatten(0, -1).get(i as i64).to_kind(Kind::Float).double_value(&[]) as f32
}

/// Enqueues the token-stats kernel: `j_t` out, `Σ j_t²` into `sum_slot`, first bad J into `bad_slot`.
fn token_stats(o: usize, jnd: &Tensor, dt: Dtype, grid: &TokenGrid, reduce: Reduce, sum_slot: u64, bad_slot: u64) -> Result<Tensor> {
    let dev = Device::get(o)?;
    let jt = Tensor::empty([grid.tokens() as i64], (Kind::Float, TDevice::Cuda(o)));
    raw::token_stats(&dev, dt, grid, reduce, ptr(jnd), ptr(&jt), sum_slot, bad_slot, &dev.torch_stream())?;
    Ok(jt)
}

pub(super) fn token_tolerance(o: usize, jnd: &Tensor, dt: Dtype, grid: &TokenGrid, reduce: Reduce) -> Result<Tensor> {
    let stats = Stats::new(o, 1);
    let jt = token_stats(o, jnd, dt, grid, reduce, 0, stats.slot(0))?;
    if let Some(index) = raw::bad_of(stats.read()?[0]) {
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
    let sum = sum_slot.unwrap_or_else(|| ptr(owned.as_ref().unwrap()));
    raw::step_alloc(&dev, ptr(jt), t, sum, perm.as_ref().map_or(0, ptr), ptr(&steps), budget, strategy, beta, &dev.torch_stream())?;
    Ok(steps)
}

/// The fused chain: `J → j_t → Δ_t → quantize`, one sync at the end.
#[allow(clippy::too_many_arguments)]
pub(super) fn quantize_with_jnd(o: usize, x: &Tensor, dt: Dtype, jnd: &Tensor, dj: Dtype, grid: &TokenGrid, reduce: Reduce, budget: f64, strategy: Strategy, opts: &QuantizeOptions, outs: Outs) -> Result<(Tensor, Quantized)> {
    // The fused chain always counts the histogram (slots for it), whatever `opts` says.
    let stats = Stats::new(o, raw::quantize_slots(opts.bits, true));
    let jt = token_stats(o, jnd, dj, grid, reduce, stats.slot(Q_SUM_SQ), stats.slot(Q_BAD_J))?;
    let steps = allocate_steps(o, &jt, budget, strategy, 1.0, Some(stats.slot(Q_SUM_SQ)))?;
    let q = quantize_with(o, x, dt, grid, &steps, opts, false, &stats, Some(jnd), outs)?;
    Ok((steps, q))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn quantize(o: usize, x: &Tensor, dt: Dtype, grid: &TokenGrid, steps: &Tensor, opts: &QuantizeOptions, in_place: bool, outs: Outs) -> Result<Quantized> {
    let stats = Stats::new(o, raw::quantize_slots(opts.bits, opts.histogram));
    quantize_with(o, x, dt, grid, steps, opts, in_place, &stats, None, outs)
}

#[allow(clippy::too_many_arguments)]
fn quantize_with(o: usize, x: &Tensor, dt: Dtype, grid: &TokenGrid, steps: &Tensor, opts: &QuantizeOptions, in_place: bool, stats: &Stats, jnd: Option<&Tensor>, outs: Outs) -> Result<Quantized> {
    let dev = Device::get(o)?;
    let Outs { symbols, recon, token_sse } = outs;
    let p = QuantPtrs {
        x: ptr(x),
        steps: ptr(steps),
        symbols: symbols.as_ref().map_or(0, ptr),
        recon: if in_place { ptr(x) } else { recon.as_ref().map_or(0, ptr) },
        token_sse: token_sse.as_ref().map_or(0, ptr),
    };
    raw::quantize(&dev, dt, grid, &p, opts.bits, opts.histogram, stats.base(), &dev.torch_stream())?;
    let s = raw::decode_quantize(&stats.read()?, opts.bits, opts.histogram);
    if let (Some(j), Some(index)) = (jnd, s.bad_j) {
        return Err(Error::Jnd { index, value: value_at(j, index) });
    }
    if let Some(index) = s.bad_x {
        let value = if in_place { f32::NAN } else { value_at(x, index) };
        return Err(Error::NonFinite { index, value });
    }
    Ok(Quantized { symbols, recon, token_sse, clamped: s.clamped, total_sse: s.total_sse, mse: 0.0, histogram: s.histogram, rate: None })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn perturb(o: usize, x: &Tensor, jnd: Option<&Tensor>, dt: Dtype, samples: usize, nrmse: f64, noise: NoiseSpec, out: Option<&Tensor>) -> Result<PerturbReport> {
    if !(nrmse.is_finite() && nrmse >= 0.0) {
        return Err(Error::Nrmse(nrmse));
    }
    let dev = Device::get(o)?;
    let stats = Stats::new(o, raw::perturb_slots(samples));
    let outp = out.map_or(ptr(x), ptr);
    raw::perturb(&dev, dt, ptr(x), jnd.map_or(0, ptr), outp, x.numel(), samples, nrmse, noise, stats.base(), &dev.torch_stream())?;
    let (bad_x, bad_j, report) = raw::decode_perturb(&stats.read()?, samples);
    if let Some(index) = bad_x {
        return Err(Error::NonFinite { index, value: value_at(x, index) });
    }
    if let Some(index) = bad_j {
        return Err(Error::Jnd { index, value: value_at(jnd.unwrap(), index) });
    }
    Ok(report)
}

pub(super) fn noise(o: usize, numel: usize, offset: u64, noise: NoiseSpec) -> Result<Tensor> {
    let dev = Device::get(o)?;
    let out = Tensor::empty([numel as i64], (Kind::Float, TDevice::Cuda(o)));
    if numel == 0 {
        return Ok(out);
    }
    raw::noise(&dev, ptr(&out), numel, offset, noise, &dev.torch_stream())?;
    Ok(out)
}
