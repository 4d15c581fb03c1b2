//! `featjnd run` (the main job) and `featjnd train-jnd`.

use crate::estimator::train::{JndTrain, Objective};
use crate::study::run::{estimator_path, jnd_defaults, run as run_study, train_jnd, RunConfig};
use crate::study::tasks::{EvalPhotos, TaskId};
use crate::{Error, Result};
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Report folder (report.md, summary.json, PNGs).
    #[arg(long, default_value = "out/report")]
    pub out: PathBuf,
    /// Tasks to run (default: fmnist, shapes, mobilenet, nanodet; a task whose data is missing is
    /// skipped with the reason in the report).
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "model")]
    pub tasks: Vec<TaskId>,
    /// A user's model instead of the bundled tasks (`--model DIR --images DIR`, see `cli::user`).
    #[command(flatten)]
    pub user: super::user::UserRunArgs,
    /// Only these split points (default: each task's study splits; a name a task lacks is skipped).
    #[arg(long, value_delimiter = ',')]
    pub splits: Vec<String>,
    /// Smoke-test mode: tiny held-out sets, two NRMSE levels, one seed, 15-step estimators when
    /// none is committed or cached.
    #[arg(long)]
    pub quick: bool,
    /// The longer preset: three noise seeds, all nine NRMSE levels on NanoDet, NanoDet's
    /// quantization study, 7 quantization budgets (0.003–0.5) and the `absmax` strategy (the
    /// defaults keep the main job within 10 minutes on a 2-core machine).
    #[arg(long, conflicts_with = "quick")]
    pub full: bool,
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    #[arg(long, default_value = ".cache/featjnd")]
    pub cache: PathBuf,
    /// Estimator training steps when one has to be trained.
    #[arg(long)]
    pub jnd_steps: Option<usize>,
    /// Train the estimators again even if committed or cached ones exist.
    #[arg(long)]
    pub retrain: bool,
    /// Only the token-wise quantization study (what `featjnd eval-quant` runs).
    #[arg(long, conflicts_with = "perturb_only")]
    pub quant_only: bool,
    /// Only the matched-NRMSE study and the attribution pictures.
    #[arg(long)]
    pub perturb_only: bool,
    /// Strategies of the quantization study, comma-separated (default: the task's guided rule
    /// `jnd:0.25`, its shuffled control `permuted:0.25`, `uniform`, `per-channel` and `oracle`;
    /// `--full` adds `jnd`, `capped` and `absmax`): `jnd[:GAMMA]` (steps ∝ j_t^γ), `permuted[:GAMMA]`,
    /// `uniform`, `per-channel`, `absmax`, `capped[:KAPPA[:GAMMA]]` (cap factor κ, default 2;
    /// tolerances raised to γ, default 1), `oracle` (steps ∝ F_t^(−1/2) from the task's gradients).
    #[arg(long, value_delimiter = ',')]
    pub quant_strategies: Vec<String>,
    /// Evaluate the photo tasks on the corpus's validation photos (carved from its training
    /// photos by group) instead of the held-out ones: for choosing settings, never for reporting.
    #[arg(long, conflicts_with = "model")]
    pub validation: bool,
    /// The room-per-split diagnostic: add oracle controls of these exponents (of 0.5, 1, 1.5, 2,
    /// 3, 4) to the study's one (p = 2), e.g. `--oracle-powers 0.5,1,3 --perturb-only`.
    #[arg(long, value_delimiter = ',')]
    pub oracle_powers: Vec<f64>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub quiet: bool,
}

/// The photos the run evaluates the photo tasks on, and the tasks: `--images DIR` without
/// `--model` takes the photo tasks only (mobilenet and nanodet by default; naming another task is
/// an error, not a silent corpus run).
fn eval_photos(a: &RunArgs) -> Result<(EvalPhotos, Vec<TaskId>)> {
    let tasks = |default: &[TaskId]| if a.tasks.is_empty() { default.to_vec() } else { a.tasks.clone() };
    match (&a.user.data.images, a.validation) {
        (Some(_), true) => Err(Error::Arg("--images and --validation exclude each other".into())),
        (Some(dir), false) => {
            let tasks = tasks(&EvalPhotos::TASKS);
            if let Some(t) = tasks.iter().find(|t| !EvalPhotos::TASKS.contains(t)) {
                return Err(Error::Arg(format!(
                    "--images DIR evaluates the photo tasks (mobilenet, nanodet); task `{}` has its own data (drop it from --tasks)",
                    t.name()
                )));
            }
            // Checked now, before any model is loaded: an empty or bad folder fails at once.
            crate::study::tasks::load_folder(dir)?;
            Ok((EvalPhotos::Folder(dir.clone()), tasks))
        }
        (None, true) => Ok((EvalPhotos::Validation, tasks(&EvalPhotos::TASKS))),
        (None, false) => Ok((EvalPhotos::HeldOut, tasks(&TaskId::ALL))),
    }
}

pub fn run(a: &RunArgs) -> Result<serde_json::Value> {
    if a.user.data.model.is_some() {
        return super::user::run(a);
    }
    let (photos, tasks) = eval_photos(a)?;
    for &p in &a.oracle_powers {
        crate::study::perturb::NoiseShape::oracle_power(p)?;
    }
    let cfg = RunConfig {
        oracle_powers: a.oracle_powers.clone(),
        photos,
        out: a.out.clone(),
        models: a.models.clone(),
        cache: a.cache.clone(),
        tasks,
        quick: a.quick,
        full: a.full,
        splits: a.splits.clone(),
        device: super::parse_device(&a.device)?,
        quiet: a.quiet,
        jnd_steps: a.jnd_steps.or(if a.quick { Some(15) } else { None }),
        retrain: a.retrain,
        perturb: !a.quant_only,
        quant: !a.perturb_only,
        quant_strategies: a.quant_strategies.iter().map(|s| crate::study::quant::QStrategy::parse(s)).collect::<Result<_>>()?,
    };
    let s = run_study(&cfg)?;
    Ok(serde_json::json!({"report": a.out.join("report.md"), "seconds": s["seconds"]}))
}

#[derive(Debug, Clone, clap::Args)]
pub struct TrainJndArgs {
    /// A bundled task (or `--model DIR --images DIR` for a user's model).
    #[arg(long, value_enum, required_unless_present = "model", conflicts_with = "model")]
    pub task: Option<TaskId>,
    /// Split point (see the task's model; with --model, the pair's one split, optional).
    #[arg(long, required_unless_present = "model")]
    pub split: Option<String>,
    #[command(flatten)]
    pub user: super::user::UserData,
    /// Output checkpoint (default models/jnd/<task>-<split>.safetensors; with --model
    /// DIR/featjnd-<split>.safetensors).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub eps: Option<f64>,
    #[arg(long)]
    pub tau: Option<f64>,
    /// Hidden width of the estimator (default: the task's, see `jnd_defaults`).
    #[arg(long)]
    pub hidden: Option<i64>,
    /// Context branch of the estimator: pool the hidden map by this factor, two 3×3 convs on the
    /// coarse grid, upsample and add (`estimator` module docs). 0 (the default) = no branch.
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..=64))]
    pub context: Option<i64>,
    /// Training objective: `sensitivity` (the default: shape from the task's per-element
    /// sensitivity with the task's validated exponent, scale held at the constraint),
    /// `sensitivity:P` (exponent P), or `log` (the paper's relaxation, the `featjnd-log` ablation).
    #[arg(long)]
    pub objective: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub quiet: bool,
    /// A diagnostic, not the method: train the estimator to reproduce the oracle control's maps
    /// (`estimator::distill`) instead of the constrained objective. Bundled tasks only.
    #[arg(long, requires = "task")]
    pub distill_oracle: bool,
    /// Only set the scale of the sensitivity-objective estimator at --out again (its shape is
    /// kept): bisection on fresh training batches so that E[max(0, D−ε)] = τ, then measured on
    /// others. Bundled tasks only.
    #[arg(long, requires = "task", conflicts_with = "distill_oracle")]
    pub recalibrate: bool,
    /// With --recalibrate: fresh batches for the bisection, and as many for the measurement
    /// (default 32; more where the hinge of a batch is heavy-tailed).
    #[arg(long, requires = "recalibrate", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub calibration_batches: Option<u32>,
    /// With --recalibrate: the exponent of the learned shape, `J = s·std·u^A` (the estimator
    /// module's `sharpen`; 1 = as trained), set before the scale is found again.
    #[arg(long, requires = "recalibrate")]
    pub sharpen: Option<f64>,
}

impl TrainJndArgs {
    /// The training configuration: `defaults` with the options given on the command line.
    pub fn train_config(&self, defaults: JndTrain) -> Result<JndTrain> {
        let default_power = match defaults.objective {
            Objective::Sensitivity { power } => power,
            Objective::Log => crate::estimator::sensitivity::DEFAULT_POWER,
        };
        let objective = match &self.objective {
            Some(o) => Objective::parse(o, default_power)?,
            None => defaults.objective,
        };
        Ok(JndTrain {
            objective,
            steps: self.steps.unwrap_or(defaults.steps),
            eps: self.eps.unwrap_or(defaults.eps),
            tau: self.tau.unwrap_or(defaults.tau),
            hidden: self.hidden.unwrap_or(defaults.hidden),
            context: self.context.unwrap_or(defaults.context),
            seed: self.seed,
            quiet: self.quiet,
            ..defaults
        })
    }
}

pub fn train(a: &TrainJndArgs) -> Result<serde_json::Value> {
    let (Some(task), Some(split)) = (a.task, a.split.clone()) else { return super::user::train(a) };
    if a.user.images.is_some() {
        return Err(Error::Arg("--images is for --model DIR; a bundled task trains on its own data".into()));
    }
    let t = a.train_config(jnd_defaults(task, &split))?;
    let out = a.out.clone().unwrap_or_else(|| estimator_path(&a.models, task, &split));
    if a.recalibrate {
        let n = a.calibration_batches.map_or(crate::estimator::sensitivity::CALIBRATION_BATCHES, |n| n as usize);
        if let Some(s) = a.sharpen.filter(|s| !(s.is_finite() && *s > 0.0 && *s <= 16.0)) {
            return Err(Error::Arg(format!("--sharpen {s}: must be finite, > 0 and ≤ 16")));
        }
        let device = super::parse_device(&a.device)?;
        let meta = crate::study::run::recalibrate_jnd(task, &split, &a.models, &out, &t, n, a.sharpen, device)?;
        return Ok(serde_json::json!({"checkpoint": out, "metrics": meta.metrics}));
    }
    if a.distill_oracle {
        let meta = crate::study::run::distill_jnd(task, &split, &a.models, &out, &t, super::parse_device(&a.device)?)?;
        return Ok(serde_json::json!({"out": out, "metrics": meta.metrics}));
    }
    let meta = train_jnd(task, &split, &a.models, &out, &t, super::parse_device(&a.device)?)?;
    Ok(serde_json::json!({"checkpoint": out, "metrics": meta.metrics}))
}
