//! The sensitivity objective, the default training of `G_θ` (`docs/real-backbones.md` §4):
//! `J = s·S(f)`, a shape and a scale learned from two signals.
//!
//! * **Shape.** `S` is regressed onto per-image sensitivity maps of the training photos,
//!   `T = (g + c)^-p` with `g = sqrt(mean_k (∂D/∂f)²)` of the task discrepancy at a few Gaussian
//!   noise probes (`study::oracle::maps_with_power`: the oracle control's measurement, used here
//!   as a teacher on training inputs only). Loss: the mean squared difference of the per-sample
//!   centred logarithms of `J` and `T`, centred jointly over all levels of a split, so the levels'
//!   relative tolerances follow the measured sensitivity too. The estimator still sees only the
//!   features; the gradients are needed at training time only.
//! * **Scale.** One scalar `s` (`EstimatorConfig::scale`) is held at the constraint
//!   `E[max(0, D − ε)] = τ` of the log objective: after each step the batch's hinge `h` at the
//!   current `J` moves `log s ← log s − η_t · clip((h − τ)/τ, −1, 10)`, a stochastic-approximation
//!   (Robbins–Monro) root search of `E[h] = τ` with `η_t = η / (1 + t/50)`. For a single scalar this is
//!   the constrained problem itself (the largest `s` whose hinge is `τ`), so `J` stays an
//!   absolute tolerance, as in the log objective.
//!
//! Why the shape needs its own signal: near δ = 0 a discrepancy is locally quadratic,
//! `E[D] ≈ Σ F_k J_k²`, and the per-element gradient of the hinge is one random-sign sample per
//! element, image and step, so the log objective learns its shape from a weak, noisy signal; the
//! sensitivity maps give every element a deterministic target. Why `p` is a choice: at fixed
//! NRMSE the loss of `J⊙ξ` is `∝ Σ F J² / Σ J²`, which falls as the noise concentrates on the
//! least sensitive elements (`p` up) until the quadratic model fails; `p` is therefore chosen per
//! task on validation photos (`models/README.md`).

use super::train::{clean_pass, new_estimator, philox_like, JndTrain, LogPoint};
use super::JndEstimator;
use crate::model::checkpoint::Meta;
use crate::model::SplitModel;
use crate::train::Progress;
use crate::Result;
use tch::{Kind, Tensor};

/// The exponent `p` of the shape targets where a task has no validated choice (a user's model):
/// the oracle control's.
pub const DEFAULT_POWER: f64 = crate::study::oracle::POWER;

/// Philox subsequences of the constraint's noise (apart from the probes' and the study's).
const NOISE_SUBSEQUENCE: u32 = 64;
/// Fresh training batches on which the final scale is set by bisection, and as many others on
/// which the constraint is then measured ([`calibrate_scale`]).
pub const CALIBRATION_BATCHES: usize = 32;
/// Bisection steps on `log s` over `[log s − 2, log s + 2]` (widened if needed; a final width of
/// 4/2^14 nats).
const BISECTION_STEPS: usize = 14;

/// `log t` minus its mean over each sample, the mean taken jointly over all levels.
pub fn centred_logs(maps: &[Tensor]) -> Vec<Tensor> {
    let logs: Vec<Tensor> = maps.iter().map(|t| t.to_kind(Kind::Float).clamp_min(1e-30).log()).collect();
    let b = logs[0].size()[0];
    let total: i64 = logs.iter().map(|l| l.numel() as i64 / b.max(1)).sum();
    let sum = logs.iter().map(|l| l.flatten(1, -1).sum_dim_intlist(1, false, Kind::Float)).reduce(|a, x| a + x);
    let mean = sum.map(|s| s / total.max(1) as f64).unwrap_or_else(|| Tensor::zeros([b], (Kind::Float, logs[0].device())));
    logs.iter()
        .map(|l| {
            let shape: Vec<i64> = std::iter::once(b).chain(std::iter::repeat_n(1, l.dim() - 1)).collect();
            l - mean.view(shape.as_slice())
        })
        .collect()
}

/// The shape loss: mean over levels of the mean squared difference of the centred logs.
fn shape_loss(maps: &[Tensor], goal: &[Tensor]) -> Tensor {
    let pred = centred_logs(maps);
    let terms: Vec<Tensor> = pred.iter().zip(goal).map(|(p, g)| (p - g).square().mean(Kind::Float)).collect();
    Tensor::stack(&terms, 0).mean(Kind::Float)
}

/// Trains an estimator of `model` at `split` with the sensitivity objective (module docs) and
/// the task discrepancy `disc(clean, perturbed) → [B]`, exponent `power`.
pub fn train(
    model: &dyn SplitModel,
    split: &str,
    batch: &mut dyn FnMut(usize) -> Result<Tensor>,
    cfg: &JndTrain,
    disc: &dyn Fn(&[Tensor], &[Tensor]) -> Tensor,
    power: f64,
) -> Result<(JndEstimator, Meta, Vec<LogPoint>)> {
    if !(cfg.tau > 0.0 && cfg.tau.is_finite() && power > 0.0 && power.is_finite()) {
        return Err(crate::Error::Arg(format!("sensitivity objective: τ and p must be > 0 (τ = {}, p = {power})", cfg.tau)));
    }
    let x0 = batch(0)?;
    let (mut est, mut opt, mut meta) = new_estimator(model, split, &x0, cfg)?;
    let mut log_s = 0.0f64;
    let mut log = Vec::with_capacity(cfg.steps);
    let mut offset = 0u64;
    let mut pb = Progress::new(cfg.steps as u64, &format!("jnd {split} (sensitivity p={power})"), cfg.quiet);
    let mut ema: Option<(f64, f64)> = None;
    for step in 0..cfg.steps {
        let x = if step == 0 { x0.shallow_clone() } else { batch(step)? };
        let (feats, clean) = clean_pass(model, &x, split)?;
        // Shape: regress onto this batch's sensitivity maps (probe subsequences apart from the
        // study's, which number held-out batches from 0).
        let target = crate::study::oracle::maps_with_power(model, disc, split, &feats, &clean, 1000 + step, power)?;
        let goal: Vec<Tensor> = centred_logs(&target.iter().map(|t| t.detach()).collect::<Vec<_>>());
        let loss = shape_loss(&est.forward(&feats)?, &goal);
        opt.backward_step(&loss);
        // Scale: the constraint at the updated J.
        let xis = noise_like(&feats, cfg, &mut offset)?;
        let (h, dm, lj) = tch::no_grad(|| -> Result<(f64, f64, f64)> {
            let maps = est.forward_log(&feats)?;
            let lj =
                maps.iter().map(|(_, u)| u.mean(Kind::Float).f_double_value(&[]).unwrap_or(f64::NAN) / feats.len() as f64).sum::<f64>();
            let js: Vec<Tensor> = maps.into_iter().map(|(j, _)| j).collect();
            let d = perturbed_discrepancy(&js, &feats, &clean, &xis, model, split, disc)?;
            Ok((hinge(&d, cfg.eps), d.mean(Kind::Float).f_double_value(&[])?, lj))
        })?;
        // Robbins–Monro: steps decaying as 1/t settle on E[h] = τ. The relative error is clipped
        // to [−1, 10] only against a first overshoot; a symmetric clip would bias the root,
        // since the hinge of a batch is skewed (often 0, now and then several τ).
        let eta = cfg.scale_lr / (1.0 + step as f64 / 50.0);
        log_s -= eta * ((h - cfg.tau) / cfg.tau).clamp(-1.0, 10.0);
        est.config.scale = log_s.exp();
        let l = loss.f_double_value(&[])?;
        log.push(LogPoint { step, hinge: h, lambda: 0.0, log_j: lj, d: dm, shape_loss: l, log_scale: log_s });
        let e = match ema {
            None => (h, l),
            Some((eh, el)) => (0.95 * eh + 0.05 * h, 0.95 * el + 0.05 * l),
        };
        ema = Some(e);
        pb.step(format!("hinge {:.4} (τ {}) shape {:.3} log s {log_s:.2}", e.0, cfg.tau, e.1));
    }
    pb.finish();
    let mean = |g: fn(&LogPoint) -> f64| super::train::final_mean(&log, g);
    meta.metrics.insert("train_final_hinge".into(), mean(|p| p.hinge));
    // Short runs (smoke tests) calibrate on fewer batches.
    let n = (cfg.steps / 4).clamp(2, CALIBRATION_BATCHES);
    calibrate_scale(&mut est, &mut meta, model, split, batch, cfg, disc, cfg.steps, n)?;
    meta.metrics.insert("tau".into(), cfg.tau);
    meta.metrics.insert("eps".into(), cfg.eps);
    meta.metrics.insert("final_log_j".into(), mean(|p| p.log_j));
    meta.metrics.insert("final_d".into(), mean(|p| p.d));
    meta.metrics.insert("final_shape_loss".into(), mean(|p| p.shape_loss));
    meta.metrics.insert(
        "first_shape_loss".into(),
        log[..(log.len() / 5).max(1)].iter().map(|p| p.shape_loss).sum::<f64>() / (log.len() / 5).max(1) as f64,
    );
    meta.metrics.insert("power".into(), power);
    meta.metrics.insert("steps".into(), cfg.steps as f64);
    Ok((est, meta, log))
}

/// The constraint's noise `ξ` for every level of `feats`, from Philox counters `offset..` (advanced
/// past them) of the constraint's subsequences.
fn noise_like(feats: &[Tensor], cfg: &JndTrain, offset: &mut u64) -> Result<Vec<Tensor>> {
    feats
        .iter()
        .enumerate()
        .map(|(l, f)| {
            let xi = philox_like(f, cfg.seed, NOISE_SUBSEQUENCE + l as u32, *offset, cfg.noise)?;
            *offset += f.numel() as u64;
            Ok(xi)
        })
        .collect()
}

/// `[B]` task discrepancies of the tail on `f + J ⊙ ξ` per level against the clean outputs.
fn perturbed_discrepancy(
    maps: &[Tensor],
    feats: &[Tensor],
    clean: &[Tensor],
    xis: &[Tensor],
    model: &dyn SplitModel,
    split: &str,
    disc: &dyn Fn(&[Tensor], &[Tensor]) -> Tensor,
) -> Result<Tensor> {
    let pert: Vec<Tensor> = feats.iter().zip(maps).zip(xis).map(|((f, j), xi)| f + j * xi).collect();
    Ok(disc(clean, &model.tail(&pert, split)?))
}

/// `E[max(0, D − ε)]` over a batch's discrepancies.
fn hinge(d: &Tensor, eps: f64) -> f64 {
    (d - eps).relu().mean(Kind::Float).f_double_value(&[]).unwrap_or(f64::NAN)
}

/// The mean hinge `E[max(0, D − ε)]` of `J = s·S` on prepared batches `(features, clean outputs,
/// noise)` at `log s`.
fn hinge_at(
    est: &mut JndEstimator,
    log_s: f64,
    sets: &[(Vec<Tensor>, Vec<Tensor>, Vec<Tensor>)],
    model: &dyn SplitModel,
    split: &str,
    eps: f64,
    disc: &dyn Fn(&[Tensor], &[Tensor]) -> Tensor,
) -> Result<f64> {
    est.config.scale = log_s.exp();
    tch::no_grad(|| {
        let mut sum = 0.0;
        for (feats, clean, xis) in sets {
            sum += hinge(&perturbed_discrepancy(&est.forward(feats)?, feats, clean, xis, model, split, disc)?, eps);
        }
        Ok(sum / sets.len().max(1) as f64)
    })
}

/// Sets the final scale `s` of a trained estimator so that the constraint holds: by bisection on
/// `log s`, the mean hinge over `n` fresh training batches (fixed noise; [`CALIBRATION_BATCHES`]
/// after a full training) equals `τ`; then the hinge is measured at that `s` on `n` *other* fresh
/// batches and recorded as
/// `final_hinge` (an honest check, not the fitted value, which is `calibration_hinge`). The
/// stochastic-approximation scale of training gets close; this removes its residual jitter and
/// bias (the batch hinge is skewed: often 0, now and then several τ). Batches are drawn from
/// `batch(first..)`, after the training steps.
#[allow(clippy::too_many_arguments)]
pub fn calibrate_scale(
    est: &mut JndEstimator,
    meta: &mut Meta,
    model: &dyn SplitModel,
    split: &str,
    batch: &mut dyn FnMut(usize) -> Result<Tensor>,
    cfg: &JndTrain,
    disc: &dyn Fn(&[Tensor], &[Tensor]) -> Tensor,
    first: usize,
    n: usize,
) -> Result<()> {
    let n = n.max(1);
    let mut pb = Progress::new(2 * n as u64 + BISECTION_STEPS as u64, &format!("jnd {split} scale"), cfg.quiet);
    let mut offset = 1u64 << 40; // apart from the training steps' noise
    let mut sets = Vec::with_capacity(2 * n);
    for k in 0..2 * n {
        let x = batch(first + k)?;
        let (feats, clean) = clean_pass(model, &x, split)?;
        let xis = noise_like(&feats, cfg, &mut offset)?;
        sets.push((feats, clean, xis));
        pb.step("batches");
    }
    let (fit, check) = sets.split_at(n);
    let centre = est.config.scale.max(1e-30).ln();
    let (mut lo, mut hi) = (centre - 2.0, centre + 2.0);
    // Widen the bracket where the training scale was far off (rare).
    for _ in 0..5 {
        if hinge_at(est, lo, fit, model, split, cfg.eps, disc)? <= cfg.tau {
            break;
        }
        lo -= 2.0;
    }
    for _ in 0..5 {
        if hinge_at(est, hi, fit, model, split, cfg.eps, disc)? >= cfg.tau {
            break;
        }
        hi += 2.0;
    }
    for _ in 0..BISECTION_STEPS {
        let mid = 0.5 * (lo + hi);
        if hinge_at(est, mid, fit, model, split, cfg.eps, disc)? > cfg.tau {
            hi = mid;
        } else {
            lo = mid;
        }
        pb.step(format!("log s {mid:.3}"));
    }
    pb.finish();
    let log_s = 0.5 * (lo + hi);
    let calibration = hinge_at(est, log_s, fit, model, split, cfg.eps, disc)?;
    let measured = hinge_at(est, log_s, check, model, split, cfg.eps, disc)?;
    est.config.scale = log_s.exp();
    meta.config = serde_json::to_value(&est.config).unwrap_or_default();
    meta.metrics.insert("scale".into(), est.config.scale);
    meta.metrics.insert("calibration_hinge".into(), calibration);
    meta.metrics.insert("final_hinge".into(), measured);
    meta.metrics.insert("check_batches".into(), n as f64);
    Ok(())
}
