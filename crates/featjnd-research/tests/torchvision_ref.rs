//! Reference tests against PyTorch itself: featjnd's MobileNetV2 against torchvision's with the same
//! weights file, featjnd's CPU `torchvision::nms` / `torchvision::roi_align` (csrc/torchvision_ops.cpp)
//! against torchvision's, and TorchScript pairs exported by `tools/export_torchvision.py` (ResNet18,
//! Mask R-CNN; random, seeded weights) loaded and run by featjnd against PyTorch's run of the same
//! files on the same input.
//!
//! They need a Python with torch, torchvision and numpy: `$FEATJND_TORCH_PYTHON`, else
//! `/usr/bin/python3` (Debian's python3-torch 1.13 and python3-torchvision 0.14, see
//! scripts/setup.sh); without one every test prints a SKIP line and passes. The Python side is
//! `tools/torchvision_ref.py`. Inputs and outputs travel as `.npy` files in a temporary directory
//! per test. Results of the last measurement are in docs/torchvision-ops.md.
mod common;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use featjnd_research::data::photos;
use featjnd_research::model::mobilenet_v2::{self, MobileNetV2};
use featjnd_research::model::torchscript::{self, TorchScriptPair, TorchvisionOps};
use featjnd_research::model::SplitModel;
use tch::{CModule, Device, IValue, Kind, Tensor};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python to run, when it imports torch, torchvision and numpy; else prints SKIP for `test`.
fn python_or_skip(test: &str) -> Option<PathBuf> {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = PY.get_or_init(|| common::torch_python_with("torch, torchvision, numpy"));
    match r {
        Ok(py) => Some(py.clone()),
        Err(why) => {
            common::skip!("SKIP {test}: {why} (install python3-torch python3-torchvision, or set FEATJND_TORCH_PYTHON)");
            None
        }
    }
}

/// Runs `python tools/<script> args...`; panics with its output on failure.
fn run_py(py: &Path, script: &str, args: &[&str]) {
    let t = Instant::now();
    let o = Command::new(py).arg(repo().join("tools").join(script)).args(args).output().expect("spawn python");
    assert!(
        o.status.success(),
        "{script} {args:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("  {script} {} ({:.1} s)", args.first().unwrap_or(&""), t.elapsed().as_secs_f64());
}

fn npy(path: impl AsRef<Path>) -> Tensor {
    let path = path.as_ref();
    Tensor::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    if a.numel() == 0 {
        return 0.0;
    }
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn max_abs(a: &Tensor) -> f64 {
    a.to_kind(Kind::Double).abs().max().double_value(&[])
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A real photo: the corpus's `darknet-horses.png` (COCO-like: horses and a person), else
/// scikit-image's astronaut; `None` (and a SKIP line) when setup has not fetched either.
fn photo_or_skip(test: &str) -> Option<photos::Photo> {
    let candidates = [repo().join(".deps/data/photos/darknet-horses.png"), photos::default_dir().join("astronaut.png")];
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => Some(photos::load_photo(p).expect("decode photo")),
        None => {
            common::skip!("SKIP {test}: no photo in .deps/data (run scripts/setup.sh)");
            None
        }
    }
}

/// Two ImageNet evaluation crops `[2, 3, 224, 224]` of scikit-image photos (setup's).
fn imagenet_batch_or_skip(test: &str) -> Option<Tensor> {
    let dir = photos::default_dir();
    let names = ["astronaut.png", "chelsea.png"];
    if !names.iter().all(|n| dir.join(n).is_file()) {
        common::skip!("SKIP {test}: scikit-image photos absent from {} (run scripts/setup.sh)", dir.display());
        return None;
    }
    let ts: Vec<Tensor> = names.iter().map(|n| photos::load_photo(&dir.join(n)).unwrap().eval_tensor().unwrap()).collect();
    Some(Tensor::stack(&ts, 0))
}

// ---------------------------------------------------------------------------------------------
// MobileNetV2

/// featjnd's MobileNetV2 against torchvision's `mobilenet_v2` loaded from the same safetensors file,
/// on two real ImageNet crops: the three split features and the logits.
#[test]
fn mobilenet_v2_matches_torchvision() {
    // MobileNetV2::load initialises the variables (torch's global RNG) before copying the weights.
    let _rng = common::rng_lock();
    let test = "mobilenet_v2_matches_torchvision";
    let Some(py) = python_or_skip(test) else { return };
    let w = mobilenet_v2::default_weights();
    if !w.is_file() {
        common::skip!("SKIP {test}: {} absent (run scripts/setup.sh)", w.display());
        return;
    }
    let Some(x) = imagenet_batch_or_skip(test) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("x.npy");
    x.write_npy(&input).unwrap();
    run_py(
        &py,
        "torchvision_ref.py",
        &["mobilenet", "--weights", path_str(&w), "--input", path_str(&input), "--out", path_str(tmp.path())],
    );

    let m = MobileNetV2::load(&w, Device::Cpu).unwrap();
    let _g = tch::no_grad_guard();
    // f32 convolutions in libtorch 2.11 and PyTorch 1.13 sum in different orders (different
    // oneDNN/native kernels), so results differ by rounding only: relative 1e-7..1e-6 per layer,
    // accumulated over 19 layers. Features are O(1..10) (measured max diff 3e-6), logits O(10)
    // (measured 1.6e-5); the bounds leave ~10x headroom and stay far below any real port error
    // (a wrong padding, BN eps or ReLU6 changes features by > 1e-2).
    for (split, _, c, stride) in mobilenet_v2::SPLITS {
        let ours = &m.head(&x, split).unwrap()[0];
        let theirs = npy(tmp.path().join(format!("{split}.npy")));
        assert_eq!(ours.size(), [2, c, 224 / stride, 224 / stride], "{split}");
        let d = max_abs_diff(ours, &theirs);
        let scale = max_abs(&theirs);
        eprintln!("  mobilenet_v2 {split}: max |featjnd - torchvision| = {d:.3e} (max |f| = {scale:.2})");
        assert!(scale > 0.1, "{split}: degenerate reference features");
        assert!(d <= 5e-5, "{split}: max abs diff {d:.3e}");
    }
    let ours = m.logits(&x).unwrap();
    let theirs = npy(tmp.path().join("logits.npy"));
    let d = max_abs_diff(&ours, &theirs);
    eprintln!("  mobilenet_v2 logits: max |featjnd - torchvision| = {d:.3e} (max |logit| = {:.2})", max_abs(&theirs));
    assert!(d <= 2e-4, "logits: max abs diff {d:.3e}");
    assert_eq!(Vec::<i64>::try_from(ours.argmax(1, false)).unwrap(), Vec::<i64>::try_from(theirs.argmax(1, false)).unwrap());
}

// ---------------------------------------------------------------------------------------------
// The operators themselves

/// featjnd's `torchvision::roi_align` (forward and gradient) and `torchvision::nms` against
/// torchvision's, through a scripted module that calls them with many parameter combinations.
#[test]
fn torchvision_ops_match_torchvision() {
    let test = "torchvision_ops_match_torchvision";
    let Some(py) = python_or_skip(test) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_py(&py, "torchvision_ref.py", &["ops", "--out", path_str(dir)]);
    let reg = torchscript::register_torchvision_ops().unwrap();
    assert_eq!(reg, TorchvisionOps::Registered, "nothing else registers torchvision's operators in this test binary");
    let m = CModule::load(dir.join("ops.pt")).unwrap();
    let x = npy(dir.join("in_x.npy")).set_requires_grad(true);
    let args: Vec<IValue> = std::iter::once(IValue::Tensor(x.shallow_clone()))
        .chain(["rois", "boxes", "scores", "tied", "idxs"].iter().map(|n| IValue::Tensor(npy(dir.join(format!("in_{n}.npy"))))))
        .collect();
    let outs = torchscript::ivalue_to_tensors(m.forward_is(&args).unwrap(), "ops output").unwrap();
    assert_eq!(outs.len(), 10);
    let n_roi: usize = std::fs::read_to_string(dir.join("n_roi.txt")).unwrap().trim().parse().unwrap();
    let mut loss: Option<Tensor> = None;
    for (i, ours) in outs.iter().enumerate() {
        let theirs = npy(dir.join(format!("out_{i}.npy")));
        if i < n_roi {
            // Same bilinear weights in the same f32 operation order as the definition; sums of
            // <= 4 * 36 products of O(1) values: rounding only.
            let d = max_abs_diff(ours, &theirs);
            eprintln!("  roi_align case {i} {:?}: max diff {d:.3e}", ours.size());
            assert!(max_abs(&theirs) > 0.1, "case {i}: degenerate reference");
            assert!(d <= 1e-5, "roi_align case {i}: max abs diff {d:.3e}");
            let term = (ours * npy(dir.join(format!("w_{i}.npy")))).sum(Kind::Float);
            loss = Some(match loss {
                Some(l) => l + term,
                None => term,
            });
        } else {
            // nms returns indices: equal exactly (same order, ties by index).
            let (a, b) = (Vec::<i64>::try_from(ours).unwrap(), Vec::<i64>::try_from(&theirs).unwrap());
            eprintln!("  nms case {i}: {} kept", a.len());
            assert_eq!(a, b, "nms case {i}");
            if i != outs.len() - 1 {
                assert!(a.len() > 10 && a.len() < 300, "nms case {i}: {} kept of 300, not a discriminating case", a.len());
            }
        }
    }
    let grad = Tensor::run_backward(&[loss.unwrap()], &[&x], false, false).pop().unwrap();
    let theirs = npy(dir.join("grad_x.npy"));
    let d = max_abs_diff(&grad, &theirs);
    eprintln!("  roi_align gradient: max diff {d:.3e} (max |grad| {:.2})", max_abs(&theirs));
    assert!(max_abs(&theirs) > 0.1);
    assert!(d <= 1e-4, "roi_align gradient: max abs diff {d:.3e}");
}

// ---------------------------------------------------------------------------------------------
// Export -> load -> compare

/// `python tools/export_torchvision.py <args> --out <dir>`.
fn export(py: &Path, out: &Path, args: &[&str]) {
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--out", path_str(out)]);
    run_py(py, "export_torchvision.py", &a);
}

/// Writes `x` to `dir/x.npy`, runs `torchvision_ref.py pair` on `pair` and returns PyTorch's
/// (features, outputs).
fn pytorch_pair(py: &Path, pair: &Path, x: &Tensor, dir: &Path) -> (Vec<Tensor>, Vec<Tensor>) {
    let input = dir.join("x.npy");
    x.write_npy(&input).unwrap();
    run_py(py, "torchvision_ref.py", &["pair", "--dir", path_str(pair), "--input", path_str(&input), "--out", path_str(dir)]);
    let read = |prefix: &str| -> Vec<Tensor> {
        (0..).map(|i| dir.join(format!("{prefix}_{i}.npy"))).take_while(|p| p.is_file()).map(npy).collect()
    };
    (read("feat"), read("out"))
}

/// ResNet18 (random weights, seed 0) split after layer2: exported, loaded by featjnd, run on two
/// real photos; features and logits against PyTorch 1.13's run of the same files.
#[test]
fn resnet18_export_matches_pytorch() {
    let test = "resnet18_export_matches_pytorch";
    let Some(py) = python_or_skip(test) else { return };
    let Some(x) = imagenet_batch_or_skip(test) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let pair_dir = tmp.path().join("resnet18-layer2");
    export(&py, &pair_dir, &["resnet18", "--weights", "none", "--seed", "0", "--split", "layer2"]);
    let (feats, outs) = pytorch_pair(&py, &pair_dir, &x, tmp.path());
    assert_eq!((feats.len(), outs.len()), (1, 1));

    let pair = TorchScriptPair::load_dir(&pair_dir, Device::Cpu).unwrap();
    assert_eq!(pair.split_points(), ["layer2"]);
    let _g = tch::no_grad_guard();
    let f = pair.head(&x, "layer2").unwrap();
    assert_eq!(f[0].size(), [2, 128, 28, 28]);
    let logits = &pair.tail(&f, "layer2").unwrap()[0];
    assert_eq!(logits.size(), [2, 1000]);
    let (df, dl) = (max_abs_diff(&f[0], &feats[0]), max_abs_diff(logits, &outs[0]));
    let (sf, sl) = (max_abs(&feats[0]), max_abs(&outs[0]));
    eprintln!("  resnet18 layer2: features max diff {df:.3e} (max |f| {sf:.2}), logits max diff {dl:.3e} (max |logit| {sl:.2})");
    assert!(sf > 0.1 && sl > 0.01, "degenerate reference");
    // Rounding only (see the MobileNetV2 test), relative to the values' scale.
    assert!(df <= 1e-5 * sf.max(1.0), "features: {df:.3e}");
    assert!(dl <= 1e-5 * sl.max(1.0), "logits: {dl:.3e}");
}

/// Detections of one pair run: (boxes [N, 4], labels [N], scores [N], masks [N, 1, H, W], batch index [N]).
fn check_detections(what: &str, ours: &[Tensor], theirs: &[Tensor]) -> usize {
    assert_eq!(ours.len(), 5, "{what}: tail outputs");
    assert_eq!(theirs.len(), 5, "{what}: reference outputs");
    let n = theirs[0].size()[0] as usize;
    assert_eq!(ours[0].size(), theirs[0].size(), "{what}: number of detections");
    assert!(n > 0, "{what}: no detections in the reference; the comparison would be vacuous");
    let labels = |t: &Tensor| Vec::<i64>::try_from(t).unwrap();
    assert_eq!(labels(&ours[1]), labels(&theirs[1]), "{what}: labels");
    assert_eq!(labels(&ours[4]), labels(&theirs[4]), "{what}: batch index");
    let db = max_abs_diff(&ours[0], &theirs[0]);
    let ds = max_abs_diff(&ours[2], &theirs[2]);
    let dm = max_abs_diff(&ours[3], &theirs[3]);
    let (min_s, max_s) = (theirs[2].min().double_value(&[]), theirs[2].max().double_value(&[]));
    eprintln!("  {what}: {n} detections (scores {min_s:.4}..{max_s:.4}), max diff boxes {db:.3e} px, scores {ds:.3e}, masks {dm:.3e}");
    // Boxes are in pixels (up to ~10^3): rounding in the box regression decode gives ~1e-4 px;
    // scores and mask probabilities are in [0, 1].
    assert!(db <= 1e-2, "{what}: boxes {db:.3e}");
    assert!(ds <= 1e-4, "{what}: scores {ds:.3e}");
    assert!(dm <= 1e-3, "{what}: masks {dm:.3e}");
    n
}

/// Mask R-CNN (random weights, seed 0) split at the FPN, at a 320-pixel scale: exported, loaded by
/// featjnd (its tail calls torchvision::nms and torchvision::roi_align, featjnd's CPU
/// implementations), run on a real photo resized to 320x448; FPN features, and boxes, labels,
/// scores, masks both from PyTorch's features (the tail alone) and from featjnd's own head.
#[test]
fn maskrcnn_export_matches_pytorch() {
    let test = "maskrcnn_export_matches_pytorch";
    let Some(py) = python_or_skip(test) else { return };
    let Some(photo) = photo_or_skip(test) else { return };
    let (h, w) = (320u32, 448u32);
    let x = photos::to_tensor(&photos::resize(&photo.image, w, h)).unsqueeze(0);
    let tmp = tempfile::tempdir().unwrap();
    let pair_dir = tmp.path().join("maskrcnn-fpn");
    let img = tmp.path().join("photo.png");
    // The export's own eager check sees the same photo at the same scale (min_size 320), so it
    // compares real detections, not an empty set.
    image::DynamicImage::ImageRgb32F(photos::resize(&photo.image, w, h)).to_rgb8().save(&img).unwrap();
    let args = ["maskrcnn_resnet50_fpn", "--weights", "none", "--seed", "0", "--split", "fpn", "--min-size", "320"];
    let args = [&args[..], &["--check-size", "320", "448", "--detections-per-img", "50", "--image", path_str(&img)]].concat();
    export(&py, &pair_dir, &args);
    let (feats, outs) = pytorch_pair(&py, &pair_dir, &x, tmp.path());
    assert_eq!((feats.len(), outs.len()), (5, 5));

    let pair = TorchScriptPair::load_dir(&pair_dir, Device::Cpu).unwrap();
    let _g = tch::no_grad_guard();
    let f = pair.head(&x, "fpn").unwrap();
    assert_eq!(f.len(), 5);
    for (i, (a, b)) in f.iter().zip(&feats).enumerate() {
        let d = max_abs_diff(a, b);
        let s = max_abs(b);
        eprintln!("  maskrcnn FPN feature {i} {:?}: max diff {d:.3e} (max |f| {s:.2})", a.size());
        assert!(s > 1e-3 && d <= 1e-5 * s.max(1.0), "feature {i}: {d:.3e}");
    }
    let t = Instant::now();
    let from_theirs = pair.tail(&feats, "fpn").unwrap();
    eprintln!("  featjnd tail: {:.1} s", t.elapsed().as_secs_f64());
    let n = check_detections("tail on PyTorch's features", &from_theirs, &outs);
    let from_ours = pair.tail(&f, "fpn").unwrap();
    assert_eq!(check_detections("head + tail", &from_ours, &outs), n);
    assert_eq!(from_ours[3].size(), [n as i64, 1, h as i64, w as i64]);
}
