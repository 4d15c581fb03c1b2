//! A sanity figure for the detector: NanoDet's clean detections scored against the
//! **real** boxes of the few held-out corpus photos that come with annotations
//! (`<corpus>/annotations/<photo>.xml`, Pascal VOC: labelme's three VOC 2011 photos; or
//! `<photo>.json`, COCO: sahi's `terrain2`). Far too few boxes for a benchmark; it shows that the
//! port detects real objects, which the pseudo-ground-truth protocol of the study cannot show.

use crate::data::corpus::{Corpus, CorpusSplit};
use crate::eval::nanodet::{self as nd, GtImage};
use crate::model::nanodet::{input_tensor, INPUT_SIZE};
use crate::model::SplitModel;
use crate::{Error, Result};
use std::path::Path;
use tch::Device;

/// The text between `<name>` and `</name>` in `s` (first occurrence).
fn tag<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let a = s.find(&open)? + open.len();
    let b = a + s[a..].find(&format!("</{name}>"))?;
    Some(s[a..b].trim())
}

/// `(height, width, [(class index, [x0, y0, x1, y1])])`: one annotated image.
pub type Annotated = (u32, u32, Vec<(usize, [f32; 4])>);

/// The [`Annotated`] image of a Pascal VOC annotation.
pub fn parse_voc(text: &str) -> Result<Annotated> {
    let bad = |what: &str| Error::Io(format!("VOC annotation: {what}"));
    let size = tag(text, "size").ok_or_else(|| bad("no <size>"))?;
    let num = |s: &str, n: &str| -> Result<f32> { tag(s, n).and_then(|v| v.parse().ok()).ok_or_else(|| bad(&format!("no number <{n}>"))) };
    let (h, w) = (num(size, "height")? as u32, num(size, "width")? as u32);
    let mut boxes = Vec::new();
    for obj in text.split("<object>").skip(1) {
        let name = tag(obj, "name").ok_or_else(|| bad("object without <name>"))?;
        let c = nd::class_index(name).ok_or_else(|| bad(&format!("class {name:?} is not a COCO class")))?;
        let b = tag(obj, "bndbox").ok_or_else(|| bad("object without <bndbox>"))?;
        boxes.push((c, [num(b, "xmin")?, num(b, "ymin")?, num(b, "xmax")?, num(b, "ymax")?]));
    }
    Ok((h, w, boxes))
}

/// The same from a one-image COCO file (category names mapped to NanoDet's classes).
pub fn parse_coco(text: &str) -> Result<Annotated> {
    let bad = |what: &str| Error::Io(format!("COCO annotation: {what}"));
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    let im = v["images"].get(0).ok_or_else(|| bad("no image"))?;
    let (h, w) = (im["height"].as_u64().ok_or_else(|| bad("no height"))?, im["width"].as_u64().ok_or_else(|| bad("no width"))?);
    let cats = v["categories"].as_array().ok_or_else(|| bad("no categories"))?;
    let mut boxes = Vec::new();
    for a in v["annotations"].as_array().ok_or_else(|| bad("no annotations"))? {
        let name =
            cats.iter().find(|c| c["id"] == a["category_id"]).and_then(|c| c["name"].as_str()).ok_or_else(|| bad("unknown category"))?;
        let c = nd::class_index(name).ok_or_else(|| bad(&format!("class {name:?} is not a COCO class")))?;
        let b: Vec<f32> = a["bbox"].as_array().ok_or_else(|| bad("no bbox"))?.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect();
        if b.len() != 4 {
            return Err(bad("bbox is not [x, y, w, h]"));
        }
        boxes.push((c, [b[0], b[1], b[0] + b[2], b[1] + b[3]]));
    }
    Ok((h as u32, w as u32, boxes))
}

/// The clean detector against real boxes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RealGt {
    pub photos: Vec<String>,
    pub boxes: usize,
    pub ap: f64,
    pub ap50: f64,
    /// Real boxes matched by a detection of the same class with IoU ≥ 0.5 and score ≥ 0.3.
    pub found: usize,
}

/// Scores `model` (NanoDet) on the annotated held-out photos of `corpus`; `None` when none has
/// annotations.
pub fn evaluate(model: &dyn SplitModel, corpus: &Corpus, device: Device) -> Result<Option<RealGt>> {
    let dir = corpus.dir.join("annotations");
    let (mut gts, mut dets, mut names) = (Vec::new(), Vec::new(), Vec::new());
    for p in corpus.load(CorpusSplit::HeldOut)? {
        let (xml, json) = (dir.join(format!("{}.xml", p.name)), dir.join(format!("{}.json", p.name)));
        let read = |f: &Path| std::fs::read_to_string(f).map_err(|e| Error::Io(format!("{}: {e}", f.display())));
        let (h, w, boxes) = if xml.is_file() {
            parse_voc(&read(&xml)?)?
        } else if json.is_file() {
            parse_coco(&read(&json)?)?
        } else {
            continue;
        };
        let x = input_tensor(&p.image).unsqueeze(0).to_device(device);
        let out = tch::no_grad(|| model.forward(&x))?;
        let d = nd::decode(&out, INPUT_SIZE, INPUT_SIZE, &nd::DecodeParams::default())?.remove(0);
        dets.push(nd::rescale(&d, (INPUT_SIZE, INPUT_SIZE), (h, w)));
        gts.push(GtImage { id: gts.len() as i64 + 1, height: h, width: w, boxes });
        names.push(p.name);
    }
    if gts.is_empty() {
        return Ok(None);
    }
    let mut classes: Vec<usize> = gts.iter().flat_map(|g| g.boxes.iter().map(|b| b.0)).collect();
    classes.sort_unstable();
    classes.dedup();
    let ids: Vec<i64> = gts.iter().map(|g| g.id).collect();
    let st = crate::coco::evaluate(&nd::ground_truth(&gts, &classes), &nd::to_coco(&dets, &ids), crate::coco::IouType::Bbox)?;
    let found = gts
        .iter()
        .zip(&dets)
        .map(|(g, d)| {
            g.boxes.iter().filter(|(c, b)| d.iter().any(|x| x.class == *c && x.score >= 0.3 && nd::iou(&x.xyxy, b) >= 0.5)).count()
        })
        .sum();
    Ok(Some(RealGt { photos: names, boxes: gts.iter().map(|g| g.boxes.len()).sum(), ap: st.ap, ap50: st.ap50, found }))
}
