//! A user's model as a study task: a TorchScript head/tail pair ([`TorchScriptPair`], e.g. from
//! `tools/export_torchvision.py`) and a folder of photos, for `featjnd train-jnd --model`,
//! `featjnd run --model` and `featjnd encode --model` (README, "Your own model").
//!
//! # Images
//!
//! Every `*.png`, `*.jpg` and `*.jpeg` in the folder (not recursive), sorted by file name, decoded
//! to RGB in `[0, 1]` (the export convention; the pair normalises by itself or split.json says
//! how) and **stretched** to the model's input size `H×W` (aspect ratio not kept, no crop): by
//! default 224×224 for a classifier and 320×448 for a detector (split.json carries no input size;
//! both sides of a torchvision detector's input must be multiples of 32), or `--size HxW`.
//!
//! The photos are split **by file** into held-out and estimator-training sets: a file is held out
//! when the 64-bit FNV-1a hash of its name, divided by 2⁶⁴, is below the held-out fraction
//! (default 0.3). The split depends only on the file name, so adding a photo never moves another.
//! When the rule leaves one side empty, the file with the lowest (highest) hash moves over, so
//! both sides hold at least one photo (a folder needs two). Held out: one view per photo (the
//! whole photo, stretched). Estimator training: random crops (≥ 50% of the area, aspect near the
//! input's) and horizontal flips of the training photos.
//!
//! # Tasks
//!
//! * `classification` (split.json's `task`, the default): the task discrepancy is the KL of the
//!   logits (as for the bundled classifiers); the metrics are the agreement with the clean top-1,
//!   the top-5 agreement and the KL to the clean output.
//! * `dense` (`outputs` in split.json, one kind per tail output): maps `[B, C, H, W]`, with the
//!   discrepancy and metrics of [`super::dense`].
//! * `detection-segmentation` with torchvision's outputs `(boxes [N, 4] xyxy, labels [N],
//!   scores [N], masks [N, 1, H, W], batch_index [N])` (what `export_torchvision.py` writes for
//!   Mask R-CNN): the metrics are COCO box AP / AP50 (and mask AP / AP50 when the tail returns
//!   masks) of the perturbed detections against the clean model's detections with score ≥
//!   `--pseudo-gt-score` (default [`PSEUDO_GT_SCORE`]) as pseudo ground truth, as for `nanodet`.
//!   The task discrepancy is [`det_discrepancy`], a soft matching of the perturbed detections to
//!   the clean ones. It is differentiable in the surviving detections' boxes and scores only:
//!   which detections survive the score threshold and NMS is a discrete choice, and the gradient
//!   says nothing about it. It is a stand-in for a proper detection discrepancy (masks are not in
//!   it), chosen because it trains through the one-module tail; see the README.

use super::tasks::{BatchFn, Scorer, Sizes, Task, TaskId, PSEUDO_GT_SCORE};
use crate::coco::{self, Category, Detection, GroundTruth, GtAnnotation, Image, IouType};
use crate::data::photos::{resize, to_tensor, Augment};
use crate::estimator::discrepancy::discrepancy;
use crate::estimator::train::{train_estimator_with, JndTrain, LogPoint};
use crate::estimator::JndEstimator;
use crate::model::checkpoint::Meta;
use crate::model::torchscript::TorchScriptPair;
use crate::model::{SplitModel, TaskKind};
use crate::train::SplitMix;
use crate::{Error, Result};
use image::{imageops, Rgb32FImage};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// Default input size `(H, W)` of a classifier.
pub const CLASSIFY_SIZE: (u32, u32) = (224, 224);
/// Default input size `(H, W)` of a detector (multiples of 32).
pub const DETECT_SIZE: (u32, u32) = (320, 448);
/// Default held-out fraction.
pub const HELDOUT_FRACTION: f64 = 0.3;
/// Training images per estimator step.
pub const CLASSIFY_TRAIN_BATCH: usize = 8;
pub const DETECT_TRAIN_BATCH: usize = 2;

/// What a user task is built from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UserSpec {
    /// The pair's directory (`head.pt`, `tail.pt`, `split.json`).
    pub model: PathBuf,
    /// The photo folder.
    pub images: PathBuf,
    /// Input size `(H, W)`; `None`: [`CLASSIFY_SIZE`] or [`DETECT_SIZE`] by the task.
    pub size: Option<(u32, u32)>,
    pub heldout_fraction: f64,
    /// Detection: the score from which a clean detection is pseudo ground truth.
    pub pseudo_gt_score: f32,
}

impl UserSpec {
    pub fn new(model: impl Into<PathBuf>, images: impl Into<PathBuf>) -> UserSpec {
        UserSpec {
            model: model.into(),
            images: images.into(),
            size: None,
            heldout_fraction: HELDOUT_FRACTION,
            pseudo_gt_score: PSEUDO_GT_SCORE,
        }
    }
}

/// `HxW` (or `H×W`, `H,W`) → `(H, W)`.
pub fn parse_size(s: &str) -> Result<(u32, u32)> {
    let bad = || Error::Arg(format!("bad --size {s:?}: use HxW, e.g. 224x224"));
    let (h, w) = s.split_once(['x', 'X', '×', ',']).ok_or_else(bad)?;
    let (h, w): (u32, u32) = (h.trim().parse().map_err(|_| bad())?, w.trim().parse().map_err(|_| bad())?);
    if h == 0 || w == 0 {
        return Err(bad());
    }
    Ok((h, w))
}

/// Whether the pair's tail is a torchvision detector (split.json's `task`).
pub fn is_detection(pair: &TorchScriptPair) -> bool {
    pair.spec().task == TaskKind::DetectionSegmentation
}

/// The task id of a pair.
pub fn task_id(pair: &TorchScriptPair) -> TaskId {
    match pair.spec().task {
        TaskKind::DetectionSegmentation => TaskId::UserDet,
        TaskKind::Dense => TaskId::UserDense,
        _ => TaskId::User,
    }
}

/// The input size of `spec` for `pair`.
pub fn input_size(spec: &UserSpec, pair: &TorchScriptPair) -> (u32, u32) {
    spec.size.unwrap_or(if is_detection(pair) { DETECT_SIZE } else { CLASSIFY_SIZE })
}

/// 64-bit FNV-1a.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The hash of a file name as a number in `[0, 1)`.
pub fn name_hash(file: &str) -> f64 {
    (fnv1a(file) >> 11) as f64 / (1u64 << 53) as f64
}

/// One photo of a user folder.
#[derive(Debug, Clone)]
pub struct UserImage {
    /// The file name (`cat.jpg`).
    pub file: String,
    pub image: Rgb32FImage,
}

/// A user folder split by file.
#[derive(Debug, Clone)]
pub struct UserImages {
    pub train: Vec<UserImage>,
    pub heldout: Vec<UserImage>,
}

impl UserImages {
    pub fn heldout_files(&self) -> Vec<String> {
        self.heldout.iter().map(|i| i.file.clone()).collect()
    }
    pub fn train_files(&self) -> Vec<String> {
        self.train.iter().map(|i| i.file.clone()).collect()
    }
}

/// Whether `p` is named as a photo this crate decodes (`.png`, `.jpg`, `.jpeg`, any case).
pub fn is_photo_name(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
}

/// The image files of `dir` (png, jpg, jpeg; sorted by name).
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::Io(format!("image folder {}: {e}", dir.display())))?;
    let mut v = Vec::new();
    for entry in rd {
        let p = entry.map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?.path();
        if is_photo_name(&p) && p.is_file() {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Checks from its header that `path` is a photo of at least [`MIN_PHOTO_SIDE`] pixels a side (no
/// decoding: for the up-front checks of commands that decode one photo at a time).
pub fn check_photo(path: &Path) -> Result<()> {
    let (w, h) = image::image_dimensions(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    if w < MIN_PHOTO_SIDE || h < MIN_PHOTO_SIDE {
        return Err(Error::Io(format!(
            "{}: a {w}x{h} image; featjnd needs photos of at least {MIN_PHOTO_SIDE}x{MIN_PHOTO_SIDE} pixels",
            path.display()
        )));
    }
    Ok(())
}

/// Decodes one photo to RGB in `[0, 1]`.
pub fn load_image(path: &Path) -> Result<Rgb32FImage> {
    let img = image::open(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    if img.width() < MIN_PHOTO_SIDE || img.height() < MIN_PHOTO_SIDE {
        return Err(Error::Io(format!(
            "{}: a {}x{} image; featjnd needs photos of at least {MIN_PHOTO_SIDE}x{MIN_PHOTO_SIDE} pixels",
            path.display(),
            img.width(),
            img.height()
        )));
    }
    Ok(img.to_rgb32f())
}

/// Which files of `files` (names) are held out (see the module docs).
pub fn heldout_mask(files: &[String], fraction: f64) -> Vec<bool> {
    let h: Vec<f64> = files.iter().map(|f| name_hash(f)).collect();
    let mut held: Vec<bool> = h.iter().map(|&x| x < fraction).collect();
    if files.len() >= 2 {
        let arg = |better: fn(f64, f64) -> bool| (0..h.len()).reduce(|a, b| if better(h[b], h[a]) { b } else { a });
        if !held.iter().any(|&b| b) {
            if let Some(i) = arg(|a, b| a < b) {
                held[i] = true;
            }
        }
        if held.iter().all(|&b| b) {
            if let Some(i) = arg(|a, b| a > b) {
                held[i] = false;
            }
        }
    }
    held
}

/// Loads and splits the photos of `dir`.
pub fn load_images(dir: &Path, fraction: f64) -> Result<UserImages> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::Arg(format!("--heldout-fraction {fraction} must be in [0, 1)")));
    }
    let paths = image_files(dir)?;
    if paths.len() < 2 {
        return Err(Error::Io(format!("image folder {}: need at least 2 png/jpg photos, found {}", dir.display(), paths.len())));
    }
    let files: Vec<String> = paths.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    let held = heldout_mask(&files, fraction);
    let mut out = UserImages { train: Vec::new(), heldout: Vec::new() };
    for ((p, file), h) in paths.iter().zip(files).zip(held) {
        let im = UserImage { file, image: load_image(p)? };
        if h {
            out.heldout.push(im);
        } else {
            out.train.push(im);
        }
    }
    Ok(out)
}

/// `[3, h, w]` in `[0, 1]`: the photo stretched to `h × w`.
pub fn image_tensor(img: &Rgb32FImage, (h, w): (u32, u32)) -> Tensor {
    to_tensor(&resize(img, w, h))
}

/// A random crop (≥ 50% of the area, aspect within ±25% of the input's) and flip of `img`,
/// stretched to `h × w`.
pub fn train_view(img: &Rgb32FImage, (h, w): (u32, u32), index: u64) -> Result<Tensor> {
    let a = w as f64 / h as f64;
    let aug = Augment { size: h.max(w), scale: (0.5, 1.0), ratio: (a * 0.8, a * 1.25), flip_p: 0.5 };
    let c = aug.sample(img.width(), img.height(), 0x5553, index)?;
    let crop = imageops::crop_imm(img, c.left, c.top, c.width, c.height).to_image();
    let mut out = resize(&crop, w, h);
    if c.flip {
        imageops::flip_horizontal_in_place(&mut out);
    }
    Ok(to_tensor(&out))
}

/// The smallest photo side featjnd accepts: a photo is stretched to the model's input size, and
/// one a few pixels wide holds no scene to study.
pub const MIN_PHOTO_SIDE: u32 = 16;

/// Shapes of a list of tensors, for messages.
fn shapes(ts: &[Tensor]) -> String {
    ts.iter().map(|t| format!("{:?}", t.size())).collect::<Vec<_>>().join(", ")
}

/// Whether `t` is floating point with every value finite.
fn finite_float(t: &Tensor) -> Result<bool> {
    Ok(t.is_floating_point() && bool::try_from(t.f_isfinite()?.f_all()?)?)
}

/// Runs `pair` once on one mid-grey input of `size` and checks what comes out against the task
/// its sidecar declares, before any photo is read or any work is done (docs/user-models.md): features and
/// outputs finite, a classification tail returning one `[1, classes]` tensor of logits, a
/// detection tail returning torchvision's `(boxes [N, 4], labels [N], scores [N], masks,
/// batch_index [N])`. The message names the shapes and the sidecar field to set.
pub fn check_pair(pair: &TorchScriptPair, size: (u32, u32)) -> Result<()> {
    let split = pair.split_points().remove(0);
    let (head, tail) = pair.paths();
    let x = Tensor::f_full([1, 3, size.0 as i64, size.1 as i64], 0.5, (Kind::Float, pair.device()))?;
    let outs = tch::no_grad(|| -> Result<_> {
        let f = pair.head(&x, &split)?;
        for (i, t) in f.iter().enumerate() {
            if !finite_float(t)? {
                return Err(Error::Model(format!(
                    "{}: feature {i} ({:?}, {:?}) is not finite floating point on a mid-grey {}x{} input",
                    head.display(),
                    t.size(),
                    t.kind(),
                    size.0,
                    size.1
                )));
            }
        }
        pair.tail(&f, &split)
    })?;
    let sidecar = head.parent().map(|d| d.join(crate::model::torchscript::SIDECAR)).unwrap_or_default();
    match pair.spec().task {
        TaskKind::Classification => {
            let logits = outs.len() == 1 && outs[0].dim() == 2 && outs[0].size()[0] == 1 && outs[0].size()[1] >= 2;
            if !logits {
                return Err(Error::Model(format!(
                    "{} returns {} for one input, not [B, classes] logits, but the task is `classification` (the default): \
                     set `task` in {} to `dense` with `outputs` (softmax, sigmoid or identity per output) for maps [B, C, H, W], \
                     or to `detection-segmentation` for torchvision detection outputs (see docs/user-models.md)",
                    tail.display(),
                    shapes(&outs),
                    sidecar.display()
                )));
            }
            if !finite_float(&outs[0])? {
                return Err(Error::Model(format!("{}: the logits are not finite on a mid-grey input", tail.display())));
            }
        }
        TaskKind::DetectionSegmentation => {
            let n = outs.first().map(|b| b.size()[0]).unwrap_or(-1);
            let det = outs.len() >= 5
                && outs[0].dim() == 2
                && outs[0].size()[1] == 4
                && [1usize, 2, 4].iter().all(|&k| outs[k].dim() == 1 && outs[k].size()[0] == n);
            if !det {
                return Err(Error::Model(format!(
                    "{} returns {}, not torchvision's (boxes [N, 4], labels [N], scores [N], masks, batch_index [N]), but the task is \
                     `detection-segmentation`: set `task` in {} to `classification` for one [B, classes] tensor of logits \
                     (see docs/user-models.md)",
                    tail.display(),
                    shapes(&outs),
                    sidecar.display()
                )));
            }
        }
        TaskKind::Dense => {
            let kinds = pair.spec().outputs.clone().unwrap_or_default();
            super::dense::check_outputs(&kinds, &outs, "for one input").map_err(|e| {
                Error::Model(format!(
                    "{} returns {} for one input, but {} declares `outputs` {:?}: {e}",
                    tail.display(),
                    shapes(&outs),
                    sidecar.display(),
                    kinds.iter().map(|k| k.name()).collect::<Vec<_>>()
                ))
            })?;
            for o in &outs {
                if !finite_float(o)? {
                    return Err(Error::Model(format!("{}: the dense outputs are not finite on a mid-grey input", tail.display())));
                }
            }
        }
        other => {
            return Err(Error::Model(format!(
                "{}: task {other:?} is not one a user model can declare (classification, detection-segmentation or dense)",
                sidecar.display()
            )))
        }
    }
    Ok(())
}

/// The user task of `spec`, with its split of the photos.
pub fn build(spec: &UserSpec, sizes: Sizes, device: Device) -> Result<(Task, UserImages)> {
    let pair = TorchScriptPair::load_dir(&spec.model, device)?;
    let id = task_id(&pair);
    let det = is_detection(&pair);
    let size = input_size(spec, &pair);
    check_pair(&pair, size)?;
    if det && !(size.0.is_multiple_of(32) && size.1.is_multiple_of(32)) {
        return Err(Error::Arg(format!(
            "a torchvision detector needs an input size with both sides multiples of 32, got {}x{}",
            size.0, size.1
        )));
    }
    let imgs = load_images(&spec.images, spec.heldout_fraction)?;
    let cap = if det { sizes.nanodet_eval } else { sizes.mobilenet_eval };
    let held = &imgs.heldout[..imgs.heldout.len().min(cap)];
    let xs: Vec<Tensor> = held.iter().map(|i| image_tensor(&i.image, size)).collect();
    let per_batch = if det { 4 } else { 16 };
    let eval: Vec<Tensor> = xs.chunks(per_batch).map(|c| Tensor::stack(c, 0).to_device(device)).collect();
    let batch_sizes: Vec<i64> = eval.iter().map(|x| x.size()[0]).collect();
    let samples = if det {
        // The attribution pictures read the bundled tasks' outputs; none for a torchvision detector.
        Vec::new()
    } else {
        held.iter().take(4).map(|i| (stem(&i.file), image_tensor(&i.image, size))).collect()
    };
    let train_imgs: Vec<Rgb32FImage> = imgs.train.iter().map(|i| i.image.clone()).collect();
    let tb = if det { DETECT_TRAIN_BATCH } else { CLASSIFY_TRAIN_BATCH };
    let train: BatchFn = Box::new(move |step| {
        let xs = (0..tb)
            .map(|k| {
                let n = (step * tb + k) as u64;
                let mut rng = SplitMix(0x5553_4552 ^ n);
                train_view(&train_imgs[rng.below(train_imgs.len() as u64) as usize], size, n)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&xs, 0).to_device(device))
    });
    let scorer = if det {
        let (h, w, min_score) = (size.0, size.1, spec.pseudo_gt_score);
        Scorer::Custom(Box::new(move |outs, clean| det_metrics(outs, clean, &batch_sizes, h, w, min_score)))
    } else if let Some(kinds) = pair.spec().outputs.clone() {
        // `outputs` is set exactly for a dense task (`SplitSpec::validate`).
        Scorer::Dense(kinds)
    } else {
        Scorer::Unlabelled
    };
    Ok((Task { id, model: Box::new(pair), eval, scorer, samples, train }, imgs))
}

fn stem(file: &str) -> String {
    Path::new(file).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| file.to_string())
}

/// The user task `featjnd run --model` registered for [`super::tasks::build`] (one per process).
static REGISTERED: Mutex<Option<UserSpec>> = Mutex::new(None);

/// Registers the user task that `tasks::build(TaskId::User | TaskId::UserDet, ..)` builds.
pub fn register(spec: UserSpec) {
    *REGISTERED.lock().unwrap_or_else(|e| e.into_inner()) = Some(spec);
}

fn registered() -> Option<UserSpec> {
    REGISTERED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The registered model's sidecar (or `models/user/split.json` when none is registered, which
/// does not exist, so the task reports itself as missing).
pub fn registered_head(models: &Path) -> PathBuf {
    match registered() {
        Some(s) => s.model.join(crate::model::torchscript::SIDECAR),
        None => models.join("user").join(crate::model::torchscript::SIDECAR),
    }
}

/// Builds the registered user task (`id` must be its task id).
pub fn build_registered(id: TaskId, sizes: Sizes, device: Device) -> Result<Task> {
    let spec = registered().ok_or_else(|| Error::Arg("no user model registered: use `featjnd run --model DIR --images DIR`".into()))?;
    let (task, _) = build(&spec, sizes, device)?;
    if task.id != id {
        return Err(Error::Arg(format!("the registered model is a {} task, not {}", task.id.name(), id.name())));
    }
    Ok(task)
}

/// Default estimator training of a user task: hidden width 32 (the ResNet/FPN splits have 128–512
/// channels; 2·C·32 + 9·32² multiply-adds per position), 300 steps for a classifier, 100 for a
/// detector (a Mask R-CNN step costs seconds on a CPU).
pub fn jnd_defaults(id: TaskId) -> JndTrain {
    let d = JndTrain::default();
    match id {
        TaskId::UserDet => JndTrain { steps: 100, hidden: 32, ..d },
        _ => JndTrain { steps: 300, hidden: 32, ..d },
    }
}

/// A task discrepancy `(clean, perturbed) → [B]`.
pub type Discrepancy = Box<dyn Fn(&[Tensor], &[Tensor]) -> Tensor>;

/// The task discrepancy of a user task.
pub fn task_discrepancy(task: &Task, batch: i64) -> Discrepancy {
    match (&task.scorer, task.id) {
        (_, TaskId::UserDet) => Box::new(move |c: &[Tensor], p: &[Tensor]| det_discrepancy(c, p, batch)),
        (Scorer::Dense(kinds), _) => {
            let kinds = kinds.clone();
            // The outputs were checked against the kinds when the pair was loaded (`check_pair`);
            // the relative squared error is the fallback should a later call differ.
            Box::new(move |c: &[Tensor], p: &[Tensor]| {
                super::dense::discrepancy(&kinds, c, p).unwrap_or_else(|_| discrepancy(TaskKind::Dense, c, p))
            })
        }
        _ => Box::new(|c: &[Tensor], p: &[Tensor]| discrepancy(TaskKind::Classification, c, p)),
    }
}

/// Trains the estimator of a user task on its training photos.
pub fn train(task: &mut Task, t: &JndTrain) -> Result<(JndEstimator, Meta, Vec<LogPoint>)> {
    let split = task.model.split_points().remove(0);
    let batch = if task.id == TaskId::UserDet { DETECT_TRAIN_BATCH } else { CLASSIFY_TRAIN_BATCH } as i64;
    let disc = task_discrepancy(task, batch);
    let (est, mut meta, log) = train_estimator_with(task.model.as_ref(), &split, &mut task.train, t, disc.as_ref())?;
    meta.command = crate::cli::command_line();
    Ok((est, meta, log))
}

/// Pairwise IoU `[n, m]` of xyxy boxes `a [n, 4]` and `b [m, 4]` (differentiable).
pub fn box_iou(a: &Tensor, b: &Tensor) -> Tensor {
    let area = |t: &Tensor| (t.select(1, 2) - t.select(1, 0)).clamp_min(0.0) * (t.select(1, 3) - t.select(1, 1)).clamp_min(0.0);
    let (aa, ab) = (area(a), area(b));
    let (a2, b2) = (a.unsqueeze(1), b.unsqueeze(0));
    let lt = a2.narrow(2, 0, 2).maximum(&b2.narrow(2, 0, 2));
    let rb = a2.narrow(2, 2, 2).minimum(&b2.narrow(2, 2, 2));
    let wh = (rb - lt).clamp_min(0.0);
    let inter = wh.select(2, 0) * wh.select(2, 1);
    let union = aa.unsqueeze(1) + ab.unsqueeze(0) - &inter;
    inter / union.clamp_min(1e-6)
}

/// Image `b`'s `(boxes, labels, scores)` of torchvision detection outputs.
fn image_dets(o: &[Tensor], b: i64) -> (Tensor, Tensor, Tensor) {
    let idx = o[4].eq(b).nonzero().squeeze_dim(1);
    (o[0].index_select(0, &idx), o[1].index_select(0, &idx), o[2].index_select(0, &idx).to_kind(Kind::Float))
}

/// `[batch]` discrepancies of torchvision detection outputs `(boxes, labels, scores, masks,
/// batch_index)`, differentiable in the perturbed boxes and scores. Per image, with clean
/// detections `i` (score `s_i`) and perturbed ones `j` (score `t_j`), the match quality is
/// `q_ij = IoU(b_i, b_j) · [label_i = label_j] · min(s_i, t_j) / max(s_i, t_j)`;
/// `D = ½ (Σ_i s_i (1 − max_j q_ij) / Σ_i s_i + Σ_j t_j (1 − max_i q_ij) / Σ_j t_j)`: the
/// score-weighted share of clean detections not found again plus that of perturbed detections
/// that match none. 0 when the outputs are equal, 1 when one side has detections and the other
/// none (or nothing matches), 0 when both have none.
pub fn det_discrepancy(clean: &[Tensor], pert: &[Tensor], batch: i64) -> Tensor {
    let device = pert[0].device();
    let d: Vec<Tensor> = (0..batch)
        .map(|b| {
            let (bc, lc, sc) = image_dets(clean, b);
            let (bp, lp, sp) = image_dets(pert, b);
            let (nc, np) = (sc.size()[0], sp.size()[0]);
            if nc == 0 && np == 0 {
                return Tensor::zeros([], (Kind::Float, device));
            }
            if nc == 0 || np == 0 {
                return Tensor::ones([], (Kind::Float, device));
            }
            let (bc, sc) = (bc.detach().to_kind(Kind::Float), sc.detach());
            let same = lc.unsqueeze(1).eq_tensor(&lp.unsqueeze(0)).to_kind(Kind::Float);
            let (s2, t2) = (sc.unsqueeze(1), sp.unsqueeze(0));
            let ratio = s2.minimum(&t2) / s2.maximum(&t2).clamp_min(1e-6);
            let q = box_iou(&bc, &bp.to_kind(Kind::Float)) * same * ratio;
            let miss = (&sc * (q.amax([1i64].as_slice(), false).neg() + 1.0)).sum(Kind::Float) / sc.sum(Kind::Float).clamp_min(1e-6);
            let extra =
                (&sp * (q.amax([0i64].as_slice(), false).neg() + 1.0)).sum(Kind::Float) / sp.detach().sum(Kind::Float).clamp_min(1e-6);
            (miss + extra) * 0.5
        })
        .collect();
    Tensor::stack(&d, 0)
}

/// COCO box (and mask) statistics of torchvision detection outputs against the clean outputs'
/// detections with score ≥ `min_score` (pseudo ground truth). `batch_sizes[k]`: images of batch `k`.
pub fn det_metrics(
    outs: &[Vec<Tensor>],
    clean: &[Vec<Tensor>],
    batch_sizes: &[i64],
    h: u32,
    w: u32,
    min_score: f32,
) -> Result<BTreeMap<String, f64>> {
    let masks = clean.first().is_some_and(|c| c.len() >= 5 && c[3].dim() == 4);
    let mut gt_box = Vec::new();
    let mut gt_mask = Vec::new();
    let mut dets = Vec::new();
    let mut images = Vec::new();
    let mut max_label = 90i64;
    for ((o, c), &n) in outs.iter().zip(clean).zip(batch_sizes) {
        if o.len() < 5 || c.len() < 5 {
            return Err(Error::Model(format!(
                "a detection tail must return (boxes, labels, scores, masks, batch_index), got {} tensor(s)",
                o.len()
            )));
        }
        for b in 0..n {
            let image_id = images.len() as i64 + 1;
            images.push(Image { id: image_id, height: Some(h as u64), width: Some(w as u64) });
            for (src, is_gt) in [(c, true), (o, false)] {
                let idx = src[4].eq(b).nonzero().squeeze_dim(1);
                let boxes = host(&src[0].index_select(0, &idx))?;
                let labels = Vec::<i64>::try_from(&src[1].index_select(0, &idx).to_kind(Kind::Int64).to_device(Device::Cpu))?;
                let scores = host(&src[2].index_select(0, &idx))?;
                let mask_rles: Vec<Option<(serde_json::Value, f64)>> = if masks {
                    let m = src[3].index_select(0, &idx).to_device(Device::Cpu).gt(0.5).to_kind(Kind::Uint8).contiguous();
                    (0..labels.len() as i64)
                        .map(|k| {
                            let mk = m.get(k).flatten(0, -1);
                            let v = Vec::<u8>::try_from(&mk).unwrap_or_default();
                            let area = v.iter().filter(|&&x| x != 0).count() as f64;
                            let (hh, ww) = (m.size()[2] as usize, m.size()[3] as usize);
                            Some((serde_json::json!({"size": [hh, ww], "counts": crate::data::shapes::mask_to_rle(&v, hh, ww)}), area))
                        })
                        .collect()
                } else {
                    vec![None; labels.len()]
                };
                for k in 0..labels.len() {
                    let bb = &boxes[4 * k..4 * k + 4];
                    let xywh = [bb[0] as f64, bb[1] as f64, (bb[2] - bb[0]) as f64, (bb[3] - bb[1]) as f64];
                    max_label = max_label.max(labels[k]);
                    if is_gt {
                        if scores[k] < min_score {
                            continue;
                        }
                        let ann = |id: i64, seg: Option<serde_json::Value>, area: f64| GtAnnotation {
                            id,
                            image_id,
                            category_id: labels[k],
                            bbox: Some(xywh),
                            segmentation: seg,
                            area,
                            iscrowd: false,
                            ignore: false,
                        };
                        gt_box.push(ann(gt_box.len() as i64 + 1, None, xywh[2] * xywh[3]));
                        if let Some((seg, area)) = &mask_rles[k] {
                            gt_mask.push(ann(gt_mask.len() as i64 + 1, Some(seg.clone()), *area));
                        }
                    } else {
                        dets.push(Detection {
                            image_id,
                            category_id: labels[k],
                            bbox: Some(xywh),
                            segmentation: mask_rles[k].as_ref().map(|(s, _)| s.clone()),
                            score: scores[k] as f64,
                        });
                    }
                }
            }
        }
    }
    let categories: Vec<Category> = (1..=max_label).map(|id| Category { id }).collect();
    let mut m = BTreeMap::new();
    let n_gt = gt_box.len();
    let gt = GroundTruth { images: images.clone(), categories: categories.clone(), annotations: gt_box };
    let st = coco::evaluate(&gt, &dets, IouType::Bbox)?;
    m.insert("box_ap".into(), st.ap);
    m.insert("box_ap50".into(), st.ap50);
    if masks {
        let gt = GroundTruth { images: images.clone(), categories, annotations: gt_mask };
        let st = coco::evaluate(&gt, &dets, IouType::Segm)?;
        m.insert("mask_ap".into(), st.ap);
        m.insert("mask_ap50".into(), st.ap50);
    } else {
        // The study reads every metric of the task; a tail without masks has none.
        m.insert("mask_ap".into(), f64::NAN);
        m.insert("mask_ap50".into(), f64::NAN);
    }
    m.insert("pseudo_gt_boxes".into(), n_gt as f64);
    m.insert("images".into(), images.len() as f64);
    m.insert("detections".into(), dets.len() as f64);
    Ok(m)
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(&t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous().flatten(0, -1))?)
}
