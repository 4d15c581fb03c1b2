//! The commands on a user's model (`--model DIR`, a TorchScript pair from
//! `tools/export_torchvision.py`) and photo folder (`--images DIR`): `featjnd train-jnd --model`,
//! `featjnd run --model` (and `eval-quant --model`) and `featjnd encode --model` (the
//! `encode-model` subcommand). The task itself is [`crate::study::user`].

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::study::{RunArgs, TrainJndArgs};
use crate::codec;
use crate::estimator::train::LogPoint;
use crate::estimator::JndEstimator;
use crate::model::checkpoint;
use crate::model::torchscript::TorchScriptPair;
use crate::model::SplitModel;
use crate::study::run::{estimator_path, run as run_study, RunConfig};
use crate::study::tasks::{Sizes, Task, PSEUDO_GT_SCORE};
use crate::study::user::{self, UserImages, UserSpec};
use crate::{ops, Bits, Error, Layout, Reduce, Result, Strategy};

/// A user's model and photos (shared by `train-jnd` and `run`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UserData {
    /// A user's model: a directory with head.pt, tail.pt and split.json (tools/export_torchvision.py).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// The photos for --model: a folder of png/jpg files, split by file name into estimator-training
    /// and held-out photos. Without --model (`featjnd run` only): evaluate the bundled photo tasks
    /// (mobilenet, nanodet) with their committed estimators on every photo in the folder.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Input size HxW the photos are stretched to (default 224x224 for a classifier, 320x448 for a
    /// detector).
    #[arg(long, value_name = "HxW", requires = "model")]
    pub size: Option<String>,
    /// Share of the photos held out from estimator training (by a hash of the file name).
    #[arg(long, default_value_t = user::HELDOUT_FRACTION)]
    pub heldout_fraction: f64,
    /// Detector: clean detections with at least this score are the pseudo ground truth.
    #[arg(long, default_value_t = PSEUDO_GT_SCORE)]
    pub pseudo_gt_score: f32,
}

impl UserData {
    /// The spec, or `None` without `--model`.
    pub fn spec(&self) -> Result<Option<UserSpec>> {
        let Some(model) = &self.model else { return Ok(None) };
        let images = self.images.clone().ok_or_else(|| Error::Arg("--model needs --images DIR (a folder of png/jpg photos)".into()))?;
        Ok(Some(UserSpec {
            model: model.clone(),
            images,
            size: self.size.as_deref().map(user::parse_size).transpose()?,
            heldout_fraction: self.heldout_fraction,
            pseudo_gt_score: self.pseudo_gt_score,
        }))
    }
}

/// The `--model` options of `featjnd run`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UserRunArgs {
    #[command(flatten)]
    pub data: UserData,
    /// The estimator of --model (default: train one, `--jnd-steps`, and cache it in --out/jnd/).
    #[arg(long, value_name = "FILE", requires = "model")]
    pub jnd: Option<PathBuf>,
}

fn images_json(imgs: &UserImages) -> Value {
    json!({"heldout": imgs.heldout_files(), "train": imgs.train_files()})
}

/// What identifies the estimator a run may reuse from its cache.
fn fingerprint(spec: &UserSpec, steps: usize) -> String {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    let len = |f: &str| std::fs::metadata(spec.model.join(f)).map(|m| m.len()).unwrap_or(0);
    format!(
        "model={} head={} tail={} images={} size={:?} heldout={} steps={steps}",
        canon(&spec.model),
        len("head.pt"),
        len("tail.pt"),
        canon(&spec.images),
        spec.size,
        spec.heldout_fraction
    )
}

fn save_log(ckpt: &Path, log: &[LogPoint]) -> Result<()> {
    checkpoint::write_atomic(&ckpt.with_extension("log.json"), serde_json::to_string(log).unwrap_or_default().as_bytes())
}

/// Checks that `est` fits the features of `task` at `split`.
fn check_estimator(task: &Task, split: &str, est: &JndEstimator, path: &Path) -> Result<()> {
    let f = tch::no_grad(|| task.model.head(&task.eval[0].narrow(0, 0, 1), split))?;
    let ch: Vec<i64> = f.iter().map(|t| t.size()[1]).collect();
    if ch != est.config.channels {
        return Err(Error::Model(format!(
            "estimator {} is for features with channels {:?}, the model's split {split} has {ch:?}",
            path.display(),
            est.config.channels
        )));
    }
    Ok(())
}

/// `featjnd run --model DIR --images DIR` (also `eval-quant --model`).
pub fn run(a: &RunArgs) -> Result<Value> {
    let spec = a.user.data.spec()?.ok_or_else(|| Error::Arg("--model DIR is required".into()))?;
    let device = super::parse_device(&a.device)?;
    let sizes = if a.quick { Sizes::QUICK } else { Sizes::DEFAULT };
    let (mut task, imgs) = user::build(&spec, sizes, device)?;
    let split = task.model.split_points().remove(0);
    if !a.splits.is_empty() && !a.splits.contains(&split) {
        return Err(Error::Arg(format!("the model has the one split {split:?}, not {:?}", a.splits)));
    }
    std::fs::create_dir_all(&a.out).map_err(|e| Error::Io(format!("{}: {e}", a.out.display())))?;
    // The study finds the estimator at OUT/jnd/<task>-<split>.safetensors (models = cache = OUT).
    let ckpt = estimator_path(&a.out, task.id, &split);
    let mut t = user::jnd_defaults(task.id);
    t.quiet = a.quiet;
    if let Some(s) = a.jnd_steps.or(if a.quick { Some(15) } else { None }) {
        t.steps = s;
    }
    let fp = format!("{}\nobjective {}", fingerprint(&spec, t.steps), t.objective.name());
    let fp_path = ckpt.with_extension("source.txt");
    let estimator_from = if let Some(given) = &a.user.jnd {
        let (est, meta) = JndEstimator::load(given, device)?;
        check_estimator(&task, &split, &est, given)?;
        est.save(&meta, &ckpt)?;
        let log = given.with_extension("log.json");
        let _ = std::fs::remove_file(ckpt.with_extension("log.json"));
        if log.is_file() {
            std::fs::copy(&log, ckpt.with_extension("log.json")).map_err(|e| Error::Io(format!("{}: {e}", log.display())))?;
        }
        checkpoint::write_atomic(&fp_path, format!("given {}", given.display()).as_bytes())?;
        format!("given ({})", given.display())
    } else {
        let cached = !a.retrain && ckpt.is_file() && std::fs::read_to_string(&fp_path).is_ok_and(|s| s == fp);
        if cached {
            "cached (same model, photos and steps)".to_string()
        } else {
            let (est, meta, log) = user::train(&mut task, &t)?;
            est.save(&meta, &ckpt)?;
            save_log(&ckpt, &log)?;
            checkpoint::write_atomic(&fp_path, fp.as_bytes())?;
            format!("trained now ({} steps)", t.steps)
        }
    };
    drop(task);
    user::register(spec.clone());
    let cfg = RunConfig {
        out: a.out.clone(),
        models: a.out.clone(),
        cache: a.out.clone(),
        tasks: vec![crate::study::user::task_id(&TorchScriptPair::load_dir(&spec.model, device)?)],
        quick: a.quick,
        full: false,
        splits: vec![split.clone()],
        device,
        quiet: a.quiet,
        jnd_steps: Some(t.steps),
        retrain: false,
        perturb: !a.quant_only,
        quant: !a.perturb_only,
        quant_strategies: a.quant_strategies.iter().map(|s| crate::study::quant::QStrategy::parse(s)).collect::<Result<_>>()?,
        photos: crate::study::tasks::EvalPhotos::HeldOut,
        oracle_powers: a.oracle_powers.clone(),
    };
    let s = run_study(&cfg)?;
    // The user section: the model, the photos held out, the discrepancy.
    let pair = TorchScriptPair::load_dir(&spec.model, device)?;
    let det = user::is_detection(&pair);
    // `outputs` is set exactly for a dense task (`SplitSpec::validate`).
    let dense = pair.spec().outputs.clone();
    let task_name = match (&dense, det) {
        (Some(_), _) => "dense",
        (None, true) => "detection",
        (None, false) => "classification",
    };
    let size = user::input_size(&spec, &pair);
    let mut section = format!(
        "\n## Your model\n\nModel `{}` ({}, split `{split}`, task {}), photos `{}` stretched to {}x{} (RGB in [0, 1]). Estimator: {estimator_from}, \
         `{}`.\n\nHeld out ({} of {} photos, by a hash of the file name, fraction {}): {}.\n\nEstimator training photos: {}.\n\n",
        spec.model.display(),
        pair.spec().arch,
        if det { "torchvision detection" } else { task_name },
        spec.images.display(),
        size.0,
        size.1,
        ckpt.strip_prefix(&a.out).unwrap_or(&ckpt).display(),
        imgs.heldout.len(),
        imgs.heldout.len() + imgs.train.len(),
        spec.heldout_fraction,
        imgs.heldout_files().join(", "),
        imgs.train_files().join(", "),
    );
    if a.quick && imgs.heldout.len() > sizes.mobilenet_eval.min(sizes.nanodet_eval) {
        section.push_str("Quick mode evaluates only the first 8 held-out photos.\n\n");
    }
    if det {
        section.push_str(&format!(
            "Task discrepancy (estimator training): a soft matching of the perturbed detections to the clean ones (IoU × same label × \
             score ratio, score-weighted misses and extras, `study::user::det_discrepancy`). It is a stand-in: differentiable in the \
             surviving detections' boxes and scores only, blind to which detections survive the threshold and NMS, and masks are not \
             in it. Metrics: COCO AP of the perturbed detections against the clean detections with score ≥ {} as pseudo ground truth \
             (the `pseudo ground truth` line above quotes the bundled default). No attribution pictures for a detector.\n",
            spec.pseudo_gt_score
        ));
    } else if let Some(kinds) = &dense {
        section.push_str(&format!(
            "Dense outputs ({}). Task discrepancy per output: softmax KL per pixel, Bernoulli KL per element, or relative squared \
             error (identity), summed. Metrics against the clean output, mean over outputs and images: `agreement` (same argmax / \
             same side of 0.5 / within 10% of the clean RMS), `iou` (mean IoU of the argmax maps / IoU of the maps at 0.5 / IoU of \
             the regions above the clean median), `psnr`, `rel_l2`, and `peak_f1` with sigmoid outputs (see `study::dense`). Attribution target: every pixel's largest logit, summed over pixels and outputs.\n",
            kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
        ));
    } else {
        section.push_str("Task discrepancy: KL of the logits. Metrics: agreement with the clean top-1, top-5 agreement, KL (no labels).\n");
    }
    let report = a.out.join("report.md");
    let mut text = std::fs::read_to_string(&report).map_err(|e| Error::Io(format!("{}: {e}", report.display())))?;
    let at = text.find("\n## ").unwrap_or(text.len());
    text.insert_str(at, &section);
    checkpoint::write_atomic(&report, text.as_bytes())?;
    let summary_path = a.out.join("summary.json");
    let mut summary = s.clone();
    summary["user"] = json!({
        "model": spec.model, "images": spec.images, "size": [size.0, size.1], "task": task_name,
        "split": split, "heldout_fraction": spec.heldout_fraction, "pseudo_gt_score": spec.pseudo_gt_score,
        "estimator": ckpt, "estimator_from": estimator_from, "photos": images_json(&imgs),
    });
    checkpoint::write_atomic(&summary_path, serde_json::to_string_pretty(&summary).unwrap_or_default().as_bytes())?;
    Ok(json!({"report": report, "summary": summary_path, "estimator": ckpt, "heldout": imgs.heldout_files(), "seconds": s["seconds"]}))
}

/// `featjnd train-jnd --model DIR --images DIR --out FILE`.
pub fn train(a: &TrainJndArgs) -> Result<Value> {
    let spec = a.user.spec()?.ok_or_else(|| Error::Arg("--model DIR is required".into()))?;
    let device = super::parse_device(&a.device)?;
    let (mut task, imgs) = user::build(&spec, Sizes::QUICK, device)?;
    let split = task.model.split_points().remove(0);
    if let Some(s) = &a.split {
        if *s != split {
            return Err(Error::Arg(format!("the model has the one split {split:?}, not {s:?}")));
        }
    }
    let t = a.train_config(user::jnd_defaults(task.id))?;
    let out = a.out.clone().unwrap_or_else(|| spec.model.join(format!("featjnd-{split}.safetensors")));
    let (est, meta, log) = user::train(&mut task, &t)?;
    est.save(&meta, &out)?;
    save_log(&out, &log)?;
    Ok(
        json!({"checkpoint": out, "log": out.with_extension("log.json"), "split": split, "metrics": meta.metrics, "photos": images_json(&imgs)}),
    )
}

/// `featjnd encode --model DIR [--jnd FILE] IMAGE… --out DIR` (subcommand `encode-model`).
#[derive(Debug, Clone, clap::Args)]
pub struct EncodeModelArgs {
    /// The model: a directory with head.pt, tail.pt and split.json.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The model's estimator (from `train-jnd --model`): token-wise steps `∝ j_t^γ` (the
    /// quantization study's rule, docs/quantization.md §5). Without it, uniform steps.
    #[arg(long, value_name = "FILE")]
    pub jnd: Option<PathBuf>,
    /// Photos (png/jpg), stretched to the input size.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Output folder: IMAGE-STEM.fjq per photo (IMAGE-STEM.K.fjq for the K-th tensor of a
    /// multi-tensor split such as an FPN).
    #[arg(short = 'o', long = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Budget d: the measured MSE per element as a share of the feature's mean square (D = d·mean(x²)).
    #[arg(long, default_value_t = 0.03)]
    pub budget: f64,
    /// Exponent γ of the token tolerances (steps ∝ j_t^γ; needs --jnd). Default: the quantization
    /// study's choice on validation photos (`study::run::QUANT_GAMMA`, 0.25).
    #[arg(long)]
    pub gamma: Option<f32>,
    /// Cap each token's step at κ × its RMS (contract §3.5's capped allocation; needs --jnd).
    /// Default: no cap.
    #[arg(long)]
    pub kappa: Option<f32>,
    /// NCHW patch size (default: the quantization study's choice, C·p² ≥ 64).
    #[arg(long)]
    pub patch: Option<usize>,
    /// Input size HxW (default 224x224 for a classifier, 320x448 for a detector).
    #[arg(long, value_name = "HxW")]
    pub size: Option<String>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn encode(a: &EncodeModelArgs) -> Result<Value> {
    let device = super::parse_device(&a.device)?;
    let pair = TorchScriptPair::load_dir(&a.model, device)?;
    let split = pair.split_points().remove(0);
    let mut spec = UserSpec::new(&a.model, "");
    spec.size = a.size.as_deref().map(user::parse_size).transpose()?;
    let size = user::input_size(&spec, &pair);
    user::check_pair(&pair, size)?;
    if !(a.budget > 0.0 && a.budget.is_finite()) {
        return Err(Error::Arg(format!("--budget {} must be > 0", a.budget)));
    }
    if a.jnd.is_none() && (a.gamma.is_some() || a.kappa.is_some()) {
        return Err(Error::Arg("--gamma and --kappa shape the token-wise steps of an estimator: they need --jnd FILE".into()));
    }
    let gamma = a.gamma.unwrap_or(crate::study::run::QUANT_GAMMA);
    if !(gamma.is_finite() && gamma > 0.0) {
        return Err(Error::Arg(format!("--gamma {gamma} must be > 0")));
    }
    if let Some(k) = a.kappa.filter(|k| !(k.is_finite() && *k > 0.0)) {
        return Err(Error::Arg(format!("--kappa {k} must be > 0")));
    }
    let est = a.jnd.as_ref().map(|p| JndEstimator::load(p, device).map(|(e, _)| e)).transpose()?;
    for path in &a.images {
        user::check_photo(path)?;
    }
    std::fs::create_dir_all(&a.out).map_err(|e| Error::Io(format!("{}: {e}", a.out.display())))?;
    let mut files = Vec::new();
    for path in &a.images {
        let x = user::image_tensor(&user::load_image(path)?, size).unsqueeze(0).to_device(device);
        let (feats, maps) = tch::no_grad(|| -> Result<_> {
            let f = pair.head(&x, &split)?;
            let j = est.as_ref().map(|e| e.forward_for_steps(&f)).transpose()?;
            Ok((f, j))
        })?;
        let patch = a.patch.unwrap_or_else(|| crate::study::quant::choose_patch(&feats.iter().map(|f| f.size()).collect::<Vec<_>>()));
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        for (k, f) in feats.iter().enumerate() {
            let f = f.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
            let ms = f.square().mean(Kind::Float).f_double_value(&[])?;
            let budget = a.budget * ms;
            let (steps, m, strategy) = match &maps {
                Some(j) => {
                    let j = j[k].to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
                    let jt = ops::token_tolerance(&j, Layout::Nchw, patch, Reduce::Mean)?;
                    let jt = if gamma == 1.0 { jt } else { jt.f_pow_tensor_scalar(gamma as f64)?.f_clamp_min(f32::MIN_POSITIVE as f64)? };
                    let caps = a.kappa.map(|k| ops::caps_from_rms(&ops::token_rms(&f, Layout::Nchw, patch)?, k)).transpose()?;
                    let (s, m) = super::allocate(&f, Layout::Nchw, patch, &jt, caps.as_ref(), budget, Strategy::Jnd, Bits::B8, true)?;
                    let name = match a.kappa {
                        Some(k) => crate::study::quant::QStrategy::Capped(k, gamma).name(),
                        None => crate::study::quant::QStrategy::Jnd(gamma).name(),
                    };
                    (s, m, name)
                }
                None => {
                    let grid = ops::grid_of(&f, Layout::Nchw, patch)?;
                    let jt = Tensor::ones([grid.tokens() as i64], (Kind::Float, Device::Cpu));
                    let (s, m) = super::allocate(&f, Layout::Nchw, patch, &jt, None, budget, Strategy::Uniform, Bits::B8, true)?;
                    (s, m, "uniform".to_string())
                }
            };
            // One step for the whole tensor when the steps are all equal, else token steps on the
            // default grid.
            let enc = codec::encode(&f, &steps, Layout::Nchw, patch, Bits::B8)?;
            let name = if feats.len() == 1 { format!("{stem}.fjq") } else { format!("{stem}.{k}.fjq") };
            let file = a.out.join(name);
            std::fs::write(&file, &enc.bytes).map_err(|e| Error::Io(format!("{}: {e}", file.display())))?;
            files.push(json!({
                "image": path, "file": file, "feature": k, "shape": f.size(), "patch": patch, "strategy": strategy,
                "budget_rel": a.budget, "budget": budget, "beta": m.map(|m| m.beta), "measured_mse": enc.mse, "relative_mse": enc.mse / ms,
                "file_bytes": enc.rate.file_bytes, "bits_per_element": enc.rate.bits_per_element,
            }));
        }
    }
    Ok(json!({"command": "encode --model", "model": a.model, "split": split, "size": [size.0, size.1], "jnd": a.jnd, "files": files}))
}
