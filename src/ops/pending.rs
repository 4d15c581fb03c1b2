//! The sync-free calls (contract §8): the fused JND quantization, the quantization with given
//! steps, the perturbation, and batches of quantizations or perturbations, each with its
//! statistics in a caller-owned i64 tensor (the workspace, sized by the `*_stats_slots`
//! functions, in the layout of `cuda::raw`) and its outputs in caller-owned tensors.
//!
//! On CUDA a call only enqueues work on torch's current stream: a memset node that zeroes the
//! statistics, then the kernels (the fused chain on inputs of up to 512 token-stats blocks: two
//! kernels and no memset, `raw::quantize_with_jnd`). No host read of device memory, no sync, no device allocation
//! (the host work is the argument checks and a few small host objects), so a loop of calls can be
//! captured into a CUDA graph where torch's current stream is a capturing stream (e.g. under
//! `torch.cuda.graph`; the C ABI takes the stream as an argument). Errors the kernels find (a
//! non-finite x, a bad J) land in the statistics with their index; the returned `Pending*`
//! value's `decode()` copies them to the host when the caller chooses (that is the sync) and
//! gives today's results or today's typed errors, through the decoders of `cuda::raw`.
//!
//! On the CPU the same calls run synchronously and write the same statistics layout into a CPU
//! i64 tensor (`raw::encode_*`), so `decode()` behaves identically. Errors that need no data
//! (shapes, dtypes, devices, budget, NRMSE, buffers) are returned by the call itself on every
//! device.
use tch::{Device, Kind, Tensor};

use super::{
    buf, byte_range, check_device, check_disjoint, check_perturb, check_steps_tensor, check_tensor, cuda_ordinal, grid_of, out_tensor,
    perturb_call, prepare_outs, quantize_args, quantize_call, same_device, slice_mut, Outs, QuantizeBuffers, QuantizeOptions, Quantized,
};
use crate::call::{Buf, ChainArgs, Cuda, QuantizeReport, StepRule};
use crate::cpu::{perturb::NoiseSpec, PerturbReport};
use crate::cuda::raw::{self, BadElement, Input};
use crate::error::{Error, Result};
use crate::geom::{Bits, Layout, Reduce, Strategy, TokenGrid};
use crate::steps;

/// The first `slots` values of a checked workspace as the core's view (the enqueue zeroes exactly
/// those, as the contract's layout says; a longer workspace's tail is left alone).
fn stats_buf(stats: &Tensor, slots: usize) -> Result<Buf> {
    let b = buf(stats, "statistics workspace")?;
    // SAFETY: a prefix of the checked workspace (`check_stats`: at least `slots` i64 on the op's
    // device), alive while the caller's handle lives.
    Ok(unsafe { Buf::new(b.name, b.addr(), slots.min(b.len()), b.elem(), b.mem(), true) })
}

/// Statistics slots of [`quantize_async`] (histogram room always included, so one workspace fits
/// any [`QuantizeOptions`] of these `bits`).
pub fn quantize_stats_slots(bits: Bits) -> usize {
    raw::quantize_slots(bits, true)
}

/// Workspace slots of [`quantize_with_jnd_async`] for a feature of `tokens` tokens: the
/// statistics of [`quantize_stats_slots`], then the token tolerances as scratch.
pub fn quantize_with_jnd_stats_slots(bits: Bits, tokens: usize) -> usize {
    raw::jnd_chain_slots(bits, tokens)
}

/// Statistics slots of [`perturb_async`] for `samples` samples.
pub fn perturb_stats_slots(samples: usize) -> usize {
    raw::perturb_slots(samples)
}

/// Statistics slots of [`quantize_batch_async`] for `items` items: item `i` owns the slots
/// `i·s .. (i+1)·s`, `s = quantize_stats_slots(bits)`.
pub fn quantize_batch_stats_slots(bits: Bits, items: usize) -> usize {
    items * quantize_stats_slots(bits)
}

/// A workspace of `slots` i64 on `device` (allocate it once, outside the loop).
pub fn stats_buffer(slots: usize, device: Device) -> Result<Tensor> {
    Ok(Tensor::f_zeros([slots as i64], (Kind::Int64, device))?)
}

/// Checks a caller's workspace: a contiguous 1-D i64 tensor on `x`'s device with at least `slots`
/// slots.
fn check_stats(stats: &Tensor, slots: usize, x: &Tensor) -> Result<()> {
    if !stats.defined() || stats.kind() != Kind::Int64 || stats.dim() != 1 || !stats.is_contiguous() {
        return Err(Error::Arg("the statistics workspace must be a contiguous 1-D i64 tensor".into()));
    }
    if stats.device() != x.device() {
        return Err(Error::Arg(format!(
            "the statistics workspace is on {:?}, x on {:?}: it must be on x's device",
            stats.device(),
            x.device()
        )));
    }
    if stats.numel() < slots {
        return Err(Error::Shape(format!("the statistics workspace has {} slots, the call needs {slots}", stats.numel())));
    }
    Ok(())
}

/// Requested outputs must come from the caller: the sync-free calls allocate nothing.
fn require_bufs(opts: &QuantizeOptions, bufs: &QuantizeBuffers) -> Result<()> {
    for (wanted, given, name) in [
        (opts.symbols, bufs.symbols.is_some(), "symbols"),
        (opts.recon, bufs.recon.is_some(), "recon"),
        (opts.token_sse, bufs.token_sse.is_some(), "token_sse"),
    ] {
        if wanted && !given {
            return Err(Error::Arg(format!("the sync-free call allocates nothing: pass a {name} buffer (or turn {name} off)")));
        }
    }
    Ok(())
}

/// The workspace must share no memory with anything the call reads or writes.
fn stats_disjoint(stats: &Tensor, others: &[(&Tensor, &str)], outs: &Outs) -> Result<()> {
    for (t, n) in others {
        check_disjoint(stats, "statistics workspace", t, n)?;
    }
    for (t, n) in [(&outs.symbols, "symbols"), (&outs.recon, "reconstruction"), (&outs.token_sse, "token_sse")] {
        if let Some(t) = t {
            check_disjoint(stats, "statistics workspace", t, n)?;
        }
    }
    Ok(())
}

/// The first `slots` of a checked CPU workspace.
///
/// # Safety
/// `stats` passed [`check_stats`] for `slots` on the CPU and shares no memory with anything else
/// the call touches ([`stats_disjoint`]).
#[allow(clippy::mut_from_ref)]
unsafe fn cpu_slots(stats: &Tensor, slots: usize) -> &mut [i64] {
    // SAFETY: a contiguous CPU i64 tensor of at least `slots` values, used only here (contract).
    unsafe { &mut slice_mut::<i64>(stats)[..slots] }
}

/// The statistics of one call, copied to the host (on CUDA: after everything torch's current
/// stream holds, i.e. the sync the caller chose).
fn host_slots(stats: &Tensor, offset: usize, slots: usize) -> Result<Vec<i64>> {
    let v = stats.f_narrow(0, offset as i64, slots as i64)?.f_to_device(Device::Cpu)?;
    Ok(Vec::<i64>::try_from(&v)?)
}

/// The typed error of a bad element, with its value read back from `x` or `J` (NaN if absent).
fn bad_error(b: BadElement, x: &Tensor, jnd: Option<&Tensor>) -> Error {
    let src = match b.input {
        Input::X => Some(x),
        Input::Jnd => jnd,
        // These cells carry their value.
        Input::TokenTol(_) | Input::Step(_) => None,
    };
    let value = src.and_then(|t| t.f_view([-1]).ok()).and_then(|t| t.f_double_value(&[b.index as i64]).ok()).map_or(f32::NAN, |v| v as f32);
    b.error(value)
}

/// A call enqueued by one of the sync-free functions (or one item of a batch): where its
/// statistics are and what [`decode`](Self::decode) needs. `K` says what the slots hold
/// ([`QuantizeSlots`] or [`PerturbSlots`]).
#[derive(Clone, Copy, Debug)]
#[must_use = "the statistics (and any error the kernels found) are only seen through decode()"]
pub struct Pending<'a, K> {
    stats: &'a Tensor,
    offset: usize,
    x: &'a Tensor,
    jnd: Option<&'a Tensor>,
    kind: K,
}

/// A quantization enqueued by [`quantize_async`] or [`quantize_with_jnd_async`]: its decode
/// gives what the synchronous call returns (clamp count, total error, MSE, histogram and rate;
/// the output tensors are the caller's, so `symbols`, `recon` and `token_sse` are `None`) or its
/// typed error for a bad J, step or x.
pub type PendingQuantize<'a> = Pending<'a, QuantizeSlots>;
/// A perturbation enqueued by [`perturb_async`]: its decode gives the synchronous call's report
/// or its typed error (bad x, bad J, a scale beyond f32).
pub type PendingPerturb<'a> = Pending<'a, PerturbSlots>;

/// What a pending call's statistics slots hold.
pub trait Slots: Copy {
    type Output;
    /// How many slots the call owns.
    fn count(&self) -> usize;
    /// The result, or the bad element the kernels found.
    fn finish(&self, v: &[i64]) -> Result<std::result::Result<Self::Output, BadElement>>;
}

/// A quantization's slots.
#[derive(Clone, Copy, Debug)]
pub struct QuantizeSlots {
    grid: TokenGrid,
    bits: Bits,
    histogram: bool,
}

impl Slots for QuantizeSlots {
    type Output = Quantized;
    fn count(&self) -> usize {
        quantize_stats_slots(self.bits)
    }
    fn finish(&self, v: &[i64]) -> Result<std::result::Result<Quantized, BadElement>> {
        let (bad, s) = raw::decode_quantize(v, self.bits, self.histogram);
        Ok(match bad {
            Some(b) => Err(b),
            None => Ok(Quantized { symbols: None, recon: None, token_sse: None, report: QuantizeReport::finish(&self.grid, s) }),
        })
    }
}

/// A perturbation's slots.
#[derive(Clone, Copy, Debug)]
pub struct PerturbSlots {
    samples: usize,
    nrmse: f64,
}

impl Slots for PerturbSlots {
    type Output = PerturbReport;
    fn count(&self) -> usize {
        perturb_stats_slots(self.samples)
    }
    fn finish(&self, v: &[i64]) -> Result<std::result::Result<PerturbReport, BadElement>> {
        let (bad, report) = raw::decode_perturb(v, self.samples);
        if let Some(b) = bad {
            return Ok(Err(b));
        }
        raw::check_scales(&report, self.nrmse)?;
        Ok(Ok(report))
    }
}

impl<K: Slots> Pending<'_, K> {
    /// Reads the statistics (a sync on CUDA) and gives the synchronous call's result or its typed
    /// error.
    pub fn decode(&self) -> Result<K::Output> {
        self.decode_slots(&host_slots(self.stats, self.offset, self.kind.count())?)
    }

    /// [`decode`](Self::decode) of this call's slots already on the host.
    fn decode_slots(&self, v: &[i64]) -> Result<K::Output> {
        self.kind.finish(v)?.map_err(|b| bad_error(b, self.x, self.jnd))
    }
}

/// A batch enqueued by [`quantize_batch_async`] or [`perturb_batch_async`]: its items' statistics
/// follow each other from the workspace's first slot.
#[must_use = "the statistics (and any error the kernels found) are only seen through decode()"]
pub struct PendingItems<'a, K> {
    items: Vec<Pending<'a, K>>,
}

/// A batch of quantizations ([`quantize_batch_async`]).
pub type PendingBatch<'a> = PendingItems<'a, QuantizeSlots>;
/// A batch of perturbations ([`perturb_batch_async`]).
pub type PendingPerturbBatch<'a> = PendingItems<'a, PerturbSlots>;

impl<K: Slots> PendingItems<'_, K> {
    /// One sync, then each item's result as its own [`Pending::decode`] gives it.
    pub fn decode(&self) -> Vec<Result<K::Output>> {
        let Some(last) = self.items.last() else { return Vec::new() };
        // One copy for the whole batch; each item then decodes its own slice on the host.
        let all = match host_slots(last.stats, 0, last.offset + last.kind.count()) {
            Ok(v) => v,
            Err(e) => return self.items.iter().map(|_| Err(e.clone())).collect(),
        };
        self.items.iter().map(|p| p.decode_slots(&all[p.offset..p.offset + p.kind.count()])).collect()
    }

    /// The enqueued items (each can also be decoded alone).
    pub fn items(&self) -> &[Pending<'_, K>] {
        &self.items
    }
}

/// [`super::quantize_into`] without a sync or an allocation: every output `opts` asks for must be
/// in `bufs`; the statistics (histogram included when asked for) go to `stats`
/// ([`quantize_stats_slots`]). Out of place only.
pub fn quantize_async<'a>(
    x: &'a Tensor,
    layout: Layout,
    patch: usize,
    steps: &Tensor,
    opts: &QuantizeOptions,
    bufs: &QuantizeBuffers,
    stats: &'a Tensor,
) -> Result<PendingQuantize<'a>> {
    check_tensor(x, "x")?;
    check_device(x, "x")?;
    let grid = grid_of(x, layout, patch)?;
    check_steps_tensor(x, steps, &grid)?;
    require_bufs(opts, bufs)?;
    let outs = prepare_outs(x, &[(steps, "steps")], &grid, opts, false, bufs)?;
    let slots = quantize_stats_slots(opts.bits);
    check_stats(stats, slots, x)?;
    stats_disjoint(stats, &[(x, "x"), (steps, "steps")], &outs)?;
    let pending = Pending { stats, offset: 0, x, jnd: None, kind: QuantizeSlots { grid, bits: opts.bits, histogram: opts.histogram } };
    if let Some(o) = cuda_ordinal(x.device()) {
        Cuda::torch(o)?.quantize_enqueue(&quantize_call(x, &grid, steps, opts, false, &outs)?, &stats_buf(stats, slots)?)?;
        return Ok(pending);
    }
    // SAFETY: `stats` was checked for `slots` on the CPU and is disjoint from everything else.
    quantize_call(x, &grid, steps, opts, false, &outs)?.record_host(None, unsafe { cpu_slots(stats, slots) })?;
    Ok(pending)
}

/// [`super::quantize_with_jnd_into`] without a sync or an allocation: the steps go to `steps_out`
/// (`T` f32 on x's device), the token tolerances to the scratch of `stats`
/// ([`quantize_with_jnd_stats_slots`]). `Strategy::Permuted` is refused (its permutation is made
/// on the host).
#[allow(clippy::too_many_arguments)]
pub fn quantize_with_jnd_async<'a>(
    x: &'a Tensor,
    jnd: &'a Tensor,
    layout: Layout,
    patch: usize,
    reduce: Reduce,
    budget: f64,
    strategy: Strategy,
    opts: &QuantizeOptions,
    bufs: &QuantizeBuffers,
    steps_out: &Tensor,
    stats: &'a Tensor,
) -> Result<PendingQuantize<'a>> {
    check_tensor(x, "x")?;
    check_tensor(jnd, "J")?;
    check_device(x, "x")?;
    same_device(x, "x", jnd, "J")?;
    if x.size() != jnd.size() {
        return Err(Error::Shape(format!("x is {:?}, J is {:?}", x.size(), jnd.size())));
    }
    steps::check_budget(budget)?;
    if matches!(strategy, Strategy::Permuted { .. }) {
        return Err(Error::Arg("the permuted strategy needs a permutation made on the host: use quantize_with_jnd".into()));
    }
    let grid = grid_of(x, layout, patch)?;
    require_bufs(opts, bufs)?;
    let outs = prepare_outs(x, &[(jnd, "J")], &grid, opts, false, bufs)?;
    let st = out_tensor(Some(steps_out), "steps", &[grid.tokens() as i64], Kind::Float, x.device())?;
    check_disjoint(&st, "steps", x, "x")?;
    check_disjoint(&st, "steps", jnd, "J")?;
    for (t, n) in [(&outs.symbols, "symbols"), (&outs.recon, "reconstruction"), (&outs.token_sse, "token_sse")] {
        if let Some(t) = t {
            check_disjoint(&st, "steps", t, n)?;
        }
    }
    let slots = quantize_with_jnd_stats_slots(opts.bits, grid.tokens());
    check_stats(stats, slots, x)?;
    stats_disjoint(stats, &[(x, "x"), (jnd, "J"), (&st, "steps")], &outs)?;
    let pending = Pending { stats, offset: 0, x, jnd: Some(jnd), kind: QuantizeSlots { grid, bits: opts.bits, histogram: opts.histogram } };
    let quantize = quantize_args(x, &grid, &st, opts, false, &outs)?;
    let call = ChainArgs { quantize, jnd: buf(jnd, "J")?, reduce, budget, rule: StepRule::Strategy(strategy) }.validate()?;
    if let Some(o) = cuda_ordinal(x.device()) {
        Cuda::torch(o)?.quantize_with_jnd_enqueue(&call, &stats_buf(stats, slots)?)?;
        return Ok(pending);
    }
    // The CPU chain, recorded for decode() as the kernels would record it.
    // SAFETY: `stats` was checked for `slots` on the CPU and is disjoint from everything else.
    call.record_host(None, unsafe { cpu_slots(stats, quantize_stats_slots(opts.bits)) })?;
    Ok(pending)
}

/// [`super::perturb_into`] without a sync or an allocation: the report's scales, the zero samples
/// and a bad x or J go to `stats` ([`perturb_stats_slots`] for the first dimension of `x`).
pub fn perturb_async<'a>(
    x: &'a Tensor,
    jnd: Option<&'a Tensor>,
    nrmse: f64,
    noise: NoiseSpec,
    out: &Tensor,
    stats: &'a Tensor,
) -> Result<PendingPerturb<'a>> {
    check_tensor(x, "x")?;
    let out = out_tensor(Some(out), "output", &x.size(), x.kind(), x.device())?;
    // The core allows `out == x` (in place); the sync-free call does not.
    check_disjoint(&out, "output", x, "x")?;
    let (_, samples) = check_perturb(x, jnd)?;
    let slots = perturb_stats_slots(samples);
    check_stats(stats, slots, x)?;
    // The core's checks, the workspace joining the aliasing rule.
    let call = perturb_call(x, jnd, samples, nrmse, noise, Some(&out), &[buf(stats, "statistics workspace")?])?;
    let pending = Pending { stats, offset: 0, x, jnd, kind: PerturbSlots { samples, nrmse } };
    if let Some(o) = cuda_ordinal(x.device()) {
        Cuda::torch(o)?.perturb_enqueue(&call, &stats_buf(stats, slots)?)?;
        return Ok(pending);
    }
    // SAFETY: `stats` was checked for `slots` on the CPU and is disjoint from everything else.
    call.record_host(None, unsafe { cpu_slots(stats, slots) })?;
    Ok(pending)
}

/// Errors if a written range overlaps any other range (reads may overlap reads): one sort and a
/// sweep, so a batch of many items costs no quadratic number of checks.
fn no_write_overlaps(ranges: &mut [(usize, usize, bool)]) -> Result<()> {
    ranges.sort_unstable();
    let (mut hi_read, mut hi_write) = (0usize, 0usize);
    for &(lo, hi, write) in ranges.iter() {
        if lo < hi_write || (write && lo < hi_read) {
            return Err(Error::Arg(
                "an output of a batch item overlaps another array of the batch: no output may share memory with any input or output".into(),
            ));
        }
        if write {
            hi_write = hi_write.max(hi);
        } else {
            hi_read = hi_read.max(hi);
        }
    }
    Ok(())
}

/// One feature of a batched quantization: its own layout, patch, steps and output buffers.
#[derive(Clone, Copy)]
pub struct QuantizeItem<'a> {
    pub x: &'a Tensor,
    pub layout: Layout,
    pub patch: usize,
    pub steps: &'a Tensor,
    pub bufs: QuantizeBuffers<'a>,
}

/// Quantizes independent features of one dtype and device, each with its own steps and outputs,
/// in one call: on CUDA one kernel launch for up to 32 items (the descriptor table travels in the
/// kernel's parameters), on the CPU a loop. Item `i`'s statistics are slots `i·s .. (i+1)·s` of
/// `stats` ([`quantize_batch_stats_slots`]); its results equal those of [`quantize_async`] on it
/// alone, bit for bit.
pub fn quantize_batch_async<'a>(items: &[QuantizeItem<'a>], opts: &QuantizeOptions, stats: &'a Tensor) -> Result<PendingBatch<'a>> {
    let Some(first) = items.first() else { return Ok(PendingBatch { items: Vec::new() }) };
    let dt = check_tensor(first.x, "x")?;
    check_device(first.x, "x")?;
    let per = quantize_stats_slots(opts.bits);
    check_stats(stats, per * items.len(), first.x)?;
    require_bufs(opts, &first.bufs)?;
    let mut prepared = Vec::with_capacity(items.len());
    // Every array of the batch as a byte range, with whether the call writes it.
    let mut ranges: Vec<(usize, usize, bool)> = Vec::with_capacity(5 * items.len());
    for (i, it) in items.iter().enumerate() {
        let di = check_tensor(it.x, "x")?;
        if di != dt {
            return Err(Error::Dtype(format!("batch item {i} is {}, item 0 {}: a batch has one dtype", di.name(), dt.name())));
        }
        same_device(first.x, "item 0", it.x, "another item")?;
        let grid = grid_of(it.x, it.layout, it.patch)?;
        check_steps_tensor(it.x, it.steps, &grid)?;
        require_bufs(opts, &it.bufs)?;
        let outs = prepare_outs(it.x, &[(it.steps, "steps")], &grid, opts, false, &it.bufs)?;
        stats_disjoint(stats, &[(it.x, "x"), (it.steps, "steps")], &outs)?;
        ranges.extend([(it.x, false), (it.steps, false)].map(|(t, w)| (byte_range(t), w)).map(|((lo, hi), w)| (lo, hi, w)));
        let written = [&outs.symbols, &outs.recon, &outs.token_sse];
        ranges.extend(written.into_iter().flatten().map(byte_range).map(|(lo, hi)| (lo, hi, true)));
        prepared.push((grid, outs));
    }
    no_write_overlaps(&mut ranges)?;
    let pending = items
        .iter()
        .zip(&prepared)
        .enumerate()
        .map(|(i, (it, (grid, _)))| Pending {
            stats,
            offset: i * per,
            x: it.x,
            jnd: None,
            kind: QuantizeSlots { grid: *grid, bits: opts.bits, histogram: opts.histogram },
        })
        .collect();
    if let Some(o) = cuda_ordinal(first.x.device()) {
        let calls = items
            .iter()
            .zip(&prepared)
            .map(|(it, (g, outs))| quantize_call(it.x, g, it.steps, opts, false, outs))
            .collect::<Result<Vec<_>>>()?;
        Cuda::torch(o)?.quantize_batch_enqueue(&calls.iter().collect::<Vec<_>>(), &stats_buf(stats, per * items.len())?, per)?;
        return Ok(PendingBatch { items: pending });
    }
    // SAFETY: `stats` was checked for all items' slots on the CPU and is disjoint from every array.
    let all = unsafe { cpu_slots(stats, per * items.len()) };
    for ((it, (grid, outs)), s) in items.iter().zip(prepared).zip(all.chunks_mut(per)) {
        quantize_call(it.x, &grid, it.steps, opts, false, &outs)?.record_host(None, s)?;
    }
    Ok(PendingBatch { items: pending })
}

/// One feature of a batched perturbation: its own J (or none), strength, noise and output.
#[derive(Clone, Copy)]
pub struct PerturbItem<'a> {
    pub x: &'a Tensor,
    pub jnd: Option<&'a Tensor>,
    pub nrmse: f64,
    pub noise: NoiseSpec,
    pub out: &'a Tensor,
}

/// The samples of a batch item (its first dimension; 1 for a tensor without one, which the call
/// then refuses).
fn item_samples(it: &PerturbItem) -> usize {
    it.x.size().first().map_or(1, |&n| n.max(1) as usize)
}

/// Workspace slots of [`perturb_batch_async`]: each item's [`perturb_stats_slots`], in item order.
pub fn perturb_batch_stats_slots(items: &[PerturbItem]) -> usize {
    items.iter().map(|it| perturb_stats_slots(item_samples(it))).sum()
}

/// Perturbs independent features of one dtype and device, each with its own J, NRMSE, noise and
/// output, in one call: on CUDA two launches (norms, apply) for up to 32 items, on the CPU a loop.
/// Item `i`'s statistics follow item `i − 1`'s in `stats` ([`perturb_batch_stats_slots`]); its
/// results equal those of [`perturb_async`] on it alone.
pub fn perturb_batch_async<'a>(items: &[PerturbItem<'a>], stats: &'a Tensor) -> Result<PendingPerturbBatch<'a>> {
    let Some(first) = items.first() else { return Ok(PendingPerturbBatch { items: Vec::new() }) };
    let dt = check_tensor(first.x, "x")?;
    check_device(first.x, "x")?;
    let total = perturb_batch_stats_slots(items);
    check_stats(stats, total, first.x)?;
    let mut ranges: Vec<(usize, usize, bool)> = Vec::with_capacity(3 * items.len());
    let mut pending = Vec::with_capacity(items.len());
    let mut offset = 0;
    for (i, it) in items.iter().enumerate() {
        let di = check_tensor(it.x, "x")?;
        if di != dt {
            return Err(Error::Dtype(format!("batch item {i} is {}, item 0 {}: a batch has one dtype", di.name(), dt.name())));
        }
        same_device(first.x, "item 0", it.x, "another item")?;
        let _ = out_tensor(Some(it.out), "output", &it.x.size(), it.x.kind(), it.x.device())?;
        let (_, samples) = check_perturb(it.x, it.jnd)?;
        if !(it.nrmse.is_finite() && it.nrmse >= 0.0) {
            return Err(Error::Nrmse(it.nrmse));
        }
        let mut arrays = vec![(it.x, false), (it.out, true)];
        arrays.extend(it.jnd.map(|j| (j, false)));
        for &(t, w) in &arrays {
            check_disjoint(stats, "statistics workspace", t, "an array of the batch")?;
            let (lo, hi) = byte_range(t);
            ranges.push((lo, hi, w));
        }
        pending.push(Pending { stats, offset, x: it.x, jnd: it.jnd, kind: PerturbSlots { samples, nrmse: it.nrmse } });
        offset += perturb_stats_slots(samples);
    }
    no_write_overlaps(&mut ranges)?;
    if let Some(o) = cuda_ordinal(first.x.device()) {
        let calls = items
            .iter()
            .zip(&pending)
            .map(|(it, p)| Ok((perturb_call(it.x, it.jnd, p.kind.samples, it.nrmse, it.noise, Some(it.out), &[])?, p.offset)))
            .collect::<Result<Vec<_>>>()?;
        Cuda::torch(o)?.perturb_batch_enqueue(&calls.iter().map(|(c, off)| (c, *off)).collect::<Vec<_>>(), &stats_buf(stats, total)?)?;
        return Ok(PendingItems { items: pending });
    }
    // SAFETY: `stats` was checked for all items' slots on the CPU and is disjoint from every array.
    let all = unsafe { cpu_slots(stats, total) };
    for (it, p) in items.iter().zip(&pending) {
        let s = &mut all[p.offset..p.offset + p.kind.count()];
        perturb_call(it.x, it.jnd, p.kind.samples, it.nrmse, it.noise, Some(it.out), &[])?.record_host(None, s)?;
    }
    Ok(PendingItems { items: pending })
}

#[cfg(test)]
mod tests {
    use super::no_write_overlaps;

    #[test]
    fn the_overlap_sweep_allows_shared_reads_only() {
        let ok = |mut v: Vec<(usize, usize, bool)>| no_write_overlaps(&mut v).is_ok();
        assert!(ok(vec![(0, 10, false), (5, 15, false), (15, 20, true), (20, 30, true)]));
        assert!(!ok(vec![(0, 100, false), (40, 50, true)])); // a write inside a read
        assert!(!ok(vec![(40, 50, false), (0, 100, true)])); // a read inside a write
        assert!(!ok(vec![(0, 10, true), (0, 10, true)])); // one buffer written twice
        assert!(!ok(vec![(0, 100, true), (200, 300, false), (90, 95, false)]));
        assert!(ok(vec![]));
    }
}
