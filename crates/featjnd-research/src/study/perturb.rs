//! The matched-NRMSE study (design §1, contract §6): at each NRMSE `r`, every noise shape is scaled
//! per sample (and per FPN level) by the kernel library's perturbation op to exactly `r`, the
//! tail runs on the perturbed features and the task is scored on held-out data.
//!
//! Shapes: FeatJND `J ⊙ ξ`; Gaussian `ξ`; uniform (unit variance); magnitude-proportional
//! `(|f| + 1e-6·mean|f|) ⊙ ξ` (the tiny offset keeps `J > 0` as contract §7 requires where a ReLU
//! feature is exactly 0; it changes nothing measurable); and the oracle control `J_o ⊙ ξ`, `J_o`
//! from the task's gradients on the very image ([`super::oracle`]; not deployable, it bounds what
//! a tolerance map can do).
//!
//! Intervals: for the classification metrics (top-1, agreement, top-5 agreement: per-image means)
//! every point carries a 95% percentile bootstrap interval over images ([`BOOT_REPLICATES`]
//! replicates of the held-out images drawn with replacement, seeded with [`BOOT_SEED`]; the same
//! replicates for every shape and level, so the comparisons are paired). Each image's value is its
//! mean over the noise seeds. Detection AP is not a mean over images (precision and recall are
//! pooled over the whole set before the integral): for the headline detection metric (the task's
//! first) each of [`DET_REPLICATES`] replicates is scored again by a COCO evaluation on the
//! resampled images (`super::resample`), averaged over the seeds; other detection metrics carry
//! the min–max over seeds.

use super::resample::{self, ImageOutputs, Rescorer};
use super::stats;
use super::tasks::{Scorer, Task};
use crate::estimator::JndEstimator;
use crate::ops::{self, Noise};
use crate::train::Progress;
use crate::{NoiseKind, Result};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// Bootstrap replicates of the intervals.
pub const BOOT_REPLICATES: usize = 200;
/// Seed of the bootstrap resamples.
pub const BOOT_SEED: u64 = 12;
/// Bootstrap replicates of the detection intervals (each one a COCO evaluation per seed).
pub const DET_REPLICATES: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseShape {
    FeatJnd,
    /// The ablation: an estimator trained with the paper's log objective (`models/jnd-log/`).
    FeatJndLog,
    Gaussian,
    Uniform,
    Magnitude,
    Oracle,
    /// The oracle control with another exponent `p` (in tenths: `OracleP(5)` is `p = 0.5`), for
    /// the room-per-split diagnostic (`featjnd run --oracle-powers`); see [`NoiseShape::oracle_power`].
    OracleP(u8),
}

impl NoiseShape {
    /// The shapes of every study (the ablation [`NoiseShape::FeatJndLog`] joins where its
    /// estimator exists).
    pub const ALL: [NoiseShape; 5] =
        [NoiseShape::FeatJnd, NoiseShape::Gaussian, NoiseShape::Uniform, NoiseShape::Magnitude, NoiseShape::Oracle];
    pub fn name(self) -> &'static str {
        match self {
            NoiseShape::FeatJnd => "featjnd",
            NoiseShape::FeatJndLog => "featjnd-log",
            NoiseShape::Gaussian => "gaussian",
            NoiseShape::Uniform => "uniform",
            NoiseShape::Magnitude => "magnitude",
            NoiseShape::Oracle => "oracle",
            NoiseShape::OracleP(5) => "oracle-p0.5",
            NoiseShape::OracleP(10) => "oracle-p1",
            NoiseShape::OracleP(15) => "oracle-p1.5",
            NoiseShape::OracleP(20) => "oracle-p2",
            NoiseShape::OracleP(30) => "oracle-p3",
            NoiseShape::OracleP(40) => "oracle-p4",
            NoiseShape::OracleP(_) => "oracle-p?",
        }
    }

    /// The oracle shape of exponent `p` for the diagnostic; `p` ∈ {0.5, 1, 1.5, 2, 3, 4}.
    pub fn oracle_power(p: f64) -> crate::Result<NoiseShape> {
        let tenths = (p * 10.0).round();
        let s = NoiseShape::OracleP(tenths.clamp(0.0, 255.0) as u8);
        if (p * 10.0 - tenths).abs() > 1e-9 || s.name() == "oracle-p?" {
            return Err(crate::Error::Arg(format!("oracle exponent {p}: one of 0.5, 1, 1.5, 2, 3, 4")));
        }
        Ok(s)
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
    /// 95% bootstrap interval over images of the metric (per-image metrics only).
    pub ci95: BTreeMap<String, (f64, f64)>,
    /// Per image, the metric averaged over seeds (per-image metrics only; not serialised).
    #[serde(skip)]
    pub per_image: BTreeMap<String, Vec<f64>>,
    /// Per bootstrap replicate, the metric (mean over seeds) where it is not a per-image mean:
    /// the headline detection AP (not serialised).
    #[serde(skip)]
    pub replicates: BTreeMap<String, Vec<f64>>,
}

/// Curves of one split point: noise shape → points (ascending `r`), plus the clean metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SplitCurves {
    pub clean: BTreeMap<String, f64>,
    pub curves: BTreeMap<String, Vec<Point>>,
    /// Per image, the clean metric (per-image metrics only; not serialised).
    #[serde(skip)]
    pub clean_per_image: BTreeMap<String, Vec<f64>>,
    /// The clean metric per bootstrap replicate, where points carry `replicates`.
    #[serde(skip)]
    pub clean_replicates: BTreeMap<String, Vec<f64>>,
    /// The bootstrap resamples of the held-out images.
    #[serde(skip)]
    pub resamples: Vec<Vec<usize>>,
}

impl SplitCurves {
    /// The point of `shape` at level index `i`.
    pub fn point(&self, shape: &str, i: usize) -> Option<&Point> {
        self.curves.get(shape)?.get(i)
    }

    /// Bootstrap replicates of `clean − metric` of `shape` at level index `i` (`None` where the
    /// metric has no per-image values).
    pub fn drop_replicates(&self, shape: &str, i: usize, metric: &str) -> Option<Vec<f64>> {
        if let (Some(c), Some(p)) = (self.clean_replicates.get(metric), self.point(shape, i)?.replicates.get(metric)) {
            return Some(c.iter().zip(p).map(|(c, p)| c - p).collect());
        }
        let c = self.clean_per_image.get(metric)?;
        let p = self.point(shape, i)?.per_image.get(metric)?;
        if self.resamples.is_empty() || c.len() != p.len() {
            return None;
        }
        Some(self.resamples.iter().map(|idx| idx.iter().map(|&k| c[k] - p[k]).sum::<f64>() / idx.len().max(1) as f64).collect())
    }

    /// 95% bootstrap interval of the drop `clean − metric` of `shape` at level index `i`.
    pub fn drop_interval(&self, shape: &str, i: usize, metric: &str) -> Option<(f64, f64)> {
        stats::interval95(&self.drop_replicates(shape, i, metric)?)
    }
}

/// The per-image values of `metric` (1 or 0 per image) for the classification scorers: `top1`
/// (against the labels), `agreement` (top-1 equals the clean top-1), `top5_agreement` (the clean
/// top-1 is among the top 5). `None` for other metrics and for detection.
pub fn per_image(scorer: &Scorer, outs: &[Vec<Tensor>], clean: &[Vec<Tensor>], metric: &str) -> Option<Vec<f64>> {
    if let Scorer::Dense(kinds) = scorer {
        return super::dense::per_image_metric(kinds, outs, clean, metric).ok();
    }
    let mut v = Vec::new();
    for (i, (o, c)) in outs.iter().zip(clean).enumerate() {
        let (o, c) = (&o[0], c[0].argmax(-1, false));
        let hit = match (scorer, metric) {
            (Scorer::Labels(l), "top1") => o.argmax(-1, false).eq_tensor(&l[i].to_device(o.device())),
            (Scorer::Labels(_) | Scorer::Unlabelled, "agreement") => o.argmax(-1, false).eq_tensor(&c),
            (Scorer::Labels(_) | Scorer::Unlabelled, "top5_agreement") => {
                let k = o.size().last().copied().unwrap_or(1).min(5);
                o.topk(k, -1, true, true).1.eq_tensor(&c.unsqueeze(-1)).any_dim(-1, false)
            }
            _ => return None,
        };
        v.extend(Vec::<f64>::try_from(&hit.to_kind(Kind::Double).to_device(Device::Cpu)).ok()?);
    }
    Some(v)
}

/// The mean of `v` over the images of every resample; its 95% interval.
fn mean_interval(v: &[f64], resamples: &[Vec<usize>]) -> Option<(f64, f64)> {
    let reps: Vec<f64> = resamples.iter().map(|idx| idx.iter().map(|&k| v[k]).sum::<f64>() / idx.len().max(1) as f64).collect();
    stats::interval95(&reps)
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
    ((num / den.clamp_min(1e-300)).sqrt().sum(Kind::Double).f_double_value(&[]).unwrap_or(f64::NAN), b as usize)
}

/// Perturbs every level of `feats` to NRMSE `r` with noise `shape`; `jnd` holds the shape's maps
/// for the map-shaped noises (FeatJND's, or the oracle's for [`NoiseShape::Oracle`]).
pub fn perturb_levels(feats: &[Tensor], jnd: &[Tensor], shape: NoiseShape, r: f64, seed: u64, batch: usize) -> Result<Vec<Tensor>> {
    feats
        .iter()
        .enumerate()
        .map(|(l, f)| {
            let kind = if shape == NoiseShape::Uniform { NoiseKind::Uniform } else { NoiseKind::Gaussian };
            // Streams separate levels and batches; the seed separates repetitions.
            let noise = Noise { kind, seed, subsequence: (batch * 8 + l) as u32 };
            let j = match shape {
                NoiseShape::FeatJnd | NoiseShape::FeatJndLog | NoiseShape::Oracle | NoiseShape::OracleP(_) => Some(jnd[l].shallow_clone()),
                NoiseShape::Magnitude => {
                    let a = f.abs();
                    let tiny = a.mean(Kind::Float).f_double_value(&[])?.max(1e-30) * 1e-6;
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

/// Runs the study on `task` at `split` with estimator `est` (and `ablation`, the log-objective
/// estimator, for [`NoiseShape::FeatJndLog`]). `det_intervals`: bootstrap the headline detection
/// AP (a COCO evaluation per replicate, seed and point; see the module docs).
#[allow(clippy::too_many_arguments)]
pub fn run_split(
    task: &Task,
    split: &str,
    held: &super::HeldOut,
    ablation: Option<&JndEstimator>,
    levels: &[f64],
    seeds: &[u64],
    shapes: &[NoiseShape],
    det_intervals: bool,
    quiet: bool,
) -> Result<SplitCurves> {
    let model = task.model.as_ref();
    let (feats, jnds, clean) = (&held.feats, &held.jnds, &held.clean);
    let log_maps: Vec<Vec<Tensor>> = match ablation {
        Some(a) if shapes.contains(&NoiseShape::FeatJndLog) => tch::no_grad(|| feats.iter().map(|f| a.forward(f)).collect::<Result<_>>())?,
        _ if shapes.contains(&NoiseShape::FeatJndLog) => {
            return Err(crate::Error::Model("the featjnd-log shape needs the log-objective estimator".into()))
        }
        _ => Vec::new(),
    };
    // The oracle controls (the study's, and other exponents for the room diagnostic): the task's
    // sensitivity is probed once per batch, each exponent's maps derived from it.
    let oracle_power = |shape: NoiseShape| match shape {
        NoiseShape::Oracle => Some(super::oracle::POWER),
        NoiseShape::OracleP(t) => Some(t as f64 / 10.0),
        _ => None,
    };
    let mut oracle: BTreeMap<NoiseShape, Vec<Vec<Tensor>>> = BTreeMap::new();
    if shapes.iter().any(|&s| oracle_power(s).is_some()) {
        for g in held.sensitivity(task, split, quiet)? {
            for &shape in shapes {
                if let Some(p) = oracle_power(shape) {
                    oracle.entry(shape).or_default().push(super::oracle::shape(g, p));
                }
            }
        }
    }
    let clean_metrics = task.scorer.score(clean, clean)?;
    let metrics = task.id.metrics();
    let clean_per_image: BTreeMap<String, Vec<f64>> =
        metrics.iter().filter_map(|&m| per_image(&task.scorer, clean, clean, m).map(|v| (m.to_string(), v))).collect();
    // Detection: the headline metric is re-scored on every replicate (module docs).
    let rescorer = Rescorer::of(&task.scorer);
    let det_metric = match rescorer {
        Rescorer::Scenes { .. } | Rescorer::Pseudo { .. } if det_intervals && !task.eval.is_empty() => metrics.first().copied(),
        _ => None,
    };
    let clean_io = det_metric.map(|m| resample::outputs(&task.scorer, clean, clean, m)).transpose()?;
    let resamples = match (&clean_io, clean_per_image.values().next()) {
        (Some(io), _) => stats::resamples(io.len(), DET_REPLICATES, BOOT_SEED),
        (None, Some(v)) => stats::resamples(v.len(), BOOT_REPLICATES, BOOT_SEED),
        (None, None) => Vec::new(),
    };
    let rescore = |io: &ImageOutputs, m: &str| -> Result<Vec<f64>> {
        use rayon::prelude::*;
        resamples.par_iter().map(|idx| resample::score(rescorer, io, idx, m)).collect()
    };
    let mut clean_replicates = BTreeMap::new();
    if let (Some(io), Some(m)) = (&clean_io, det_metric) {
        clean_replicates.insert(m.to_string(), rescore(io, m)?);
    }
    let mut curves = BTreeMap::new();
    let mut pb = Progress::new((shapes.len() * levels.len() * seeds.len()) as u64, &format!("{} {split}", task.id.name()), quiet);
    for &shape in shapes {
        let mut points = Vec::new();
        for &r in levels {
            let mut runs: Vec<BTreeMap<String, f64>> = Vec::new();
            let mut per_img: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            let mut reps: Vec<f64> = vec![0.0; if det_metric.is_some() { resamples.len() } else { 0 }];
            let (mut nsum, mut ncount) = (0.0, 0usize);
            for &seed in seeds {
                let outs = tch::no_grad(|| -> Result<Vec<Vec<Tensor>>> {
                    let mut outs = Vec::new();
                    for (b, (f, j)) in feats.iter().zip(jnds).enumerate() {
                        let j = match shape {
                            NoiseShape::Oracle | NoiseShape::OracleP(_) => &oracle[&shape][b],
                            NoiseShape::FeatJndLog => &log_maps[b],
                            _ => j,
                        };
                        let p = perturb_levels(f, j, shape, r, seed, b)?;
                        let (s, c) = nrmse_sum(f, &p);
                        nsum += s;
                        ncount += c;
                        outs.push(model.tail(&p, split)?);
                    }
                    Ok(outs)
                })?;
                runs.push(task.scorer.score(&outs, clean)?);
                if let Some(m) = det_metric {
                    let io = resample::outputs(&task.scorer, &outs, clean, m)?;
                    reps.iter_mut().zip(rescore(&io, m)?).for_each(|(a, x)| *a += x / seeds.len() as f64);
                }
                for m in clean_per_image.keys() {
                    if let Some(v) = per_image(&task.scorer, &outs, clean, m) {
                        let acc = per_img.entry(m.clone()).or_insert_with(|| vec![0.0; v.len()]);
                        acc.iter_mut().zip(&v).for_each(|(a, x)| *a += x / seeds.len() as f64);
                    }
                }
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
            let mut ci95: BTreeMap<String, (f64, f64)> =
                per_img.iter().filter_map(|(k, v)| mean_interval(v, &resamples).map(|ci| (k.clone(), ci))).collect();
            let mut replicates = BTreeMap::new();
            if let Some(m) = det_metric {
                if let Some(ci) = stats::interval95(&reps) {
                    ci95.insert(m.to_string(), ci);
                }
                replicates.insert(m.to_string(), reps);
            }
            points.push(Point {
                nrmse: r,
                measured_nrmse: nsum / ncount.max(1) as f64,
                mean,
                min,
                max,
                ci95,
                per_image: per_img,
                replicates,
            });
        }
        curves.insert(shape.name().to_string(), points);
    }
    pb.finish();
    Ok(SplitCurves { clean: clean_metrics, curves, clean_per_image, clean_replicates, resamples })
}
