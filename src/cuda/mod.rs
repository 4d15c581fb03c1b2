//! The CUDA path: a per-device cache of NVRTC-compiled modules and kernel handles (compiled on
//! first use for the device's architecture), the launchers on typed raw device pointers
//! ([`raw`]: `unsafe fn`s, one section per kernel family), and the interop with torch's CUDA
//! stream. Every entry point checks that a driver and a device exist and returns
//! [`Error::CudaUnavailable`] otherwise; nothing here panics on a machine without a GPU.

pub mod compile;
pub mod kernels;
pub mod raw;

pub use raw::{DevPtr, DevPtrMut};

use std::sync::{Arc, Mutex, OnceLock};

#[cfg(feature = "torch")]
use cudarc::driver::CudaStream;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};

#[cfg(feature = "torch")]
/// Loads libtorch's CUDA half so that tch sees CUDA (design §4). Fails cleanly where CUDA
/// libraries are missing. Idempotent.
pub fn load_torch_cuda() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let name = CString::new("libtorch_cuda.so").unwrap();
        // SAFETY: `name` is a NUL-terminated string that outlives the call; dlopen runs the
        // library's initialisers, which is what loading libtorch_cuda is for.
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        !h.is_null()
    })
}
#[cfg(feature = "torch")]
use std::ffi::CString;

/// Why the CUDA path cannot run here, or `Ok` if it can (probed once per process).
pub fn available() -> Result<()> {
    static PROBE: OnceLock<Result<()>> = OnceLock::new();
    PROBE.get_or_init(probe).clone()
}

fn probe() -> Result<()> {
    // SAFETY: only tries to load libcuda (dlopen); no driver call is made when it is missing.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::CudaUnavailable("no CUDA driver (libcuda.so) on this machine".into()));
    }
    cudarc::driver::result::init().map_err(|e| Error::CudaUnavailable(format!("cuInit failed: {e:?}")))?;
    let n = CudaContext::device_count().map_err(|e| Error::CudaUnavailable(format!("cannot count devices: {e:?}")))?;
    if n == 0 {
        return Err(Error::CudaUnavailable("the driver sees no CUDA device".into()));
    }
    if !compile::nvrtc_present() {
        return Err(Error::CudaUnavailable("NVRTC (libnvrtc.so) not found; kernels cannot be compiled".into()));
    }
    Ok(())
}

/// Kernel names a module may hold at most (the launchers' name tables index below this).
pub const MAX_KERNELS_PER_MODULE: usize = 16;

/// One device: its context and its compiled kernels.
///
/// The launch path reads kernel handles from a fixed table, one cell per (module, kernel index),
/// filled once: no lock, no hashing, no formatting. Only a cell's first fill
/// (compiling its module, loading the function) takes the `cold` lock, which also keeps two
/// threads from compiling the same module at once.
pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub arch: String,
    modules: [OnceLock<Arc<CudaModule>>; compile::MODULES.len()],
    functions: [[OnceLock<CudaFunction>; MAX_KERNELS_PER_MODULE]; compile::MODULES.len()],
    cold: Mutex<()>,
}

impl Device {
    /// The cached device for a CUDA ordinal (created on first use). After the first call for an
    /// ordinal this is a table read and a reference count, without a lock.
    pub fn get(ordinal: usize) -> Result<Arc<Device>> {
        // One cell per ordinal the driver reports, or why there are none.
        type Slots = Result<Box<[OnceLock<Arc<Device>>]>>;
        static DEVICES: OnceLock<Slots> = OnceLock::new();
        static CREATE: Mutex<()> = Mutex::new(());
        let slots = DEVICES.get_or_init(|| {
            available()?;
            let n = CudaContext::device_count().map_err(|e| Error::CudaUnavailable(format!("cannot count devices: {e:?}")))?;
            Ok((0..n.max(0)).map(|_| OnceLock::new()).collect())
        });
        let slots = slots.as_ref().map_err(Clone::clone)?;
        let slot = slots
            .get(ordinal)
            .ok_or_else(|| Error::CudaUnavailable(format!("no CUDA device {ordinal} (this machine has {})", slots.len())))?;
        if let Some(d) = slot.get() {
            return Ok(d.clone());
        }
        let _one = CREATE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = slot.get() {
            return Ok(d.clone());
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::CudaUnavailable(format!("device {ordinal}: {e:?}")))?;
        // SAFETY: we pass raw pointers only, ordered by the caller's stream: cudarc's per-buffer
        // event tracking has nothing to track (the C ABI's temporaries live on one stream too).
        unsafe { ctx.disable_event_tracking() };
        let (maj, min) = ctx.compute_capability().map_err(cuda_err)?;
        let d = Arc::new(Device {
            ctx,
            arch: format!("compute_{maj}{min}"),
            modules: std::array::from_fn(|_| OnceLock::new()),
            functions: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            cold: Mutex::new(()),
        });
        Ok(slot.get_or_init(|| d).clone())
    }

    /// Kernel `name`, index `index` of module slot `module` (`compile::MODULES`), compiling the
    /// module on first use. The launchers' tables give the triple; a wrong index is an error, and
    /// a name the module lacks fails at load.
    pub fn kernel(&self, module: usize, index: usize, name: &'static str) -> Result<&CudaFunction> {
        let cell = self
            .functions
            .get(module)
            .and_then(|m| m.get(index))
            .ok_or_else(|| Error::Arg(format!("kernel {name}: no slot ({module}, {index})")))?;
        if let Some(f) = cell.get() {
            return Ok(f);
        }
        let _cold = self.cold.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = cell.get() {
            return Ok(f);
        }
        let m = match self.modules[module].get() {
            Some(m) => m.clone(),
            None => {
                let c = compile::compile_module_cached(&compile::MODULES[module], &self.arch)?;
                let m = self.ctx.load_module(Ptx::from_src(c.ptx)).map_err(cuda_err)?;
                self.modules[module].get_or_init(|| m).clone()
            }
        };
        let f = m.load_function(name).map_err(cuda_err)?;
        Ok(cell.get_or_init(|| f))
    }

    #[cfg(feature = "torch")]
    /// Torch's current CUDA stream on this device, so our kernels are ordered with its work
    /// (falls back to the legacy default stream where libtorch_cuda does not export it).
    pub fn torch_stream(&self) -> Arc<CudaStream> {
        let raw = torch_current_stream(self.ctx.ordinal() as i32).unwrap_or(std::ptr::null_mut());
        // SAFETY: torch's streams (and the legacy default stream, null) are never destroyed while
        // the process runs, so the borrowed handle outlives the wrapper; it belongs to this
        // device's primary context, the one `ctx` retains.
        unsafe { self.ctx.wrap_borrowed_stream(raw as cudarc::driver::sys::CUstream) }
    }
}

pub(crate) fn cuda_err(e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{e:?}"))
}

#[cfg(feature = "torch")]
/// `aoti_torch_get_current_cuda_stream` from libtorch_cuda (C shim), looked up at run time.
fn torch_current_stream(device: i32) -> Option<*mut std::ffi::c_void> {
    type GetStream = unsafe extern "C" fn(i32, *mut *mut std::ffi::c_void) -> i32;
    static SYM: OnceLock<Option<usize>> = OnceLock::new();
    let f = (*SYM.get_or_init(|| {
        load_torch_cuda();
        let name = CString::new("aoti_torch_get_current_cuda_stream").unwrap();
        // SAFETY: `name` is NUL-terminated and outlives the call; dlsym only looks the name up.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        (!p.is_null()).then_some(p as usize)
    }))?;
    // SAFETY: `f` is the non-null address of libtorch's C shim
    // `AOTITorchError aoti_torch_get_current_cuda_stream(int32_t device, void** ret_stream)`,
    // whose ABI is `GetStream`; the library stays loaded (never dlclosed).
    let f: GetStream = unsafe { std::mem::transmute::<usize, GetStream>(f) };
    let mut s = std::ptr::null_mut();
    // SAFETY: `s` is a valid out-pointer for the call; the shim reports failure by status.
    (unsafe { f(device, &mut s) } == 0).then_some(s)
}
