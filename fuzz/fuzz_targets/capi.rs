//! libFuzzer entry of `targets/capi.rs` (docs/fuzzing.md).
#![no_main]
#[path = "../targets/capi.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
