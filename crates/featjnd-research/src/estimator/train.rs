//! Training `G_θ` with the backbone frozen (design §1):
//! `L = λ · E[max(0, D_t − ε)] − E[mean(log J/std)]`, with `δ = J ⊙ ξ` and dual ascent
//! `λ ← max(0, λ + η (E[max(0, D_t − ε)] − τ))` after every step.
//!
//! `ξ` is the kernel library's Philox noise (`ops::noise`, seed = the training seed, a fresh
//! counter range per step and level): it is a constant of the loss, gradients flow through `J`
//! only, so the kernel's non-differentiable sampler is all that is needed and runs reproduce.

use super::discrepancy::discrepancy;
use super::{EstimatorConfig, JndEstimator, ARCH};
use crate::model::checkpoint::Meta;
use crate::model::SplitModel;
use crate::ops::{self, Noise};
use crate::train::Progress;
use crate::{NoiseKind, Result};
use tch::nn::{Optimizer, OptimizerConfig};
use tch::{Kind, Tensor};

/// What trains the estimator. Both keep FeatJND's meaning: `J` is the largest perturbation whose
/// task discrepancy stays within the constraint `E[max(0, D − ε)] ≤ τ`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Objective {
    /// The paper's relaxation: `L = λ·E[max(0, D−ε)] − E[mean log(J/std)]`, dual ascent on `λ`
    /// ([`train_estimator_with`]). Shown in the study as the ablation `featjnd-log`.
    Log,
    /// Shape and scale split (`super::sensitivity`): `J = s·S(f)`, the shape `S` regressed onto
    /// per-image sensitivity maps `(g + c)^-p` from the task's gradients at noise probes, the
    /// scale `s` held at the constraint.
    Sensitivity { power: f64 },
}

impl Objective {
    /// `log` or `sensitivity:p=P` (what the checkpoint's config records).
    pub fn name(&self) -> String {
        match self {
            Objective::Log => "log".into(),
            Objective::Sensitivity { power } => format!("sensitivity:p={power}"),
        }
    }

    /// `log`, `sensitivity` (with `default_power`) or `sensitivity:P`.
    pub fn parse(s: &str, default_power: f64) -> Result<Objective> {
        let bad = || crate::Error::Arg(format!("objective `{s}`: expected `log`, `sensitivity` or `sensitivity:P` with P > 0"));
        match s.split_once(':') {
            None if s == "log" => Ok(Objective::Log),
            None if s == "sensitivity" => Ok(Objective::Sensitivity { power: default_power }),
            Some(("sensitivity", p)) => {
                let power: f64 = p.trim_start_matches("p=").parse().map_err(|_| bad())?;
                if power.is_finite() && power > 0.0 {
                    Ok(Objective::Sensitivity { power })
                } else {
                    Err(bad())
                }
            }
            _ => Err(bad()),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct JndTrain {
    pub objective: Objective,
    /// Step of `log s` per unit of relative constraint error (sensitivity objective only).
    pub scale_lr: f64,
    pub steps: usize,
    pub lr: f64,
    /// Discrepancy tolerated per sample.
    pub eps: f64,
    /// Target of `E[max(0, D_t − ε)]`.
    pub tau: f64,
    /// Dual step `η`.
    pub dual_lr: f64,
    pub lambda0: f64,
    pub hidden: i64,
    /// Pooling factor of the estimator's context branch (`EstimatorConfig::context`; 0 = none).
    pub context: i64,
    pub floor: f64,
    pub init: f64,
    pub noise: NoiseKind,
    pub seed: u64,
    pub quiet: bool,
}

impl Default for JndTrain {
    fn default() -> Self {
        JndTrain {
            objective: Objective::Sensitivity { power: super::sensitivity::DEFAULT_POWER },
            scale_lr: 0.05,
            steps: 300,
            lr: 2e-3,
            eps: 0.02,
            tau: 0.005,
            dual_lr: 20.0,
            lambda0: 1.0,
            hidden: 8,
            context: 0,
            floor: 1e-3,
            init: 0.05,
            noise: NoiseKind::Gaussian,
            seed: 1,
            quiet: false,
        }
    }
}

/// The mean of `g` over the last fifth of `log` (at least one step): the "final" value of a
/// training run that the checkpoint's metrics report.
pub fn final_mean(log: &[LogPoint], g: fn(&LogPoint) -> f64) -> f64 {
    let tail = &log[log.len() - (log.len() / 5).max(1)..];
    tail.iter().map(g).sum::<f64>() / tail.len() as f64
}

/// One logged step of training.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct LogPoint {
    pub step: usize,
    /// `E[max(0, D_t − ε)]` on the step's batch.
    pub hinge: f64,
    pub lambda: f64,
    /// Mean `log(J/std)` (the reward).
    pub log_j: f64,
    /// Mean `D_t`.
    pub d: f64,
    /// Sensitivity objective: the shape loss (centred-log MSE to the sensitivity maps).
    #[serde(default)]
    pub shape_loss: f64,
    /// Sensitivity objective: `log s` after the step.
    #[serde(default)]
    pub log_scale: f64,
}

/// Noise `ξ` shaped like `f`, from Philox counters `offset..` of `subsequence`.
pub fn philox_like(f: &Tensor, seed: u64, subsequence: u32, offset: u64, kind: NoiseKind) -> Result<Tensor> {
    let n = f.numel();
    let xi = ops::noise(n, offset, Noise { kind, seed, subsequence }, f.device())?;
    Ok(xi.reshape(f.size()).to_kind(f.kind()))
}

/// A fresh estimator for `model` at `split`, sized and calibrated on the features of `x0` (torch's
/// RNG seeded with `cfg.seed` first), its Adam optimiser and its checkpoint metadata (metrics
/// still empty). Shared by [`train_estimator_with`] and `super::distill`.
pub(super) fn new_estimator(model: &dyn SplitModel, split: &str, x0: &Tensor, cfg: &JndTrain) -> Result<(JndEstimator, Optimizer, Meta)> {
    let f0 = tch::no_grad(|| model.head(x0, split))?;
    let config = EstimatorConfig {
        channels: f0.iter().map(|f| f.size()[1]).collect(),
        hidden: cfg.hidden,
        floor: cfg.floor,
        init: cfg.init,
        model: model.arch().to_string(),
        split: split.to_string(),
        scale: 1.0,
        objective: cfg.objective.name(),
        context: cfg.context,
        sharpen: 1.0,
    };
    tch::manual_seed(cfg.seed as i64);
    let mut est = JndEstimator::new(config.clone(), x0.device());
    est.calibrate(&f0)?;
    let opt = tch::nn::Adam::default().build(&est.vs, cfg.lr)?;
    let mut meta = Meta::new(ARCH, serde_json::to_value(&config).unwrap_or_default(), vec![split.to_string()]);
    meta.train_seed = cfg.seed;
    Ok((est, opt, meta))
}

/// The split features of `x` and the clean tail outputs, without gradients.
pub(super) fn clean_pass(model: &dyn SplitModel, x: &Tensor, split: &str) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    tch::no_grad(|| {
        let f = model.head(x, split)?;
        let c = model.tail(&f, split)?;
        Ok((f, c))
    })
}

/// Trains an estimator for `model` at `split` on the batches `batch(step)` yields (images in the
/// model's input convention). Returns the estimator, its checkpoint metadata and the log.
pub fn train_estimator(
    model: &dyn SplitModel,
    split: &str,
    batch: &mut dyn FnMut(usize) -> Result<Tensor>,
    cfg: &JndTrain,
) -> Result<(JndEstimator, Meta, Vec<LogPoint>)> {
    let task = model.task();
    train_estimator_with(model, split, batch, cfg, &|clean, pert| discrepancy(task, clean, pert))
}

/// [`train_estimator`] with another task discrepancy `disc(clean, perturbed) → [B]` than the one
/// of `model.task()` (a user's torchvision detector, `crate::study::user`).
pub fn train_estimator_with(
    model: &dyn SplitModel,
    split: &str,
    batch: &mut dyn FnMut(usize) -> Result<Tensor>,
    cfg: &JndTrain,
    disc: &dyn Fn(&[Tensor], &[Tensor]) -> Tensor,
) -> Result<(JndEstimator, Meta, Vec<LogPoint>)> {
    if let Objective::Sensitivity { power } = cfg.objective {
        return super::sensitivity::train(model, split, batch, cfg, disc, power);
    }
    let x0 = batch(0)?;
    let device = x0.device();
    let (est, mut opt, mut meta) = new_estimator(model, split, &x0, cfg)?;
    let mut lambda = cfg.lambda0;
    let mut log = Vec::with_capacity(cfg.steps);
    let mut offset = 0u64;
    let mut pb = Progress::new(cfg.steps as u64, &format!("jnd {split}"), cfg.quiet);
    let mut ema: Option<(f64, f64)> = None;
    for step in 0..cfg.steps {
        let x = if step == 0 { x0.shallow_clone() } else { batch(step)? };
        let (feats, clean) = clean_pass(model, &x, split)?;
        let maps = est.forward_log(&feats)?;
        let mut pert = Vec::with_capacity(feats.len());
        let mut reward = Tensor::zeros([], (Kind::Float, device));
        for (l, (f, (j, lj))) in feats.iter().zip(&maps).enumerate() {
            let xi = philox_like(f, cfg.seed, l as u32, offset, cfg.noise)?;
            offset += f.numel() as u64;
            pert.push(f + j * xi);
            // Out of place on purpose: tch's `+=` is an in-place add, which would rewrite a
            // tensor the autograd graph still holds.
            #[allow(clippy::assign_op_pattern)]
            {
                reward = reward + lj.mean(Kind::Float);
            }
        }
        let reward = reward / feats.len() as f64;
        let out = model.tail(&pert, split)?;
        let d = disc(&clean, &out);
        let hinge = (&d - cfg.eps).relu().mean(Kind::Float);
        let loss = &hinge * lambda - &reward;
        opt.backward_step(&loss);
        let (h, r, dm) = (hinge.f_double_value(&[])?, reward.f_double_value(&[])?, d.mean(Kind::Float).f_double_value(&[])?);
        lambda = (lambda + cfg.dual_lr * (h - cfg.tau)).max(0.0);
        log.push(LogPoint { step, hinge: h, lambda, log_j: r, d: dm, shape_loss: 0.0, log_scale: 0.0 });
        let e = match ema {
            None => (h, r),
            Some((eh, er)) => (0.95 * eh + 0.05 * h, 0.95 * er + 0.05 * r),
        };
        ema = Some(e);
        pb.step(format!("hinge {:.4} (τ {}) λ {lambda:.2} log J {:.2}", e.0, cfg.tau, e.1));
    }
    pb.finish();
    let mean = |g: fn(&LogPoint) -> f64| final_mean(&log, g);
    meta.metrics.insert("final_hinge".into(), mean(|p| p.hinge));
    meta.metrics.insert("tau".into(), cfg.tau);
    meta.metrics.insert("eps".into(), cfg.eps);
    meta.metrics.insert("final_lambda".into(), mean(|p| p.lambda));
    meta.metrics.insert("final_log_j".into(), mean(|p| p.log_j));
    meta.metrics.insert("final_d".into(), mean(|p| p.d));
    meta.metrics.insert("steps".into(), cfg.steps as f64);
    Ok((est, meta, log))
}
