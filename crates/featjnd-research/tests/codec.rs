//! The feature codec (`featjnd_research::codec`, `featjnd encode/decode`): bit-exact round trips, corrupted
//! files, the real size against contract §4's entropy estimate, and the CLI.
mod common;
use std::path::Path;
use std::process::{Command, Output};

use featjnd_research::codec::{self, Encoded};
use featjnd_research::ops;
use featjnd_research::{io, Bits, Layout, Reduce, Strategy};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn raw_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.contiguous();
    let n = t.numel();
    let mut b = vec![0u8; n * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut b, n);
    b
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

/// A feature with a spatially varying scale, post-ReLU-like (many exact zeros) when `relu`, and a
/// tolerance map that follows the scale.
fn feature(sizes: &[i64], kind: Kind, seed: i64, relu: bool) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let opts = (Kind::Float, Device::Cpu);
    let scale = Tensor::rand(sizes, opts) * 2.0 + 0.1;
    let mut x = Tensor::randn(sizes, opts) * &scale;
    if relu {
        x = x.relu();
    }
    let j = &scale * 0.5 + 0.05;
    (x.to_kind(kind), j.to_kind(kind))
}

fn layout_of(sizes: &[i64]) -> Layout {
    if sizes.len() == 4 {
        Layout::Nchw
    } else {
        Layout::Ntc
    }
}

/// JND steps at a budget of `rel` times the mean square of x.
fn steps_for(x: &Tensor, j: &Tensor, layout: Layout, patch: usize, rel: f64, strategy: Strategy) -> Tensor {
    let ms = f64::try_from(x.to_kind(Kind::Float).square().mean(Kind::Double)).unwrap().max(1e-6);
    let jt = ops::token_tolerance(j, layout, patch, Reduce::Mean).unwrap();
    ops::allocate_steps(&jt, rel * ms, strategy).unwrap()
}

fn check_round_trip(enc: &Encoded, x: &Tensor, layout: Layout, patch: usize, bits: Bits, what: &str) {
    let d = codec::decode(&enc.bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(d.recon.kind(), x.kind(), "{what}");
    assert_eq!(d.recon.size(), x.size(), "{what}");
    assert_eq!((d.layout, d.patch, d.bits), (layout, patch, bits), "{what}");
    assert_eq!(raw_bytes(&d.symbols), raw_bytes(&enc.symbols), "{what}: symbols");
    assert_eq!(raw_bytes(&d.steps), raw_bytes(&enc.steps), "{what}: steps");
    assert_eq!(raw_bytes(&d.recon), raw_bytes(&enc.recon), "{what}: recon not bit-identical");
    // The encoder's recon is ops::quantize's with the stored steps (contract §4).
    let opts = ops::QuantizeOptions { bits, ..Default::default() };
    let q = ops::quantize(x, layout, patch, &enc.steps, &opts).unwrap();
    assert_eq!(raw_bytes(q.recon.as_ref().unwrap()), raw_bytes(&d.recon), "{what}: recon vs ops::quantize");
    assert_eq!(d.rate.file_bytes, enc.bytes.len());
    assert_eq!(d.sections, enc.sections);
    assert_eq!(enc.sections.total(), enc.bytes.len());
    // Stored steps are usable (rounded to the log grid, or one exact tensor step).
    for v in floats(&enc.steps) {
        assert!(v > 0.0 && v.is_finite());
    }
}

#[test]
fn round_trip_is_bit_exact_for_every_dtype_layout_and_width() {
    let _rng = common::rng_lock();
    let shapes: &[(&[i64], &[usize])] = &[
        (&[1, 7, 17, 1], &[1]),
        (&[1, 1, 1, 1], &[1]),
        (&[7, 1, 17, 7], &[1]),
        (&[1, 17, 7, 17], &[1]),
        (&[2, 7, 14, 6], &[1, 2]),
        (&[1, 3, 4, 8], &[2, 4]),
        (&[1, 7, 17], &[1]),
        (&[7, 17, 1], &[1]),
        (&[2, 1, 17], &[1]),
    ];
    let mut seed = 0;
    for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
        for &(sizes, patches) in shapes {
            for &patch in patches {
                for bits in [Bits::B8, Bits::B16] {
                    for (rel, relu, strategy) in
                        [(0.01, false, Strategy::Jnd), (0.3, true, Strategy::Permuted { seed: 3 }), (1e-9, false, Strategy::Uniform)]
                    {
                        seed += 1;
                        let (x, j) = feature(sizes, kind, seed, relu);
                        let layout = layout_of(sizes);
                        let steps = steps_for(&x, &j, layout, patch, rel, strategy);
                        let enc = codec::encode(&x, &steps, layout, patch, bits).unwrap();
                        let what = format!("{kind:?} {sizes:?} p{patch} b{} rel {rel}", bits.bits());
                        check_round_trip(&enc, &x, layout, patch, bits, &what);
                        if rel < 1e-6 && bits == Bits::B8 {
                            assert!(enc.clamped > 0 || x.numel() < 4, "{what}: tiny steps should clamp");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn degenerate_and_wide_alphabets() {
    let _rng = common::rng_lock();
    // All zeros: a one-symbol alphabet, no payload (version 3: no chunks, an empty index).
    let x = Tensor::zeros([1, 4, 3, 3], (Kind::Float, Device::Cpu));
    let steps = Tensor::ones([9], (Kind::Float, Device::Cpu));
    let enc = codec::encode(&x, &steps, Layout::Nchw, 1, Bits::B8).unwrap();
    assert_eq!(enc.rate.alphabet, 1);
    assert_eq!(enc.sections.payload, 0);
    check_round_trip(&enc, &x, Layout::Nchw, 1, Bits::B8, "zeros");
    // 16-bit symbols over a wide range (thousands of distinct values).
    let (x, j) = feature(&[1, 64, 16, 16], Kind::Float, 99, false);
    let steps = steps_for(&x, &j, Layout::Nchw, 1, 1e-7, Strategy::Jnd);
    let enc = codec::encode(&x, &steps, Layout::Nchw, 1, Bits::B16).unwrap();
    assert!(enc.rate.alphabet > 1000, "{}", enc.rate.alphabet);
    check_round_trip(&enc, &x, Layout::Nchw, 1, Bits::B16, "wide");
    // Steps are stored with one power-of-two scale: huge and tiny features both work.
    for s in [1e-30f64, 1e30] {
        let xs = &x * s;
        let st = &steps * s;
        let enc = codec::encode(&xs, &st, Layout::Nchw, 1, Bits::B16).unwrap();
        check_round_trip(&enc, &xs, Layout::Nchw, 1, Bits::B16, "scaled");
    }
    // Bad steps are errors, not files.
    let bad = Tensor::from_slice(&[1.0f32, 0.0, 1.0]);
    assert!(codec::encode(&Tensor::ones([1, 3, 2], (Kind::Float, Device::Cpu)), &bad, Layout::Ntc, 1, Bits::B8).is_err());
    // A spread of 2^66 is fine on the log grid, a subnormal step is not.
    let spread = Tensor::from_slice(&[1.0f32, 1e-20, 1.0]);
    let enc = codec::encode(&Tensor::ones([1, 3, 2], (Kind::Float, Device::Cpu)), &spread, Layout::Ntc, 1, Bits::B8).unwrap();
    check_round_trip(&enc, &Tensor::ones([1, 3, 2], (Kind::Float, Device::Cpu)), Layout::Ntc, 1, Bits::B8, "spread");
    let spread = Tensor::from_slice(&[1.0f32, 1e-40, 1.0]);
    let e = codec::encode(&Tensor::ones([1, 3, 2], (Kind::Float, Device::Cpu)), &spread, Layout::Ntc, 1, Bits::B8).unwrap_err();
    assert!(e.to_string().contains("cannot be stored"), "{e}");
    let wrong = Tensor::ones([4], (Kind::Float, Device::Cpu));
    assert!(codec::encode(&Tensor::ones([1, 3, 2], (Kind::Float, Device::Cpu)), &wrong, Layout::Ntc, 1, Bits::B8).is_err());
}

fn small_file() -> Encoded {
    let (x, j) = feature(&[2, 5, 6, 6], Kind::Half, 7, true);
    let steps = steps_for(&x, &j, Layout::Nchw, 2, 0.05, Strategy::Jnd);
    codec::encode(&x, &steps, Layout::Nchw, 2, Bits::B8).unwrap()
}

fn decode_err(b: &[u8]) -> String {
    match codec::decode(b) {
        Ok(_) => panic!("decoded a bad file of {} bytes", b.len()),
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("fjq:"), "{m}");
            m
        }
    }
}

/// Recomputes the checksum of a modified file (to reach the checks behind it): version 3's header
/// checksum (located from the file's own, possibly modified, fields; left alone when they point
/// outside the file), or versions 1 and 2's CRC of the whole file.
fn recrc(b: &mut [u8]) {
    if b[4..6] == 3u16.to_le_bytes() {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as u64;
        let nd = b[9] as u64;
        let coder = 52 + 8 * nd;
        if coder + 12 > b.len() as u64 {
            return;
        }
        let steps = u64::from_le_bytes(b[40..48].try_into().unwrap());
        let at = (coder + 12).saturating_add(u32_at(48)).saturating_add(steps).saturating_add(8 * u32_at(coder as usize + 8));
        if let Some(at) = usize::try_from(at).ok().filter(|&a| a <= b.len().saturating_sub(4)) {
            let c = crc32fast::hash(&b[..at]);
            b[at..at + 4].copy_from_slice(&c.to_le_bytes());
        }
        return;
    }
    let n = b.len() - 4;
    let c = crc32fast::hash(&b[..n]);
    b[n..].copy_from_slice(&c.to_le_bytes());
}

#[test]
fn truncated_files_are_errors() {
    let _rng = common::rng_lock();
    let enc = small_file();
    let b = &enc.bytes;
    assert!(enc.sections.table > 0 && enc.sections.payload > 8);
    let mut cuts: Vec<usize> = vec![0, 1, 3, 4, 5, 6, 7, 39, 40, 41];
    for &bd in &enc.sections.boundaries()[1..] {
        cuts.extend([bd - 1, bd, bd + 1]);
    }
    cuts.push(enc.sections.boundaries()[4] + 4); // inside the payload length field
    for cut in cuts {
        if cut >= b.len() {
            continue;
        }
        let m = decode_err(&b[..cut]);
        assert!(m.contains("truncated") || m.contains("magic") || m.contains("checksum"), "cut {cut}: {m}");
        if cut >= 6 {
            assert!(m.contains("truncated"), "cut {cut}: {m}");
        }
    }
    // Extra bytes at the end: an error too (version 3 has no checksum at the end: the chunk index
    // says where the file ends).
    let mut longer = b.clone();
    longer.extend_from_slice(&[0, 0, 0, 0]);
    assert!(decode_err(&longer).contains("after the last chunk"));
}

#[test]
fn every_flipped_byte_is_an_error() {
    let _rng = common::rng_lock();
    let enc = small_file();
    let b = &enc.bytes;
    for i in 0..b.len() {
        for mask in [0x01u8, 0x80] {
            let mut c = b.clone();
            c[i] ^= mask;
            let m = decode_err(&c);
            // Version 3 → 2 is another readable version (whose whole-file CRC then fails); a header
            // field that no longer locates the sections is named before the header checksum.
            match i {
                0..=3 => assert!(m.contains("bad magic"), "{i}: {m}"),
                4 | 5 => assert!(m.contains("unsupported .fjq version") || m.contains("checksum mismatch"), "{i}: {m}"),
                _ => assert!(m.contains("checksum mismatch") || m.contains("inconsistent header"), "{i}: {m}"),
            }
        }
    }
    let mut c = b.clone();
    c[..4].copy_from_slice(b"NPY\0");
    assert!(decode_err(&c).contains("not an .fjq file"));
    let mut c = b.clone();
    c[4..6].copy_from_slice(&4u16.to_le_bytes());
    recrc(&mut c);
    assert!(decode_err(&c).contains("version 4"));
    for short in [&b""[..], &b"FJ"[..], &b"FJQ\0"[..], &b"FJQ\0\x01\x00"[..]] {
        decode_err(short);
    }
}

/// Files with a valid checksum whose header lies: each a clear error, never a panic or a giant
/// allocation.
#[test]
fn inconsistent_headers_are_errors() {
    let _rng = common::rng_lock();
    let enc = small_file();
    let put = |off: usize, v: &[u8]| {
        let mut c = enc.bytes.clone();
        c[off..off + v.len()].copy_from_slice(v);
        recrc(&mut c);
        c
    };
    // Version 2 offsets, which version 3 keeps (docs/fjq-format.md).
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (put(6, &[9]), "dtype"),
        (put(7, &[5]), "layout"),
        (put(8, &[12]), "12-bit"),
        (put(9, &[3]), "dimensions"),
        (put(9, &[7]), "dimensions"),
        (put(10, &[7]), "step scope"),
        (put(11, &[9]), "step coding"),
        (put(12, &[5]), "grid size"),
        (put(13, &[1]), "reserved"),
        (put(14, &i16::MAX.to_le_bytes()), "exponent"),
        (put(16, &3u32.to_le_bytes()), "patch"),
        (put(16, &0u32.to_le_bytes()), "patch"),
        (put(20, &0u32.to_le_bytes()), "alphabet"),
        (put(20, &100_000u32.to_le_bytes()), "alphabet"),
        (put(24, &(1u64 << 62).to_le_bytes()), "tokens"),
        (put(24, &17u64.to_le_bytes()), "tokens"),
        (put(32, &u64::MAX.to_le_bytes()), "elements"),
        (put(32, &999u64.to_le_bytes()), "elements"),
        (put(40, &u64::MAX.to_le_bytes()), "inconsistent header"),
        (put(48, &u32::MAX.to_le_bytes()), "inconsistent header"),
        (put(52, &(1u64 << 40).to_le_bytes()), "dimensions"),
        (put(52, &0u64.to_le_bytes()), "elements"),
    ];
    for (c, want) in cases {
        let m = decode_err(&c);
        assert!(m.contains(want), "want {want:?}: {m}");
    }
    // A huge shape that is consistent with itself: refused by the token limits or by the
    // file-size check of the steps, never allocated.
    let mut c = enc.bytes.clone();
    let big = 1u64 << 20;
    for (k, d) in [2u64, 5, big, big].iter().enumerate() {
        c[52 + 8 * k..60 + 8 * k].copy_from_slice(&d.to_le_bytes());
    }
    c[32..40].copy_from_slice(&(2 * 5 * big * big).to_le_bytes());
    c[24..32].copy_from_slice(&(2 * (big / 2) * (big / 2)).to_le_bytes());
    recrc(&mut c);
    decode_err(&c);
    // Table entries: a frequency of zero, and symbols outside ±127.
    let tb = enc.sections.boundaries()[1];
    let mut c = enc.bytes.clone();
    c[tb + 1] = 0;
    recrc(&mut c);
    decode_err(&c);
    // A shifted first symbol is still a valid table (other symbols): it decodes or errors, no panic.
    let mut c = enc.bytes.clone();
    c[tb] = 0x7f;
    recrc(&mut c);
    let _ = codec::decode(&c);
    // A zero f16 step (token-f16 mode), an impossible step section of the log grid.
    let (x, j) = feature(&[2, 5, 6, 6], Kind::Half, 7, true);
    let steps = steps_for(&x, &j, Layout::Nchw, 2, 0.05, Strategy::Jnd);
    let f16 = codec::encode_with(&x, codec::Steps::Token(&steps), Layout::Nchw, 2, Bits::B8, codec::StepCoding::F16).unwrap();
    let mut c = f16.bytes.clone();
    let sb = f16.sections.boundaries()[2];
    c[sb..sb + 2].copy_from_slice(&[0, 0]);
    recrc(&mut c);
    assert!(decode_err(&c).contains("step 0"));
    let sb = enc.sections.boundaries()[2];
    let c = put(sb + 4, &u32::MAX.to_le_bytes());
    assert!(decode_err(&c).contains("table"));
    // A payload length that disagrees with the file.
    let pb = enc.sections.boundaries()[3];
    let c = put(pb, &((enc.sections.payload - 8 - 4) as u64).to_le_bytes());
    decode_err(&c);
    // Garbage payloads with a fixed-up CRC: errors or some reconstruction, never a panic.
    let mut errors = 0;
    for i in (pb + 8..enc.bytes.len() - 4).step_by(3) {
        let mut c = enc.bytes.clone();
        c[i] ^= 0x5a;
        recrc(&mut c);
        errors += codec::decode(&c).is_err() as usize;
    }
    assert!(errors > 0);
}

/// The file size against contract §4's estimate on a realistic 256×32×32 feature.
#[test]
fn file_size_matches_the_entropy_estimate() {
    let _rng = common::rng_lock();
    for (relu, rel, bits) in [(true, 0.01, Bits::B8), (false, 0.003, Bits::B8), (false, 0.001, Bits::B16)] {
        let (x, j) = feature(&[1, 256, 32, 32], Kind::Float, 42, relu);
        let steps = steps_for(&x, &j, Layout::Nchw, 1, rel, Strategy::Jnd);
        let enc = codec::encode(&x, &steps, Layout::Nchw, 1, bits).unwrap();
        let r = enc.rate;
        eprintln!(
            "relu {relu} rel {rel} b{}: {} bytes, {:.4} bpe vs contract estimate {:.4} (gap {:+.3}%), vs H + real step bits {:.4} (gap {:+.3}%), steps {:.3} bits/token, H {:.3}, model {:.4}, A {}, sections {:?}",
            bits.bits(),
            r.file_bytes,
            r.bits_per_element,
            r.estimate_bits_per_element,
            100.0 * r.gap,
            r.coded_estimate_bits_per_element,
            100.0 * r.coded_gap,
            r.step_bits_per_token,
            r.entropy_bits,
            r.model_bits,
            r.alphabet,
            enc.sections
        );
        assert_eq!(r.elements, 262_144);
        assert!(r.entropy_bits > 1.0, "{r:?}");
        assert!(r.coded_gap.abs() < 0.02, "{r:?}");
        assert!(r.coded_gap > 0.0, "a static code cannot beat the empirical entropy: {r:?}");
        // The log grid's steps cost far less than contract §4's 16 bits per token.
        assert!(r.step_bits_per_token < 8.0 && r.bits_per_element < r.estimate_bits_per_element, "{r:?}");
        let d = codec::decode(&enc.bytes).unwrap();
        assert_eq!(raw_bytes(&d.recon), raw_bytes(&enc.recon));
    }
}

// ---------- CLI ----------

fn featjnd(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_featjnd")).current_dir(dir).args(args).output().expect("running featjnd")
}

fn ok_json(dir: &Path, args: &[&str]) -> Value {
    let o = featjnd(dir, args);
    assert!(o.status.success(), "featjnd {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn cli_encode_decode_round_trip() {
    let _rng = common::rng_lock();
    let d = tempfile::tempdir().unwrap();
    let (x, j) = feature(&[2, 16, 12, 12], Kind::Float, 11, true);
    io::save_tensor(&d.path().join("x.npy"), &x).unwrap();
    io::save_tensor(&d.path().join("j.npy"), &j).unwrap();
    let s = ok_json(d.path(), &["encode", "--x", "x.npy", "--jnd", "j.npy", "--budget", "0.02", "--patch", "2", "-o", "out/f.fjq"]);
    let bytes = std::fs::read(d.path().join("out/f.fjq")).unwrap();
    let r = &s["rate"];
    assert_eq!(r["file_bytes"].as_u64(), Some(bytes.len() as u64));
    assert_eq!(r["elements"].as_u64(), Some(2 * 16 * 144));
    let bpe = r["bits_per_element"].as_f64().unwrap();
    assert!((bpe - 8.0 * bytes.len() as f64 / (2.0 * 16.0 * 144.0)).abs() < 1e-9);
    assert!(r["estimate_bits_per_element"].as_f64().unwrap() > 0.0);
    assert!(s["nominal_mse"].as_f64().unwrap() > 0.0 && s["measured_mse"].as_f64().unwrap() > 0.0);
    assert_eq!(s["k"].as_u64(), Some(64));

    let t = ok_json(d.path(), &["decode", "out/f.fjq", "-o", "r.npy"]);
    assert_eq!(t["rate"]["file_bytes"], r["file_bytes"]);
    assert_eq!(t["rate"]["estimate_bits_per_element"], r["estimate_bits_per_element"]);
    assert_eq!(t["nominal_mse"], s["nominal_mse"]);
    let recon = io::load_tensor(&d.path().join("r.npy"), None).unwrap();
    let lib = codec::decode(&bytes).unwrap();
    assert_eq!(raw_bytes(&recon), raw_bytes(&lib.recon));
    let mse = f64::try_from((&recon - &x).square().mean(Kind::Double)).unwrap();
    assert!((mse / s["measured_mse"].as_f64().unwrap() - 1.0).abs() < 1e-4, "{mse} vs {s}");

    // bf16 from a named safetensors tensor, measured budget, permuted steps, 16-bit symbols, NTC;
    // decoded to safetensors, the dtype survives.
    let xb = Tensor::randn([3, 10, 24], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    let jb = (xb.abs() * 0.3 + 0.1).to_kind(Kind::BFloat16);
    let (bx, bj) = (raw_bytes(&xb), raw_bytes(&jb));
    fn view(b: &[u8]) -> safetensors::tensor::TensorView<'_> {
        safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![3, 10, 24], b).unwrap()
    }
    let st = safetensors::serialize([("x", view(&bx[..])), ("j", view(&bj[..]))], None).unwrap();
    std::fs::write(d.path().join("m.safetensors"), st).unwrap();
    let s = ok_json(
        d.path(),
        &[
            "encode",
            "--x",
            "m.safetensors:x",
            "--jnd",
            "m.safetensors:j",
            "--budget",
            "0.01",
            "--measured",
            "--strategy",
            "permuted",
            "--seed",
            "5",
            "--bits",
            "16",
            "--reduce",
            "rms",
            "-o",
            "b.fjq",
        ],
    );
    assert_eq!(s["dtype"], "bf16");
    assert_eq!(s["layout"], "ntc");
    assert_eq!(s["bits"], 16);
    assert!((s["measured_mse"].as_f64().unwrap() / 0.01 - 1.0).abs() < 0.01, "{s}");
    let t = ok_json(d.path(), &["decode", "b.fjq", "-o", "rb.safetensors"]);
    assert_eq!(t["dtype"], "bf16");
    let rb = io::load_tensor(&d.path().join("rb.safetensors"), None).unwrap();
    assert_eq!(rb.kind(), Kind::BFloat16);
    assert_eq!(raw_bytes(&rb), raw_bytes(&codec::decode(&std::fs::read(d.path().join("b.fjq")).unwrap()).unwrap().recon));

    // Uniform needs no J; a corrupted file is a clean error.
    ok_json(d.path(), &["encode", "--x", "x.npy", "--budget", "0.02", "--strategy", "uniform", "-o", "u.fjq"]);
    let mut c = std::fs::read(d.path().join("u.fjq")).unwrap();
    let mid = c.len() / 2;
    c[mid] ^= 1;
    std::fs::write(d.path().join("bad.fjq"), &c).unwrap();
    let o = featjnd(d.path(), &["decode", "bad.fjq", "-o", "z.npy"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: ") && err.contains("checksum mismatch") && !err.contains("panicked"), "{err}");
    // The step modes: their side information is reported and the files decode.
    let mut step_bytes = Vec::new();
    for (mode, grid) in [("tensor", "16"), ("token", "4"), ("token-f16", "16"), ("channel", "16"), ("channel-f16", "16"), ("auto", "16")] {
        let out = format!("m-{mode}.fjq");
        let s = ok_json(
            d.path(),
            &["encode", "--x", "x.npy", "--jnd", "j.npy", "--budget", "0.02", "--step-mode", mode, "--grid", grid, "-o", &out],
        );
        let t = ok_json(d.path(), &["decode", &out, "-o", "m.npy"]);
        assert_eq!(t["step_mode"], s["step_mode"], "{mode}");
        assert_eq!(t["version"], 3);
        assert_eq!(t["rate"]["step_bytes"], s["rate"]["step_bytes"], "{mode}");
        assert_eq!(t["nominal_mse"], s["nominal_mse"], "{mode}");
        let n = s["rate"]["step_bytes"].as_u64().unwrap();
        assert_eq!(n, s["rate"]["sections"]["steps"].as_u64().unwrap());
        step_bytes.push((mode, n));
    }
    // 288 tokens (16 channels): one f32, entropy-coded grid indices, 2 bytes per token, C small
    // varints, 2 bytes per channel, and auto = token on the default grid for JND steps.
    assert_eq!(step_bytes[0].1, 4);
    assert!(step_bytes[1].1 < 2 * 288, "{step_bytes:?}");
    assert_eq!(step_bytes[2].1, 2 * 288);
    assert!(step_bytes[3].1 <= 2 * 16, "{step_bytes:?}");
    assert_eq!(step_bytes[4].1, 2 * 16);
    let o = featjnd(
        d.path(),
        &["encode", "--x", "x.npy", "--jnd", "j.npy", "--budget", "0.02", "--grid", "3", "--step-mode", "token", "-o", "g.fjq"],
    );
    assert_eq!(o.status.code(), Some(1));
    let o = featjnd(d.path(), &["encode", "--x", "x.npy", "--budget", "0.02", "-o", "n.fjq"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--jnd is required"));
}

/// `featjnd encode --strategy capped`: the file decodes to the encoder's reconstruction, the
/// measured MSE matches the budget up to the steps' rounding to the grid, no step exceeds κ times
/// its token's RMS times β (rounding allowed), and a channel step mode is refused.
#[test]
fn cli_encode_capped() {
    let _rng = common::rng_lock();
    let d = tempfile::tempdir().unwrap();
    let (x, j) = feature(&[1, 16, 8, 8], Kind::Float, 23, true);
    io::save_tensor(&d.path().join("x.npy"), &x).unwrap();
    io::save_tensor(&d.path().join("j.npy"), &j).unwrap();
    let ms = f64::try_from(x.square().mean(Kind::Double)).unwrap();
    let budget = format!("{}", 0.3 * ms);
    let args = ["encode", "--x", "x.npy", "--jnd", "j.npy", "--budget", &budget, "--strategy", "capped", "--measured", "-o", "c.fjq"];
    let s = ok_json(d.path(), &args);
    assert_eq!(s["strategy"].as_str(), Some("capped"));
    let bytes = std::fs::read(d.path().join("c.fjq")).unwrap();
    let dec = codec::decode(&bytes).unwrap();
    let mse = f64::try_from((&dec.recon - &x).square().mean(Kind::Double)).unwrap();
    // The grid rounding (16 per octave: steps within ±2.2%) moves the MSE by a few percent at most.
    assert!((mse / (0.3 * ms) - 1.0).abs() < 0.1, "{mse} vs {}", 0.3 * ms);
    let beta = s["beta"].as_f64().unwrap();
    let rms = floats(&x.square().mean_dim([1i64].as_slice(), false, Kind::Float).sqrt().flatten(0, -1));
    let st = floats(&dec.steps);
    assert_eq!(st.len(), 64);
    for (t, (s, r)) in st.iter().zip(&rms).enumerate() {
        let cap = 2.0 * (*r as f64).max(1e-30) * beta;
        assert!((*s as f64) <= cap * 1.03 || *r == 0.0, "token {t}: step {s} above cap {cap}");
    }
    let o = featjnd(
        d.path(),
        &["encode", "--x", "x.npy", "--jnd", "j.npy", "--budget", &budget, "--strategy", "capped", "--step-mode", "channel", "-o", "n.fjq"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("token step mode"));
}
