//! Property-based robustness of the file parsers: random or mutated `.npy` / safetensors bytes
//! never panic.
use proptest::prelude::*;

proptest! {
    #[test]
    fn file_parsers_never_panic_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400), npy: bool) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(if npy { "f.npy" } else { "f.safetensors" });
        std::fs::write(&p, &bytes).unwrap();
        // Any outcome but a panic is fine; random bytes must not parse as a feature by accident
        // unless they really form a header.
        let _ = featjnd_research::io::load_array(&p, None);
    }

    #[test]
    fn file_parsers_never_panic_on_mutated_valid_files(cut in 0usize..200, flip in 0usize..200, val: u8, npy: bool) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(if npy { "f.npy" } else { "f.safetensors" });
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape([2, 3]);
        featjnd_research::io::save_tensor(&p, &t).unwrap();
        let mut b = std::fs::read(&p).unwrap();
        if flip < b.len() { b[flip] = val; }
        b.truncate(b.len().saturating_sub(cut % 8 * (cut / 8 % 2)));
        std::fs::write(&p, &b).unwrap();
        let _ = featjnd_research::io::load_array(&p, None);
    }
}
