//! The executors a conformance case runs on (contract §9): the host always, and CUDA device 0
//! where this machine has one (otherwise one SKIP line per test, counted by `scripts/test.sh`).
//!
//! A case is written once against [`Exec`]: `input`/`output` give the `Buf` views of its arrays
//! (the host arrays themselves on the host; device copies on CUDA), `run` runs the validated call
//! and, on CUDA, copies every output back into its host array, so the case compares the same host
//! arrays with the reference on every executor. An in-place call uses one view twice
//! (`Buf::named`), as on the host.
//!
//! Rule for cases: a host array given to `output` outlives the next `run`, which copies it back
//! (once: an output view used again in a later run is not copied back again, so make a new view).
//! An `Exec` is made per case ([`each`]); its device arrays live as long as it does.
#![allow(dead_code)]
use std::cell::RefCell;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use featjnd_kernels::call::{self, Buf, Call, Elem, Executor, Mem};

/// One executor and what a case made on it.
pub struct Exec {
    cuda: Option<Gpu>,
}

struct Gpu {
    exec: call::Cuda,
    stream: Arc<CudaStream>,
    arrays: RefCell<Vec<DeviceCopy>>,
}

/// A device copy of a case's array: (device bytes, host address, host bytes, an output not yet
/// copied back).
type DeviceCopy = (CudaSlice<u8>, usize, usize, bool);

/// Runs `case` on the host executor, then on the CUDA one where a device is present (a fresh
/// [`Exec`] each, so no array outlives its case).
pub fn each(mut case: impl FnMut(&Exec)) {
    case(&Exec::host());
    match gpu() {
        Ok(g) => case(&Exec { cuda: Some(g) }),
        Err(e) => skip_once(&e.to_string()),
    }
}

/// One SKIP line per test (not per case) for the CUDA executor.
fn skip_once(why: &str) {
    use std::io::Write as _;
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let name = std::thread::current().name().unwrap_or("?").to_string();
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !said.contains(&name) {
        // Straight to stderr, past the harness's capture, so that scripts/test.sh counts it.
        let _ = writeln!(std::io::stderr().lock(), "\nSKIP {name} on the CUDA executor (no GPU): {why}");
        said.push(name);
    }
}

fn gpu() -> featjnd_kernels::Result<Gpu> {
    featjnd_kernels::cuda::available()?;
    let dev = featjnd_kernels::cuda::Device::get(0)?;
    // SAFETY: the null stream (the legacy default stream of device 0's primary context) lives as
    // long as the context, which the cached `Device` keeps.
    let exec = unsafe { call::Cuda::borrowed(0, std::ptr::null_mut(), true)? };
    Ok(Gpu { exec, stream: dev.ctx.default_stream(), arrays: RefCell::new(Vec::new()) })
}

impl Exec {
    /// The host executor alone (for checks that are about host memory).
    pub fn host() -> Exec {
        Exec { cuda: None }
    }

    pub fn name(&self) -> &'static str {
        if self.cuda.is_some() {
            "CUDA"
        } else {
            "host"
        }
    }

    /// The executor's view of `v` (read only).
    pub fn input<T: Copy>(&self, name: &'static str, v: &[T], elem: Elem) -> Buf {
        self.view(name, v.as_ptr() as usize, v.len(), std::mem::size_of::<T>(), elem, false)
    }

    /// The executor's view of `v`, which the call may write; after [`run`](Self::run), `v` holds
    /// what the call wrote on every executor.
    pub fn output<T: Copy>(&self, name: &'static str, v: &mut [T], elem: Elem) -> Buf {
        self.view(name, v.as_mut_ptr() as usize, v.len(), std::mem::size_of::<T>(), elem, true)
    }

    fn view(&self, name: &'static str, addr: usize, len: usize, size: usize, elem: Elem, writable: bool) -> Buf {
        let Some(g) = &self.cuda else {
            // SAFETY: a test's array that outlives every call made from the view (the cases keep
            // their arrays until they compare them); the call writes it only when `writable`.
            return unsafe { Buf::new(name, addr, len, elem, Mem::Host, writable) };
        };
        let bytes = len * size;
        // SAFETY: the caller's live array of `bytes` bytes, only read here.
        let host = unsafe { std::slice::from_raw_parts(addr as *const u8, bytes) };
        let d = g.stream.clone_htod(host).expect("copy a test array to the device");
        let ptr = d.device_ptr(&g.stream).0 as usize;
        g.arrays.borrow_mut().push((d, addr, bytes, writable));
        // SAFETY: a device allocation of `bytes` bytes, kept by this executor until it is dropped.
        unsafe { Buf::new(name, ptr, len, elem, Mem::Cuda(0), writable) }
    }

    /// Runs a validated call here; on CUDA the outputs are then copied back into their host
    /// arrays (after a sync).
    pub fn run<C: Call>(&self, c: &C) -> featjnd_kernels::Result<C::Output> {
        let Some(g) = &self.cuda else { return Executor::Host(None).run(c) };
        let out = Executor::Cuda(&g.exec).run(c);
        g.stream.synchronize().expect("synchronize the test stream");
        for (d, addr, bytes, pending) in g.arrays.borrow_mut().iter_mut() {
            if std::mem::take(pending) {
                let v = g.stream.clone_dtoh(d).expect("copy a test array back");
                // SAFETY: the host array this output mirrors is alive (it outlives the first run
                // after its view was made, the rule above) and not borrowed during the run; `v`
                // has its `bytes` bytes.
                unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), *addr as *mut u8, *bytes) };
            }
        }
        out
    }
}
