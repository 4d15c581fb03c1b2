//! COCO-style detection evaluation that reproduces pycocotools' `COCOeval` for `iouType="bbox"` and
//! `"segm"`.
//!
//! The steps follow COCOeval: group ground truth (GT) and detections per (image, category), compute
//! their IoU matrix, match per area range and IoU threshold (`evaluateImg`), accumulate precision at
//! 101 recall points and the final recall (`accumulate`), and reduce to the 12 [`Stats`] (`summarize`).
//!
//! Matching and accumulation see nothing but an IoU matrix, crowd flags and areas. For segm the IoU
//! is that of masks (polygons or RLE, see [`rle`]; crowd GT: intersection / detection area), and a
//! detection's area follows `COCO.loadRes`: if the first detection has a non-empty `bbox`, every
//! detection's area is its box's `w*h` (and one without a `segmentation` gets its box as mask);
//! otherwise every detection needs a `segmentation` and its area is the mask's. GT areas are always
//! the `area` field.
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use serde::de::Error as _;
use serde_json::Value;

use crate::{Error, Result};

pub mod rle;
pub use rle::Rle;

/// A COCO ground-truth file. Fields the evaluation does not use (names, ...) are skipped.
#[derive(Debug, Clone, Deserialize)]
pub struct GroundTruth {
    pub images: Vec<Image>,
    /// The evaluated categories: as in pycocotools, annotations and detections of other ids are dropped.
    pub categories: Vec<Category>,
    #[serde(default)]
    pub annotations: Vec<GtAnnotation>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Image {
    pub id: i64,
    /// The mask size of polygons (segm only).
    pub height: Option<u64>,
    pub width: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Category {
    pub id: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GtAnnotation {
    pub id: i64,
    pub image_id: i64,
    pub category_id: i64,
    /// `[x, y, w, h]`; needed for bbox evaluation only.
    #[serde(default, deserialize_with = "opt_box")]
    pub bbox: Option<[f64; 4]>,
    /// Polygons `[[x1, y1, x2, y2, ...], ...]` or an RLE `{"size": [h, w], "counts": ...}` with
    /// counts as a list or a compressed string; needed for segm evaluation only.
    #[serde(default)]
    pub segmentation: Option<Value>,
    /// Used for the area ranges (for COCO it is the mask area, not `w*h`).
    pub area: f64,
    #[serde(default, deserialize_with = "flag")]
    pub iscrowd: bool,
    /// Parsed but not used: pycocotools overwrites `ignore` with `iscrowd` before evaluating.
    #[serde(default, deserialize_with = "flag")]
    pub ignore: bool,
}

/// One entry of a detection (results) file.
#[derive(Debug, Clone, Deserialize)]
pub struct Detection {
    pub image_id: i64,
    pub category_id: i64,
    /// `[x, y, w, h]`; an empty list counts as absent. Needed for bbox evaluation.
    #[serde(default, deserialize_with = "opt_box")]
    pub bbox: Option<[f64; 4]>,
    /// As for [`GtAnnotation::segmentation`]; for segm evaluation.
    #[serde(default)]
    pub segmentation: Option<Value>,
    pub score: f64,
}

/// A box: absent, `null` and `[]` are None, otherwise exactly 4 numbers.
fn opt_box<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<[f64; 4]>, D::Error> {
    match Option::<Vec<f64>>::deserialize(d)? {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => <[f64; 4]>::try_from(v).map(Some).map_err(|v| D::Error::custom(format!("bbox has {} numbers, not 4", v.len()))),
    }
}

/// A COCO 0/1 flag: files write it as an integer or as a bool.
fn flag<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Num(f64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Bool(b) => b,
        Raw::Num(n) => n != 0.0,
    })
}

/// What the IoU is measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IouType {
    #[default]
    Bbox,
    /// Mask IoU (see the module docs).
    Segm,
}

impl FromStr for IouType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bbox" => Ok(IouType::Bbox),
            "segm" => Ok(IouType::Segm),
            _ => Err(Error::Arg(format!("unknown iou type {s:?} (expected bbox or segm)"))),
        }
    }
}

/// The 12 numbers of pycocotools' `COCOeval.stats` for bbox/segm; -1 where undefined (no GT).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    #[serde(rename = "AP")]
    pub ap: f64,
    #[serde(rename = "AP50")]
    pub ap50: f64,
    #[serde(rename = "AP75")]
    pub ap75: f64,
    #[serde(rename = "APs")]
    pub ap_small: f64,
    #[serde(rename = "APm")]
    pub ap_medium: f64,
    #[serde(rename = "APl")]
    pub ap_large: f64,
    #[serde(rename = "AR1")]
    pub ar1: f64,
    #[serde(rename = "AR10")]
    pub ar10: f64,
    #[serde(rename = "AR100")]
    pub ar100: f64,
    #[serde(rename = "ARs")]
    pub ar_small: f64,
    #[serde(rename = "ARm")]
    pub ar_medium: f64,
    #[serde(rename = "ARl")]
    pub ar_large: f64,
}

impl Stats {
    /// In `COCOeval.stats` order.
    pub fn to_array(&self) -> [f64; 12] {
        [
            self.ap,
            self.ap50,
            self.ap75,
            self.ap_small,
            self.ap_medium,
            self.ap_large,
            self.ar1,
            self.ar10,
            self.ar100,
            self.ar_small,
            self.ar_medium,
            self.ar_large,
        ]
    }

    pub fn from_array(s: [f64; 12]) -> Self {
        let [ap, ap50, ap75, ap_small, ap_medium, ap_large, ar1, ar10, ar100, ar_small, ar_medium, ar_large] = s;
        Stats { ap, ap50, ap75, ap_small, ap_medium, ap_large, ar1, ar10, ar100, ar_small, ar_medium, ar_large }
    }

    /// The 12 lines that pycocotools' `summarize()` prints.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (row, v) in SUMMARY.iter().zip(self.to_array()) {
            let (title, kind) = if row.ap { ("Average Precision", "(AP)") } else { ("Average Recall", "(AR)") };
            let iou = match row.iou {
                None => "0.50:0.95",
                Some(0) => "0.50",
                Some(_) => "0.75",
            };
            let (area, dets) = (AREA_LABELS[row.area], MAX_DETS[row.max_dets]);
            out += &format!(" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6} | maxDets={dets:>3} ] = {v:.3}\n");
        }
        out
    }
}

// ---------- parameters (COCOeval's Params.setDetParams) ----------

const T: usize = 10;
const R: usize = 101;
const MAX_DETS: [usize; 3] = [1, 10, 100];
const AREA_RANGES: [(f64, f64); 4] = [(0.0, 1e10), (0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)];
const AREA_LABELS: [&str; 4] = ["all", "small", "medium", "large"];

/// numpy's `linspace(start, stop, n)`: `i * step + start`, last point exactly `stop`. Matching it
/// bit for bit matters for IoUs that sit right on a threshold (0.9 is 0.8999999999999999 there).
fn linspace<const N: usize>(start: f64, stop: f64) -> [f64; N] {
    let step = (stop - start) / (N - 1) as f64;
    let mut v = [0.0; N];
    for (i, x) in v.iter_mut().enumerate() {
        *x = i as f64 * step + start;
    }
    v[N - 1] = stop;
    v
}

/// One summary number: AP or AR, IoU threshold index (None: mean over all), area and maxDets index.
struct Row {
    ap: bool,
    iou: Option<usize>,
    area: usize,
    max_dets: usize,
}

const fn row(ap: bool, iou: Option<usize>, area: usize, max_dets: usize) -> Row {
    Row { ap, iou, area, max_dets }
}

/// `_summarizeDets`: thresholds 0 and 5 are IoU .50 and .75.
const SUMMARY: [Row; 12] = [
    row(true, None, 0, 2),
    row(true, Some(0), 0, 2),
    row(true, Some(5), 0, 2),
    row(true, None, 1, 2),
    row(true, None, 2, 2),
    row(true, None, 3, 2),
    row(false, None, 0, 0),
    row(false, None, 0, 1),
    row(false, None, 0, 2),
    row(false, None, 1, 2),
    row(false, None, 2, 2),
    row(false, None, 3, 2),
];

// ---------- loading and checks ----------

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Io(format!("{}: cannot read: {e}", path.display())))
}

/// Parses a COCO ground-truth JSON text (checked by [`evaluate`]).
pub fn parse_gt(text: &str) -> Result<GroundTruth> {
    serde_json::from_str(text).map_err(|e| Error::Arg(format!("invalid COCO ground truth: {e}")))
}

/// Parses a detection JSON text: a list of `{image_id, category_id, bbox and/or segmentation, score}`.
pub fn parse_dt(text: &str) -> Result<Vec<Detection>> {
    serde_json::from_str(text).map_err(|e| {
        Error::Arg(format!("invalid COCO detections (expected a list of {{image_id, category_id, bbox and/or segmentation, score}}): {e}"))
    })
}

/// An argument error's message prefixed with `what`: the file or item it is about.
fn within(what: impl std::fmt::Display, e: Error) -> Error {
    match e {
        Error::Arg(m) => Error::Arg(format!("{what}: {m}")),
        e => e,
    }
}

pub fn load_gt(path: &Path) -> Result<GroundTruth> {
    parse_gt(&read(path)?).map_err(|e| within(path.display(), e))
}

pub fn load_dt(path: &Path) -> Result<Vec<Detection>> {
    parse_dt(&read(path)?).map_err(|e| within(path.display(), e))
}

fn check_box(what: &str, b: &[f64; 4]) -> Result<()> {
    if b.iter().any(|v| !v.is_finite()) || b[2] < 0.0 || b[3] < 0.0 {
        return Err(Error::Arg(format!("{what}: bbox {b:?} must be finite with width and height >= 0")));
    }
    Ok(())
}

/// What pycocotools would reject or silently mangle: unknown images, duplicate GT ids, bad boxes.
/// Boxes are needed for bbox evaluation only; masks are checked when they are decoded.
fn validate(gt: &GroundTruth, dets: &[Detection], iou_type: IouType) -> Result<()> {
    let images: HashSet<i64> = gt.images.iter().map(|i| i.id).collect();
    let need_box = |what: &str, b: &Option<[f64; 4]>| match b {
        Some(b) => check_box(what, b),
        None if iou_type == IouType::Bbox => Err(Error::Arg(format!("{what}: no bbox"))),
        None => Ok(()),
    };
    let mut ids = HashSet::new();
    for a in &gt.annotations {
        let what = format!("ground-truth annotation id {}", a.id);
        need_box(&what, &a.bbox)?;
        if !(a.area >= 0.0) || !a.area.is_finite() {
            return Err(Error::Arg(format!("{what}: area {} must be finite and >= 0", a.area)));
        }
        if !images.contains(&a.image_id) {
            return Err(Error::Arg(format!("{what}: image_id {} is not in `images`", a.image_id)));
        }
        if !ids.insert(a.id) {
            return Err(Error::Arg(format!("{what}: duplicate annotation id")));
        }
    }
    for (n, d) in dets.iter().enumerate() {
        let what = format!("detection #{n}");
        need_box(&what, &d.bbox)?;
        if !d.score.is_finite() {
            return Err(Error::Arg(format!("{what}: score {} must be finite", d.score)));
        }
        if !images.contains(&d.image_id) {
            return Err(Error::Arg(format!("{what}: image_id {} is not an image of the ground truth", d.image_id)));
        }
    }
    Ok(())
}

// ---------- masks (segm) ----------

/// Decodes a segmentation as pycocotools' `COCO.annToRLE`: polygons (merged into one mask, sized by
/// the image), or an RLE with its own size and counts as a list or a compressed string. A polygon
/// needs at least 3 points (pycocotools fails on fewer: given 4 numbers it tries to read boxes).
pub fn decode_segmentation(seg: &Value, image: &Image) -> Result<Rle> {
    let number = |v: &Value| v.as_f64().ok_or_else(|| Error::Arg(format!("{v} is not a number")));
    match seg {
        Value::Array(parts) => {
            let (Some(h), Some(w)) = (image.height, image.width) else {
                return Err(Error::Arg(format!("polygons need the height and width of image {}", image.id)));
            };
            let parts: Vec<Vec<f64>> = parts
                .iter()
                .map(|p| match p {
                    Value::Array(xy) => xy.iter().map(number).collect(),
                    _ => Err(Error::Arg(format!("polygon {p} is not a list of numbers"))),
                })
                .collect::<Result<_>>()?;
            let masks: Vec<Rle> = parts.iter().map(|p| Rle::from_polygon(p, h, w)).collect::<Result<_>>()?;
            Rle::union(&masks)
        }
        Value::Object(o) => {
            let size = o.get("size").and_then(Value::as_array).and_then(|s| match &s[..] {
                [h, w] => Some((h.as_u64()?, w.as_u64()?)),
                _ => None,
            });
            let Some((h, w)) = size else {
                return Err(Error::Arg("an RLE needs \"size\": [height, width]".into()));
            };
            match o.get("counts") {
                Some(Value::String(s)) => Rle::from_compressed(h, w, s),
                Some(Value::Array(c)) => {
                    let run = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
                    let counts = c.iter().map(|v| run(v).ok_or_else(|| Error::Arg(format!("RLE count {v} is not in 0..2^32"))));
                    Rle::new(h, w, counts.collect::<Result<_>>()?)
                }
                _ => Err(Error::Arg("an RLE needs \"counts\": a list or a compressed string".into())),
            }
        }
        _ => Err(Error::Arg(format!("a segmentation is a list of polygons or an RLE object, not {seg}"))),
    }
}

/// The masks of all GTs and detections, and the detections' areas (see the module docs).
struct Masks {
    gt: Vec<Rle>,
    dt: Vec<Rle>,
    dt_area: Vec<f64>,
}

fn masks(gt: &GroundTruth, dets: &[Detection]) -> Result<Masks> {
    let images: HashMap<i64, &Image> = gt.images.iter().map(|i| (i.id, i)).collect();
    let decode = |what: &str, seg: Option<&Value>, image_id: i64| {
        let seg = seg.ok_or_else(|| Error::Arg(format!("{what}: no segmentation")))?;
        decode_segmentation(seg, images[&image_id]).map_err(|e| within(what, e))
    };
    let gt_masks = gt
        .annotations
        .iter()
        .map(|a| decode(&format!("ground-truth annotation id {}", a.id), a.segmentation.as_ref(), a.image_id))
        .collect::<Result<_>>()?;
    let by_box = dets.first().is_some_and(|d| d.bbox.is_some());
    let (mut dt, mut dt_area) = (Vec::with_capacity(dets.len()), Vec::with_capacity(dets.len()));
    for (n, d) in dets.iter().enumerate() {
        let what = format!("detection #{n}");
        let mask = match (by_box, d.bbox, &d.segmentation) {
            (true, None, _) => return Err(Error::Arg(format!("{what}: no bbox (the first detection has one)"))),
            (true, Some([x, y, w, h]), None) => {
                decode(&what, Some(&Value::from(vec![vec![x, y, x, y + h, x + w, y + h, x + w, y]])), d.image_id)?
            }
            _ => decode(&what, d.segmentation.as_ref(), d.image_id)?,
        };
        dt_area.push(match d.bbox {
            Some(b) if by_box => b[2] * b[3],
            _ => mask.area() as f64,
        });
        dt.push(mask);
    }
    Ok(Masks { gt: gt_masks, dt, dt_area })
}

// ---------- evaluation ----------

/// Loads both files and evaluates them.
pub fn evaluate_files(gt: &Path, dt: &Path, iou_type: IouType) -> Result<Stats> {
    evaluate(&load_gt(gt)?, &load_dt(dt)?, iou_type)
}

/// Score descending; ties equal, so a stable sort keeps file order (numpy's mergesort on -score).
fn by_score(a: f64, b: f64) -> Ordering {
    b.partial_cmp(&a).unwrap_or(Ordering::Equal)
}

/// GT and detections of one (image, category) as indices into the inputs, detections best first
/// and cut to 100.
#[derive(Default)]
struct Cell {
    gts: Vec<usize>,
    dts: Vec<usize>,
    /// `ious[d][g]`, GT in file order.
    ious: Vec<Vec<f64>>,
}

/// What `evaluate_image` needs of the inputs.
struct Inputs<'a> {
    gt: &'a [GtAnnotation],
    dt_score: Vec<f64>,
    dt_area: Vec<f64>,
}

/// Runs COCOeval (evaluate, accumulate, summarize) with the default parameters.
pub fn evaluate(gt: &GroundTruth, dets: &[Detection], iou_type: IouType) -> Result<Stats> {
    validate(gt, dets, iou_type)?;
    let masks = match iou_type {
        IouType::Bbox => None,
        IouType::Segm => Some(masks(gt, dets)?),
    };
    let imgs: BTreeSet<i64> = gt.images.iter().map(|i| i.id).collect();
    let cats: BTreeSet<i64> = gt.categories.iter().map(|c| c.id).collect();
    let img_ix: HashMap<i64, usize> = imgs.iter().enumerate().map(|(n, &id)| (id, n)).collect();
    let cat_ix: HashMap<i64, usize> = cats.iter().enumerate().map(|(n, &id)| (id, n)).collect();

    // Keyed (category, image) so that a category's cells come out in image-id order. Validation
    // made every image id known; unknown categories are dropped, as pycocotools does.
    let mut cells: BTreeMap<(usize, usize), Cell> = BTreeMap::new();
    for (n, a) in gt.annotations.iter().enumerate() {
        if let Some(&k) = cat_ix.get(&a.category_id) {
            cells.entry((k, img_ix[&a.image_id])).or_default().gts.push(n);
        }
    }
    for (n, d) in dets.iter().enumerate() {
        if let Some(&k) = cat_ix.get(&d.category_id) {
            cells.entry((k, img_ix[&d.image_id])).or_default().dts.push(n);
        }
    }
    for c in cells.values_mut() {
        c.dts.sort_by(|&a, &b| by_score(dets[a].score, dets[b].score));
        c.dts.truncate(MAX_DETS[2]);
        c.ious = c
            .dts
            .iter()
            .map(|&d| {
                c.gts
                    .iter()
                    .map(|&g| {
                        let crowd = gt.annotations[g].iscrowd;
                        match &masks {
                            // validate() made the boxes present.
                            None => box_iou(&dets[d].bbox.unwrap(), &gt.annotations[g].bbox.unwrap(), crowd),
                            Some(m) => Rle::iou(&m.dt[d], &m.gt[g], crowd),
                        }
                    })
                    .collect()
            })
            .collect();
    }
    let inputs = Inputs {
        gt: &gt.annotations,
        dt_score: dets.iter().map(|d| d.score).collect(),
        dt_area: match masks {
            Some(m) => m.dt_area,
            None => dets.iter().map(|d| d.bbox.map_or(0.0, |b| b[2] * b[3])).collect(),
        },
    };

    let thresholds = linspace::<T>(0.5, 0.95);
    let (na, nm) = (AREA_RANGES.len(), MAX_DETS.len());
    let mut curves: Vec<Option<Curve>> = vec![None; cats.len() * na * nm];
    for k in 0..cats.len() {
        let mine: Vec<&Cell> = cells.range((k, 0)..(k + 1, 0)).map(|(_, c)| c).collect();
        for (a, &range) in AREA_RANGES.iter().enumerate() {
            let evals: Vec<ImageEval> = mine.iter().map(|c| evaluate_image(c, &inputs, range, &thresholds)).collect();
            for (m, &max_det) in MAX_DETS.iter().enumerate() {
                curves[(k * na + a) * nm + m] = accumulate(&evals, max_det);
            }
        }
    }
    Ok(summarize(&curves, cats.len()))
}

/// pycocotools' `bbIou` on `[x, y, w, h]` (no +1 on widths). Against a crowd GT the union is the
/// detection's area: a detection inside a crowd region scores 1 however large the region.
fn box_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[0] + d[2]).min(g[0] + g[2]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[1] + d[3]).min(g[1] + g[3]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let (inter, det_area) = (w * h, d[2] * d[3]);
    let union = if crowd { det_area } else { det_area + g[2] * g[3] - inter };
    inter / union
}

/// `evaluateImg` for one cell and area range: per detection and threshold, matched / ignored.
struct ImageEval {
    scores: Vec<f64>,
    matched: Vec<[bool; T]>,
    ignored: Vec<[bool; T]>,
    /// GTs that count (not crowd, area in range).
    n_gt: usize,
}

fn evaluate_image(c: &Cell, inp: &Inputs, (lo, hi): (f64, f64), thresholds: &[f64; T]) -> ImageEval {
    let outside = |area: f64| area < lo || area > hi;
    let gts: Vec<&GtAnnotation> = c.gts.iter().map(|&g| &inp.gt[g]).collect();
    // Regular GTs first, ignored ones last (stable), so a regular match is never given up for them.
    let mut order: Vec<usize> = (0..gts.len()).collect();
    order.sort_by_key(|&g| gts[g].iscrowd || outside(gts[g].area));
    let ignored_gt: Vec<bool> = order.iter().map(|&g| gts[g].iscrowd || outside(gts[g].area)).collect();

    let nd = c.dts.len();
    let (mut matched, mut ignored) = (vec![[false; T]; nd], vec![[false; T]; nd]);
    for (t, &thr) in thresholds.iter().enumerate() {
        let mut taken = vec![false; order.len()];
        for d in 0..nd {
            let mut best = thr.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for (p, &g) in order.iter().enumerate() {
                // A crowd GT can absorb any number of detections.
                if taken[p] && !gts[g].iscrowd {
                    continue;
                }
                if m.is_some_and(|m| !ignored_gt[m]) && ignored_gt[p] {
                    break;
                }
                if c.ious[d][g] < best {
                    continue;
                }
                best = c.ious[d][g];
                m = Some(p);
            }
            if let Some(p) = m {
                taken[p] = true;
                ignored[d][t] = ignored_gt[p];
                // pycocotools records the GT id and later tests it against 0, so a match to a GT
                // with id 0 counts as unmatched there; reproduce that.
                matched[d][t] = gts[order[p]].id != 0;
            }
        }
    }
    // Unmatched detections outside the area range are not false positives of that range.
    for d in 0..nd {
        if outside(inp.dt_area[c.dts[d]]) {
            for t in 0..T {
                ignored[d][t] |= !matched[d][t];
            }
        }
    }
    ImageEval {
        scores: c.dts.iter().map(|&d| inp.dt_score[d]).collect(),
        matched,
        ignored,
        n_gt: ignored_gt.iter().filter(|&&i| !i).count(),
    }
}

/// Interpolated precision at the 101 recall points and the final recall, per IoU threshold.
#[derive(Clone)]
struct Curve {
    precision: Vec<[f64; R]>,
    recall: [f64; T],
}

/// `accumulate` for one (category, area range, maxDets); None where pycocotools leaves -1
/// (no image has GT or detections of the category, or no GT counts).
fn accumulate(evals: &[ImageEval], max_det: usize) -> Option<Curve> {
    let n_gt: usize = evals.iter().map(|e| e.n_gt).sum();
    if evals.is_empty() || n_gt == 0 {
        return None;
    }
    // (score, image, detection), concatenated in image order, then stably sorted by score.
    let mut dets: Vec<(f64, &ImageEval, usize)> =
        evals.iter().flat_map(|e| e.scores.iter().take(max_det).enumerate().map(move |(j, &s)| (s, e, j))).collect();
    dets.sort_by(|a, b| by_score(a.0, b.0));

    let recall_points = linspace::<R>(0.0, 1.0);
    let mut curve = Curve { precision: vec![[0.0; R]; T], recall: [0.0; T] };
    for t in 0..T {
        let (mut tp, mut fp) = (0.0f64, 0.0f64);
        let (mut rc, mut pr) = (Vec::with_capacity(dets.len()), Vec::with_capacity(dets.len()));
        for &(_, e, j) in &dets {
            if !e.ignored[j][t] {
                if e.matched[j][t] {
                    tp += 1.0;
                } else {
                    fp += 1.0;
                }
            }
            rc.push(tp / n_gt as f64);
            pr.push(tp / (fp + tp + f64::EPSILON));
        }
        curve.recall[t] = rc.last().copied().unwrap_or(0.0);
        // Precision envelope: monotone non-increasing from the right.
        for i in (1..pr.len()).rev() {
            if pr[i] > pr[i - 1] {
                pr[i - 1] = pr[i];
            }
        }
        // Precision at the first detection reaching each recall point; 0 past the last one.
        for (q, &r) in curve.precision[t].iter_mut().zip(&recall_points) {
            let i = rc.partition_point(|&x| x < r);
            *q = pr.get(i).copied().unwrap_or(0.0);
        }
    }
    Some(curve)
}

/// `summarize`: the mean over the defined entries of each row's slice, -1 if none is defined.
fn summarize(curves: &[Option<Curve>], n_cats: usize) -> Stats {
    let (na, nm) = (AREA_RANGES.len(), MAX_DETS.len());
    let mut out = [0.0; 12];
    for (o, row) in out.iter_mut().zip(&SUMMARY) {
        let ts = row.iou.map_or(0..T, |t| t..t + 1);
        let (mut sum, mut n) = (0.0, 0usize);
        for k in 0..n_cats {
            let Some(c) = &curves[(k * na + row.area) * nm + row.max_dets] else { continue };
            for t in ts.clone() {
                if row.ap {
                    sum += c.precision[t].iter().sum::<f64>();
                    n += R;
                } else {
                    sum += c.recall[t];
                    n += 1;
                }
            }
        }
        *o = if n == 0 { -1.0 } else { sum / n as f64 };
    }
    Stats::from_array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_match_numpy_linspace() {
        let t = linspace::<T>(0.5, 0.95);
        // repr() of numpy.linspace(.5, .95, 10) under numpy 2.4.
        let want = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.8999999999999999, 0.95];
        assert_eq!(t, want);
        let r = linspace::<R>(0.0, 1.0);
        assert!(r.iter().enumerate().all(|(i, &x)| x == if i == 100 { 1.0 } else { i as f64 * 0.01 }));
    }

    #[test]
    fn box_iou_values() {
        let g = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(box_iou(&g, &g, false), 1.0);
        // Touching boxes do not overlap; no +1 on widths.
        assert_eq!(box_iou(&[10.0, 0.0, 10.0, 10.0], &g, false), 0.0);
        assert_eq!(box_iou(&[5.0, 0.0, 10.0, 10.0], &g, false), 50.0 / 150.0);
        // Crowd: intersection over the detection's area.
        assert_eq!(box_iou(&[5.0, 0.0, 10.0, 10.0], &g, true), 0.5);
        assert_eq!(box_iou(&[2.0, 2.0, 2.0, 2.0], &g, true), 1.0);
        assert_eq!(box_iou(&[0.0, 0.0, 0.0, 5.0], &g, false), 0.0);
    }

    #[test]
    fn flags_accept_ints_and_bools() {
        let gt = parse_gt(
            r#"{"images":[{"id":1}],"categories":[{"id":1}],"annotations":[
            {"id":1,"image_id":1,"category_id":1,"bbox":[0,0,1,1],"area":1,"iscrowd":true},
            {"id":2,"image_id":1,"category_id":1,"bbox":[0,0,1,1],"area":1,"iscrowd":0,"ignore":1},
            {"id":3,"image_id":1,"category_id":1,"bbox":[0,0,1,1],"area":1}]}"#,
        )
        .unwrap();
        let crowd: Vec<bool> = gt.annotations.iter().map(|a| a.iscrowd).collect();
        assert_eq!(crowd, [true, false, false]);
        assert!(gt.annotations[1].ignore);
    }

    #[test]
    fn summary_layout() {
        let s = Stats::from_array([-1.0; 12]).summary();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 12);
        assert_eq!(lines[0], " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = -1.000");
        assert_eq!(lines[6], " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = -1.000");
        assert_eq!(lines[9], " Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = -1.000");
    }

    #[test]
    fn iou_type_parses() {
        assert_eq!("bbox".parse::<IouType>().unwrap(), IouType::Bbox);
        assert_eq!("segm".parse::<IouType>().unwrap(), IouType::Segm);
        assert!("keypoints".parse::<IouType>().is_err());
    }
}
