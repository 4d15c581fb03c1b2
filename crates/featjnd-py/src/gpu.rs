//! CUDA arrays (DLPack device type 2): the ops through the kernel library's `cuda::raw` launchers
//! on the caller's stream (torch's current stream, or `stream=`), in the manner of the C ABI's
//! `crates/featjnd-capi/src/device.rs`: one zeroed statistics buffer per call, allocated on that
//! stream, and one stream sync when the statistics come back (`noise` needs none).
//!
//! Beyond the C ABI, the steps are validated on the host before a quantization (contract §4.2;
//! `cuda::raw::quantize` does not check them) and step allocation runs on the host from the `T`
//! token tolerances (validated as on the CPU), so the gaps of contract §7.4 on step and
//! tolerance values do not apply here. The capped allocation (contract §3.5: token RMS, caps,
//! steps) runs on the device, as the C ABI's; its solver checks `j_t` and the caps there.
//!
//! Addresses and sizes come from the DLPack producer (torch, CuPy), which owns the allocations;
//! unlike the C ABI they are not re-checked with the driver.
//!
//! NOT RUN YET: written on a machine without a GPU; the CPU path is what the tests exercise.
use std::sync::Arc;

use cudarc::driver::sys::CUstream;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use featjnd_kernels::cpu::perturb::NoiseSpec;
use featjnd_kernels::cuda::raw::{self, DevPtr, DevPtrMut, Elems, Launch, QuantPtrs, StatsBuf};
use featjnd_kernels::cuda::Device;
use featjnd_kernels::geom::{Bits, TokenGrid};
use featjnd_kernels::{steps, Dtype, Error};

use crate::array::{Array, Dev, Kind};

/// A device array reduced to what the launchers need (an address and a length: `Send`, so the
/// work can run without the GIL).
#[derive(Clone, Copy, Debug)]
pub struct DArr {
    pub addr: usize,
    pub numel: usize,
}

impl From<&Array> for DArr {
    fn from(a: &Array) -> Self {
        DArr { addr: a.addr, numel: a.numel() }
    }
}

fn cuda(e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{e:?}"))
}

/// Device elements of an array (an address only: no access).
fn elems(a: DArr, dt: Dtype) -> Elems {
    Elems { ptr: DevPtr::from_addr(a.addr as u64), dt }
}

fn out_ptr<T>(a: Option<DArr>) -> DevPtrMut<T> {
    a.map_or(DevPtrMut::null(), |a| DevPtrMut::from_addr(a.addr as u64))
}

/// The device of a call, and the caller's stream on it.
pub struct Gpu {
    dev: Arc<Device>,
    stream: Arc<CudaStream>,
}

/// A zeroed statistics buffer on the call's stream and its view for the launchers.
struct Stats {
    buf: CudaSlice<i64>,
    view: StatsBuf,
}

impl Gpu {
    /// Device `ordinal` and the stream `stream` (0 = the legacy default stream).
    ///
    /// # Safety
    /// `stream` is 0 or a live CUDA stream of device `ordinal`'s primary context that outlives
    /// the returned value (torch's and CuPy's streams do while the call runs).
    pub unsafe fn new(ordinal: i32, stream: usize) -> Result<Gpu, Error> {
        featjnd_kernels::cuda::available()?;
        let ordinal = usize::try_from(ordinal).map_err(|_| Error::Arg(format!("CUDA device ordinal {ordinal}")))?;
        let dev = Device::get(ordinal)?;
        dev.ctx.bind_to_thread().map_err(cuda)?;
        // SAFETY: a live stream of this device (or null, the legacy default stream) that outlives
        // the wrapper (this fn's contract); the wrapper never destroys it.
        let stream = unsafe { dev.ctx.wrap_borrowed_stream(stream as CUstream) };
        Ok(Gpu { dev, stream })
    }

    fn on(&self) -> Launch<'_> {
        Launch { dev: &self.dev, stream: &self.stream }
    }

    fn stats(&self, slots: usize) -> Result<Stats, Error> {
        let buf = self.stream.alloc_zeros::<i64>(slots).map_err(cuda)?;
        // Event tracking is off (`Device::get`): the guard records nothing, the address is all.
        let base = buf.device_ptr(&self.stream).0;
        Ok(Stats { view: StatsBuf::new(DevPtrMut::from_addr(base), slots), buf })
    }

    fn read(&self, st: &Stats) -> Result<Vec<i64>, Error> {
        let _live = &st.buf;
        // SAFETY: `st.view` describes `st.buf`, alive for this borrow, on `self.stream`, where
        // every kernel writing it was enqueued.
        unsafe { raw::read_stats(st.view, &self.stream) }
    }

    /// The quantization, statistics only (the measured budget's probe), with device steps at
    /// `steps` (written earlier on the call's stream).
    ///
    /// # Safety
    /// `x` holds `g.numel()` elements of `dt` and `steps` `g.tokens()` f32, device memory of this
    /// device, finite and > 0, not written by other work until the probe completes.
    unsafe fn probe_mse_at(&self, x: DArr, dt: Dtype, g: &TokenGrid, bits: Bits, steps: u64) -> Result<f64, Error> {
        let p = QuantPtrs {
            x: elems(x, dt).ptr,
            steps: DevPtr::from_addr(steps),
            symbols: DevPtrMut::null(),
            recon: DevPtrMut::null(),
            token_sse: DevPtrMut::null(),
        };
        let st = self.stats(raw::quantize_slots(bits, false))?;
        // SAFETY: `x` per this fn's contract, the steps just copied, no outputs; fresh statistics.
        unsafe { raw::quantize(self.on(), dt, g, &p, bits, false, st.view)? };
        let q = raw::decode_quantize(&self.read(&st)?, bits, false);
        // SAFETY: `x` holds every index the kernel can report.
        unsafe { raw::check_bad(q.bad, Some(elems(x, dt)), None, &self.stream) }?;
        Ok(q.total_sse / g.numel() as f64)
    }

    /// Caps `c_t = κ·max(r_t, 2^-24·max_t r_t)` from device token RMS values into the device `out`.
    ///
    /// # Safety
    /// `rms` holds `tokens` f32 and `out` room for as many, device memory of this device, disjoint.
    pub unsafe fn caps_from_rms(&self, rms: DArr, tokens: usize, kappa: f32, out: DArr) -> Result<(), Error> {
        raw::check_kappa(kappa)?;
        let st = self.stats(raw::CAPPED_SLOTS)?;
        // SAFETY: sizes and disjointness by this fn's contract; the statistics are a fresh zeroed
        // allocation on the same stream (the max kernel runs first: the maximum is not known).
        unsafe { raw::capped_caps(self.on(), DevPtr::from_addr(rms.addr as u64), tokens, kappa, false, out_ptr(Some(out)), st.view)? };
        let c = raw::decode_capped(&self.read(&st)?);
        // SAFETY: no array is read back (only the zero-feature status can be set here).
        unsafe { raw::check_capped(c.bad, None, DevPtr::null(), DevPtr::null(), &self.stream) }
    }

    /// Solves the capped scales `(a, b)` at `β = 1` on the device (contract §3.5) into a fresh
    /// statistics buffer, which it returns for [`raw::capped_steps`]; a bad `j_t` or cap is
    /// reported as on the CPU (one sync), before any step is written.
    ///
    /// # Safety
    /// `jt` and `caps` hold `tokens` f32 each, device memory of this device.
    unsafe fn capped_solve(&self, jt: DArr, caps: DArr, tokens: usize, budget: f64) -> Result<Stats, Error> {
        let st = self.stats(raw::CAPPED_SLOTS)?;
        let (j, c) = (DevPtr::from_addr(jt.addr as u64), DevPtr::from_addr(caps.addr as u64));
        // SAFETY: sizes by this fn's contract; fresh zeroed statistics on the same stream.
        unsafe { raw::capped_solve(self.on(), j, c, tokens, budget, st.view)? };
        let s = raw::decode_capped(&self.read(&st)?);
        // SAFETY: `jt` and `caps` hold every index the solver can report; the stream is
        // synchronized and nothing writes them.
        unsafe { raw::check_capped(s.bad, None, j, c, &self.stream) }?;
        Ok(st)
    }

    /// Capped steps `min(f32(a·β)·j_t, f32(b·β)·c_t)` from device token tolerances and caps into
    /// the device `out`, solved on the device (nothing is written on a bad `j_t` or cap).
    ///
    /// # Safety
    /// `jt` and `caps` hold `tokens` f32 each and `out` room for as many, device memory of this
    /// device, `out` disjoint from both.
    pub unsafe fn allocate_steps_capped(
        &self,
        jt: DArr,
        caps: DArr,
        tokens: usize,
        budget: f64,
        beta: f64,
        out: DArr,
    ) -> Result<(), Error> {
        // SAFETY: by this fn's contract.
        let st = unsafe { self.capped_solve(jt, caps, tokens, budget) }?;
        let (j, c) = (DevPtr::from_addr(jt.addr as u64), DevPtr::from_addr(caps.addr as u64));
        // SAFETY: sizes and disjointness by this fn's contract; `st` holds the scales the solve
        // wrote, ordered before this launch on the same stream, and lives past the sync below.
        unsafe { raw::capped_steps(self.on(), j, c, tokens, beta, out_ptr(Some(out)), st.view)? };
        self.stream.synchronize().map_err(cuda)
    }

    /// Capped steps matched to the measured budget of quantizing the device `x` (contracts §3.4,
    /// §3.5): the scales are solved once; each `β` is one steps launch into a scratch buffer and
    /// one probe quantization (one sync).
    ///
    /// # Safety
    /// As [`Gpu::allocate_steps_capped`] with `tokens = g.tokens()`, and `x` holds `g.numel()`
    /// elements of `dt` in device memory of this device, disjoint from `out`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn allocate_steps_capped_measured(
        &self,
        jt: DArr,
        caps: DArr,
        x: DArr,
        dt: Dtype,
        g: &TokenGrid,
        budget: f64,
        bits: Bits,
        out: DArr,
    ) -> Result<steps::Measured, Error> {
        let tokens = g.tokens();
        // SAFETY: by this fn's contract.
        let st = unsafe { self.capped_solve(jt, caps, tokens, budget) }?;
        let (j, c) = (DevPtr::from_addr(jt.addr as u64), DevPtr::from_addr(caps.addr as u64));
        let scratch = self.stream.alloc_zeros::<f32>(tokens).map_err(cuda)?;
        let sp = scratch.device_ptr(&self.stream).0;
        let m = steps::bisect_beta(budget, |beta| {
            // SAFETY: `scratch` is ours with `tokens` floats, overlapping neither input; `st`
            // holds the solved scales; the probe reads the steps after this launch in stream
            // order and synchronizes before the next launch rewrites them.
            unsafe { raw::capped_steps(self.on(), j, c, tokens, beta, DevPtrMut::from_addr(sp), st.view)? };
            // SAFETY: `x` per this fn's contract; `sp` holds the `tokens` steps just launched.
            unsafe { self.probe_mse_at(x, dt, g, bits, sp) }
        })?;
        // SAFETY: `out` has room for `tokens` floats, disjoint from the inputs (contract); `st`
        // and `scratch` live past the sync below.
        unsafe { raw::capped_steps(self.on(), j, c, tokens, m.beta, out_ptr(Some(out)), st.view)? };
        self.stream.synchronize().map_err(cuda)?;
        Ok(m)
    }

    /// The §5 noise into the device f32 `out`, enqueued on the stream (no sync).
    ///
    /// # Safety
    /// `out` holds `out.numel` f32 in device memory of this device, used by nothing else.
    pub unsafe fn noise(&self, out: DArr, offset: u64, noise: NoiseSpec) -> Result<(), Error> {
        // SAFETY: by this fn's contract.
        unsafe { raw::noise(self.on(), out_ptr(Some(out)), out.numel, offset, noise) }
    }
}

/// The one device of a call's arrays (CPU, or one CUDA device), or `Error::MixedDevices`.
pub fn device_of(arrays: &[&Array]) -> Result<Dev, Error> {
    let d = arrays.first().map_or(Dev::Cpu, |a| a.dev);
    match arrays.iter().find(|a| a.dev != d) {
        None => Ok(d),
        Some(b) => Err(Error::MixedDevices(format!("{} is on {}, {} on {}", arrays[0].name, d, b.name, b.dev))),
    }
}

/// Checks that a CUDA array holds `kind` elements at an aligned, non-null address.
pub fn check_device_array(a: &Array, kind: Kind) -> Result<(), Error> {
    if a.kind != kind {
        return Err(Error::Dtype(format!("{} is {}, expected {}", a.name, a.kind.name(), kind.name())));
    }
    if a.numel() > 0 && (a.addr == 0 || !a.addr.is_multiple_of(kind.size())) {
        return Err(Error::Arg(format!("{} is not aligned to {} bytes (address {:#x})", a.name, kind.size(), a.addr)));
    }
    Ok(())
}
