//! The matched-NRMSE study (DESIGN §1, SPEC §6): at each NRMSE `r`, every noise shape is scaled
//! per sample (and per FPN level) by the kernel library's perturbation op to exactly `r`, the
//! tail runs on the perturbed features and the task is scored on held-out data.
//!
//! Shapes: FeatJND `J ⊙ ξ`; Gaussian `ξ`; uniform (unit variance); magnitude-proportional
//! `(|f| + 1e-6·mean|f|) ⊙ ξ` (the tiny offset keeps `J > 0` as SPEC §7 requires where a ReLU
//! feature is exactly 0; it changes nothing measurable).

use super::tasks::Task;
use crate::estimator::JndEstimator;
use crate::ops::{self, Noise};
use crate::train::Progress;
use crate::{NoiseKind, Result};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseShape {
    FeatJnd,
    Gaussian,
    Uniform,
    Magnitude,
}

impl NoiseShape {
    pub const ALL: [NoiseShape; 4] = [NoiseShape::FeatJnd, NoiseShape::Gaussian, NoiseShape::Uniform, NoiseShape::Magnitude];
    pub fn name(self) -> &'static str {
        match self {
            NoiseShape::FeatJnd => "featjnd",
            NoiseShape::Gaussian => "gaussian",
            NoiseShape::Uniform => "uniform",
            NoiseShape::Magnitude => "magnitude",
        }
    }
}

/// One point of a curve: the metrics over seeds (mean, min, max) and the measured NRMSE.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Point {
    pub nrmse: f64,
    /// Mean over samples and seeds of the per-sample NRMSE measured on the perturbed features.
    pub measured_nrmse: f64,
    pub mean: BTreeMap<String, f64>,
    pub min: BTreeMap<String, f64>,
    pub max: BTreeMap<String, f64>,
}

/// Curves of one split point: noise shape → points (ascending `r`), plus the clean metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SplitCurves {
    pub clean: BTreeMap<String, f64>,
    pub curves: BTreeMap<String, Vec<Point>>,
}

/// Per-sample NRMSE of `pert` against `f` over all levels, summed over samples; and the count.
fn nrmse_sum(f: &[Tensor], pert: &[Tensor]) -> (f64, usize) {
    let b = f[0].size()[0];
    let mut num = Tensor::zeros([b], (Kind::Double, f[0].device()));
    let mut den = Tensor::zeros([b], (Kind::Double, f[0].device()));
    for (x, y) in f.iter().zip(pert) {
        let d = (y - x).to_kind(Kind::Double).flatten(1, -1);
        num += d.square().sum_dim_intlist(1, false, Kind::Double);
        den += x.to_kind(Kind::Double).flatten(1, -1).square().sum_dim_intlist(1, false, Kind::Double);
    }
    ((num / den.clamp_min(1e-300)).sqrt().sum(Kind::Double).double_value(&[]), b as usize)
}

/// Perturbs every level of `feats` to NRMSE `r` with noise `shape`.
pub fn perturb_levels(feats: &[Tensor], jnd: &[Tensor], shape: NoiseShape, r: f64, seed: u64, batch: usize) -> Result<Vec<Tensor>> {
    feats
        .iter()
        .enumerate()
        .map(|(l, f)| {
            let kind = if shape == NoiseShape::Uniform { NoiseKind::Uniform } else { NoiseKind::Gaussian };
            // Streams separate levels and batches; the seed separates repetitions.
            let noise = Noise { kind, seed, subsequence: (batch * 8 + l) as u32 };
            let j = match shape {
                NoiseShape::FeatJnd => Some(jnd[l].shallow_clone()),
                NoiseShape::Magnitude => {
                    let a = f.abs();
                    let tiny = a.mean(Kind::Float).double_value(&[]).max(1e-30) * 1e-6;
                    Some(a + tiny)
                }
                NoiseShape::Gaussian | NoiseShape::Uniform => None,
            };
            let f = f.contiguous();
            let j = j.map(|j| j.to_kind(f.kind()).contiguous());
            Ok(ops::perturb(&f, j.as_ref(), r, noise)?.0)
        })
        .collect()
}

/// Runs the study on `task` at `split` with estimator `est`.
pub fn run_split(
    task: &Task,
    split: &str,
    est: &JndEstimator,
    levels: &[f64],
    seeds: &[u64],
    shapes: &[NoiseShape],
    quiet: bool,
) -> Result<SplitCurves> {
    let model = task.model.as_ref();
    let (feats, jnds, clean) = super::held_out_features(task, split, est)?;
    let clean_metrics = task.scorer.score(&clean, &clean)?;
    let mut curves = BTreeMap::new();
    let mut pb = Progress::new((shapes.len() * levels.len() * seeds.len()) as u64, &format!("{} {split}", task.id.name()), quiet);
    for &shape in shapes {
        let mut points = Vec::new();
        for &r in levels {
            let mut runs: Vec<BTreeMap<String, f64>> = Vec::new();
            let (mut nsum, mut ncount) = (0.0, 0usize);
            for &seed in seeds {
                let outs = tch::no_grad(|| -> Result<Vec<Vec<Tensor>>> {
                    let mut outs = Vec::new();
                    for (b, (f, j)) in feats.iter().zip(&jnds).enumerate() {
                        let p = perturb_levels(f, j, shape, r, seed, b)?;
                        let (s, c) = nrmse_sum(f, &p);
                        nsum += s;
                        ncount += c;
                        outs.push(model.tail(&p, split)?);
                    }
                    Ok(outs)
                })?;
                runs.push(task.scorer.score(&outs, &clean)?);
                pb.step(format!("{} r={r}", shape.name()));
            }
            let mut mean = BTreeMap::new();
            let mut min = BTreeMap::new();
            let mut max = BTreeMap::new();
            for k in runs[0].keys() {
                let v: Vec<f64> = runs.iter().map(|m| m[k]).collect();
                mean.insert(k.clone(), v.iter().sum::<f64>() / v.len() as f64);
                min.insert(k.clone(), v.iter().cloned().fold(f64::INFINITY, f64::min));
                max.insert(k.clone(), v.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
            }
            points.push(Point { nrmse: r, measured_nrmse: nsum / ncount.max(1) as f64, mean, min, max });
        }
        curves.insert(shape.name().to_string(), points);
    }
    pb.finish();
    Ok(SplitCurves { clean: clean_metrics, curves })
}
