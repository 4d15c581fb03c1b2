//! The .fjq decoder on arbitrary bytes: an error or a decoded feature, never a panic or a hang.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = featjnd::codec::decode(data);
});
