//! The C entry points under the stable fuzzing harness (docs/fuzzing.md): the libFuzzer target's
//! own body (`fuzz/targets/capi.rs`: descriptors, option sizes, enum codes, null and misaligned
//! pointers and data bits decoded from the input) on a fixed number of mutated inputs, so it runs
//! in the test command on stable Rust. Invariants: a known status, never `FJ_ERR_PANIC`, nothing
//! written on an argument error.
#[path = "../../../fuzz/targets/capi.rs"]
mod capi;
#[path = "../../../fuzz/targets/mutate.rs"]
mod mutate;

#[test]
fn the_c_entry_points_survive_mutated_inputs() {
    let mut r = mutate::Rng::new(7);
    let seeds: Vec<Vec<u8>> = (0..16).map(|k| (0..24 + 37 * k).map(|_| r.next() as u8).collect()).collect();
    mutate::campaign("capi", &seeds, 100_000, 4096, capi::run);
}
