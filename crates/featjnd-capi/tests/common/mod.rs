//! Helpers shared by the CPU-context tests of the sync-free and batched C calls
//! (`capi_async.rs`, `capi_batch.rs`): the last error, a CPU context, Philox data, the shapes.
#![allow(dead_code)] // each test binary uses its own subset
use featjnd::*;
use std::ffi::CStr;
use std::ptr::null_mut;

pub fn err() -> String {
    // SAFETY: fj_last_error returns this thread's NUL-terminated message, valid until the next call.
    unsafe { CStr::from_ptr(fj_last_error()) }.to_string_lossy().into_owned()
}

/// A CPU context on the process-wide pool.
pub fn ctx() -> *mut FjContext {
    let o = FjContextOptions {
        size: std::mem::size_of::<FjContextOptions>() as u32,
        device: -1,
        num_threads: 0,
        pointer_checks: FJ_POINTERS_CHECKED,
    };
    let mut c = null_mut();
    // SAFETY: `o` is a full options struct and `c` a writable out-pointer.
    assert_eq!(unsafe { fj_context_create(&o, &mut c) }, FJ_OK, "{}", err());
    c
}

/// Philox values (key `seed`): no global RNG, so tests cannot disturb each other.
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    featjnd_kernels::philox::fill(&mut v, 0, seed, 0, featjnd_kernels::NoiseKind::Gaussian);
    v
}

/// (layout, dims, patch): 1, 210, 3060 (patch 2), 3075 and 10274 elements.
pub const CASES: [(u32, [u64; 4], u32); 5] = [
    (FJ_NCHW, [1, 1, 1, 1], 1),
    (FJ_NCHW, [2, 7, 5, 3], 1),
    (FJ_NCHW, [3, 17, 6, 10], 2),
    (FJ_NTC, [1, 3, 1025, 0], 1),
    (FJ_NTC, [2, 1, 5137, 0], 1),
];

/// Elements of a feature of `layout` with `dims` (NTC ignores `dims[3]`).
pub fn numel(layout: u32, d: [u64; 4]) -> usize {
    if layout == FJ_NTC {
        (d[0] * d[1] * d[2]) as usize
    } else {
        (d[0] * d[1] * d[2] * d[3]) as usize
    }
}
