//! `featjnd run` (the main job) and `featjnd train-jnd`.

use crate::estimator::train::JndTrain;
use crate::study::run::{estimator_path, jnd_defaults, run as run_study, train_jnd, RunConfig};
use crate::study::tasks::TaskId;
use crate::Result;
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
    /// Strategies of the quantization study, comma-separated (default: capped,jnd,permuted,
    /// uniform,per-channel,absmax): `jnd`, `permuted`, `uniform`, `per-channel`, `absmax`,
    /// `capped[:KAPPA[:GAMMA]]` (cap factor κ, default 2; tolerances raised to γ, default 1).
    #[arg(long, value_delimiter = ',')]
    pub quant_strategies: Vec<String>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: &RunArgs) -> Result<serde_json::Value> {
    if a.user.data.model.is_some() {
        return super::user::run(a);
    }
    let cfg = RunConfig {
        out: a.out.clone(),
        models: a.models.clone(),
        cache: a.cache.clone(),
        tasks: if a.tasks.is_empty() { TaskId::ALL.to_vec() } else { a.tasks.clone() },
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
}

impl TrainJndArgs {
    /// The training configuration: `defaults` with the options given on the command line.
    pub fn train_config(&self, defaults: JndTrain) -> JndTrain {
        JndTrain {
            steps: self.steps.unwrap_or(defaults.steps),
            eps: self.eps.unwrap_or(defaults.eps),
            tau: self.tau.unwrap_or(defaults.tau),
            hidden: self.hidden.unwrap_or(defaults.hidden),
            seed: self.seed,
            quiet: self.quiet,
            ..defaults
        }
    }
}

pub fn train(a: &TrainJndArgs) -> Result<serde_json::Value> {
    let (Some(task), Some(split)) = (a.task, a.split.clone()) else { return super::user::train(a) };
    let t = a.train_config(jnd_defaults(task, &split));
    let out = a.out.clone().unwrap_or_else(|| estimator_path(&a.models, task, &split));
    if a.distill_oracle {
        let meta = crate::study::run::distill_jnd(task, &split, &a.models, &out, &t, super::parse_device(&a.device)?)?;
        return Ok(serde_json::json!({"out": out, "metrics": meta.metrics}));
    }
    let meta = train_jnd(task, &split, &a.models, &out, &t, super::parse_device(&a.device)?)?;
    Ok(serde_json::json!({"checkpoint": out, "metrics": meta.metrics}))
}
