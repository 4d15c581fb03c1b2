//! stardist's 2-D nuclei example (PyPI `stardist` 0.9.2, `stardist/data/images/`): a 512×512
//! uint16 fluorescence image `img2d.tif` and its instance labels `mask2d.tif` (0 = background,
//! every other value one nucleus), fetched by `scripts/setup.sh` into `.deps/data/stardist`.
//!
//! The image is normalised like stardist's own examples: the 1st and 99.8th percentiles map to 0
//! and 1, then values are clipped to `[0, 1]` (robust to a few hot pixels, unlike min/max).
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::data::shapes::mask_to_rle;
use crate::{Error, Result};

/// Overrides [`default_dir`].
pub const DIR_ENV: &str = "FEATJND_STARDIST_DIR";
pub const LOW_PERCENTILE: f64 = 1.0;
pub const HIGH_PERCENTILE: f64 = 99.8;

/// `$FEATJND_STARDIST_DIR`, else `.deps/data/stardist` in this crate.
pub fn default_dir() -> PathBuf {
    std::env::var_os(DIR_ENV).map(PathBuf::from).unwrap_or_else(|| crate::paths::repo(".deps/data/stardist"))
}

/// Decodes a single-channel 8/16/32-bit unsigned TIFF into `(H, W, row-major values)`.
pub fn read_gray_tiff(bytes: &[u8]) -> Result<(usize, usize, Vec<u32>)> {
    use tiff::decoder::{Decoder, DecodingResult};
    let bad = |e: &dyn std::fmt::Display| Error::Io(format!("bad grey TIFF: {e}"));
    let mut d = Decoder::new(std::io::Cursor::new(bytes)).map_err(|e| bad(&e))?;
    let (w, h) = d.dimensions().map_err(|e| bad(&e))?;
    let ct = d.colortype().map_err(|e| bad(&e))?;
    if !matches!(ct, tiff::ColorType::Gray(_)) {
        return Err(bad(&format!("colour type {ct:?}, expected grey")));
    }
    let v: Vec<u32> = match d.read_image().map_err(|e| bad(&e))? {
        DecodingResult::U8(v) => v.into_iter().map(u32::from).collect(),
        DecodingResult::U16(v) => v.into_iter().map(u32::from).collect(),
        DecodingResult::U32(v) => v,
        _ => return Err(bad(&"sample type is not u8/u16/u32")),
    };
    let (h, w) = (h as usize, w as usize);
    if v.len() != h * w {
        return Err(bad(&format!("{} samples for {h}x{w}", v.len())));
    }
    Ok((h, w, v))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Nucleus {
    /// The value in the label image.
    pub label: u32,
    /// Tight box `[x, y, w, h]` (COCO xywh, pixel edges).
    pub bbox: [f32; 4],
    /// Row-major `H*W`, 1 = this nucleus.
    pub mask: Vec<u8>,
    pub area: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Nuclei {
    pub height: usize,
    pub width: usize,
    /// Row-major `H*W` in `[0, 1]` (percentile-normalised, see the module docs).
    pub image: Vec<f32>,
    /// Sorted by label.
    pub nuclei: Vec<Nucleus>,
}

/// The `p`-th percentile (0..=100) with linear interpolation, as numpy's default.
fn percentile(sorted: &[u32], p: f64) -> f64 {
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos.fract());
    let next = sorted[(i + 1).min(sorted.len() - 1)] as f64;
    sorted[i] as f64 * (1.0 - f) + next * f
}

impl Nuclei {
    /// Builds the normalised image and per-label masks from raw `H*W` intensities and labels.
    pub fn from_raw(height: usize, width: usize, raw: &[u32], labels: &[u32]) -> Result<Nuclei> {
        let n = height * width;
        if n == 0 || raw.len() != n || labels.len() != n {
            return Err(Error::Shape(format!("{height}x{width} needs {n} pixels, got image {} / labels {}", raw.len(), labels.len())));
        }
        let mut sorted = raw.to_vec();
        sorted.sort_unstable();
        let (lo, hi) = (percentile(&sorted, LOW_PERCENTILE), percentile(&sorted, HIGH_PERCENTILE));
        // A flat image has no contrast to stretch: map it to 0 rather than divide by 0.
        let scale = if hi > lo { 1.0 / (hi - lo) } else { 0.0 };
        let image = raw.iter().map(|&v| ((v as f64 - lo) * scale).clamp(0.0, 1.0) as f32).collect();

        let mut ids: Vec<u32> = labels.iter().copied().filter(|&l| l != 0).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut nuclei: Vec<Nucleus> = ids.iter().map(|&label| Nucleus { label, bbox: [0.0; 4], mask: vec![0; n], area: 0 }).collect();
        let mut extent = vec![super::Extent::EMPTY; ids.len()];
        for (i, &l) in labels.iter().enumerate() {
            if l == 0 {
                continue;
            }
            let k = ids.binary_search(&l).expect("label collected above");
            extent[k].add(i % width, i / width);
            nuclei[k].mask[i] = 1;
            nuclei[k].area += 1;
        }
        for (o, e) in nuclei.iter_mut().zip(&extent) {
            o.bbox = e.xywh();
        }
        Ok(Nuclei { height, width, image, nuclei })
    }

    /// `img2d.tif` and `mask2d.tif` from `dir` (see [`default_dir`]).
    pub fn load(dir: &Path) -> Result<Nuclei> {
        let read = |name: &str| {
            let p = dir.join(name);
            let bytes = std::fs::read(&p).map_err(|e| Error::Io(format!("{}: {e}", p.display())))?;
            read_gray_tiff(&bytes).map_err(|e| Error::Io(format!("{}: {e}", p.display())))
        };
        let (h, w, raw) = read("img2d.tif")?;
        let (mh, mw, labels) = read("mask2d.tif")?;
        if (mh, mw) != (h, w) {
            return Err(Error::Shape(format!("img2d.tif is {h}x{w}, mask2d.tif {mh}x{mw}")));
        }
        Nuclei::from_raw(h, w, &raw, &labels)
    }

    /// The image as a `[1, H, W]` f32 tensor on the CPU.
    pub fn to_tensor(&self) -> tch::Tensor {
        tch::Tensor::from_slice(&self.image).reshape([1, self.height as i64, self.width as i64])
    }

    /// COCO ground truth in the format of [`crate::data::shapes::to_coco`]: one image (id 1), one
    /// category (id 1, `nucleus`), masks as uncompressed RLE.
    pub fn to_coco(&self) -> Value {
        let annotations: Vec<Value> = self
            .nuclei
            .iter()
            .enumerate()
            .map(|(k, o)| {
                json!({
                    "id": k + 1,
                    "image_id": 1,
                    "category_id": 1,
                    "bbox": o.bbox,
                    "area": o.area,
                    "iscrowd": 0,
                    "segmentation": {"size": [self.height, self.width], "counts": mask_to_rle(&o.mask, self.height, self.width)},
                })
            })
            .collect();
        json!({
            "images": [{"id": 1, "width": self.width, "height": self.height, "file_name": "img2d.tif"}],
            "annotations": annotations,
            "categories": [{"id": 1, "name": "nucleus", "supercategory": "cell"}],
        })
    }
}
