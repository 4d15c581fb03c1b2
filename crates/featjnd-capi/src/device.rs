//! The C ABI's CUDA context: its device, whether it trusts its caller's pointers, and the few
//! thing the batch decoders need on it (reading a caller's statistics array on a stream; the single
//! decoders are the core's decode calls). Every op runs through the kernel library's one CUDA executor
//! (`featjnd_kernels::call::Cuda`, made per call by [`Gpu::executor`] on the caller's stream),
//! whose driver pointer check (device or managed memory of this device, allocation long enough)
//! makes a host pointer or a short buffer `FJ_ERR_ARG` instead of an illegal-address fault. That
//! check cannot prove a pointer valid (memory freed into a pool, memory another stream is
//! writing), so the entry points stay under the C caller's contract.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys;
use cudarc::driver::CudaStream;

use super::{Fail, FJ_ERR_DEVICE, R};
use featjnd_kernels::call::Cuda;
use featjnd_kernels::cuda::raw::{self, DevPtrMut, StatsBuf};
use featjnd_kernels::cuda::Device;
use featjnd_kernels::error::Error;

fn dev_err(e: impl std::fmt::Debug) -> Fail {
    Fail(FJ_ERR_DEVICE, format!("CUDA error: {e:?}"))
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
}
