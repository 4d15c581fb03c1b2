//! The .npy and safetensors readers on arbitrary bytes (first byte picks the format and whether a
//! tensor name is asked for).
//!
//! Shared by the libFuzzer target (`fuzz/fuzz_targets/arrays.rs`) and the stable harness of the
//! test command (docs/fuzzing.md).
/// One input (the fuzz target's body; also run by the stable harness).
pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 3 {
        0 => drop(featjnd_research::io::parse_npy(rest)),
        1 => drop(featjnd_research::io::parse_safetensors(rest, None)),
        _ => drop(featjnd_research::io::parse_safetensors(rest, Some("x"))),
    }
}
