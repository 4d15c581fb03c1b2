//! The file parsers under the stable fuzzing harness (docs/fuzzing.md): the libFuzzer targets'
//! own bodies (`fuzz/targets/{fjq,arrays,coco}.rs`) on a fixed number of mutated inputs from
//! valid seeds, so they run in the test command on stable Rust. Invariant: an error or a value,
//! never a panic, a hang or a huge allocation.
#[path = "../../../fuzz/targets/arrays.rs"]
mod arrays;
#[path = "../../../fuzz/targets/coco.rs"]
mod coco;
#[path = "../../../fuzz/targets/fjq.rs"]
mod fjq;
#[path = "../../../fuzz/targets/mutate.rs"]
mod mutate;

use featjnd_research::io;

#[test]
fn the_fjq_decoder_survives_mutated_files() {
    // The body builds a valid file from the input and then damages it, so random seeds suffice.
    let mut r = mutate::Rng::new(11);
    let seeds: Vec<Vec<u8>> = (0..32).map(|k| (0..8 + 13 * k).map(|_| r.next() as u8).collect()).collect();
    mutate::campaign("fjq", &seeds, 3000, 2048, fjq::run);
}

#[test]
fn the_array_readers_survive_mutated_files() {
    let d = tempfile::tempdir().unwrap();
    let mut seeds = Vec::new();
    for (i, shape) in [vec![3usize], vec![2, 3, 4], vec![1, 1, 1, 5]].iter().enumerate() {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|k| k as f32 * 0.5 - 1.0).collect();
        let npy = d.path().join(format!("a{i}.npy"));
        io::save_npy_f32(&npy, shape, &v).unwrap();
        let st = d.path().join("x.safetensors");
        let t = tch::Tensor::from_slice(&v).reshape(shape.iter().map(|&s| s as i64).collect::<Vec<_>>());
        io::save_tensor(&st, &t).unwrap();
        // The body's first byte picks the reader: 0 npy, 1 and 2 safetensors.
        for (sel, p) in [(0u8, &npy), (1, &st), (2, &st)] {
            let mut b = vec![sel];
            b.extend(std::fs::read(p).unwrap());
            seeds.push(b);
        }
    }
    mutate::campaign("arrays", &seeds, 20000, 4096, arrays::run);
}

#[test]
fn the_coco_readers_survive_mutated_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/coco");
    let mut seeds = Vec::new();
    for name in ["basic", "crowd", "maskboxes"] {
        let gt = std::fs::read(dir.join(format!("{name}.gt.json"))).unwrap();
        let dt = std::fs::read(dir.join(format!("{name}.dt.json"))).unwrap();
        // "<gt json>\0<dt json>", as the body splits it.
        seeds.push([gt.as_slice(), b"\0", dt.as_slice()].concat());
    }
    mutate::campaign("coco", &seeds, 3000, 8192, coco::run);
}
