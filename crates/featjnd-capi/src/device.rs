//! The C ABI's CUDA path: the same ops on raw device pointers of the context's device, enqueued on
//! the caller's stream (`NULL` = the legacy default stream), through the kernel library's
//! `cuda::raw` (parameters, grids, statistics and error mapping live there, shared with the tensor
//! API). Temporaries (the statistics buffer) are stream-ordered cudarc allocations on that stream,
//! so nothing here touches torch's stream or allocator. Each call returns once its statistics are
//! back on the host (one stream sync); the outputs are then complete too.
//!
//! Before any launch, every pointer is checked with the driver: it must be device (or managed)
//! memory of this context's device, and its allocation must hold the bytes the op will touch.
//! A host pointer or a too-short buffer is `FJ_ERR_ARG`, never an illegal-address fault. The
//! check cannot prove a pointer valid (memory freed into a pool, memory another stream is
//! writing), so the methods stay `unsafe fn`s under the C caller's contract.
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys;
use cudarc::driver::CudaStream;

use super::{Fail, FJ_ERR_DEVICE, R};
use featjnd_kernels::call::Cuda;
use featjnd_kernels::cpu::perturb::NoiseSpec;
use featjnd_kernels::cuda::raw::{self, DevPtr, DevPtrMut, Elems, Launch, PerturbPtrs, QuantPtrs, StatsBuf};
use featjnd_kernels::cuda::Device;
use featjnd_kernels::element::Dtype;
use featjnd_kernels::error::Error;
use featjnd_kernels::geom::{Bits, Reduce, Strategy, TokenGrid};

fn dev_err(e: impl std::fmt::Debug) -> Fail {
    Fail(FJ_ERR_DEVICE, format!("CUDA error: {e:?}"))
}

/// The arrays of one `fj_perturb` call, typed for the launcher (no access: addresses only).
pub(super) fn perturb_ptrs(dt: Dtype, x: *const c_void, jnd: *const c_void, out: *mut c_void, numel: usize, samples: usize) -> PerturbPtrs {
    PerturbPtrs { dt, x: DevPtr::from_raw(x), jnd: DevPtr::from_raw(jnd), out: DevPtrMut::from_raw(out), numel, samples }
}

/// The pointers of one `fj_quantize` call, typed for the launcher (no access: addresses only).
pub(super) fn quant_ptrs(x: *const c_void, steps: *const f32, symbols: *mut c_void, recon: *mut c_void, token_sse: *mut f32) -> QuantPtrs {
    QuantPtrs {
        x: DevPtr::from_raw(x),
        steps: DevPtr::from_raw(steps),
        symbols: DevPtrMut::from_raw(symbols),
        recon: DevPtrMut::from_raw(recon),
        token_sse: DevPtrMut::from_raw(token_sse),
    }
}

/// The device a context runs on.
pub(super) struct Gpu {
    dev: Arc<Device>,
    /// `FJ_POINTERS_TRUSTED`: [`Gpu::check`] does not ask the driver.
    trusted: bool,
}

impl Gpu {
    pub fn new(ordinal: usize, trusted: bool) -> Result<Gpu, Error> {
        featjnd_kernels::cuda::available()?;
        Ok(Gpu { dev: Device::get(ordinal)?, trusted })
    }

    pub fn ordinal(&self) -> usize {
        self.dev.ctx.ordinal()
    }

    /// The caller's stream, borrowed.
    ///
    /// # Safety
    /// `raw` is null (the legacy default stream) or a live stream of this context's device that
    /// outlives the call.
    unsafe fn stream(&self, raw: *mut c_void) -> R<Arc<CudaStream>> {
        self.dev.ctx.bind_to_thread().map_err(dev_err)?;
        // SAFETY: a live stream of this device (or null) that outlives the call (contract); the
        // wrapper is dropped before the call returns and never destroys the stream.
        Ok(unsafe { self.dev.ctx.wrap_borrowed_stream(raw as sys::CUstream) })
    }

    /// `p` must be device memory of this device with `bytes` bytes from `p` inside its allocation
    /// (asked of the driver, unless the context trusts its caller's pointers). Binds the context
    /// to this thread either way.
    pub fn check(&self, p: *const c_void, bytes: usize, what: &str) -> R<()> {
        self.dev.ctx.bind_to_thread().map_err(dev_err)?;
        if self.trusted {
            return Ok(());
        }
        Ok(featjnd_kernels::call::cuda::check_device_pointer(self.ordinal(), p as usize, bytes, what)?)
    }

    /// The core's executor on the caller's stream, with this context's pointer checks.
    ///
    /// # Safety
    /// `stream` is null or a live stream of this device that outlives the executor.
    pub unsafe fn executor(&self, stream: *mut c_void) -> R<Cuda> {
        // SAFETY: this fn's contract.
        Ok(unsafe { Cuda::borrowed(self.ordinal(), stream, !self.trusted) }?)
    }

    // ---- the sync-free calls: enqueue on the caller's stream, statistics in the caller's memory ----

    /// Checks the caller's statistics array and enqueues its zeroing (a memset node).
    ///
    /// # Safety
    /// `stats` is device memory of this device for `slots` i64 (checked here with the driver);
    /// `on`'s stream is the call's.
    unsafe fn zeroed_stats(&self, on: Launch, stats: *mut i64, slots: usize) -> R<StatsBuf> {
        self.check(stats as *const c_void, slots * 8, "stats")?;
        let view = StatsBuf::new(DevPtrMut::from_raw(stats), slots);
        // SAFETY: device memory of this device with `slots` i64 (contract, checked above).
        unsafe { raw::zero_stats(on, view)? };
        Ok(view)
    }

    /// Like [`Gpu::quantize`] with the histogram always counted, its statistics in the caller's
    /// `stats[slots]`: enqueued only.
    ///
    /// # Safety
    /// As [`Gpu::quantize`], and `stats` device memory of this device for `slots` i64 overlapping
    /// nothing else.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn quantize_async(
        &self,
        dt: Dtype,
        g: &TokenGrid,
        p: &QuantPtrs,
        bits: Bits,
        stats: *mut i64,
        slots: usize,
        stream: *mut c_void,
    ) -> R<()> {
        self.check_quant(dt, g, p, bits)?;
        // SAFETY: null or a live stream of this device (contract).
        let s = unsafe { self.stream(stream)? };
        let on = Launch { dev: &self.dev, stream: &s };
        // SAFETY: `stats` as the contract says (checked with the driver inside).
        let view = unsafe { self.zeroed_stats(on, stats, slots)? };
        // SAFETY: every non-null pointer is device memory of this device with the bytes the kernel
        // touches (contract, checked with the driver); the aliasing rule was checked by the caller;
        // the statistics were zeroed just above on the same stream.
        unsafe { raw::quantize(on, dt, g, p, bits, true, view)? };
        Ok(())
    }

    /// The fused chain on device pointers, enqueued only (see `raw::quantize_with_jnd`).
    ///
    /// # Safety
    /// As [`Gpu::quantize_async`], with `jnd` holding `g.numel()` elements of `dj` and `p.steps`
    /// (written here) room for `g.tokens()` floats, overlapping nothing else.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn quantize_with_jnd_async(
        &self,
        g: &TokenGrid,
        jnd: *const c_void,
        dj: Dtype,
        reduce: Reduce,
        budget: f64,
        strategy: Strategy,
        dt: Dtype,
        p: &QuantPtrs,
        bits: Bits,
        stats: *mut i64,
        slots: usize,
        stream: *mut c_void,
    ) -> R<()> {
        self.check_quant(dt, g, p, bits)?;
        self.check(jnd, g.numel() * dj.size(), "jnd->data")?;
        // SAFETY: null or a live stream of this device (contract).
        let s = unsafe { self.stream(stream)? };
        let on = Launch { dev: &self.dev, stream: &s };
        self.check(stats as *const c_void, slots * 8, "stats")?;
        // The chain clears what it accumulates into itself (no memset of the caller's array).
        let ws = StatsBuf::new(DevPtrMut::from_raw(stats), slots);
        let j = Elems { ptr: DevPtr::from_raw(jnd), dt: dj };
        let steps = DevPtrMut::from_addr(p.steps.addr());
        // SAFETY: every pointer is device memory of this device with the bytes the kernels touch
        // (contract, checked with the driver); the aliasing rule was checked by the caller.
        unsafe { raw::quantize_with_jnd(on, dt, g, j, reduce, budget, strategy, p, steps, bits, true, ws)? };
        Ok(())
    }

    /// Like [`Gpu::perturb`] with its statistics in the caller's `stats[slots]`: enqueued only.
    ///
    /// # Safety
    /// As [`Gpu::perturb`] (without `scales`), and `stats` device memory of this device for
    /// `slots` i64 overlapping nothing else.
    pub unsafe fn perturb_async(
        &self,
        a: &PerturbPtrs,
        nrmse: f64,
        noise: NoiseSpec,
        stats: *mut i64,
        slots: usize,
        stream: *mut c_void,
    ) -> R<()> {
        self.check_perturb(a)?;
        // SAFETY: null or a live stream of this device (contract).
        let s = unsafe { self.stream(stream)? };
        let on = Launch { dev: &self.dev, stream: &s };
        // SAFETY: `stats` as the contract says (checked with the driver inside).
        let view = unsafe { self.zeroed_stats(on, stats, slots)? };
        // SAFETY: `x`, `jnd` and `out` are device memory of this device with `numel` elements
        // (contract, checked above); the aliasing rule was checked by the caller; the statistics
        // were zeroed just above on the same stream.
        unsafe { raw::perturb(on, a, nrmse, noise, view)? };
        Ok(())
    }

    /// A batch of quantizations on device pointers, enqueued only: every item's pointers checked
    /// as [`Gpu::quantize_async`] checks them (the message names the item), the caller's
    /// `stats[per · items]` zeroed (one memset), then one launch per `FJ_BATCH_MAX` items; item `i`'s
    /// statistics are the `per` slots from `i · per`.
    ///
    /// # Safety
    /// As [`Gpu::quantize_async`] for every item, no item's output overlapping another item's
    /// arrays; `stats` device memory of this device for `per · items.len()` i64 overlapping
    /// nothing else.
    pub unsafe fn quantize_batch_async(
        &self,
        dt: Dtype,
        items: &[(TokenGrid, QuantPtrs)],
        bits: Bits,
        stats: *mut i64,
        per: usize,
        stream: *mut c_void,
    ) -> R<()> {
        for (i, (g, p)) in items.iter().enumerate() {
            self.check_quant(dt, g, p, bits).map_err(|f| f.in_item(i))?;
        }
        // SAFETY: null or a live stream of this device (contract).
        let s = unsafe { self.stream(stream)? };
        let on = Launch { dev: &self.dev, stream: &s };
        // SAFETY: `stats` as the contract says (checked with the driver inside).
        let view = unsafe { self.zeroed_stats(on, stats, per * items.len())? };
        let batch = items
            .iter()
            .enumerate()
            .map(|(i, &(grid, p))| Ok(raw::BatchItem { grid, p, stats: view.sub(i * per, per)? }))
            .collect::<Result<Vec<_>, Error>>()?;
        // SAFETY: every non-null pointer is device memory of this device with the bytes the kernel
        // touches (contract, checked with the driver above); the aliasing rule, within and across
        // items, was checked by the caller; the statistics were zeroed just above on the same
        // stream, each item owning its own slots.
        unsafe { raw::quantize_batch(on, dt, &batch, bits, true)? };
        Ok(())
    }

    /// A batch of perturbations on device pointers, enqueued only: every item (arrays, NRMSE,
    /// noise, the offset of its statistics) checked as [`Gpu::perturb_async`] checks it, the
    /// caller's `stats[total]` zeroed (one memset), then two launches per `FJ_BATCH_MAX` items.
    ///
    /// # Safety
    /// As [`Gpu::perturb_async`] for every item, no item's output overlapping another item's
    /// arrays; `stats` device memory of this device for `total` i64 overlapping nothing else, each
    /// item's `perturb_slots(samples)` slots from its offset inside it and disjoint from the others'.
    pub unsafe fn perturb_batch_async(
        &self,
        dt: Dtype,
        items: &[(PerturbPtrs, f64, NoiseSpec, usize)],
        stats: *mut i64,
        total: usize,
        stream: *mut c_void,
    ) -> R<()> {
        for (i, (a, ..)) in items.iter().enumerate() {
            self.check_perturb(a).map_err(|f| f.in_item(i))?;
        }
        // SAFETY: null or a live stream of this device (contract).
        let s = unsafe { self.stream(stream)? };
        let on = Launch { dev: &self.dev, stream: &s };
        // SAFETY: `stats` as the contract says (checked with the driver inside).
        let view = unsafe { self.zeroed_stats(on, stats, total)? };
        let batch = items
            .iter()
            .map(|&(a, nrmse, noise, off)| Ok(raw::PerturbItem { a, nrmse, noise, stats: view.sub(off, raw::perturb_slots(a.samples))? }))
            .collect::<Result<Vec<_>, Error>>()?;
        // SAFETY: `x`, `jnd` and `out` of every item are device memory of this device with `numel`
        // elements (contract, checked above); the aliasing rule, within and across items, was
        // checked by the caller; the statistics were zeroed just above on the same stream, each
        // item owning its own slots.
        unsafe { raw::perturb_batch(on, dt, &batch)? };
        Ok(())
    }

    /// The pointer checks of a perturbation (x, out, J unless null).
    fn check_perturb(&self, a: &PerturbPtrs) -> R<()> {
        let bytes = a.numel * a.dt.size();
        self.check(a.x.addr() as _, bytes, "x->data")?;
        self.check(a.out.addr() as _, bytes, "out")?;
        if !a.jnd.is_null() {
            self.check(a.jnd.addr() as _, bytes, "jnd->data")?;
        }
        Ok(())
    }

    /// The pointer checks of a quantization (x, steps, the outputs).
    fn check_quant(&self, dt: Dtype, g: &TokenGrid, p: &QuantPtrs, bits: Bits) -> R<()> {
        let n = g.numel();
        self.check(p.x.addr() as _, n * dt.size(), "x->data")?;
        self.check(p.steps.addr() as _, g.tokens() * 4, "steps")?;
        let sym_size = if bits == Bits::B8 { 1 } else { 2 };
        for (ptr, bytes, what) in [
            (p.symbols.addr(), n * sym_size, "opts->symbols"),
            (p.recon.addr(), n * dt.size(), "opts->recon"),
            (p.token_sse.addr(), g.tokens() * 4, "opts->token_sse"),
        ] {
            if ptr != 0 {
                self.check(ptr as _, bytes, what)?;
            }
        }
        Ok(())
    }

    /// Copies `slots` statistics to the host on `stream` and synchronizes it.
    ///
    /// # Safety
    /// `stats` is device memory of this device for `slots` i64 (checked with the driver), written
    /// by work ordered before on `stream`; `stream` null or a live stream of this device.
    pub unsafe fn read_stats(&self, stats: *const i64, slots: usize, stream: *mut c_void) -> R<Vec<i64>> {
        self.check(stats as *const c_void, slots * 8, "stats")?;
        // SAFETY: null or a live stream of this device (contract).
        let s = unsafe { self.stream(stream)? };
        // SAFETY: `slots` i64 of device memory of this device (contract, checked above).
        Ok(unsafe { raw::read_stats(StatsBuf::new(DevPtrMut::from_raw(stats as *mut i64), slots), &s) }?)
    }

    /// The typed error of a bad element, its value copied from the device array `data`.
    ///
    /// # Safety
    /// `data` is device memory of this device holding element `b.index` of `dt`; `stream` null or
    /// a live stream of this device.
    pub unsafe fn bad_status(&self, b: raw::BadElement, data: *const c_void, dt: Dtype, stream: *mut c_void) -> R<()> {
        // SAFETY: null or a live stream of this device (contract).
        let s = unsafe { self.stream(stream)? };
        let e = Elems { ptr: DevPtr::from_raw(data), dt };
        let (x, j) = match b.input {
            raw::Input::X => (Some(e), None),
            raw::Input::Jnd => (None, Some(e)),
        };
        // SAFETY: the array holds element `b.index` (contract).
        Ok(unsafe { raw::check_bad(Some(b), x, j, &s) }?)
    }
}
