//! The public tensor API: every op of `docs/contract.md` on `tch::Tensor`s (CPU or CUDA; f32, f16, bf16;
//! contiguous; zero-copy), dispatching on the tensor's device. CPU tensors run [`crate::cpu`];
//! CUDA tensors run the NVRTC kernels on torch's current stream.

mod pending;

use tch::{Device, Kind, Tensor};

use crate::call::{
    no_overlap, AllocateArgs, Buf, CappedArgs, CappedMeasuredArgs, CapsArgs, ChainArgs, Cuda, Elem, Executor, MeasuredArgs, Mem, NoiseArgs,
    PerturbArgs, PerturbCall, QuantizeArgs, QuantizeCall, QuantizeReport, StepRule, TokenStat, TokenStatsArgs,
};
use crate::cpu::{perturb::NoiseSpec, PerturbReport};
use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::geom::{Bits, FeatureShape, Layout, Reduce, Strategy, TokenGrid};
use crate::steps::{self, Measured};

pub use crate::cpu::perturb::NoiseSpec as Noise;
pub use pending::{
    perturb_async, perturb_batch_async, perturb_batch_stats_slots, perturb_stats_slots, quantize_async, quantize_batch_async,
    quantize_batch_stats_slots, quantize_stats_slots, quantize_with_jnd_async, quantize_with_jnd_stats_slots, stats_buffer, Pending,
    PendingBatch, PendingItems, PendingPerturb, PendingPerturbBatch, PendingQuantize, PerturbItem, PerturbSlots, QuantizeItem,
    QuantizeSlots, Slots,
};

/// Checks a tensor is usable as feature data (defined, f32/f16/bf16, contiguous, non-empty) and
/// returns its dtype.
pub fn check_tensor(t: &Tensor, name: &'static str) -> Result<Dtype> {
    if !t.defined() {
        return Err(Error::Arg(format!("{name} is an undefined tensor")));
    }
    let d = Dtype::from_kind(t.kind())?;
    if !t.is_contiguous() {
        return Err(Error::NonContiguous(name));
    }
    if t.numel() == 0 {
        return Err(Error::Empty(name));
    }
    Ok(d)
}

pub(crate) fn same_device(a: &Tensor, an: &str, b: &Tensor, bn: &str) -> Result<()> {
    if a.device() != b.device() {
        return Err(Error::MixedDevices(format!("{an} is on {:?}, {bn} on {:?}", a.device(), b.device())));
    }
    Ok(())
}

/// The token grid of a feature tensor.
pub fn grid_of(x: &Tensor, layout: Layout, patch: usize) -> Result<TokenGrid> {
    TokenGrid::new(FeatureShape::from_sizes(layout, &x.size())?, patch)
}

/// A CPU tensor's data as a mutable slice (zero-copy). `tch` tensors are shared handles, so the
/// borrow checker cannot see exclusivity: the caller states it.
///
/// # Safety
/// `t` is a defined, contiguous CPU tensor whose elements are `E`, and no other reference to the storage (shared or mutable, through any tensor
/// handle) is used while this slice lives: the ops call it only on outputs they allocated or on
/// caller buffers checked by [`check_disjoint`].
#[allow(clippy::mut_from_ref)]
pub(crate) unsafe fn slice_mut<E>(t: &Tensor) -> &mut [E] {
    // SAFETY: the caller guarantees a contiguous CPU buffer of `numel` elements of type `E`,
    // exclusively accessed through this slice while it lives.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut E, t.numel()) }
}

/// The byte range a contiguous tensor's elements occupy.
fn byte_range(t: &Tensor) -> (usize, usize) {
    let lo = t.data_ptr() as usize;
    (lo, lo + t.numel() * t.kind().elt_size_in_bytes())
}

/// Errors unless the caller-given output `out` shares no memory with `other` (an input or
/// another output): the `_into` calls write outputs while they read inputs, so any overlap would
/// be a data race on the CPU and an order-dependent result on the GPU. In-place work has its own
/// calls (`quantize_`, `perturb_`).
pub(crate) fn check_disjoint(out: &Tensor, out_name: &str, other: &Tensor, other_name: &str) -> Result<()> {
    if out.device() != other.device() || out.numel() == 0 || other.numel() == 0 {
        return Ok(());
    }
    let ((a0, a1), (b0, b1)) = (byte_range(out), byte_range(other));
    if a0 < b1 && b0 < a1 {
        return Err(Error::Arg(format!(
            "{out_name} overlaps {other_name} in memory: outputs of an _into call must not alias its inputs or each other (use the in-place call for in-place work)"
        )));
    }
    Ok(())
}

fn cuda_ordinal(d: Device) -> Option<usize> {
    match d {
        Device::Cuda(i) => Some(i),
        _ => None,
    }
}

fn check_device(t: &Tensor, name: &str) -> Result<()> {
    match t.device() {
        Device::Cpu | Device::Cuda(_) => Ok(()),
        other => Err(Error::Arg(format!("{name} is on {other:?}: featjnd runs on CPU or CUDA"))),
    }
}

/// Token tolerance `j_t` (contract §2) of a tolerance map `J`: an f32 tensor of `T` values on `J`'s device.
pub fn token_tolerance(jnd: &Tensor, layout: Layout, patch: usize, reduce: Reduce) -> Result<Tensor> {
    let _range = crate::nvtx::range("featjnd::token_tolerance");
    token_stat(jnd, "J", layout, patch, TokenStat::Tolerance(reduce))
}

/// One per-token statistic of `t` into a fresh f32 tensor of `T` values on `t`'s device.
fn token_stat(t: &Tensor, name: &'static str, layout: Layout, patch: usize, stat: TokenStat) -> Result<Tensor> {
    check_tensor(t, name)?;
    check_device(t, name)?;
    let grid = grid_of(t, layout, patch)?;
    let out = Tensor::f_empty([grid.tokens() as i64], (Kind::Float, t.device()))?;
    let call = TokenStatsArgs { input: buf(t, name)?, shape: grid.shape, patch, stat, out: buf(&out, "out")? }.validate()?;
    on_device(t.device(), |ex| ex.run(&call))?;
    Ok(out)
}

/// Runs `f` on the executor of a tensor device: the host, or torch's stream on a CUDA device.
fn on_device<T>(d: Device, f: impl FnOnce(&Executor) -> Result<T>) -> Result<T> {
    match cuda_ordinal(d) {
        Some(o) => f(&Executor::Cuda(&Cuda::torch(o)?)),
        None => f(&Executor::Host(None)),
    }
}

/// Token RMS `r_t = sqrt(Σx²/K)` of a feature (contract §3.5), an f32 tensor of `T` values on
/// `x`'s device. Errors on the first non-finite `x` ([`Error::NonFinite`]). On CUDA it is the
/// token-stats kernel in its "finite" mode (one sync, for the check).
pub fn token_rms(x: &Tensor, layout: Layout, patch: usize) -> Result<Tensor> {
    let _range = crate::nvtx::range("featjnd::token_rms");
    token_stat(x, "x", layout, patch, TokenStat::Rms)
}

/// A 1-D f32 tensor of token values (token tolerances, RMS, caps) on CPU or CUDA.
fn check_token_values(t: &Tensor, what: &str) -> Result<()> {
    if !t.defined() || t.kind() != Kind::Float || t.dim() != 1 {
        return Err(Error::Arg(format!("{what} must be a 1-D f32 tensor")));
    }
    check_device(t, what)
}

/// Caps `c_t = κ·max(r_t, 2^-24·max_t r_t)` (contract §3.5, `steps::caps_from_rms`) from a 1-D
/// f32 tensor of token RMS values, on its device. A feature that is zero in every token is
/// [`Error::Arg`]; on CUDA that is found on the device (one sync).
pub fn caps_from_rms(rms: &Tensor, kappa: f32) -> Result<Tensor> {
    check_token_values(rms, "token RMS")?;
    let rms = rms.f_contiguous()?;
    let out = Tensor::f_empty([rms.numel() as i64], (Kind::Float, rms.device()))?;
    let call = CapsArgs { rms: buf(&rms, "token RMS")?, kappa, out: buf(&out, "caps")? }.validate()?;
    on_device(rms.device(), |ex| ex.run(&call))?;
    Ok(out)
}

/// Checks a capped allocation's inputs in the CPU's order (budget, `j_t`, caps) as far as that
/// needs no values: both on one device, `T > 0`, as many caps as tolerances.
/// The core's capped arguments for tensors of token tolerances and caps, with a fresh output.
fn capped_args(jt: &Tensor, caps: &Tensor, budget: f64, beta: f64) -> Result<(CappedArgs, Tensor, [Tensor; 2])> {
    check_token_values(jt, "token tolerances")?;
    check_token_values(caps, "caps")?;
    same_device(jt, "token tolerances", caps, "caps")?;
    let (jt, caps) = (jt.f_contiguous()?, caps.f_contiguous()?);
    let out = Tensor::f_empty([jt.numel() as i64], (Kind::Float, jt.device()))?;
    let args = CappedArgs { token_tol: buf(&jt, "token tolerances")?, caps: buf(&caps, "caps")?, budget, beta, out: buf(&out, "steps")? };
    // The contiguous copies (or the tensors themselves) must outlive the call: returned.
    Ok((args, out, [jt, caps]))
}

/// Capped steps `Δ_t = min(f32(a·β)·j_t, f32(b·β)·c_t)` (contract §3.5) from token tolerances and
/// caps (1-D f32 tensors of `T` values on one device), on that device. On CUDA: the one-block
/// solver and the steps kernel, then one sync to report a bad `j_t` or cap as the CPU does.
pub fn allocate_steps_capped(jt: &Tensor, caps: &Tensor, budget: f64, beta: f64) -> Result<Tensor> {
    let _range = crate::nvtx::range("featjnd::allocate_steps_capped");
    let (args, out, _inputs) = capped_args(jt, caps, budget, beta)?;
    let call = args.validate()?;
    on_device(jt.device(), |ex| ex.run(&call))?;
    Ok(out)
}

/// [`allocate_steps_capped`] with the measured budget (contract §3.4): a common `β` by bisection.
/// On CUDA the scales are solved once on the device; each `β` is then one steps launch and one
/// quantization (its device total error: one sync per evaluation).
pub fn allocate_steps_capped_measured(
    x: &Tensor,
    layout: Layout,
    patch: usize,
    jt: &Tensor,
    caps: &Tensor,
    budget: f64,
    bits: Bits,
) -> Result<(Tensor, Measured)> {
    let _range = crate::nvtx::range("featjnd::allocate_steps_capped_measured");
    let (xb, shape) = measured_x(x, jt, layout, patch)?;
    let (capped, out, _inputs) = capped_args(jt, caps, budget, 1.0)?;
    let call = CappedMeasuredArgs { capped, x: xb, shape, patch, bits }.validate()?;
    Ok((out, on_device(x.device(), |ex| ex.run(&call))?))
}

/// The capped chain on one device (contract §3.5): `J → j_t`, `x → r_t → c_t = κ·max(r_t, …)`,
/// the capped steps for budget `D`, then the quantization of `x` with them. On CUDA it is fused
/// like [`quantize_with_jnd`]: nothing returns to the host until the final statistics (one
/// sync). Errors in the CPU's order: sizes, `κ`, `D`; then a bad `J`, a non-finite `x`, a zero
/// feature, a bad `j_t` (e.g. an `Rms` reduction underflowing to 0) or cap. Returns the steps.
#[allow(clippy::too_many_arguments)]
pub fn quantize_capped(
    x: &Tensor,
    jnd: &Tensor,
    layout: Layout,
    patch: usize,
    reduce: Reduce,
    kappa: f32,
    budget: f64,
    opts: &QuantizeOptions,
) -> Result<(Tensor, Quantized)> {
    let _range = crate::nvtx::range("featjnd::quantize_capped");
    run_chain(x, jnd, layout, patch, reduce, budget, StepRule::Capped { kappa }, opts, &QuantizeBuffers::default())
}

/// A fused chain on tensors: the tensor API's checks (x, J: same device and sizes), the outputs
/// made or checked, the steps allocated, then the core's call on x's device.
#[allow(clippy::too_many_arguments)]
fn run_chain(
    x: &Tensor,
    jnd: &Tensor,
    layout: Layout,
    patch: usize,
    reduce: Reduce,
    budget: f64,
    rule: StepRule,
    opts: &QuantizeOptions,
    bufs: &QuantizeBuffers,
) -> Result<(Tensor, Quantized)> {
    check_tensor(x, "x")?;
    check_tensor(jnd, "J")?;
    check_device(x, "x")?;
    same_device(x, "x", jnd, "J")?;
    if x.size() != jnd.size() {
        return Err(Error::Shape(format!("x is {:?}, J is {:?}", x.size(), jnd.size())));
    }
    if let StepRule::Capped { kappa } = rule {
        crate::cuda::raw::check_kappa(kappa)?;
    }
    steps::check_budget(budget)?;
    let grid = grid_of(x, layout, patch)?;
    let outs = prepare_outs(x, &[(jnd, "J")], &grid, opts, false, bufs)?;
    let st = Tensor::f_empty([grid.tokens() as i64], (Kind::Float, x.device()))?;
    let quantize = quantize_args(x, &grid, &st, opts, false, &outs)?;
    let call = ChainArgs { quantize, jnd: buf(jnd, "J")?, reduce, budget, rule }.validate()?;
    let r = on_device(x.device(), |ex| ex.run(&call))?;
    Ok((st, Quantized::new(outs, r)))
}

/// Nominal steps `Δ_t` for budget `D` from token tolerances (contract §3), on `jt`'s device.
/// On CUDA the Jnd normaliser `Σ j²` is reduced on the device (no host round-trip).
pub fn allocate_steps(jt: &Tensor, budget: f64, strategy: Strategy) -> Result<Tensor> {
    allocate_steps_scaled(jt, budget, strategy, 1.0)
}

/// Steps with every step scaled by a common factor `beta`.
pub fn allocate_steps_scaled(jt: &Tensor, budget: f64, strategy: Strategy, beta: f64) -> Result<Tensor> {
    let _range = crate::nvtx::range("featjnd::allocate_steps");
    let (alloc, out) = allocate_args(jt, budget, strategy, beta)?;
    let call = alloc.validate()?;
    on_device(jt.device(), |ex| ex.run(&call))?;
    Ok(out)
}

/// The core's allocation arguments for a tensor of token tolerances, with a fresh output.
fn allocate_args(jt: &Tensor, budget: f64, strategy: Strategy, beta: f64) -> Result<(AllocateArgs, Tensor)> {
    if !jt.defined() || jt.kind() != Kind::Float || jt.dim() != 1 || !jt.is_contiguous() {
        return Err(Error::Arg("token tolerances must be a contiguous 1-D f32 tensor".into()));
    }
    let out = Tensor::f_empty([jt.numel() as i64], (Kind::Float, jt.device()))?;
    let args = AllocateArgs { token_tol: buf(jt, "token tolerances")?, budget, strategy, beta, out: buf(&out, "steps")? };
    Ok((args, out))
}

/// What [`quantize`] should produce.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantizeOptions {
    pub bits: Bits,
    pub symbols: bool,
    pub recon: bool,
    pub token_sse: bool,
    pub histogram: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions { bits: Bits::B8, symbols: true, recon: true, token_sse: true, histogram: true }
    }
}

/// Outputs of a quantization: the output tensors (on the input's device) and the report every
/// surface shares ([`QuantizeReport`]: clamp count, total error, MSE, histogram, rate), whose
/// fields read through as `q.mse`, `q.clamped`, … .
#[derive(Debug)]
pub struct Quantized {
    /// `i8` (b = 8) or `i16` (b = 16), shape of `x`.
    pub symbols: Option<Tensor>,
    /// Reconstruction in `x`'s dtype (absent for the in-place call: `x` is it).
    pub recon: Option<Tensor>,
    /// Per-token squared error `e_t` (f32, `T` values).
    pub token_sse: Option<Tensor>,
    pub report: QuantizeReport,
}

impl Quantized {
    fn new(outs: Outs, report: QuantizeReport) -> Quantized {
        let Outs { symbols, recon, token_sse } = outs;
        Quantized { symbols, recon, token_sse, report }
    }
}

impl std::ops::Deref for Quantized {
    type Target = QuantizeReport;
    fn deref(&self) -> &QuantizeReport {
        &self.report
    }
}

fn check_steps_tensor(x: &Tensor, steps: &Tensor, grid: &TokenGrid) -> Result<()> {
    same_device(x, "x", steps, "steps")?;
    if steps.kind() != Kind::Float || steps.numel() != grid.tokens() || !steps.is_contiguous() {
        return Err(Error::Shape(format!("steps must be a contiguous f32 tensor of {} values (one per token)", grid.tokens())));
    }
    Ok(())
}

/// Caller-owned output tensors, for loops that reuse buffers: a fresh large CPU allocation costs
/// page faults that can take longer than the op itself. Each must match what the op would make
/// (device of `x`; symbols `i8`/`i16` and reconstruction shaped like `x`; `T` f32 token errors).
#[derive(Default, Clone, Copy)]
pub struct QuantizeBuffers<'a> {
    pub symbols: Option<&'a Tensor>,
    pub recon: Option<&'a Tensor>,
    pub token_sse: Option<&'a Tensor>,
}

/// The output tensors of one quantization (given or freshly allocated).
pub(crate) struct Outs {
    pub symbols: Option<Tensor>,
    pub recon: Option<Tensor>,
    pub token_sse: Option<Tensor>,
}

fn out_tensor(given: Option<&Tensor>, name: &str, sizes: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
    match given {
        None => Ok(Tensor::f_empty(sizes, (kind, device))?),
        Some(t) => {
            if t.device() != device {
                return Err(Error::MixedDevices(format!("{name} buffer is on {:?}, x on {device:?}", t.device())));
            }
            if t.kind() != kind || t.size() != sizes || !t.is_contiguous() {
                return Err(Error::Shape(format!(
                    "{name} buffer must be a contiguous {kind:?} tensor of {sizes:?}, got {:?} {:?}",
                    t.kind(),
                    t.size()
                )));
            }
            Ok(t.shallow_clone())
        }
    }
}

/// The outputs of one quantization of `x`: caller buffers checked for shape, kind and device
/// (the core's `validate` checks their aliasing), the rest allocated.
fn prepare_outs(
    x: &Tensor,
    inputs: &[(&Tensor, &'static str)],
    grid: &TokenGrid,
    opts: &QuantizeOptions,
    in_place: bool,
    bufs: &QuantizeBuffers,
) -> Result<Outs> {
    let (sizes, d) = (x.size(), x.device());
    let sym_kind = if opts.bits == Bits::B8 { Kind::Int8 } else { Kind::Int16 };
    let outs = Outs {
        symbols: if opts.symbols { Some(out_tensor(bufs.symbols, "symbols", &sizes, sym_kind, d)?) } else { None },
        recon: if opts.recon && !in_place { Some(out_tensor(bufs.recon, "reconstruction", &sizes, x.kind(), d)?) } else { None },
        token_sse: if opts.token_sse {
            Some(out_tensor(bufs.token_sse, "token_sse", &[grid.tokens() as i64], Kind::Float, d)?)
        } else {
            None
        },
    };
    // Caller buffers must not alias the inputs or each other (fresh ones cannot): the core's rule.
    let ins = std::iter::once(buf(x, "x")).chain(inputs.iter().map(|&(t, n)| buf(t, n))).collect::<Result<Vec<_>>>()?;
    let named = [(&outs.symbols, "symbols"), (&outs.recon, "reconstruction"), (&outs.token_sse, "token_sse")];
    let given = named.iter().filter_map(|&(t, n)| t.as_ref().map(|t| buf(t, n))).collect::<Result<Vec<_>>>()?;
    no_overlap(&ins, &given, None)?;
    Ok(outs)
}

/// Fused quantize / dequantize of `x` with per-token steps (contract §4), out of place.
pub fn quantize(x: &Tensor, layout: Layout, patch: usize, steps: &Tensor, opts: &QuantizeOptions) -> Result<Quantized> {
    quantize_impl(x, layout, patch, steps, opts, false, &QuantizeBuffers::default())
}

/// [`quantize`] into caller-owned buffers (those left `None` are allocated).
pub fn quantize_into(
    x: &Tensor,
    layout: Layout,
    patch: usize,
    steps: &Tensor,
    opts: &QuantizeOptions,
    bufs: &QuantizeBuffers,
) -> Result<Quantized> {
    quantize_impl(x, layout, patch, steps, opts, false, bufs)
}

/// In place: `x` becomes its reconstruction. If `x` holds a non-finite value the call returns
/// [`Error::NonFinite`] and `x`'s contents are unspecified (the check runs in the same pass).
pub fn quantize_(x: &mut Tensor, layout: Layout, patch: usize, steps: &Tensor, opts: &QuantizeOptions) -> Result<Quantized> {
    quantize_impl(x, layout, patch, steps, opts, true, &QuantizeBuffers::default())
}

fn quantize_impl(
    x: &Tensor,
    layout: Layout,
    patch: usize,
    steps: &Tensor,
    opts: &QuantizeOptions,
    in_place: bool,
    bufs: &QuantizeBuffers,
) -> Result<Quantized> {
    let _range = crate::nvtx::range("featjnd::quantize");
    check_tensor(x, "x")?;
    check_device(x, "x")?;
    let grid = grid_of(x, layout, patch)?;
    check_steps_tensor(x, steps, &grid)?;
    let outs = prepare_outs(x, &[(steps, "steps")], &grid, opts, in_place, bufs)?;
    on_device(x.device(), |ex| run_quantize(ex, x, &grid, steps, opts, in_place, outs))
}

/// A tensor as the core's array view (`crate::call`): conversion only, the call's `validate`
/// checks sizes, types, memory and aliasing.
pub(crate) fn buf(t: &Tensor, name: &'static str) -> Result<Buf> {
    if !t.defined() {
        return Err(Error::Arg(format!("{name} is an undefined tensor")));
    }
    if !t.is_contiguous() {
        return Err(Error::NonContiguous(name));
    }
    let elem = match t.kind() {
        Kind::Float => Elem::F32,
        Kind::Half => Elem::F16,
        Kind::BFloat16 => Elem::Bf16,
        Kind::Int8 => Elem::I8,
        Kind::Int16 => Elem::I16,
        Kind::Int64 => Elem::I64,
        k => return Err(Error::Dtype(format!("{name} is {k:?}"))),
    };
    let mem = match t.device() {
        Device::Cpu => Mem::Host,
        Device::Cuda(o) => Mem::Cuda(o),
        other => return Err(Error::Arg(format!("{name} is on {other:?}: featjnd runs on CPU or CUDA"))),
    };
    // SAFETY: a defined contiguous tensor's storage holds `numel` elements of its kind at
    // `data_ptr` on its device, alive while the caller's handle lives (the whole call). The
    // tensor API cannot see other handles to the same storage: as for every op here, callers
    // must not use them while the op runs (outputs are fresh or caller buffers for this call).
    Ok(unsafe { Buf::new(name, t.data_ptr() as usize, t.numel(), elem, mem, true) })
}

/// The core's quantization call for tensors already checked and outputs already made.
pub(crate) fn quantize_call(
    x: &Tensor,
    grid: &TokenGrid,
    steps: &Tensor,
    opts: &QuantizeOptions,
    in_place: bool,
    outs: &Outs,
) -> Result<QuantizeCall> {
    quantize_args(x, grid, steps, opts, in_place, outs)?.validate()
}

/// The core's quantization arguments for tensors already checked and outputs already made.
fn quantize_args(
    x: &Tensor,
    grid: &TokenGrid,
    steps: &Tensor,
    opts: &QuantizeOptions,
    in_place: bool,
    outs: &Outs,
) -> Result<QuantizeArgs> {
    let xb = buf(x, "x")?;
    let out = |t: &Option<Tensor>, name| t.as_ref().map(|t| buf(t, name)).transpose();
    Ok(QuantizeArgs {
        x: xb,
        shape: grid.shape,
        patch: grid.patch,
        steps: buf(steps, "steps")?,
        bits: opts.bits,
        symbols: out(&outs.symbols, "symbols")?,
        recon: if in_place { Some(xb) } else { out(&outs.recon, "reconstruction")? },
        token_sse: out(&outs.token_sse, "token_sse")?,
        histogram: opts.histogram,
        histogram_out: None,
    })
}

fn run_quantize(
    ex: &Executor,
    x: &Tensor,
    grid: &TokenGrid,
    steps: &Tensor,
    opts: &QuantizeOptions,
    in_place: bool,
    outs: Outs,
) -> Result<Quantized> {
    let r = ex.run(&quantize_call(x, grid, steps, opts, in_place, &outs)?)?;
    Ok(Quantized::new(outs, r))
}

/// Steps whose **measured** quantize–dequantize MSE equals `D` within 1e-3 relative (contract §3):
/// the nominal steps times a common `β` found by bisection. Returns the steps and the match.
pub fn allocate_steps_measured(
    x: &Tensor,
    layout: Layout,
    patch: usize,
    jt: &Tensor,
    budget: f64,
    strategy: Strategy,
    bits: Bits,
) -> Result<(Tensor, Measured)> {
    let _range = crate::nvtx::range("featjnd::allocate_steps_measured");
    let (xb, shape) = measured_x(x, jt, layout, patch)?;
    let (alloc, out) = allocate_args(jt, budget, strategy, 1.0)?;
    let call = MeasuredArgs { alloc, x: xb, shape, patch, bits }.validate()?;
    Ok((out, on_device(x.device(), |ex| ex.run(&call))?))
}

/// The feature of a measured budget: checked, on the token tolerances' device, as the core's view
/// with its shape.
fn measured_x(x: &Tensor, jt: &Tensor, layout: Layout, patch: usize) -> Result<(Buf, FeatureShape)> {
    check_tensor(x, "x")?;
    same_device(x, "x", jt, "token tolerances")?;
    Ok((buf(x, "x")?, grid_of(x, layout, patch)?.shape))
}

/// The whole JND-guided chain on one device: `J → j_t → Δ_t → quantize`, fused so that on CUDA
/// nothing returns to the host until the final statistics (one sync at the end).
#[allow(clippy::too_many_arguments)]
pub fn quantize_with_jnd(
    x: &Tensor,
    jnd: &Tensor,
    layout: Layout,
    patch: usize,
    reduce: Reduce,
    budget: f64,
    strategy: Strategy,
    opts: &QuantizeOptions,
) -> Result<(Tensor, Quantized)> {
    quantize_with_jnd_into(x, jnd, layout, patch, reduce, budget, strategy, opts, &QuantizeBuffers::default())
}

/// [`quantize_with_jnd`] into caller-owned buffers.
#[allow(clippy::too_many_arguments)]
pub fn quantize_with_jnd_into(
    x: &Tensor,
    jnd: &Tensor,
    layout: Layout,
    patch: usize,
    reduce: Reduce,
    budget: f64,
    strategy: Strategy,
    opts: &QuantizeOptions,
    bufs: &QuantizeBuffers,
) -> Result<(Tensor, Quantized)> {
    let _range = crate::nvtx::range("featjnd::quantize_with_jnd");
    run_chain(x, jnd, layout, patch, reduce, budget, StepRule::Strategy(strategy), opts, bufs)
}

/// Perturbation at a matched per-sample NRMSE (contract §6): `x + s_n · J ⊙ ξ`, `J = None` for `J ≡ 1`.
/// The sample axis is the first dimension.
pub fn perturb(x: &Tensor, jnd: Option<&Tensor>, nrmse: f64, noise: NoiseSpec) -> Result<(Tensor, PerturbReport)> {
    check_tensor(x, "x")?;
    let out = x.f_empty_like()?;
    let r = perturb_impl(x, jnd, nrmse, noise, Some(&out))?;
    Ok((out, r))
}

/// [`perturb`] into a caller-owned output (same shape, dtype and device as `x`).
pub fn perturb_into(x: &Tensor, jnd: Option<&Tensor>, nrmse: f64, noise: NoiseSpec, out: &Tensor) -> Result<PerturbReport> {
    check_tensor(x, "x")?;
    let _ = out_tensor(Some(out), "output", &x.size(), x.kind(), x.device())?;
    // The core allows `out == x` (in place); the tensor API has its own call for that.
    check_disjoint(out, "output", x, "x")?;
    perturb_impl(x, jnd, nrmse, noise, Some(out))
}

/// In-place perturbation (validation runs in pass 1, before anything is written).
pub fn perturb_(x: &mut Tensor, jnd: Option<&Tensor>, nrmse: f64, noise: NoiseSpec) -> Result<PerturbReport> {
    perturb_impl(x, jnd, nrmse, noise, None)
}

/// The tensor checks every perturbation runs before it touches data: `x` and `J` (same sizes,
/// dtype and device) and a sample dimension (the core's `validate` checks the rest, aliasing
/// included). Returns the dtype and samples.
fn check_perturb(x: &Tensor, jnd: Option<&Tensor>) -> Result<(Dtype, usize)> {
    let dt = check_tensor(x, "x")?;
    check_device(x, "x")?;
    if x.dim() < 1 {
        return Err(Error::Shape("x needs a sample dimension".into()));
    }
    if let Some(j) = jnd {
        let dj = check_tensor(j, "J")?;
        same_device(x, "x", j, "J")?;
        if j.size() != x.size() {
            return Err(Error::Shape(format!("x is {:?}, J is {:?}", x.size(), j.size())));
        }
        if dj != dt {
            return Err(Error::Dtype(format!("x is {}, J is {}: they must match", dt.name(), dj.name())));
        }
    }
    Ok((dt, x.size()[0] as usize))
}

fn perturb_impl(x: &Tensor, jnd: Option<&Tensor>, nrmse: f64, noise: NoiseSpec, out: Option<&Tensor>) -> Result<PerturbReport> {
    let _range = crate::nvtx::range("featjnd::perturb");
    let (_, samples) = check_perturb(x, jnd)?;
    on_device(x.device(), |ex| ex.run(&perturb_call(x, jnd, samples, nrmse, noise, out, &[])?))
}

/// The core's perturbation call for checked tensors (`out = None`: in place; `extra_out`: further
/// arrays the caller's op writes, for the aliasing rule).
pub(crate) fn perturb_call(
    x: &Tensor,
    jnd: Option<&Tensor>,
    samples: usize,
    nrmse: f64,
    noise: NoiseSpec,
    out: Option<&Tensor>,
    extra_out: &[Buf],
) -> Result<PerturbCall> {
    let xb = buf(x, "x")?;
    PerturbArgs {
        x: xb,
        samples,
        jnd: jnd.map(|j| buf(j, "J")).transpose()?,
        out: match out {
            Some(o) => buf(o, "output")?,
            None => xb,
        },
        nrmse,
        noise,
        scales_out: None,
    }
    .validate_with(extra_out)
}

/// The noise `ξ` of flat elements `offset .. offset + numel` (contract §5) as an f32 tensor on `device`.
pub fn noise(numel: usize, offset: u64, noise: NoiseSpec, device: Device) -> Result<Tensor> {
    let _range = crate::nvtx::range("featjnd::noise");
    // An impossible size is an error, not an allocation failure deep in libtorch.
    if numel.checked_mul(4).is_none_or(|b| b > isize::MAX as usize) {
        return Err(Error::Arg(format!("noise of {numel} elements does not fit in memory")));
    }
    // The device first: without a GPU this is `CudaUnavailable`, before torch is asked for memory.
    let cuda = cuda_ordinal(device).map(Cuda::torch).transpose()?;
    let out = Tensor::f_empty([numel as i64], (Kind::Float, device))?;
    let call = NoiseArgs { out: buf(&out, "noise")?, offset, noise }.validate()?;
    match &cuda {
        Some(c) => Executor::Cuda(c).run(&call)?,
        None => Executor::Host(None).run(&call)?,
    }
    Ok(out)
}
