//! Fashion-MNIST loader: hand-made IDX fixtures (plain and gzip), malformed files, and the real
//! Debian files when they are installed.
mod common;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use featjnd_research::data::fashion_mnist::{read_idx, FashionMnist, Split, CLASS_NAMES, DEFAULT_DIR, DIR_ENV};
use featjnd_research::Error;

/// An IDX byte string of u8 with the given dims and payload (the payload is not checked).
fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Three 28×28 images: image k is filled with 100·k, so pixel 0 of image 2 is 200. Labels 9, 0, 3.
fn fixture() -> (Vec<u8>, Vec<u8>) {
    let px: Vec<u8> = (0..3u8).flat_map(|k| std::iter::repeat_n(100 * k, 28 * 28)).collect();
    (idx(&[3, 28, 28], &px), idx(&[3], &[9, 0, 3]))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn io_msg(r: featjnd_research::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::Io(m)) => m,
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

fn check_fixture(ds: &FashionMnist) {
    assert_eq!((ds.n, ds.rows, ds.cols), (3, 28, 28));
    assert_eq!(ds.labels, vec![9, 0, 3]);
    let (x, y) = ds.batch(&[2, 0]);
    assert_eq!(x.size(), vec![2, 1, 28, 28]);
    assert_eq!(x.kind(), tch::Kind::Float);
    assert_eq!(y.kind(), tch::Kind::Int64);
    assert_eq!(Vec::<i64>::try_from(&y).unwrap(), vec![3, 9]);
    let x = Vec::<f32>::try_from(&x.flatten(0, -1)).unwrap();
    assert!((x[0] - 200.0 / 255.0).abs() < 1e-6);
    assert_eq!(x[28 * 28], 0.0);
}

#[test]
fn loads_plain_and_gzip_fixtures() {
    let _rng = common::rng_lock();
    let (img, lbl) = fixture();
    let plain = tempfile::tempdir().unwrap();
    write(plain.path(), "t10k-images-idx3-ubyte", &img);
    write(plain.path(), "t10k-labels-idx1-ubyte", &lbl);
    check_fixture(&FashionMnist::load_from(plain.path(), Split::Test).unwrap());

    let gz = tempfile::tempdir().unwrap();
    write(gz.path(), "train-images-idx3-ubyte.gz", &gzip(&img));
    write(gz.path(), "train-labels-idx1-ubyte.gz", &gzip(&lbl));
    check_fixture(&FashionMnist::load_from(gz.path(), Split::Train).unwrap());
    // gzip is detected by content, not by the name.
    write(gz.path(), "gz-named-plain", &gzip(&lbl));
    assert_eq!(read_idx(&gz.path().join("gz-named-plain")).unwrap().data, vec![9, 0, 3]);

    let (x, y) = FashionMnist::load_from(gz.path(), Split::Train).unwrap().batch(&[]);
    assert_eq!((x.size(), y.size()), (vec![0, 1, 28, 28], vec![0]));
}

#[test]
fn malformed_files_are_io_errors() {
    let _rng = common::rng_lock();
    let (img, lbl) = fixture();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let load = |img: &[u8], lbl: &[u8]| {
        write(d, "train-images-idx3-ubyte", img);
        write(d, "train-labels-idx1-ubyte", lbl);
        io_msg(FashionMnist::load_from(d, Split::Train))
    };

    // Truncated payload, truncated header, empty file, truncated gzip stream.
    assert!(load(&img[..img.len() - 1], &lbl).contains("need"));
    assert!(load(&img[..10], &lbl).contains("truncated header"));
    assert!(load(&[], &lbl).contains("magic"));
    let gz = gzip(&img);
    assert!(load(&gz[..gz.len() / 2], &lbl).contains("gzip"));
    // Trailing bytes are a length mismatch too.
    assert!(load(&[img.as_slice(), &[0]].concat(), &lbl).contains("need"));
    // Wrong magic: a float IDX (type 0x0d) and garbage.
    let mut float = img.clone();
    float[2] = 0x0d;
    assert!(load(&float, &lbl).contains("magic"));
    assert!(load(b"not an idx file at all", &lbl).contains("magic"));
    // Wrong ranks: labels as images and the other way round.
    assert!(load(&lbl, &lbl).contains("3 dims"));
    assert!(load(&img, &img).contains("1 dim"));
    // Count mismatch and a label outside 0..10.
    assert!(load(&img, &idx(&[2], &[1, 2])).contains("3 images but 2 labels"));
    assert!(load(&img, &idx(&[3], &[1, 10, 2])).contains("label[1] = 10"));
}

#[test]
fn env_var_overrides_the_directory() {
    let _rng = common::rng_lock();
    let (img, lbl) = fixture();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "t10k-images-idx3-ubyte.gz", &gzip(&img));
    write(dir.path(), "t10k-labels-idx1-ubyte", &lbl);
    // Only this test touches the variable, so setting it cannot race with another reader.
    std::env::set_var(DIR_ENV, dir.path());
    let ds = FashionMnist::load(Split::Test);
    std::env::remove_var(DIR_ENV);
    check_fixture(&ds.unwrap());
}

#[test]
fn missing_files_name_the_fix() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let msg = io_msg(FashionMnist::load_from(dir.path(), Split::Test));
    assert!(msg.contains("t10k-images-idx3-ubyte"), "{msg}");
    assert!(msg.contains("scripts/setup.sh") && msg.contains("dataset-fashion-mnist"), "{msg}");
}

#[test]
fn real_debian_files() {
    let _rng = common::rng_lock();
    if !Path::new(DEFAULT_DIR).join("train-images-idx3-ubyte.gz").is_file() {
        common::skip!("SKIP real_debian_files: {DEFAULT_DIR} absent (run scripts/setup.sh)");
        return;
    }
    for (split, n) in [(Split::Train, 60_000), (Split::Test, 10_000)] {
        let t = Instant::now();
        let ds = FashionMnist::load_from(DEFAULT_DIR, split).unwrap();
        println!("{split:?}: loaded {} images in {:.2?}", ds.n, t.elapsed());
        assert_eq!((ds.n, ds.rows, ds.cols), (n, 28, 28));
        assert_eq!(ds.images.len(), n * 28 * 28);
        let mut counts = [0usize; 10];
        for &l in &ds.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [n / 10; 10], "{split:?} class counts");
        let (x, y) = ds.batch(&[0, n - 1]);
        assert_eq!(x.size(), vec![2, 1, 28, 28]);
        assert!(x.max().double_value(&[]) <= 1.0 && x.min().double_value(&[]) >= 0.0);
        assert_eq!(y.size(), vec![2]);
    }
    assert_eq!(CLASS_NAMES[9], "Ankle boot");
}
