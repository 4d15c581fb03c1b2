//! Split models: a network cut at a named *split point* into `head: image → feature(s)` and
//! `tail: feature(s) → task output` (design §2). FeatJND, the perturbation study and the
//! quantization study only ever see this interface.
//!
//! A split point may yield several tensors (an FPN level list); single-tensor splits yield one.
//! `tail(head(x, s), s)` equals `forward(x)` for every split `s` (checked by the tests).

pub mod checkpoint;
pub mod detector;
pub mod layers;
pub mod mobilenet_v2;
pub mod nanodet;
pub mod resnet;
pub mod torchscript;

use crate::{Error, Result};
use tch::Tensor;

/// What the tail's output means, and so how task discrepancy and metrics read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// One tensor of logits `[B, classes]`.
    Classification,
    /// Dense head outputs of the shapes detector (see [`crate::model::detector`]): boxes and masks.
    DetectionSegmentation,
    /// A dense one-stage detector with generalised-focal-loss boxes (NanoDet, see
    /// [`crate::model::nanodet`]): `[class logits [B, N, K], box-distribution logits [B, N, 4·bins]]`.
    Detection,
    /// A user's dense-output tail: maps `[B, C, H, W]`, each read as its sidecar's
    /// `outputs` entry says (`crate::study::dense`).
    Dense,
}

/// A network that can be cut at named split points. Implementations are in eval mode by
/// construction: batch norm uses running statistics, so head and tail are deterministic.
pub trait SplitModel {
    /// Short architecture name (`fmnist-resnet`, `mobilenet-v2`, `shapes-det`, `torchscript`).
    fn arch(&self) -> &str;
    fn task(&self) -> TaskKind;
    /// The split point names, shallowest first.
    fn split_points(&self) -> Vec<String>;
    /// `image → feature(s)` at `split`. Inputs are `[B, C, H, W]` f32 in the model's own input
    /// convention (documented per model).
    fn head(&self, x: &Tensor, split: &str) -> Result<Vec<Tensor>>;
    /// `feature(s) → task output(s)`; for classification one logits tensor.
    fn tail(&self, feats: &[Tensor], split: &str) -> Result<Vec<Tensor>>;
    /// The split point whose features Grad-CAM reads: the network's last convolutional layer
    /// (for a detector, the inputs of its heads). `None`: the study's split point itself.
    fn gradcam_split(&self) -> Option<&str> {
        None
    }
    /// The whole network; the default runs head then tail at the first split point.
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let s = self.split_points().into_iter().next().ok_or_else(|| Error::Model(format!("{} has no split points", self.arch())))?;
        let f = self.head(x, &s)?;
        self.tail(&f, &s)
    }
}

/// The error for an unknown split name, listing the valid ones.
pub fn unknown_split(model: &dyn SplitModel, split: &str) -> Error {
    Error::Model(format!("{} has no split point {split:?}; valid: {}", model.arch(), model.split_points().join(", ")))
}

/// Checks that `feats` has exactly `n` tensors for `split`.
pub fn expect_feats(feats: &[Tensor], n: usize, split: &str) -> Result<()> {
    if feats.len() != n {
        return Err(Error::Model(format!("split {split:?} takes {n} feature tensor(s), got {}", feats.len())));
    }
    Ok(())
}

/// The reason a strict weight load fails, or `None` when every list is empty: `arch` and each
/// non-empty list of names (at most 8 shown, then the count), e.g. `("missing keys", &missing)`.
pub(crate) fn strict_load_report(arch: &str, problems: &[(&str, &[String])]) -> Option<String> {
    let list = |v: &[String]| {
        let mut s = v.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
        if v.len() > 8 {
            s.push_str(&format!(", … ({} in all)", v.len()));
        }
        s
    };
    let found: Vec<String> = problems.iter().filter(|(_, v)| !v.is_empty()).map(|(what, v)| format!("{what}: {}", list(v))).collect();
    (!found.is_empty()).then(|| std::iter::once(format!("does not match {arch} (strict load)")).chain(found).collect::<Vec<_>>().join("; "))
}
