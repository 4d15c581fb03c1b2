//! The C ABI's CUDA path: the same ops on raw device pointers of the context's device, enqueued on
//! the caller's stream (`NULL` = the legacy default stream). Temporaries (the statistics buffer)
//! are stream-ordered cudarc allocations on that stream, so nothing here touches torch's stream
//! or allocator. Each call returns once its statistics are back on the host (one stream sync);
//! the outputs are then complete too.
//!
//! Before any launch, every pointer is checked with the driver: it must be device (or managed)
//! memory of this context's device, and its allocation must hold the bytes the op will touch.
//! A host pointer or a too-short buffer is `FJ_ERR_ARG`, never an illegal-address fault.
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::{self, CUdeviceptr, CUmemorytype, CUpointer_attribute, CUresult};
use cudarc::driver::{result as cu, CudaSlice, CudaStream, DevicePtr};

use super::{fail, Fail, FJ_ERR_ARG, FJ_ERR_DEVICE, R};
use featjnd_kernels::cpu::{perturb::NoiseSpec, PerturbReport};
pub(super) use featjnd_kernels::cuda::raw::QuantPtrs;
use featjnd_kernels::cuda::raw;
use featjnd_kernels::cuda::Device;
use featjnd_kernels::element::{with_elem, Dtype, Element};
use featjnd_kernels::error::Error;
use featjnd_kernels::geom::{Bits, Reduce, Strategy, TokenGrid};
use featjnd_kernels::steps;

fn dev_err(e: impl std::fmt::Debug) -> Fail {
    Fail(FJ_ERR_DEVICE, format!("CUDA error: {e:?}"))
}

/// The device a context runs on.
pub(super) struct Gpu {
    dev: Arc<Device>,
}

impl Gpu {
    pub fn new(ordinal: usize) -> Result<Gpu, Error> {
        featjnd_kernels::cuda::available()?;
        Ok(Gpu { dev: Device::get(ordinal)? })
    }

    pub fn ordinal(&self) -> usize {
        self.dev.ctx.ordinal()
    }

    fn stream(&self, raw: *mut c_void) -> R<Arc<CudaStream>> {
        self.dev.ctx.bind_to_thread().map_err(dev_err)?;
        Ok(unsafe { self.dev.ctx.wrap_borrowed_stream(raw as sys::CUstream) })
    }

    /// `p` must be device memory of this device with `bytes` bytes from `p` inside its allocation.
    pub fn check(&self, p: *const c_void, bytes: usize, what: &str) -> R<()> {
        self.dev.ctx.bind_to_thread().map_err(dev_err)?;
        let (mut mem, mut ord, mut start, mut size) = (0u32, -1i32, 0u64, 0usize);
        let mut attrs = [
            CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
            CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
            CUpointer_attribute::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
            CUpointer_attribute::CU_POINTER_ATTRIBUTE_RANGE_SIZE,
        ];
        let mut data: [*mut c_void; 4] = [&mut mem as *mut u32 as _, &mut ord as *mut i32 as _, &mut start as *mut u64 as _, &mut size as *mut usize as _];
        // Unlike cuPointerGetAttribute, this succeeds on unknown (host) pointers with zeroed values.
        let r = unsafe { sys::cuPointerGetAttributes(4, attrs.as_mut_ptr(), data.as_mut_ptr(), p as CUdeviceptr) };
        if r != CUresult::CUDA_SUCCESS {
            return fail(FJ_ERR_ARG, format!("{what} ({p:p}): the driver cannot describe this pointer ({r:?})"));
        }
        let device = mem == CUmemorytype::CU_MEMORYTYPE_DEVICE as u32;
        if !(device || mem == CUmemorytype::CU_MEMORYTYPE_UNIFIED as u32) {
            return fail(FJ_ERR_ARG, format!("{what} ({p:p}) is not CUDA device memory; this context runs on device {}: pass device pointers", self.ordinal()));
        }
        if device && ord >= 0 && ord as usize != self.ordinal() {
            return fail(FJ_ERR_ARG, format!("{what} is memory of device {ord}; this context runs on device {}", self.ordinal()));
        }
        if size > 0 && (p as u64).saturating_add(bytes as u64) > start.saturating_add(size as u64) {
            let left = start + size as u64 - p as u64;
            return fail(FJ_ERR_ARG, format!("{what} needs {bytes} bytes, its allocation holds {left} from this pointer"));
        }
        Ok(())
    }

    fn stats(&self, s: &Arc<CudaStream>, slots: usize) -> R<CudaSlice<i64>> {
        s.alloc_zeros::<i64>(slots).map_err(dev_err)
    }

    fn read(&self, s: &Arc<CudaStream>, b: &CudaSlice<i64>) -> R<Vec<i64>> {
        let v = s.clone_dtoh(b).map_err(dev_err)?;
        s.synchronize().map_err(dev_err)?;
        Ok(v)
    }

    /// Element `i` of a device array of dtype `dt` as f32 (error messages only).
    fn value_at(&self, s: &Arc<CudaStream>, p: *const c_void, dt: Dtype, i: usize) -> f32 {
        let mut buf = [0u8; 4];
        let n = dt.size();
        let ok = unsafe { cu::memcpy_dtoh_async(&mut buf[..n], p as u64 + (i * n) as u64, s.cu_stream()) }.is_ok() && s.synchronize().is_ok();
        if !ok {
            return f32::NAN;
        }
        with_elem!(dt, E => unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const E) }.to_f32())
    }

    /// `j_t` of a device J into the device `out[tokens]`.
    pub fn token_tolerance(&self, jnd: *const c_void, dt: Dtype, g: &TokenGrid, reduce: Reduce, out: *mut f32, stream: *mut c_void) -> R<()> {
        self.check(jnd, g.numel() * dt.size(), "jnd->data")?;
        self.check(out as *const c_void, g.tokens() * 4, "out")?;
        let s = self.stream(stream)?;
        let st = self.stats(&s, 1)?;
        let (base, _g) = st.device_ptr(&s);
        raw::token_stats(&self.dev, dt, g, reduce, jnd as u64, out as u64, 0, base, &s)?;
        if let Some(index) = raw::bad_of(self.read(&s, &st)?[0]) {
            return Err(Error::Jnd { index, value: self.value_at(&s, jnd, dt, index) }.into());
        }
        Ok(())
    }

    /// Steps from device token tolerances. `T` values are few (one per token): they make one round
    /// trip through the host, where the SPEC §3 reference allocates them.
    pub fn allocate_steps(&self, token_tol: *const f32, tokens: usize, budget: f64, strategy: Strategy, steps_out: *mut f32) -> R<()> {
        self.check(token_tol as *const c_void, tokens * 4, "token_tol")?;
        self.check(steps_out as *const c_void, tokens * 4, "steps_out")?; // also binds the context
        let mut jt = vec![0f32; tokens];
        unsafe { cu::memcpy_dtoh_sync(&mut jt, token_tol as u64) }.map_err(dev_err)?;
        let v = steps::allocate(&jt, budget, strategy)?;
        unsafe { cu::memcpy_htod_sync(steps_out as u64, &v) }.map_err(dev_err)?;
        Ok(())
    }

    /// The fused quantization on device pointers; returns its statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn quantize(&self, dt: Dtype, g: &TokenGrid, p: &QuantPtrs, bits: Bits, histogram: *mut u64, stream: *mut c_void) -> R<raw::QuantStats> {
        let n = g.numel();
        self.check(p.x as _, n * dt.size(), "x->data")?;
        self.check(p.steps as _, g.tokens() * 4, "steps")?;
        let sym_size = if bits == Bits::B8 { 1 } else { 2 };
        for (ptr, bytes, what) in [(p.symbols, n * sym_size, "opts->symbols"), (p.recon, n * dt.size(), "opts->recon"), (p.token_sse, g.tokens() * 4, "opts->token_sse"), (histogram as u64, bits.hist_bins() * 8, "opts->histogram")] {
            if ptr != 0 {
                self.check(ptr as _, bytes, what)?;
            }
        }
        let s = self.stream(stream)?;
        let want_hist = !histogram.is_null();
        let st = self.stats(&s, raw::quantize_slots(bits, want_hist))?;
        let (base, _g) = st.device_ptr(&s);
        raw::quantize(&self.dev, dt, g, p, bits, want_hist, base, &s)?;
        let q = raw::decode_quantize(&self.read(&s, &st)?, bits, want_hist);
        if let Some(index) = q.bad_x {
            let value = if p.recon == p.x { f32::NAN } else { self.value_at(&s, p.x as _, dt, index) };
            return Err(Error::NonFinite { index, value }.into());
        }
        if let Some(h) = &q.histogram {
            unsafe { cu::memcpy_htod_sync(histogram as u64, h) }.map_err(dev_err)?;
        }
        Ok(q)
    }

    /// The matched-NRMSE perturbation on device pointers; `scales` (device `float[N]`) may be null.
    #[allow(clippy::too_many_arguments)]
    pub fn perturb(&self, dt: Dtype, x: *const c_void, jnd: *const c_void, out: *mut c_void, numel: usize, samples: usize, nrmse: f64, noise: NoiseSpec, scales: *mut f32, stream: *mut c_void) -> R<PerturbReport> {
        if !(nrmse.is_finite() && nrmse >= 0.0) {
            return Err(Error::Nrmse(nrmse).into());
        }
        self.check(x, numel * dt.size(), "x->data")?;
        self.check(out, numel * dt.size(), "out")?;
        if !jnd.is_null() {
            self.check(jnd, numel * dt.size(), "jnd->data")?;
        }
        if !scales.is_null() {
            self.check(scales as _, samples * 4, "opts->scales")?;
        }
        let s = self.stream(stream)?;
        let st = self.stats(&s, raw::perturb_slots(samples))?;
        let (base, _g) = st.device_ptr(&s);
        raw::perturb(&self.dev, dt, x as u64, jnd as u64, out as u64, numel, samples, nrmse, noise, base, &s)?;
        let (bad_x, bad_j, report) = raw::decode_perturb(&self.read(&s, &st)?, samples);
        if let Some(index) = bad_x {
            return Err(Error::NonFinite { index, value: self.value_at(&s, x, dt, index) }.into());
        }
        if let Some(index) = bad_j {
            return Err(Error::Jnd { index, value: self.value_at(&s, jnd, dt, index) }.into());
        }
        if !scales.is_null() {
            unsafe { cu::memcpy_htod_sync(scales as u64, &report.scales) }.map_err(dev_err)?;
        }
        Ok(report)
    }
}
