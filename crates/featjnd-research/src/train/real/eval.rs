//! Class-agnostic COCO evaluation of the detector on real crops, and the targets' own ceiling.

use serde_json::{json, Value};
use tch::{Device, Tensor};

use super::super::detect::{images, targets};
use crate::coco::Stats;
use crate::data::shapes::Scene;
use crate::eval::detect::{decode, ground_truth, score, to_coco, DecodeParams};
use crate::model::detector::ShapesDetector;
use crate::{Error, Result};

use super::data::*;

/// How detections are made class-agnostic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agnostic {
    /// Decode per class, then call every detection class 0.
    MapToZero,
    /// Maximum over the class heat-maps first, then decode (one class).
    MaxHeat,
}

/// Class-agnostic box and mask COCO statistics of `model` on `scenes` (all the same size).
pub fn evaluate_real(model: &ShapesDetector, scenes: &[Scene], device: Device, how: Agnostic) -> Result<(Stats, Stats)> {
    if scenes.is_empty() {
        return Err(Error::Arg("no scenes to evaluate".into()));
    }
    let (h, w) = (scenes[0].height, scenes[0].width);
    let mut dets = Vec::with_capacity(scenes.len());
    tch::no_grad(|| -> Result<()> {
        for chunk in scenes.chunks(16) {
            let mut out = model.forward_t(&images(chunk).to_device(device), false);
            if how == Agnostic::MaxHeat {
                out[0] = out[0].amax([1], true);
            }
            dets.extend(decode(&out, h, w, DecodeParams::default())?);
        }
        Ok(())
    })?;
    for d in dets.iter_mut().flatten() {
        d.class = 0;
    }
    score(&ground_truth(scenes)?, &to_coco(&dets, h, w))
}

/// The statistics of the targets themselves decoded as if they were the network's outputs: the
/// ceiling that the stride-4 heads and the vote grouping allow on these crops (not a model).
pub fn target_ceiling(scenes: &[Scene], classes: usize) -> Result<(Stats, Stats)> {
    let t = targets(scenes, classes);
    let heat = t.heat.clamp(1e-6, 1.0 - 1e-6).logit(None);
    let fg = (&t.fg - 0.5) * 20.0;
    let out = vec![heat, t.bx.shallow_clone(), Tensor::cat(&[fg, t.vote.shallow_clone()], 1)];
    let (h, w) = (scenes[0].height, scenes[0].width);
    let dets = decode(&out, h, w, DecodeParams::default())?;
    score(&ground_truth(scenes)?, &to_coco(&dets, h, w))
}

pub(super) fn ap_json(dataset: RealDataset, (b, m): &(Stats, Stats)) -> Value {
    if dataset.has_masks() {
        json!({"box_ap": b.ap, "box_ap50": b.ap50, "mask_ap": m.ap, "mask_ap50": m.ap50, "box": b, "mask": m})
    } else {
        json!({"box_ap": b.ap, "box_ap50": b.ap50, "box": b})
    }
}
