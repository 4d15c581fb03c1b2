//! The CUDA side of [`super`] that is not yet a `crate::call` (issue 24): the two synchronous
//! fused chains, `quantize_with_jnd` (J → j_t → Δ_t → quantize without a host round trip) and
//! `quantize_capped`, and the kernel step allocation they use. Outputs are torch tensors on the
//! input's device (tch's fallible `f_*` calls), kernels run on torch's current stream, and the
//! statistics buffer (layout in `raw`) is a torch i64 tensor: one memset before, one
//! device-to-host copy after, so a single sync per op and none inside the chain.
//!
//! Soundness: every function here is called by [`super`] after its checks: tensors defined,
//! contiguous, of the dtype passed in, on CUDA device `o`, shaped for the grid, and caller
//! buffers disjoint from the inputs and from each other. Those checks are what the `SAFETY:`
//! comments below rely on.
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::CudaStream;
use tch::{Device as TDevice, Kind, Tensor};

use super::{Outs, QuantizeOptions, Quantized};
use crate::cuda::raw::{self, DevPtr, DevPtrMut, Elems, Launch, QuantPtrs, StatsBuf, StepPtrs};
use crate::cuda::Device;
use crate::element::Dtype;
use crate::error::Result;
use crate::geom::{Reduce, Strategy, TokenGrid};
use crate::philox;

/// A tensor's data as a device pointer the kernels read.
fn src<T>(t: &Tensor) -> DevPtr<T> {
    DevPtr::from_raw(t.data_ptr() as *const T)
}
/// A tensor's data as a device element array of dtype `dt`.
fn elems(t: &Tensor, dt: Dtype) -> Elems {
    Elems { ptr: src(t), dt }
}
/// A tensor's data as a device pointer the kernels write.
fn dst<T>(t: &Tensor) -> DevPtrMut<T> {
    DevPtrMut::from_raw(t.data_ptr() as *mut T)
}

/// One op on device `o`: the cached device and torch's current stream on it.
struct On {
    dev: Arc<Device>,
    stream: Arc<CudaStream>,
    o: usize,
}

impl On {
    fn new(o: usize) -> Result<On> {
        let dev = Device::get(o)?;
        let stream = dev.torch_stream();
        Ok(On { dev, stream, o })
    }

    fn launch(&self) -> Launch<'_> {
        Launch { dev: &self.dev, stream: &self.stream }
    }

    fn empty(&self, sizes: &[i64], kind: Kind) -> Result<Tensor> {
        Ok(Tensor::f_empty(sizes, (kind, TDevice::Cuda(self.o)))?)
    }

    /// Zeroed device statistics, 8 bytes a slot (torch's caching allocator, torch's stream).
    fn stats(&self, slots: usize) -> Result<(Tensor, StatsBuf)> {
        let t = Tensor::f_zeros([slots as i64], (Kind::Int64, TDevice::Cuda(self.o)))?;
        let buf = StatsBuf::new(dst(&t), slots);
        Ok((t, buf))
    }

    /// One device-to-host copy of the statistics (waits for the stream).
    fn read(&self, stats: StatsBuf) -> Result<Vec<i64>> {
        // SAFETY: `stats` is a live i64 tensor of `stats.len()` slots on this device (held by the
        // caller), and every kernel writing it was enqueued on `self.stream`.
        unsafe { raw::read_stats(stats, &self.stream) }
    }

    /// `Ok`, or the typed error for the first bad element the kernels found in `x` or `J`.
    fn check(&self, bad: Option<raw::BadElement>, x: raw::Source, jnd: raw::Source) -> Result<()> {
        // SAFETY: each source is a checked tensor of its dtype with the op's element count (the
        // index the kernels report lies inside it); the stream is synchronized by `read`.
        unsafe { raw::check_bad(bad, x, jnd, &self.stream) }
    }
}

/// Enqueues the step allocation. `sum_sq` is a device f64 `Σ j²` (from the token-stats kernel
/// when fused); without it torch reduces it on the device. Never syncs.
pub(super) fn allocate_steps(
    o: usize,
    jt: &Tensor,
    budget: f64,
    strategy: Strategy,
    beta: f64,
    sum_sq: Option<DevPtr<f64>>,
) -> Result<Tensor> {
    let on = On::new(o)?;
    let t = jt.numel();
    let owned = match sum_sq {
        Some(_) => None,
        None => Some(jt.f_to_kind(Kind::Double)?.f_square()?.f_sum(Kind::Double)?),
    };
    // The permutation depends only on (T, seed): made on the host, uploaded once.
    let perm = match strategy {
        Strategy::Permuted { seed } => {
            let p: Vec<i32> = philox::permutation(t, seed).into_iter().map(|v| v as i32).collect();
            Some(Tensor::f_from_slice(&p)?.f_to_device(TDevice::Cuda(o))?)
        }
        _ => None,
    };
    let steps = on.empty(&[t as i64], Kind::Float)?;
    let p = StepPtrs {
        token_tol: src(jt),
        sum_sq: sum_sq.unwrap_or_else(|| owned.as_ref().map_or(DevPtr::null(), src)),
        perm: perm.as_ref().map_or(DevPtr::null(), src),
        steps: dst(&steps),
    };
    // SAFETY: `jt` is a checked contiguous 1-D f32 CUDA tensor of `t` values on device `o`; `sum`
    // is one device f64 (a tensor reduced just above, or the fused chain's statistics slot);
    // `perm` holds a permutation of 0..t (i32 and u32 agree on it); `steps` was just allocated;
    // everything is ordered on torch's stream.
    unsafe { raw::step_alloc(on.launch(), &p, t, budget, strategy, beta) }?;
    Ok(steps)
}

/// The fused chain: `J → j_t → Δ_t → quantize`, one sync at the end.
#[allow(clippy::too_many_arguments)]
pub(super) fn quantize_with_jnd(
    o: usize,
    x: &Tensor,
    dt: Dtype,
    jnd: &Tensor,
    dj: Dtype,
    grid: &TokenGrid,
    reduce: Reduce,
    budget: f64,
    strategy: Strategy,
    opts: &QuantizeOptions,
    outs: Outs,
) -> Result<(Tensor, Quantized)> {
    let on = On::new(o)?;
    // The fused chain always counts the histogram (slots for it), whatever `opts` says.
    let (_keep, stats) = on.stats(raw::quantize_slots(opts.bits, true))?;
    let jt = on.empty(&[grid.tokens() as i64], Kind::Float)?;
    // SAFETY: as in `token_tolerance`; `J` has the sizes of `x` (checked by the caller), and the
    // token-stats slots are the first ones of a quantization's buffer.
    unsafe { raw::token_stats(on.launch(), grid, reduce, elems(jnd, dj), dst(&jt), stats, true) }?;
    let steps = allocate_steps(o, &jt, budget, strategy, 1.0, Some(stats.sum_sq()))?;
    let q = quantize_with(&on, x, dt, grid, &steps, opts, false, stats, Some(elems(jnd, dj)), outs)?;
    Ok((steps, q))
}

#[allow(clippy::too_many_arguments)]
fn quantize_with(
    on: &On,
    x: &Tensor,
    dt: Dtype,
    grid: &TokenGrid,
    steps: &Tensor,
    opts: &QuantizeOptions,
    in_place: bool,
    stats: StatsBuf,
    jnd: raw::Source,
    outs: Outs,
) -> Result<Quantized> {
    let Outs { symbols, recon, token_sse } = outs;
    let p = QuantPtrs {
        x: src(x),
        steps: src(steps),
        symbols: symbols.as_ref().map_or(DevPtrMut::null(), dst::<c_void>),
        recon: if in_place { dst(x) } else { recon.as_ref().map_or(DevPtrMut::null(), dst) },
        token_sse: token_sse.as_ref().map_or(DevPtrMut::null(), dst),
    };
    // SAFETY: `x` (dtype `dt`, `grid.numel()` elements) and `steps` (`grid.tokens()` f32) are
    // checked contiguous CUDA tensors on device `o`; the outputs were allocated with the op's
    // shapes or checked (shape, device, disjoint from `x`, `steps` and each other) by the caller;
    // in place, `recon` is `x` itself; `stats` has the slots; all on torch's stream.
    unsafe { raw::quantize(on.launch(), dt, grid, &p, opts.bits, opts.histogram, stats) }?;
    let s = raw::decode_quantize(&on.read(stats)?, opts.bits, opts.histogram);
    // In place, x is overwritten: the message cannot show the bad value.
    let xs = (!in_place).then(|| elems(x, dt));
    on.check(s.bad, xs, jnd)?;
    Ok(Quantized { symbols, recon, token_sse, clamped: s.clamped, total_sse: s.total_sse, mse: 0.0, histogram: s.histogram, rate: None })
}

// ---- the capped allocation (contract §3.5) ----

impl On {
    /// `Ok`, or the typed error for what a capped allocation found (see `raw::check_capped`).
    fn check_capped(&self, bad: Option<raw::CappedBad>, x: raw::Source, jt: Option<&Tensor>, caps: Option<&Tensor>) -> Result<()> {
        let p = |t: Option<&Tensor>| t.map_or(DevPtr::null(), src);
        // SAFETY: `x` is a checked tensor of its dtype with the op's element count, `jt` and `caps`
        // checked f32 tensors of `T` values (the indices the kernels report lie inside them); the
        // stream was synchronized by `read`, and nothing writes them.
        unsafe { raw::check_capped(bad, x, p(jt), p(caps), &self.stream) }
    }
}

/// The fused capped chain `x, J → r_t, j_t → c_t → (a, b) → Δ_t → quantize`: six launches (token
/// stats of J, token RMS of x, caps, the one-block solve, steps, quantize) and one sync at the end.
#[allow(clippy::too_many_arguments)]
pub(super) fn quantize_capped(
    o: usize,
    x: &Tensor,
    dt: Dtype,
    jnd: &Tensor,
    dj: Dtype,
    grid: &TokenGrid,
    reduce: Reduce,
    kappa: f32,
    budget: f64,
    opts: &QuantizeOptions,
    outs: Outs,
) -> Result<(Tensor, Quantized)> {
    let on = On::new(o)?;
    // One buffer: the quantization's slots (J's token stats first), then the capped allocation's.
    let qslots = raw::quantize_slots(opts.bits, opts.histogram);
    let (_keep, all) = on.stats(qslots + raw::CAPPED_SLOTS)?;
    let (qbuf, cbuf) = (all.sub(0, qslots)?, all.sub(qslots, raw::CAPPED_SLOTS)?);
    let tokens = grid.tokens();
    let jt = on.empty(&[tokens as i64], Kind::Float)?;
    let rms = on.empty(&[tokens as i64], Kind::Float)?;
    let caps = on.empty(&[tokens as i64], Kind::Float)?;
    let steps = on.empty(&[tokens as i64], Kind::Float)?;
    // SAFETY: `x` and `J` are checked contiguous CUDA tensors of `dt`/`dj` with the grid's sizes on
    // device `o`; `jt`, `rms`, `caps` and `steps` were just allocated there with `T` f32 each;
    // `qbuf` and `cbuf` are disjoint zeroed slots of one buffer with the room each launch needs;
    // every launch is on torch's stream, so each reads what the previous ones wrote.
    unsafe {
        raw::token_stats(on.launch(), grid, reduce, elems(jnd, dj), dst(&jt), qbuf, false)?;
        raw::token_rms(on.launch(), grid, elems(x, dt), dst(&rms), cbuf)?;
        raw::capped_caps(on.launch(), src(&rms), tokens, kappa, true, dst(&caps), cbuf)?;
        raw::capped_solve(on.launch(), src(&jt), src(&caps), tokens, budget, cbuf)?;
        raw::capped_steps(on.launch(), src(&jt), src(&caps), tokens, 1.0, dst(&steps), cbuf)?;
    }
    let Outs { symbols, recon, token_sse } = outs;
    let p = QuantPtrs {
        x: src(x),
        steps: src(&steps),
        symbols: symbols.as_ref().map_or(DevPtrMut::null(), dst::<c_void>),
        recon: recon.as_ref().map_or(DevPtrMut::null(), dst),
        token_sse: token_sse.as_ref().map_or(DevPtrMut::null(), dst),
    };
    // SAFETY: as in `quantize_with` (out of place; the outputs were allocated with the op's shapes
    // or checked by the caller); `steps` holds `T` f32 written by the launch above.
    unsafe { raw::quantize(on.launch(), dt, grid, &p, opts.bits, opts.histogram, qbuf) }?;
    let v = on.read(all)?;
    let q = raw::decode_quantize(&v[..qslots], opts.bits, opts.histogram);
    let c = raw::decode_capped(&v[qslots..]);
    // The CPU's order: J (reduced first), then x, then the allocation's own checks.
    on.check(raw::decode_token_stats(&v), None, Some(elems(jnd, dj)))?;
    on.check_capped(c.bad, Some(elems(x, dt)), Some(&jt), Some(&caps))?;
    on.check(q.bad, Some(elems(x, dt)), Some(elems(jnd, dj)))?;
    let q =
        Quantized { symbols, recon, token_sse, clamped: q.clamped, total_sse: q.total_sse, mse: 0.0, histogram: q.histogram, rate: None };
    Ok((steps, q))
}
