//! libFuzzer entry of `targets/fjq.rs` (docs/fuzzing.md).
#![no_main]
#[path = "../targets/fjq.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
