//! Decoding the shapes detector's dense outputs into COCO detections (boxes and instance masks)
//! and scoring them with the COCO evaluator of [`crate::coco`].
//!
//! Boxes: centre peaks of the class heat-maps (3×3 max-pool suppression, top `max_dets`), size
//! `4·exp(box[0..2])`, centre `4·(cell + box[2..4])`. Masks: the foreground logit and the centre
//! votes are upsampled bilinearly to the image; a foreground pixel belongs to detection `k` when
//! its vote lands at least as close to `k`'s centre as to every *confident* centre (score ≥
//! `group_min`) and within `0.6·max(w, h) + 4` px of it.

use crate::coco::{self, Detection, GroundTruth, IouType, Stats};
use crate::data::shapes::{mask_to_rle, Scene, ShapeClass};
use crate::model::detector::{STRIDE, VOTE_UNIT};
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy)]
pub struct DecodeParams {
    pub max_dets: i64,
    pub score_min: f32,
    pub group_min: f32,
    /// Foreground logit above which a pixel joins a mask.
    pub fg_logit: f32,
    /// A mask stays inside its predicted box grown by this many pixels (`f32::INFINITY`: no clip).
    pub box_margin: f32,
}

impl Default for DecodeParams {
    fn default() -> Self {
        // fg_logit and box_margin: chosen on validation scenes, not the held-out ones
        // (`cargo run --release --example det_decode_tune`).
        DecodeParams { max_dets: 100, score_min: 0.01, group_min: 0.4, fg_logit: -0.5, box_margin: 0.0 }
    }
}

/// One decoded object.
#[derive(Debug, Clone)]
pub struct Det {
    pub class: usize,
    pub score: f32,
    /// `[x, y, w, h]` in pixels.
    pub bbox: [f32; 4],
    /// Row-major `H*W`, 1 = inside.
    pub mask: Vec<u8>,
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.copy_data(&mut v, n);
    v
}

/// Decodes the tail outputs `[heat, box, mask]` of a batch of `h × w` images.
pub fn decode(outputs: &[Tensor], h: usize, w: usize, p: DecodeParams) -> Result<Vec<Vec<Det>>> {
    let [heat, bx, mk] = outputs else {
        return Err(Error::Model(format!("detector outputs: expected [heat, box, mask], got {} tensors", outputs.len())));
    };
    let (b, k, gh, gw) = heat.size4()?;
    let prob = heat.to_kind(Kind::Float).sigmoid();
    let peaks = prob.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false);
    let keep = prob.eq_tensor(&peaks).to_kind(Kind::Float) * &prob;
    let n = p.max_dets.min(k * gh * gw);
    let (scores, idx) = keep.reshape([b, -1]).topk(n, -1, true, true);
    let (scores, idx) = (to_vec(&scores), to_vec(&idx.to_kind(Kind::Float)));
    let bx = to_vec(bx);
    let up = mk.to_kind(Kind::Float).upsample_bilinear2d([h as i64, w as i64], false, None, None);
    let up = to_vec(&up);
    let (gh, gw, k) = (gh as usize, gw as usize, k as usize);
    let cells = gh * gw;
    let s = STRIDE as f32;
    let mut out = Vec::with_capacity(b as usize);
    for i in 0..b as usize {
        let mut dets = Vec::new();
        let mut centres = Vec::new();
        for j in 0..n as usize {
            let score = scores[i * n as usize + j];
            if score < p.score_min {
                break;
            }
            let flat = idx[i * n as usize + j] as usize;
            let (class, cell) = (flat / cells, flat % cells);
            let (gy, gx) = (cell / gw, cell % gw);
            let at = |c: usize| bx[((i * 4 + c) * gh + gy) * gw + gx];
            let (bw, bh) = (s * at(0).exp(), s * at(1).exp());
            let (cx, cy) = (s * (gx as f32 + at(2)), s * (gy as f32 + at(3)));
            let x0 = (cx - bw / 2.0).clamp(0.0, w as f32);
            let y0 = (cy - bh / 2.0).clamp(0.0, h as f32);
            let x1 = (cx + bw / 2.0).clamp(0.0, w as f32);
            let y1 = (cy + bh / 2.0).clamp(0.0, h as f32);
            debug_assert!(class < k);
            dets.push(Det { class, score, bbox: [x0, y0, x1 - x0, y1 - y0], mask: Vec::new() });
            centres.push((cx, cy, 0.6 * bw.max(bh) + 4.0));
        }
        // Votes of the foreground pixels, and each one's squared distance to the nearest confident centre.
        let fg = &up[i * 3 * h * w..][..h * w];
        let (vx, vy) = (&up[(i * 3 + 1) * h * w..][..h * w], &up[(i * 3 + 2) * h * w..][..h * w]);
        let confident: Vec<usize> = (0..dets.len()).filter(|&d| dets[d].score >= p.group_min).collect();
        let mut votes = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let q = y * w + x;
                if fg[q] > p.fg_logit {
                    let v = (x as f32 + 0.5 + VOTE_UNIT as f32 * vx[q], y as f32 + 0.5 + VOTE_UNIT as f32 * vy[q]);
                    let near = confident
                        .iter()
                        .map(|&d| (v.0 - centres[d].0).powi(2) + (v.1 - centres[d].1).powi(2))
                        .fold(f32::INFINITY, f32::min);
                    votes.push((q, v, near));
                }
            }
        }
        for (d, det) in dets.iter_mut().enumerate() {
            let (cx, cy, cap) = centres[d];
            let [bx0, by0, bw, bh] = det.bbox;
            let m = p.box_margin;
            let inside = |q: usize| {
                let (x, y) = ((q % w) as f32 + 0.5, (q / w) as f32 + 0.5);
                x >= bx0 - m && x <= bx0 + bw + m && y >= by0 - m && y <= by0 + bh + m
            };
            let mut mask = vec![0u8; h * w];
            for &(q, v, near) in &votes {
                let dist = (v.0 - cx).powi(2) + (v.1 - cy).powi(2);
                if dist <= near && dist <= cap * cap && inside(q) {
                    mask[q] = 1;
                }
            }
            det.mask = mask;
        }
        out.push(dets);
    }
    Ok(out)
}

/// COCO detections of `dets` (per image; image ids are 1-based positions, as in
/// [`crate::data::shapes::to_coco`]).
pub fn to_coco(dets: &[Vec<Det>], h: usize, w: usize) -> Vec<Detection> {
    let mut v = Vec::new();
    for (i, ds) in dets.iter().enumerate() {
        for d in ds {
            let class = ShapeClass::from_id(d.class).map(|c| c.coco_id()).unwrap_or(d.class as i64 + 1);
            v.push(Detection {
                image_id: i as i64 + 1,
                category_id: class,
                bbox: Some(d.bbox.map(|x| x as f64)),
                segmentation: Some(serde_json::json!({"size": [h, w], "counts": mask_to_rle(&d.mask, h, w)})),
                score: d.score as f64,
            });
        }
    }
    v
}

/// COCO ground truth of shapes scenes.
pub fn ground_truth(scenes: &[Scene]) -> Result<GroundTruth> {
    coco::parse_gt(&crate::data::shapes::to_coco(scenes).to_string())
}

/// Box and mask COCO statistics of `dets` against `gt`.
pub fn score(gt: &GroundTruth, dets: &[Detection]) -> Result<(Stats, Stats)> {
    Ok((coco::evaluate(gt, dets, IouType::Bbox)?, coco::evaluate(gt, dets, IouType::Segm)?))
}
