//! TorchScript split pairs: a tiny conv net built with `tch::nn` is traced here
//! (`CModule::create_by_tracing`) into head/tail files in a temporary directory, loaded back
//! through `TorchScriptPair`, and compared with the Rust closures it was traced from. Tracing
//! cannot save a function with several outputs, so multi-tensor heads (tuple, list, dict) and
//! non-tensor outputs are hand-written TorchScript modules without weights, zipped here
//! (`script_module`). Plus the error cases and the `IValue` → tensors conversion.
mod common;
use std::path::Path;
use std::time::Instant;

use featjnd_research::model::torchscript::{ivalue_to_tensors, InputSpec, SplitSpec, TorchScriptPair, SIDECAR};
use featjnd_research::model::{SplitModel, TaskKind};
use featjnd_research::Error;
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
        // Tracing turns captured tensors into constants, which must not require grad.
        vs.freeze();
        Net { _vs: vs, c1, c2, c3, fc }
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

fn model_err<T: std::fmt::Debug>(r: featjnd_research::Result<T>) -> String {
    match r {
        Err(Error::Model(m)) => m,
        other => panic!("expected Error::Model, got {other:?}"),
    }
}

#[test]
fn single_tensor_pair_matches_rust_and_full() {
    let _rng = common::rng_lock();
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
    let pair2 = TorchScriptPair::load_paths(dir.path().join("head.pt"), dir.path().join("tail.pt"), Device::Cpu).unwrap();
    assert!(max_diff(&pair2.forward(&x).unwrap()[0], &y_full) < 1e-5);
    eprintln!("single-tensor pair: {:.2?}", t0.elapsed());
}

#[test]
fn sidecar_names_split_and_checks_count() {
    let _rng = common::rng_lock();
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    write_single(&net, dir.path(), true);
    let spec = SplitSpec {
        arch: "tiny".into(),
        split: "block2".into(),
        task: TaskKind::DetectionSegmentation,
        num_features: Some(1),
        feature_names: Some(vec!["block2".into()]),
        input: InputSpec { range: Some([0.0, 1.0]), normalized_inside: true, mean: Some(vec![MEAN; 3]), std: Some(vec![STD; 3]) },
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
    assert!(e.contains("returned 1 tensor(s), the sidecar's num_features is 2"), "{e}");
}

#[test]
fn normalisation_outside_the_head() {
    let _rng = common::rng_lock();
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

/// Tracing (`create_by_tracing`) records a closure returning several tensors as a method with
/// several return values, which TorchScript refuses to save: multi-tensor heads must come from
/// `torch.jit.script`/`torch.jit.trace` in Python (which return a tuple, list or dict).
#[test]
fn tracing_cannot_save_two_outputs() {
    let _rng = common::rng_lock();
    let net = Net::new();
    let x = image(2, 1);
    let mut f = |i: &[Tensor]| {
        let a = net.stem(&i[0], true);
        let b = net.c2.forward(&a).relu();
        vec![a, b]
    };
    let m = CModule::create_by_tracing("M", "forward", &[x], &mut f).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = m.save(dir.path().join("head.pt")).unwrap_err().to_string();
    assert!(e.contains("single return value"), "{e}");
}

/// A hand-written TorchScript module `__torch__.M` with no weights, as a `.pt` archive.
fn script_module(path: &Path, code: &str) {
    let entries = [
        ("data.pkl", &b"\x80\x02c__torch__\nM\nq\x00)\x81}(ubq\x01."[..]),
        ("code/__torch__.py", code.as_bytes()),
        ("constants.pkl", b"\x80\x02)."),
        ("version", b"4\n"),
        ("byteorder", b"little"),
    ];
    std::fs::write(path, zip_stored(&entries.map(|(n, d)| (format!("m/{n}"), d.to_vec())))).unwrap();
}

/// A zip archive of uncompressed entries (what `torch.jit.load` reads).
fn zip_stored(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let offset = out.len() as u32;
        let common = |v: &mut Vec<u8>| {
            for h in [20u16, 0, 0, 0, 0] {
                v.extend(h.to_le_bytes()); // version needed, flags, stored, time, date
            }
            v.extend(crc.sum().to_le_bytes());
            v.extend((data.len() as u32).to_le_bytes());
            v.extend((data.len() as u32).to_le_bytes());
            v.extend((name.len() as u16).to_le_bytes());
            v.extend(0u16.to_le_bytes()); // extra field length
        };
        out.extend(0x04034b50u32.to_le_bytes());
        common(&mut out);
        out.extend(name.as_bytes());
        out.extend(data);
        central.extend(0x02014b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend([0u8; 10]); // comment length, disk, internal (2) and external (4) attributes
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let (cd_offset, n) = (out.len() as u32, entries.len() as u16);
    out.extend(&central);
    out.extend(0x06054b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend(n.to_le_bytes());
    out.extend(n.to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn module_code(ret: &str, body: &str) -> String {
    format!(
        "class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n  def forward(self: __torch__.M,\n    x: Tensor) -> {ret}:\n{body}"
    )
}

const TWO_LEVELS: &str = "    a = torch.relu(torch.sub(x, 0.5))\n    b = torch.avg_pool2d(x, [2, 2], [2, 2], [0, 0], False, True, None)\n";

/// The Rust version of `TWO_LEVELS`.
fn two_levels(x: &Tensor) -> (Tensor, Tensor) {
    ((x - 0.5).relu(), x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None))
}

/// A weighted tail taking two levels `[B, 3, H, W]`, `[B, 3, H/2, W/2]`.
struct Tail2 {
    _vs: VarStore,
    ca: nn::Conv2D,
    cb: nn::Conv2D,
    fc: nn::Linear,
}

impl Tail2 {
    fn new() -> Tail2 {
        tch::manual_seed(11);
        let mut vs = VarStore::new(Device::Cpu);
        let r = vs.root();
        let pad = nn::ConvConfig { padding: 1, ..Default::default() };
        let ca = nn::conv2d(&r / "ca", 3, 8, 3, pad);
        let cb = nn::conv2d(&r / "cb", 3, 16, 3, pad);
        let fc = nn::linear(&r / "fc", 24, 10, Default::default());
        vs.freeze();
        Tail2 { _vs: vs, ca, cb, fc }
    }
    fn forward(&self, a: &Tensor, b: &Tensor) -> Tensor {
        let pa = self.ca.forward(a).relu().mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        let pb = self.cb.forward(b).relu().mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        self.fc.forward(&Tensor::cat(&[pa, pb], 1))
    }
}

#[test]
fn two_tensor_head_tuple_list_dict() {
    let _rng = common::rng_lock();
    let t0 = Instant::now();
    let tail = Tail2::new();
    let x = image(2, 1);
    let (a, b) = two_levels(&x);
    for (ret, body, names) in [
        ("Tuple[Tensor, Tensor]", "    return (a, b)\n", None),
        ("List[Tensor]", "    return [a, b]\n", None),
        // Dict order is insertion order, not key order.
        ("Dict[str, Tensor]", "    return {\"p3\": a, \"p2\": b}\n", Some(["p3", "p2"])),
    ] {
        let dir = tempfile::tempdir().unwrap();
        script_module(&dir.path().join("head.pt"), &module_code(ret, &format!("{TWO_LEVELS}{body}")));
        trace(&[a.shallow_clone(), b.shallow_clone()], |i| vec![tail.forward(&i[0], &i[1])], &dir.path().join("tail.pt"));

        let pair = TorchScriptPair::load_dir(dir.path(), Device::Cpu).unwrap();
        let x = image(3, 6);
        let f = pair.head(&x, "split").unwrap();
        assert_eq!(f.len(), 2, "{ret}");
        let (ar, br) = two_levels(&x);
        assert_eq!(f[0].size(), [3, 3, 12, 16]);
        assert_eq!(f[1].size(), [3, 3, 6, 8]);
        assert!(max_diff(&f[0], &ar) < 1e-6 && max_diff(&f[1], &br) < 1e-6, "{ret}");
        let y = pair.tail(&f, "split").unwrap();
        let y_full = tail.forward(&ar, &br);
        assert_eq!(y.len(), 1);
        assert!(max_diff(&y[0], &y_full) < 1e-5, "{ret}: {}", max_diff(&y[0], &y_full));
        assert!(max_diff(&pair.forward(&x).unwrap()[0], &y_full) < 1e-5);

        // Without a sidecar TorchScript itself rejects a wrong count; still an Error::Model.
        let e = model_err(pair.tail(&f[..1], "split"));
        assert!(e.contains("with 1 feature tensor(s)"), "{e}");
        let e = model_err(pair.tail(&[f[0].shallow_clone(), f[1].shallow_clone(), f[1].shallow_clone()], "split"));
        assert!(e.contains("with 3 feature tensor(s)"), "{e}");

        // With a sidecar the count is checked before TorchScript runs, and dict keys against names.
        let names_json = match names {
            Some(n) => format!(", \"feature_names\": [\"{}\", \"{}\"]", n[0], n[1]),
            None => String::new(),
        };
        std::fs::write(dir.path().join(SIDECAR), format!("{{\"num_features\": 2{names_json}}}")).unwrap();
        let pair = TorchScriptPair::load_dir(dir.path(), Device::Cpu).unwrap();
        let f = pair.head(&x, "split").unwrap();
        let e = model_err(pair.tail(&f[..1], "split"));
        assert!(e.contains("takes 2 feature tensor(s), got 1"), "{e}");
        if names.is_some() {
            std::fs::write(dir.path().join(SIDECAR), r#"{"num_features": 2, "feature_names": ["p2", "p3"]}"#).unwrap();
            let pair = TorchScriptPair::load_dir(dir.path(), Device::Cpu).unwrap();
            let e = model_err(pair.head(&x, "split"));
            assert!(e.contains("keys [\"p3\", \"p2\"]"), "{e}");
        }
    }
    eprintln!("two-tensor heads: {:.2?}", t0.elapsed());
}

#[test]
fn scripted_outputs_tuple_tail_and_non_tensors() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let x = image(2, 2);
    let (a, b) = two_levels(&x);
    // A tail returning a tuple of two tensors (e.g. boxes and masks).
    script_module(&dir.path().join("head.pt"), &module_code("Tuple[Tensor, Tensor]", &format!("{TWO_LEVELS}    return (a, b)\n")));
    let tail_code = "class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n  def forward(self: __torch__.M,\n    a: Tensor,\n    b: Tensor) -> Tuple[Tensor, Tensor]:\n    return (torch.mul(a, 2.0), torch.neg(b))\n";
    script_module(&dir.path().join("tail.pt"), tail_code);
    let pair = TorchScriptPair::load_dir(dir.path(), Device::Cpu).unwrap();
    let y = pair.forward(&x).unwrap();
    assert_eq!(y.len(), 2);
    assert!(max_diff(&y[0], &(&a * 2.0)) < 1e-6 && max_diff(&y[1], &(-&b)) < 1e-6);

    // Non-tensor outputs of the head and of the tail.
    for (ret, body, needle) in [
        ("int", "    return 3\n", "head output is Int"),
        ("Tuple[Tensor, int]", "    return (x, 3)\n", "element 1 of the Tuple is Int"),
        ("Tuple[Tensor, Tuple[Tensor, Tensor]]", "    return (x, (x, x))\n", "element 1 of the Tuple is Tuple"),
        ("Dict[str, int]", "    return {\"a\": 1}\n", "key \"a\" is Int"),
        ("List[Tensor]", "    return annotate(List[Tensor], [])\n", "holds no tensors"),
    ] {
        script_module(&dir.path().join("head.pt"), &module_code(ret, body));
        let pair = TorchScriptPair::load_dir(dir.path(), Device::Cpu).unwrap();
        let e = model_err(pair.head(&x, "split"));
        assert!(e.contains(needle), "{ret}: {e}");
    }
    script_module(&dir.path().join("head.pt"), &module_code("Tensor", "    return x\n"));
    script_module(&dir.path().join("tail.pt"), &module_code("str", "    return \"no\"\n"));
    let pair = TorchScriptPair::load_dir(dir.path(), Device::Cpu).unwrap();
    let e = model_err(pair.forward(&x));
    assert!(e.contains("tail output is String"), "{e}");
    // A head that raises inside TorchScript.
    script_module(&dir.path().join("head.pt"), &module_code("Tensor", "    return torch.matmul(x, torch.ones([7, 7]))\n"));
    let pair = TorchScriptPair::load_dir(dir.path(), Device::Cpu).unwrap();
    let e = model_err(pair.head(&x, "split"));
    assert!(e.contains("head forward"), "{e}");
}

#[test]
fn load_errors() {
    let _rng = common::rng_lock();
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
    let _rng = common::rng_lock();
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

/// The spec round-trips through JSON with every field; `{}` is the default.
#[test]
fn spec_round_trip() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(SIDECAR);
    let spec = SplitSpec {
        arch: "torchvision-maskrcnn-fpn".into(),
        split: "fpn".into(),
        task: TaskKind::DetectionSegmentation,
        num_features: Some(5),
        feature_names: Some(["0", "1", "2", "3", "pool"].map(String::from).to_vec()),
        input: InputSpec { range: Some([0.0, 1.0]), normalized_inside: true, mean: None, std: None },
        description: Some("maskrcnn_resnet50_fpn weights=DEFAULT".into()),
        ..SplitSpec::default()
    };
    spec.write(&p).unwrap();
    assert_eq!(SplitSpec::read(&p).unwrap(), spec);
    std::fs::write(&p, "{}").unwrap();
    assert_eq!(SplitSpec::read(&p).unwrap(), SplitSpec::default());

    // What tools/export_torchvision.py writes (its field set, by hand).
    std::fs::write(
        &p,
        r#"{
  "version": 1,
  "arch": "torchvision-resnet50",
  "split": "layer2",
  "task": "classification",
  "num_features": 1,
  "feature_names": ["layer2"],
  "input": {"range": [0.0, 1.0], "normalized_inside": true,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
  "head": "head.pt",
  "tail": "tail.pt",
  "description": "resnet50 weights=IMAGENET1K_V2 split=layer2 scripted with torch 2.5.1"
}"#,
    )
    .unwrap();
    let s = SplitSpec::read(&p).unwrap();
    assert_eq!((s.split.as_str(), s.task, s.num_features), ("layer2", TaskKind::Classification, Some(1)));
    assert_eq!(s.input.std.as_deref(), Some(&[0.229, 0.224, 0.225][..]));
}
