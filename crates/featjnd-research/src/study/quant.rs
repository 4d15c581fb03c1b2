//! The token-wise quantization study (issue 5): every split-point feature is quantized token by
//! token (SPEC §2–4) at a sweep of per-element MSE budgets, with steps that follow FeatJND
//! (`Jnd`, with the token tolerance reduced by mean, RMS or min), the same steps randomly
//! permuted, one uniform step, or the per-token absmax scaling of LLM serving stacks
//! (`Δ_t ∝ max|x_t|`, scaled to the same budget). Budgets are relative: `D = d · mean(x²)` per
//! level and evaluation batch (the tokens of one batch share an allocation, SPEC §1's `T`), matched
//! either nominally (`Σ Δ²/12`) or measured (bisection, SPEC §3); both MSEs are reported for every
//! point, with the rate estimate (entropy + 16 bits per token, SPEC §4) and the task metrics.

use super::tasks::Task;
use crate::estimator::JndEstimator;
use crate::ops::{self, QuantizeOptions};
use crate::train::Progress;
use crate::{Bits, Layout, Reduce, Result, Strategy};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum QStrategy {
    Jnd(#[serde(skip)] Reduce),
    Permuted(u64),
    Uniform,
    Absmax,
}

impl QStrategy {
    pub fn name(&self) -> String {
        match self {
            QStrategy::Jnd(Reduce::Mean) => "jnd".into(),
            QStrategy::Jnd(Reduce::Rms) => "jnd-rms".into(),
            QStrategy::Jnd(Reduce::Min) => "jnd-min".into(),
            QStrategy::Permuted(_) => "permuted".into(),
            QStrategy::Uniform => "uniform-step".into(),
            QStrategy::Absmax => "absmax".into(),
        }
    }
}

/// One quantized evaluation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QPoint {
    pub strategy: String,
    pub seed: Option<u64>,
    pub patch: usize,
    pub measured_match: bool,
    /// Requested budget `d` (relative to `mean(x²)`).
    pub budget: f64,
    /// `Σ Δ_t²/12 · K / Σ x²` (what the nominal model predicts).
    pub nominal_mse: f64,
    /// `Σ (x − x̂)² / Σ x²` (what quantization did).
    pub measured_mse: f64,
    pub bits_per_element: f64,
    pub clamped: u64,
    pub metrics: BTreeMap<String, f64>,
}

/// Per-token `max|x|` of an NCHW feature with patch `p` (SPEC §1 token order), plus a tiny
/// offset so that an all-zero token (after a ReLU) still has a positive tolerance.
pub fn token_absmax(x: &Tensor, p: usize) -> Tensor {
    let p = p as i64;
    let a = x.abs().to_kind(Kind::Float).amax([1i64].as_slice(), false).unsqueeze(1);
    let m = a.max_pool2d([p, p], [p, p], [0, 0], [1, 1], false).flatten(0, -1);
    let tiny = m.mean(Kind::Float).double_value(&[]).max(1e-30) * 1e-6;
    (m + tiny).contiguous()
}

/// Quantizes one level of one batch; returns the reconstruction and the sums that aggregate.
fn quantize_level(x: &Tensor, j: &Tensor, s: QStrategy, patch: usize, d: f64, measured: bool) -> Result<(Tensor, [f64; 4], u64)> {
    let x = x.contiguous();
    let sq = x.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]);
    let n = x.numel() as f64;
    let budget = d * sq / n;
    let j = j.to_kind(x.kind()).contiguous();
    let (jt, strategy) = match s {
        QStrategy::Jnd(r) => (ops::token_tolerance(&j, Layout::Nchw, patch, r)?, Strategy::Jnd),
        QStrategy::Permuted(seed) => (ops::token_tolerance(&j, Layout::Nchw, patch, Reduce::Mean)?, Strategy::Permuted { seed }),
        QStrategy::Uniform => (ops::token_tolerance(&j, Layout::Nchw, patch, Reduce::Mean)?, Strategy::Uniform),
        QStrategy::Absmax => (token_absmax(&x, patch), Strategy::Jnd),
    };
    let steps = if measured {
        ops::allocate_steps_measured(&x, Layout::Nchw, patch, &jt, budget, strategy, Bits::B16)?.0
    } else {
        ops::allocate_steps(&jt, budget, strategy)?
    };
    let opts = QuantizeOptions { bits: Bits::B16, symbols: false, recon: true, token_sse: false, histogram: true };
    let q = ops::quantize(&x, Layout::Nchw, patch, &steps, &opts)?;
    let k = n / steps.numel() as f64;
    let nominal = steps.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]) / 12.0 * k;
    let bits = q.rate.map(|r| r.bits_per_element).unwrap_or(f64::NAN) * n;
    let recon = q.recon.ok_or_else(|| crate::Error::Arg("quantize returned no reconstruction".into()))?;
    Ok((recon, [sq, q.total_sse, nominal, bits], q.clamped))
}

/// One configuration of the sweep.
#[derive(Debug, Clone)]
pub struct QConfig {
    pub patch: usize,
    pub measured: bool,
    pub strategies: Vec<QStrategy>,
}

/// Runs the sweep on `task` at `split` (estimator `est`), relative budgets `budgets`.
pub fn run_split(
    task: &Task,
    split: &str,
    est: &JndEstimator,
    budgets: &[f64],
    configs: &[QConfig],
    quiet: bool,
) -> Result<(BTreeMap<String, f64>, Vec<QPoint>)> {
    let model = task.model.as_ref();
    let (feats, jnds, clean) = super::held_out_features(task, split, est)?;
    let clean_metrics = task.scorer.score(&clean, &clean)?;
    let total: usize = configs.iter().map(|c| c.strategies.len()).sum::<usize>() * budgets.len();
    let mut pb = Progress::new(total as u64, &format!("quant {} {split}", task.id.name()), quiet);
    let mut points = Vec::new();
    for c in configs {
        // A patch must divide every level's H and W; skip configurations that do not fit.
        if feats[0].iter().any(|f| f.size()[2] % c.patch as i64 != 0 || f.size()[3] % c.patch as i64 != 0) {
            continue;
        }
        for &s in &c.strategies {
            for &d in budgets {
                let mut sums = [0f64; 4];
                let mut clamped = 0;
                let outs = tch::no_grad(|| -> Result<Vec<Vec<Tensor>>> {
                    let mut outs = Vec::new();
                    for (f, j) in feats.iter().zip(&jnds) {
                        let mut rec = Vec::new();
                        for (x, jl) in f.iter().zip(j) {
                            let (r, s4, cl) = quantize_level(x, jl, s, c.patch, d, c.measured)?;
                            for (a, b) in sums.iter_mut().zip(s4) {
                                *a += b;
                            }
                            clamped += cl;
                            rec.push(r);
                        }
                        outs.push(model.tail(&rec, split)?);
                    }
                    Ok(outs)
                })?;
                let n: f64 = feats.iter().flatten().map(|t| t.numel() as f64).sum();
                points.push(QPoint {
                    strategy: s.name(),
                    seed: match s {
                        QStrategy::Permuted(seed) => Some(seed),
                        _ => None,
                    },
                    patch: c.patch,
                    measured_match: c.measured,
                    budget: d,
                    nominal_mse: sums[2] / sums[0],
                    measured_mse: sums[1] / sums[0],
                    bits_per_element: sums[3] / n,
                    clamped,
                    metrics: task.scorer.score(&outs, &clean)?,
                });
                pb.step(format!("{} p={} d={d}", s.name(), c.patch));
            }
        }
    }
    pb.finish();
    Ok((clean_metrics, points))
}

/// Mean of `points` over permutation seeds: one curve per `(strategy, patch, mode)`, ascending
/// budget; each point carries the mean, min and max of `metric` and the mean bits.
pub fn curve(points: &[QPoint], strategy: &str, patch: usize, measured: bool, metric: &str) -> Vec<(f64, f64, f64, f64, f64)> {
    let mut by_budget: BTreeMap<u64, Vec<&QPoint>> = BTreeMap::new();
    for p in points.iter().filter(|p| p.strategy == strategy && p.patch == patch && p.measured_match == measured) {
        by_budget.entry(p.budget.to_bits()).or_default().push(p);
    }
    by_budget
        .into_values()
        .map(|v| {
            let m: Vec<f64> = v.iter().map(|p| p.metrics[metric]).collect();
            let mean = m.iter().sum::<f64>() / m.len() as f64;
            let lo = m.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = m.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let bits = v.iter().map(|p| p.bits_per_element).sum::<f64>() / v.len() as f64;
            (v[0].budget, mean, lo, hi, bits)
        })
        .collect()
}

/// Bits per element the `a` curve needs to reach `metric` (linear interpolation along the curve
/// sorted by bits), or `None` when it never does.
pub fn bits_at(curve: &[(f64, f64, f64, f64, f64)], metric: f64) -> Option<f64> {
    let mut c: Vec<(f64, f64)> = curve.iter().map(|p| (p.4, p.1)).collect();
    c.sort_by(|a, b| a.0.total_cmp(&b.0));
    if c.first()?.1 >= metric {
        return Some(c[0].0);
    }
    c.windows(2).find(|w| w[0].1 < metric && w[1].1 >= metric).map(|w| {
        let t = (metric - w[0].1) / (w[1].1 - w[0].1);
        w[0].0 + t * (w[1].0 - w[0].0)
    })
}
