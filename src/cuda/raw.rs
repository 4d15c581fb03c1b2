//! The ops on raw device pointers and a caller-chosen stream: the one host-side module of every
//! kernel family. Per family it holds the parameter fill (from the structs of
//! `kernels/featjnd_params.h`), the kernel names, the grid, the layout and decoding of the
//! statistics buffer, and the mapping of what the kernels found to the op's typed error
//! ([`check_bad`]). Its one caller is the CUDA executor `call::Cuda`, which every surface (tensor
//! API, C ABI, Python) goes through.
//!
//! Each op's function builds a [`Plan`]: the memsets and kernels it enqueues with their parameter
//! structs and grids, made and checked without a device (sizes, grid limits, statistics room are
//! an [`Error`] before anything runs). [`Plan::launch`] is the `unsafe` step: a kernel reads and
//! writes whatever its pointers say, and nothing on the host can prove a device address valid.
//! The pointers are typed ([`DevPtr`] for what a kernel reads, [`DevPtrMut`] for what it writes)
//! and become `u64` only inside the parameter structs. The CPU emulation tier
//! (`crates/featjnd-emu`) runs the same plans on the host.
//!
//! Every statistic an op returns to the host (first bad index, clamp count, error sums, histogram,
//! norms, scales) lives in one zero-initialised buffer of 8-byte slots ([`StatsBuf`]): one memset
//! before, one device-to-host copy after ([`read_stats`]).
use std::ffi::c_void;
use std::fmt;
use std::marker::PhantomData;

/// The bound of [`ParamsVisitor::visit`]: a struct a kernel can take by value.
pub use cudarc::driver::DeviceRepr;
use cudarc::driver::{result as cu, CudaStream, LaunchConfig, PushKernelArg};

use super::compile::{M_PERTURB_GENERIC, M_TOKEN_STATS};
use super::{cuda_err, Device};
use crate::cpu::{perturb::NoiseSpec, PerturbReport, QuantStats};
use crate::element::{with_elem, Dtype, Element};
use crate::error::{Error, Result};
use crate::geom::{Bits, Reduce, Strategy, TokenGrid};
use crate::params::*;

// ---- typed device pointers ----

/// A device address of `T`s that a kernel only reads (`const T*` on the device); null (0) where a
/// parameter allows "absent". `T = c_void` for element arrays whose dtype is a run-time
/// [`Dtype`]. Making one is safe; launching a [`Plan`] that holds it is the `unsafe` step.
#[repr(transparent)]
pub struct DevPtr<T>(u64, PhantomData<fn() -> T>);

/// A device address of `T`s that a kernel writes (`T*` on the device); null (0) = not wanted,
/// where the parameter allows it.
#[repr(transparent)]
pub struct DevPtrMut<T>(u64, PhantomData<fn(T) -> T>);

macro_rules! dev_ptr_common {
    ($P:ident, $raw:ty) => {
        impl<T> $P<T> {
            /// The null pointer ("absent").
            pub const fn null() -> Self {
                $P(0, PhantomData)
            }
            /// A device address as the driver gives it (`CUdeviceptr`).
            pub const fn from_addr(addr: u64) -> Self {
                $P(addr, PhantomData)
            }
            /// A pointer from C or torch (`data_ptr()`); its address is taken as a device address.
            pub fn from_raw(p: $raw) -> Self {
                $P(p as u64, PhantomData)
            }
            /// The address, as the parameter structs carry it.
            pub const fn addr(self) -> u64 {
                self.0
            }
            pub const fn is_null(self) -> bool {
                self.0 == 0
            }
            /// The same address as an array of `U`.
            pub const fn cast<U>(self) -> $P<U> {
                $P(self.0, PhantomData)
            }
        }
        impl<T> Clone for $P<T> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<T> Copy for $P<T> {}
        impl<T> PartialEq for $P<T> {
            fn eq(&self, o: &Self) -> bool {
                self.0 == o.0
            }
        }
        impl<T> Eq for $P<T> {}
        impl<T> fmt::Debug for $P<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#x})", stringify!($P), self.0)
            }
        }
    };
}
dev_ptr_common!(DevPtr, *const T);
dev_ptr_common!(DevPtrMut, *mut T);

impl<T> DevPtrMut<T> {
    /// The same address, read-only.
    pub const fn as_const(self) -> DevPtr<T> {
        DevPtr(self.0, PhantomData)
    }
}

// ---- constants shared with the kernels (kernels/featjnd_params.h) ----

/// Threads per block of every kernel (`FJ_BLOCK`).
pub const BLOCK: u32 = FJ_BLOCK;
/// Elements one perturbation block covers (`FJ_PT_CHUNK`).
pub const PERTURB_CHUNK: u64 = FJ_PT_CHUNK as u64;

// The header derives these from each other; the grids below rely on the relations.
const _: () = assert!(FJ_WARPS * FJ_WARP_SIZE == FJ_BLOCK);
const _: () = assert!(FJ_NCHW_TOKENS_PER_BLOCK == FJ_WARP_SIZE && FJ_NTC_TOKENS_PER_BLOCK == FJ_WARPS);
const _: () = assert!(FJ_PT_CHUNK == FJ_BLOCK * FJ_PHILOX_LANES * FJ_PT_ITEMS);
const _: () = assert!(FJ_HIST_BINS_B8 == 2 * FJ_QMAX_B8 + 1 && FJ_HIST_BINS_B16 == 2 * FJ_HIST_RANGE_B16 + 2);
// The structs the kernels read by value: the fields added for the capped allocation sit where the
// kernels expect them (bindgen's layout tests check the whole struct against the header; these
// pin what the plans below rely on, so a reordering in the header fails the build here).
const _: () = assert!(std::mem::offset_of!(FjTokenStatsParams, max_out) == 32 + 4 * 8);
const _: () = assert!(std::mem::offset_of!(FjTokenStatsParams, check) == std::mem::offset_of!(FjTokenStatsParams, reduce) + 4);
const _: () = assert!(std::mem::size_of::<FjTokenStatsParams>() == 32 + 5 * 8 + 8 + 2 * 8 + 8);
const _: () = assert!(std::mem::offset_of!(FjTokenStatsParams, partials) == 32 + 5 * 8 + 8);
const _: () = assert!(std::mem::offset_of!(FjCappedParams, budget) == 9 * 8 && std::mem::offset_of!(FjCappedParams, kappa) == 11 * 8);
const _: () = assert!(std::mem::size_of::<FjCappedParams>() == 12 * 8);
const _: () = assert!(FJ_CHECK_JND != FJ_CHECK_FINITE && FJ_CAPPED_ZERO_FEATURE != 0);
// Dtype::code() is the discriminant: it must be the header's code.
const _: () = assert!(Dtype::F32 as u32 == FJ_DTYPE_F32 && Dtype::F16 as u32 == FJ_DTYPE_F16 && Dtype::Bf16 as u32 == FJ_DTYPE_BF16);

// SAFETY: (all six) each struct is `#[repr(C)]`, generated by bindgen from the very header the
// kernels compile against (layout tests check size and offsets), made of integers and floats only,
// so any bit pattern is valid, and every kernel takes its struct by value as its only parameter.
unsafe impl DeviceRepr for FjTokenStatsParams {}
// SAFETY: see above.
unsafe impl DeviceRepr for FjStepAllocParams {}
// SAFETY: see above.
unsafe impl DeviceRepr for FjQuantizeParams {}
// SAFETY: see above.
unsafe impl DeviceRepr for FjPerturbParams {}
// SAFETY: see above.
unsafe impl DeviceRepr for FjNoiseParams {}
// SAFETY: see above.
unsafe impl DeviceRepr for FjCappedParams {}
// SAFETY: see above (an array of `FjQuantizeParams`, the prefix sums and a count, all plain data).
unsafe impl DeviceRepr for FjQuantizeBatchParams {}
// SAFETY: see above (the same for `FjPerturbParams`).
unsafe impl DeviceRepr for FjPerturbBatchParams {}
// SAFETY: see above (an `FjQuantizeParams` followed by addresses, floats and counts).
unsafe impl DeviceRepr for FjQuantizeChainParams {}

// ---- kernels: static tables (`super::kernels`), picked per module, dtype and layout ----

use super::kernels::*;
pub use super::kernels::{kernel_names, Kernel};

// ---- launching ----

/// Where a launch goes: a device (its compiled kernels) and a stream of that device.
#[derive(Clone, Copy)]
pub struct Launch<'a> {
    pub dev: &'a Device,
    pub stream: &'a CudaStream,
}

/// A device element array of a run-time dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elems {
    pub ptr: DevPtr<c_void>,
    pub dt: Dtype,
}

/// The launch configuration for `blocks` blocks of [`BLOCK`] threads; a grid the hardware cannot
/// run (more than 2^31 - 1 blocks) is an error, never a silently truncated grid.
fn cfg(blocks: u64) -> Result<LaunchConfig> {
    let b = u32::try_from(blocks.max(1)).ok().filter(|&b| b <= i32::MAX as u32);
    let b = b.ok_or_else(|| Error::Arg(format!("{blocks} thread blocks do not fit in one CUDA grid (split the input)")))?;
    Ok(LaunchConfig { grid_dim: (b, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 })
}

/// Enqueues kernel `k` with its parameter struct.
///
/// # Safety
/// Every address in `p` must be what the kernel expects (see the function that plans `p`), and
/// `k` must be a kernel taking a `P` by value.
unsafe fn go<P: DeviceRepr>(on: Launch, k: Kernel, p: &P, blocks: u64) -> Result<()> {
    let cfg = cfg(blocks)?;
    let f = on.dev.kernel(k.module, k.index, k.name)?;
    let mut b = on.stream.launch_builder(f);
    b.arg(p);
    // SAFETY: `name` takes exactly one `P` by value (the kernels are declared with the header's
    // structs and the tables above match them, tests/nvrtc.rs checks the names); the addresses in
    // `p` are valid for what the kernel does with them by this function's contract.
    unsafe { b.launch(cfg) }.map(|_| ()).map_err(cuda_err)
}

// ---- plans: what an op enqueues, as data ----

/// The parameter struct a kernel takes by value (the batch tables are large, so boxed).
#[derive(Clone, Debug)]
pub enum Params {
    TokenStats(FjTokenStatsParams),
    StepAlloc(FjStepAllocParams),
    Capped(FjCappedParams),
    Quantize(FjQuantizeParams),
    Chain(FjQuantizeChainParams),
    QuantizeBatch(Box<FjQuantizeBatchParams>),
    Perturb(FjPerturbParams),
    PerturbBatch(Box<FjPerturbBatchParams>),
    Noise(FjNoiseParams),
}

/// What runs a kernel with its parameter struct: [`Plan::launch`] on a device, the CPU emulation
/// tier (`crates/featjnd-emu`) on the host.
pub trait ParamsVisitor {
    type Out;
    fn visit<P: DeviceRepr>(self, p: &P) -> Self::Out;
}

impl Params {
    /// Calls `v` with the struct itself.
    pub fn visit<V: ParamsVisitor>(&self, v: V) -> V::Out {
        match self {
            Params::TokenStats(p) => v.visit(p),
            Params::StepAlloc(p) => v.visit(p),
            Params::Capped(p) => v.visit(p),
            Params::Quantize(p) => v.visit(p),
            Params::Chain(p) => v.visit(p),
            Params::QuantizeBatch(p) => v.visit(&**p),
            Params::Perturb(p) => v.visit(p),
            Params::PerturbBatch(p) => v.visit(&**p),
            Params::Noise(p) => v.visit(p),
        }
    }
}

/// One step of a [`Plan`], in stream order.
#[derive(Clone, Debug)]
// A plan holds one to four steps, and boxing every kernel step would add an allocation per launch
// to save a few hundred bytes on the rare memset step.
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// Zero these statistics slots (one memset node).
    Zero(StatsBuf),
    /// Launch `kernel` over `blocks` blocks of [`BLOCK`] threads with `params`.
    Kernel { kernel: Kernel, params: Params, blocks: u64 },
}

/// Everything an op enqueues — memsets, kernels, their parameters and grids — built and checked
/// without a device by the functions of this module (every size, grid limit and statistics room
/// they can check is an [`Error`] here, before anything runs). [`Plan::launch`] enqueues it on a
/// stream; the CPU emulation tier runs the very same plan on the host, so what the tier checks is
/// exactly what a GPU would be given.
#[derive(Clone, Debug)]
#[must_use = "a plan does nothing until it is launched"]
pub struct Plan {
    steps: Vec<Step>,
}

impl Plan {
    fn new() -> Plan {
        Plan { steps: Vec::new() }
    }

    fn one(kernel: Kernel, params: Params, blocks: u64) -> Plan {
        Plan::new().then(kernel, params, blocks)
    }

    fn then(mut self, kernel: Kernel, params: Params, blocks: u64) -> Plan {
        self.steps.push(Step::Kernel { kernel, params, blocks });
        self
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Enqueues the steps in order on `on.stream` (each reads what the ones before it wrote).
    ///
    /// # Safety
    /// On `on`'s device: every address in the plan must be what the function that made it says
    /// (its "Launching" paragraph), and none of that memory may be used by other work until the
    /// plan completes in stream order.
    pub unsafe fn launch(&self, on: Launch) -> Result<()> {
        struct Go<'a> {
            on: Launch<'a>,
            kernel: Kernel,
            blocks: u64,
        }
        impl ParamsVisitor for Go<'_> {
            type Out = Result<()>;
            fn visit<P: DeviceRepr>(self, p: &P) -> Result<()> {
                // SAFETY: the plan's builder paired `kernel` with its own parameter struct `P`
                // (the kernel tables are typed by family) and checked the grid and the statistics
                // room; the addresses are valid by `launch`'s contract.
                unsafe { go(self.on, self.kernel, p, self.blocks) }
            }
        }
        for s in &self.steps {
            match s {
                // SAFETY: the slots are device memory of the stream's context by the contract.
                Step::Zero(b) => unsafe { zero_stats(on, *b)? },
                Step::Kernel { kernel, params, blocks } => params.visit(Go { on, kernel: *kernel, blocks: *blocks })?,
            }
        }
        Ok(())
    }
}

/// Blocks of a token kernel (token stats, quantize) and the kernel of module `m` for the layout.
fn token_grid(geom: &FjTokenGeom, nchw: &Family, ntc: &Family, m: usize, dt: Dtype) -> (Kernel, u64) {
    let t = geom.tokens as u64;
    if geom.layout == FJ_LAYOUT_NCHW {
        (nchw.at(m, dt), t.div_ceil(FJ_NCHW_TOKENS_PER_BLOCK as u64))
    } else {
        (ntc.at(m, dt), t.div_ceil(FJ_NTC_TOKENS_PER_BLOCK as u64))
    }
}

// ---- the statistics buffer ----

/// A device buffer of zero-initialised 8-byte statistic slots (`i64` on the host), `len` of them.
#[derive(Clone, Copy, Debug)]
pub struct StatsBuf {
    base: DevPtrMut<i64>,
    len: usize,
}

impl StatsBuf {
    /// `len` slots at `base`. The plans check `len` against what the op needs.
    pub const fn new(base: DevPtrMut<i64>, len: usize) -> Self {
        StatsBuf { base, len }
    }
    /// The first slot's address.
    pub const fn base(self) -> DevPtrMut<i64> {
        self.base
    }
    pub const fn len(self) -> usize {
        self.len
    }
    pub const fn is_empty(self) -> bool {
        self.len == 0
    }
    fn slot<T>(self, i: usize) -> DevPtrMut<T> {
        debug_assert!(i < self.len);
        DevPtrMut::from_addr(self.base.addr() + 8 * i as u64)
    }
    /// Slots `offset .. offset + len` as a buffer of their own (an op whose statistics follow
    /// another op's in one allocation, so one memset and one read cover the chain).
    pub fn sub(self, offset: usize, len: usize) -> Result<StatsBuf> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(StatsBuf { base: DevPtrMut::from_addr(self.base.addr() + 8 * offset as u64), len }),
            _ => Err(Error::Arg(format!("statistics slots {offset}+{len} outside a buffer of {}", self.len))),
        }
    }
    fn need(self, slots: usize) -> Result<()> {
        if self.len < slots {
            return Err(Error::Arg(format!("statistics buffer of {} slots, the op needs {slots}", self.len)));
        }
        Ok(())
    }
    /// The device `Σ j_t²` (f64) a token-stats launch with `sum_sq` accumulated here: what the
    /// fused chain's step allocation reads.
    pub fn sum_sq(self) -> DevPtr<f64> {
        self.slot::<f64>(T_SUM_SQ).as_const()
    }
}

/// Copies the statistics to the host on `stream` and waits for it (the op's one sync).
///
/// # Safety
/// `stats` must be live device memory of `stream`'s context, `stats.len()` slots long, whose
/// kernels were enqueued on `stream` (or are otherwise complete).
pub unsafe fn read_stats(stats: StatsBuf, stream: &CudaStream) -> Result<Vec<i64>> {
    let mut v = vec![0i64; stats.len];
    stream.context().bind_to_thread().map_err(cuda_err)?;
    // SAFETY: `v` holds `stats.len` i64 and the device side has as many by the contract; the
    // synchronize below completes the copy before `v` is used or dropped.
    unsafe { cu::memcpy_dtoh_async(&mut v, stats.base.addr(), stream.cu_stream()) }.map_err(cuda_err)?;
    stream.synchronize().map_err(cuda_err)?;
    Ok(v)
}

/// A bad-element cell holds `!index` (0 = none).
fn bad_of(v: i64) -> Option<usize> {
    (v != 0).then_some(!(v as u64) as usize)
}

// ---- what the kernels found wrong, as the op's typed error (the one mapping) ----

/// Which input a bad-element cell indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// The feature `x`: a NaN or ±Inf ([`Error::NonFinite`]).
    X,
    /// The tolerance map `J`: not finite or <= 0 ([`Error::Jnd`]).
    Jnd,
    /// A token tolerance `j_t` of the fused chain: not finite or <= 0 ([`Error::Jnd`] naming the
    /// token, as the CPU's allocation does), with the value's f32 bits.
    TokenTol(u32),
    /// A quantization step: not finite, <= 0 or with an infinite reciprocal ([`Error::Arg`], the
    /// CPU's message), with the value's f32 bits.
    Step(u32),
}

/// The first offending element an op's kernels reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadElement {
    pub input: Input,
    /// Flat index into that input.
    pub index: usize,
}

impl BadElement {
    /// The op's typed error with the offending value (for the message).
    pub fn error(self, value: f32) -> Error {
        match self.input {
            Input::X => Error::NonFinite { index: self.index, value },
            Input::Jnd => Error::Jnd { index: self.index, value },
            Input::TokenTol(v) => Error::Jnd { index: self.index, value: f32::from_bits(v) },
            Input::Step(v) => crate::cpu::step_error(self.index, f32::from_bits(v)),
        }
    }
}

/// A device element array an error message may read one value from, or `None` where it cannot be
/// read any more (x quantized in place: the message says NaN).
pub type Source = Option<Elems>;

/// `Ok` when the kernels found nothing wrong, else the typed error for the first bad element, its
/// value read back from `x` or `jnd` on `stream` (NaN where the source is `None` or unreadable).
///
/// # Safety
/// Each `Some` source must be device memory of `stream`'s context holding at least `index + 1`
/// elements of its dtype for the index `bad` names, with no kernel writing it.
pub unsafe fn check_bad(bad: Option<BadElement>, x: Source, jnd: Source, stream: &CudaStream) -> Result<()> {
    let Some(b) = bad else { return Ok(()) };
    let src = match b.input {
        Input::X => x,
        Input::Jnd => jnd,
        Input::TokenTol(_) | Input::Step(_) => None,
    };
    // SAFETY: `src` holds element `b.index` by this function's contract.
    let value = src.map_or(f32::NAN, |e| unsafe { value_at(e, b.index, stream) });
    Err(b.error(value))
}

/// Element `i` of a device array as f32 (NaN if the copy fails).
///
/// # Safety
/// `a` must be device memory of `stream`'s context with at least `i + 1` elements.
unsafe fn value_at(a: Elems, i: usize, stream: &CudaStream) -> f32 {
    let (p, dt) = (a.ptr, a.dt);
    let mut buf = [0u8; 4];
    let n = dt.size();
    let ok = stream.context().bind_to_thread().is_ok()
        // SAFETY: element `i` (n <= 4 bytes at p + i·n) exists by the contract; the synchronize
        // completes the copy into `buf` before it is read.
        && unsafe { cu::memcpy_dtoh_async(&mut buf[..n], p.addr() + (i * n) as u64, stream.cu_stream()) }.is_ok()
        && stream.synchronize().is_ok();
    if !ok {
        return f32::NAN;
    }
    // SAFETY: `buf` holds the `n = size_of::<E>()` bytes of one element (any bit pattern is a
    // valid f32/f16/bf16); the read is unaligned-safe.
    with_elem!(dt, E => unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const E) }.to_f32())
}

// ---- token stats: j_t = reduce(J over token t) ----

// Slots of a token-stats launch (the first two of a fused quantization's buffer too).
const T_BAD_J: usize = 0;
const T_SUM_SQ: usize = 1;
/// Slots [`token_stats`] needs.
pub const TOKEN_STATS_SLOTS: usize = 2;

/// Plans the token-stats kernel: `j_t` of `jnd` into `token_tol[tokens]`, the first bad J into
/// `stats`, and (with `sum_sq`) `Σ j_t²` into it for [`StatsBuf::sum_sq`]. A quantization's
/// buffer ([`quantize_slots`]) has these slots too, so J's error surfaces in [`decode_quantize`]
/// for the fused chain.
///
/// # Launching
/// On the launch's device: `jnd` must hold `grid.numel()` elements; `token_tol` room for
/// `grid.tokens()` f32 not overlapping `jnd`; `stats` zeroed slots; none of them used by other
/// work until this launch completes in stream order.
pub fn token_stats(grid: &TokenGrid, reduce: Reduce, jnd: Elems, token_tol: DevPtrMut<f32>, stats: StatsBuf, sum_sq: bool) -> Result<Plan> {
    let p = token_stats_params(grid, reduce, jnd, token_tol, stats, sum_sq)?;
    let (k, blocks) = token_grid(&p.geom, &TOKEN_STATS_NCHW, &TOKEN_STATS_NTC, M_TOKEN_STATS, jnd.dt);
    Ok(Plan::one(k, Params::TokenStats(p), blocks))
}

/// The parameters of a token-stats launch over J, its statistics room checked.
fn token_stats_params(
    grid: &TokenGrid,
    reduce: Reduce,
    jnd: Elems,
    token_tol: DevPtrMut<f32>,
    stats: StatsBuf,
    sum_sq: bool,
) -> Result<FjTokenStatsParams> {
    stats.need(TOKEN_STATS_SLOTS)?;
    Ok(FjTokenStatsParams {
        geom: grid.to_params(),
        jnd: jnd.ptr.addr(),
        token_tol: token_tol.addr(),
        sum_sq: if sum_sq { stats.slot::<f64>(T_SUM_SQ).addr() } else { 0 },
        bad_index: stats.slot::<u64>(T_BAD_J).addr(),
        max_out: 0,
        reduce: match reduce {
            Reduce::Mean => FJ_REDUCE_MEAN,
            Reduce::Rms => FJ_REDUCE_RMS,
            Reduce::Min => FJ_REDUCE_MIN,
        },
        check: FJ_CHECK_JND,
        ..Default::default()
    })
}

/// The first bad J a [`token_stats`] launch found.
pub fn decode_token_stats(s: &[i64]) -> Option<BadElement> {
    bad_of(s[T_BAD_J]).map(|index| BadElement { input: Input::Jnd, index })
}

// ---- step allocation ----

/// Device pointers of one step allocation over `tokens` tokens.
#[derive(Clone, Copy, Debug)]
pub struct StepPtrs {
    /// `tokens` f32: the token tolerances.
    pub token_tol: DevPtr<f32>,
    /// One f64 `Σ j²`, read for [`Strategy::Jnd`] and [`Strategy::Permuted`].
    pub sum_sq: DevPtr<f64>,
    /// `tokens` values, a permutation of `0..tokens`, for [`Strategy::Permuted`] (null otherwise).
    pub perm: DevPtr<u32>,
    /// Room for `tokens` f32 (out).
    pub steps: DevPtrMut<f32>,
}

/// Plans the step allocation for budget `budget`, every step times `beta`.
///
/// # Launching
/// On the launch's device: every pointer of `p` the strategy reads must hold what its field says,
/// `steps` must overlap none of them; all ordered before this launch on its stream.
pub fn step_alloc(p: &StepPtrs, tokens: usize, budget: f64, strategy: Strategy, beta: f64) -> Result<Plan> {
    Ok(Plan::one(
        STEP_ALLOC,
        Params::StepAlloc(step_alloc_params(p, tokens, budget, strategy, beta)?),
        (tokens as u64).div_ceil(BLOCK as u64),
    ))
}

/// The kernel parameters of one step allocation, checked.
fn step_alloc_params(p: &StepPtrs, tokens: usize, budget: f64, strategy: Strategy, beta: f64) -> Result<FjStepAllocParams> {
    let tokens32 = u32::try_from(tokens).map_err(|_| Error::Arg(format!("{tokens} tokens exceed the kernels' 32-bit token index")))?;
    if matches!(strategy, Strategy::Permuted { .. }) && p.perm.is_null() {
        return Err(Error::Arg("the permuted strategy needs its device permutation".into()));
    }
    Ok(FjStepAllocParams {
        token_tol: p.token_tol.addr(),
        sum_sq: p.sum_sq.addr(),
        perm: p.perm.addr(),
        steps: p.steps.addr(),
        budget,
        beta,
        tokens: tokens32,
        strategy: match strategy {
            Strategy::Uniform => FJ_STRATEGY_UNIFORM,
            Strategy::Jnd => FJ_STRATEGY_JND,
            Strategy::Permuted { .. } => FJ_STRATEGY_PERMUTED,
        },
    })
}

// ---- the capped allocation (contract §3.5): token RMS, caps, solve, steps ----

// Slots of a capped allocation. The token-RMS launch writes the first two (its first bad x and
// max_t r_t), the caps read that max, the solver validates j_t and c_t and writes (a, b).
const R_BAD_X: usize = 0;
const R_MAX: usize = 1;
/// Slots [`token_rms`] needs (the first ones of a capped allocation's buffer).
pub const TOKEN_RMS_SLOTS: usize = 2;
const CA_STATUS: usize = 2;
const CA_BAD_J: usize = 3;
const CA_BAD_C: usize = 4;
const CA_SCALES: usize = 5;
/// Slots a capped allocation ([`capped_caps`], [`capped_solve`], [`capped_steps`]) needs, room for
/// the token RMS of [`token_rms`] included.
pub const CAPPED_SLOTS: usize = CA_SCALES + 2;
const _: () = assert!(R_BAD_X < TOKEN_RMS_SLOTS && R_MAX < TOKEN_RMS_SLOTS && CA_STATUS == TOKEN_RMS_SLOTS);

/// Plans the token RMS `r_t = sqrt(Σ x² / K)` of `x` into `rms[tokens]` (the token-stats kernel
/// with `Reduce::Rms` and the "finite" check, so the summation order is §2's), the first
/// non-finite x and `max_t r_t` into `stats` (the max is what [`capped_caps`] reads when told the
/// maximum is known).
///
/// # Launching
/// On the launch's device: `x` must hold `grid.numel()` elements; `rms` room for `grid.tokens()`
/// f32 not overlapping `x`; `stats` zeroed slots; none of them used by other work until this launch
/// completes in stream order.
pub fn token_rms(grid: &TokenGrid, x: Elems, rms: DevPtrMut<f32>, stats: StatsBuf) -> Result<Plan> {
    stats.need(TOKEN_RMS_SLOTS)?;
    let p = FjTokenStatsParams {
        geom: grid.to_params(),
        jnd: x.ptr.addr(),
        token_tol: rms.addr(),
        sum_sq: 0,
        bad_index: stats.slot::<u64>(R_BAD_X).addr(),
        max_out: stats.slot::<u32>(R_MAX).addr(),
        reduce: FJ_REDUCE_RMS,
        check: FJ_CHECK_FINITE,
        ..Default::default()
    };
    let (k, blocks) = token_grid(&p.geom, &TOKEN_STATS_NCHW, &TOKEN_STATS_NTC, M_TOKEN_STATS, x.dt);
    Ok(Plan::one(k, Params::TokenStats(p), blocks))
}

fn tokens_u32(tokens: usize) -> Result<u32> {
    match u32::try_from(tokens) {
        Ok(t) if t > 0 && t <= i32::MAX as u32 => Ok(t),
        Ok(0) => Err(Error::Empty("token tolerances")),
        _ => Err(Error::Arg(format!("{tokens} tokens exceed the kernels' 32-bit token index"))),
    }
}

/// Checks the cap factor (contract §3.5): finite and > 0, as `steps::caps_from_rms` does.
pub fn check_kappa(kappa: f32) -> Result<()> {
    if kappa.is_finite() && kappa > 0.0 {
        Ok(())
    } else {
        Err(Error::Arg(format!("cap factor κ = {kappa} must be finite and > 0")))
    }
}

/// Plans the caps `c_t = κ·max(r_t, 2^-24·max_t r_t)` from `rms[tokens]` into `caps`. With
/// `max_known` the maximum is the one a [`token_rms`] launch left in `stats`; otherwise a max
/// kernel reduces it from `rms` first (values > 0 only, as the CPU's fold from 0). A maximum that
/// is not finite and > 0 (a zero feature) sets a status bit that [`decode_capped`] reports.
///
/// # Launching
/// On the launch's device: `rms` must hold `tokens` f32, `caps` room for as many, not overlapping
/// `rms`; `stats` zeroed slots (or, with `max_known`, the slots of that earlier launch, ordered
/// before this one); none used by other work until the launches complete in stream order.
pub fn capped_caps(rms: DevPtr<f32>, tokens: usize, kappa: f32, max_known: bool, caps: DevPtrMut<f32>, stats: StatsBuf) -> Result<Plan> {
    check_kappa(kappa)?;
    stats.need(CAPPED_SLOTS)?;
    let p = FjCappedParams {
        rms: rms.addr(),
        max_rms: stats.slot::<u32>(R_MAX).addr(),
        caps: caps.addr(),
        status: stats.slot::<u64>(CA_STATUS).addr(),
        kappa,
        tokens: tokens_u32(tokens)?,
        ..Default::default()
    };
    let blocks = (tokens as u64).div_ceil(BLOCK as u64);
    let max = if max_known { Plan::new() } else { Plan::new().then(MAX_POS, Params::Capped(p), blocks) };
    Ok(max.then(CAPS, Params::Capped(p), blocks))
}

/// Plans the one-block solver for the scales `(a, b)` of the capped allocation (into `stats`),
/// which also validates `j_t` and `c_t`. Cost: about 64 passes over the `tokens` values on one
/// multiprocessor (bisection; see `kernels/step_alloc.cu`).
///
/// # Launching
/// On the launch's device: `token_tol` and `caps` must hold `tokens` f32 each; `stats` zeroed
/// slots (or those of [`capped_caps`] before it); all ordered before this launch on its stream.
pub fn capped_solve(token_tol: DevPtr<f32>, caps: DevPtr<f32>, tokens: usize, budget: f64, stats: StatsBuf) -> Result<Plan> {
    crate::steps::check_budget(budget)?;
    stats.need(CAPPED_SLOTS)?;
    let p = FjCappedParams {
        token_tol: token_tol.addr(),
        caps: caps.addr(),
        scales: stats.slot::<f64>(CA_SCALES).addr(),
        bad_jnd: stats.slot::<u64>(CA_BAD_J).addr(),
        bad_cap: stats.slot::<u64>(CA_BAD_C).addr(),
        budget,
        tokens: tokens_u32(tokens)?,
        ..Default::default()
    };
    Ok(Plan::one(CAPPED_SOLVE, Params::Capped(p), 1))
}

/// Plans `steps_t = min(f32(a·β)·j_t, f32(b·β)·c_t)` with the scales a [`capped_solve`] launch
/// left in `stats` (any number of times, for any `β`: the measured budget solves once).
///
/// # Launching
/// On the launch's device: `token_tol` and `caps` must hold `tokens` f32 each, `steps` room for as
/// many, overlapping neither; `stats` the slots of that solve, ordered before this launch on its
/// stream; none used by other work until the launch completes.
pub fn capped_steps(
    token_tol: DevPtr<f32>,
    caps: DevPtr<f32>,
    tokens: usize,
    beta: f64,
    steps: DevPtrMut<f32>,
    stats: StatsBuf,
) -> Result<Plan> {
    stats.need(CAPPED_SLOTS)?;
    let p = FjCappedParams {
        token_tol: token_tol.addr(),
        caps: caps.addr(),
        scales: stats.slot::<f64>(CA_SCALES).addr(),
        steps: steps.addr(),
        beta,
        tokens: tokens_u32(tokens)?,
        ..Default::default()
    };
    Ok(Plan::one(CAPPED_STEPS, Params::Capped(p), (tokens as u64).div_ceil(BLOCK as u64)))
}

/// What went wrong in a capped allocation, in the order the CPU path checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CappedBad {
    /// The first non-finite x of the token RMS (flat index into x).
    X(usize),
    /// The feature is zero (or its RMS not finite) in every token.
    ZeroFeature,
    /// The first token tolerance not finite and > 0.
    TokenTol(usize),
    /// The first cap not finite and > 0.
    Cap(usize),
}

/// A capped allocation's statistics, read back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CappedStats {
    pub bad: Option<CappedBad>,
    /// `max_t r_t` (0 where no token RMS or max kernel ran).
    pub max_rms: f32,
    /// `(a, b)` at `β = 1` (where the solver ran and found nothing wrong).
    pub scales: (f64, f64),
}

/// Decodes a capped allocation's slots (a [`token_rms`]-only buffer decodes too: its bad x).
pub fn decode_capped(s: &[i64]) -> CappedStats {
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let zero = at(CA_STATUS) as u64 & FJ_CAPPED_ZERO_FEATURE as u64 != 0;
    let bad = bad_of(at(R_BAD_X))
        .map(CappedBad::X)
        .or(zero.then_some(CappedBad::ZeroFeature))
        .or(bad_of(at(CA_BAD_J)).map(CappedBad::TokenTol))
        .or(bad_of(at(CA_BAD_C)).map(CappedBad::Cap));
    CappedStats {
        bad,
        // The max is an f32 in the low half of its slot (a 32-bit atomicMax on little-endian memory).
        max_rms: f32::from_bits(at(R_MAX) as u64 as u32),
        scales: (f64::from_bits(at(CA_SCALES) as u64), f64::from_bits(at(CA_SCALES + 1) as u64)),
    }
}

/// `Ok`, or the error the CPU path gives for what a capped allocation found: `NonFinite` (value
/// read back from `x` where given), `Arg` for a zero feature or a bad cap, `Jnd` for a bad token
/// tolerance (the values read back from the device arrays).
///
/// # Safety
/// `x` (if `Some`), `token_tol` and `caps` (unless null) must be device memory of `stream`'s
/// context holding the element an index of `bad` names, with no kernel writing them.
pub unsafe fn check_capped(
    bad: Option<CappedBad>,
    x: Source,
    token_tol: DevPtr<f32>,
    caps: DevPtr<f32>,
    stream: &CudaStream,
) -> Result<()> {
    let f32_at = |p: DevPtr<f32>, i: usize| {
        if p.is_null() {
            return f32::NAN;
        }
        // SAFETY: `p` holds element `i` by this function's contract.
        unsafe { value_at(Elems { ptr: p.cast(), dt: Dtype::F32 }, i, stream) }
    };
    match bad {
        None => Ok(()),
        Some(CappedBad::X(index)) => {
            // SAFETY: as above, for `x`.
            let value = x.map_or(f32::NAN, |e| unsafe { value_at(e, index, stream) });
            Err(Error::NonFinite { index, value })
        }
        Some(CappedBad::ZeroFeature) => {
            Err(Error::Arg("the feature is zero (or not finite) in every token: the capped allocation has no scale".into()))
        }
        Some(CappedBad::TokenTol(index)) => Err(Error::Jnd { index, value: f32_at(token_tol, index) }),
        Some(CappedBad::Cap(t)) => Err(Error::Arg(format!("cap c[{t}] = {} must be finite and > 0", f32_at(caps, t)))),
    }
}

// ---- fused quantize / dequantize ----

// Slots of a quantization's statistics, after the token-stats ones (bad J, Σ j²) of the fused chain.
const Q_BAD_X: usize = 2;
/// The bad-step cell: the largest `bad_step_key` of `kernels/quantize.cu` (0 = none).
const Q_BAD_STEP: usize = 3;
const Q_CLAMP: usize = 4;
const Q_SSE: usize = 5;
const Q_HIST: usize = 6;
// The fused chain writes token stats into a quantization's buffer: the layouts must not collide.
const _: () = assert!(T_BAD_J < TOKEN_STATS_SLOTS && T_SUM_SQ < TOKEN_STATS_SLOTS && Q_BAD_X == TOKEN_STATS_SLOTS);

/// Slots a quantization needs (room for the fused chain's token stats included).
pub fn quantize_slots(bits: Bits, histogram: bool) -> usize {
    Q_HIST + if histogram { bits.hist_bins() } else { 0 }
}

/// Device pointers of one quantization; a null output is not wanted. `recon` may equal `x`
/// (in place), nothing else may overlap.
#[derive(Clone, Copy, Debug)]
pub struct QuantPtrs {
    /// `grid.numel()` elements of the op's dtype.
    pub x: DevPtr<c_void>,
    /// `grid.tokens()` f32.
    pub steps: DevPtr<f32>,
    /// `grid.numel()` i8 (8 bits) or i16 (16 bits).
    pub symbols: DevPtrMut<c_void>,
    /// `grid.numel()` elements of the op's dtype, or `x` itself.
    pub recon: DevPtrMut<c_void>,
    /// `grid.tokens()` f32.
    pub token_sse: DevPtrMut<f32>,
}

/// Plans the fused quantize kernel with its statistics in `stats` (a histogram of
/// `bits.hist_bins()` bins when `histogram`).
///
/// # Launching
/// On the launch's device: every non-null pointer of `p` must hold what its field says, the
/// outputs must overlap neither each other nor the inputs except `recon == x` exactly, `stats`
/// must be zeroed slots; none used by other work until this launch completes in stream order.
pub fn quantize(dt: Dtype, grid: &TokenGrid, p: &QuantPtrs, bits: Bits, histogram: bool, stats: StatsBuf) -> Result<Plan> {
    let q = quant_params(grid, p, bits, histogram, stats)?;
    let (k, blocks) = token_grid(&q.geom, &QUANTIZE_NCHW, &QUANTIZE_NTC, quantize_module(bits, histogram), dt);
    Ok(Plan::one(k, Params::Quantize(q), blocks))
}

/// The kernel parameters of one quantization (single or an item of a batch), its statistics room
/// checked.
fn quant_params(grid: &TokenGrid, p: &QuantPtrs, bits: Bits, histogram: bool, stats: StatsBuf) -> Result<FjQuantizeParams> {
    stats.need(quantize_slots(bits, histogram))?;
    if p.x.is_null() || p.steps.is_null() {
        return Err(Error::Arg("quantize needs x and the steps".into()));
    }
    Ok(FjQuantizeParams {
        geom: grid.to_params(),
        x: p.x.addr(),
        steps: p.steps.addr(),
        symbols: p.symbols.addr(),
        recon: p.recon.addr(),
        token_sse: p.token_sse.addr(),
        total_sse: stats.slot::<f64>(Q_SSE).addr(),
        clamp_count: stats.slot::<u64>(Q_CLAMP).addr(),
        histogram: if histogram { stats.slot::<u64>(Q_HIST).addr() } else { 0 },
        bad_index: stats.slot::<u64>(Q_BAD_X).addr(),
        bad_step: stats.slot::<u64>(Q_BAD_STEP).addr(),
        bits: bits.bits(),
        pad0: 0,
    })
}

/// A quantization's statistics, read back: the first bad element (a bad J — the fused chain
/// reduces J first, as the CPU path does — before a bad x; map it with [`check_bad`]) and the
/// statistics, the same [`QuantStats`] the CPU path returns.
pub fn decode_quantize(s: &[i64], bits: Bits, histogram: bool) -> (Option<BadElement>, QuantStats) {
    let bad_x = bad_of(s[Q_BAD_X]).map(|index| BadElement { input: Input::X, index });
    let bad_step = decode_step_key(s[Q_BAD_STEP] as u64);
    let stats = QuantStats {
        clamped: s[Q_CLAMP] as u64,
        total_sse: f64::from_bits(s[Q_SSE] as u64),
        histogram: histogram.then(|| s[Q_HIST..Q_HIST + bits.hist_bins()].iter().map(|&v| v as u64).collect()),
    };
    // The CPU's order: J (reduced first), the token tolerances and steps, then x.
    (decode_token_stats(s).or(bad_step).or(bad_x), stats)
}

/// The bad-step cell's key (`bad_step_key` in `kernels/quantize.cu`): bit 63 for a token
/// tolerance, then `0x7fffffff - t`, then the value's f32 bits; 0 is none.
fn decode_step_key(k: u64) -> Option<BadElement> {
    if k == 0 {
        return None;
    }
    let index = (0x7fff_ffff - ((k >> 32) & 0x7fff_ffff)) as usize;
    let bits = k as u32;
    Some(BadElement { input: if k >> 63 == 1 { Input::TokenTol(bits) } else { Input::Step(bits) }, index })
}

/// The key of [`decode_step_key`] for a bad step or token tolerance (the CPU's encoding).
fn step_key(b: BadElement) -> i64 {
    let (jt, bits) = match b.input {
        Input::TokenTol(v) => (1u64, v),
        Input::Step(v) => (0, v),
        Input::X | Input::Jnd => unreachable!("x and J have cells of their own"),
    };
    ((jt << 63) | ((0x7fff_ffff - b.index as u64) << 32) | bits as u64) as i64
}

// ---- matched-NRMSE perturbation and noise ----

// Slots: bad x, bad J, (Σx², Σ(Jξ)²) per sample, then the f32 scales packed two a slot.
const P_BAD_X: usize = 0;
const P_BAD_J: usize = 1;
const P_NORMS: usize = 2;
fn p_scales(samples: usize) -> usize {
    P_NORMS + 2 * samples
}

/// Slots a perturbation of `samples` samples needs.
pub fn perturb_slots(samples: usize) -> usize {
    p_scales(samples) + samples.div_ceil(2)
}

/// What one perturbation works on: `numel` elements of dtype `dt` in `samples` equal samples.
#[derive(Clone, Copy, Debug)]
pub struct PerturbPtrs {
    pub dt: Dtype,
    pub x: DevPtr<c_void>,
    /// Null means J ≡ 1.
    pub jnd: DevPtr<c_void>,
    /// May be `x` (in place).
    pub out: DevPtrMut<c_void>,
    pub numel: usize,
    pub samples: usize,
}

/// Plans the two perturbation kernels (norms, then apply) with statistics in `stats`. A bad
/// NRMSE or sample split is an error before anything is enqueued.
///
/// # Launching
/// On the launch's device: `x` must hold `numel` elements of `dt`, `jnd` (unless null) and `out`
/// as many; `out` must not overlap `jnd`, and must equal `x` or not overlap it; `stats` zeroed
/// slots; none used by other work until the launches complete in stream order.
pub fn perturb(a: &PerturbPtrs, nrmse: f64, noise: NoiseSpec, stats: StatsBuf) -> Result<Plan> {
    let (p, blocks) = perturb_params(a, nrmse, noise, stats)?;
    let m = perturb_module(noise.kind, !a.jnd.is_null());
    Ok(Plan::one(PERTURB_NORMS.at(m, a.dt), Params::Perturb(p), blocks).then(PERTURB_APPLY.at(m, a.dt), Params::Perturb(p), blocks))
}

/// The kernel parameters and grid of one perturbation (single or an item of a batch); a bad
/// NRMSE, sample split or statistics room is an error.
fn perturb_params(a: &PerturbPtrs, nrmse: f64, noise: NoiseSpec, stats: StatsBuf) -> Result<(FjPerturbParams, u64)> {
    let (numel, samples) = (a.numel, a.samples);
    if !(nrmse.is_finite() && nrmse >= 0.0) {
        return Err(Error::Nrmse(nrmse));
    }
    if samples == 0 || numel % samples != 0 || u32::try_from(samples).is_err() {
        return Err(Error::Shape(format!("{numel} elements do not split into {samples} samples")));
    }
    stats.need(perturb_slots(samples))?;
    let p = FjPerturbParams {
        x: a.x.addr(),
        jnd: a.jnd.addr(),
        out: a.out.addr(),
        norms: stats.slot::<f64>(P_NORMS).addr(),
        scales: stats.slot::<f32>(p_scales(samples)).addr(),
        bad_index: stats.slot::<u64>(P_BAD_X).addr(),
        bad_jnd: stats.slot::<u64>(P_BAD_J).addr(),
        numel: numel as u64,
        sample_len: (numel / samples) as u64,
        seed: noise.seed,
        nrmse,
        samples: samples as u32,
        subsequence: noise.subsequence,
        noise: noise_code(noise.kind),
        pad0: 0,
    };
    let blocks = samples as u64 * p.sample_len.div_ceil(PERTURB_CHUNK);
    Ok((p, blocks))
}

/// One item of a batched perturbation: its arrays, strength, noise and statistics slots.
#[derive(Clone, Copy, Debug)]
pub struct PerturbItem {
    pub a: PerturbPtrs,
    pub nrmse: f64,
    pub noise: NoiseSpec,
    pub stats: StatsBuf,
}

/// Plans a batch of independent perturbations of one dtype (`items[..].a.dt`): per
/// [`FJ_BATCH_MAX`] items, one norms launch and one apply launch over a descriptor table passed by
/// value. Each item's results are those of its own [`perturb`].
///
/// # Launching
/// For every item, what [`perturb`] requires of its arrays and statistics.
#[allow(clippy::type_complexity)]
pub fn perturb_batch(dt: Dtype, items: &[PerturbItem]) -> Result<Plan> {
    let mut plan = Plan::new();
    for chunk in items.chunks(FJ_BATCH_MAX as usize) {
        let mut b = Box::new(FjPerturbBatchParams { count: chunk.len() as u32, ..Default::default() });
        let mut blocks = 0u64;
        for (i, it) in chunk.iter().enumerate() {
            if it.a.dt != dt {
                return Err(Error::Dtype("a batch has one dtype".into()));
            }
            let (p, n) = perturb_params(&it.a, it.nrmse, it.noise, it.stats)?;
            b.items[i] = p;
            // As in `quantize_batch`: `cfg` refuses a grid that does not fit.
            b.block_start[i] = u32::try_from(blocks).unwrap_or(u32::MAX);
            blocks += n;
        }
        plan = plan.then(PERTURB_NORMS_BATCH.at(M_PERTURB_GENERIC, dt), Params::PerturbBatch(b.clone()), blocks).then(
            PERTURB_APPLY_BATCH.at(M_PERTURB_GENERIC, dt),
            Params::PerturbBatch(b),
            blocks,
        );
    }
    Ok(plan)
}

/// A perturbation's statistics: the first bad element (a bad x before a bad J, as the CPU path
/// checks them) and the report.
pub fn decode_perturb(v: &[i64], samples: usize) -> (Option<BadElement>, PerturbReport) {
    let packed = &v[p_scales(samples)..];
    let scales = (0..samples).map(|i| f32::from_bits((packed[i / 2] as u64 >> (32 * (i % 2))) as u32)).collect();
    let zero_samples = (0..samples).filter(|&i| !(f64::from_bits(v[P_NORMS + 2 * i] as u64) > 0.0)).collect();
    let bad_x = bad_of(v[P_BAD_X]).map(|index| BadElement { input: Input::X, index });
    let bad_j = bad_of(v[P_BAD_J]).map(|index| BadElement { input: Input::Jnd, index });
    (bad_x.or(bad_j), PerturbReport { scales, zero_samples })
}

/// `Error::Overflow` when a per-sample scale `s_n` is not finite (a strength beyond f32). On the
/// device this is found after pass 2 has written, so the output (or the in-place buffer) is then
/// unspecified; a finite scale whose result overflows a half-precision output is not caught here
/// (the CPU path checks a bound before writing: contract §6, §7.4).
pub fn check_scales(report: &PerturbReport, nrmse: f64) -> Result<()> {
    match report.scales.iter().position(|s| !s.is_finite()) {
        Some(n) => Err(Error::Overflow(format!("NRMSE {nrmse:e} on sample {n} needs a scale beyond f32 ({})", report.scales[n]))),
        None => Ok(()),
    }
}

/// Plans the noise kernel: `numel` f32 values of `ξ` from flat index `offset` into `out`.
///
/// # Launching
/// `out` must be device memory of the launch's device with room for `numel` f32, not used by other
/// work until the launch completes in stream order.
pub fn noise(out: DevPtrMut<f32>, numel: usize, offset: u64, noise: NoiseSpec) -> Result<Plan> {
    let end = offset.checked_add(numel as u64).ok_or_else(|| Error::Arg(format!("noise offset {offset} + {numel} overflows")))?;
    let p = FjNoiseParams {
        out: out.addr(),
        numel: numel as u64,
        offset,
        seed: noise.seed,
        subsequence: noise.subsequence,
        noise: noise_code(noise.kind),
    };
    let lanes = FJ_PHILOX_LANES as u64;
    let groups = end.div_ceil(lanes) - offset / lanes;
    Ok(Plan::one(NOISE, Params::Noise(p), groups.div_ceil(BLOCK as u64)))
}

// ---- caller-owned statistics: the sync-free calls (contract §8) and batches (§3) ----

/// Enqueues the zeroing of `stats` on the launch's stream: one memset node, which a CUDA graph
/// capture records like a kernel (no host work, no sync).
///
/// # Safety
/// `stats` must be device memory of the launch's device, not used by other work until the memset
/// completes in stream order.
pub unsafe fn zero_stats(on: Launch, stats: StatsBuf) -> Result<()> {
    // The driver call needs the stream's context current on this thread (a launch binds it too).
    on.stream.context().bind_to_thread().map_err(cuda_err)?;
    // SAFETY: `stats.len` slots of 8 bytes at `stats.base` are device memory of this stream's
    // context by the contract; the memset is ordered on the stream like a kernel.
    unsafe { cu::memset_d8_async(stats.base.addr(), 0, 8 * stats.len, on.stream.cu_stream()) }.map_err(cuda_err)
}

/// Slots of the fused chain `J → j_t → Δ_t → quantize` that runs without the host: a
/// quantization's (histogram room included, [`quantize_slots`]), then the token tolerances `j_t`
/// as scratch, two f32 a slot, then room for the two-launch form's per-block partials (two slots
/// a block of the token-stats launch, at most [`FJ_CHAIN_MAX_PARTS`] blocks). None of it needs
/// zeroing by the caller: [`quantize_with_jnd`] clears what it accumulates into.
pub fn jnd_chain_slots(bits: Bits, tokens: usize) -> usize {
    chain_partials_at(bits, tokens) + 2 * tokens.div_ceil(FJ_NTC_TOKENS_PER_BLOCK as usize).min(FJ_CHAIN_MAX_PARTS as usize)
}

/// The first slot of the chain's partials in its workspace.
fn chain_partials_at(bits: Bits, tokens: usize) -> usize {
    quantize_slots(bits, true) + tokens.div_ceil(2)
}

/// Plans the fused chain on device memory only: token stats of `jnd` (its `j_t` into the
/// scratch tail of `ws`), the steps into `steps`, and the quantization of `p` (whose `steps` must
/// be `steps`); nothing on the host, no allocation; the statistics decode with
/// [`decode_quantize`]. The permuted strategy needs a device permutation made on the host, so it
/// is refused here (the synchronous call has it).
///
/// Two launches and no memset where the token-stats launch has at most [`FJ_CHAIN_MAX_PARTS`]
/// blocks (up to 16 384 NCHW or 4 096 NTC tokens): its blocks leave per-block
/// partials instead of adding into zeroed cells and clear the quantizer's accumulators, and the
/// quantizer (`fj_quantize_chain_*`) sums the partials, makes each token's step and writes it.
/// Larger inputs take a memset and three launches (token stats, [`step_alloc`], [`quantize`]).
/// The two forms compute the same values (`Σ j_t²` summed in another order, in f64).
///
/// # Launching
/// As [`token_stats`], [`step_alloc`] and [`quantize`] together: `jnd` and `x` hold
/// `grid.numel()` elements, `steps` room for `grid.tokens()` f32, the outputs of `p` what its
/// fields say, nothing overlapping but `recon == x`; `ws` (any contents) not used by other work
/// until the launches complete in stream order.
#[allow(clippy::too_many_arguments)]
pub fn quantize_with_jnd(
    dt: Dtype,
    grid: &TokenGrid,
    jnd: Elems,
    reduce: Reduce,
    budget: f64,
    strategy: Strategy,
    p: &QuantPtrs,
    steps: DevPtrMut<f32>,
    bits: Bits,
    histogram: bool,
    ws: StatsBuf,
) -> Result<Plan> {
    crate::steps::check_budget(budget)?;
    if matches!(strategy, Strategy::Permuted { .. }) {
        return Err(Error::Arg("the permuted strategy needs a permutation made on the host: use the synchronous call".into()));
    }
    ws.need(jnd_chain_slots(bits, grid.tokens()))?;
    if p.steps != steps.as_const() {
        return Err(Error::Arg("the fused chain quantizes with the steps it allocates".into()));
    }
    let stats = ws.sub(0, quantize_slots(bits, true))?;
    let jt = ws.slot::<f32>(stats.len);
    let tp = token_stats_params(grid, reduce, jnd, jt, stats, true)?;
    let (ts, parts) = token_grid(&tp.geom, &TOKEN_STATS_NCHW, &TOKEN_STATS_NTC, M_TOKEN_STATS, jnd.dt);
    if parts > FJ_CHAIN_MAX_PARTS as u64 {
        let sp = StepPtrs { token_tol: jt.as_const(), sum_sq: stats.sum_sq(), perm: DevPtr::null(), steps };
        let sa = step_alloc_params(&sp, grid.tokens(), budget, strategy, 1.0)?;
        let q = quant_params(grid, p, bits, histogram, stats)?;
        let (qk, q_blocks) = token_grid(&q.geom, &QUANTIZE_NCHW, &QUANTIZE_NTC, quantize_module(bits, histogram), dt);
        let sa_blocks = (grid.tokens() as u64).div_ceil(BLOCK as u64);
        let zero = Plan { steps: vec![Step::Zero(stats)] };
        return Ok(zero.then(ts, Params::TokenStats(tp), parts).then(STEP_ALLOC, Params::StepAlloc(sa), sa_blocks).then(
            qk,
            Params::Quantize(q),
            q_blocks,
        ));
    }
    let partials = ws.slot::<f64>(chain_partials_at(bits, grid.tokens()));
    // The token-stats launch writes its partials (two slots a block) instead of accumulating, and
    // clears the quantizer's cells (everything past the chain's two token-stats cells).
    let zero = stats.sub(Q_BAD_X, stats.len - Q_BAD_X)?;
    let tp = FjTokenStatsParams {
        sum_sq: 0,
        bad_index: 0,
        partials: partials.addr(),
        zero: zero.base.addr(),
        zero_count: zero.len as u32,
        ..tp
    };
    let q = quant_params(grid, p, bits, histogram, stats)?;
    let c = FjQuantizeChainParams {
        q,
        token_tol: jt.addr(),
        partials: partials.addr(),
        sum_sq_out: stats.slot::<f64>(T_SUM_SQ).addr(),
        bad_jnd_out: stats.slot::<u64>(T_BAD_J).addr(),
        budget,
        beta: 1.0,
        nparts: parts as u32,
        strategy: if strategy == Strategy::Uniform { FJ_STRATEGY_UNIFORM } else { FJ_STRATEGY_JND },
    };
    let m = quantize_module(bits, histogram);
    let (qk, blocks) = token_grid(&q.geom, &QUANTIZE_CHAIN_NCHW, &QUANTIZE_CHAIN_NTC, m, dt);
    // The quantizer's grid is the token-stats grid (same tokens per block for each layout).
    debug_assert_eq!(blocks, parts);
    Ok(Plan::one(ts, Params::TokenStats(tp), parts).then(qk, Params::Chain(c), blocks))
}

/// One item of a batched quantization: its grid, pointers and its own statistics slots.
#[derive(Clone, Copy, Debug)]
pub struct BatchItem {
    pub grid: TokenGrid,
    pub p: QuantPtrs,
    pub stats: StatsBuf,
}

/// Plans a batch of independent quantizations of one dtype and `bits`: one launch per
/// [`FJ_BATCH_MAX`] items, the descriptor table passed by value (no upload, capturable). Each
/// item's results (outputs and statistics) are those of its own [`quantize`] bit for bit.
///
/// # Launching
/// For every item, what [`quantize`] requires of its pointers and statistics.
pub fn quantize_batch(dt: Dtype, items: &[BatchItem], bits: Bits, histogram: bool) -> Result<Plan> {
    let m = quantize_module(bits, histogram);
    let mut plan = Plan::new();
    for chunk in items.chunks(FJ_BATCH_MAX as usize) {
        let mut b = Box::new(FjQuantizeBatchParams { count: chunk.len() as u32, ..Default::default() });
        let mut blocks = 0u64;
        for (i, it) in chunk.iter().enumerate() {
            b.items[i] = quant_params(&it.grid, &it.p, bits, histogram, it.stats)?;
            // `cfg` refuses a grid of 2^31 blocks or more before the launch, so a start that does
            // not fit in u32 is never used.
            b.block_start[i] = u32::try_from(blocks).unwrap_or(u32::MAX);
            blocks += token_grid(&b.items[i].geom, &QUANTIZE_NCHW, &QUANTIZE_NTC, m, dt).1;
        }
        plan = plan.then(QUANTIZE_BATCH.at(m, dt), Params::QuantizeBatch(b), blocks);
    }
    Ok(plan)
}

/// The bad-element cell an op's typed error corresponds to (the CPU path of the async calls
/// records a `NonFinite` or `Jnd` error this way, so that decoding finds it where a kernel puts it).
pub fn bad_of_error(e: &Error) -> Option<BadElement> {
    match *e {
        Error::NonFinite { index, .. } => Some(BadElement { input: Input::X, index }),
        Error::Jnd { index, .. } => Some(BadElement { input: Input::Jnd, index }),
        _ => None,
    }
}

/// Writes a quantization's statistics in the kernels' layout (the CPU path of the async calls:
/// one decoder, [`decode_quantize`], serves both). `s` must hold [`quantize_slots`] slots.
pub fn encode_quantize(s: &mut [i64], bad: Option<BadElement>, clamped: u64, total_sse: f64, histogram: Option<&[u64]>) {
    s.fill(0);
    match bad {
        Some(BadElement { input: Input::X, index }) => s[Q_BAD_X] = !(index as u64) as i64,
        Some(BadElement { input: Input::Jnd, index }) => s[T_BAD_J] = !(index as u64) as i64,
        Some(b) => s[Q_BAD_STEP] = step_key(b),
        None => {}
    }
    s[Q_CLAMP] = clamped as i64;
    s[Q_SSE] = total_sse.to_bits() as i64;
    if let Some(h) = histogram {
        s[Q_HIST..Q_HIST + h.len()].iter_mut().zip(h).for_each(|(d, &v)| *d = v as i64);
    }
}

/// Writes a perturbation's statistics in the kernels' layout (see [`encode_quantize`]). The CPU
/// keeps no norms: a sample's `Σx²` slot holds 0 for a zero sample and 1 otherwise, which is all
/// [`decode_perturb`] reads from it. `s` must hold [`perturb_slots`] slots.
pub fn encode_perturb(s: &mut [i64], bad: Option<BadElement>, report: &PerturbReport) {
    s.fill(0);
    match bad {
        Some(BadElement { input: Input::X, index }) => s[P_BAD_X] = !(index as u64) as i64,
        Some(BadElement { input: Input::Jnd, index }) => s[P_BAD_J] = !(index as u64) as i64,
        // A perturbation has no steps and no token tolerances (`bad_of_error` never makes them).
        Some(_) | None => {}
    }
    let samples = report.scales.len();
    for n in 0..samples {
        let sx = if report.zero_samples.contains(&n) { 0.0f64 } else { 1.0 };
        s[P_NORMS + 2 * n] = sx.to_bits() as i64;
        let packed = &mut s[p_scales(samples) + n / 2];
        *packed |= ((report.scales[n].to_bits() as u64) << (32 * (n % 2))) as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizer_constants_match_the_header() {
        // Bits lives in geom.rs (plain fns, so no const assert there): it must agree with the kernels.
        assert_eq!(Bits::B8.qmax(), FJ_QMAX_B8 as f32);
        assert_eq!(Bits::B16.qmax(), FJ_QMAX_B16 as f32);
        assert_eq!(Bits::B8.hist_bins(), FJ_HIST_BINS_B8 as usize);
        assert_eq!(Bits::B16.hist_bins(), FJ_HIST_BINS_B16 as usize);
        assert_eq!(Bits::B16.bin(FJ_HIST_RANGE_B16 as i32 + 1), FJ_HIST_BINS_B16 as usize - 1);
        assert_eq!(Bits::B8.bin(-(FJ_QMAX_B8 as i32)), 0);
    }

    #[test]
    fn the_two_launch_chain_fits_its_workspace() {
        // For every size on both sides of the boundary: the token-stats grid (= the chain
        // quantizer's grid) decides the form; where it is the two-launch one, the partials (two
        // slots a block) lie past the statistics and the j_t scratch and inside the workspace.
        use crate::geom::FeatureShape;
        let shapes = [
            FeatureShape::nchw(1, 1, 1, 1),
            FeatureShape::nchw(2, 7, 5, 3),
            FeatureShape::nchw(1, 8, 128, 128),
            FeatureShape::nchw(1, 8, 128, 129),
            FeatureShape::nchw(3, 17, 61, 97),
            FeatureShape::ntc(1, 1, 1),
            FeatureShape::ntc(3, 33, 1025),
            FeatureShape::ntc(1, 4096, 16),
            FeatureShape::ntc(1, 4097, 16),
            FeatureShape::ntc(2, 5137, 3),
        ];
        let mut forms = [0usize; 2];
        for shape in shapes {
            let g = TokenGrid::new(shape, 1).unwrap().to_params();
            let (ts, parts) = token_grid(&g, &TOKEN_STATS_NCHW, &TOKEN_STATS_NTC, M_TOKEN_STATS, Dtype::F32);
            let (qk, blocks) = token_grid(&g, &QUANTIZE_CHAIN_NCHW, &QUANTIZE_CHAIN_NTC, quantize_module(Bits::B8, true), Dtype::F32);
            assert_eq!(parts, blocks, "{shape:?}: the chain's two grids differ");
            assert!(ts.name.starts_with("fj_token_stats_") && qk.name.starts_with("fj_quantize_chain_"));
            let t = g.tokens as usize;
            for bits in [Bits::B8, Bits::B16] {
                let at = chain_partials_at(bits, t);
                assert!(at >= quantize_slots(bits, true) + t.div_ceil(2), "{shape:?}: partials over the scratch");
                if parts <= FJ_CHAIN_MAX_PARTS as u64 {
                    assert!(at + 2 * parts as usize <= jnd_chain_slots(bits, t), "{shape:?} {bits:?}: partials past the workspace");
                }
            }
            forms[usize::from(parts <= FJ_CHAIN_MAX_PARTS as u64)] += 1;
        }
        assert_eq!(forms, [4, 6], "both forms covered");
    }

    #[test]
    fn statistics_layouts_do_not_overlap() {
        let mut s = vec![0i64; quantize_slots(Bits::B8, true)];
        s[T_BAD_J] = !5;
        s[Q_BAD_X] = !7;
        let (bad, q) = decode_quantize(&s, Bits::B8, true);
        assert_eq!(bad, Some(BadElement { input: Input::Jnd, index: 5 }));
        assert_eq!(q.histogram.unwrap().len(), 255);
        s[T_BAD_J] = 0;
        assert_eq!(decode_quantize(&s, Bits::B8, false).0, Some(BadElement { input: Input::X, index: 7 }));
        let mut p = vec![0i64; perturb_slots(3)];
        p[P_BAD_J] = !1;
        p[p_scales(3) + 1] = 2.5f32.to_bits() as i64;
        let (bad, rep) = decode_perturb(&p, 3);
        assert_eq!(bad, Some(BadElement { input: Input::Jnd, index: 1 }));
        assert_eq!(rep.scales, vec![0.0, 0.0, 2.5]);
        assert_eq!(rep.zero_samples, vec![0, 1, 2]);
    }

    #[test]
    fn bad_step_keys_decode_in_the_cpus_order() {
        let mut s = vec![0i64; quantize_slots(Bits::B8, false)];
        let step = BadElement { input: Input::Step((-1.5f32).to_bits()), index: 9 };
        encode_quantize(&mut s, Some(step), 0, 0.0, None);
        assert_eq!(decode_quantize(&s, Bits::B8, false).0, Some(step));
        assert_eq!(step.error(f32::NAN).to_string(), crate::cpu::step_error(9, -1.5).to_string());
        // A bad x as well: the step is reported (the CPU checks steps before any element).
        s[Q_BAD_X] = !3;
        assert_eq!(decode_quantize(&s, Bits::B8, false).0, Some(step));
        // The kernels keep the largest key: a j_t outranks every step, the smaller token wins.
        let key = |input, index| step_key(BadElement { input, index }) as u64;
        let inf = f32::INFINITY.to_bits();
        assert!(key(Input::TokenTol(0), 70) > key(Input::Step(inf), 0));
        assert!(key(Input::Step(inf), 2) > key(Input::Step(0), 9));
        assert!(key(Input::TokenTol(0), 0) > key(Input::TokenTol(0), 1));
        assert!(key(Input::Step(0), i32::MAX as usize - 1) > 0, "a key is never the empty cell");
        let jt = BadElement { input: Input::TokenTol(0f32.to_bits()), index: 70 };
        s[Q_BAD_STEP] = step_key(jt);
        assert_eq!(decode_quantize(&s, Bits::B8, false).0, Some(jt));
        assert!(matches!(jt.error(f32::NAN), Error::Jnd { index: 70, value } if value == 0.0));
        // A bad J is found first of all.
        s[T_BAD_J] = !4;
        assert_eq!(decode_quantize(&s, Bits::B8, false).0, Some(BadElement { input: Input::Jnd, index: 4 }));
    }

    #[test]
    fn cpu_encoding_decodes_like_the_kernels() {
        let mut s = vec![7i64; quantize_slots(Bits::B8, true)];
        let h: Vec<u64> = (0..255).collect();
        encode_quantize(&mut s, Some(BadElement { input: Input::X, index: 12 }), 3, 1.5, Some(&h));
        let (bad, q) = decode_quantize(&s, Bits::B8, true);
        assert_eq!((bad, q.clamped, q.total_sse), (Some(BadElement { input: Input::X, index: 12 }), 3, 1.5));
        assert_eq!(q.histogram.unwrap(), h);
        encode_quantize(&mut s, bad_of_error(&Error::Jnd { index: 4, value: 0.0 }), 0, 0.0, None);
        assert_eq!(decode_quantize(&s, Bits::B8, false).0, Some(BadElement { input: Input::Jnd, index: 4 }));
        let rep = PerturbReport { scales: vec![0.5, 0.0, -2.0], zero_samples: vec![1] };
        let mut p = vec![-1i64; perturb_slots(3)];
        encode_perturb(&mut p, None, &rep);
        assert_eq!(decode_perturb(&p, 3), (None, rep));
        assert_eq!(bad_of_error(&Error::Nrmse(-1.0)), None);
        // Statistics, j_t two a slot, two partial slots per token-stats block (NTC: 8 tokens a
        // block, the larger count), at most FJ_CHAIN_MAX_PARTS blocks' worth.
        assert_eq!(jnd_chain_slots(Bits::B8, 5), quantize_slots(Bits::B8, true) + 3 + 2);
        assert_eq!(jnd_chain_slots(Bits::B16, 1024), quantize_slots(Bits::B16, true) + 512 + 2 * 128);
        let big = 8 * FJ_CHAIN_MAX_PARTS as usize + 1;
        assert_eq!(jnd_chain_slots(Bits::B8, big), quantize_slots(Bits::B8, true) + big.div_ceil(2) + 2 * FJ_CHAIN_MAX_PARTS as usize);
    }

    #[test]
    fn capped_layout_and_decoding() {
        // The token RMS's slots are the prefix of a capped allocation's.
        let mut s = vec![0i64; CAPPED_SLOTS];
        assert_eq!(decode_capped(&s), CappedStats { bad: None, max_rms: 0.0, scales: (0.0, 0.0) });
        s[R_MAX] = 2.5f32.to_bits() as i64;
        s[CA_SCALES] = f64::INFINITY.to_bits() as i64;
        s[CA_SCALES + 1] = 1.25f64.to_bits() as i64;
        s[CA_BAD_C] = !4;
        s[CA_BAD_J] = !9;
        let d = decode_capped(&s);
        assert_eq!((d.max_rms, d.scales), (2.5, (f64::INFINITY, 1.25)));
        // The CPU's order: x, then the zero feature, then j_t, then the caps.
        assert_eq!(d.bad, Some(CappedBad::TokenTol(9)));
        s[CA_STATUS] = FJ_CAPPED_ZERO_FEATURE as i64;
        assert_eq!(decode_capped(&s).bad, Some(CappedBad::ZeroFeature));
        s[R_BAD_X] = !0;
        assert_eq!(decode_capped(&s).bad, Some(CappedBad::X(0)));
        assert_eq!(decode_capped(&s[..TOKEN_RMS_SLOTS]).bad, Some(CappedBad::X(0)));
        s.fill(0);
        s[CA_BAD_C] = !7;
        assert_eq!(decode_capped(&s).bad, Some(CappedBad::Cap(7)));
        // Sub-buffers stay inside their parent.
        let b = StatsBuf::new(DevPtrMut::from_addr(0x1000), 10);
        let sub = b.sub(3, CAPPED_SLOTS).unwrap();
        assert_eq!((sub.base.addr(), sub.len()), (0x1000 + 24, CAPPED_SLOTS));
        assert!(b.sub(4, CAPPED_SLOTS).is_err() && b.sub(usize::MAX, 2).is_err());
        assert!(
            check_kappa(2.0).is_ok() && check_kappa(0.0).is_err() && check_kappa(f32::NAN).is_err() && check_kappa(f32::INFINITY).is_err()
        );
        assert!(matches!(tokens_u32(0), Err(Error::Empty(_))) && tokens_u32(1 << 31).is_err() && tokens_u32(5).is_ok());
    }

    #[test]
    fn grids_and_kernel_names() {
        assert_eq!(cfg(0).unwrap().grid_dim.0, 1);
        assert!(cfg(1 << 31).is_err());
        let mut g = FjTokenGeom { layout: FJ_LAYOUT_NCHW, tokens: 33, ..Default::default() };
        let m = quantize_module(Bits::B16, true);
        assert_eq!(m, super::super::compile::M_QUANTIZE + 3);
        assert_eq!(
            token_grid(&g, &QUANTIZE_NCHW, &QUANTIZE_NTC, m, Dtype::F16),
            (Kernel { module: m, index: 1, name: "fj_quantize_nchw_f16" }, 2)
        );
        g.layout = FJ_LAYOUT_NTC;
        assert_eq!(
            token_grid(&g, &QUANTIZE_NCHW, &QUANTIZE_NTC, m, Dtype::Bf16),
            (Kernel { module: m, index: 5, name: "fj_quantize_ntc_bf16" }, 5)
        );
    }

    #[test]
    fn every_launched_kernel_exists_in_its_file() {
        if !super::super::compile::nvrtc_present() {
            eprintln!("SKIP: no NVRTC");
            return;
        }
        let all = super::super::compile::compile_all("compute_80").unwrap();
        for k in kernel_names() {
            assert!(
                all[k.module].ptx.contains(&format!(".entry {}(", k.name)),
                "{} has no kernel {}",
                super::super::compile::MODULES[k.module].label(),
                k.name
            );
        }
    }
}
