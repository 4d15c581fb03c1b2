//! Per-image outputs of one study point, kept so that a bootstrap replicate (a resample of the
//! held-out images with replacement) can be scored again: classification metrics are per-image
//! means, detection AP is recomputed on the resampled images (each drawn copy of an image is a
//! new image id, so duplicates count twice as in any bootstrap).

use super::tasks::Scorer;
use crate::coco::{self, GroundTruth, IouType};
use crate::eval::{detect, nanodet};
use crate::{Error, Result};
use tch::Tensor;

/// What a replicate needs to score one point.
#[derive(Debug, Clone)]
pub enum ImageOutputs {
    /// The metric is the mean of these per-image values (classification agreement or top-1).
    Mean(Vec<f64>),
    /// Shapes detector detections per image, scored against the scenes' ground truth.
    Scenes(Vec<Vec<detect::Det>>),
    /// NanoDet detections per image and the clean model's (the pseudo ground truth).
    Pseudo { dets: Vec<Vec<nanodet::Det>>, clean: Vec<Vec<nanodet::Det>> },
    /// No per-image form (a custom scorer): `n` images, replicates score NaN (no interval).
    Opaque(usize),
}

impl ImageOutputs {
    pub fn len(&self) -> usize {
        match self {
            ImageOutputs::Mean(v) => v.len(),
            ImageOutputs::Scenes(d) => d.len(),
            ImageOutputs::Pseudo { dets, .. } => dets.len(),
            ImageOutputs::Opaque(n) => *n,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The per-image outputs of `outs` (per batch) for `metric`, the first of the task's metrics.
pub fn outputs(scorer: &Scorer, outs: &[Vec<Tensor>], clean: &[Vec<Tensor>], metric: &str) -> Result<ImageOutputs> {
    match scorer {
        Scorer::Dense(kinds) => Ok(ImageOutputs::Mean(super::dense::per_image_metric(kinds, outs, clean, metric)?)),
        Scorer::Custom(_) => Ok(ImageOutputs::Opaque(outs.iter().map(|o| o.first().map_or(0, |t| t.size()[0] as usize)).sum())),
        Scorer::Labels(_) | Scorer::Unlabelled => super::perturb::per_image(scorer, outs, clean, metric)
            .map(ImageOutputs::Mean)
            .ok_or_else(|| Error::Arg(format!("no per-image form of metric {metric}"))),
        Scorer::Scenes { h, w, .. } => {
            let mut d = Vec::new();
            for o in outs {
                d.extend(detect::decode(o, *h, *w, detect::DecodeParams::default())?);
            }
            Ok(ImageOutputs::Scenes(d))
        }
        Scorer::Pseudo { h, w, .. } => {
            let p = nanodet::DecodeParams::default();
            let (mut dets, mut cl) = (Vec::new(), Vec::new());
            for (o, c) in outs.iter().zip(clean) {
                dets.extend(nanodet::decode(o, *h, *w, &p)?);
                cl.extend(nanodet::decode(c, *h, *w, &p)?);
            }
            Ok(ImageOutputs::Pseudo { dets, clean: cl })
        }
    }
}

/// The ground truth of the images `idx` of `gt` (image `k` of the result is `gt`'s image
/// `idx[k]`, renumbered `k + 1`; annotations copied with fresh ids).
fn resample_gt(gt: &GroundTruth, idx: &[usize]) -> Result<GroundTruth> {
    // Detections are numbered by position (`detect::to_coco`): the scenes' images must be too.
    if gt.images.iter().enumerate().any(|(k, im)| im.id != k as i64 + 1) {
        return Err(Error::Arg("ground truth images are not numbered 1..N in order".into()));
    }
    let mut images = Vec::with_capacity(idx.len());
    let mut annotations = Vec::new();
    for (k, &i) in idx.iter().enumerate() {
        let src = &gt.images[i];
        let mut im = src.clone();
        im.id = k as i64 + 1;
        images.push(im);
        for a in gt.annotations.iter().filter(|a| a.image_id == src.id) {
            let mut a = a.clone();
            a.image_id = k as i64 + 1;
            a.id = annotations.len() as i64 + 1;
            annotations.push(a);
        }
    }
    Ok(GroundTruth { images, categories: gt.categories.clone(), annotations })
}

/// The part of a [`Scorer`] that re-scores replicates: plain data, so replicates can be scored
/// on several threads (a `Scorer` holds tensors, which are not `Sync`).
#[derive(Clone, Copy)]
pub enum Rescorer<'a> {
    Mean,
    Scenes { gt: &'a GroundTruth, h: usize, w: usize },
    Pseudo { h: i64, w: i64, min_score: f32 },
    Opaque,
}

impl<'a> Rescorer<'a> {
    pub fn of(scorer: &'a Scorer) -> Self {
        match scorer {
            Scorer::Labels(_) | Scorer::Unlabelled | Scorer::Dense(_) => Rescorer::Mean,
            Scorer::Scenes { gt, h, w } => Rescorer::Scenes { gt, h: *h, w: *w },
            Scorer::Pseudo { h, w, min_score } => Rescorer::Pseudo { h: *h, w: *w, min_score: *min_score },
            Scorer::Custom(_) => Rescorer::Opaque,
        }
    }
}

/// `metric` of the point on the images `idx` (a bootstrap replicate).
pub fn score(scorer: Rescorer<'_>, out: &ImageOutputs, idx: &[usize], metric: &str) -> Result<f64> {
    let ap = |s: &coco::Stats| if metric.ends_with("ap50") { s.ap50 } else { s.ap };
    match (scorer, out) {
        (_, ImageOutputs::Opaque(_)) => Ok(f64::NAN),
        (_, ImageOutputs::Mean(v)) => Ok(idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len().max(1) as f64),
        (Rescorer::Scenes { gt, h, w }, ImageOutputs::Scenes(d)) => {
            let sub: Vec<Vec<detect::Det>> = idx.iter().map(|&i| d[i].clone()).collect();
            let iou = if metric.starts_with("mask") { IouType::Segm } else { IouType::Bbox };
            Ok(ap(&coco::evaluate(&resample_gt(gt, idx)?, &detect::to_coco(&sub, h, w), iou)?))
        }
        (Rescorer::Pseudo { h, w, min_score }, ImageOutputs::Pseudo { dets, clean }) => {
            let dp: Vec<Vec<nanodet::Det>> = idx.iter().map(|&i| dets[i].clone()).collect();
            let dc: Vec<Vec<nanodet::Det>> = idx.iter().map(|&i| clean[i].clone()).collect();
            let ids: Vec<i64> = (1..=idx.len() as i64).collect();
            let sizes = vec![(h as u32, w as u32); idx.len()];
            let gt = nanodet::pseudo_ground_truth(&dc, &ids, &sizes, min_score);
            Ok(ap(&coco::evaluate(&gt, &nanodet::to_coco(&dp, &ids), IouType::Bbox)?))
        }
        _ => Err(Error::Arg("per-image outputs do not match the scorer".into())),
    }
}
