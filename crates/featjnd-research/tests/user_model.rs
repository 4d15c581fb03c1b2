//! A user's model through the commands (README, "Your own model"): a ResNet18 exported by
//! `tools/export_torchvision.py` (random, seeded weights, split layer2) goes through
//! `featjnd run --model … --quick`, `featjnd train-jnd --model` and `featjnd encode --model` on
//! real photos of the corpus (`.deps/data/photos`, scripts/setup.sh).
//!
//! The end-to-end tests need a Python with torch and torchvision (`$FEATJND_TORCH_PYTHON`, else
//! `/usr/bin/python3`) and the photos; without them they print a SKIP line and pass. The unit
//! tests of the held-out split, the sizes and the detection discrepancy always run.
mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use featjnd_research::study::user::{box_iou, det_discrepancy, heldout_mask, name_hash, parse_size};
use tch::{Kind, Tensor};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The photos the tests use: 10 files of the corpus, sorted by name.
const PHOTOS: usize = 10;

/// `(model dir, photo dir)` shared by the tests (exported once), or why not.
fn fixture() -> &'static Result<(PathBuf, PathBuf), String> {
    static F: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    F.get_or_init(|| {
        let py = common::torch_python_with("torch, torchvision")?;
        let corpus = repo().join(".deps/data/photos");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
            .map_err(|e| format!("no photo corpus {} ({e}; run scripts/setup.sh)", corpus.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        files.sort();
        if files.len() < PHOTOS {
            return Err(format!("fewer than {PHOTOS} photos in {} (run scripts/setup.sh)", corpus.display()));
        }
        // Kept for the whole test process (the OnceLock never drops it).
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?.keep();
        let photos = dir.join("photos");
        std::fs::create_dir_all(&photos).map_err(|e| e.to_string())?;
        for f in &files[..PHOTOS] {
            std::fs::copy(f, photos.join(f.file_name().unwrap())).map_err(|e| e.to_string())?;
        }
        let model = dir.join("r18");
        let o = Command::new(&py)
            .arg(repo().join("tools/export_torchvision.py"))
            .args(["resnet18", "--weights", "none", "--split", "layer2", "--out"])
            .arg(&model)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            panic!("export_torchvision.py failed:\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        }
        Ok((model, photos))
    })
}

fn fixture_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    match fixture() {
        Ok(f) => Some(f.clone()),
        Err(why) => {
            common::skip!("SKIP {test}: {why}");
            None
        }
    }
}

fn featjnd(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_featjnd")).args(args).output().expect("running featjnd");
    assert!(o.status.success(), "featjnd {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    o
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn run_model_quick_writes_the_report() {
    let Some((model, photos)) = fixture_or_skip("run_model_quick_writes_the_report") else { return };
    let out = tempfile::tempdir().unwrap();
    let o = json(&featjnd(&["run", "--model", s(&model), "--images", s(&photos), "--quick", "--quiet", "--out", s(out.path())]));
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for needle in
        ["## Your model", "Held out (", "## The goal", "## Quantization goals", "#### Quantization at `layer2`", "| user | layer2 |"]
    {
        assert!(report.contains(needle), "report.md lacks {needle:?}:\n{report}");
    }
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap()).unwrap();
    let split = &summary["tasks"]["user"]["layer2"];
    assert!(split["curves"]["featjnd"].is_array(), "no perturbation curves: {split}");
    assert!(split["quant"]["points"].as_array().is_some_and(|p| !p.is_empty()), "no quantization points");
    // The held-out photos are the hash rule's, listed in the output and the summary.
    let files: Vec<String> = {
        let mut v: Vec<String> =
            std::fs::read_dir(&photos).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    let want: Vec<&String> = files.iter().zip(heldout_mask(&files, 0.3)).filter(|(_, h)| *h).map(|(f, _)| f).collect();
    let got: Vec<&str> = o["heldout"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(got, want);
    assert_eq!(summary["user"]["photos"]["heldout"], o["heldout"]);
    assert!(out.path().join("jnd/user-layer2.safetensors").is_file());
    // A second run reuses the cached estimator.
    let out2 =
        featjnd(&["run", "--model", s(&model), "--images", s(&photos), "--quick", "--quiet", "--quant-only", "--out", s(out.path())]);
    assert!(json(&out2)["report"].is_string());
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(report.contains("Estimator: cached"), "{report}");
}

#[test]
fn train_jnd_and_encode_with_a_model() {
    let Some((model, photos)) = fixture_or_skip("train_jnd_and_encode_with_a_model") else { return };
    let dir = tempfile::tempdir().unwrap();
    let est = dir.path().join("r18-layer2.safetensors");
    let t = json(&featjnd(&["train-jnd", "--model", s(&model), "--images", s(&photos), "--steps", "4", "--quiet", "--out", s(&est)]));
    assert_eq!(t["split"], "layer2");
    assert!(est.is_file() && est.with_extension("log.json").is_file());
    assert_eq!(t["metrics"]["steps"], 4.0);
    let imgs: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&photos).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v.truncate(2);
        v
    };
    // The default rule (steps ∝ j_t^0.25), the capped allocation on request, uniform without J.
    for (jnd, extra, strategy) in
        [(Some(&est), &[][..], "jnd-g0.25"), (Some(&est), &["--kappa", "2", "--gamma", "1"][..], "capped-2"), (None, &[][..], "uniform")]
    {
        let out = dir.path().join(strategy);
        let mut args = vec!["encode", "--model", s(&model), "--out", s(&out)];
        if let Some(j) = jnd {
            args.extend(["--jnd", s(j)]);
        }
        args.extend(extra.iter().copied());
        args.extend(imgs.iter().map(|p| s(p)));
        let e = json(&featjnd(&args));
        let files = e["files"].as_array().unwrap();
        assert_eq!(files.len(), 2);
        for (f, img) in files.iter().zip(&imgs) {
            assert_eq!(f["strategy"], strategy);
            let path = out.join(format!("{}.fjq", img.file_stem().unwrap().to_string_lossy()));
            assert_eq!(Path::new(f["file"].as_str().unwrap()), path);
            let bytes = std::fs::read(&path).unwrap();
            let d = featjnd_research::codec::decode(&bytes).unwrap();
            assert_eq!(d.recon.size(), vec![1, 128, 28, 28]);
            // Measured MSE matched to the budget (d = 0.03 of the mean square), within the f16
            // rounding of the steps.
            let rel = f["relative_mse"].as_f64().unwrap();
            assert!((rel - 0.03).abs() < 0.003, "relative MSE {rel}");
        }
    }
    // Shaping options without an estimator are an error, not silently ignored.
    let o = Command::new(env!("CARGO_BIN_EXE_featjnd"))
        .args(["encode", "--model", s(&model), "--kappa", "2", "--out", s(&dir.path().join("k")), s(&imgs[0])])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("need --jnd"), "{o:?}");
    // The feature-file `encode` is unchanged: --x is still required without --model.
    let o = Command::new(env!("CARGO_BIN_EXE_featjnd")).args(["encode", "--budget", "1", "--out", "x.fjq"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--x"));
}

#[test]
fn heldout_split_is_by_file_name() {
    let files: Vec<String> = (0..200).map(|i| format!("photo{i:03}.jpg")).collect();
    let held = heldout_mask(&files, 0.3);
    let n = held.iter().filter(|&&h| h).count();
    assert!((40..=80).contains(&n), "{n} of 200 held out at 0.3");
    // Per file: adding files moves none of the others.
    let more: Vec<String> = files.iter().cloned().chain((0..50).map(|i| format!("extra{i}.png"))).collect();
    assert_eq!(&heldout_mask(&more, 0.3)[..200], &held[..]);
    for (f, h) in files.iter().zip(&held) {
        assert_eq!(*h, name_hash(f) < 0.3);
    }
    // Both sides are never empty.
    let two = vec!["a.png".to_string(), "b.png".to_string()];
    for frac in [0.0, 0.5, 0.999] {
        let h = heldout_mask(&two, frac);
        assert!(h.iter().any(|&x| x) && h.iter().any(|&x| !x), "{frac}: {h:?}");
    }
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("224x224").unwrap(), (224, 224));
    assert_eq!(parse_size("320X448").unwrap(), (320, 448));
    assert!(parse_size("224").is_err() && parse_size("0x3").is_err() && parse_size("ax3").is_err());
}

/// torchvision-style detection outputs of one image per entry.
fn dets(per_image: &[Vec<([f32; 4], i64, f32)>]) -> Vec<Tensor> {
    let (mut b, mut l, mut sc, mut bi) = (vec![], vec![], vec![], vec![]);
    for (i, ds) in per_image.iter().enumerate() {
        for (bx, lab, s) in ds {
            b.extend_from_slice(bx);
            l.push(*lab);
            sc.push(*s);
            bi.push(i as i64);
        }
    }
    let n = l.len() as i64;
    vec![
        Tensor::from_slice(&b).view([n, 4]),
        Tensor::from_slice(&l),
        Tensor::from_slice(&sc),
        Tensor::zeros([n, 1, 8, 8], (Kind::Float, tch::Device::Cpu)),
        Tensor::from_slice(&bi),
    ]
}

#[test]
fn detection_discrepancy_is_zero_when_equal_and_one_when_lost() {
    let a = ([10.0, 10.0, 50.0, 60.0], 3, 0.9);
    let b = ([100.0, 20.0, 150.0, 90.0], 7, 0.4);
    let clean = dets(&[vec![a, b], vec![a], vec![]]);
    let d = det_discrepancy(&clean, &clean, 3);
    assert_eq!(Vec::<f32>::try_from(&d).unwrap(), vec![0.0, 0.0, 0.0]);
    // Image 0 loses b, image 1 loses everything, image 2 gains a detection.
    let pert = dets(&[vec![a], vec![], vec![b]]);
    let d = Vec::<f32>::try_from(&det_discrepancy(&clean, &pert, 3)).unwrap();
    assert!((d[0] - 0.5 * 0.4 / 1.3).abs() < 1e-6, "{d:?}");
    assert_eq!(&d[1..], &[1.0, 1.0]);
    // A moved box costs in proportion to the IoU lost, and the gradient reaches the boxes.
    let moved = dets(&[vec![([20.0, 10.0, 60.0, 60.0], 3, 0.9)]]);
    let boxes = moved[0].set_requires_grad(true);
    let mut p: Vec<Tensor> = moved.iter().map(|t| t.shallow_clone()).collect();
    p[0] = boxes.shallow_clone();
    let clean1 = dets(&[vec![a]]);
    let d = det_discrepancy(&clean1, &p, 1);
    let iou = box_iou(&clean1[0], &moved[0]).double_value(&[0, 0]);
    assert!((d.double_value(&[0]) - (1.0 - iou)).abs() < 1e-6);
    d.sum(Kind::Float).backward();
    assert!(boxes.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

/// Issue 27: torchvision's LR-ASPP (random, seeded weights) exported at its backbone as a dense
/// task (`task: dense`, `outputs: [softmax]`) matches PyTorch's run of the same files, and goes
/// through `train-jnd --model`, `run --model --quick` and `encode --model`.
#[test]
fn lraspp_dense_export_matches_pytorch_and_runs_through_every_command() {
    let Some((_, photos)) = fixture_or_skip("lraspp_dense_export_matches_pytorch_and_runs_through_every_command") else { return };
    let py = common::torch_python();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("lraspp");
    let o = Command::new(&py)
        .arg(repo().join("tools/export_torchvision.py"))
        .args(["lraspp_mobilenet_v3_large", "--weights", "none", "--seed", "0", "--split", "backbone", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(o.status.success(), "export: {}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(model.join("split.json")).unwrap()).unwrap();
    assert_eq!((spec["task"].as_str(), spec["outputs"][0].as_str()), (Some("dense"), Some("softmax")));

    // PyTorch 1.13's run of the files against featjnd's (libtorch 2.11) on two photos.
    let imgs: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&photos).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v.truncate(2);
        v
    };
    let x = Tensor::stack(
        &imgs
            .iter()
            .map(|p| featjnd_research::study::user::image_tensor(&featjnd_research::study::user::load_image(p).unwrap(), (224, 224)))
            .collect::<Vec<_>>(),
        0,
    );
    let input = dir.path().join("x.npy");
    x.write_npy(&input).unwrap();
    let o = Command::new(&py)
        .arg(repo().join("tools/torchvision_ref.py"))
        .args(["pair", "--dir", s(&model), "--input", s(&input), "--out", s(dir.path())])
        .output()
        .unwrap();
    assert!(o.status.success(), "torchvision_ref: {}", String::from_utf8_lossy(&o.stderr));
    let theirs = Tensor::read_npy(dir.path().join("out_0.npy")).unwrap();
    let pair = featjnd_research::model::torchscript::TorchScriptPair::load_dir(&model, tch::Device::Cpu).unwrap();
    use featjnd_research::model::SplitModel;
    let ours = tch::no_grad(|| {
        let f = pair.head(&x, "backbone").unwrap();
        assert_eq!(f.len(), 2);
        pair.tail(&f, "backbone").unwrap().remove(0)
    });
    assert_eq!(ours.size(), [2, 21, 224, 224]);
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    let scale = theirs.abs().max().double_value(&[]);
    assert!(scale > 1e-3 && diff <= 1e-4 * scale.max(1.0), "logits differ by {diff:.3e} (scale {scale:.3e})");

    // The commands.
    let est = dir.path().join("lraspp.safetensors");
    json(&featjnd(&["train-jnd", "--model", s(&model), "--images", s(&photos), "--steps", "3", "--quiet", "--out", s(&est)]));
    let out = dir.path().join("run");
    json(&featjnd(&["run", "--model", s(&model), "--images", s(&photos), "--jnd", s(&est), "--quick", "--quiet", "--out", s(&out)]));
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["user"]["task"], "dense");
    assert_eq!(summary["tasks"]["user-dense"]["backbone"]["clean"]["agreement"], 1.0);
    let enc = dir.path().join("fjq");
    let e = json(&featjnd(&["encode", "--model", s(&model), "--jnd", s(&est), "--out", s(&enc), s(&imgs[0])]));
    // Two feature tensors (low, high): one file each.
    assert_eq!(e["files"].as_array().unwrap().len(), 2);
    for f in e["files"].as_array().unwrap() {
        assert_eq!(f["strategy"], "jnd-g0.25");
        assert!(Path::new(f["file"].as_str().unwrap()).is_file());
    }
}
