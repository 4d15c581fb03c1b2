//! DeepForest's annotated aerial tree crowns (PyPI `deepforest` 2.1.0, `deepforest/data/`): four
//! RGB images with Pascal VOC XML boxes, fetched by `scripts/setup.sh` into `.deps/data/deepforest`.
//!
//! VOC corners are read as continuous pixel-edge coordinates, as DeepForest does (a box may end at
//! `xmax == width`), so the COCO box is `[xmin, ymin, xmax - xmin, ymax - ymin]`. Malformed files
//! are an [`Error::Io`] naming the file and the field, never a panic.
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Overrides [`default_dir`].
pub const DIR_ENV: &str = "FEATJND_DEEPFOREST_DIR";

/// `$FEATJND_DEEPFOREST_DIR`, else `.deps/data/deepforest` in this crate.
pub fn default_dir() -> PathBuf {
    std::env::var_os(DIR_ENV).map(PathBuf::from).unwrap_or_else(|| crate::paths::repo(".deps/data/deepforest"))
}

#[derive(Debug, Clone, PartialEq)]
pub struct TreeBox {
    /// The VOC `name` / CSV `label` (`Tree`, `Dead`, ...).
    pub label: String,
    /// COCO `[x, y, w, h]` in pixels.
    pub bbox: [f32; 4],
}

/// The boxes of one image, as listed by an XML or CSV file.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub file_name: String,
    /// From the VOC `<size>`; `None` for CSV, which has no image size.
    pub size: Option<(usize, usize)>,
    pub boxes: Vec<TreeBox>,
}

fn bad(what: &str, why: impl std::fmt::Display) -> Error {
    Error::Io(format!("bad DeepForest {what}: {why}"))
}

/// `[xmin, ymin, xmax, ymax]` to COCO xywh, refusing non-finite or empty boxes.
fn corners_to_xywh(c: [f32; 4], what: &str) -> Result<[f32; 4]> {
    if c.iter().any(|v| !v.is_finite()) || c[2] <= c[0] || c[3] <= c[1] {
        return Err(bad(what, format!("box {c:?} needs xmin < xmax and ymin < ymax")));
    }
    Ok([c[0], c[1], c[2] - c[0], c[3] - c[1]])
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

/// Parses one Pascal VOC annotation (`<filename>`, optional `<size>`, `<object>`s with `<name>`
/// and `<bndbox>`).
pub fn parse_voc(text: &str) -> Result<Annotation> {
    let doc = roxmltree::Document::parse(text).map_err(|e| bad("VOC XML", e))?;
    let root = doc.root_element();
    if !root.has_tag_name("annotation") {
        return Err(bad("VOC XML", format!("root is <{}>, not <annotation>", root.tag_name().name())));
    }
    let text_of = |n: roxmltree::Node<'_, '_>, tag: &str| -> Result<String> {
        child(n, tag)
            .and_then(|c| c.text())
            .map(|t| t.trim().to_string())
            .ok_or_else(|| bad("VOC XML", format!("<{}> lacks <{tag}>", n.tag_name().name())))
    };
    let num = |n: roxmltree::Node<'_, '_>, tag: &str| -> Result<f32> {
        let t = text_of(n, tag)?;
        t.parse::<f32>().map_err(|_| bad("VOC XML", format!("<{tag}> is {t:?}, not a number")))
    };
    let file_name = text_of(root, "filename")?;
    let size = match child(root, "size") {
        Some(s) => {
            let (w, h) = (num(s, "width")?, num(s, "height")?);
            if !(w >= 1.0 && h >= 1.0 && w.fract() == 0.0 && h.fract() == 0.0) {
                return Err(bad("VOC XML", format!("<size> {w}x{h} is not a positive integer size")));
            }
            Some((h as usize, w as usize))
        }
        None => None,
    };
    let mut boxes = Vec::new();
    for obj in root.children().filter(|c| c.has_tag_name("object")) {
        let label = text_of(obj, "name")?;
        let b = child(obj, "bndbox").ok_or_else(|| bad("VOC XML", "<object> lacks <bndbox>"))?;
        let c = [num(b, "xmin")?, num(b, "ymin")?, num(b, "xmax")?, num(b, "ymax")?];
        boxes.push(TreeBox { label, bbox: corners_to_xywh(c, "VOC XML")? });
    }
    Ok(Annotation { file_name, size, boxes })
}

/// Parses DeepForest's CSV (`image_path,xmin,ymin,xmax,ymax,label`, columns in any order, no
/// quoting) into one [`Annotation`] per image, in order of first appearance.
pub fn parse_csv(text: &str) -> Result<Vec<Annotation>> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| bad("CSV", "empty file"))?;
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| cols.iter().position(|c| *c == name).ok_or_else(|| bad("CSV", format!("no `{name}` column")));
    let idx = [col("image_path")?, col("xmin")?, col("ymin")?, col("xmax")?, col("ymax")?, col("label")?];
    let mut out: Vec<Annotation> = Vec::new();
    for (n, line) in lines {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != cols.len() {
            return Err(bad("CSV", format!("line {} has {} fields, the header {}", n + 1, f.len(), cols.len())));
        }
        let mut c = [0f32; 4];
        for (v, &i) in c.iter_mut().zip(&idx[1..5]) {
            *v = f[i].parse().map_err(|_| bad("CSV", format!("line {}: {:?} is not a number", n + 1, f[i])))?;
        }
        let tree = TreeBox { label: f[idx[5]].to_string(), bbox: corners_to_xywh(c, &format!("CSV line {}", n + 1))? };
        match out.iter_mut().find(|a| a.file_name == f[idx[0]]) {
            Some(a) => a.boxes.push(tree),
            None => out.push(Annotation { file_name: f[idx[0]].to_string(), size: None, boxes: vec![tree] }),
        }
    }
    Ok(out)
}

/// Reads an 8-bit RGB PNG or TIFF into a `[3, H, W]` f32 tensor in `[0, 1]` (value / 255).
pub fn load_image(path: &Path) -> Result<tch::Tensor> {
    let io = |e: &dyn std::fmt::Display| Error::Io(format!("{}: {e}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| io(&e))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let (h, w, hwc) = if ext == "tif" || ext == "tiff" {
        let mut d = tiff::decoder::Decoder::new(std::io::Cursor::new(bytes)).map_err(|e| io(&e))?;
        let (w, h) = d.dimensions().map_err(|e| io(&e))?;
        match (d.colortype().map_err(|e| io(&e))?, d.read_image().map_err(|e| io(&e))?) {
            (tiff::ColorType::RGB(8), tiff::decoder::DecodingResult::U8(v)) => (h as usize, w as usize, v),
            (ct, _) => return Err(io(&format!("TIFF colour type {ct:?}, expected 8-bit RGB"))),
        }
    } else {
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).map_err(|e| io(&e))?.to_rgb8();
        (img.height() as usize, img.width() as usize, img.into_raw())
    };
    if hwc.len() != h * w * 3 {
        return Err(io(&format!("{} bytes for {h}x{w} RGB", hwc.len())));
    }
    let t = tch::Tensor::from_slice(&hwc).reshape([h as i64, w as i64, 3]).permute([2, 0, 1]);
    Ok(t.to_kind(tch::Kind::Float) / 255.0)
}

/// One image and its boxes.
#[derive(Debug)]
pub struct TreeImage {
    pub file_name: String,
    /// `[3, H, W]` f32 in `[0, 1]`.
    pub image: tch::Tensor,
    pub boxes: Vec<TreeBox>,
}

/// A square window of a [`TreeImage`]; `x`, `y` is its top-left corner in the source image.
#[derive(Debug)]
pub struct Crop {
    pub x: usize,
    pub y: usize,
    pub image: tch::Tensor,
    /// Clipped to the window, in window coordinates.
    pub boxes: Vec<TreeBox>,
}

/// Window starts along a side of `len`: every `stride`, plus one flush with the far edge so the
/// whole side is covered.
fn starts(len: usize, size: usize, stride: usize) -> Vec<usize> {
    let mut s: Vec<usize> = (0..=len - size).step_by(stride).collect();
    if *s.last().unwrap_or(&0) + size < len {
        s.push(len - size);
    }
    s
}

impl TreeImage {
    /// `(H, W)`.
    pub fn size(&self) -> (usize, usize) {
        let s = self.image.size();
        (s[1] as usize, s[2] as usize)
    }

    /// Square `size` windows every `stride` pixels (plus edge-flush ones), row by row. Boxes are
    /// clipped to each window; a box with less than half its area inside is dropped, since a tree
    /// cut that much is not a fair target.
    pub fn crops(&self, size: usize, stride: usize) -> Result<Vec<Crop>> {
        let (h, w) = self.size();
        if size == 0 || stride == 0 || size > h || size > w {
            return Err(Error::Arg(format!("crop size {size} / stride {stride} for a {h}x{w} image")));
        }
        let mut out = Vec::new();
        for &y in &starts(h, size, stride) {
            for &x in &starts(w, size, stride) {
                let (x0, y0, s) = (x as f32, y as f32, size as f32);
                let mut boxes = Vec::new();
                for b in &self.boxes {
                    let [bx, by, bw, bh] = b.bbox;
                    let (cx0, cy0) = ((bx - x0).max(0.0), (by - y0).max(0.0));
                    let (cx1, cy1) = ((bx + bw - x0).min(s), (by + bh - y0).min(s));
                    if cx1 > cx0 && cy1 > cy0 && (cx1 - cx0) * (cy1 - cy0) >= 0.5 * bw * bh {
                        boxes.push(TreeBox { label: b.label.clone(), bbox: [cx0, cy0, cx1 - cx0, cy1 - cy0] });
                    }
                }
                let image = self.image.narrow(1, y as i64, size as i64).narrow(2, x as i64, size as i64).contiguous();
                out.push(Crop { x, y, image, boxes });
            }
        }
        Ok(out)
    }
}

/// Loads the image of one VOC file (looked up next to it) with its boxes, checking the image size
/// against `<size>`. DeepForest's `OSBS_029.xml` names a `.tif`; a `.png` of the same stem is used
/// when the named file is missing.
pub fn load_voc(xml_path: &Path) -> Result<TreeImage> {
    let text = std::fs::read_to_string(xml_path).map_err(|e| Error::Io(format!("{}: {e}", xml_path.display())))?;
    let ann = parse_voc(&text).map_err(|e| Error::Io(format!("{}: {e}", xml_path.display())))?;
    let dir = xml_path.parent().unwrap_or(Path::new("."));
    let mut img_path = dir.join(&ann.file_name);
    if !img_path.exists() {
        img_path.set_extension("png");
    }
    let image = load_image(&img_path)?;
    let t = TreeImage { file_name: ann.file_name, image, boxes: ann.boxes };
    if let Some(hw) = ann.size {
        if t.size() != hw {
            return Err(Error::Io(format!("{}: image is {:?} (H, W), <size> says {hw:?}", img_path.display(), t.size())));
        }
    }
    Ok(t)
}

/// Every `*.xml` in `dir` (sorted by name), loaded with [`load_voc`].
pub fn load_dir(dir: &Path) -> Result<Vec<TreeImage>> {
    let mut xmls: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    xmls.sort();
    xmls.iter().map(|p| load_voc(p)).collect()
}
