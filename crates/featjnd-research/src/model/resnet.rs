//! The Fashion-MNIST classifier: a small ResNet (3 stages of basic blocks, global average pool,
//! linear). Input `[B, 1, 28, 28]` in `[0, 1]` (the loader's convention); the model standardises
//! it itself. Split points: `stage1` (`[B, w0, 28, 28]`) and `stage2` (`[B, w1, 14, 14]`).

use super::layers::{ConvBn, Stage};
use super::{expect_feats, unknown_split, SplitModel, TaskKind};
use crate::Result;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, VarStore};
use tch::{Device, Tensor};

pub const ARCH: &str = "fmnist-resnet";
/// Fashion-MNIST training-set pixel mean and standard deviation (of pixel / 255).
const MEAN: f64 = 0.2860;
const STD: f64 = 0.3530;
pub const SPLITS: [&str; 2] = ["stage1", "stage2"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    pub widths: [i64; 3],
    pub blocks: [usize; 3],
    pub classes: i64,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        ResNetConfig { widths: [16, 32, 64], blocks: [1, 1, 1], classes: 10 }
    }
}

pub struct FmnistResNet {
    pub vs: VarStore,
    pub config: ResNetConfig,
    stem: ConvBn,
    stages: Vec<Stage>,
    fc: nn::Linear,
}

impl FmnistResNet {
    pub fn new(config: ResNetConfig, device: Device) -> FmnistResNet {
        let vs = VarStore::new(device);
        let root = vs.root();
        let w = config.widths;
        let stem = ConvBn::new(&root / "stem", 1, w[0], 3, 1);
        let stages = vec![
            Stage::new(&root / "stage1", w[0], w[0], config.blocks[0], 1),
            Stage::new(&root / "stage2", w[0], w[1], config.blocks[1], 2),
            Stage::new(&root / "stage3", w[1], w[2], config.blocks[2], 2),
        ];
        let fc = nn::linear(&root / "fc", w[2], config.classes, Default::default());
        FmnistResNet { vs, config, stem, stages, fc }
    }

    /// Runs stages `from..to` (0 = stem + stage 1) on `x`; `from == 0` starts from the image.
    fn stages_t(&self, x: &Tensor, from: usize, to: usize, train: bool) -> Tensor {
        let mut y = if from == 0 { self.stem.forward_t(&((x - MEAN) / STD), train).relu() } else { x.shallow_clone() };
        for s in &self.stages[from..to] {
            y = s.forward_t(&y, train);
        }
        y
    }

    fn classify(&self, y: &Tensor) -> Tensor {
        self.fc.forward(&y.mean_dim([2i64, 3].as_slice(), false, y.kind()))
    }

    /// Logits of the whole network; `train` selects batch statistics (training) or running ones.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.classify(&self.stages_t(x, 0, 3, train))
    }

    fn split_index(&self, split: &str) -> Result<usize> {
        SPLITS.iter().position(|s| *s == split).map(|i| i + 1).ok_or_else(|| unknown_split(self, split))
    }
}

impl SplitModel for FmnistResNet {
    fn arch(&self) -> &str {
        ARCH
    }
    fn task(&self) -> TaskKind {
        TaskKind::Classification
    }
    fn split_points(&self) -> Vec<String> {
        SPLITS.iter().map(|s| s.to_string()).collect()
    }
    fn head(&self, x: &Tensor, split: &str) -> Result<Vec<Tensor>> {
        let k = self.split_index(split)?;
        Ok(vec![self.stages_t(x, 0, k, false)])
    }
    fn tail(&self, feats: &[Tensor], split: &str) -> Result<Vec<Tensor>> {
        let k = self.split_index(split)?;
        expect_feats(feats, 1, split)?;
        Ok(vec![self.classify(&self.stages_t(&feats[0], k, 3, false))])
    }
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.forward_t(x, false)])
    }
}
