//! The CUDA executor: validated calls on one device and one stream (the caller's, torch's current
//! one, or the legacy default stream), through the launchers of [`crate::cuda::raw`]. One zeroed
//! statistics buffer per call, a stream-ordered cudarc allocation on that stream, and one stream
//! sync when the statistics come back. It replaces the device structs the tensor API, the C ABI
//! and the Python package each had.
//!
//! With pointer checks on (the C ABI's default), every array is first described by the driver:
//! it must be device (or managed) memory of this device whose allocation holds the bytes the op
//! touches, so a host pointer or a short buffer is `Error::Arg` instead of an illegal-address
//! fault. Torch and DLPack producers own their allocations, so the other surfaces skip it.
//!
//! NOT RUN YET on a GPU in this form (no device was lent when it was written); the kernels it
//! launches are the ones the CPU emulation tier (`crates/featjnd-emu`) runs.
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::result as cu;
use cudarc::driver::sys::{self, CUdeviceptr, CUmemorytype, CUpointer_attribute, CUresult};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::buf::{Buf, Elem, Mem};
use super::capped::{CappedArgs, CappedCall, CappedMeasuredCall, CapsCall};
use super::chain::{ChainCall, StepRule};
use super::decode::{PerturbDecodeCall, QuantizeDecodeCall};
use super::noise::NoiseCall;
use super::perturb::{PerturbArgs, PerturbCall};
use super::quantize::{QuantizeArgs, QuantizeCall, QuantizeReport};
use super::steps::{AllocateCall, MeasuredCall};
use super::token_stats::{TokenStat, TokenStatsCall};
use crate::cpu::PerturbReport;
use crate::cuda::raw::{self, DevPtr, DevPtrMut, Elems, Launch, PerturbPtrs, QuantPtrs, StatsBuf, StepPtrs};
use crate::cuda::{cuda_err, Device};
use crate::error::{Error, Result};
use crate::geom::{Bits, Strategy, TokenGrid};
use crate::steps::Measured;

/// One device and one stream.
pub struct Cuda {
    dev: Arc<Device>,
    stream: Arc<CudaStream>,
    check_pointers: bool,
}

/// A zeroed statistics buffer on the executor's stream and its view for the launchers.
struct Stats {
    buf: CudaSlice<i64>,
    view: StatsBuf,
}

impl Cuda {
    /// Device `ordinal` and the caller's `stream` (null: the legacy default stream).
    ///
    /// # Safety
    /// `stream` is null or a live stream of device `ordinal`'s primary context that outlives the
    /// returned executor (which never destroys it).
    pub unsafe fn borrowed(ordinal: usize, stream: *mut c_void, check_pointers: bool) -> Result<Cuda> {
        crate::cuda::available()?;
        let dev = Device::get(ordinal)?;
        dev.ctx.bind_to_thread().map_err(cuda_err)?;
        // SAFETY: null or a live stream of this device that outlives the wrapper (this fn's
        // contract); a borrowed wrapper never destroys it.
        let stream = unsafe { dev.ctx.wrap_borrowed_stream(stream as sys::CUstream) };
        Ok(Cuda { dev, stream, check_pointers })
    }

    /// Torch's current stream on device `ordinal`, so the work is ordered with torch's.
    #[cfg(feature = "torch")]
    pub fn torch(ordinal: usize) -> Result<Cuda> {
        let dev = Device::get(ordinal)?;
        dev.ctx.bind_to_thread().map_err(cuda_err)?;
        let stream = dev.torch_stream();
        Ok(Cuda { dev, stream, check_pointers: false })
    }

    pub fn ordinal(&self) -> usize {
        self.dev.ctx.ordinal()
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn launch(&self) -> Launch<'_> {
        Launch { dev: &self.dev, stream: &self.stream }
    }

    /// Every array must be in this device's memory; with pointer checks, the driver must agree.
    pub(crate) fn check(&self, bufs: &[&Buf]) -> Result<()> {
        for b in bufs {
            if b.mem() != Mem::Cuda(self.ordinal()) {
                return Err(Error::MixedDevices(format!(
                    "{} is in {}; this executor runs on CUDA device {}",
                    b.name,
                    b.mem(),
                    self.ordinal()
                )));
            }
            if self.check_pointers {
                self.ask_driver(b)?;
            }
        }
        Ok(())
    }

    fn ask_driver(&self, b: &Buf) -> Result<()> {
        check_device_pointer(self.ordinal(), b.addr(), b.bytes(), b.name)
    }

    fn stats(&self, slots: usize) -> Result<Stats> {
        let buf = self.stream.alloc_zeros::<i64>(slots).map_err(cuda_err)?;
        // Event tracking is off (`Device::get`): the guard records nothing, the address is all.
        let base = buf.device_ptr(&self.stream).0;
        Ok(Stats { view: StatsBuf::new(DevPtrMut::from_addr(base), slots), buf })
    }

    fn read(&self, st: &Stats) -> Result<Vec<i64>> {
        let _live = &st.buf;
        // SAFETY: `st.view` describes `st.buf`, alive for this borrow, on `self.stream`, where
        // every kernel writing it was enqueued.
        unsafe { raw::read_stats(st.view, &self.stream) }
    }

    /// A validated f32 device array, copied to the host (ordered on the stream, then synced).
    fn f32_to_host(&self, b: &Buf) -> Result<Vec<f32>> {
        let mut v = vec![0f32; b.len()];
        // SAFETY: a checked array of `len` f32 on this device (validated call); `v` has room for
        // them; the synchronize below completes the copy before `v` is used or dropped.
        unsafe { cu::memcpy_dtoh_async(&mut v, b.addr() as u64, self.stream.cu_stream()) }.map_err(cuda_err)?;
        self.stream.synchronize().map_err(cuda_err)?;
        Ok(v)
    }

    /// A device array of a validated call, checked as every array of this executor is, copied
    /// to the host (ordered on the stream, then synced). `T` is the Rust type of its elements;
    /// `fill` only sizes the host copy.
    #[cfg(feature = "codec")]
    pub(crate) fn download<T: Clone>(&self, b: &Buf, fill: T) -> Result<Vec<T>> {
        self.check(&[b])?;
        debug_assert_eq!(size_of::<T>(), b.elem().size());
        let mut v = vec![fill; b.len()];
        // SAFETY: a checked array of `len` elements of `T`'s size on this device (validated call,
        // the driver's check); `v` has room for them; the synchronize below completes the copy
        // before `v` is used or dropped.
        unsafe { cu::memcpy_dtoh_async(&mut v, b.addr() as u64, self.stream.cu_stream()) }.map_err(cuda_err)?;
        self.stream.synchronize().map_err(cuda_err)?;
        Ok(v)
    }

    /// Host values copied into a writable device array of a validated call (ordered on the
    /// stream, then synced, so `v` may be dropped after).
    #[cfg(feature = "codec")]
    pub(crate) fn upload<T>(&self, b: &Buf, v: &[T]) -> Result<()> {
        self.check(&[b])?;
        if !b.writable() || v.len() != b.len() || size_of::<T>() != b.elem().size() {
            return Err(Error::Arg(format!("{}: {} values cannot be copied into it", b.name, v.len())));
        }
        // SAFETY: a checked writable array of `len` elements of `T`'s size on this device
        // (validated call, the driver's check), nothing else writing it (the call's contract);
        // the synchronize completes the copy before `v` can be dropped.
        unsafe { cu::memcpy_htod_async(b.addr() as u64, v, self.stream.cu_stream()) }.map_err(cuda_err)?;
        self.stream.synchronize().map_err(cuda_err)?;
        Ok(())
    }

    /// The quantization of a validated call. The `T` steps make one trip to the host first, where
    /// they are checked as on the CPU (contract §4.2), so every surface refuses a bad step with
    /// the same error and index.
    pub fn quantize(&self, c: &QuantizeCall) -> Result<QuantizeReport> {
        let (a, g) = (c.args(), c.grid());
        self.quant_check(a)?;
        crate::cpu::check_steps_values(&self.f32_to_host(&a.steps)?)?;
        let dt = a.x.float_dtype()?;
        let p = Self::quant_ptrs(a);
        let st = self.stats(raw::quantize_slots(a.bits, a.histogram))?;
        // SAFETY: every array is device memory of this device with the sizes the launch touches
        // (validated call; driver-checked where asked); outputs overlap no input and each other,
        // except recon == x in place (validated); fresh zeroed statistics on the same stream.
        unsafe { raw::quantize(dt, g, &p, a.bits, a.histogram, st.view)?.launch(self.launch())? };
        let (bad, q) = raw::decode_quantize(&self.read(&st)?, a.bits, a.histogram);
        // In place, x is overwritten: the message cannot show the bad value.
        let xs = (!c.in_place()).then(|| Elems { ptr: DevPtr::from_addr(a.x.addr() as u64), dt });
        // SAFETY: `x` holds every index the kernel can report; the stream was synced by `read`.
        unsafe { raw::check_bad(bad, xs, None, &self.stream) }?;
        self.copy_histogram(a, &q)?;
        Ok(QuantizeReport::finish(g, q))
    }
}

impl Cuda {
    /// The perturbation of a validated call. A bad element stops pass 2 from writing, so `x` is
    /// intact even in place; a scale beyond f32 is `Error::Overflow` after the write (§7.4).
    pub fn perturb(&self, c: &PerturbCall) -> Result<PerturbReport> {
        let a = c.args();
        self.perturb_check(a)?;
        let p = Self::perturb_ptrs(a)?;
        let dt = p.dt;
        let st = self.stats(raw::perturb_slots(a.samples))?;
        // SAFETY: `x`, `J` and `out` are device memory of this device with `numel` elements of
        // `dt` (validated call; driver-checked where asked); `out` is `x` or overlaps neither
        // input (validated); fresh zeroed statistics on the same stream.
        unsafe { raw::perturb(&p, a.nrmse, a.noise, st.view)?.launch(self.launch())? };
        let (bad, report) = raw::decode_perturb(&self.read(&st)?, a.samples);
        let elems = |b: &Buf| Elems { ptr: DevPtr::from_addr(b.addr() as u64), dt };
        // SAFETY: `x` and `J` hold every index the kernels can report; the stream was synced.
        unsafe { raw::check_bad(bad, Some(elems(&a.x)), a.jnd.as_ref().map(elems), &self.stream) }?;
        raw::check_scales(&report, a.nrmse)?;
        if let Some(s) = &a.scales_out {
            // SAFETY: a validated device output of `samples == report.scales.len()` f32 that
            // overlaps no other array; the copy is synchronous.
            unsafe { cu::memcpy_htod_sync(s.addr() as u64, &report.scales) }.map_err(cuda_err)?;
        }
        Ok(report)
    }
}

impl Cuda {
    /// Token tolerance or token RMS of a validated call into its device output.
    pub fn token_stats(&self, c: &TokenStatsCall) -> Result<()> {
        let (a, g) = (c.args(), c.grid());
        self.check(&[&a.input, &a.out])?;
        let dt = a.input.float_dtype()?;
        let input = Elems { ptr: DevPtr::from_addr(a.input.addr() as u64), dt };
        let out = DevPtrMut::from_addr(a.out.addr() as u64);
        match a.stat {
            TokenStat::Tolerance(reduce) => {
                let st = self.stats(raw::TOKEN_STATS_SLOTS)?;
                // SAFETY: `J` and the output are device memory of this device with `numel`
                // elements and `T` floats (validated; driver-checked where asked), disjoint;
                // fresh zeroed statistics on the same stream.
                unsafe { raw::token_stats(g, reduce, input, out, st.view, false)?.launch(self.launch())? };
                let bad = raw::decode_token_stats(&self.read(&st)?);
                // SAFETY: `J` holds every index the kernel can report; the stream was synced.
                unsafe { raw::check_bad(bad, None, Some(input), &self.stream) }
            }
            TokenStat::Rms => {
                let st = self.stats(raw::TOKEN_RMS_SLOTS)?;
                // SAFETY: as above, with `x` for `J`.
                unsafe { raw::token_rms(g, input, out, st.view)?.launch(self.launch())? };
                let s = raw::decode_capped(&self.read(&st)?);
                // SAFETY: `x` holds every index the kernel can report; the stream was synced.
                unsafe { raw::check_capped(s.bad, Some(input), DevPtr::null(), DevPtr::null(), &self.stream) }
            }
        }
    }
}

impl Cuda {
    /// Host values into a validated device array, ordered on the stream, then synced.
    fn f32_to_device(&self, b: &Buf, v: &[f32]) -> Result<()> {
        debug_assert_eq!(b.len(), v.len());
        // SAFETY: a checked writable array of `len == v.len()` f32 on this device that overlaps
        // no input (validated call); the synchronize completes the copy before `v` can go.
        unsafe { cu::memcpy_htod_async(b.addr() as u64, v, self.stream.cu_stream()) }.map_err(cuda_err)?;
        self.stream.synchronize().map_err(cuda_err)
    }

    /// Steps from device token tolerances: the `T` values are allocated on the host (§3).
    pub fn allocate(&self, c: &AllocateCall) -> Result<()> {
        let a = c.args();
        self.check(&[&a.token_tol, &a.out])?;
        let v = c.steps(&self.f32_to_host(&a.token_tol)?)?;
        self.f32_to_device(&a.out, &v)
    }

    /// The measured budget: every probe quantizes `x` on the device (statistics only) with the
    /// probe's steps copied to a scratch buffer.
    pub fn allocate_measured(&self, c: &MeasuredCall) -> Result<Measured> {
        let (a, g) = (c.args(), c.grid());
        self.check(&[&a.alloc.token_tol, &a.alloc.out, &a.x])?;
        let dt = a.x.float_dtype()?;
        let x = Elems { ptr: DevPtr::from_addr(a.x.addr() as u64), dt };
        let scratch = self.stream.alloc_zeros::<f32>(g.tokens()).map_err(cuda_err)?;
        let sp = scratch.device_ptr(&self.stream).0;
        let (m, v) = c.bisect(&self.f32_to_host(&a.alloc.token_tol)?, |steps| {
            // SAFETY: `scratch` holds `T == steps.len()` floats and is only used here; the copy
            // is ordered before the launch on the same stream, and `steps` outlives the sync in
            // the probe's `read`.
            unsafe { cu::memcpy_htod_async(sp, steps, self.stream.cu_stream()) }.map_err(cuda_err)?;
            self.probe_mse(x, g, a.bits, sp)
        })?;
        self.f32_to_device(&a.alloc.out, &v)?;
        Ok(m)
    }

    /// One probe of a measured budget: the MSE of quantizing the validated device feature `x`
    /// with the device steps at `steps` (written before on this stream), statistics only.
    fn probe_mse(&self, x: Elems, g: &TokenGrid, bits: Bits, steps: u64) -> Result<f64> {
        let p = QuantPtrs {
            x: x.ptr,
            steps: DevPtr::from_addr(steps),
            symbols: DevPtrMut::null(),
            recon: DevPtrMut::null(),
            token_sse: DevPtrMut::null(),
        };
        let st = self.stats(raw::quantize_slots(bits, false))?;
        // SAFETY: `x` is a validated device array of `numel` elements, the steps a device buffer
        // of `T` floats written before on the stream, no outputs; fresh zeroed statistics.
        unsafe { raw::quantize(x.dt, g, &p, bits, false, st.view)?.launch(self.launch())? };
        let (bad, q) = raw::decode_quantize(&self.read(&st)?, bits, false);
        // SAFETY: `x` holds every index the kernel can report; the stream was synced.
        unsafe { raw::check_bad(bad, Some(x), None, &self.stream) }?;
        Ok(q.mse(g.numel()))
    }

    /// Caps from device token RMS values.
    pub fn caps(&self, c: &CapsCall) -> Result<()> {
        let a = c.args();
        self.check(&[&a.rms, &a.out])?;
        let st = self.stats(raw::CAPPED_SLOTS)?;
        let (rms, out) = (DevPtr::from_addr(a.rms.addr() as u64), DevPtrMut::from_addr(a.out.addr() as u64));
        // SAFETY: validated device arrays of `T` floats each, disjoint; fresh zeroed statistics
        // on the same stream (the max kernel runs first: the maximum is not known).
        unsafe { raw::capped_caps(rms, a.rms.len(), a.kappa, false, out, st.view)?.launch(self.launch())? };
        let s = raw::decode_capped(&self.read(&st)?);
        // SAFETY: no array is read back (only the zero-feature status can be set here).
        unsafe { raw::check_capped(s.bad, None, DevPtr::null(), DevPtr::null(), &self.stream) }
    }

    /// Solves the capped scales on the device into fresh statistics (one sync); a bad `j_t` or
    /// cap is reported as on the CPU before any step is written.
    fn capped_solve(&self, a: &CappedArgs) -> Result<(Stats, DevPtr<f32>, DevPtr<f32>)> {
        self.check(&[&a.token_tol, &a.caps, &a.out])?;
        let st = self.stats(raw::CAPPED_SLOTS)?;
        let (j, c) = (DevPtr::from_addr(a.token_tol.addr() as u64), DevPtr::from_addr(a.caps.addr() as u64));
        // SAFETY: validated device arrays of `T` floats each; fresh zeroed statistics.
        unsafe { raw::capped_solve(j, c, a.token_tol.len(), a.budget, st.view)?.launch(self.launch())? };
        let s = raw::decode_capped(&self.read(&st)?);
        // SAFETY: `jt` and `caps` hold every index the solver can report; the stream is synced.
        unsafe { raw::check_capped(s.bad, None, j, c, &self.stream) }?;
        Ok((st, j, c))
    }

    /// Capped steps `min(f32(a·β)·j_t, f32(b·β)·c_t)` on the device.
    pub fn capped(&self, call: &CappedCall) -> Result<()> {
        let a = call.args();
        let (st, j, c) = self.capped_solve(a)?;
        let out = DevPtrMut::from_addr(a.out.addr() as u64);
        // SAFETY: validated device arrays, the output disjoint from both inputs; `st` holds the
        // solved scales, ordered before this launch, and lives past the sync below.
        unsafe { raw::capped_steps(j, c, a.token_tol.len(), a.beta, out, st.view)?.launch(self.launch())? };
        self.stream.synchronize().map_err(cuda_err)
    }

    /// Capped steps matched to the measured budget: solved once; each `β` is one steps launch
    /// into a scratch buffer and one probe quantization.
    pub fn capped_measured(&self, call: &CappedMeasuredCall) -> Result<Measured> {
        let (a, g) = (call.args(), call.grid());
        self.check(&[&a.x])?;
        let (st, j, c) = self.capped_solve(&a.capped)?;
        let x = Elems { ptr: DevPtr::from_addr(a.x.addr() as u64), dt: a.x.float_dtype()? };
        let t = g.tokens();
        let scratch = self.stream.alloc_zeros::<f32>(t).map_err(cuda_err)?;
        let sp = scratch.device_ptr(&self.stream).0;
        let m = crate::steps::bisect_beta(a.capped.budget, |beta| {
            // SAFETY: `scratch` is ours with `T` floats; `st` holds the solved scales; the probe
            // reads the steps after this launch in stream order and syncs before the next.
            unsafe { raw::capped_steps(j, c, t, beta, DevPtrMut::from_addr(sp), st.view)?.launch(self.launch())? };
            self.probe_mse(x, g, a.bits, sp)
        })?;
        let out = DevPtrMut::from_addr(a.capped.out.addr() as u64);
        // SAFETY: a validated device output of `T` floats, disjoint from the inputs; `st` and
        // `scratch` live past the sync below.
        unsafe { raw::capped_steps(j, c, t, m.beta, out, st.view)?.launch(self.launch())? };
        self.stream.synchronize().map_err(cuda_err)?;
        Ok(m)
    }
}

impl Cuda {
    /// A device scratch array of `n` values of `T`, zeroed, on the stream, and its address.
    fn scratch<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, n: usize) -> Result<(CudaSlice<T>, u64)> {
        let s = self.stream.alloc_zeros::<T>(n.max(1)).map_err(cuda_err)?;
        let p = s.device_ptr(&self.stream).0;
        Ok((s, p))
    }

    /// A fused chain of a validated call, by its step rule.
    pub fn chain(&self, c: &ChainCall) -> Result<QuantizeReport> {
        let (x, j) = self.chain_inputs(c.quantize(), &c.args().jnd)?;
        match c.args().rule {
            StepRule::Strategy(s) => self.strategy_chain(c, s, x, j),
            StepRule::Capped { kappa } => self.capped_chain(c, kappa, x, j),
        }
    }

    /// A chain's `x` and `J` as the launchers take them, after the device checks of every array.
    fn chain_inputs(&self, q: &QuantizeCall, jnd: &Buf) -> Result<(Elems, Elems)> {
        self.quant_check(q.args())?;
        self.check(&[jnd])?;
        let elems = |b: &Buf| -> Result<Elems> { Ok(Elems { ptr: DevPtr::from_addr(b.addr() as u64), dt: b.float_dtype()? }) };
        Ok((elems(&q.args().x)?, elems(jnd)?))
    }

    /// The JND-guided chain of a validated call: token stats of `J` (also reducing `Σ j²` into
    /// the statistics), the step allocation, the quantization; one sync at the end. The
    /// permutation of `Strategy::Permuted` is made on the host and uploaded once.
    fn strategy_chain(&self, c: &ChainCall, strategy: Strategy, x: Elems, j: Elems) -> Result<QuantizeReport> {
        let (ca, a, g, dt) = (c.args(), c.quantize().args(), c.quantize().grid(), x.dt);
        let t = g.tokens();
        // The token stats reduce `Σ j²` into a slot the histogram's room holds: always room for it.
        let st = self.stats(raw::quantize_slots(a.bits, true))?;
        let (_jt, jt) = self.scratch::<f32>(t)?;
        let perm = match strategy {
            Strategy::Permuted { seed } => {
                let p = crate::philox::permutation(t, seed);
                let (keep, addr) = self.scratch::<u32>(t)?;
                // SAFETY: `addr` holds `T == p.len()` u32 (just allocated); the sync completes the
                // copy before `p` is dropped.
                unsafe { cu::memcpy_htod_async(addr, &p, self.stream.cu_stream()) }.map_err(cuda_err)?;
                self.stream.synchronize().map_err(cuda_err)?;
                Some((keep, addr))
            }
            _ => None,
        };
        let sp = StepPtrs {
            token_tol: DevPtr::from_addr(jt),
            sum_sq: st.view.sum_sq(),
            perm: perm.as_ref().map_or(DevPtr::null(), |p| DevPtr::from_addr(p.1)),
            steps: DevPtrMut::from_addr(a.steps.addr() as u64),
        };
        // SAFETY: `J`, `x` and every output are device memory of this device with the sizes the
        // kernels touch (validated; driver-checked where asked), the steps kept apart from `x`,
        // `J` and the other outputs (validated); `jt` and `perm` are ours with `T` values; fresh
        // zeroed statistics; every launch is on this stream, so each reads what the previous one
        // wrote, and the scratch arrays live past the sync in `read`.
        unsafe {
            raw::token_stats(g, ca.reduce, j, DevPtrMut::from_addr(jt), st.view, true)?.launch(self.launch())?;
            raw::step_alloc(&sp, t, ca.budget, strategy, 1.0)?.launch(self.launch())?;
            raw::quantize(dt, g, &Self::quant_ptrs(a), a.bits, a.histogram, st.view)?.launch(self.launch())?;
        }
        let (bad, s) = raw::decode_quantize(&self.read(&st)?, a.bits, a.histogram);
        // SAFETY: `x` and `J` hold every index the kernels can report; the stream was synced.
        unsafe { raw::check_bad(bad, Some(x), Some(j), &self.stream) }?;
        self.copy_histogram(a, &s)?;
        Ok(QuantizeReport::finish(g, s))
    }

    /// The capped chain of a validated call: token stats of `J`, token RMS of `x`, the caps, the
    /// one-block solve, the steps, the quantization; one sync at the end, errors in the CPU's
    /// order (a bad `J`, a non-finite `x`, a zero feature, a bad `j_t` or cap, then the
    /// quantization's).
    fn capped_chain(&self, c: &ChainCall, kappa: f32, x: Elems, j: Elems) -> Result<QuantizeReport> {
        let (ca, a, g, dt) = (c.args(), c.quantize().args(), c.quantize().grid(), x.dt);
        let t = g.tokens();
        // One buffer: the quantization's slots (J's token stats first), then the allocation's.
        let qslots = raw::quantize_slots(a.bits, a.histogram);
        let st = self.stats(qslots + raw::CAPPED_SLOTS)?;
        let (qbuf, cbuf) = (st.view.sub(0, qslots)?, st.view.sub(qslots, raw::CAPPED_SLOTS)?);
        let (_s, scratch) = self.scratch::<f32>(3 * t)?;
        let (jt, rms, caps) = (scratch, scratch + 4 * t as u64, scratch + 8 * t as u64);
        let steps = DevPtrMut::from_addr(a.steps.addr() as u64);
        // SAFETY: `J`, `x` and every output are device memory of this device with the sizes the
        // kernels touch (validated; driver-checked where asked), the steps kept apart from the
        // rest (validated); `jt`, `rms` and `caps` are disjoint thirds of our scratch array;
        // `qbuf` and `cbuf` are disjoint zeroed slots of one buffer; every launch is on this
        // stream, and the scratch lives past the sync in `read`.
        unsafe {
            raw::token_stats(g, ca.reduce, j, DevPtrMut::from_addr(jt), qbuf, false)?.launch(self.launch())?;
            raw::token_rms(g, x, DevPtrMut::from_addr(rms), cbuf)?.launch(self.launch())?;
            raw::capped_caps(DevPtr::from_addr(rms), t, kappa, true, DevPtrMut::from_addr(caps), cbuf)?.launch(self.launch())?;
            raw::capped_solve(DevPtr::from_addr(jt), DevPtr::from_addr(caps), t, ca.budget, cbuf)?.launch(self.launch())?;
            raw::capped_steps(DevPtr::from_addr(jt), DevPtr::from_addr(caps), t, 1.0, steps, cbuf)?.launch(self.launch())?;
            raw::quantize(dt, g, &Self::quant_ptrs(a), a.bits, a.histogram, qbuf)?.launch(self.launch())?;
        }
        let v = self.read(&st)?;
        let (bad, s) = raw::decode_quantize(&v[..qslots], a.bits, a.histogram);
        let capped = raw::decode_capped(&v[qslots..]);
        // SAFETY: `x`, `J`, `jt` and `caps` hold every index the kernels can report; the stream
        // was synced by `read`, and nothing writes them any more.
        unsafe {
            raw::check_bad(raw::decode_token_stats(&v), None, Some(j), &self.stream)?;
            raw::check_capped(capped.bad, Some(x), DevPtr::from_addr(jt), DevPtr::from_addr(caps), &self.stream)?;
            raw::check_bad(bad, Some(x), Some(j), &self.stream)?;
        }
        self.copy_histogram(a, &s)?;
        Ok(QuantizeReport::finish(g, s))
    }

    /// The histogram into the call's `histogram_out`, where one was given.
    fn copy_histogram(&self, a: &QuantizeArgs, s: &crate::cpu::QuantStats) -> Result<()> {
        if let (Some(o), Some(h)) = (&a.histogram_out, &s.histogram) {
            // SAFETY: a validated device output of `hist_bins == h.len()` u64 that overlaps no
            // other array; the copy is synchronous.
            unsafe { cu::memcpy_htod_sync(o.addr() as u64, h) }.map_err(cuda_err)?;
        }
        Ok(())
    }
}

impl Cuda {
    /// A validated device statistics array, copied to the host (the stream is synchronized).
    fn stats_to_host(&self, stats: &Buf) -> Result<Vec<i64>> {
        self.check(&[stats])?;
        // SAFETY: a validated device array of `len` i64 on this device, written by work the
        // caller ordered before on this stream.
        unsafe { raw::read_stats(StatsBuf::new(DevPtrMut::from_addr(stats.addr() as u64), stats.len()), &self.stream) }
    }

    /// The error of a bad element, its value copied from the device array it indexes.
    fn device_error(&self, b: raw::BadElement, x: &Buf, jnd: &Option<Buf>) -> Error {
        let src = match b.input {
            raw::Input::X => Some(x),
            raw::Input::Jnd => jnd.as_ref(),
            raw::Input::TokenTol(_) | raw::Input::Step(_) => None,
        };
        // Statistics the caller mixed up may name any index: read only inside the array.
        let e = src
            .filter(|a| b.index < a.len())
            .and_then(|a| a.elem().dtype().map(|dt| Elems { ptr: DevPtr::from_addr(a.addr() as u64), dt }));
        let (xs, js) = if b.input == raw::Input::X { (e, None) } else { (None, e) };
        // SAFETY: a source is a validated device array of this device holding element `b.index`
        // (checked just above), and the stream was synchronized when the statistics were read.
        let r = unsafe { raw::check_bad(Some(b), xs, js, &self.stream) };
        r.err().unwrap_or_else(|| b.error(f32::NAN))
    }

    /// A quantization's statistics decoded on this device's stream (one copy, one sync).
    pub fn quantize_decode(&self, c: &QuantizeDecodeCall) -> Result<QuantizeReport> {
        let a = c.args();
        self.check(&[&a.x])?;
        let v = self.stats_to_host(&a.stats)?;
        c.finish(&v, |b| self.device_error(b, &a.x, &a.jnd))
    }

    /// A perturbation's statistics decoded on this device's stream (one copy, one sync).
    pub fn perturb_decode(&self, c: &PerturbDecodeCall) -> Result<PerturbReport> {
        let a = c.args();
        self.check(&[&a.x])?;
        let v = self.stats_to_host(&a.stats)?;
        c.finish(&v, |b| self.device_error(b, &a.x, &a.jnd))
    }
}

impl Cuda {
    /// The noise into a validated device array, enqueued on the stream (no sync).
    pub fn noise(&self, c: &NoiseCall) -> Result<()> {
        let a = c.args();
        self.check(&[&a.out])?;
        if a.out.is_empty() {
            return Ok(());
        }
        // SAFETY: a validated device array of `len` f32 on this device, the call's only array.
        unsafe { raw::noise(DevPtrMut::from_addr(a.out.addr() as u64), a.out.len(), a.offset, a.noise)?.launch(self.launch()) }
    }
}

// ---- the sync-free calls (contract §8): enqueue only, statistics in the caller's array ----

impl Cuda {
    /// The caller's statistics array (`I64`, in this device's memory) as the launchers' view.
    fn stats_view(&self, stats: &Buf) -> Result<StatsBuf> {
        if stats.elem() != Elem::I64 {
            return Err(Error::Arg(format!("{} must be i64, got {}", stats.name, stats.elem().name())));
        }
        self.check(&[stats])?;
        Ok(StatsBuf::new(DevPtrMut::from_addr(stats.addr() as u64), stats.len()))
    }

    /// Checks and zeroes (a memset node) the caller's statistics.
    fn zeroed(&self, stats: &Buf) -> Result<StatsBuf> {
        let view = self.stats_view(stats)?;
        // SAFETY: a checked device array of `len` i64 on this device, overlapping no array of the
        // call (the callers' `validate_with` put it in the aliasing rule); ordered on the stream.
        unsafe { raw::zero_stats(self.launch(), view)? };
        Ok(view)
    }

    fn quant_ptrs(a: &QuantizeArgs) -> QuantPtrs {
        fn out<T>(b: &Option<Buf>) -> DevPtrMut<T> {
            b.map_or(DevPtrMut::null(), |b| DevPtrMut::from_addr(b.addr() as u64))
        }
        QuantPtrs {
            x: DevPtr::from_addr(a.x.addr() as u64),
            steps: DevPtr::from_addr(a.steps.addr() as u64),
            symbols: out(&a.symbols),
            recon: out(&a.recon),
            token_sse: out(&a.token_sse),
        }
    }

    fn quant_check(&self, a: &QuantizeArgs) -> Result<()> {
        let mut all = vec![&a.x, &a.steps];
        all.extend([&a.symbols, &a.recon, &a.token_sse, &a.histogram_out].into_iter().flatten());
        self.check(&all)
    }

    fn perturb_ptrs(a: &PerturbArgs) -> Result<PerturbPtrs> {
        Ok(PerturbPtrs {
            dt: a.x.float_dtype()?,
            x: DevPtr::from_addr(a.x.addr() as u64),
            jnd: a.jnd.map_or(DevPtr::null(), |j| DevPtr::from_addr(j.addr() as u64)),
            out: DevPtrMut::from_addr(a.out.addr() as u64),
            numel: a.x.len(),
            samples: a.samples,
        })
    }

    fn perturb_check(&self, a: &PerturbArgs) -> Result<()> {
        let mut all = vec![&a.x, &a.out];
        all.extend(a.jnd.iter().chain(a.scales_out.iter()));
        self.check(&all)
    }

    /// A validated quantization with its statistics in the caller's `stats`
    /// (`raw::quantize_slots(bits, true)` slots, validated with the call): enqueued only.
    pub fn quantize_enqueue(&self, c: &QuantizeCall, stats: &Buf) -> Result<()> {
        let (a, g) = (c.args(), c.grid());
        self.quant_check(a)?;
        let view = self.zeroed(stats)?;
        let dt = a.x.float_dtype()?;
        // SAFETY: the call's arrays are device memory of this device with the sizes the kernel
        // touches (validated; driver-checked where asked), outputs overlapping nothing but
        // recon == x; the statistics were zeroed just above on the same stream.
        unsafe { raw::quantize(dt, g, &Self::quant_ptrs(a), a.bits, a.histogram, view)?.launch(self.launch()) }
    }

    /// The fused chain `J → j_t → Δ_t → quantize` of a validated call whose steps are the
    /// chain's output, enqueued only (`raw::quantize_with_jnd`; statistics and the scratch `j_t`
    /// in the caller's `stats`, `raw::jnd_chain_slots` long).
    pub fn quantize_with_jnd_enqueue(&self, chain: &ChainCall, stats: &Buf) -> Result<()> {
        let ca = chain.args();
        let StepRule::Strategy(strategy) = ca.rule else {
            return Err(Error::Arg("the capped chain has no sync-free form: use the synchronous call".into()));
        };
        let (c, jnd, reduce, budget) = (chain.quantize(), &ca.jnd, ca.reduce, ca.budget);
        let (a, g) = (c.args(), c.grid());
        self.quant_check(a)?;
        self.check(&[jnd])?;
        // The chain clears what it accumulates into itself (no memset of the caller's array).
        let ws = self.stats_view(stats)?;
        let dt = a.x.float_dtype()?;
        let dj = jnd.float_dtype()?;
        let j = Elems { ptr: DevPtr::from_addr(jnd.addr() as u64), dt: dj };
        let steps = DevPtrMut::from_addr(a.steps.addr() as u64);
        // SAFETY: every array is device memory of this device with the bytes the kernels touch
        // (validated; driver-checked where asked); the aliasing rule (with J and the statistics)
        // was checked by the caller's `validate_with`.
        unsafe {
            raw::quantize_with_jnd(dt, g, j, reduce, budget, strategy, &Self::quant_ptrs(a), steps, a.bits, a.histogram, ws)?
                .launch(self.launch())
        }
    }

    /// A validated perturbation with its statistics in the caller's `stats`: enqueued only.
    pub fn perturb_enqueue(&self, c: &PerturbCall, stats: &Buf) -> Result<()> {
        let a = c.args();
        self.perturb_check(a)?;
        let view = self.zeroed(stats)?;
        // SAFETY: `x`, `J` and `out` are device memory of this device with `numel` elements
        // (validated); the statistics were zeroed just above on the same stream.
        unsafe { raw::perturb(&Self::perturb_ptrs(a)?, a.nrmse, a.noise, view)?.launch(self.launch()) }
    }

    /// A batch of validated quantizations of one dtype and `bits` (histograms counted), item `i`'s
    /// statistics the `per` slots from `i·per` of `stats`: one memset, one launch per
    /// `FJ_BATCH_MAX` items, enqueued only. The cross-item aliasing rule is the caller's.
    pub fn quantize_batch_enqueue(&self, calls: &[&QuantizeCall], stats: &Buf, per: usize) -> Result<()> {
        let Some(first) = calls.first() else { return Ok(()) };
        for (i, c) in calls.iter().enumerate() {
            self.quant_check(c.args()).map_err(|e| in_item(e, i))?;
        }
        let view = self.zeroed(stats)?;
        let items = calls
            .iter()
            .enumerate()
            .map(|(i, c)| Ok(raw::BatchItem { grid: *c.grid(), p: Self::quant_ptrs(c.args()), stats: view.sub(i * per, per)? }))
            .collect::<Result<Vec<_>>>()?;
        let dt = first.args().x.float_dtype()?;
        // SAFETY: every item's arrays are device memory of this device (validated, checked above),
        // no output overlapping another item's arrays (the caller's rule); the statistics were
        // zeroed just above on the same stream, each item owning its slots.
        unsafe { raw::quantize_batch(dt, &items, first.args().bits, first.args().histogram)?.launch(self.launch()) }
    }

    /// A batch of validated perturbations of one dtype, item `i`'s statistics the
    /// `raw::perturb_slots` slots from its offset in `stats`: one memset, two launches per
    /// `FJ_BATCH_MAX` items, enqueued only. The cross-item aliasing rule is the caller's.
    pub fn perturb_batch_enqueue(&self, calls: &[(&PerturbCall, usize)], stats: &Buf) -> Result<()> {
        let Some((first, _)) = calls.first() else { return Ok(()) };
        for (i, (c, _)) in calls.iter().enumerate() {
            self.perturb_check(c.args()).map_err(|e| in_item(e, i))?;
        }
        let view = self.zeroed(stats)?;
        let items = calls
            .iter()
            .map(|&(c, off)| {
                let a = c.args();
                Ok(raw::PerturbItem {
                    a: Self::perturb_ptrs(a)?,
                    nrmse: a.nrmse,
                    noise: a.noise,
                    stats: view.sub(off, raw::perturb_slots(a.samples))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let dt = first.args().x.float_dtype()?;
        // SAFETY: as `quantize_batch_enqueue`, with each item's statistics at its own offset.
        unsafe { raw::perturb_batch(dt, &items)?.launch(self.launch()) }
    }
}

/// An error of batch item `i` (its message names the item).
fn in_item(e: Error, i: usize) -> Error {
    match e {
        Error::Arg(m) => Error::Arg(format!("items[{i}]: {m}")),
        Error::MixedDevices(m) => Error::MixedDevices(format!("items[{i}]: {m}")),
        other => other,
    }
}

/// Asks the driver about `p`: it must be device (or managed) memory of device `ordinal` whose
/// allocation holds `bytes` bytes from `p` (`Error::Arg` naming `what` otherwise). The calling
/// thread must have the device's context bound.
pub fn check_device_pointer(ordinal: usize, p: usize, bytes: usize, what: &str) -> Result<()> {
    let (mut mem, mut ord, mut start, mut size) = (0u32, -1i32, 0u64, 0usize);
    let mut attrs = [
        CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
        CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
        CUpointer_attribute::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
        CUpointer_attribute::CU_POINTER_ATTRIBUTE_RANGE_SIZE,
    ];
    let mut data: [*mut c_void; 4] =
        [&mut mem as *mut u32 as _, &mut ord as *mut i32 as _, &mut start as *mut u64 as _, &mut size as *mut usize as _];
    // Unlike cuPointerGetAttribute, this succeeds on unknown (host) pointers with zeroed values.
    // SAFETY: four attributes, each with an out-pointer to a local of the attribute's type
    // (CUmemorytype and the ordinal are 32-bit, the range start a CUdeviceptr, the size a
    // size_t); the driver only inspects `p`, never dereferences it.
    let r = unsafe { sys::cuPointerGetAttributes(4, attrs.as_mut_ptr(), data.as_mut_ptr(), p as CUdeviceptr) };
    if r != CUresult::CUDA_SUCCESS {
        return Err(Error::Arg(format!("{what} ({p:#x}): the driver cannot describe this pointer ({r:?})")));
    }
    let device = mem == CUmemorytype::CU_MEMORYTYPE_DEVICE as u32;
    if !(device || mem == CUmemorytype::CU_MEMORYTYPE_UNIFIED as u32) {
        return Err(Error::Arg(format!(
            "{what} ({p:#x}) is not CUDA device memory; this context runs on device {ordinal}: pass device pointers"
        )));
    }
    if device && ord >= 0 && ord as usize != ordinal {
        return Err(Error::Arg(format!("{what} is memory of device {ord}; this context runs on device {ordinal}")));
    }
    if size > 0 && (p as u64).saturating_add(bytes as u64) > start.saturating_add(size as u64) {
        let left = start + size as u64 - p as u64;
        return Err(Error::Arg(format!("{what} needs {bytes} bytes, its allocation holds {left} from this pointer")));
    }
    Ok(())
}
