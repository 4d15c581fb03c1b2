//! The sync-free calls (contract §8) for Python: the same validated calls as the synchronous
//! ones, their statistics in a caller's int64 array in x's memory, decoded later by
//! `quantize_decode` / `perturb_decode` (the one sync the caller chooses). On CUDA the calls are
//! only enqueued on the caller's stream (`stream=`, as for every call of the package); on the CPU
//! they run at once and record the same statistics, so decoding is the same on both.
use featjnd_kernels::call::{no_overlap, Buf, Cuda, JndChainArgs, PerturbCall, PerturbDecodeArgs, QuantizeCall, QuantizeDecodeArgs};
use featjnd_kernels::cuda::raw;
use featjnd_kernels::geom::Strategy;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::array::{device_of, import, Array, Dev, Kind};
use super::{
    guard, on_device, parse_bits, parse_layout, parse_reduce, parse_strategy, report_dict, token_grid, Error, PerturbArrays, QuantArrays, R,
};

/// The caller's statistics array: a 1-D int64 array of at least `slots` values (the first are used).
fn stats_of(a: &Array, slots: usize) -> Result<Buf, Error> {
    if a.kind != Kind::I64 || a.shape.len() != 1 {
        return Err(Error::Shape(format!("stats must be a contiguous 1-D int64 array, got {} of shape {:?}", a.kind.name(), a.shape)));
    }
    a.buf().head(slots)
}

/// The executor's CUDA side for an enqueue on the caller's stream.
fn cuda(ordinal: i32, stream: usize) -> Result<Cuda, Error> {
    // SAFETY: the `stream=` contract of the package (a live stream of this device, or 0).
    unsafe { Cuda::borrowed(ordinal.max(0) as usize, stream as *mut std::ffi::c_void, false) }
}

/// A validated host statistics array as a slice.
///
/// # Safety
/// `b` is host memory of `len` i64, writable, that no other array of the call overlaps (the
/// call was validated with `b` among its outputs), alive for the call.
unsafe fn host_slots<'a>(b: &Buf) -> &'a mut [i64] {
    // SAFETY: this fn's contract.
    unsafe { std::slice::from_raw_parts_mut(b.addr() as *mut i64, b.len()) }
}

/// Statistics slots of `quantize_async` (the histogram's room always included).
#[pyfunction]
pub fn quantize_stats_slots(py: Python<'_>, bits: u32) -> PyResult<usize> {
    guard(py, || Ok(raw::quantize_slots(parse_bits(bits)?, true)))
}

/// Statistics slots of `quantize_with_jnd_async` for a feature of `tokens` tokens.
#[pyfunction]
pub fn quantize_with_jnd_stats_slots(py: Python<'_>, bits: u32, tokens: usize) -> PyResult<usize> {
    guard(py, || Ok(raw::jnd_chain_slots(parse_bits(bits)?, tokens)))
}

/// Statistics slots of `perturb_async` for `samples` samples.
#[pyfunction]
pub fn perturb_stats_slots(samples: usize) -> usize {
    raw::perturb_slots(samples)
}

/// `quantize` without a sync: the statistics (histogram always counted) go to `stats`.
#[pyfunction]
#[pyo3(signature = (x, layout, patch, steps, bits, stats, symbols=None, recon=None, token_sse=None, stream=0))]
#[allow(clippy::too_many_arguments)]
pub fn quantize_async(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    layout: &str,
    patch: usize,
    steps: &Bound<'_, PyAny>,
    bits: u32,
    stats: &Bound<'_, PyAny>,
    symbols: Option<&Bound<'_, PyAny>>,
    recon: Option<&Bound<'_, PyAny>>,
    token_sse: Option<&Bound<'_, PyAny>>,
    stream: usize,
) -> PyResult<()> {
    guard(py, || {
        let q = QuantArrays::import(x, steps, symbols, recon, token_sse, stream)?;
        let sa = import(stats, "stats", stream)?;
        let (args, _, dev) = q.args(layout, patch, bits, true)?;
        device_of(&[&q.x, &sa])?;
        let st = stats_of(&sa, raw::quantize_slots(args.bits, true))?;
        let call = args.validate_with(&[], &[st])?;
        Ok(enqueue_quantize(py, dev, stream, &call, &st)?)
    })
}

fn enqueue_quantize(py: Python<'_>, dev: Dev, stream: usize, call: &QuantizeCall, st: &Buf) -> Result<(), Error> {
    match dev {
        Dev::Cuda(o) => cuda(o, stream)?.quantize_enqueue(call, st),
        // SAFETY: host statistics validated among the call's outputs.
        Dev::Cpu => py.detach(|| call.record_host(None, unsafe { host_slots(st) })),
    }
}

/// The fused chain `J → j_t → Δ_t → quantize` without a sync or a host round trip: the steps go
/// to `steps_out`, the statistics to `stats` (`quantize_with_jnd_stats_slots`).
#[pyfunction]
#[pyo3(signature = (x, j, layout, patch, reduce, budget, strategy, bits, steps_out, stats, symbols=None, recon=None, token_sse=None, stream=0))]
#[allow(clippy::too_many_arguments)]
pub fn quantize_with_jnd_async(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    j: &Bound<'_, PyAny>,
    layout: &str,
    patch: usize,
    reduce: &str,
    budget: f64,
    strategy: &str,
    bits: u32,
    steps_out: &Bound<'_, PyAny>,
    stats: &Bound<'_, PyAny>,
    symbols: Option<&Bound<'_, PyAny>>,
    recon: Option<&Bound<'_, PyAny>>,
    token_sse: Option<&Bound<'_, PyAny>>,
    stream: usize,
) -> PyResult<()> {
    guard(py, || {
        let (reduce, strategy) = (parse_reduce(reduce)?, parse_strategy(strategy, 0)?);
        if matches!(strategy, Strategy::Permuted { .. }) {
            return Err(Error::Arg("the permuted strategy needs a permutation made on the host: use quantize_with_jnd".into()).into());
        }
        let q = QuantArrays::import(x, steps_out, symbols, recon, token_sse, stream)?;
        let (ja, sa) = (import(j, "J", stream)?, import(stats, "stats", stream)?);
        let (args, g, dev) = q.args(layout, patch, bits, true)?;
        device_of(&[&q.x, &ja, &sa])?;
        let st = stats_of(&sa, raw::jnd_chain_slots(args.bits, g.tokens()))?;
        // The statistics join the aliasing rule, then the chain's own rules.
        args.validate_with(&[ja.buf()], &[st])?;
        let chain = JndChainArgs { quantize: args, jnd: ja.buf(), reduce, budget, strategy }.validate()?;
        match dev {
            Dev::Cuda(o) => cuda(o, stream)?.quantize_with_jnd_enqueue(&chain, &st)?,
            Dev::Cpu => {
                let s = st.head(raw::quantize_slots(args.bits, true))?;
                // SAFETY: host statistics validated among the call's outputs.
                py.detach(|| chain.record_host(None, unsafe { host_slots(&s) }))?
            }
        }
        Ok(())
    })
}

/// `perturb` without a sync: the per-sample scales, the zero samples and a bad x or J go to
/// `stats` (`perturb_stats_slots`); `out` must not be `x`.
#[pyfunction]
#[pyo3(signature = (x, j, nrmse, noise, seed, subsequence, out, stats, stream=0))]
#[allow(clippy::too_many_arguments)]
pub fn perturb_async(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    j: Option<&Bound<'_, PyAny>>,
    nrmse: f64,
    noise: &str,
    seed: u64,
    subsequence: u32,
    out: &Bound<'_, PyAny>,
    stats: &Bound<'_, PyAny>,
    stream: usize,
) -> PyResult<()> {
    guard(py, || {
        let p = PerturbArrays::import(x, j, out, stream)?;
        let sa = import(stats, "stats", stream)?;
        let (args, dev) = p.args(nrmse, noise, seed, subsequence)?;
        device_of(&[&p.x, &sa])?;
        let st = stats_of(&sa, raw::perturb_slots(args.samples))?;
        let call = args.validate_with(&[st])?;
        Ok(enqueue_perturb(py, dev, stream, &[(&call, 0)], &st)?)
    })
}

fn enqueue_perturb(py: Python<'_>, dev: Dev, stream: usize, calls: &[(&PerturbCall, usize)], st: &Buf) -> Result<(), Error> {
    match dev {
        Dev::Cuda(o) if calls.len() == 1 => cuda(o, stream)?.perturb_enqueue(calls[0].0, st),
        Dev::Cuda(o) => cuda(o, stream)?.perturb_batch_enqueue(calls, st),
        Dev::Cpu => {
            // SAFETY: host statistics validated among every call's outputs.
            let all = unsafe { host_slots(st) };
            py.detach(|| {
                calls.iter().try_for_each(|(c, off)| c.record_host(None, &mut all[*off..*off + raw::perturb_slots(c.args().samples)]))
            })
        }
    }
}

/// Many independent quantizations of one dtype and device in one call (one launch per 32 items
/// on CUDA): `items` are `(x, layout, patch, steps, symbols, recon, token_sse)` tuples (outputs
/// may be None); item `i`'s statistics are `stats[i·s : (i+1)·s]`, `s = quantize_stats_slots(bits)`.
#[pyfunction]
#[pyo3(signature = (items, bits, stats, stream=0))]
#[allow(clippy::type_complexity)]
pub fn quantize_batch_async(
    py: Python<'_>,
    items: Vec<(
        Bound<'_, PyAny>,
        String,
        usize,
        Bound<'_, PyAny>,
        Option<Bound<'_, PyAny>>,
        Option<Bound<'_, PyAny>>,
        Option<Bound<'_, PyAny>>,
    )>,
    bits: u32,
    stats: &Bound<'_, PyAny>,
    stream: usize,
) -> PyResult<()> {
    guard(py, || {
        let per = raw::quantize_slots(parse_bits(bits)?, true);
        let sa = import(stats, "stats", stream)?;
        let st = stats_of(&sa, per * items.len())?;
        let mut arrays = Vec::with_capacity(items.len());
        for (x, layout, patch, steps, sym, rec, sse) in &items {
            let q = QuantArrays::import(x, steps, sym.as_ref(), rec.as_ref(), sse.as_ref(), stream)?;
            arrays.push((q, (layout.as_str(), *patch)));
        }
        let mut calls = Vec::with_capacity(items.len());
        let (mut ins, mut outs) = (Vec::new(), vec![st]);
        let mut dev = None;
        for (i, (q, (layout, patch))) in arrays.iter().enumerate() {
            let in_item = |e: Error| item_error(e, i);
            let (args, _, d) = q.args(layout, *patch, bits, true).map_err(in_item)?;
            if dev.is_some_and(|v| v != d) || calls.first().is_some_and(|c: &QuantizeCall| c.args().x.elem() != args.x.elem()) {
                return Err(in_item(Error::Dtype("every item of a batch has the first item's dtype and device".into())).into());
            }
            dev = Some(d);
            ins.extend([args.x, args.steps]);
            outs.extend([args.symbols, args.recon, args.token_sse].into_iter().flatten());
            calls.push(args.validate().map_err(in_item)?);
        }
        let Some(dev) = dev else { return Ok(()) };
        device_of(&[&arrays[0].0.x, &sa])?;
        // Across items (and with the statistics) no output may overlap anything.
        no_overlap(&ins, &outs, None)?;
        match dev {
            Dev::Cuda(o) => cuda(o, stream)?.quantize_batch_enqueue(&calls.iter().collect::<Vec<_>>(), &st, per)?,
            Dev::Cpu => {
                // SAFETY: host statistics disjoint from every item's arrays (checked above).
                let all = unsafe { host_slots(&st) };
                py.detach(|| calls.iter().zip(all.chunks_mut(per)).try_for_each(|(c, s)| c.record_host(None, s)))?
            }
        }
        Ok(())
    })
}

/// Many independent perturbations of one dtype and device in one call: `items` are
/// `(x, j, nrmse, noise, seed, subsequence, out)` tuples (`j` may be None). Returns each item's
/// offset into `stats` (which needs `sum(perturb_stats_slots(len(x_i)))` slots).
#[pyfunction]
#[pyo3(signature = (items, stats, stream=0))]
#[allow(clippy::type_complexity)]
pub fn perturb_batch_async(
    py: Python<'_>,
    items: Vec<(Bound<'_, PyAny>, Option<Bound<'_, PyAny>>, f64, String, u64, u32, Bound<'_, PyAny>)>,
    stats: &Bound<'_, PyAny>,
    stream: usize,
) -> PyResult<Vec<usize>> {
    guard(py, || {
        let sa = import(stats, "stats", stream)?;
        let mut arrays = Vec::with_capacity(items.len());
        for (x, j, _, _, _, _, out) in &items {
            arrays.push(PerturbArrays::import(x, j.as_ref(), out, stream)?);
        }
        let (mut calls, mut offsets, mut total) = (Vec::new(), Vec::new(), 0usize);
        let (mut ins, mut outs) = (Vec::new(), Vec::new());
        let mut dev = None;
        for (i, (p, (_, _, nrmse, noise, seed, sub, _))) in arrays.iter().zip(&items).enumerate() {
            let in_item = |e: Error| item_error(e, i);
            let (args, d) = p.args(*nrmse, noise, *seed, *sub).map_err(in_item)?;
            if dev.is_some_and(|v| v != d) || calls.first().is_some_and(|c: &PerturbCall| c.args().x.elem() != args.x.elem()) {
                return Err(in_item(Error::Dtype("every item of a batch has the first item's dtype and device".into())).into());
            }
            dev = Some(d);
            ins.extend([Some(args.x), args.jnd].into_iter().flatten());
            outs.push(args.out);
            offsets.push(total);
            total += raw::perturb_slots(args.samples);
            calls.push(args.validate().map_err(in_item)?);
        }
        let Some(dev) = dev else { return Ok(offsets) };
        device_of(&[&arrays[0].x, &sa])?;
        let st = stats_of(&sa, total)?;
        outs.push(st);
        no_overlap(&ins, &outs, None)?;
        let pairs: Vec<(&PerturbCall, usize)> = calls.iter().zip(offsets.iter().copied()).collect();
        match dev {
            Dev::Cuda(o) => cuda(o, stream)?.perturb_batch_enqueue(&pairs, &st)?,
            Dev::Cpu => enqueue_perturb(py, dev, stream, &pairs, &st)?,
        }
        Ok(offsets)
    })
}

/// An item's error, naming the item (the variant kept).
fn item_error(e: Error, i: usize) -> Error {
    match e {
        Error::Shape(m) => Error::Shape(format!("items[{i}]: {m}")),
        Error::Dtype(m) => Error::Dtype(format!("items[{i}]: {m}")),
        Error::MixedDevices(m) => Error::MixedDevices(format!("items[{i}]: {m}")),
        Error::Arg(m) => Error::Arg(format!("items[{i}]: {m}")),
        other => other,
    }
}

/// Decodes the statistics of `quantize_async` / `quantize_with_jnd_async` (or a batch item's
/// slice) with the `x` (and `j`) they were given: the dict `quantize` returns, or the error the
/// synchronous call would raise. On CUDA: one copy on `stream` and its sync.
#[pyfunction]
#[pyo3(signature = (stats, x, layout, patch, bits, j=None, stream=0))]
#[allow(clippy::too_many_arguments)]
pub fn quantize_decode<'py>(
    py: Python<'py>,
    stats: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    layout: &str,
    patch: usize,
    bits: u32,
    j: Option<&Bound<'py, PyAny>>,
    stream: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let (r, g) = guard(py, || -> R<_> {
        let bits = parse_bits(bits)?;
        let (sa, xa) = (import(stats, "stats", stream)?, import(x, "x", stream)?);
        let ja = j.map(|j| import(j, "J", stream)).transpose()?;
        let dev = device_of(&[Some(&sa), Some(&xa), ja.as_ref()].into_iter().flatten().collect::<Vec<_>>())?;
        let g = token_grid(&xa.shape, parse_layout(layout)?, patch)?;
        let st = stats_of(&sa, raw::quantize_slots(bits, true))?;
        let call = QuantizeDecodeArgs { stats: st, x: xa.buf(), jnd: ja.as_ref().map(Array::buf), shape: g.shape, patch: g.patch, bits }
            .validate()?;
        Ok((on_device(py, dev, stream, |ex| ex.run(&call))?, g))
    })?;
    report_dict(py, &r, &g)
}

/// Decodes the statistics of `perturb_async` (or a batch item's slice) with its `x`, `j` and
/// `nrmse`: `(scales, zero_samples)`, or the error the synchronous call would raise.
#[pyfunction]
#[pyo3(signature = (stats, x, nrmse, j=None, stream=0))]
pub fn perturb_decode(
    py: Python<'_>,
    stats: &Bound<'_, PyAny>,
    x: &Bound<'_, PyAny>,
    nrmse: f64,
    j: Option<&Bound<'_, PyAny>>,
    stream: usize,
) -> PyResult<(Vec<f32>, Vec<usize>)> {
    guard(py, || {
        let (sa, xa) = (import(stats, "stats", stream)?, import(x, "x", stream)?);
        let ja = j.map(|j| import(j, "J", stream)).transpose()?;
        let dev = device_of(&[Some(&sa), Some(&xa), ja.as_ref()].into_iter().flatten().collect::<Vec<_>>())?;
        let samples = *xa.shape.first().ok_or_else(|| Error::Shape("x has no sample dimension (a 0-d array)".into()))?;
        let st = stats_of(&sa, raw::perturb_slots(samples))?;
        let call = PerturbDecodeArgs { stats: st, x: xa.buf(), samples, jnd: ja.as_ref().map(Array::buf), nrmse }.validate()?;
        let rep = on_device(py, dev, stream, |ex| ex.run(&call))?;
        Ok((rep.scales, rep.zero_samples))
    })
}
