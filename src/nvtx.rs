//! NVTX ranges around every op (Nsight Systems timelines read "featjnd::quantize" etc.). The NVTX
//! library is loaded at run time; where it is absent (CPU machines, or a CUDA install without
//! libnvToolsExt) every range is a no-op, probed once.
use std::sync::OnceLock;

fn present() -> bool {
    static P: OnceLock<bool> = OnceLock::new();
    *P.get_or_init(|| {
        // SAFETY: only probes whether the NVTX library can be loaded (dlopen); nothing is called.
        std::env::var_os("FEATJND_NO_NVTX").is_none() && unsafe { cudarc::nvtx::sys::is_culib_present() }
    })
}

/// A range that ends when dropped.
pub struct Range {
    _guard: Option<cudarc::nvtx::safe::Range>,
}

/// Starts a range named `name` (nothing happens without an NVTX library).
#[inline]
pub fn range(name: &'static str) -> Range {
    Range { _guard: present().then(|| cudarc::nvtx::safe::scoped_range(name)) }
}
