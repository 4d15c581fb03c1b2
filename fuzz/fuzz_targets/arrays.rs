//! libFuzzer entry of `targets/arrays.rs` (docs/fuzzing.md).
#![no_main]
#[path = "../targets/arrays.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
