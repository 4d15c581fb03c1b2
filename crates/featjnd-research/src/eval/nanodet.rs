//! Decoding NanoDet's outputs ([`crate::model::nanodet`]) into COCO detections, ground truth for
//! the [`crate::coco`] evaluator (real VOC boxes, or the clean model's detections as pseudo ground
//! truth), and a task discrepancy for the estimator.
//!
//! Decoding follows NanoDet's `GFLHead.get_bboxes` + `multiclass_nms`: per level with stride `s`
//! and an `gh × gw` grid, anchor point `n` sits at `((n mod gw + 0.5)·s, (n div gw + 0.5)·s)` (the
//! +0.5 was measured on the VOC photos, docs/nanodet.md §5); each side's distance is
//! `s · Σ_k softmax(logits)_k · k` over the 11 bins (`side·11 + bin`, sides left, top, right,
//! bottom); boxes are clipped to the input frame. Scores are `sigmoid(cls)` (quality-focal scores:
//! good boxes often score only 0.4–0.7). Per level the 1000 points with the highest class score
//! are kept; every `(point, class)` above `score_min` is a candidate; greedy NMS per class at IoU
//! `nms_iou` (continuous coordinates, no +1); the `max_dets` best of the image remain.

use crate::coco::{Category, Detection, GroundTruth, GtAnnotation, Image};
use crate::model::nanodet::{BINS, NUM_CLASSES, STRIDES};
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// COCO category ids of NanoDet's 80 contiguous classes.
pub const COCO_IDS: [i64; 80] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79,
    80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
];

/// COCO class names, in NanoDet's class order.
pub const COCO_NAMES: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

/// The class index of a COCO name, or of a Pascal VOC name (`aeroplane`, `diningtable`,
/// `motorbike`, `pottedplant`, `sofa`, `tvmonitor` are VOC's spellings). All 20 VOC classes are COCO
/// classes.
pub fn class_index(name: &str) -> Option<usize> {
    let coco = match name {
        "aeroplane" => "airplane",
        "diningtable" => "dining table",
        "motorbike" => "motorcycle",
        "pottedplant" => "potted plant",
        "sofa" => "couch",
        "tvmonitor" => "tv",
        n => n,
    };
    COCO_NAMES.iter().position(|&n| n == coco)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeParams {
    /// Candidates need a class score above this (NanoDet's COCO evaluation: 0.05).
    pub score_min: f32,
    /// Per-class NMS IoU threshold (NanoDet: 0.6).
    pub nms_iou: f32,
    /// Detections kept per image (COCO: 100).
    pub max_dets: usize,
    /// Points kept per level before NMS, by their best class score (NanoDet: 1000).
    pub pre_nms: usize,
}

impl Default for DecodeParams {
    fn default() -> Self {
        DecodeParams { score_min: 0.05, nms_iou: 0.6, max_dets: 100, pre_nms: 1000 }
    }
}

/// One detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Det {
    /// NanoDet class index (`COCO_NAMES[class]`, COCO id `COCO_IDS[class]`).
    pub class: usize,
    pub score: f32,
    /// `[x0, y0, x1, y1]` corners in pixels of the frame it was decoded in (see [`rescale`]).
    pub xyxy: [f32; 4],
}

impl Det {
    /// COCO `[x, y, w, h]`.
    pub fn xywh(&self) -> [f32; 4] {
        let [x0, y0, x1, y1] = self.xyxy;
        [x0, y0, x1 - x0, y1 - y0]
    }
}

/// IoU of two corner boxes (continuous coordinates; 0 when either is empty).
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    let t = t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.f_copy_data(&mut v, n)?;
    Ok(v)
}

/// Per-side distances in strides, `Σ_k softmax(reg)_k · k`: `[B, N, 44]` → `[B, N, 4]`.
pub fn distances(reg: &Tensor) -> Tensor {
    let size = reg.size();
    let bins = Tensor::arange(BINS, (Kind::Float, reg.device()));
    let p = reg.to_kind(Kind::Float).reshape([size[0], size[1], 4, BINS]).softmax(-1, Kind::Float);
    (p * bins).sum_dim_intlist(-1, false, Kind::Float)
}

/// Decodes the model outputs `[cls logits [B, N, 80], reg logits [B, N, 44]]` of a batch of
/// `height × width` inputs into detections in that frame, per image, best first.
pub fn decode(outputs: &[Tensor], height: i64, width: i64, p: &DecodeParams) -> Result<Vec<Vec<Det>>> {
    let [cls, reg] = outputs else {
        return Err(Error::Model(format!("nanodet outputs: expected [cls, reg], got {} tensors", outputs.len())));
    };
    let n = crate::model::nanodet::num_points(height, width);
    let (cs, rs) = (cls.size(), reg.size());
    if cs.len() != 3 || rs.len() != 3 || cs[0] != rs[0] || cs[1] != n || rs[1] != n || cs[2] != NUM_CLASSES || rs[2] != 4 * BINS {
        return Err(Error::Shape(format!(
            "nanodet outputs for a {height}×{width} input must be [B, {n}, {NUM_CLASSES}] and [B, {n}, {}], got {cs:?} and {rs:?}",
            4 * BINS
        )));
    }
    let b = cs[0] as usize;
    let (n, k) = (n as usize, NUM_CLASSES as usize);
    let scores = to_vec(&cls.to_kind(Kind::Float).sigmoid())?;
    let dist = to_vec(&distances(reg))?;
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        // Candidates per class: (score, box).
        let mut cand: Vec<Vec<(f32, [f32; 4])>> = vec![Vec::new(); k];
        let mut row0 = 0usize;
        for &s in &STRIDES {
            let (gh, gw) = ((height / s) as usize, (width / s) as usize);
            let rows = row0..row0 + gh * gw;
            let best = |r: usize| {
                let o = (i * n + r) * k;
                scores[o..o + k].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
            };
            let mut keep: Vec<usize> = rows.clone().collect();
            if keep.len() > p.pre_nms {
                // Stable: equal scores keep the lower row first.
                keep.sort_by(|&a, &c| best(c).total_cmp(&best(a)));
                keep.truncate(p.pre_nms);
            }
            let sf = s as f32;
            for r in keep {
                let cell = r - row0;
                let (cx, cy) = (((cell % gw) as f32 + 0.5) * sf, ((cell / gw) as f32 + 0.5) * sf);
                let d = &dist[(i * n + r) * 4..(i * n + r) * 4 + 4];
                let bx = [
                    (cx - d[0] * sf).clamp(0.0, width as f32),
                    (cy - d[1] * sf).clamp(0.0, height as f32),
                    (cx + d[2] * sf).clamp(0.0, width as f32),
                    (cy + d[3] * sf).clamp(0.0, height as f32),
                ];
                let o = (i * n + r) * k;
                for (c, &sc) in scores[o..o + k].iter().enumerate() {
                    if sc > p.score_min {
                        cand[c].push((sc, bx));
                    }
                }
            }
            row0 += gh * gw;
        }
        let mut dets = Vec::new();
        for (c, mut v) in cand.into_iter().enumerate() {
            v.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut kept: Vec<(f32, [f32; 4])> = Vec::new();
            for (sc, bx) in v {
                if kept.iter().all(|(_, q)| iou(q, &bx) <= p.nms_iou) {
                    kept.push((sc, bx));
                }
            }
            dets.extend(kept.into_iter().map(|(score, xyxy)| Det { class: c, score, xyxy }));
        }
        dets.sort_by(|a, b| b.score.total_cmp(&a.score));
        dets.truncate(p.max_dets);
        out.push(dets);
    }
    Ok(out)
}

/// Maps detections from a `from = (h, w)` frame (the network input) to `to = (h, w)` (the photo).
pub fn rescale(dets: &[Det], from: (i64, i64), to: (u32, u32)) -> Vec<Det> {
    let (sy, sx) = (to.0 as f32 / from.0 as f32, to.1 as f32 / from.1 as f32);
    dets.iter()
        .map(|d| {
            let [x0, y0, x1, y1] = d.xyxy;
            Det { xyxy: [x0 * sx, y0 * sy, x1 * sx, y1 * sy], ..*d }
        })
        .collect()
}

/// COCO detections; `image_ids[i]` is the id of image `i` of `dets`.
pub fn to_coco(dets: &[Vec<Det>], image_ids: &[i64]) -> Vec<Detection> {
    dets.iter()
        .zip(image_ids)
        .flat_map(|(ds, &id)| {
            ds.iter().map(move |d| Detection {
                image_id: id,
                category_id: COCO_IDS[d.class],
                bbox: Some(d.xywh().map(|v| v as f64)),
                segmentation: None,
                score: d.score as f64,
            })
        })
        .collect()
}

/// One image of ground truth: id, size and `(class index, corner box)` objects.
#[derive(Debug, Clone, PartialEq)]
pub struct GtImage {
    pub id: i64,
    pub height: u32,
    pub width: u32,
    pub boxes: Vec<(usize, [f32; 4])>,
}

/// A COCO ground truth of `images` evaluated on `classes` (NanoDet indices; detections of other
/// classes are dropped by the evaluator, as pycocotools does for categories outside `catIds`).
/// Box areas are `w·h`; nothing is crowd.
pub fn ground_truth(images: &[GtImage], classes: &[usize]) -> GroundTruth {
    let mut annotations = Vec::new();
    for im in images {
        for &(c, b) in &im.boxes {
            let (w, h) = ((b[2] - b[0]) as f64, (b[3] - b[1]) as f64);
            annotations.push(GtAnnotation {
                id: annotations.len() as i64 + 1,
                image_id: im.id,
                category_id: COCO_IDS[c],
                bbox: Some([b[0] as f64, b[1] as f64, w, h]),
                segmentation: None,
                area: w * h,
                iscrowd: false,
                ignore: false,
            });
        }
    }
    GroundTruth {
        images: images.iter().map(|im| Image { id: im.id, height: Some(im.height as u64), width: Some(im.width as u64) }).collect(),
        categories: classes.iter().map(|&c| Category { id: COCO_IDS[c] }).collect(),
        annotations,
    }
}

/// The clean model's detections with `score ≥ min_score` as pseudo ground truth over all 80
/// classes (the agreement protocol of feature coding: perturbed detections are scored against
/// them). `sizes[i] = (h, w)` of image `i`, in the frame of the boxes.
pub fn pseudo_ground_truth(clean: &[Vec<Det>], image_ids: &[i64], sizes: &[(u32, u32)], min_score: f32) -> GroundTruth {
    let images: Vec<GtImage> = clean
        .iter()
        .zip(image_ids)
        .zip(sizes)
        .map(|((ds, &id), &(height, width))| GtImage {
            id,
            height,
            width,
            boxes: ds.iter().filter(|d| d.score >= min_score).map(|d| (d.class, d.xyxy)).collect(),
        })
        .collect();
    let all: Vec<usize> = (0..NUM_CLASSES as usize).collect();
    ground_truth(&images, &all)
}

/// `[B]` discrepancies between clean and perturbed outputs `[cls, reg]` (differentiable in the
/// perturbed ones): the Bernoulli KL of the class scores summed over points and classes and
/// normalised by the clean score mass (≈ per object), plus the KL of the 4 side distributions
/// weighted by the clean point's best class score (normalised by the weights). Zero when equal.
pub fn discrepancy(clean: &[Tensor], pert: &[Tensor]) -> Tensor {
    let eps = 1e-6;
    let sum1 = |t: &Tensor| t.flatten(1, -1).sum_dim_intlist(1, false, Kind::Float);
    let (c, q) = (&clean[0], &pert[0]);
    let p = c.sigmoid();
    let kl_cls = &p * (c.log_sigmoid() - q.log_sigmoid()) + (p.neg() + 1.0) * (c.neg().log_sigmoid() - q.neg().log_sigmoid());
    let d_cls = sum1(&kl_cls) / (sum1(&p) + eps);
    let s = clean[1].size();
    let lc = clean[1].reshape([s[0], s[1], 4, BINS]).log_softmax(-1, Kind::Float);
    let lq = pert[1].reshape([s[0], s[1], 4, BINS]).log_softmax(-1, Kind::Float);
    let kl_box = (lc.exp() * (lc - lq)).sum_dim_intlist([2i64, 3].as_slice(), false, Kind::Float);
    let w = p.amax([2i64].as_slice(), false);
    let d_box = sum1(&(kl_box * &w)) / (sum1(&w) + eps);
    d_cls + d_box
}
