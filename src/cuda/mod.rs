//! The CUDA path: a per-device cache of NVRTC-compiled modules and kernel handles (compiled on
//! first use for the device's architecture), the launchers on typed raw device pointers
//! ([`raw`]: `unsafe fn`s, one section per kernel family), and the interop with torch's CUDA
//! stream. Every entry point checks that a driver and a device exist and returns
//! [`Error::CudaUnavailable`] otherwise; nothing here panics on a machine without a GPU.

pub mod compile;
pub mod raw;

pub use raw::{DevPtr, DevPtrMut};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

#[cfg(feature = "torch")]
use cudarc::driver::CudaStream;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};

#[cfg(feature = "torch")]
/// Loads libtorch's CUDA half so that tch sees CUDA (DESIGN §4). Fails cleanly where CUDA
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

/// One device: its context and its compiled kernels.
pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub arch: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Kernel handles by their static name (no allocation on the launch path).
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
}

impl Device {
    /// The cached device for a CUDA ordinal (created on first use).
    pub fn get(ordinal: usize) -> Result<Arc<Device>> {
        static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<Device>>>> = OnceLock::new();
        available()?;
        let mut map = DEVICES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = map.get(&ordinal) {
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
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        });
        map.insert(ordinal, d.clone());
        Ok(d)
    }

    /// A kernel function, compiling its file on first use (both cached).
    pub fn function(&self, file: &'static str, name: &'static str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(f.clone());
        }
        let f = self.load(file, name)?;
        self.functions.lock().unwrap_or_else(|e| e.into_inner()).insert(name, f.clone());
        Ok(f)
    }

    fn load(&self, file: &'static str, name: &str) -> Result<CudaFunction> {
        let mut mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let module = match mods.get(file) {
            Some(m) => m.clone(),
            None => {
                let src = compile::KERNELS
                    .iter()
                    .find(|(n, _)| *n == file)
                    .map(|(_, s)| *s)
                    .ok_or_else(|| Error::Arg(format!("no kernel file {file}")))?;
                let c = compile::compile(file, src, &self.arch)?;
                let m = self.ctx.load_module(Ptx::from_src(c.ptx)).map_err(cuda_err)?;
                mods.insert(file, m.clone());
                m
            }
        };
        module.load_function(name).map_err(cuda_err)
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
