//! libFuzzer entry of `targets/coco.rs` (docs/fuzzing.md).
#![no_main]
#[path = "../targets/coco.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
