//! Dense-output user tasks (docs/user-models.md): a tail that returns maps `[B, C, H, W]` (semantic
//! segmentation, heat-maps, depth), declared in split.json as `"task": "dense"` with one
//! [`OutputKind`] per output.
//!
//! # Task discrepancy (estimator training, the oracle), per sample, summed over the outputs
//!
//! * `softmax` (logits over `C`): the KL of the clean to the perturbed softmax, mean over pixels;
//! * `sigmoid` (independent maps): the Bernoulli KL, mean over elements;
//! * `identity` (regression): `‖p − c‖² / ‖c‖²` (relative squared error).
//!
//! # Metrics (against the clean output, per image, then the mean over images; the mean over the
//! outputs when there are several); every one is "higher is better" except `rel_l2`
//!
//! * `agreement` (the headline): `softmax` — the share of pixels whose argmax over `C` is the
//!   clean one; `sigmoid` — the share of elements on the clean side of 0.5; `identity` — the share
//!   of elements within 10% of the clean output's RMS of the clean value.
//! * `iou`: `softmax` — the mean IoU of the argmax maps over the classes present in either;
//!   `sigmoid` — the IoU of the maps thresholded at 0.5 (1 when both are empty); `identity` —
//!   the IoU of the regions above the clean output's median (a coarse structural check).
//! * `psnr`: `10·log10(peak² / MSE)` of the maps as compared (probabilities for `softmax` and
//!   `sigmoid`, peak 1; raw values for `identity`, peak = the clean map's largest magnitude),
//!   capped at 100 dB for identical maps.
//! * `rel_l2`: `‖p − c‖ / ‖c‖` of the same maps (lower is better; not a study metric).
//! * `peak_f1` (only with `sigmoid` outputs, the mean over those; not a study metric): peaks are
//!   the elements above 0.5 that are the maximum of their 3×3 neighbourhood in their channel; a
//!   perturbed peak is found when a clean peak of its channel lies within [`PEAK_RADIUS`] pixels
//!   (Chebyshev), and a clean peak is recalled likewise; F1 of that precision and recall (1 when
//!   neither map has a peak). Matching is by neighbourhood, not one-to-one: two perturbed peaks
//!   next to one clean peak both count as found.

use crate::model::torchscript::OutputKind;
use crate::{Error, Result};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// The metrics of a dense task, headline first ([`super::tasks::TaskId::UserDense`]).
pub const METRICS: [&str; 4] = ["agreement", "iou", "psnr", "rel_l2"];

/// The PSNR of identical maps.
const PSNR_CAP: f64 = 100.0;
/// `identity` agreement: within this share of the clean map's RMS.
const IDENTITY_TOL: f64 = 0.1;
/// `peak_f1`: a peak is found within this many pixels (Chebyshev distance).
pub const PEAK_RADIUS: i64 = 2;

/// Per image: how many elements of the boolean map `m` are set (f64).
fn count(m: &Tensor) -> Tensor {
    per_sample_sum(&m.to_kind(Kind::Double)).to_kind(Kind::Double)
}

/// Per image: how many elements of the boolean maps `a` and `b` are set in both, and in either.
fn inter_union(a: &Tensor, b: &Tensor) -> (Tensor, Tensor) {
    (count(&a.logical_and(b)), count(&a.logical_or(b)))
}

/// Per image: the IoU of the boolean maps `a` and `b`, 1 where both are empty.
fn iou_or_one(a: &Tensor, b: &Tensor) -> Tensor {
    let (inter, union) = inter_union(a, b);
    (&inter / union.clamp_min(1.0)).where_self(&union.gt(0.0), &union.ones_like())
}

/// Adds `v` to `sums[name]` (a per-image sum over the outputs).
fn accumulate(sums: &mut BTreeMap<&'static str, Tensor>, name: &'static str, v: Tensor) {
    let acc = match sums.remove(name) {
        Some(s) => s + v,
        None => v,
    };
    sums.insert(name, acc);
}

/// Peaks of sigmoid logits `[B, C, H, W]`: above 0.5 and the maximum of their 3×3 neighbourhood.
fn peaks(logits: &Tensor) -> Tensor {
    let p = logits.sigmoid();
    let m = p.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false);
    p.eq_tensor(&m).logical_and(&p.gt(0.5))
}

/// Per image: F1 of the perturbed peaks against the clean ones (module docs).
fn peak_f1(o: &Tensor, c: &Tensor) -> Tensor {
    let (po, pc) = (peaks(o), peaks(c));
    let k = 2 * PEAK_RADIUS + 1;
    let near = |m: &Tensor| m.to_kind(Kind::Double).max_pool2d([k, k], [1, 1], [PEAK_RADIUS, PEAK_RADIUS], [1, 1], false).gt(0.0);
    let (no, nc) = (count(&po), count(&pc));
    let found = count(&po.logical_and(&near(&pc)));
    let recalled = count(&pc.logical_and(&near(&po)));
    let precision = (&found / no.clamp_min(1.0)).where_self(&no.gt(0.0), &nc.eq(0.0).to_kind(Kind::Double));
    let recall = (&recalled / nc.clamp_min(1.0)).where_self(&nc.gt(0.0), &no.eq(0.0).to_kind(Kind::Double));
    let sum = &precision + &recall;
    (precision * recall * 2.0 / sum.clamp_min(1e-300)).where_self(&sum.gt(0.0), &sum.zeros_like())
}

/// Checks that `outs` are maps fitting `kinds`: one per kind, each `[B, C, H, W]`, `C ≥ 2` for
/// `softmax`; `what` names the outputs in the message.
pub fn check_outputs(kinds: &[OutputKind], outs: &[Tensor], what: &str) -> Result<()> {
    if outs.len() != kinds.len() {
        return Err(Error::Model(format!("a dense tail declared with {} output(s) returned {} ({what})", kinds.len(), outs.len())));
    }
    for (k, (o, kind)) in outs.iter().zip(kinds).enumerate() {
        if o.dim() != 4 || (*kind == OutputKind::Softmax && o.size()[1] < 2) {
            return Err(Error::Model(format!(
                "dense output {k} is {:?}: a `{}` output must be [B, C, H, W]{}",
                o.size(),
                kind.name(),
                if *kind == OutputKind::Softmax { " with C >= 2" } else { "" }
            )));
        }
    }
    Ok(())
}

fn per_sample_mean(t: &Tensor) -> Tensor {
    t.flatten(1, -1).mean_dim(1, false, Kind::Float)
}

fn per_sample_sum(t: &Tensor) -> Tensor {
    t.flatten(1, -1).sum_dim_intlist(1, false, Kind::Float)
}

/// `[B]` task discrepancies of the dense outputs `pert` against `clean` (module docs).
pub fn discrepancy(kinds: &[OutputKind], clean: &[Tensor], pert: &[Tensor]) -> Result<Tensor> {
    check_outputs(kinds, pert, "perturbed")?;
    let mut total: Option<Tensor> = None;
    for ((c, p), kind) in clean.iter().zip(pert).zip(kinds) {
        let (c, p) = (c.to_kind(Kind::Float), p.to_kind(Kind::Float));
        let d = match kind {
            OutputKind::Softmax => {
                let (lc, lp) = (c.log_softmax(1, Kind::Float), p.log_softmax(1, Kind::Float));
                per_sample_mean(&(lc.exp() * (lc - lp)).sum_dim_intlist(1, false, Kind::Float))
            }
            OutputKind::Sigmoid => {
                let q = c.sigmoid();
                let kl = &q * (c.log_sigmoid() - p.log_sigmoid()) + (q.neg() + 1.0) * (c.neg().log_sigmoid() - p.neg().log_sigmoid());
                per_sample_mean(&kl)
            }
            OutputKind::Identity => per_sample_sum(&(&p - &c).square()) / (per_sample_sum(&c.square()) + 1e-12),
        };
        total = Some(match total {
            Some(t) => t + d,
            None => d,
        });
    }
    total.ok_or_else(|| Error::Model("a dense task with no outputs".into()))
}

/// Per-image values of [`METRICS`] of one batch: `metric → [B]` (module docs).
pub fn per_image(kinds: &[OutputKind], outs: &[Tensor], clean: &[Tensor]) -> Result<BTreeMap<&'static str, Vec<f64>>> {
    check_outputs(kinds, outs, "perturbed")?;
    check_outputs(kinds, clean, "clean")?;
    let b = outs[0].size()[0];
    let mut sums: BTreeMap<&'static str, Tensor> = BTreeMap::new();
    for ((o, c), kind) in outs.iter().zip(clean).zip(kinds) {
        let (o, c) = (o.detach().to_kind(Kind::Double), c.detach().to_kind(Kind::Double));
        let (agree, iou, po, pc, peak) = match kind {
            OutputKind::Softmax => {
                let (ao, ac) = (o.argmax(1, false), c.argmax(1, false));
                let agree = per_sample_mean(&ao.eq_tensor(&ac).to_kind(Kind::Double));
                // Mean IoU over the classes present in either map, per image.
                let classes = o.size()[1];
                let (mut iou_sum, mut present) =
                    (Tensor::zeros([b], (Kind::Double, o.device())), Tensor::zeros([b], (Kind::Double, o.device())));
                for k in 0..classes {
                    let (inter, union) = inter_union(&ao.eq(k), &ac.eq(k));
                    let has = union.gt(0.0).to_kind(Kind::Double);
                    iou_sum += &inter / union.clamp_min(1.0) * &has;
                    present += has;
                }
                let iou = iou_sum / present.clamp_min(1.0);
                (agree, iou, o.softmax(1, Kind::Double), c.softmax(1, Kind::Double), None)
            }
            OutputKind::Sigmoid => {
                let (mo, mc) = (o.gt(0.0), c.gt(0.0));
                let agree = per_sample_mean(&mo.eq_tensor(&mc).to_kind(Kind::Double));
                (agree, iou_or_one(&mo, &mc), o.sigmoid(), c.sigmoid(), None)
            }
            OutputKind::Identity => {
                let cf = c.flatten(1, -1);
                let rms = cf.square().mean_dim(1, true, Kind::Double).sqrt();
                let close = (&o - &c).abs().flatten(1, -1).le_tensor(&(rms * IDENTITY_TOL));
                let agree = close.to_kind(Kind::Double).mean_dim(1, false, Kind::Double);
                let med = cf.nanmedian_dim(1, true).0;
                let iou = iou_or_one(&o.flatten(1, -1).gt_tensor(&med), &cf.gt_tensor(&med));
                let peak = cf.abs().amax([1i64].as_slice(), false);
                (agree, iou, o.shallow_clone(), c.shallow_clone(), Some(peak))
            }
        };
        if *kind == OutputKind::Sigmoid {
            accumulate(&mut sums, "peak_f1", peak_f1(&o, &c));
        }
        let mse = per_sample_mean(&(&po - &pc).square()).to_kind(Kind::Double);
        let peak2 = peak.map(|p| p.square()).unwrap_or_else(|| mse.ones_like());
        let psnr = ((peak2 / mse.clamp_min(1e-300)).log10() * 10.0).clamp(-PSNR_CAP, PSNR_CAP);
        let rel = (per_sample_sum(&(&po - &pc).square()).to_kind(Kind::Double)
            / per_sample_sum(&pc.square()).to_kind(Kind::Double).clamp_min(1e-300))
        .sqrt();
        for (name, v) in [("agreement", agree), ("iou", iou), ("psnr", psnr), ("rel_l2", rel)] {
            accumulate(&mut sums, name, v.to_kind(Kind::Double));
        }
    }
    let n = kinds.len() as f64;
    let n_sigmoid = kinds.iter().filter(|k| **k == OutputKind::Sigmoid).count() as f64;
    sums.into_iter()
        .map(|(k, v)| {
            let n = if k == "peak_f1" { n_sigmoid } else { n };
            Ok((k, Vec::<f64>::try_from(&(v / n).to_device(Device::Cpu).contiguous())?))
        })
        .collect()
}

/// The means over all images of [`per_image`] over batches.
pub fn metrics(kinds: &[OutputKind], outs: &[Vec<Tensor>], clean: &[Vec<Tensor>]) -> Result<BTreeMap<String, f64>> {
    let mut all: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for (o, c) in outs.iter().zip(clean) {
        for (k, v) in per_image(kinds, o, c)? {
            all.entry(k).or_default().extend(v);
        }
    }
    Ok(all.into_iter().map(|(k, v)| (k.to_string(), v.iter().sum::<f64>() / v.len().max(1) as f64)).collect())
}

/// One metric of [`per_image`] over all batches (the bootstrap's per-image form).
pub fn per_image_metric(kinds: &[OutputKind], outs: &[Vec<Tensor>], clean: &[Vec<Tensor>], metric: &str) -> Result<Vec<f64>> {
    let mut v = Vec::new();
    for (o, c) in outs.iter().zip(clean) {
        let mut m = per_image(kinds, o, c)?;
        v.extend(m.remove(metric).ok_or_else(|| Error::Arg(format!("dense task: no metric {metric}")))?);
    }
    Ok(v)
}
