//! A split model given as two TorchScript files, `head.pt` and `tail.pt`, exported from PyTorch
//! (for instance by `tools/export_torchvision.py`), with an optional JSON sidecar `split.json`.
//!
//! # Calling convention
//!
//! * `head.forward(x)` takes one tensor `x: [B, C, H, W]` and returns the feature(s) at the split:
//!   a `Tensor`, a tuple or list of tensors, or a dict of tensors (torchvision's FPN backbones
//!   return an `OrderedDict`; its insertion order is kept). Anything else (an int, a nested tuple,
//!   `None`) is an error.
//! * `tail.forward(f_0, ..., f_{n-1})` takes the head's `n` tensors back **as separate positional
//!   arguments, in the head's order** (one tensor: `tail.forward(f_0)`), and returns a tensor or a
//!   tuple/list/dict of tensors (the task output(s)). A tail for a dict-returning head must rebuild
//!   the dict itself (the export script's tail wrappers do).
//!
//! Both modules are loaded with [`tch::CModule::load_on_device`], put in eval mode and their
//! parameters frozen (`requires_grad = false`; gradients with respect to inputs and features
//! still flow). One pair is one split point.
//!
//! # Sidecar `split.json` (optional; every field optional)
//!
//! ```json
//! {
//!   "version": 1,
//!   "arch": "torchvision-resnet50",
//!   "split": "layer2",
//!   "task": "classification",
//!   "num_features": 1,
//!   "feature_names": ["layer2"],
//!   "input": {
//!     "range": [0.0, 1.0],
//!     "normalized_inside": true,
//!     "mean": [0.485, 0.456, 0.406],
//!     "std": [0.229, 0.224, 0.225]
//!   },
//!   "head": "head.pt",
//!   "tail": "tail.pt",
//!   "description": "resnet50 weights=IMAGENET1K_V2 split=layer2 ..."
//! }
//! ```
//!
//! * `version`: 1 (the only one). `arch`: a free name (default `"torchscript"`). `split`: the
//!   split point's name (default `"split"`). `task`: `"classification"` (default; the tail returns
//!   logits `[B, classes]`) or `"detection-segmentation"`; this is a label only: featjnd's
//!   detection code reads the shapes detector's dense outputs ([`crate::model::detector`]) and does
//!   not understand, say, torchvision Mask R-CNN outputs.
//! * `num_features`: how many tensors the head returns and the tail takes; when given, both are
//!   checked before/after calling TorchScript. `feature_names`: informational names of those
//!   tensors (length `num_features` when both are given); when the head returns a dict, its keys
//!   must equal them, in order.
//! * `input`: the input convention. `range` is the value range the pair expects (informational,
//!   e.g. `[0, 1]` for RGB images divided by 255). `normalized_inside` (default `true`) says the
//!   head normalises by itself; `mean`/`std` then merely document what it does. With
//!   `normalized_inside: false` and `mean`/`std` given, [`TorchScriptPair::head`] computes
//!   `(x - mean[c]) / std[c]` per channel before calling `head.pt`, so callers still pass `range`.
//! * `head`, `tail`: file names relative to the sidecar's directory (defaults `head.pt`,
//!   `tail.pt`); used by [`TorchScriptPair::load_dir`] only. `description`: free text
//!   (provenance), not interpreted.
//!
//! Unknown fields are rejected (a typo should not silently become a default).
//!
//! # torchvision operators
//!
//! TorchScript exported from torchvision's detection models calls torchvision's C++ operators
//! (`torchvision::nms`; the R-CNN family also `torchvision::roi_align`). featjnd's libtorch does
//! not ship them, so this crate carries its own CPU implementations (`csrc/torchvision_ops.cpp`,
//! built by `build.rs`): [`register_torchvision_ops`] registers `torchvision::nms`,
//! `torchvision::roi_align` (with autograd) and `torchvision::_roi_align_backward` under
//! torchvision's schemas, and every loader here calls it before loading a file. CPU only: a
//! detection tail loaded on a CUDA device fails at its first call of one of these operators. See
//! docs/torchvision-ops.md.

use super::{expect_feats, unknown_split, SplitModel, TaskKind};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{CModule, Device, IValue, Kind, Tensor};

/// The sidecar's file name.
pub const SIDECAR: &str = "split.json";
/// `arch()` when the sidecar does not name one.
pub const DEFAULT_ARCH: &str = "torchscript";
/// The split name when the sidecar does not give one.
pub const DEFAULT_SPLIT: &str = "split";

/// The contents of `split.json`; [`SplitSpec::default`] is what a missing sidecar means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    #[serde(default = "default_arch")]
    pub arch: String,
    #[serde(default = "default_split")]
    pub split: String,
    #[serde(default = "default_task")]
    pub task: TaskKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_features: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_names: Option<Vec<String>>,
    #[serde(default)]
    pub input: InputSpec,
    #[serde(default = "default_head")]
    pub head: String,
    #[serde(default = "default_tail")]
    pub tail: String,
    /// Free text (provenance: source model, weights, exporter versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `task: "dense"` only: how each tail output compares, in the tail's order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<OutputKind>>,
}

/// How a dense output compares to the clean one (`crate::study::dense`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Logits over the channels (semantic segmentation).
    Softmax,
    /// Independent logits per element (heat-maps).
    Sigmoid,
    /// Values (regression, e.g. depth).
    Identity,
}

impl OutputKind {
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Softmax => "softmax",
            OutputKind::Sigmoid => "sigmoid",
            OutputKind::Identity => "identity",
        }
    }
}

/// The input convention of a pair (sidecar field `input`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The value range the pair expects, e.g. `[0, 1]` (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
    /// The head normalises its input itself (default `true`).
    #[serde(default = "default_true")]
    pub normalized_inside: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f64>>,
}

fn default_version() -> u32 {
    1
}
fn default_arch() -> String {
    DEFAULT_ARCH.into()
}
fn default_split() -> String {
    DEFAULT_SPLIT.into()
}
fn default_task() -> TaskKind {
    TaskKind::Classification
}
fn default_head() -> String {
    "head.pt".into()
}
fn default_tail() -> String {
    "tail.pt".into()
}
fn default_true() -> bool {
    true
}

impl Default for InputSpec {
    fn default() -> Self {
        InputSpec { range: None, normalized_inside: true, mean: None, std: None }
    }
}

impl Default for SplitSpec {
    fn default() -> Self {
        SplitSpec {
            version: default_version(),
            arch: default_arch(),
            split: default_split(),
            task: default_task(),
            num_features: None,
            feature_names: None,
            input: InputSpec::default(),
            head: default_head(),
            tail: default_tail(),
            description: None,
            outputs: None,
        }
    }
}

impl SplitSpec {
    /// Reads and validates a sidecar.
    pub fn read(path: &Path) -> Result<SplitSpec> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Model(format!("torchscript sidecar {}: cannot read: {e}", path.display())))?;
        let spec: SplitSpec =
            serde_json::from_str(&text).map_err(|e| Error::Model(format!("torchscript sidecar {}: {e}", path.display())))?;
        spec.validate().map_err(|why| Error::Model(format!("torchscript sidecar {}: {why}", path.display())))?;
        Ok(spec)
    }

    /// Writes the sidecar as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Model(e.to_string()))?;
        std::fs::write(path, text + "\n")?;
        Ok(())
    }

    /// Checks the fields for consistency; the message says what is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.version != 1 {
            return Err(format!("version {} is not supported (only 1)", self.version));
        }
        if self.split.is_empty() {
            return Err("split name is empty".into());
        }
        if self.head.is_empty() || self.tail.is_empty() {
            return Err("head/tail file names must not be empty".into());
        }
        match (self.task, &self.outputs) {
            (TaskKind::Dense, None) => {
                return Err("task `dense` needs `outputs`: one of \"softmax\", \"sigmoid\", \"identity\" per tail output".into())
            }
            (TaskKind::Dense, Some(o)) if o.is_empty() => return Err("`outputs` of a dense task must not be empty".into()),
            (TaskKind::Dense, Some(_)) | (_, None) => {}
            (t, Some(_)) => return Err(format!("`outputs` is for task `dense` only, not {t:?}")),
        }
        if self.num_features == Some(0) {
            return Err("num_features must be >= 1".into());
        }
        if let (Some(n), Some(names)) = (self.num_features, &self.feature_names) {
            if names.len() != n {
                return Err(format!("num_features is {n} but feature_names has {}", names.len()));
            }
        }
        let i = &self.input;
        if let Some([lo, hi]) = i.range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(format!("input.range [{lo}, {hi}] must be finite with lo < hi"));
            }
        }
        match (&i.mean, &i.std) {
            (None, None) => {}
            (Some(m), Some(s)) => {
                if m.is_empty() || m.len() != s.len() {
                    return Err(format!("input.mean ({}) and input.std ({}) need the same, non-zero length", m.len(), s.len()));
                }
                if m.iter().any(|v| !v.is_finite()) || s.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                    return Err("input.mean must be finite and input.std finite and > 0".into());
                }
            }
            _ => return Err("input.mean and input.std go together".into()),
        }
        Ok(())
    }
}

/// A TorchScript head/tail pair for one split point (see the module docs).
pub struct TorchScriptPair {
    head: CModule,
    tail: CModule,
    spec: SplitSpec,
    device: Device,
    head_path: PathBuf,
    tail_path: PathBuf,
    /// `(mean, std)` as `[1, C, 1, 1]` f32 on `device`, when featjnd normalises before the head.
    normalize: Option<(Tensor, Tensor)>,
}

impl std::fmt::Debug for TorchScriptPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchScriptPair")
            .field("spec", &self.spec)
            .field("device", &self.device)
            .field("head_path", &self.head_path)
            .field("tail_path", &self.tail_path)
            .finish()
    }
}

impl TorchScriptPair {
    /// Loads `dir/head.pt` and `dir/tail.pt` (or the names in `dir/split.json`), with the sidecar
    /// if present and the defaults (split `"split"`, classification) otherwise.
    pub fn load_dir(dir: impl AsRef<Path>, device: Device) -> Result<TorchScriptPair> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::Model(format!("torchscript pair: {} is not a directory", dir.display())));
        }
        let sidecar = dir.join(SIDECAR);
        let spec = if sidecar.exists() { SplitSpec::read(&sidecar)? } else { SplitSpec::default() };
        let (head, tail) = (dir.join(&spec.head), dir.join(&spec.tail));
        Self::load_with_spec(head, tail, spec, device)
    }

    /// Loads two explicit files; a `split.json` in the head's directory is used when present
    /// (its `head`/`tail` names are then ignored).
    pub fn load_paths(head: impl AsRef<Path>, tail: impl AsRef<Path>, device: Device) -> Result<TorchScriptPair> {
        let head = head.as_ref();
        let sidecar = head.parent().map(|p| p.join(SIDECAR));
        let spec = match sidecar {
            Some(s) if s.exists() => SplitSpec::read(&s)?,
            _ => SplitSpec::default(),
        };
        Self::load_with_spec(head, tail, spec, device)
    }

    /// Loads two explicit files with an explicit spec (no sidecar is read).
    pub fn load_with_spec(head: impl AsRef<Path>, tail: impl AsRef<Path>, spec: SplitSpec, device: Device) -> Result<TorchScriptPair> {
        spec.validate().map_err(|why| Error::Model(format!("torchscript split spec: {why}")))?;
        let (head_path, tail_path) = (head.as_ref().to_path_buf(), tail.as_ref().to_path_buf());
        let head = load_module(&head_path, "head", device)?;
        let tail = load_module(&tail_path, "tail", device)?;
        let normalize = match (&spec.input, &spec.input.mean, &spec.input.std) {
            (i, Some(m), Some(s)) if !i.normalized_inside => {
                let t = |v: &[f64]| {
                    Tensor::from_slice(&v.iter().map(|&a| a as f32).collect::<Vec<_>>()).view([1, v.len() as i64, 1, 1]).to_device(device)
                };
                Some((t(m), t(s)))
            }
            _ => None,
        };
        Ok(TorchScriptPair { head, tail, spec, device, head_path, tail_path, normalize })
    }

    pub fn spec(&self) -> &SplitSpec {
        &self.spec
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn paths(&self) -> (&Path, &Path) {
        (&self.head_path, &self.tail_path)
    }

    fn check_split(&self, split: &str) -> Result<()> {
        if split == self.spec.split {
            Ok(())
        } else {
            Err(unknown_split(self, split))
        }
    }

    fn check_device(&self, t: &Tensor, what: &str) -> Result<()> {
        if t.device() != self.device {
            return Err(Error::Model(format!(
                "{} (TorchScript): {what} is on {:?} but the modules were loaded on {:?}",
                self.spec.arch,
                t.device(),
                self.device
            )));
        }
        Ok(())
    }
}

impl SplitModel for TorchScriptPair {
    fn arch(&self) -> &str {
        &self.spec.arch
    }
    fn task(&self) -> TaskKind {
        self.spec.task
    }
    fn split_points(&self) -> Vec<String> {
        vec![self.spec.split.clone()]
    }

    fn head(&self, x: &Tensor, split: &str) -> Result<Vec<Tensor>> {
        self.check_split(split)?;
        if x.dim() != 4 {
            return Err(Error::Model(format!("{} (TorchScript): input must be [B, C, H, W], got {:?}", self.spec.arch, x.size())));
        }
        self.check_device(x, "the input")?;
        let x = match &self.normalize {
            Some((mean, std)) => {
                let c = mean.size()[1];
                if x.size()[1] != c {
                    return Err(Error::Model(format!(
                        "{} (TorchScript): input has {} channels, input.mean/std have {c}",
                        self.spec.arch,
                        x.size()[1]
                    )));
                }
                (x.to_kind(Kind::Float) - mean) / std
            }
            None => x.shallow_clone(),
        };
        let out = self.head.forward_is(&[IValue::Tensor(x)]).map_err(|e| torch_error(&self.head_path, "head forward", e))?;
        let (feats, keys) = tensors_with_keys(out, "head output")?;
        if let Some(n) = self.spec.num_features {
            if feats.len() != n {
                return Err(Error::Model(format!(
                    "torchscript head {} returned {} tensor(s), the sidecar's num_features is {n}",
                    self.head_path.display(),
                    feats.len()
                )));
            }
        }
        if let (Some(keys), Some(names)) = (keys, &self.spec.feature_names) {
            if &keys != names {
                return Err(Error::Model(format!(
                    "torchscript head {} returned a dict with keys {keys:?}, the sidecar's feature_names are {names:?}",
                    self.head_path.display()
                )));
            }
        }
        Ok(feats)
    }

    fn tail(&self, feats: &[Tensor], split: &str) -> Result<Vec<Tensor>> {
        self.check_split(split)?;
        if feats.is_empty() {
            return Err(Error::Model(format!("split {split:?}: the tail needs at least one feature tensor")));
        }
        if let Some(n) = self.spec.num_features {
            expect_feats(feats, n, split)?;
        }
        for (i, f) in feats.iter().enumerate() {
            self.check_device(f, &format!("feature tensor {i}"))?;
        }
        let args: Vec<IValue> = feats.iter().map(|t| IValue::Tensor(t.shallow_clone())).collect();
        let out = self.tail.forward_is(&args).map_err(|e| {
            torch_error(&self.tail_path, &format!("tail forward with {} feature tensor(s) as positional arguments", feats.len()), e)
        })?;
        Ok(tensors_with_keys(out, "tail output")?.0)
    }
}

extern "C" {
    /// `csrc/torchvision_ops.cpp`: 0 registered now, 1 already present, -1 failed (message in
    /// `err`, NUL-terminated).
    fn featjnd_register_torchvision_ops(err: *mut std::ffi::c_char, err_len: usize) -> std::ffi::c_int;
}

/// How [`register_torchvision_ops`] found the operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchvisionOps {
    /// featjnd's CPU implementations were registered (by this process's first call).
    Registered,
    /// The operators were already registered by someone else (torchvision's own library) when
    /// featjnd first looked; featjnd registered nothing.
    AlreadyPresent,
}

/// Registers featjnd's CPU implementations of `torchvision::nms`, `torchvision::roi_align` and
/// `torchvision::_roi_align_backward` with libtorch's dispatcher, once per process (later calls
/// return the first call's result). The loaders of this module call it; call it yourself before
/// loading TorchScript that uses these operators through [`tch::CModule`] directly.
pub fn register_torchvision_ops() -> Result<TorchvisionOps> {
    static ONCE: std::sync::OnceLock<std::result::Result<TorchvisionOps, String>> = std::sync::OnceLock::new();
    let r = ONCE.get_or_init(|| {
        let mut err = vec![0u8; 1024];
        // SAFETY: `err` is a writable buffer of `err.len()` bytes that outlives the call; the
        // function writes at most that many bytes (NUL included), catches every C++ exception,
        // and is only called here, inside `OnceLock::get_or_init`, so never concurrently.
        let rc = unsafe { featjnd_register_torchvision_ops(err.as_mut_ptr().cast(), err.len()) };
        match rc {
            0 => Ok(TorchvisionOps::Registered),
            1 => Ok(TorchvisionOps::AlreadyPresent),
            _ => {
                let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
                Err(String::from_utf8_lossy(&err[..end]).into_owned())
            }
        }
    });
    r.clone().map_err(|why| Error::Model(format!("cannot register the torchvision operators: {}", short(&why))))
}

/// Loads one module on `device`, in eval mode, with frozen parameters.
fn load_module(path: &Path, role: &str, device: Device) -> Result<CModule> {
    if !path.is_file() {
        return Err(Error::Model(format!("torchscript {role} {}: file not found", path.display())));
    }
    register_torchvision_ops()?;
    let mut m = CModule::load_on_device(path, device).map_err(|e| {
        Error::Model(format!("torchscript {role} {}: not a loadable TorchScript file: {}", path.display(), short(&e.to_string())))
    })?;
    m.f_set_eval().map_err(|e| torch_error(path, "set_eval", e))?;
    let params = m.named_parameters().map_err(|e| torch_error(path, "named_parameters", e))?;
    for (_, p) in params {
        let _ = p.set_requires_grad(false);
    }
    Ok(m)
}

fn torch_error(path: &Path, what: &str, e: tch::TchError) -> Error {
    Error::Model(format!("torchscript {} ({what}): {}", path.display(), short(&e.to_string())))
}

/// A libtorch message without its C++ backtrace.
/// One line of a libtorch error: its C++ backtrace dropped; a TorchScript traceback reduced to the
/// exception raised and the last frame of the module's source that raised it.
fn short(msg: &str) -> String {
    let cut = msg.find("Exception raised from").unwrap_or(msg.len());
    let msg = msg[..cut].trim_end();
    let lines: Vec<&str> = msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if msg.contains("Traceback of TorchScript") {
        let raised = lines.last().copied().unwrap_or_default();
        match lines.iter().rev().find(|l| l.starts_with("File ")) {
            Some(frame) => format!("{raised} ({frame})"),
            None => raised.to_string(),
        }
    } else {
        lines.join(" ")
    }
}

/// The name of an `IValue`'s variant, for error messages.
pub fn ivalue_kind(v: &IValue) -> &'static str {
    match v {
        IValue::None => "None",
        IValue::Tensor(_) => "Tensor",
        IValue::Double(_) => "Double",
        IValue::Int(_) => "Int",
        IValue::Bool(_) => "Bool",
        IValue::Tuple(_) => "Tuple",
        IValue::IntList(_) => "IntList",
        IValue::DoubleList(_) => "DoubleList",
        IValue::BoolList(_) => "BoolList",
        IValue::String(_) => "String",
        IValue::StringList(_) => "StringList",
        IValue::TensorList(_) => "TensorList",
        IValue::GenericList(_) => "GenericList",
        IValue::GenericDict(_) => "GenericDict",
        IValue::Object(_) => "Object",
        IValue::Device(_) => "Device",
        _ => "unknown IValue",
    }
}

/// A module output as a flat list of tensors: a `Tensor`, or a `Tuple`, `TensorList`,
/// `GenericList` or `GenericDict` (values in the dict's order) whose elements are all tensors.
/// Anything else, nested containers and empty containers included, is an [`Error::Model`].
pub fn ivalue_to_tensors(v: IValue, what: &str) -> Result<Vec<Tensor>> {
    Ok(tensors_with_keys(v, what)?.0)
}

/// [`ivalue_to_tensors`] and, for a dict, its keys in order.
fn tensors_with_keys(v: IValue, what: &str) -> Result<(Vec<Tensor>, Option<Vec<String>>)> {
    let elems = |items: Vec<IValue>, kind: &str| -> Result<Vec<Tensor>> {
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                IValue::Tensor(t) => Ok(t),
                other => Err(Error::Model(format!("{what}: element {i} of the {kind} is {}, expected a Tensor", ivalue_kind(&other)))),
            })
            .collect()
    };
    let (ts, keys) = match v {
        IValue::Tensor(t) => (vec![t], None),
        IValue::TensorList(ts) => (ts, None),
        IValue::Tuple(items) => (elems(items, "Tuple")?, None),
        IValue::GenericList(items) => (elems(items, "GenericList")?, None),
        IValue::GenericDict(pairs) => {
            let mut keys = Vec::with_capacity(pairs.len());
            let mut vals = Vec::with_capacity(pairs.len());
            for (k, v) in pairs {
                let key = match &k {
                    IValue::String(s) => s.clone(),
                    IValue::Int(i) => i.to_string(),
                    other => format!("<{}>", ivalue_kind(other)),
                };
                match v {
                    IValue::Tensor(t) => vals.push(t),
                    other => {
                        return Err(Error::Model(format!(
                            "{what}: dict value for key {key:?} is {}, expected a Tensor",
                            ivalue_kind(&other)
                        )))
                    }
                }
                keys.push(key);
            }
            (vals, Some(keys))
        }
        other => return Err(Error::Model(format!("{what} is {}, expected a Tensor or a tuple/list/dict of Tensors", ivalue_kind(&other)))),
    };
    if ts.is_empty() {
        return Err(Error::Model(format!("{what} holds no tensors")));
    }
    Ok((ts, keys))
}
