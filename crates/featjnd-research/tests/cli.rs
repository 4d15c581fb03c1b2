//! End-to-end tests of the `featjnd` binary: inputs are written with `featjnd_research::io`, the binary runs
//! in a temporary directory, and its files are read back.
mod common;
use std::path::Path;
use std::process::{Command, Output};

use featjnd_research::io;
use serde_json::Value;
use tch::{Kind, Tensor};

fn featjnd(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_featjnd")).current_dir(dir).args(args).output().expect("running featjnd")
}

fn ok(dir: &Path, args: &[&str]) -> Output {
    let o = featjnd(dir, args);
    assert!(o.status.success(), "featjnd {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Runs a command that must fail; returns its stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    let o = featjnd(dir, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "featjnd {args:?}: {err}");
    assert!(err.starts_with("error: ") && !err.contains("panicked"), "{err}");
    err
}

fn summary(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

/// A small deterministic NCHW feature and a positive tolerance map.
fn write_inputs(dir: &Path) {
    tch::manual_seed(5);
    let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, tch::Device::Cpu));
    let j = x.abs() * 0.5 + 0.1;
    io::save_tensor(&dir.join("x.npy"), &x).unwrap();
    io::save_tensor(&dir.join("j.npy"), &j).unwrap();
}

#[test]
fn demo_runs_and_writes_files() {
    let _rng = common::rng_lock();
    let d = tempfile::tempdir().unwrap();
    let o = ok(d.path(), &["ops", "demo", "--out", "demo"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("permuted") && text.contains("measured MSE"), "{text}");
    for f in ["x.npy", "jnd.npy", "demo.json"] {
        assert!(d.path().join("demo").join(f).is_file(), "{f}");
    }
    let s = summary(&d.path().join("demo/demo.json"));
    assert_eq!(s["quantize"].as_array().unwrap().len(), 6);
    for p in s["perturb"].as_array().unwrap() {
        for m in p["measured_nrmse"].as_array().unwrap() {
            assert!((m.as_f64().unwrap() / 0.1 - 1.0).abs() < 1e-4);
        }
    }
}

#[test]
fn quantize_writes_consistent_outputs() {
    let _rng = common::rng_lock();
    let d = tempfile::tempdir().unwrap();
    write_inputs(d.path());
    for (strategy, measured) in [("jnd", true), ("uniform", false), ("permuted", false), ("capped", true), ("capped", false)] {
        let out = format!("q_{strategy}_{measured}");
        let mut args = vec![
            "ops",
            "quantize",
            "--x",
            "x.npy",
            "--jnd",
            "j.npy",
            "--budget",
            "0.01",
            "--strategy",
            strategy,
            "--seed",
            "7",
            "--patch",
            "2",
            "--out",
            &out,
        ];
        if measured {
            args.push("--measured");
        }
        ok(d.path(), &args);
        let dir = d.path().join(&out);
        let s = summary(&dir.join("summary.json"));
        let mse = s["measured_mse"].as_f64().unwrap();
        assert!(mse.is_finite() && mse > 0.0, "{s}");
        assert_eq!((s["tokens"].as_u64(), s["k"].as_u64()), (Some(2 * 4 * 4), Some(12)));
        if measured {
            assert!((mse / 0.01 - 1.0).abs() <= 1e-3, "{mse}");
        } else {
            assert!((s["nominal_mse"].as_f64().unwrap() / 0.01 - 1.0).abs() < 1e-5);
            assert_eq!(s["beta"].as_f64(), Some(1.0));
        }
        let hist: u64 = s["histogram"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(hist, 2 * 3 * 8 * 8);

        // recon == symbol * step of the element's token (NCHW, p = 2, W/p = 4).
        let sym = io::load_tensor(&dir.join("symbols.npy"), None).unwrap();
        assert_eq!(sym.kind(), Kind::Int8);
        let sym: Vec<i8> = Vec::try_from(&sym.flatten(0, -1)).unwrap();
        let steps = floats(&io::load_tensor(&dir.join("steps.npy"), None).unwrap());
        let recon = floats(&io::load_tensor(&dir.join("recon.npy"), None).unwrap());
        assert_eq!((steps.len(), recon.len()), (32, 384));
        for i in [0usize, 1, 9, 77, 200, 383] {
            let (n, h, w) = (i / 192, (i / 8) % 8, i % 8);
            let t = (n * 4 + h / 2) * 4 + w / 2;
            assert_eq!(recon[i], sym[i] as f32 * steps[t], "element {i}");
        }
        let sse = floats(&io::load_tensor(&dir.join("token_sse.npy"), None).unwrap());
        let total: f64 = sse.iter().map(|&v| v as f64).sum();
        assert!((total / 384.0 / mse - 1.0).abs() < 1e-5);
        if strategy == "capped" {
            // No step above κ = 2 times its token's RMS (times the measured β).
            assert_eq!((s["strategy"].as_str(), s["kappa"].as_f64()), (Some("capped"), Some(2.0)));
            let x = floats(&io::load_tensor(&d.path().join("x.npy"), None).unwrap());
            let mut ss = vec![0.0f64; 32];
            for (i, v) in x.iter().enumerate() {
                let (n, h, w) = (i / 192, (i / 8) % 8, i % 8);
                ss[(n * 4 + h / 2) * 4 + w / 2] += (*v as f64).powi(2);
            }
            let beta = s["beta"].as_f64().unwrap();
            for (t, st) in steps.iter().enumerate() {
                let cap = 2.0 * (ss[t] / 12.0).sqrt() * beta;
                assert!(*st as f64 <= cap * (1.0 + 1e-5), "token {t}: step {st} above cap {cap}");
            }
        }
    }
}

#[test]
fn quantize_uniform_needs_no_jnd_but_jnd_does() {
    let _rng = common::rng_lock();
    let d = tempfile::tempdir().unwrap();
    write_inputs(d.path());
    ok(d.path(), &["ops", "quantize", "--x", "x.npy", "--budget", "0.02", "--strategy", "uniform", "--bits", "16", "--out", "u"]);
    let sym = io::load_tensor(&d.path().join("u/symbols.npy"), None).unwrap();
    assert_eq!(sym.kind(), Kind::Int16);
    let e = fails(d.path(), &["ops", "quantize", "--x", "x.npy", "--budget", "0.02", "--out", "v"]);
    assert!(e.contains("--jnd"), "{e}");
}

#[test]
fn perturb_matches_requested_nrmse() {
    let _rng = common::rng_lock();
    let d = tempfile::tempdir().unwrap();
    write_inputs(d.path());
    for jnd in [true, false] {
        let mut args = vec!["ops", "perturb", "--x", "x.npy", "--nrmse", "0.05", "--seed", "3", "--subsequence", "1", "--out", "p"];
        if jnd {
            args.extend(["--jnd", "j.npy"]);
        }
        ok(d.path(), &args);
        let s = summary(&d.path().join("p/summary.json"));
        let m = s["measured_nrmse"].as_array().unwrap();
        assert_eq!(m.len(), 2);
        for v in m {
            assert!((v.as_f64().unwrap() / 0.05 - 1.0).abs() < 1e-4, "{s}");
        }
        // The summary's NRMSE is what the file holds.
        let x = floats(&io::load_tensor(&d.path().join("x.npy"), None).unwrap());
        let p = floats(&io::load_tensor(&d.path().join("p/perturbed.npy"), None).unwrap());
        let (num, den) = x[..192]
            .iter()
            .zip(&p[..192])
            .fold((0.0f64, 0.0f64), |(a, b), (&x, &p)| (a + ((p - x) as f64).powi(2), b + (x as f64).powi(2)));
        assert!(((num / den).sqrt() - m[0].as_f64().unwrap()).abs() < 1e-9);
    }
}

#[test]
fn tokens_and_noise_and_safetensors_input() {
    let _rng = common::rng_lock();
    let d = tempfile::tempdir().unwrap();
    let j = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape([1, 2, 3]).to_kind(Kind::Half);
    let bytes = safetensors::serialize(
        [
            ("j", safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![1, 2, 3], &half_bytes(&j)).unwrap()),
            ("other", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &1.0f32.to_le_bytes()).unwrap()),
        ],
        None,
    )
    .unwrap();
    std::fs::write(d.path().join("m.safetensors"), bytes).unwrap();
    // Two tensors: the name must be given.
    let e = fails(d.path(), &["ops", "tokens", "--jnd", "m.safetensors", "--out", "t"]);
    assert!(e.contains("j, other"), "{e}");
    ok(d.path(), &["ops", "tokens", "--jnd", "m.safetensors:j", "--reduce", "min", "--out", "t"]);
    assert_eq!(floats(&io::load_tensor(&d.path().join("t/token_tol.npy"), None).unwrap()), vec![1.0, 4.0]);
    assert_eq!(summary(&d.path().join("t/summary.json"))["layout"], "ntc");

    ok(d.path(), &["ops", "noise", "--numel", "10", "--offset", "4", "--seed", "9", "--noise", "uniform", "--out", "n/noise.npy"]);
    let n = floats(&io::load_tensor(&d.path().join("n/noise.npy"), None).unwrap());
    assert_eq!(n.len(), 10);
    assert!(n.iter().all(|v| v.abs() <= 3f32.sqrt()));
}

fn half_bytes(t: &Tensor) -> Vec<u8> {
    let mut b = vec![0u8; 2 * t.numel()];
    t.copy_data_u8(&mut b, t.numel());
    b
}

#[test]
fn bad_inputs_give_clear_errors() {
    let _rng = common::rng_lock();
    let d = tempfile::tempdir().unwrap();
    write_inputs(d.path());
    let q = |x: &str| fails(d.path(), &["ops", "quantize", "--x", x, "--budget", "0.01", "--strategy", "uniform", "--out", "q"]);

    let full = std::fs::read(d.path().join("x.npy")).unwrap();
    std::fs::write(d.path().join("trunc.npy"), &full[..full.len() - 10]).unwrap();
    assert!(q("trunc.npy").contains("truncated"));
    std::fs::write(d.path().join("head.npy"), &full[..30]).unwrap();
    assert!(q("head.npy").contains("truncated header"));

    let i = full.windows(5).position(|w| w == b"False").unwrap();
    let fortran = [&full[..i], b"True ", &full[i + 5..]].concat();
    std::fs::write(d.path().join("fortran.npy"), fortran).unwrap();
    assert!(q("fortran.npy").contains("Fortran-order"));

    let e = q("missing.npy");
    assert!(e.contains("missing.npy") && e.contains("No such file"), "{e}");
    assert!(q("x.txt").contains("expected .npy or .safetensors"));

    io::save_npy_i8(&d.path().join("ints.npy"), &[4], &[1, 2, 3, 4]).unwrap();
    assert!(q("ints.npy").contains("must be f32, f16 or bf16"));

    let e = fails(d.path(), &["ops", "quantize", "--x", "x.npy", "--budget", "-1", "--strategy", "uniform", "--out", "q"]);
    assert!(e.contains("budget"), "{e}");
    let e = fails(d.path(), &["ops", "quantize", "--x", "x.npy", "--budget", "0.1", "--patch", "3", "--strategy", "uniform", "--out", "q"]);
    assert!(e.contains("patch 3"), "{e}");
}

#[test]
fn run_on_a_photo_folder_checks_the_folder_and_the_tasks_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("empty")).unwrap();
    let e = fails(d.path(), &["run", "--images", "empty", "--out", "r"]);
    assert!(e.contains("no png/jpg photos"), "{e}");
    let e = fails(d.path(), &["run", "--images", "missing", "--out", "r"]);
    assert!(e.contains("not a folder"), "{e}");
    std::fs::create_dir(d.path().join("mixed")).unwrap();
    std::fs::write(d.path().join("mixed/readme.md"), b"hi").unwrap();
    let e = fails(d.path(), &["run", "--images", "mixed", "--out", "r"]);
    assert!(e.contains("readme.md"), "{e}");
    // The bundled non-photo tasks have their own data: naming one is an error, not a corpus run.
    let e = fails(d.path(), &["run", "--images", "empty", "--tasks", "mobilenet,fmnist", "--out", "r"]);
    assert!(e.contains("fmnist") && e.contains("--tasks"), "{e}");
    let e = fails(d.path(), &["run", "--images", "empty", "--validation", "--out", "r"]);
    assert!(e.contains("--validation"), "{e}");
    assert!(!d.path().join("r").exists(), "nothing written");
    // train-jnd for a bundled task takes no --images.
    let e = fails(d.path(), &["train-jnd", "--task", "fmnist", "--split", "stage1", "--images", "empty"]);
    assert!(e.contains("--images"), "{e}");
    let e = fails(d.path(), &["train-jnd", "--task", "fmnist", "--split", "stage1", "--objective", "pow:2"]);
    assert!(e.contains("objective"), "{e}");
}
