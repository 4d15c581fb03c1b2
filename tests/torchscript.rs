//! TorchScript split pairs: a tiny conv net built with `tch::nn` is traced here
//! (`CModule::create_by_tracing`) into head/tail files in a temporary directory, loaded back
//! through `TorchScriptPair`, and compared with the Rust closures it was traced from. Plus the
//! error cases and the `IValue` → tensors conversion (tuples, lists, dicts).
use std::path::Path;
use std::time::Instant;

use featjnd::model::torchscript::{ivalue_to_tensors, InputSpec, SplitSpec, TorchScriptPair, SIDECAR};
use featjnd::model::{SplitModel, TaskKind};
use featjnd::Error;
use tch::nn::{self, Module, VarStore};
use tch::{CModule, Device, IValue, Kind, Tensor};

const MEAN: f64 = 0.5;
const STD: f64 = 0.25;

struct Net {
    _vs: VarStore,
    c1: nn::Conv2D,
    c2: nn::Conv2D,
    c3: nn::Conv2D,
    fc: nn::Linear,
    fc2: nn::Linear,
}

impl Net {
    fn new() -> Net {
        tch::manual_seed(7);
        let mut vs = VarStore::new(Device::Cpu);
        let r = vs.root();
        let pad = nn::ConvConfig { padding: 1, ..Default::default() };
        let c1 = nn::conv2d(&r / "c1", 3, 8, 3, pad);
        let c2 = nn::conv2d(&r / "c2", 8, 16, 3, nn::ConvConfig { stride: 2, ..pad });
        let c3 = nn::conv2d(&r / "c3", 16, 16, 3, pad);
        let fc = nn::linear(&r / "fc", 16, 10, Default::default());
        let fc2 = nn::linear(&r / "fc2", 24, 10, Default::default());
        // Tracing turns captured tensors into constants, which must not require grad.
        vs.freeze();
        Net { _vs: vs, c1, c2, c3, fc, fc2 }
    }
    /// Normalisation + first conv (8 ch, full resolution).
    fn stem(&self, x: &Tensor, normalize: bool) -> Tensor {
        let x = if normalize { (x - MEAN) / STD } else { x.shallow_clone() };
        self.c1.forward(&x).relu()
    }
    /// Single-tensor head: `[B, 16, H/2, W/2]`.
    fn head(&self, x: &Tensor, normalize: bool) -> Tensor {
        self.c2.forward(&self.stem(x, normalize)).relu()
    }
    fn pool(&self, f: &Tensor) -> Tensor {
        self.c3.forward(f).relu().mean_dim([2i64, 3].as_slice(), false, Kind::Float)
    }
    fn tail(&self, f: &Tensor) -> Tensor {
        self.fc.forward(&self.pool(f))
    }
    /// Two-tensor head: the stem output and the stride-2 output (an "FPN level list").
    fn head2(&self, x: &Tensor) -> Vec<Tensor> {
        let a = self.stem(x, true);
        let b = self.c2.forward(&a).relu();
        vec![a, b]
    }
    fn tail2(&self, a: &Tensor, b: &Tensor) -> Tensor {
        let pa = a.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        self.fc2.forward(&Tensor::cat(&[pa, self.pool(b)], 1))
    }
}

fn image(b: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::rand([b, 3, 12, 16], (Kind::Float, Device::Cpu))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn trace<F: FnMut(&[Tensor]) -> Vec<Tensor>>(inputs: &[Tensor], mut f: F, path: &Path) {
    let m = CModule::create_by_tracing("M", "forward", inputs, &mut f).unwrap();
    m.save(path).unwrap();
}

/// Writes `head.pt`/`tail.pt` of the single-tensor split into `dir`; `normalize` puts the input
/// normalisation inside the traced head.
fn write_single(net: &Net, dir: &Path, normalize: bool) {
    let x = image(2, 1);
    trace(&[x.shallow_clone()], |i| vec![net.head(&i[0], normalize)], &dir.join("head.pt"));
    let f = net.head(&x, normalize);
    trace(&[f], |i| vec![net.tail(&i[0])], &dir.join("tail.pt"));
}

fn model_err<T: std::fmt::Debug>(r: featjnd::Result<T>) -> String {
    match r {
        Err(Error::Model(m)) => m,
        other => panic!("expected Error::Model, got {other:?}"),
    }
}

#[test]
fn single_tensor_pair_matches_rust_and_full() {
    let t0 = Instant::now();
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    write_single(&net, dir.path(), true);

    // No sidecar: defaults.
    let pair = TorchScriptPair::load_dir(dir.path(), Device::Cpu).unwrap();
    assert_eq!(pair.arch(), "torchscript");
    assert_eq!(pair.split_points(), vec!["split".to_string()]);
    assert_eq!(pair.task(), TaskKind::Classification);

    // A batch size other than the tracing example's.
    let x = image(5, 3);
    let f = pair.head(&x, "split").unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].size(), [5, 16, 6, 8]);
    let y = pair.tail(&f, "split").unwrap();
    assert_eq!(y.len(), 1);
    assert_eq!(y[0].size(), [5, 10]);

    let f_rust = net.head(&x, true);
    let y_full = net.tail(&f_rust);
    assert!(max_diff(&f[0], &f_rust) < 1e-5, "head vs rust {}", max_diff(&f[0], &f_rust));
    assert!(max_diff(&y[0], &y_full) < 1e-5, "tail(head) vs full {}", max_diff(&y[0], &y_full));
    let y_fwd = pair.forward(&x).unwrap();
    assert!(max_diff(&y_fwd[0], &y_full) < 1e-5);
    // The tail alone, on the Rust head's features.
    let y2 = pair.tail(&[f_rust.shallow_clone()], "split").unwrap();
    assert!(max_diff(&y2[0], &y_full) < 1e-5);

    // Gradients with respect to the features still flow through the loaded tail.
    let fg = f_rust.detach().set_requires_grad(true);
    let out = pair.tail(&[fg.shallow_clone()], "split").unwrap();
    out[0].sum(Kind::Float).backward();
    assert!(fg.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);

    // load_paths picks up the same files.
    let pair2 = TorchScriptPair::load_paths(dir.path().join("head.pt"), dir.path().join("tail.pt"), Device::Cpu)
        .unwrap();
    assert!(max_diff(&pair2.forward(&x).unwrap()[0], &y_full) < 1e-5);
    eprintln!("single-tensor pair: {:.2?}", t0.elapsed());
}

#[test]
fn sidecar_names_split_and_checks_count() {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    write_single(&net, dir.path(), true);
    let spec = SplitSpec {
        arch: "tiny".into(),
        split: "block2".into(),
        task: TaskKind::DetectionSegmentation,
        num_features: Some(1),
        feature_names: Some(vec!["block2".into()]),
        input: InputSpec {
            range: Some([0.0, 1.0]),
            normalized_inside: true,
            mean: Some(vec![MEAN; 3]),
            std: Some(vec![STD; 3]),
        },
        ..SplitSpec::default()
    };
    spec.write(&dir.path().join(SIDECAR)).unwrap();
    let pair = TorchScriptPair::load_dir(dir.path(), Device::Cpu).unwrap();
    assert_eq!(pair.arch(), "tiny");
    assert_eq!(pair.task(), TaskKind::DetectionSegmentation);
    assert_eq!(pair.split_points(), vec!["block2".to_string()]);
    assert_eq!(pair.spec(), &spec);

    let x = image(2, 4);
    let f = pair.head(&x, "block2").unwrap();
    // normalized_inside: mean/std are documentation only, nothing applied twice.
    assert!(max_diff(&f[0], &net.head(&x, true)) < 1e-5);

    let e = model_err(pair.head(&x, "split"));
    assert!(e.contains("no split point \"split\"") && e.contains("block2"), "{e}");
    let e = model_err(pair.tail(&f, "layer9"));
    assert!(e.contains("layer9"), "{e}");
    let e = model_err(pair.tail(&[f[0].shallow_clone(), f[0].shallow_clone()], "block2"));
    assert!(e.contains("takes 1 feature tensor(s), got 2"), "{e}");
    let e = model_err(pair.tail(&[], "block2"));
    assert!(e.contains("at least one"), "{e}");
    let e = model_err(pair.head(&Tensor::zeros([3, 12, 16], (Kind::Float, Device::Cpu)), "block2"));
    assert!(e.contains("[B, C, H, W]"), "{e}");

    // The sidecar claims two tensors; the head returns one.
    let spec2 = SplitSpec { num_features: Some(2), feature_names: None, ..spec.clone() };
    spec2.write(&dir.path().join(SIDECAR)).unwrap();
    let pair = TorchScriptPair::load_dir(dir.path(), Device::Cpu).unwrap();
    let e = model_err(pair.head(&x, "block2"));
    assert!(e.contains("wrong count") && e.contains("takes 2 feature tensor(s), got 1"), "{e}");
}

#[test]
fn normalisation_outside_the_head() {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    write_single(&net, dir.path(), false); // the traced head does not normalise
    std::fs::write(
        dir.path().join(SIDECAR),
        r#"{"split": "s", "input": {"range": [0, 1], "normalized_inside": false, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}"#,
    )
    .unwrap();
    let pair = TorchScriptPair::load_dir(dir.path(), Device::Cpu).unwrap();
    let x = image(3, 5);
    let f = pair.head(&x, "s").unwrap();
    assert!(max_diff(&f[0], &net.head(&x, true)) < 1e-5);
    let e = model_err(pair.head(&Tensor::rand([1, 4, 12, 16], (Kind::Float, Device::Cpu)), "s"));
    assert!(e.contains("4 channels"), "{e}");
}

#[test]
fn two_tensor_head() {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let x = image(2, 1);
    trace(&[x.shallow_clone()], |i| net.head2(&i[0]), &dir.path().join("head.pt"));
    let fs = net.head2(&x);
    trace(&fs, |i| vec![net.tail2(&i[0], &i[1])], &dir.path().join("tail.pt"));

    // What does a traced two-output function return once saved and loaded?
    let raw = CModule::load(dir.path().join("head.pt")).unwrap();
    let out = raw.forward_is(&[IValue::Tensor(x.shallow_clone())]).unwrap();
    eprintln!("traced two-output head returns {}", featjnd::model::torchscript::ivalue_kind(&out));

    let pair = TorchScriptPair::load_dir(dir.path(), Device::Cpu).unwrap();
    let x = image(4, 6);
    let f = pair.head(&x, "split").unwrap();
    assert_eq!(f.len(), 2, "the traced head should yield both tensors");
    let fr = net.head2(&x);
    assert_eq!(f[0].size(), [4, 8, 12, 16]);
    assert_eq!(f[1].size(), [4, 16, 6, 8]);
    assert!(max_diff(&f[0], &fr[0]) < 1e-5);
    assert!(max_diff(&f[1], &fr[1]) < 1e-5);
    let y = pair.tail(&f, "split").unwrap();
    let y_full = net.tail2(&fr[0], &fr[1]);
    assert!(max_diff(&y[0], &y_full) < 1e-5, "{}", max_diff(&y[0], &y_full));

    // Without a sidecar the count is checked by TorchScript itself; still an Error::Model.
    let e = model_err(pair.tail(&f[..1], "split"));
    assert!(e.contains("1 feature tensor(s)"), "{e}");
    let e = model_err(pair.tail(&[f[0].shallow_clone(), f[1].shallow_clone(), f[1].shallow_clone()], "split"));
    assert!(e.contains("3 feature tensor(s)"), "{e}");

    // With the sidecar, before calling TorchScript.
    std::fs::write(dir.path().join(SIDECAR), r#"{"num_features": 2, "feature_names": ["p2", "p3"]}"#).unwrap();
    let pair = TorchScriptPair::load_dir(dir.path(), Device::Cpu).unwrap();
    let f = pair.head(&x, "split").unwrap();
    let e = model_err(pair.tail(&f[..1], "split"));
    assert!(e.contains("takes 2 feature tensor(s), got 1"), "{e}");
}

#[test]
fn load_errors() {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();

    // Not a directory / empty directory / missing tail.
    let e = model_err(TorchScriptPair::load_dir(dir.path().join("nope"), Device::Cpu));
    assert!(e.contains("not a directory"), "{e}");
    let e = model_err(TorchScriptPair::load_dir(dir.path(), Device::Cpu));
    assert!(e.contains("head") && e.contains("file not found"), "{e}");
    write_single(&net, dir.path(), true);
    std::fs::remove_file(dir.path().join("tail.pt")).unwrap();
    let e = model_err(TorchScriptPair::load_dir(dir.path(), Device::Cpu));
    assert!(e.contains("tail") && e.contains("file not found"), "{e}");

    // Garbage instead of TorchScript (no panic).
    std::fs::write(dir.path().join("tail.pt"), b"this is not a zip archive").unwrap();
    let e = model_err(TorchScriptPair::load_dir(dir.path(), Device::Cpu));
    assert!(e.contains("not a loadable TorchScript file"), "{e}");
    assert!(!e.contains("Exception raised from"), "backtrace kept: {e}");
    // A zip-like truncated file.
    let head = std::fs::read(dir.path().join("head.pt")).unwrap();
    std::fs::write(dir.path().join("tail.pt"), &head[..head.len() / 2]).unwrap();
    let e = model_err(TorchScriptPair::load_dir(dir.path(), Device::Cpu));
    assert!(e.contains("not a loadable TorchScript file"), "{e}");
    // An empty file.
    std::fs::write(dir.path().join("tail.pt"), b"").unwrap();
    model_err(TorchScriptPair::load_dir(dir.path(), Device::Cpu));

    // Bad sidecars.
    write_single(&net, dir.path(), true);
    for (json, needle) in [
        ("{", "split.json"),
        (r#"{"task": "segmentation"}"#, "unknown variant"),
        (r#"{"spilt": "a"}"#, "unknown field"),
        (r#"{"num_features": 0}"#, "num_features must be >= 1"),
        (r#"{"num_features": 2, "feature_names": ["a"]}"#, "feature_names has 1"),
        (r#"{"input": {"mean": [0.5]}}"#, "go together"),
        (r#"{"input": {"mean": [0.5], "std": [0.0]}}"#, "std finite and > 0"),
        (r#"{"input": {"mean": [0.5, 0.5], "std": [1.0]}}"#, "same, non-zero length"),
        (r#"{"version": 2}"#, "version 2"),
        (r#"{"split": ""}"#, "split name is empty"),
    ] {
        std::fs::write(dir.path().join(SIDECAR), json).unwrap();
        let e = model_err(TorchScriptPair::load_dir(dir.path(), Device::Cpu));
        assert!(e.contains(needle), "{json}: {e}");
    }
    // Sidecar file names.
    std::fs::rename(dir.path().join("head.pt"), dir.path().join("h.ts")).unwrap();
    std::fs::write(dir.path().join(SIDECAR), r#"{"head": "h.ts"}"#).unwrap();
    TorchScriptPair::load_dir(dir.path(), Device::Cpu).unwrap();
    // load_paths with a missing file.
    let e = model_err(TorchScriptPair::load_paths(dir.path().join("head.pt"), dir.path().join("tail.pt"), Device::Cpu));
    assert!(e.contains("file not found"), "{e}");
}

#[test]
fn ivalue_conversion() {
    let t = |v: f32| Tensor::from_slice(&[v]);
    let vals = |ts: Vec<Tensor>| ts.iter().map(|t| t.double_value(&[0])).collect::<Vec<_>>();

    assert_eq!(vals(ivalue_to_tensors(IValue::Tensor(t(1.0)), "x").unwrap()), [1.0]);
    assert_eq!(vals(ivalue_to_tensors(IValue::Tuple(vec![IValue::Tensor(t(1.0)), IValue::Tensor(t(2.0))]), "x").unwrap()), [1.0, 2.0]);
    assert_eq!(vals(ivalue_to_tensors(IValue::TensorList(vec![t(3.0), t(4.0)]), "x").unwrap()), [3.0, 4.0]);
    assert_eq!(vals(ivalue_to_tensors(IValue::GenericList(vec![IValue::Tensor(t(5.0))]), "x").unwrap()), [5.0]);
    // A dict keeps its order (torchvision FPN: "0", "1", "2", "3", "pool"), not sorted by key.
    let d = IValue::GenericDict(vec![
        (IValue::String("z".into()), IValue::Tensor(t(1.0))),
        (IValue::String("a".into()), IValue::Tensor(t(2.0))),
        (IValue::String("pool".into()), IValue::Tensor(t(3.0))),
    ]);
    assert_eq!(vals(ivalue_to_tensors(d, "x").unwrap()), [1.0, 2.0, 3.0]);

    for (v, needle) in [
        (IValue::Int(3), "is Int"),
        (IValue::None, "is None"),
        (IValue::Tuple(vec![IValue::Tensor(t(1.0)), IValue::Double(2.0)]), "element 1 of the Tuple is Double"),
        (IValue::Tuple(vec![IValue::Tuple(vec![IValue::Tensor(t(1.0))])]), "element 0 of the Tuple is Tuple"),
        (IValue::GenericDict(vec![(IValue::String("k".into()), IValue::Int(1))]), "key \"k\" is Int"),
        (IValue::TensorList(vec![]), "holds no tensors"),
        (IValue::Tuple(vec![]), "holds no tensors"),
    ] {
        let e = model_err(ivalue_to_tensors(v, "head output"));
        assert!(e.contains(needle), "{e}");
    }
}

/// A dict-returning head checked against the sidecar's `feature_names` can only be tested with a
/// scripted module (tracing cannot produce a dict); the dict path is covered by
/// `ivalue_conversion`. This checks that the spec round-trips through JSON with every field.
#[test]
fn spec_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(SIDECAR);
    let spec = SplitSpec {
        arch: "torchvision-maskrcnn-fpn".into(),
        split: "fpn".into(),
        task: TaskKind::DetectionSegmentation,
        num_features: Some(5),
        feature_names: Some(["0", "1", "2", "3", "pool"].map(String::from).to_vec()),
        input: InputSpec { range: Some([0.0, 1.0]), normalized_inside: true, mean: None, std: None },
        ..SplitSpec::default()
    };
    spec.write(&p).unwrap();
    assert_eq!(SplitSpec::read(&p).unwrap(), spec);
    std::fs::write(&p, "{}").unwrap();
    assert_eq!(SplitSpec::read(&p).unwrap(), SplitSpec::default());
}
