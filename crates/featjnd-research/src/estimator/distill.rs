//! A diagnostic, not the method: train `G_θ` to reproduce a given tolerance map (the oracle
//! control of `study::oracle`) instead of the constrained objective of [`super::train`]. If the
//! distilled estimator, which sees only the features, gets close to the oracle on held-out
//! images, the estimator's capacity and inputs suffice and the gap lies in the training
//! objective; if it does not, the oracle's per-image gradient information is out of its reach.
//!
//! Loss: the mean squared difference of the per-sample-centred logarithms, `log J − mean log J`
//! against the same of the target. The perturbation study rescales every map per sample to the
//! requested NRMSE, so only the shape of `J` matters, not its level.

use super::train::{clean_pass, new_estimator, JndTrain, LogPoint};
use super::JndEstimator;
use crate::model::checkpoint::Meta;
use crate::model::SplitModel;
use crate::train::Progress;
use crate::Result;
use tch::{Kind, Tensor};

/// `log t − its mean over each sample`.
fn centred_log(t: &Tensor) -> Tensor {
    let l = t.clamp_min(1e-30).log();
    let m = l.flatten(1, -1).mean_dim(1, true, Kind::Float);
    let shape: Vec<i64> = std::iter::once(l.size()[0]).chain(std::iter::repeat_n(1, l.dim() - 1)).collect();
    &l - m.view(shape.as_slice())
}

/// The target maps of a batch: `(features, clean outputs, step) → J` per level.
pub type TargetFn<'a> = dyn Fn(&[Tensor], &[Tensor], usize) -> Result<Vec<Tensor>> + 'a;

/// Trains an estimator of `model` at `split` to match `target(feats, clean, step)` (per level) on
/// the batches `batch(step)` yields. `cfg` supplies steps, learning rate, width, floor, seed.
pub fn distill_estimator(
    model: &dyn SplitModel,
    split: &str,
    batch: &mut dyn FnMut(usize) -> Result<Tensor>,
    cfg: &JndTrain,
    target: &TargetFn,
) -> Result<(JndEstimator, Meta, Vec<LogPoint>)> {
    let x0 = batch(0)?;
    let (est, mut opt, mut meta) = new_estimator(model, split, &x0, cfg)?;
    let mut log = Vec::with_capacity(cfg.steps);
    let mut pb = Progress::new(cfg.steps as u64, &format!("distil {split}"), cfg.quiet);
    for step in 0..cfg.steps {
        let x = if step == 0 { x0.shallow_clone() } else { batch(step)? };
        let (feats, clean) = clean_pass(model, &x, split)?;
        let goal: Vec<Tensor> = target(&feats, &clean, step)?.iter().map(|t| centred_log(&t.detach())).collect();
        let maps = est.forward(&feats)?;
        let terms: Vec<Tensor> = maps.iter().zip(&goal).map(|(j, g)| (centred_log(j) - g).square().mean(Kind::Float)).collect();
        let loss = Tensor::stack(&terms, 0).mean(Kind::Float);
        opt.backward_step(&loss);
        let l = loss.f_double_value(&[])?;
        log.push(LogPoint { step, hinge: l, lambda: 0.0, log_j: 0.0, d: 0.0, shape_loss: l, log_scale: 0.0 });
        pb.step(format!("loss {l:.4}"));
    }
    pb.finish();
    meta.metrics.insert("final_distill_loss".into(), super::train::final_mean(&log, |p| p.hinge));
    meta.metrics.insert("steps".into(), cfg.steps as f64);
    Ok((est, meta, log))
}
