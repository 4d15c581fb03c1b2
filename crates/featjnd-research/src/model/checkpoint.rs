//! Checkpoints: one safetensors file holding every variable of a `VarStore` (f32) and, in the
//! safetensors header's `__metadata__` under the key `featjnd`, a JSON [`Meta`] (architecture and
//! its config, split points, seeds, the metric measured at the end of training, the command).
//!
//! Writes are atomic (temporary file in the same directory, fsync, rename), so a crash never
//! leaves a half-written checkpoint under the final name. Loading checks the format, the
//! architecture, and every variable's presence, dtype and shape, and names what is wrong.

use crate::{Error, Result};
use safetensors::tensor::{Dtype as StDtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use tch::{nn::VarStore, Kind, Tensor};

pub const FORMAT: &str = "featjnd-checkpoint";
pub const VERSION: u32 = 1;
const META_KEY: &str = "featjnd";

/// What a checkpoint says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: String,
    pub version: u32,
    /// Architecture name (`fmnist-resnet`, `shapes-det`, `jnd-estimator`, …).
    pub arch: String,
    /// Architecture hyper-parameters, enough to rebuild the network before loading weights.
    pub config: serde_json::Value,
    pub split_points: Vec<String>,
    pub data_seed: u64,
    pub train_seed: u64,
    /// Validation numbers measured at the end of training (name → value).
    pub metrics: BTreeMap<String, f64>,
    /// The command line that produced it.
    pub command: String,
}

impl Meta {
    pub fn new(arch: &str, config: serde_json::Value, split_points: Vec<String>) -> Meta {
        Meta {
            format: FORMAT.into(),
            version: VERSION,
            arch: arch.into(),
            config,
            split_points,
            data_seed: 0,
            train_seed: 0,
            metrics: BTreeMap::new(),
            command: String::new(),
        }
    }
}

fn err(path: &Path, why: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.display().to_string(), why: why.into() }
}

/// Writes every variable of `vs` (as f32, on the CPU) and `meta` to `path`, atomically.
pub fn save(vs: &VarStore, meta: &Meta, path: &Path) -> Result<()> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(vars.len());
    for (name, t) in &vars {
        let t = t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let n = t.numel();
        let mut v = vec![0f32; n];
        t.f_copy_data(&mut v, n)?;
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        bufs.push((name.clone(), shape, bytes));
    }
    let views = bufs
        .iter()
        .map(|(n, s, b)| TensorView::new(StDtype::F32, s.clone(), b).map(|v| (n.clone(), v)).map_err(|e| err(path, e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    let json = serde_json::to_string(meta).map_err(|e| err(path, e.to_string()))?;
    let header = HashMap::from([(META_KEY.to_string(), json)]);
    let bytes = safetensors::serialize(views, Some(header)).map_err(|e| err(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().ok_or_else(|| err(path, "not a file path"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(path, format!("write failed: {e}")));
    }
    Ok(())
}

/// Reads only the metadata (to rebuild the architecture before [`load`]).
pub fn read_meta(path: &Path) -> Result<Meta> {
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    meta_of(path, &bytes)
}

/// Reads the metadata and parses its architecture config (to build the network before [`load`]).
pub fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(Meta, T)> {
    let meta = read_meta(path)?;
    let config = serde_json::from_value(meta.config.clone()).map_err(|e| err(path, format!("bad {} config: {e}", meta.arch)))?;
    Ok((meta, config))
}

fn meta_of(path: &Path, bytes: &[u8]) -> Result<Meta> {
    let (_, md) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| err(path, format!("not a valid safetensors file ({e})")))?;
    let json =
        md.metadata().as_ref().and_then(|m| m.get(META_KEY)).ok_or_else(|| err(path, "no featjnd metadata: not a featjnd checkpoint"))?;
    let meta: Meta = serde_json::from_str(json).map_err(|e| err(path, format!("bad metadata JSON: {e}")))?;
    if meta.format != FORMAT || meta.version != VERSION {
        return Err(err(path, format!("format {:?} v{} (this build reads {FORMAT} v{VERSION})", meta.format, meta.version)));
    }
    Ok(meta)
}

/// Loads `path` into `vs` (whose variables must match exactly) and returns its metadata.
/// `arch` is the architecture the caller built; a checkpoint of another one is an error.
pub fn load(vs: &mut VarStore, arch: &str, path: &Path) -> Result<Meta> {
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    let meta = meta_of(path, &bytes)?;
    if meta.arch != arch {
        return Err(err(path, format!("holds a {:?} model, expected {arch:?}", meta.arch)));
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(path, format!("not a valid safetensors file ({e})")))?;
    // Validate everything before touching `vs`, so a bad file leaves the model as it was.
    let vars = vs.variables();
    let mut missing = Vec::new();
    let mut loaded = Vec::with_capacity(vars.len());
    for (name, var) in &vars {
        let Ok(view) = st.tensor(name) else {
            missing.push(name.clone());
            continue;
        };
        let want: Vec<usize> = var.size().iter().map(|&d| d as usize).collect();
        if view.dtype() != StDtype::F32 || view.shape() != want.as_slice() {
            return Err(err(path, format!("{name}: {:?} {:?} in the file, the model wants F32 {want:?}", view.dtype(), view.shape())));
        }
        let vals: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        loaded.push((var, vals));
    }
    if !missing.is_empty() {
        missing.sort();
        return Err(err(path, format!("missing variables: {}", missing.join(", "))));
    }
    let mut extra: Vec<String> = st.names().into_iter().filter(|n| !vars.contains_key(*n)).map(String::from).collect();
    if !extra.is_empty() {
        extra.sort();
        return Err(err(path, format!("variables the model does not have: {}", extra.join(", "))));
    }
    for (var, vals) in loaded {
        let src = Tensor::from_slice(&vals).reshape(var.size()).to_device(var.device());
        tch::no_grad(|| var.shallow_clone().copy_(&src));
    }
    Ok(meta)
}
