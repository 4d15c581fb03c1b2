//! Real crops as [`Scene`]s: the sources of each data set and their train / held-out split.
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::super::SplitMix;
use crate::data::shapes::{Object, Scene, ShapeClass, Texture};
use crate::data::{deepforest, stardist, Extent};
use crate::{Error, Result};

/// Crop side (a multiple of 16, as the detector needs).
pub const CROP: usize = 128;
/// A nucleus cut by a crop is kept when at least this many of its pixels are inside.
pub const MIN_VISIBLE: usize = 20;
/// The DeepForest image held out whole (file stem).
pub const DEEPFOREST_HELD_OUT: &str = "OSBS_029";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RealDataset {
    /// DeepForest aerial tree crowns (boxes only).
    Deepforest,
    /// stardist 2-D nuclei (instance masks).
    Stardist,
}

impl RealDataset {
    pub fn name(self) -> &'static str {
        match self {
            RealDataset::Deepforest => "deepforest",
            RealDataset::Stardist => "stardist",
        }
    }

    /// Whether the ground truth has real instance masks (else filled boxes; no mask AP).
    pub fn has_masks(self) -> bool {
        self == RealDataset::Stardist
    }
}

/// The labels of a source image.
#[derive(Debug, Clone)]
pub enum Labels {
    /// `[x0, y0, x1, y1]` boxes in pixel-edge coordinates.
    Boxes(Vec<[f32; 4]>),
    /// Row-major `H*W` instance map (0 = background, `k` = instance `k`) and each instance's full
    /// pixel count (`areas[k - 1]`).
    Instances { map: Vec<u32>, areas: Vec<usize> },
}

/// A real image (or a band of rows of one) that crops are taken from.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub height: usize,
    pub width: usize,
    /// `3*H*W`, CHW, RGB in `[0, 1]` (the whole image, whatever `rows` says).
    pub image: Vec<f32>,
    pub labels: Labels,
    /// Crops lie entirely within rows `rows.0..rows.1`.
    pub rows: (usize, usize),
}

/// Where a crop came from (top-left corner in its source image).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Origin {
    pub source: String,
    pub x: usize,
    pub y: usize,
    pub size: usize,
}

fn real_object(mask: Vec<u8>, bbox: [f32; 4], area: usize, instance_id: u32) -> Object {
    Object {
        class: ShapeClass::from_id(0).expect("class 0 exists"),
        bbox,
        mask,
        area,
        instance_id,
        color: [0.0; 3],
        texture: Texture::Solid,
    }
}

impl Source {
    /// Number of labelled instances in the whole source image.
    pub fn instances(&self) -> usize {
        match &self.labels {
            Labels::Boxes(b) => b.len(),
            Labels::Instances { areas, .. } => areas.len(),
        }
    }

    /// Crop positions along the rows and columns: `(rows, cols)` counts of top-left corners.
    fn positions(&self, size: usize) -> (usize, usize) {
        let rows = (self.rows.1 - self.rows.0 + 1).saturating_sub(size);
        let cols = (self.width + 1).saturating_sub(size);
        (rows, cols)
    }

    /// The `size`×`size` window at `(x, y)` as a scene (see the module docs for which instances
    /// it keeps). Panics when the window leaves the image or the source's rows.
    pub fn crop(&self, x: usize, y: usize, size: usize, index: u64) -> Scene {
        assert!(
            y >= self.rows.0 && y + size <= self.rows.1 && x + size <= self.width,
            "crop ({x}, {y}) of {size} px outside {} (rows {:?}, width {})",
            self.name,
            self.rows,
            self.width
        );
        let (h, w) = (self.height, self.width);
        let n = size * size;
        let mut image = vec![0f32; 3 * n];
        for c in 0..3 {
            for r in 0..size {
                let src = c * h * w + (y + r) * w + x;
                image[c * n + r * size..][..size].copy_from_slice(&self.image[src..src + size]);
            }
        }
        let mut objects = Vec::new();
        match &self.labels {
            Labels::Boxes(boxes) => {
                let (x0, y0, s) = (x as f32, y as f32, size as f32);
                let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
                let mut kept: Vec<[f32; 4]> = Vec::new();
                for b in boxes {
                    let c = [(b[0] - x0).max(0.0), (b[1] - y0).max(0.0), (b[2] - x0).min(s), (b[3] - y0).min(s)];
                    if c[2] > c[0] && c[3] > c[1] && area(&c) >= 0.5 * area(b) {
                        kept.push(c);
                    }
                }
                // Larger boxes first, so smaller ones are painted over them in the instance map.
                kept.sort_by(|a, b| area(b).total_cmp(&area(a)));
                for c in kept {
                    let (px0, px1) = ((c[0].round() as usize).min(size), (c[2].round() as usize).min(size));
                    let (py0, py1) = ((c[1].round() as usize).min(size), (c[3].round() as usize).min(size));
                    if px1 <= px0 || py1 <= py0 {
                        continue; // thinner than a pixel after rounding
                    }
                    let mut mask = vec![0u8; n];
                    for r in py0..py1 {
                        mask[r * size + px0..r * size + px1].fill(1);
                    }
                    let id = objects.len() as u32 + 1;
                    objects.push(real_object(mask, [c[0], c[1], c[2] - c[0], c[3] - c[1]], (px1 - px0) * (py1 - py0), id));
                }
            }
            Labels::Instances { map, areas } => {
                let mut found: std::collections::BTreeMap<u32, (Vec<u8>, Extent, usize)> = Default::default();
                for r in 0..size {
                    for c in 0..size {
                        let l = map[(y + r) * w + x + c];
                        if l != 0 {
                            let e = found.entry(l).or_insert_with(|| (vec![0u8; n], Extent::EMPTY, 0));
                            e.0[r * size + c] = 1;
                            e.1.add(c, r);
                            e.2 += 1;
                        }
                    }
                }
                for (l, (mask, ext, count)) in found {
                    if count == areas[l as usize - 1] || count >= MIN_VISIBLE {
                        let id = objects.len() as u32 + 1;
                        objects.push(real_object(mask, ext.xywh(), count, id));
                    }
                }
            }
        }
        Scene { seed: 0, index, height: size, width: size, image, objects, background: [0.0; 3] }
    }

    /// Edge-flush tiling of the source's rows: every `size` pixels plus one window flush with the
    /// far edge (so everything is covered; the last row/column of windows may overlap).
    pub fn tiles(&self, size: usize) -> Vec<(usize, usize)> {
        let starts = |lo: usize, hi: usize| {
            let mut s: Vec<usize> = (lo..=hi - size).step_by(size).collect();
            if *s.last().unwrap_or(&lo) + size < hi {
                s.push(hi - size);
            }
            s
        };
        let mut out = Vec::new();
        for y in starts(self.rows.0, self.rows.1) {
            for x in starts(0, self.width) {
                out.push((x, y));
            }
        }
        out
    }
}

/// Mirrors a scene left-right and/or top-bottom (image, masks and boxes).
pub fn flip(s: &Scene, horizontal: bool, vertical: bool) -> Scene {
    if !horizontal && !vertical {
        return s.clone();
    }
    let (h, w) = (s.height, s.width);
    let src = |q: usize| {
        let (r, c) = (q / w, q % w);
        let r = if vertical { h - 1 - r } else { r };
        let c = if horizontal { w - 1 - c } else { c };
        r * w + c
    };
    let remap = |v: &[u8]| (0..h * w).map(|q| v[src(q)]).collect::<Vec<u8>>();
    let mut image = vec![0f32; 3 * h * w];
    for ch in 0..3 {
        for q in 0..h * w {
            image[ch * h * w + q] = s.image[ch * h * w + src(q)];
        }
    }
    let objects = s
        .objects
        .iter()
        .map(|o| {
            let [x, y, bw, bh] = o.bbox;
            let x = if horizontal { w as f32 - x - bw } else { x };
            let y = if vertical { h as f32 - y - bh } else { y };
            Object { bbox: [x, y, bw, bh], mask: remap(&o.mask), ..o.clone() }
        })
        .collect();
    Scene { image, objects, ..s.clone() }
}

/// A real data set split for fine-tuning: training sources (crops drawn at random) and fixed
/// held-out crops.
#[derive(Debug, Clone)]
pub struct RealData {
    pub dataset: RealDataset,
    pub train: Vec<Source>,
    /// The held-out image (or band of rows).
    pub held: Source,
    pub held_out: Vec<Scene>,
    pub held_out_origins: Vec<Origin>,
    pub crop: usize,
}

fn tensor_to_vec(t: &Tensor) -> Result<Vec<f32>> {
    let t = t.to_kind(Kind::Float).contiguous();
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.f_copy_data(&mut v, n)?;
    Ok(v)
}

fn tree_source(t: &deepforest::TreeImage) -> Result<Source> {
    let (h, w) = t.size();
    let boxes = t.boxes.iter().map(|b| [b.bbox[0], b.bbox[1], b.bbox[0] + b.bbox[2], b.bbox[1] + b.bbox[3]]).collect();
    Ok(Source {
        name: t.file_name.clone(),
        height: h,
        width: w,
        image: tensor_to_vec(&t.image)?,
        labels: Labels::Boxes(boxes),
        rows: (0, h),
    })
}

impl RealData {
    /// Loads `dataset` from `dir` (default: the loader's own default directory) and splits it.
    pub fn load(dataset: RealDataset, dir: Option<&Path>) -> Result<RealData> {
        let crop = CROP;
        let (train, held) = match dataset {
            RealDataset::Deepforest => {
                let dir = dir.map(PathBuf::from).unwrap_or_else(deepforest::default_dir);
                let imgs = deepforest::load_dir(&dir)?;
                let stem = |t: &deepforest::TreeImage| {
                    Path::new(&t.file_name).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
                };
                let mut train = Vec::new();
                let mut held = None;
                for t in &imgs {
                    let (h, w) = t.size();
                    if h < crop || w < crop {
                        return Err(Error::Arg(format!("{}: {h}x{w} is smaller than a {crop} px crop", t.file_name)));
                    }
                    if stem(t) == DEEPFOREST_HELD_OUT {
                        held = Some(tree_source(t)?);
                    } else {
                        train.push(tree_source(t)?);
                    }
                }
                let held = held.ok_or_else(|| Error::Io(format!("{}: no {DEEPFOREST_HELD_OUT}.xml to hold out", dir.display())))?;
                if train.is_empty() {
                    return Err(Error::Io(format!("{}: no DeepForest image left to train on", dir.display())));
                }
                (train, held)
            }
            RealDataset::Stardist => {
                let dir = dir.map(PathBuf::from).unwrap_or_else(stardist::default_dir);
                let nuc = stardist::Nuclei::load(&dir)?;
                let (h, w) = (nuc.height, nuc.width);
                let split = h * 3 / 4;
                if split < crop || h - split < crop || w < crop {
                    return Err(Error::Arg(format!("stardist image {h}x{w} too small for {crop} px crops on a 3/4 split")));
                }
                let mut map = vec![0u32; h * w];
                for (k, o) in nuc.nuclei.iter().enumerate() {
                    for (m, &v) in map.iter_mut().zip(&o.mask) {
                        if v != 0 {
                            *m = k as u32 + 1;
                        }
                    }
                }
                let areas = nuc.nuclei.iter().map(|o| o.area).collect();
                let mut image = Vec::with_capacity(3 * h * w);
                for _ in 0..3 {
                    image.extend_from_slice(&nuc.image);
                }
                let labels = Labels::Instances { map, areas };
                let top = Source { name: format!("img2d.tif rows 0..{split}"), height: h, width: w, image, labels, rows: (0, split) };
                let bottom = Source { name: format!("img2d.tif rows {split}..{h}"), rows: (split, h), ..top.clone() };
                (vec![top], bottom)
            }
        };
        let mut held_out = Vec::new();
        let mut held_out_origins = Vec::new();
        for (i, (x, y)) in held.tiles(crop).into_iter().enumerate() {
            held_out.push(held.crop(x, y, crop, i as u64));
            held_out_origins.push(Origin { source: held.name.clone(), x, y, size: crop });
        }
        Ok(RealData { dataset, train, held, held_out, held_out_origins, crop })
    }

    /// A random training crop: a source weighted by its number of crop positions, a uniform
    /// position within its rows, random horizontal and vertical flips.
    pub fn sample(&self, rng: &mut SplitMix, index: u64) -> (Scene, Origin) {
        let counts: Vec<u64> = self
            .train
            .iter()
            .map(|s| {
                let (r, c) = s.positions(self.crop);
                (r * c) as u64
            })
            .collect();
        let mut k = rng.below(counts.iter().sum::<u64>().max(1));
        let mut i = 0;
        while i + 1 < counts.len() && k >= counts[i] {
            k -= counts[i];
            i += 1;
        }
        let src = &self.train[i];
        let (rows, cols) = src.positions(self.crop);
        let x = rng.below(cols as u64) as usize;
        let y = src.rows.0 + rng.below(rows as u64) as usize;
        let scene = src.crop(x, y, self.crop, index);
        let (hf, vf) = (rng.below(2) == 1, rng.below(2) == 1);
        (flip(&scene, hf, vf), Origin { source: src.name.clone(), x, y, size: self.crop })
    }

    pub(super) fn held_out_instances(&self) -> usize {
        self.held_out.iter().map(|s| s.objects.len()).sum()
    }
}
