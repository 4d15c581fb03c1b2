//! The FeatJND estimator `G_θ` (design §1): for each feature tensor of a split point, a small
//! convolutional network on the channel-standardised feature whose output, through a softplus
//! plus a floor, is the tolerance map `J > 0` of the same shape, in the feature's own units
//! (multiplied by the channel's standard deviation).
//!
//! Per level: 1×1 conv `C → h`, ReLU, 3×3 conv `h → h`, ReLU, 1×1 conv `h → C`. With `h = 8`
//! that is `2·C·h + 9·h²` multiply-adds per position, a few per cent of the backbones here
//! (the goal is ≤ 10% of the forward time; `featjnd run` measures and reports it).
//!
//! The channel statistics are measured once on clean features before training and stored with
//! the weights, so `J` is a function of the feature alone.
//!
//! Optional context branch (`EstimatorConfig::context = k > 0`, docs/real-backbones.md §1): the 3×3 receptive
//! field cannot tell where objects are on a fine grid (NanoDet `stage2`, stride 8). With it, the
//! hidden map after c1's ReLU is also average-pooled by `k` (ceil mode: odd sizes keep their
//! last partial cell), passed through 3×3 conv `h → h`, ReLU, 3×3 conv `h → h` on the coarse
//! grid, upsampled bilinearly to exactly the level's `H×W` and added to c2's output before its
//! ReLU. Extra cost `18·h²/k²` multiply-adds per position. Its last conv starts at zero, so a
//! fresh estimator computes what it would without the branch; `context = 0` (the default, and
//! every checkpoint written before it existed) creates no branch at all.

pub mod discrepancy;
pub mod distill;
pub mod sensitivity;
pub mod train;

use crate::model::checkpoint::{self, Meta};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

pub const ARCH: &str = "featjnd-estimator";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimatorConfig {
    /// Channels of each feature tensor of the split.
    pub channels: Vec<i64>,
    /// Hidden width of each level's network.
    pub hidden: i64,
    /// `J ≥ floor · std_c`.
    pub floor: f64,
    /// `J` at initialisation, in channel standard deviations.
    pub init: f64,
    /// The task model and split this estimator belongs to.
    pub model: String,
    pub split: String,
    /// A global multiplier of `J`: the scale `s` of `J = s·S(f)` that the sensitivity objective
    /// (`sensitivity`) holds at the constraint; 1 for the log objective (and for checkpoints
    /// written before it existed).
    #[serde(default = "one")]
    pub scale: f64,
    /// The training objective that produced the weights (`log`, or `sensitivity:p=P`); empty in
    /// checkpoints written before it was recorded (they are `log`).
    #[serde(default)]
    pub objective: String,
    /// Pooling factor of the context branch (module docs); 0 = no branch (the default, and
    /// checkpoints written before it existed). Not written when 0, so those configs stay as they were.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub context: i64,
    /// The exponent `a` of the learned shape: `J = s·std_c·u^a` with `u` the network's unit map
    /// (docs/real-backbones.md §1, "Sharpening"). Regressing a noisy per-image teacher shrinks
    /// the predicted log-shape towards its mean; `a > 1` re-expands it. Set after training
    /// (`train-jnd --recalibrate --sharpen A`, which then sets the scale again) and chosen on
    /// validation photos; 1 (not written) in every checkpoint trained without it.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub sharpen: f64,
}

fn one() -> f64 {
    1.0
}

fn is_one(a: &f64) -> bool {
    *a == 1.0
}

fn is_zero(k: &i64) -> bool {
    *k == 0
}

struct Level {
    mean: Tensor,
    std: Tensor,
    c1: nn::Conv2D,
    c2: nn::Conv2D,
    c3: nn::Conv2D,
    /// The context branch's two 3×3 convs (coarse grid), where `context > 0`.
    ctx: Option<(nn::Conv2D, nn::Conv2D)>,
}

pub struct JndEstimator {
    pub vs: VarStore,
    pub config: EstimatorConfig,
    levels: Vec<Level>,
}

fn conv(p: nn::Path, i: i64, o: i64, k: i64) -> nn::Conv2D {
    nn::conv2d(p, i, o, k, nn::ConvConfig { padding: k / 2, ..Default::default() })
}

impl JndEstimator {
    /// A fresh estimator. Panics where `config.context < 0` (configs from files are checked by
    /// [`JndEstimator::load`]).
    pub fn new(config: EstimatorConfig, device: Device) -> JndEstimator {
        assert!(config.context >= 0, "estimator context must be ≥ 0, got {}", config.context);
        let vs = VarStore::new(device);
        let r = vs.root();
        let h = config.hidden;
        // softplus(b) = init: the map starts flat at `init` standard deviations.
        let b0 = (config.init.exp() - 1.0).ln();
        let levels = config
            .channels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let p = &r / "level" / i;
                let mut c3 = conv(&p / "out", h, c, 1);
                tch::no_grad(|| {
                    let _ = c3.ws.normal_(0.0, 0.01);
                    if let Some(b) = c3.bs.as_mut() {
                        let _ = b.fill_(b0);
                    }
                });
                let (mean, std) = (p.zeros_no_train("mean", &[c]), p.ones_no_train("std", &[c]));
                let (c1, c2) = (conv(&p / "c1", c, h, 1), conv(&p / "c2", h, h, 3));
                // Created after the others, so the rest start as without the branch (same seed).
                let ctx = (config.context > 0).then(|| {
                    let a = conv(&p / "ctx1", h, h, 3);
                    let mut b = conv(&p / "ctx2", h, h, 3);
                    tch::no_grad(|| {
                        let _ = b.ws.zero_();
                        if let Some(bias) = b.bs.as_mut() {
                            let _ = bias.zero_();
                        }
                    });
                    (a, b)
                });
                Level { mean, std, c1, c2, c3, ctx }
            })
            .collect();
        JndEstimator { vs, config, levels }
    }

    /// Sets each level's channel mean and standard deviation from clean features (a batch list
    /// per level, `[B, C, H, W]` each).
    pub fn calibrate(&mut self, feats: &[Tensor]) -> Result<()> {
        self.check(feats)?;
        tch::no_grad(|| {
            for (l, f) in self.levels.iter_mut().zip(feats) {
                let f = f.to_kind(Kind::Float).transpose(0, 1).reshape([f.size()[1], -1]);
                l.mean.copy_(&f.mean_dim(1, false, Kind::Float));
                // A dead channel (constant) gets std 1e-3 of the mean channel's, never 0.
                let s = f.std_dim(1, false, false);
                let floor = s.mean(Kind::Float).clamp_min(1e-12) * 1e-3;
                l.std.copy_(&s.maximum(&floor));
            }
        });
        Ok(())
    }

    fn check(&self, feats: &[Tensor]) -> Result<()> {
        if feats.len() != self.levels.len() {
            return Err(Error::Model(format!("estimator for {} tensor(s) got {}", self.levels.len(), feats.len())));
        }
        for (f, &c) in feats.iter().zip(&self.config.channels) {
            if f.dim() != 4 || f.size()[1] != c {
                return Err(Error::Shape(format!("estimator level wants [B, {c}, H, W], got {:?}", f.size())));
            }
        }
        Ok(())
    }

    /// `(J, log(J / std_c))` per level. The second is the reward term of the loss (unit-free, so
    /// levels and channels of different scales count alike).
    pub fn forward_log(&self, feats: &[Tensor]) -> Result<Vec<(Tensor, Tensor)>> {
        Ok(self.units(feats)?.iter().map(|(u, s)| self.scaled(u, s, self.config.sharpen)).collect())
    }

    /// Per level, the network's unit map `u` (softplus plus the floor, before the shape's power
    /// and the scale) and the channel standard deviations as `[1, C, 1, 1]`.
    fn units(&self, feats: &[Tensor]) -> Result<Vec<(Tensor, Tensor)>> {
        self.check(feats)?;
        Ok(self
            .levels
            .iter()
            .zip(feats)
            .map(|(l, f)| {
                let (m, s) = (l.mean.view([1, -1, 1, 1]), l.std.view([1, -1, 1, 1]));
                let a = ((f - &m) / &s).apply(&l.c1).relu();
                let y = a.apply(&l.c2);
                let y = match &l.ctx {
                    None => y,
                    Some((c1, c2)) => {
                        let (k, size) = (self.config.context, a.size());
                        let g = a.avg_pool2d([k, k], [k, k], [0, 0], true, false, None::<i64>).apply(c1).relu().apply(c2);
                        y + g.upsample_bilinear2d([size[2], size[3]], false, None::<f64>, None::<f64>)
                    }
                };
                let z = y.relu().apply(&l.c3);
                (z.softplus() + self.config.floor, s)
            })
            .collect())
    }

    /// `(J, log(J / std_c))` of one level from its unit map, the shape raised to `sharpen`.
    fn scaled(&self, u: &Tensor, s: &Tensor, sharpen: f64) -> (Tensor, Tensor) {
        let unit = if sharpen == 1.0 { u.shallow_clone() } else { u.pow_tensor_scalar(sharpen) };
        let unit = unit * self.config.scale;
        (&unit * s, unit.log())
    }

    /// The tolerance maps `J` (same shapes as `feats`).
    pub fn forward(&self, feats: &[Tensor]) -> Result<Vec<Tensor>> {
        Ok(self.forward_log(feats)?.into_iter().map(|(j, _)| j).collect())
    }

    /// The maps the quantization rules use: `J` with the trained shape (`sharpen` = 1, same
    /// scale). The rule `Δ_t ∝ j_t^γ` was chosen on validation photos for these maps; a sharpened
    /// shape (chosen for the matched-NRMSE study) concentrates the steps too (docs/quantization.md
    /// §5). Equal to [`forward`](Self::forward) where `sharpen` is 1.
    pub fn forward_for_steps(&self, feats: &[Tensor]) -> Result<Vec<Tensor>> {
        Ok(self.units(feats)?.iter().map(|(u, s)| self.scaled(u, s, 1.0).0).collect())
    }

    /// [`forward`](Self::forward) and [`forward_for_steps`](Self::forward_for_steps) from one pass
    /// of the network (the second shares the first's tensors where `sharpen` is 1).
    pub fn forward_and_steps(&self, feats: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let a = self.config.sharpen;
        Ok(self
            .units(feats)?
            .iter()
            .map(|(u, s)| {
                let j = self.scaled(u, s, a).0;
                let steps = if a == 1.0 { j.shallow_clone() } else { self.scaled(u, s, 1.0).0 };
                (j, steps)
            })
            .unzip())
    }

    pub fn save(&self, meta: &Meta, path: &Path) -> Result<()> {
        checkpoint::save(&self.vs, meta, path)
    }

    /// Loads an estimator checkpoint (its config is in the metadata).
    pub fn load(path: &Path, device: Device) -> Result<(JndEstimator, Meta)> {
        let (_, config): (_, EstimatorConfig) = checkpoint::read_config(path)?;
        if config.context < 0 {
            return Err(Error::Model(format!("{}: estimator context {} < 0", path.display(), config.context)));
        }
        if !(config.sharpen.is_finite() && config.sharpen > 0.0) {
            return Err(Error::Model(format!("{}: estimator sharpen {} must be finite and > 0", path.display(), config.sharpen)));
        }
        let mut est = JndEstimator::new(config, device);
        let meta = checkpoint::load(&mut est.vs, ARCH, path)?;
        Ok((est, meta))
    }
}
