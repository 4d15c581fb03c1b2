//! Procedural shapes scenes: unlimited labelled data for detection and instance segmentation
//! (design §5).
//!
//! A scene is a background plus a few objects (polygons, ellipses, rings) with random colour,
//! texture, size, rotation and placement. Shapes are rasterised by inside tests at pixel centres,
//! without anti-aliasing, and painted back to front into an owner map; every label (visible mask,
//! tight box, area) is then read off that map, so it is exact by construction. Objects left with too
//! little visible area are removed and the scene is re-painted without them, so every pixel of the
//! image that is not background belongs to a labelled object.
//!
//! Everything is drawn from Philox counters keyed by the seed, with the scene index in the counter:
//! scene `(seed, index)` is the same on every run and platform, and scenes can be generated in any
//! order or in parallel.
use serde_json::{json, Value};

use crate::philox;

/// The object classes. `id()` is stable (0..K, the order below); COCO files use `id() + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShapeClass {
    Triangle,
    Rectangle,
    Pentagon,
    Star,
    Ellipse,
    Ring,
}

impl ShapeClass {
    pub const ALL: [ShapeClass; 6] =
        [ShapeClass::Triangle, ShapeClass::Rectangle, ShapeClass::Pentagon, ShapeClass::Star, ShapeClass::Ellipse, ShapeClass::Ring];
    pub const COUNT: usize = Self::ALL.len();

    pub fn id(self) -> usize {
        self as usize
    }

    pub fn from_id(id: usize) -> Option<ShapeClass> {
        Self::ALL.get(id).copied()
    }

    /// The COCO `category_id` (1-based, as COCO files usually are).
    pub fn coco_id(self) -> i64 {
        self.id() as i64 + 1
    }

    pub fn from_coco_id(id: i64) -> Option<ShapeClass> {
        usize::try_from(id - 1).ok().and_then(Self::from_id)
    }

    pub fn name(self) -> &'static str {
        match self {
            ShapeClass::Triangle => "triangle",
            ShapeClass::Rectangle => "rectangle",
            ShapeClass::Pentagon => "pentagon",
            ShapeClass::Star => "star",
            ShapeClass::Ellipse => "ellipse",
            ShapeClass::Ring => "ring",
        }
    }
}

/// What a scene may contain.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneConfig {
    /// `(height, width)` in pixels.
    pub size: (usize, usize),
    /// Objects attempted per scene (uniform in `min..=max`); fewer remain when some are removed.
    pub min_objects: usize,
    pub max_objects: usize,
    /// Object size: the diameter of its circumscribed circle as a fraction of the shorter side.
    pub min_scale: f32,
    pub max_scale: f32,
    /// Whether objects may overlap (later ones hide earlier ones); if not, placements that overlap
    /// are retried and the object is skipped when no free place is found.
    pub occlusion: bool,
    /// Stripes/checker on objects and gradient/noise on the background; off: flat colours.
    pub texture: bool,
    /// Objects with fewer visible pixels are removed.
    pub min_area: usize,
    /// Objects showing less than this fraction of their full (unoccluded, uncropped) area are removed.
    pub min_visible_fraction: f32,
    /// The classes drawn from (uniformly).
    pub classes: Vec<ShapeClass>,
}

impl Default for SceneConfig {
    fn default() -> Self {
        SceneConfig {
            size: (128, 128),
            min_objects: 2,
            max_objects: 6,
            min_scale: 0.15,
            max_scale: 0.45,
            occlusion: true,
            texture: true,
            min_area: 16,
            min_visible_fraction: 0.25,
            classes: ShapeClass::ALL.to_vec(),
        }
    }
}

/// How an object (or the background) is coloured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Texture {
    Solid,
    /// Bands of `color` and `color2`, `period` pixels per pair, across direction `angle`.
    Stripes {
        angle: f32,
        period: f32,
        color2: [f32; 3],
    },
    /// Squares of `period / 2` pixels, rotated by `angle`.
    Checker {
        angle: f32,
        period: f32,
        color2: [f32; 3],
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub class: ShapeClass,
    /// Tight box `[x, y, w, h]` (COCO xywh, pixel edges) of the visible mask.
    pub bbox: [f32; 4],
    /// Visible pixels after occlusion and cropping, row-major `H*W`, 1 = visible.
    pub mask: Vec<u8>,
    /// Number of visible pixels.
    pub area: usize,
    /// 1-based within the scene, in painting order (0 is background in [`Scene::instance_map`]).
    pub instance_id: u32,
    pub color: [f32; 3],
    pub texture: Texture,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub seed: u64,
    pub index: u64,
    pub height: usize,
    pub width: usize,
    /// `3*H*W`, CHW, RGB in `[0, 1]`.
    pub image: Vec<f32>,
    /// Back to front.
    pub objects: Vec<Object>,
    /// The background's base colour (a gradient and noise may vary it when textures are on).
    pub background: [f32; 3],
}

impl Scene {
    /// The image as a `[3, H, W]` f32 tensor on the CPU.
    pub fn to_tensor(&self) -> tch::Tensor {
        tch::Tensor::from_slice(&self.image).reshape([3, self.height as i64, self.width as i64])
    }

    /// Row-major `H*W` map of instance ids (0 = background).
    pub fn instance_map(&self) -> Vec<u32> {
        let mut map = vec![0u32; self.height * self.width];
        for o in &self.objects {
            for (m, &v) in map.iter_mut().zip(&o.mask) {
                if v != 0 {
                    *m = o.instance_id;
                }
            }
        }
        map
    }
}

/// A stream of Philox words for one scene: counter `[index lo, index hi, n lo, n hi]`.
struct Rng {
    key: [u32; 2],
    index: u64,
    n: u64,
    buf: [u32; 4],
    pos: usize,
}

impl Rng {
    fn new(seed: u64, index: u64) -> Rng {
        Rng { key: philox::key_of(seed), index, n: 0, buf: [0; 4], pos: 4 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.pos == 4 {
            let c = [self.index as u32, (self.index >> 32) as u32, self.n as u32, (self.n >> 32) as u32 | 0x8000_0000];
            self.buf = philox::philox4x32_10(c, self.key);
            self.n += 1;
            self.pos = 0;
        }
        self.pos += 1;
        self.buf[self.pos - 1]
    }

    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * philox::u01(self.next_u32())
    }

    /// Uniform in `lo..=hi`.
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + ((self.next_u32() as u64 * (hi - lo + 1) as u64) >> 32) as usize
    }

    fn color(&mut self) -> [f32; 3] {
        [self.range(0.0, 1.0), self.range(0.0, 1.0), self.range(0.0, 1.0)]
    }

    /// A colour at least `min` (max channel difference) away from all of `avoid`; tries a few
    /// times, then takes the farthest found.
    fn color_away(&mut self, avoid: &[[f32; 3]], min: f32) -> [f32; 3] {
        let mut best = ([0.0; 3], -1.0);
        for _ in 0..32 {
            let c = self.color();
            let d = avoid.iter().map(|a| dist(&c, a)).fold(f32::INFINITY, f32::min);
            if d >= min {
                return c;
            }
            if d > best.1 {
                best = (c, d);
            }
        }
        best.0
    }
}

fn dist(a: &[f32; 3], b: &[f32; 3]) -> f32 {
    (0..3).map(|c| (a[c] - b[c]).abs()).fold(0.0, f32::max)
}

/// A shape in image coordinates (pixel centres at `x + 0.5`).
enum Geometry {
    /// Vertices `[x0, y0, x1, y1, ...]`, even-odd rule (the star is not convex).
    Polygon(Vec<f32>),
    /// Centre, semi-axes, rotation, and the inner ellipse's relative size (0 = filled).
    Ellipse { cx: f32, cy: f32, a: f32, b: f32, angle: f32, hole: f32 },
}

impl Geometry {
    fn contains(&self, x: f32, y: f32) -> bool {
        match self {
            Geometry::Polygon(v) => {
                let n = v.len() / 2;
                let mut inside = false;
                let mut j = n - 1;
                for i in 0..n {
                    let (xi, yi, xj, yj) = (v[2 * i], v[2 * i + 1], v[2 * j], v[2 * j + 1]);
                    if (yi > y) != (yj > y) && x < xj + (y - yj) * (xi - xj) / (yi - yj) {
                        inside = !inside;
                    }
                    j = i;
                }
                inside
            }
            &Geometry::Ellipse { cx, cy, a, b, angle, hole } => {
                let (s, c) = angle.sin_cos();
                let (dx, dy) = (x - cx, y - cy);
                let (u, v) = (dx * c + dy * s, -dx * s + dy * c);
                let r2 = (u / a) * (u / a) + (v / b) * (v / b);
                r2 <= 1.0 && r2 >= hole * hole
            }
        }
    }
}

/// Points on a circle of radius `r[k]` at angles `angle + 2πk/n`.
fn star_points(cx: f32, cy: f32, angle: f32, radii: &[f32]) -> Vec<f32> {
    let n = radii.len();
    let mut v = Vec::with_capacity(2 * n);
    for (k, r) in radii.iter().enumerate() {
        let t = angle + std::f32::consts::TAU * k as f32 / n as f32;
        v.push(cx + r * t.cos());
        v.push(cy + r * t.sin());
    }
    v
}

/// A random shape of `class` with circumradius `r` around `(cx, cy)`.
fn geometry(class: ShapeClass, cx: f32, cy: f32, r: f32, rng: &mut Rng) -> Geometry {
    let angle = rng.range(0.0, std::f32::consts::TAU);
    match class {
        ShapeClass::Triangle => {
            // Jittered vertex angles: varied triangles, none degenerate.
            let mut v = Vec::with_capacity(6);
            for k in 0..3 {
                let t = angle + std::f32::consts::TAU * k as f32 / 3.0 + rng.range(-0.3, 0.3);
                let rk = r * rng.range(0.85, 1.0);
                v.push(cx + rk * t.cos());
                v.push(cy + rk * t.sin());
            }
            Geometry::Polygon(v)
        }
        ShapeClass::Rectangle => {
            // The corners are at radius r; phi sets the aspect ratio (π/4: a square).
            let phi = rng.range(0.4, std::f32::consts::FRAC_PI_2 - 0.4);
            let (a, b) = (r * phi.cos(), r * phi.sin());
            let (s, c) = angle.sin_cos();
            let corners = [(a, b), (-a, b), (-a, -b), (a, -b)];
            Geometry::Polygon(corners.iter().flat_map(|&(u, v)| [cx + u * c - v * s, cy + u * s + v * c]).collect())
        }
        ShapeClass::Pentagon => Geometry::Polygon(star_points(cx, cy, angle, &[r; 5])),
        ShapeClass::Star => {
            let inner = r * rng.range(0.38, 0.55);
            Geometry::Polygon(star_points(cx, cy, angle, &[r, inner, r, inner, r, inner, r, inner, r, inner]))
        }
        ShapeClass::Ellipse => Geometry::Ellipse { cx, cy, a: r, b: r * rng.range(0.45, 1.0), angle, hole: 0.0 },
        ShapeClass::Ring => Geometry::Ellipse { cx, cy, a: r, b: r * rng.range(0.75, 1.0), angle, hole: rng.range(0.45, 0.7) },
    }
}

/// The in-image pixels a shape covers (row-major indices) and its full pixel count, counting the
/// part cropped by the image border.
fn rasterise(g: &Geometry, cx: f32, cy: f32, r: f32, h: usize, w: usize) -> (Vec<u32>, usize) {
    let (x0, x1) = ((cx - r).floor() as i64 - 1, (cx + r).ceil() as i64 + 1);
    let (y0, y1) = ((cy - r).floor() as i64 - 1, (cy + r).ceil() as i64 + 1);
    let (mut pixels, mut full) = (Vec::new(), 0);
    for y in y0..=y1 {
        for x in x0..=x1 {
            if g.contains(x as f32 + 0.5, y as f32 + 0.5) {
                full += 1;
                if (0..w as i64).contains(&x) && (0..h as i64).contains(&y) {
                    pixels.push((y as usize * w + x as usize) as u32);
                }
            }
        }
    }
    (pixels, full)
}

fn texture(rng: &mut Rng, on: bool, color: [f32; 3], background: [f32; 3]) -> Texture {
    if !on {
        return Texture::Solid;
    }
    let kind = rng.int(0, 2);
    let angle = rng.range(0.0, std::f32::consts::PI);
    let period = rng.range(4.0, 12.0);
    // The second colour also stays clear of the background, and visibly differs from the first.
    let color2 = rng.color_away(&[background, color], 0.2);
    match kind {
        0 => Texture::Solid,
        1 => Texture::Stripes { angle, period, color2 },
        _ => Texture::Checker { angle, period, color2 },
    }
}

fn shade(color: &[f32; 3], t: &Texture, x: f32, y: f32) -> [f32; 3] {
    let second = match *t {
        Texture::Solid => None,
        Texture::Stripes { angle, period, color2 } => {
            let u = x * angle.cos() + y * angle.sin();
            (((u / period).floor() as i64).rem_euclid(2) == 1).then_some(color2)
        }
        Texture::Checker { angle, period, color2 } => {
            let (s, c) = angle.sin_cos();
            let (u, v) = (x * c + y * s, -x * s + y * c);
            let cell = 2.0 / period;
            ((((u * cell).floor() + (v * cell).floor()) as i64).rem_euclid(2) == 1).then_some(color2)
        }
    };
    second.unwrap_or(*color)
}

/// Background variation: a linear gradient and per-pixel noise, small enough that objects (kept
/// at least 0.3 from the base colour) stay distinct.
struct Background {
    color: [f32; 3],
    gradient: [f32; 3],
    dir: (f32, f32),
    noise: f32,
}

const NOISE_STREAM: u32 = 1;

/// Draws scene `index` of the stream `seed`; see the module docs. Panics on an empty size, no
/// classes, `min_objects > max_objects` or scales not in `0 < min_scale <= max_scale`.
pub fn generate(seed: u64, index: u64, cfg: &SceneConfig) -> Scene {
    let (h, w) = cfg.size;
    assert!(h > 0 && w > 0, "scene size must be positive");
    assert!(!cfg.classes.is_empty(), "no classes to draw from");
    assert!(cfg.min_objects <= cfg.max_objects && 0.0 < cfg.min_scale && cfg.min_scale <= cfg.max_scale);
    let mut rng = Rng::new(seed, index);

    let color = rng.color();
    let bg = if cfg.texture {
        let t = rng.range(0.0, std::f32::consts::TAU);
        let noise = if rng.int(0, 1) == 1 { rng.range(0.0, 0.05) } else { 0.0 };
        Background { color, gradient: [rng.range(-0.1, 0.1), rng.range(-0.1, 0.1), rng.range(-0.1, 0.1)], dir: (t.cos(), t.sin()), noise }
    } else {
        Background { color, gradient: [0.0; 3], dir: (1.0, 0.0), noise: 0.0 }
    };

    // Place the objects; keep each one's full coverage so the scene can be re-painted.
    struct Placed {
        class: ShapeClass,
        pixels: Vec<u32>,
        full: usize,
        color: [f32; 3],
        texture: Texture,
    }
    let short = h.min(w) as f32;
    let n = rng.int(cfg.min_objects, cfg.max_objects);
    let mut placed: Vec<Placed> = Vec::with_capacity(n);
    let mut taken = vec![false; h * w];
    for _ in 0..n {
        let class = cfg.classes[rng.int(0, cfg.classes.len() - 1)];
        let color = rng.color_away(&[bg.color], 0.3);
        let texture = texture(&mut rng, cfg.texture, color, bg.color);
        let tries = if cfg.occlusion { 1 } else { 20 };
        for _ in 0..tries {
            let r = 0.5 * short * rng.range(cfg.min_scale, cfg.max_scale);
            // Centres keep at least half the radius inside the image.
            let cx = rng.range(0.5 * r, (w as f32 - 0.5 * r).max(0.5 * r + 1e-3));
            let cy = rng.range(0.5 * r, (h as f32 - 0.5 * r).max(0.5 * r + 1e-3));
            let g = geometry(class, cx, cy, r, &mut rng);
            let (pixels, full) = rasterise(&g, cx, cy, r, h, w);
            if !cfg.occlusion && pixels.iter().any(|&p| taken[p as usize]) {
                continue;
            }
            for &p in &pixels {
                taken[p as usize] = true;
            }
            placed.push(Placed { class, pixels, full, color, texture });
            break;
        }
    }

    // Paint back to front; remove objects that show too little and repaint, until all that remain
    // pass. Removing an object only uncovers the others, so the loop ends; removed ones stay out.
    let mut keep = vec![true; placed.len()];
    let mut owner = vec![u32::MAX; h * w];
    loop {
        owner.fill(u32::MAX);
        for (k, p) in placed.iter().enumerate().filter(|&(k, _)| keep[k]) {
            for &q in &p.pixels {
                owner[q as usize] = k as u32;
            }
        }
        let mut visible = vec![0usize; placed.len()];
        for &o in &owner {
            if o != u32::MAX {
                visible[o as usize] += 1;
            }
        }
        let mut changed = false;
        for (k, p) in placed.iter().enumerate() {
            let v = visible[k];
            if keep[k] && (v < cfg.min_area.max(1) || (v as f32) < cfg.min_visible_fraction * p.full as f32) {
                keep[k] = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }

    // Labels from the final owner map.
    let mut objects = Vec::new();
    let mut label = vec![u32::MAX; placed.len()];
    for (k, p) in placed.iter().enumerate().filter(|&(k, _)| keep[k]) {
        label[k] = objects.len() as u32;
        objects.push(Object {
            class: p.class,
            bbox: [0.0; 4],
            mask: vec![0; h * w],
            area: 0,
            instance_id: objects.len() as u32 + 1,
            color: p.color,
            texture: p.texture,
        });
    }
    let mut boxes = vec![super::Extent::EMPTY; objects.len()];
    let mut image = vec![0f32; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            let q = y * w + x;
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let rgb = match owner[q] {
                u32::MAX => {
                    let t = ((px / w as f32 - 0.5) * bg.dir.0 + (py / h as f32 - 0.5) * bg.dir.1) * 2.0;
                    let noise = if bg.noise > 0.0 {
                        let r = philox::philox4x32_10([index as u32, (index >> 32) as u32, q as u32, NOISE_STREAM], rng.key);
                        [r[0], r[1], r[2]].map(|v| bg.noise * (2.0 * philox::u01(v) - 1.0))
                    } else {
                        [0.0; 3]
                    };
                    [0, 1, 2].map(|c| bg.color[c] + bg.gradient[c] * t + noise[c])
                }
                k => {
                    let o = &mut objects[label[k as usize] as usize];
                    o.mask[q] = 1;
                    o.area += 1;
                    boxes[label[k as usize] as usize].add(x, y);
                    shade(&o.color, &o.texture, px, py)
                }
            };
            for c in 0..3 {
                image[c * h * w + q] = rgb[c].clamp(0.0, 1.0);
            }
        }
    }
    for (o, b) in objects.iter_mut().zip(&boxes) {
        o.bbox = b.xywh();
    }
    Scene { seed, index, height: h, width: w, image, objects, background: bg.color }
}

/// COCO uncompressed RLE of a row-major mask: runs over the pixels column by column, starting
/// with a (possibly empty) run of 0s.
pub fn mask_to_rle(mask: &[u8], h: usize, w: usize) -> Vec<u32> {
    let mut counts = Vec::new();
    let (mut cur, mut run) = (0u8, 0u32);
    for x in 0..w {
        for y in 0..h {
            let v = (mask[y * w + x] != 0) as u8;
            if v != cur {
                counts.push(run);
                cur = v;
                run = 0;
            }
            run += 1;
        }
    }
    counts.push(run);
    counts
}

/// COCO ground truth for `scenes`: image ids are 1-based positions in `scenes`, annotation ids run
/// from 1, `category_id` is [`ShapeClass::coco_id`], masks are uncompressed RLE.
pub fn to_coco(scenes: &[Scene]) -> Value {
    let mut images = Vec::with_capacity(scenes.len());
    let mut annotations = Vec::new();
    for (n, s) in scenes.iter().enumerate() {
        let image_id = n as i64 + 1;
        images.push(json!({
            "id": image_id,
            "width": s.width,
            "height": s.height,
            "file_name": format!("shapes_{}_{}.png", s.seed, s.index),
        }));
        for o in &s.objects {
            annotations.push(json!({
                "id": annotations.len() + 1,
                "image_id": image_id,
                "category_id": o.class.coco_id(),
                "bbox": o.bbox,
                "area": o.area,
                "iscrowd": 0,
                "segmentation": {"size": [s.height, s.width], "counts": mask_to_rle(&o.mask, s.height, s.width)},
            }));
        }
    }
    let categories: Vec<Value> =
        ShapeClass::ALL.iter().map(|c| json!({"id": c.coco_id(), "name": c.name(), "supercategory": "shape"})).collect();
    json!({"images": images, "annotations": annotations, "categories": categories})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_is_column_major() {
        // 2x3 mask, row-major: [0 1 1; 0 0 1]; columns: (0,0) (1,0) (1,1) -> runs 0:2, 1:1, 0:1, 1:2.
        let mask = [0, 1, 1, 0, 0, 1];
        assert_eq!(mask_to_rle(&mask, 2, 3), vec![2, 1, 1, 2]);
        assert_eq!(mask_to_rle(&[1, 1], 1, 2), vec![0, 2]);
    }

    #[test]
    fn class_ids_round_trip() {
        for c in ShapeClass::ALL {
            assert_eq!(ShapeClass::from_id(c.id()), Some(c));
            assert_eq!(ShapeClass::from_coco_id(c.coco_id()), Some(c));
        }
        assert_eq!(ShapeClass::from_coco_id(0), None);
    }
}
