//! Real photographs without labels: the scikit-image sample photos (PyPI `scikit-image` 0.26.0,
//! `skimage/data/*.png`), fetched by `scripts/setup.sh` into `.deps/data/skimage` — for label-free
//! evaluation of ImageNet models (agreement with the clean prediction, design §5). Any directory
//! of PNGs works ([`load_dir`]).
//!
//! `setup.sh` extracts only the camera-acquired images (astronaut, brick, camera, cell, chelsea,
//! clock_motion, coffee, coins, grass, gravel, ihc, moon, motorcycle_left/right, page, text) and
//! leaves out the synthetic ones (chessboards, colour wheel, horse silhouette, logo, phantom), the
//! 102×102 microaneurysms crop, and `rocket.jpg` (a JPEG; the `image` crate is built with PNG
//! support only).
//!
//! Decoding: RGB as is, RGBA drops alpha, grey is replicated to 3 channels, 16-bit samples are
//! scaled to `[0, 1]` like 8-bit ones. The ImageNet evaluation transform is torchvision's
//! `Resize(256)` + `CenterCrop(224)`: the shorter side goes to 256 (the longer to
//! `floor(256 · long / short)`), resampled with an antialiased bilinear (triangle) filter as PIL's
//! `BILINEAR` does, then the centre 224×224 is cut. Tensors are `[3, 224, 224]` f32 RGB in `[0, 1]`
//! (the models normalise themselves). [`Augment`] gives seeded random resized crops and flips.
use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::{ImageFormat, Rgb32FImage};
use tch::Tensor;

use crate::{Error, Result};

/// Overrides [`default_dir`].
pub const DIR_ENV: &str = "FEATJND_SKIMAGE_DIR";
/// The shorter side after the evaluation resize.
pub const RESIZE: u32 = 256;
/// The side of the evaluation crop and of augmented crops.
pub const CROP: u32 = 224;
/// [`load_dir`] skips images whose shorter side is below this: the evaluation transform would
/// upsample them by more than 2×, giving blurred inputs unlike the photos ImageNet models saw
/// (scikit-image's 102×102 `microaneurysms.png` is such a crop). Skipped files are reported.
pub const MIN_SIDE: u32 = 128;

/// `$FEATJND_SKIMAGE_DIR`, else `.deps/data/skimage` in this crate.
pub fn default_dir() -> PathBuf {
    std::env::var_os(DIR_ENV).map(PathBuf::from).unwrap_or_else(|| crate::paths::repo(".deps/data/skimage"))
}

/// One decoded photo at its original size.
#[derive(Debug, Clone)]
pub struct Photo {
    /// The file stem (`chelsea` for `chelsea.png`).
    pub name: String,
    /// RGB in `[0, 1]`.
    pub image: Rgb32FImage,
}

impl Photo {
    pub fn width(&self) -> u32 {
        self.image.width()
    }
    pub fn height(&self) -> u32 {
        self.image.height()
    }
    /// The ImageNet evaluation input, `[3, 224, 224]` (see [`eval_tensor`]).
    pub fn eval_tensor(&self) -> Result<Tensor> {
        eval_tensor(&self.image)
    }
}

/// Decodes a PNG (grey, grey+alpha, RGB or RGBA; 8 or 16 bit) to RGB f32 in `[0, 1]`.
pub fn decode_png(bytes: &[u8]) -> Result<Rgb32FImage> {
    let img = image::load_from_memory_with_format(bytes, ImageFormat::Png).map_err(|e| Error::Io(format!("bad PNG: {e}")))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::Io("bad PNG: empty image".into()));
    }
    // Grey is replicated, alpha dropped (not composited), 16-bit scaled by 1/65535.
    Ok(img.to_rgb32f())
}

/// Reads and decodes one PNG file; the error names the file.
pub fn load_photo(path: &Path) -> Result<Photo> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    let image = decode_png(&bytes).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Photo { name, image })
}

/// What [`load_dir`] found.
#[derive(Debug, Clone)]
pub struct PhotoSet {
    /// Sorted by file name.
    pub photos: Vec<Photo>,
    /// `(file name, why)` for the files left out (see [`MIN_SIDE`]).
    pub skipped: Vec<(String, String)>,
}

/// Loads every `*.png` in `dir` (sorted by name). A PNG that does not decode is an error (naming
/// it), not a skip; images with a shorter side below [`MIN_SIDE`] are skipped and listed. A
/// missing directory says to run `scripts/setup.sh`.
pub fn load_dir(dir: &Path) -> Result<PhotoSet> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Error::Io(format!("photo directory {}: {e} (run scripts/setup.sh, or set ${DIR_ENV})", dir.display())))?;
    let mut paths = Vec::new();
    for entry in rd {
        let p = entry.map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?.path();
        let is_png = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if is_png && p.is_file() {
            paths.push(p);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(Error::Io(format!("no PNG files in {} (run scripts/setup.sh)", dir.display())));
    }
    let mut set = PhotoSet { photos: Vec::new(), skipped: Vec::new() };
    for p in paths {
        let photo = load_photo(&p)?;
        let short = photo.width().min(photo.height());
        if short < MIN_SIDE {
            let file = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            set.skipped.push((file, format!("shorter side {short} < {MIN_SIDE}")));
        } else {
            set.photos.push(photo);
        }
    }
    Ok(set)
}

/// `[3, H, W]` f32 from an RGB image (CHW, values unchanged).
pub fn to_tensor(img: &Rgb32FImage) -> Tensor {
    let (w, h) = (img.width() as i64, img.height() as i64);
    Tensor::from_slice(img.as_raw().as_slice()).view([h, w, 3]).permute([2, 0, 1]).contiguous()
}

/// Antialiased bilinear resize (PIL `BILINEAR` semantics: pixel centres aligned, triangle filter
/// widened by the downscale factor).
pub fn resize(img: &Rgb32FImage, width: u32, height: u32) -> Rgb32FImage {
    imageops::resize(img, width, height, FilterType::Triangle)
}

/// torchvision `Resize(short)`: the shorter side becomes `short`, the longer
/// `floor(short · long / shorter)`.
pub fn resize_shorter(img: &Rgb32FImage, short: u32) -> Rgb32FImage {
    let (w, h) = (img.width() as u64, img.height() as u64);
    let (nw, nh) = if w <= h { (short as u64, short as u64 * h / w) } else { (short as u64 * w / h, short as u64) };
    resize(img, nw as u32, nh as u32)
}

/// Python's `round` (half to even), as torchvision's `center_crop` uses it.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        (r - x.signum()) as i64
    } else {
        r as i64
    }
}

/// torchvision `CenterCrop(size)` on an image at least `size` on both sides.
pub fn center_crop(img: &Rgb32FImage, size: u32) -> Result<Rgb32FImage> {
    let (w, h) = img.dimensions();
    if w < size || h < size {
        return Err(Error::Shape(format!("center crop {size} of a {w}x{h} image")));
    }
    let top = round_half_even((h - size) as f64 / 2.0) as u32;
    let left = round_half_even((w - size) as f64 / 2.0) as u32;
    Ok(imageops::crop_imm(img, left, top, size, size).to_image())
}

/// The ImageNet evaluation input: `Resize(256)` + `CenterCrop(224)`, as `[3, 224, 224]`.
pub fn eval_tensor(img: &Rgb32FImage) -> Result<Tensor> {
    Ok(to_tensor(&center_crop(&resize_shorter(img, RESIZE), CROP)?))
}

/// SplitMix64: a tiny seeded generator, so augmentation needs no global RNG.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Uniform integer in `0..=n`.
    fn upto(&mut self, n: u32) -> u32 {
        (self.next_u64() % (n as u64 + 1)) as u32
    }
}

/// torchvision-style `RandomResizedCrop(size, scale, ratio)` + `RandomHorizontalFlip(p)`,
/// deterministic in `(seed, index)`: the same pair always gives the same crop and flip.
#[derive(Debug, Clone, PartialEq)]
pub struct Augment {
    /// Output side.
    pub size: u32,
    /// Range of the crop's area as a fraction of the image's.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio `w / h` (sampled log-uniformly).
    pub ratio: (f64, f64),
    /// Probability of a horizontal flip.
    pub flip_p: f64,
}

impl Default for Augment {
    /// torchvision's defaults: scale (0.08, 1), ratio (3/4, 4/3), flip 0.5, 224.
    fn default() -> Self {
        Augment { size: CROP, scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0), flip_p: 0.5 }
    }
}

/// One sampled augmentation: the crop box `(left, top, width, height)` in the source image and
/// whether it is flipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropFlip {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
    pub flip: bool,
}

impl Augment {
    fn validate(&self) -> Result<()> {
        let (s0, s1) = self.scale;
        let (r0, r1) = self.ratio;
        let ok = self.size > 0
            && s0.is_finite()
            && s1.is_finite()
            && 0.0 < s0
            && s0 <= s1
            && s1 <= 1.0
            && r0.is_finite()
            && r1.is_finite()
            && 0.0 < r0
            && r0 <= r1
            && (0.0..=1.0).contains(&self.flip_p);
        if ok {
            Ok(())
        } else {
            Err(Error::Arg(format!(
                "bad augmentation {self:?}: need 0 < scale.0 <= scale.1 <= 1, 0 < ratio.0 <= ratio.1, flip_p in [0, 1], size > 0"
            )))
        }
    }

    /// Samples the crop and flip for a `width × height` image (torchvision's algorithm: ten tries
    /// at an area/ratio that fits, else the centre crop at the clamped ratio).
    pub fn sample(&self, width: u32, height: u32, seed: u64, index: u64) -> Result<CropFlip> {
        self.validate()?;
        if width == 0 || height == 0 {
            return Err(Error::Shape(format!("cannot crop a {width}x{height} image")));
        }
        let mut rng = SplitMix64(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let area = width as f64 * height as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        let mut crop = None;
        for _ in 0..10 {
            let target = area * rng.range(self.scale.0, self.scale.1);
            let ar = rng.range(lr0, lr1).exp();
            let w = (target * ar).sqrt().round() as i64;
            let h = (target / ar).sqrt().round() as i64;
            if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
                let (w, h) = (w as u32, h as u32);
                let top = rng.upto(height - h);
                let left = rng.upto(width - w);
                crop = Some((left, top, w, h));
                break;
            }
        }
        let (left, top, w, h) = crop.unwrap_or_else(|| {
            let in_ratio = width as f64 / height as f64;
            let (w, h) = if in_ratio < self.ratio.0 {
                (width, ((width as f64 / self.ratio.0).round() as u32).clamp(1, height))
            } else if in_ratio > self.ratio.1 {
                (((height as f64 * self.ratio.1).round() as u32).clamp(1, width), height)
            } else {
                (width, height)
            };
            ((width - w) / 2, (height - h) / 2, w, h)
        });
        let flip = rng.uniform() < self.flip_p;
        Ok(CropFlip { left, top, width: w, height: h, flip })
    }

    /// The augmented `[3, size, size]` tensor of `img` for `(seed, index)`.
    pub fn apply(&self, img: &Rgb32FImage, seed: u64, index: u64) -> Result<Tensor> {
        let c = self.sample(img.width(), img.height(), seed, index)?;
        let crop = imageops::crop_imm(img, c.left, c.top, c.width, c.height).to_image();
        let mut out = resize(&crop, self.size, self.size);
        if c.flip {
            imageops::flip_horizontal_in_place(&mut out);
        }
        Ok(to_tensor(&out))
    }
}
