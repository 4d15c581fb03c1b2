//! The .npy and safetensors readers on arbitrary bytes (first byte picks the format and whether a
//! tensor name is asked for).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 3 {
        0 => drop(featjnd_research::io::parse_npy(rest)),
        1 => drop(featjnd_research::io::parse_safetensors(rest, None)),
        _ => drop(featjnd_research::io::parse_safetensors(rest, Some("x"))),
    }
});
