//! `featjnd run`: the whole study end to end on the bundled tasks. For every task and split
//! point: load (or train and cache) the FeatJND estimator, run the matched-NRMSE study, draw the
//! curves and the attribution panels, then write `report.md` and `summary.json`.

use super::attrib;
use super::perturb::{run_split, NoiseShape, SplitCurves};
use super::plot::{line_chart, Series};
use super::quant::{self, QStrategy};
use super::stats;
use super::tasks::{build, build_with, EvalPhotos, Sizes, Task, TaskId};
use crate::estimator::train::{train_estimator, JndTrain, LogPoint, Objective};
use crate::estimator::JndEstimator;
use crate::model::checkpoint::{self, Meta};
use crate::{Error, Result};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tch::Device;

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub out: PathBuf,
    /// Committed task models and estimators (`models/`, `models/jnd/`).
    pub models: PathBuf,
    /// Where estimators trained by this command are cached.
    pub cache: PathBuf,
    pub tasks: Vec<TaskId>,
    pub quick: bool,
    /// The longer preset (more quantization budgets and strategies).
    pub full: bool,
    /// Only these split points (empty: each task's study splits).
    pub splits: Vec<String>,
    pub device: Device,
    pub quiet: bool,
    /// Estimator training steps when one must be trained (`None`: per-task default).
    pub jnd_steps: Option<usize>,
    /// Train estimators even when a committed or cached one exists.
    pub retrain: bool,
    /// Which parts run: the matched-NRMSE study with attribution, the quantization study.
    pub perturb: bool,
    pub quant: bool,
    /// The quantization study's strategies (empty: the defaults).
    pub quant_strategies: Vec<QStrategy>,
    /// The photos of the photo tasks (held-out corpus photos by default).
    pub photos: EvalPhotos,
    /// The room-per-split diagnostic: oracle controls of these exponents beside the study's
    /// (`p = 2`) one (empty: none).
    pub oracle_powers: Vec<f64>,
}

impl RunConfig {
    /// The NRMSE levels of `task`. The defaults are sized so that the main job stays within 10
    /// minutes on a 2-core machine: NanoDet's tail costs ≈ 2 s per pass over its 65 held-out
    /// photos there, so it gets the four levels where Gaussian noise costs points (below 0.5 no
    /// shape loses more than a point of AP50).
    pub fn levels_for(&self, task: TaskId) -> Vec<f64> {
        if self.quick {
            vec![0.1, 0.5]
        } else if task == TaskId::Nanodet && !self.full {
            vec![0.5, 1.0, 1.5, 2.0]
        } else {
            vec![0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0]
        }
    }
    /// The noise seeds of `task`: one by default where the intervals are over images (an image's
    /// variation between noise draws is small against the variation between images, and every
    /// image draws its own noise); three for the shapes detector, whose AP carries no interval
    /// without `--full` (its band is then the seeds' min–max); three everywhere with `--full`.
    pub fn seeds_for(&self, task: TaskId) -> Vec<u64> {
        if self.quick {
            vec![1]
        } else if self.full || !self.det_intervals(task) {
            vec![1, 2, 3]
        } else {
            vec![1]
        }
    }
    /// Whether the perturbation study bootstraps `task`'s detection AP (a COCO evaluation per
    /// replicate and point). On the shapes detector (100 scenes) that took several minutes per
    /// split, so only with `--full` there; NanoDet always (the real detector).
    pub fn det_intervals(&self, task: TaskId) -> bool {
        task != TaskId::Shapes || self.full
    }
    /// Whether the quantization study runs on `task`: NanoDet's (≈ 25 passes per split plus a
    /// COCO evaluation per bootstrap replicate) only with `--full` or when NanoDet is the only
    /// task named.
    pub fn quant_on(&self, task: TaskId) -> bool {
        self.quant && (task != TaskId::Nanodet || self.full || self.tasks == [TaskId::Nanodet])
    }
    pub fn budgets(&self) -> Vec<f64> {
        if self.quick {
            vec![0.03, 0.3]
        } else if self.full {
            vec![0.003, 0.01, 0.03, 0.1, 0.2, 0.35, 0.5]
        } else {
            vec![0.01, 0.03, 0.1, 0.3, 0.5]
        }
    }
    /// The quantization study's strategies for `task`: its guided rule ([`quant_rule`]), that
    /// rule's shuffled control, one uniform step, per-channel steps and the oracle-steps control;
    /// `--full` adds plain `jnd`, contract §3.5's cap at κ = 2 and `absmax`.
    pub fn quant_strategies(&self, task: TaskId) -> Vec<QStrategy> {
        use QStrategy::*;
        if !self.quant_strategies.is_empty() {
            return self.quant_strategies.clone();
        }
        let rule = quant_rule(task);
        let mut v = vec![rule];
        if self.quick {
            v.extend([Uniform, Channel]);
            return v;
        }
        v.extend(rule.permuted_control());
        v.extend([Uniform, Channel, Oracle]);
        if self.full {
            for s in [Jnd(1.0), Capped(2.0, 1.0), Absmax] {
                if !v.contains(&s) {
                    v.push(s);
                }
            }
        }
        v
    }
    pub fn sizes(&self) -> Sizes {
        if self.quick {
            Sizes::QUICK
        } else if self.full {
            Sizes::FULL
        } else {
            Sizes::DEFAULT
        }
    }
}

/// The guided quantization rule of each task: steps `∝ j_t^γ` (`QStrategy::Jnd(γ)`), γ chosen
/// on the validation photos (docs/quantization.md §"Choosing the rule").
pub fn quant_rule(_id: TaskId) -> QStrategy {
    QStrategy::Jnd(QUANT_GAMMA)
}

/// γ of [`quant_rule`]: on the 30 validation photos (2026-12-07), mean BD-rate vs one uniform step
/// over each photo task's splits for γ = 1 / 0.5 / 0.25: MobileNetV2 +48 / +18 / +11%, NanoDet
/// −11 / −4 / −22% (`capped:2` +21% / −14%, `capped:2:0.5` +16% / −6%). Fashion-MNIST and the
/// shapes detector have no validation photos and take the photo tasks' choice.
pub const QUANT_GAMMA: f32 = 0.25;

/// Default estimator training of each task (and split point, where the capacity differs): the
/// sensitivity objective (`estimator::sensitivity`) with the exponent `p` chosen per task on
/// validation photos ([`VALIDATED_POWER`]).
pub fn jnd_defaults(id: TaskId, split: &str) -> JndTrain {
    let d = JndTrain { objective: Objective::Sensitivity { power: validated_power(id) }, ..JndTrain::default() };
    match id {
        TaskId::Fmnist => JndTrain { steps: 300, ..d },
        TaskId::Shapes => JndTrain { steps: 150, ..d },
        // Capacity per split by the cost bound (≤ 10% of the backbone's forward time; MobileNetV2
        // is ≈ 300 M multiply-adds at 224×224). Per position the estimator costs 2·C·h + 9·h²:
        // stage2 (C 24, 56²) h 24 → 20 M (≈ 7%), stage3 (C 32, 28²) h 48 → 19 M (≈ 6%), stage5
        // (C 96, 14²) h 96 → 20 M (≈ 7%); `featjnd run` measures the time fraction (3–9%).
        TaskId::Mobilenet => {
            let hidden = match split {
                "stage2" => 24,
                "stage3" => 48,
                _ => 96,
            };
            JndTrain { steps: 300, hidden, ..d }
        }
        // Hidden width 32: 2·128·32 + 9·32² ≈ 17 k multiply-adds per position, 47 M at `stage2`
        // and 62 M at `neck` against ≈ 2 G for NanoDet at 416×416 (≈ 3%; `featjnd run` measures it).
        TaskId::Nanodet => JndTrain { steps: 300, hidden: 32, ..d },
        // A user's model (`featjnd run --model`): see `study::user::jnd_defaults`.
        TaskId::User | TaskId::UserDet | TaskId::UserDense => super::user::jnd_defaults(id),
    }
}

/// The exponent `p` of the sensitivity objective per task, chosen on validation photos (never
/// the held-out ones) by the goal metric: `models/README.md` has the validation numbers.
pub const VALIDATED_POWER: [(TaskId, f64); 4] =
    [(TaskId::Fmnist, 2.0), (TaskId::Shapes, 2.0), (TaskId::Mobilenet, 2.0), (TaskId::Nanodet, 2.0)];

/// [`VALIDATED_POWER`] of `id` (the oracle control's exponent for a user's model).
pub fn validated_power(id: TaskId) -> f64 {
    VALIDATED_POWER.iter().find(|(t, _)| *t == id).map_or(crate::estimator::sensitivity::DEFAULT_POWER, |(_, p)| *p)
}

/// The log-objective estimator of `task`/`split` kept as the `featjnd-log` ablation, where one is
/// committed (`<models>/jnd-log/<task>-<split>.safetensors`); never trained by `run`.
pub fn ablation_path(models: &Path, id: TaskId, split: &str) -> PathBuf {
    models.join("jnd-log").join(format!("{}-{split}.safetensors", id.name()))
}

fn ablation_estimator(id: TaskId, split: &str, cfg: &RunConfig) -> Result<Option<(JndEstimator, PathBuf)>> {
    let p = ablation_path(&cfg.models, id, split);
    if !p.is_file() {
        return Ok(None);
    }
    // Where the default estimator is the log one itself (a task not retrained yet), the ablation
    // would repeat the featjnd curve: skip it.
    let same = |a: &Path, b: &Path| std::fs::read(a).ok().zip(std::fs::read(b).ok()).is_some_and(|(x, y)| x == y);
    if same(&p, &estimator_path(&cfg.models, id, split)) {
        return Ok(None);
    }
    let (e, _) = JndEstimator::load(&p, cfg.device)?;
    Ok(Some((e, p)))
}

/// Committed estimator of `task`/`split`.
pub fn estimator_path(models: &Path, id: TaskId, split: &str) -> PathBuf {
    models.join("jnd").join(format!("{}-{split}.safetensors", id.name()))
}

/// Loads the committed or cached estimator, or trains one (and caches it). Returns it with its
/// metadata, the training log when it was trained now, and where it came from.
pub fn estimator(task: &mut Task, split: &str, cfg: &RunConfig) -> Result<(JndEstimator, Meta, Option<Vec<LogPoint>>, PathBuf)> {
    let committed = estimator_path(&cfg.models, task.id, split);
    let cached = estimator_path(&cfg.cache, task.id, split);
    if !cfg.retrain {
        for p in [&committed, &cached] {
            if p.is_file() {
                let (e, m) = JndEstimator::load(p, cfg.device)?;
                return Ok((e, m, load_log(p), p.clone()));
            }
        }
    }
    let mut t = jnd_defaults(task.id, split);
    t.quiet = cfg.quiet;
    if let Some(s) = cfg.jnd_steps {
        t.steps = s;
    }
    let (est, mut meta, log) = train_estimator(task.model.as_ref(), split, &mut task.train, &t)?;
    meta.command = crate::cli::command_line();
    est.save(&meta, &cached)?;
    save_log(&cached, &log)?;
    Ok((est, meta, Some(log), cached))
}

/// The training log sits beside the estimator checkpoint as `<name>.log.json`.
fn log_path(ckpt: &Path) -> PathBuf {
    ckpt.with_extension("log.json")
}

fn save_log(ckpt: &Path, log: &[LogPoint]) -> Result<()> {
    checkpoint::write_atomic(&log_path(ckpt), serde_json::to_string(log).unwrap_or_default().as_bytes())
}

fn load_log(ckpt: &Path) -> Option<Vec<LogPoint>> {
    let text = std::fs::read_to_string(log_path(ckpt)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Plots the constraint `E[max(0, D−ε)]` (EMA over 10 steps) against τ, and λ, over training.
fn plot_log(out: &Path, name: &str, log: &[LogPoint], tau: f64) -> Result<(PathBuf, PathBuf)> {
    let mut ema = Vec::with_capacity(log.len());
    let mut e = log.first().map(|p| p.hinge).unwrap_or(0.0);
    for p in log {
        e = 0.9 * e + 0.1 * p.hinge;
        ema.push(e);
    }
    let x: Vec<f64> = log.iter().map(|p| p.step as f64).collect();
    let a = out.join(format!("jnd-constraint-{name}.png"));
    line_chart(
        &a,
        &format!("{name}: constraint E[max(0, D-eps)] (EMA) vs tau"),
        "step",
        "hinge",
        &[
            Series { name: "hinge".into(), x: x.clone(), y: ema, lo: vec![], hi: vec![] },
            Series { name: "tau".into(), x: x.clone(), y: vec![tau; x.len()], lo: vec![], hi: vec![] },
        ],
    )?;
    let b = out.join(format!("jnd-lambda-{name}.png"));
    // The sensitivity objective has no multiplier: its shape loss and scale instead.
    let (title, curves): (&str, [(&str, Vec<f64>); 2]) = if log.iter().any(|p| p.shape_loss != 0.0) {
        (
            "shape loss (centred-log MSE) and log s",
            [("shape loss", log.iter().map(|p| p.shape_loss).collect()), ("log s", log.iter().map(|p| p.log_scale).collect())],
        )
    } else {
        (
            "multiplier lambda and mean log(J/std)",
            [("lambda", log.iter().map(|p| p.lambda).collect()), ("log J", log.iter().map(|p| p.log_j).collect())],
        )
    };
    let series: Vec<Series> = curves.into_iter().map(|(n, y)| Series { name: n.into(), x: x.clone(), y, lo: vec![], hi: vec![] }).collect();
    line_chart(&b, &format!("{name}: {title}"), "step", "value", &series)?;
    Ok((a, b))
}

fn rel(path: &Path, base: &Path) -> String {
    path.strip_prefix(base).unwrap_or(path).display().to_string()
}

/// A row of the goal table: at the first level where Gaussian noise costs at least the goal's
/// drop, the drops (clean − metric) of Gaussian noise and of FeatJND, with their 95% bootstrap
/// intervals over images where the metric is a per-image mean.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalRow {
    pub nrmse: f64,
    pub gaussian: f64,
    pub featjnd: f64,
    pub gaussian_ci: Option<(f64, f64)>,
    pub featjnd_ci: Option<(f64, f64)>,
    /// 95% interval of FeatJND's drop minus Gaussian's over the same resamples (paired).
    pub paired_ci: Option<(f64, f64)>,
    /// The oracle control's drop at the same level and its interval (`None` without the oracle).
    pub oracle: Option<f64>,
    pub oracle_ci: Option<(f64, f64)>,
    /// The `featjnd-log` ablation's drop at the same level and its interval (`None` without it).
    pub ablation: Option<f64>,
    pub ablation_ci: Option<(f64, f64)>,
}

impl GoalRow {
    /// FeatJND's drop interval lies entirely below Gaussian's (`None` without intervals).
    pub fn separated(&self) -> Option<bool> {
        Some(self.featjnd_ci?.1 < self.gaussian_ci?.0)
    }
}

/// The first `r` at which Gaussian noise costs at least `drop` of `metric`, and FeatJND's cost there.
pub fn goal(c: &SplitCurves, metric: &str, drop: f64) -> Option<GoalRow> {
    let clean = *c.clean.get(metric)?;
    let g = c.curves.get("gaussian")?;
    let j = c.curves.get("featjnd")?;
    let i = g.iter().position(|pg| clean - pg.mean[metric] >= drop)?;
    Some(GoalRow {
        nrmse: g[i].nrmse,
        gaussian: clean - g[i].mean[metric],
        featjnd: clean - j.get(i)?.mean[metric],
        gaussian_ci: c.drop_interval("gaussian", i, metric),
        featjnd_ci: c.drop_interval("featjnd", i, metric),
        paired_ci: c
            .drop_replicates("featjnd", i, metric)
            .zip(c.drop_replicates("gaussian", i, metric))
            .and_then(|(j, g)| stats::interval95(&j.iter().zip(&g).map(|(a, b)| a - b).collect::<Vec<_>>())),
        oracle: c.curves.get("oracle").and_then(|o| o.get(i)).map(|p| clean - p.mean[metric]),
        oracle_ci: c.drop_interval("oracle", i, metric),
        ablation: c.curves.get("featjnd-log").and_then(|o| o.get(i)).map(|p| clean - p.mean[metric]),
        ablation_ci: c.drop_interval("featjnd-log", i, metric),
    })
}

/// FeatJND against each other deployable shape (not the oracle controls) at the levels where any
/// of them loses ≥ 1 point of `metric`:
/// (better, overlapping, worse) counts of (level, shape) pairs, by the 95% intervals of the metric
/// (better: FeatJND's interval entirely above); by the point values where there are no intervals.
pub fn versus_others(c: &SplitCurves, metric: &str) -> (usize, usize, usize) {
    let (mut better, mut tie, mut worse) = (0, 0, 0);
    let Some(clean) = c.clean.get(metric).copied() else { return (0, 0, 0) };
    let Some(j) = c.curves.get("featjnd") else { return (0, 0, 0) };
    let deployable = || c.curves.iter().filter(|(n, _)| !n.starts_with("oracle"));
    for (i, pj) in j.iter().enumerate() {
        if !deployable().any(|(_, pts)| pts.get(i).is_some_and(|p| clean - p.mean[metric] >= 0.01)) {
            continue;
        }
        for pts in deployable().filter(|(n, _)| n.as_str() != "featjnd").map(|(_, p)| p) {
            let Some(po) = pts.get(i) else { continue };
            match (pj.ci95.get(metric), po.ci95.get(metric)) {
                (Some(a), Some(b)) if a.0 > b.1 => better += 1,
                (Some(a), Some(b)) if a.1 < b.0 => worse += 1,
                (Some(_), Some(_)) => tie += 1,
                _ if pj.mean[metric] > po.mean[metric] => better += 1,
                _ if pj.mean[metric] < po.mean[metric] => worse += 1,
                _ => tie += 1,
            }
        }
    }
    (better, tie, worse)
}

/// `12.3 [8.1, 16.9]` in points (the interval when there is one).
fn pts(v: f64, ci: Option<(f64, f64)>) -> String {
    match ci {
        Some((lo, hi)) => format!("{:.1} [{:.1}, {:.1}]", 100.0 * v, 100.0 * lo, 100.0 * hi),
        None => format!("{:.1}", 100.0 * v),
    }
}

/// Runs everything; returns the summary that is also written to `summary.json`.
pub fn run(cfg: &RunConfig) -> Result<Value> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::Io(format!("{}: {e}", cfg.out.display())))?;
    let t0 = std::time::Instant::now();
    let mut report = String::new();
    let mut summary = serde_json::Map::new();
    writeln!(report, "# FeatJND study report\n").ok();
    writeln!(
        report,
        "Command: `{}`. Mode: {}. NRMSE levels and noise seeds: per task, in each task's section. Bands and [intervals]: 95% percentile bootstrap over \
         held-out images ({} replicates; each image's value is its mean over the seeds) for per-image metrics (top-1, agreement); \
         for the headline detection AP, {} replicates each scored again by a COCO evaluation on the resampled images (mean over \
         seeds); min–max over seeds for the other detection metrics.\n",
        crate::cli::command_line(),
        if cfg.quick { "quick (smoke test: tiny sets, numbers not meaningful)" } else { "full" },
        super::perturb::BOOT_REPLICATES,
        super::perturb::DET_REPLICATES
    )
    .ok();
    let mut skipped = Vec::new();
    let mut goal_rows = Vec::new();
    let mut goal_rows_q = Vec::new();
    for &id in &cfg.tasks {
        let mut task = match build_with(id, &cfg.models, cfg.sizes(), cfg.device, &cfg.photos) {
            Ok(t) => t,
            Err(e) => {
                skipped.push(format!("{}: {e}", id.name()));
                writeln!(report, "## {}\n\nSkipped: {e}\n", id.name()).ok();
                summary.insert(id.name().into(), json!({"skipped": e.to_string()}));
                continue;
            }
        };
        let (levels, seeds) = (cfg.levels_for(id), cfg.seeds_for(id));
        writeln!(report, "## Task `{}` ({})\n", id.name(), task.model.arch()).ok();
        writeln!(report, "NRMSE levels {levels:?}, noise seeds {seeds:?}.\n").ok();
        if EvalPhotos::TASKS.contains(&id) {
            writeln!(report, "Evaluated on {} ({} photos).\n", cfg.photos.describe(), task.eval.iter().map(|x| x.size()[0]).sum::<i64>())
                .ok();
        }
        let mut task_json = serde_json::Map::new();
        task_json.insert("levels".into(), json!(levels));
        task_json.insert("seeds".into(), json!(seeds));
        if id == TaskId::Nanodet && !cfg.quick && cfg.photos == EvalPhotos::HeldOut {
            let corpus = crate::data::corpus::Corpus::open_default()?;
            if let Some(g) = super::real_gt::evaluate(task.model.as_ref(), &corpus, cfg.device)? {
                writeln!(
                    report,
                    "Sanity check against **real** boxes (not the study's protocol): the clean detector on the {} annotated held-out photos \
                     ({}; {} boxes): AP {:.3}, AP50 {:.3}; {} of {} boxes found (same class, IoU ≥ 0.5, score ≥ 0.3).\n",
                    g.photos.len(),
                    g.photos.join(", "),
                    g.boxes,
                    g.ap,
                    g.ap50,
                    g.found,
                    g.boxes
                )
                .ok();
                task_json.insert("real_gt".into(), serde_json::to_value(&g).unwrap_or_default());
            }
        }
        let splits: Vec<String> = match id.study_splits() {
            Some(s) => s.iter().map(|s| s.to_string()).collect(),
            None => task.model.split_points(),
        };
        let splits: Vec<String> = splits.into_iter().filter(|s| cfg.splits.is_empty() || cfg.splits.contains(s)).collect();
        for split in splits {
            let (est, meta, log, from) = estimator(&mut task, &split, cfg)?;
            writeln!(report, "### Split `{split}`\n").ok();
            if let Some(log) = &log {
                let tau = meta.metrics.get("tau").copied().unwrap_or(0.0);
                let (a, b) = plot_log(&cfg.out, &format!("{}-{split}", id.name()), log, tau)?;
                writeln!(report, "![constraint]({})\n\n![lambda]({})\n", rel(&a, &cfg.out), rel(&b, &cfg.out)).ok();
            }
            let (t_model, t_est) = estimator_cost(&task, &split, &est)?;
            writeln!(
                report,
                "Estimator cost: {:.1} ms vs {:.1} ms for the whole model on the first two held-out batches ({:.1}% of the backbone's forward time; best of 3, this machine).\n",
                t_est * 1e3,
                t_model * 1e3,
                100.0 * t_est / t_model
            )
            .ok();
            let how = if est.config.objective.starts_with("sensitivity") {
                format!(
                    "objective `{}`, scale s = {:.3} set by bisection on fresh training batches, hinge measured on {} others",
                    est.config.objective,
                    est.config.scale,
                    meta.metrics.get("check_batches").copied().unwrap_or(f64::NAN)
                )
            } else {
                format!("objective `log`, λ = {:.2}", meta.metrics.get("final_lambda").copied().unwrap_or(f64::NAN))
            };
            writeln!(
                report,
                "Estimator `{}`: final E[max(0, D−ε)] = {:.4} against τ = {} (ε = {}); {how}; mean log(J/std) = {:.2}.\n",
                rel(&from, &cfg.out),
                meta.metrics.get("final_hinge").copied().unwrap_or(f64::NAN),
                meta.metrics.get("tau").copied().unwrap_or(f64::NAN),
                meta.metrics.get("eps").copied().unwrap_or(f64::NAN),
                meta.metrics.get("final_log_j").copied().unwrap_or(f64::NAN),
            )
            .ok();
            let mut split_json = json!({});
            let t_split = std::time::Instant::now();
            // The held-out batches (and, once needed, the oracle's probes) for both studies.
            let held = super::HeldOut::new(&task, &split, &est)?;
            if cfg.perturb {
                let ablation = ablation_estimator(task.id, &split, cfg)?;
                let mut shapes = NoiseShape::ALL.to_vec();
                for &p in cfg.oracle_powers.iter().filter(|&&p| p != super::oracle::POWER) {
                    shapes.push(NoiseShape::oracle_power(p)?);
                }
                if let Some((_, p)) = &ablation {
                    shapes.insert(1, NoiseShape::FeatJndLog);
                    writeln!(report, "Ablation `featjnd-log`: `{}`, the estimator trained with the paper's log objective.\n", p.display())
                        .ok();
                }
                let curves = run_split(
                    &task,
                    &split,
                    &held,
                    ablation.as_ref().map(|(e, _)| e),
                    &levels,
                    &seeds,
                    &shapes,
                    cfg.det_intervals(id),
                    cfg.quiet,
                )?;
                if let (Some(n), Some(b)) = (curves.clean.get("images"), curves.clean.get("pseudo_gt_boxes")) {
                    writeln!(
                        report,
                        "Held-out photos: {n}; pseudo ground truth: {b} clean detections with score ≥ {} (AP/AP50 of the perturbed detections against them).\n",
                        super::tasks::PSEUDO_GT_SCORE
                    )
                    .ok();
                }
                // Curves, one PNG per metric.
                for &metric in id.metrics() {
                    let series: Vec<Series> = shapes
                        .iter()
                        .map(|s| {
                            let pts = &curves.curves[s.name()];
                            Series {
                                name: s.name().into(),
                                x: pts.iter().map(|p| p.nrmse).collect(),
                                y: pts.iter().map(|p| p.mean[metric]).collect(),
                                lo: pts.iter().map(|p| p.ci95.get(metric).map_or(p.min[metric], |c| c.0)).collect(),
                                hi: pts.iter().map(|p| p.ci95.get(metric).map_or(p.max[metric], |c| c.1)).collect(),
                            }
                        })
                        .collect();
                    let png = cfg.out.join(format!("curve-{}-{split}-{metric}.png", id.name()));
                    line_chart(&png, &format!("{} / {split}: {metric} vs NRMSE", id.name()), "NRMSE", metric, &series)?;
                    writeln!(report, "![{metric}]({})\n", rel(&png, &cfg.out)).ok();
                }
                // Table of the headline metrics.
                let mut goals_json = serde_json::Map::new();
                for &metric in &id.metrics()[..id.metrics().len().min(2)] {
                    let band = if curves.clean_replicates.contains_key(metric) {
                        "95% bootstrap interval over images, COCO AP recomputed per replicate"
                    } else if curves.clean_per_image.contains_key(metric) {
                        "95% bootstrap interval over images"
                    } else {
                        "min, max over seeds"
                    };
                    writeln!(report, "`{metric}` (clean {:.4}); mean over seeds [{band}]:\n", curves.clean[metric]).ok();
                    writeln!(report, "| NRMSE | {} |", shapes.iter().map(|s| s.name()).collect::<Vec<_>>().join(" | ")).ok();
                    writeln!(report, "|---|{}", "---|".repeat(shapes.len())).ok();
                    for (i, &r) in levels.iter().enumerate() {
                        let cells: Vec<String> = shapes
                            .iter()
                            .map(|s| {
                                let p = &curves.curves[s.name()][i];
                                let (lo, hi) = p.ci95.get(metric).copied().unwrap_or((p.min[metric], p.max[metric]));
                                format!("{:.4} [{lo:.4}, {hi:.4}]", p.mean[metric])
                            })
                            .collect();
                        writeln!(report, "| {r} | {} |", cells.join(" | ")).ok();
                    }
                    writeln!(report).ok();
                    let (b, t, w) = versus_others(&curves, metric);
                    let vs = format!("{b}/{t}/{w}");
                    let mut gj = json!({"versus_others": {"better": b, "overlap": t, "worse": w}});
                    if let Some(g) = goal(&curves, metric, 0.10) {
                        gj["nrmse"] = json!(g.nrmse);
                        gj["gaussian_drop"] = json!(g.gaussian);
                        gj["featjnd_drop"] = json!(g.featjnd);
                        if let (Some(a), Some(b)) = (g.gaussian_ci, g.featjnd_ci) {
                            gj["gaussian_drop_ci95"] = json!(a);
                            gj["featjnd_drop_ci95"] = json!(b);
                            gj["win"] = json!(g.separated() == Some(true));
                        }
                        if let Some(p) = g.paired_ci {
                            gj["paired_difference_ci95"] = json!(p);
                        }
                        if let Some(o) = g.oracle {
                            gj["oracle_drop"] = json!(o);
                            gj["oracle_drop_ci95"] = json!(g.oracle_ci);
                        }
                        if let Some(o) = g.ablation {
                            gj["featjnd_log_drop"] = json!(o);
                            gj["featjnd_log_drop_ci95"] = json!(g.ablation_ci);
                        }
                        let met = match (g.featjnd <= 0.025, g.featjnd_ci) {
                            (true, Some((_, hi))) if hi <= 0.025 => "met (interval ≤ 2.5)",
                            (true, Some(_)) => "met (point; interval above 2.5)",
                            (true, None) => "met (point)",
                            (false, _) => "not met",
                        };
                        let win = match g.separated() {
                            Some(true) => "yes",
                            Some(false) => "no (intervals overlap)",
                            None => "n/a (AP: point values only)",
                        };
                        goal_rows.push(format!(
                            "| {} | {split} | {metric} | {} | {} | {} | {} | {} | {met} | {win} | {} | {vs} |",
                            id.name(),
                            g.nrmse,
                            pts(g.gaussian, g.gaussian_ci),
                            pts(g.featjnd, g.featjnd_ci),
                            g.ablation.map_or("–".into(), |o| pts(o, g.ablation_ci)),
                            g.oracle.map_or("–".into(), |o| pts(o, g.oracle_ci)),
                            g.paired_ci.map_or("–".into(), |ci| pts(g.featjnd - g.gaussian, Some(ci))),
                        ));
                    } else {
                        goal_rows.push(format!(
                            "| {} | {split} | {metric} | – | < 10 at every level | – | – | – | n/a | n/a | – | {vs} |",
                            id.name()
                        ));
                    }
                    goals_json.insert(metric.to_string(), gj);
                }
                // Attribution panels.
                let mut attr = Vec::new();
                let nsamples = if cfg.quick { 1 } else { task.samples.len() };
                for (name, x) in task.samples.iter().take(nsamples) {
                    let m = attrib::maps(&task, &split, &est, x, 0.3)?;
                    let png = cfg.out.join(format!("attrib-{}-{split}-{name}.png", id.name()));
                    attrib::panel(&png, &format!("{} / {split} / {name}", id.name()), &m)?;
                    writeln!(report, "![attribution {name}]({})\n", rel(&png, &cfg.out)).ok();
                    attr.push(json!({"sample": name, "spearman_gradcam": m.rho_gradcam, "spearman_grad_input": m.rho_grad_input}));
                }
                let rho: Vec<String> = attr
                    .iter()
                    .map(|a| {
                        format!(
                            "{} {:.2}/{:.2}",
                            a["sample"].as_str().unwrap_or(""),
                            a["spearman_gradcam"].as_f64().unwrap_or(f64::NAN),
                            a["spearman_grad_input"].as_f64().unwrap_or(f64::NAN)
                        )
                    })
                    .collect();
                if rho.is_empty() {
                    writeln!(report, "No attribution panels for this task (no Grad-CAM target at the split).\n").ok();
                } else {
                    writeln!(report, "Spearman ρ of 1/J with Grad-CAM / |grad×input| over positions: {}.\n", rho.join(", ")).ok();
                }
                // The same correlations over held-out images, with bootstrap intervals.
                let per_image = if cfg.quick { Vec::new() } else { attrib::rho_per_image(&task, &split, &est)? };
                let mut rho_json = serde_json::Map::new();
                for (name, pick) in [("gradcam", 0usize), ("grad_input", 1)] {
                    let v: Vec<f64> = per_image.iter().map(|p| if pick == 0 { p.0 } else { p.1 }).filter(|r| r.is_finite()).collect();
                    if v.len() < 2 {
                        continue;
                    }
                    let mean = v.iter().sum::<f64>() / v.len() as f64;
                    let reps: Vec<f64> = stats::resamples(v.len(), super::perturb::BOOT_REPLICATES, super::perturb::BOOT_SEED)
                        .iter()
                        .map(|idx| idx.iter().map(|&k| v[k]).sum::<f64>() / idx.len() as f64)
                        .collect();
                    let ci = stats::interval95(&reps);
                    rho_json.insert(name.into(), json!({"mean": mean, "ci95": ci, "images": v.len()}));
                }
                if let (Some(a), Some(b)) = (rho_json.get("gradcam"), rho_json.get("grad_input")) {
                    let f = |x: &Value| {
                        let ci = x["ci95"]
                            .as_array()
                            .map(|c| format!(" [{:.2}, {:.2}]", c[0].as_f64().unwrap_or(f64::NAN), c[1].as_f64().unwrap_or(f64::NAN)));
                        format!("{:.2}{}", x["mean"].as_f64().unwrap_or(f64::NAN), ci.unwrap_or_default())
                    };
                    writeln!(
                        report,
                        "Over {} held-out images (mean ρ [95% bootstrap interval]): 1/J vs Grad-CAM{} {}, 1/J vs |grad×input| {}.\n",
                        a["images"],
                        task.model.gradcam_split().map(|l| format!(" (read at `{l}`, resized to the split's grid)")).unwrap_or_default(),
                        f(a),
                        f(b)
                    )
                    .ok();
                }
                split_json = serde_json::to_value(&curves).unwrap_or_default();
                split_json["attribution"] = Value::Array(attr);
                split_json["attribution_over_images"] = Value::Object(rho_json);
                split_json["goal"] = Value::Object(goals_json);
            }
            let perturb_seconds = t_split.elapsed().as_secs_f64();
            if cfg.quant_on(id) {
                split_json["quant"] = quant_section(&mut report, &mut goal_rows_q, &task, &split, &held, cfg)?;
            }
            split_json["seconds"] =
                json!({"perturb_and_attribution": perturb_seconds, "quant": t_split.elapsed().as_secs_f64() - perturb_seconds});
            split_json["estimator"] = json!({"path": from, "metrics": meta.metrics, "log_points": log.as_ref().map(|l| l.len()).unwrap_or(0),
                "seconds_per_pass": t_est, "model_seconds_per_pass": t_model, "cost_fraction": t_est / t_model});
            if let Some(log) = &log {
                split_json["estimator"]["log"] =
                    serde_json::to_value(log.iter().step_by((log.len() / 50).max(1)).collect::<Vec<_>>()).unwrap_or_default();
            }
            task_json.insert(split.clone(), split_json);
        }
        summary.insert(id.name().into(), Value::Object(task_json));
    }
    if skipped.len() == cfg.tasks.len() {
        return Err(Error::Io(format!("no task could run: {}", skipped.join("; "))));
    }
    let mut head = String::new();
    writeln!(head, "## The goal: where Gaussian noise costs ≥ 10 points, FeatJND costs ≤ 2.5\n").ok();
    writeln!(
        head,
        "Drops in points with their 95% bootstrap intervals over held-out images (per-image metrics, and the headline detection \
         AP re-scored per replicate; the second detection metric has point values only). Win: FeatJND's drop interval lies entirely below Gaussian's. vs others: at the \
         levels where any shape loses ≥ 1 point, (level, shape) pairs where FeatJND's interval is above / overlaps / is below the \
         other deployable shape's (point values for AP). Paired: FeatJND's drop minus Gaussian's on the same resampled images, for \
         information (the win rule above is the stricter one). Oracle: the control shaped by the task's own gradients on each \
         image (`study::oracle`; not deployable): how much room a tolerance-shaped noise has at that NRMSE. FeatJND-log: the ablation \
         estimator trained with the paper's log objective (`models/jnd-log/`), where one is committed.\n"
    )
    .ok();
    writeln!(
        head,
        "| task | split | metric | NRMSE | Gaussian drop (pts) | FeatJND drop (pts) | FeatJND-log drop (pts) | oracle drop (pts) | goal (≤ 2.5) | win | FeatJND − Gaussian (pts, paired) | vs others (better/overlap/worse) |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    .ok();
    for r in &goal_rows {
        writeln!(head, "{r}").ok();
    }
    writeln!(head).ok();
    if cfg.quant {
        writeln!(
            head,
            "## Quantization goals: BD-rate ≤ −15% against uniform steps (real file sizes) on two or more real splits, half of the oracle steps' saving where it is ≥ 15%; at equal measured MSE never below uniform or permuted, strictly better at one budget or more\n"
        )
        .ok();
        writeln!(
            head,
            "BD-rate: mean log-rate difference over the shared metric range (negative = fewer bits). Brackets: percentile bootstrap \
             95% interval over images (200 replicates for classification; 50 for detection, where each replicate recomputes COCO AP \
             on the resampled images, so those intervals are coarser). Worst gap: the lowest metric difference over the budgets at equal measured MSE, with its paired \
             bootstrap interval. Oracle steps: `Δ_t ∝ F_t^(−1/2)` from the task's own gradients on the image being coded (a control for \
             the room, not deployable); \"captured\": the strategy's BD-rate over the oracle's, shown where the oracle saves ≥ 15%. \
             Class-coder est.: BD-rates at the rate of an ideal coder with one table per token scale class (an estimate, not files; \
             today's files have one table per tensor). Equal-budget claim: guided ≥ uniform and ≥ its permuted control at every budget \
             (no paired interval below 0) and strictly better against both at one budget or more (the per-budget tables below).\n"
        )
        .ok();
        writeln!(
            head,
            "| task | split | metric | strategy | BD-rate vs uniform | class-coder est.: strategy / oracle vs uniform | BD-rate vs per-channel | oracle steps vs uniform | equal-budget claim | worst gap at equal MSE |\n|---|---|---|---|---|---|---|---|---|---|"
        )
        .ok();
        for r in &goal_rows_q {
            writeln!(head, "{r}").ok();
        }
        writeln!(head).ok();
    }
    if !cfg.perturb {
        head = head[head.find("## Quantization").unwrap_or(0)..].to_string();
    }
    let idx = report.find("## ").unwrap_or(report.len());
    report.insert_str(idx, &head);
    writeln!(report, "\nWall time: {:.0} s.", t0.elapsed().as_secs_f64()).ok();
    let summary = json!({
        "config": {"quick": cfg.quick, "full": cfg.full, "sizes": cfg.sizes(), "device": format!("{:?}", cfg.device)},
        "tasks": Value::Object(summary),
        "seconds": t0.elapsed().as_secs_f64(),
    });
    checkpoint::write_atomic(&cfg.out.join("report.md"), report.as_bytes())?;
    checkpoint::write_atomic(&cfg.out.join("summary.json"), serde_json::to_string_pretty(&summary).unwrap_or_default().as_bytes())?;
    Ok(summary)
}

/// Seconds for one pass over the held-out batches of the whole model, and of the estimator on the
/// split-point features (best of three, features computed outside the timing).
fn estimator_cost(task: &Task, split: &str, est: &JndEstimator) -> Result<(f64, f64)> {
    tch::no_grad(|| -> Result<(f64, f64)> {
        // Two held-out batches are enough for the ratio (the whole set made this a minute of the
        // main job on NanoDet).
        let eval = &task.eval[..task.eval.len().min(2)];
        let feats: Vec<_> = eval.iter().map(|x| task.model.head(x, split)).collect::<Result<_>>()?;
        let (mut tm, mut te) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..3 {
            let t = std::time::Instant::now();
            for x in eval {
                let _ = task.model.forward(x)?;
            }
            tm = tm.min(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            for f in &feats {
                let _ = est.forward(f)?;
            }
            te = te.min(t.elapsed().as_secs_f64());
        }
        Ok((tm, te))
    })
}

/// The oracle steps' BD-rate saving from which the share the guided steps capture is reported
/// (docs/quantization.md §5: where the oracle saves ≥ 15%, the guided steps should capture half of it).
const ORACLE_ROOM: f64 = 0.15;

/// A BD-rate and its bootstrap interval (`None`: undefined, e.g. no shared metric range).
type BdRate = (Option<f64>, Option<(f64, f64)>);

/// Bootstrap replicates of the quantization statistics: 200 where a replicate is a mean
/// (classification), 50 where it is a COCO evaluation (detection: tens of milliseconds each, for
/// ~30 points per split), 40 in quick mode.
fn quant_replicates(cfg: &RunConfig, scorer: &super::tasks::Scorer) -> usize {
    use super::tasks::Scorer;
    match (cfg.quick, scorer) {
        (true, _) => 40,
        (false, Scorer::Labels(_) | Scorer::Unlabelled | Scorer::Dense(_)) => 200,
        (false, _) => 50,
    }
}

/// The quantization part of one split: sweep, plots, table, goal rows; returns its JSON.
fn quant_section(
    report: &mut String,
    goal_rows: &mut Vec<String>,
    task: &Task,
    split: &str,
    held: &super::HeldOut,
    cfg: &RunConfig,
) -> Result<Value> {
    let id = task.id;
    let budgets = cfg.budgets();
    let strategies = cfg.quant_strategies(id);
    let q = quant::run_split(task, split, held, &budgets, &strategies, cfg.quiet)?;
    let names: Vec<String> = strategies.iter().map(|s| s.name()).collect();
    let metric = id.metrics()[0];
    writeln!(
        report,
        "#### Quantization at `{split}` (real `.fjq` files, patch p = {})
",
        q.patch
    )
    .ok();
    for (by_bits, tag, xl) in
        [(true, "bits", "bits per feature element (real .fjq file sizes)"), (false, "mse", "log10 measured MSE / mean(x²)")]
    {
        let series: Vec<Series> = names
            .iter()
            .map(|n| {
                let c = quant::curve(&q.points, n);
                Series {
                    name: n.clone(),
                    x: c.iter().map(|p| if by_bits { p.bits_per_element } else { p.measured_mse.max(1e-12).log10() }).collect(),
                    y: c.iter().map(|p| p.metrics[metric]).collect(),
                    lo: vec![],
                    hi: vec![],
                }
            })
            .collect();
        let png = cfg.out.join(format!("quant-{}-{split}-{metric}-{tag}.png", id.name()));
        line_chart(&png, &format!("{} / {split}: {metric} after coding (p={})", id.name(), q.patch), xl, metric, &series)?;
        writeln!(report, "![quant {metric} {tag}]({})\n", rel(&png, &cfg.out)).ok();
    }
    writeln!(
        report,
        "`{metric}` (clean {:.4}). Budget d = D / mean(x²) per image, matched on the measured MSE; MSE below is the decoded files'. \
         bits = file size (all side information) per element; steps = of which the step section; §4 est = entropy + 16 bits/token; \
         class-coder est = an estimate of a coder with one table per token scale class (`quant::scale_class_bits`, not a file).\n",
        q.clean[metric]
    )
    .ok();
    writeln!(
        report,
        "| strategy | d | measured MSE | bits/elem | steps | §4 est | class-coder est | unmatched | {metric} |\n|---|---|---|---|---|---|---|---|---|"
    )
    .ok();
    for p in &q.points {
        writeln!(
            report,
            "| {} | {} | {:.4} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {:.4} |",
            p.strategy,
            p.budget,
            p.measured_mse,
            p.bits_per_element,
            p.step_bits_per_element,
            p.estimate_bits_per_element,
            p.context_bits_per_element,
            p.unmatched,
            p.metrics[metric]
        )
        .ok();
    }
    writeln!(report).ok();
    // Goals: BD-rate against uniform (and per-channel), and the worst gap at equal MSE, each
    // with a percentile bootstrap interval over images (every replicate re-scores the points on
    // the same resampled images, so the differences are paired).
    let n_img = q.points.first().map(|p| p.outputs.len()).unwrap_or(0);
    let reps = stats::resamples(n_img, quant_replicates(cfg, &task.scorer), 7);
    let mut memo: std::collections::HashMap<(String, u64), Vec<f64>> = std::collections::HashMap::new();
    // The metric of every replicate at one point (memoised: the anchors serve every strategy).
    let mut replicate_metrics = |p: &quant::QPoint| -> Result<Vec<f64>> {
        let key = (p.strategy.clone(), p.budget.to_bits());
        if let Some(v) = memo.get(&key) {
            return Ok(v.clone());
        }
        let v: Vec<f64> = {
            use rayon::prelude::*;
            let rs = super::resample::Rescorer::of(&task.scorer);
            reps.par_iter().map(|idx| super::resample::score(rs, &p.outputs, idx, metric)).collect::<Result<_>>()?
        };
        memo.insert(key, v.clone());
        Ok(v)
    };
    let uni = quant::curve(&q.points, "uniform-step");
    let per_ch = quant::curve(&q.points, "per-channel");
    let oracle = quant::curve(&q.points, &QStrategy::Oracle.name());
    let fmt_bd = |(p, ci): BdRate| match (p, ci) {
        (Some(p), Some((lo, hi))) => format!("{:+.1}% [{:+.1}, {:+.1}]", 100.0 * p, 100.0 * lo, 100.0 * hi),
        (Some(p), None) => format!("{:+.1}%", 100.0 * p),
        (None, _) => "—".into(),
    };
    // A BD-rate of `test` against `anchor` with its bootstrap interval (the same resampled images
    // for both curves, so the interval is paired).
    type Metrics<'a> = dyn FnMut(&quant::QPoint) -> Result<Vec<f64>> + 'a;
    let bd = |anchor: &[&quant::QPoint], test: &[&quant::QPoint], replicate_metrics: &mut Metrics| -> Result<BdRate> {
        if anchor.is_empty() || test.is_empty() {
            return Ok((None, None));
        }
        let rp = |v: &[&quant::QPoint]| v.iter().map(|p| p.rate_point(metric)).collect::<Vec<_>>();
        let point = stats::bd_rate(&rp(anchor), &rp(test), 0.0);
        let ma = anchor.iter().map(|p| replicate_metrics(p)).collect::<Result<Vec<Vec<f64>>>>()?;
        let mt = test.iter().map(|p| replicate_metrics(p)).collect::<Result<Vec<Vec<f64>>>>()?;
        let v: Vec<f64> = reps
            .iter()
            .enumerate()
            .map(|(r, idx)| {
                let ca: Vec<(f64, f64)> = anchor.iter().zip(&ma).map(|(p, m)| (p.bits_on(idx), m[r])).collect();
                let ct: Vec<(f64, f64)> = test.iter().zip(&mt).map(|(p, m)| (p.bits_on(idx), m[r])).collect();
                stats::bd_rate(&ca, &ct, 0.0).unwrap_or(f64::NAN)
            })
            .collect();
        Ok((point, stats::interval95(&v)))
    };
    let b_oracle = bd(&uni, &oracle, &mut replicate_metrics)?;
    let mut json_goals = serde_json::Map::new();
    if let Some(p) = b_oracle.0 {
        json_goals.insert("oracle_bd_rate_vs_uniform".into(), json!(p));
    }
    if let Some((lo, hi)) = b_oracle.1 {
        json_goals.insert("oracle_bd_rate_vs_uniform_ci".into(), json!([lo, hi]));
    }
    for s in strategies.iter().filter(|s| s.guided()) {
        let test = s.name();
        let c = quant::curve(&q.points, &test);
        let (b_uni, b_ch) = (bd(&uni, &c, &mut replicate_metrics)?, bd(&per_ch, &c, &mut replicate_metrics)?);
        // The paper's claim, budget by budget at equal measured MSE: the guided steps against
        // their shuffled control and one uniform step, each difference with its paired interval.
        // The controls this run has (quick runs have no shuffled control).
        let controls: Vec<String> = ["uniform-step".to_string()]
            .into_iter()
            .chain(s.permuted_control().map(|p| p.name()))
            .filter(|n| !quant::curve(&q.points, n).is_empty())
            .collect();
        let mut claim_rows = Vec::new();
        let mut claim_json = Vec::new();
        let (mut never_below, mut above) = (true, vec![false; controls.len()]);
        // Per control: the budget index of the lowest difference, the difference, its interval.
        type Worst = Option<(usize, f64, Option<(f64, f64)>)>;
        let mut worst: Vec<Worst> = vec![None; controls.len()];
        let curves: Vec<Vec<&quant::QPoint>> = controls.iter().map(|n| quant::curve(&q.points, n)).collect();
        for (i, p) in c.iter().enumerate() {
            let mt = replicate_metrics(p)?;
            let mut cells = vec![format!("{}", p.budget), format!("{:.4}", p.measured_mse), format!("{:.4}", p.metrics[metric])];
            let mut row_json = json!({"budget": p.budget, "measured_mse": p.measured_mse, "metric": p.metrics[metric]});
            for (k, (name, o)) in controls.iter().zip(&curves).enumerate() {
                let Some(o) = o.get(i).filter(|o| o.budget == p.budget) else {
                    cells.push("—".into());
                    continue;
                };
                let mo = replicate_metrics(o)?;
                let gap = p.metrics[metric] - o.metrics[metric];
                let ci = stats::interval95(&mt.iter().zip(&mo).map(|(a, b)| a - b).collect::<Vec<_>>());
                if let Some((lo, hi)) = ci {
                    never_below &= hi >= 0.0;
                    above[k] |= lo > 0.0;
                }
                if worst[k].is_none_or(|(_, g, _)| gap < g) {
                    worst[k] = Some((i, gap, ci));
                }
                let cis = ci.map(|(lo, hi)| format!(" [{lo:+.3}, {hi:+.3}]")).unwrap_or_default();
                cells.push(format!("{:.4} ({gap:+.3}{cis})", o.metrics[metric]));
                // Undefined intervals are left out (the summary holds no nulls).
                row_json[name.as_str()] = json!({"metric": o.metrics[metric], "gap": gap});
                if let Some((lo, hi)) = ci {
                    row_json[name.as_str()]["ci"] = json!([lo, hi]);
                }
            }
            claim_rows.push(format!("| {} |", cells.join(" | ")));
            claim_json.push(row_json);
        }
        let holds = never_below && above.iter().all(|&a| a);
        let verdict = if holds {
            "holds"
        } else if never_below {
            "not shown (never below, but not strictly better at any budget)"
        } else {
            "fails (an interval below 0)"
        };
        writeln!(
            report,
            "Equal-budget claim for `{test}` (the paper's statement: at the same measured MSE, guided steps ≥ {} at every budget, \
             strictly better at one or more): **{verdict}**. Cells: metric (difference guided − control [paired 95% interval]).\n",
            controls.join(" and ")
        )
        .ok();
        writeln!(report, "| d | measured MSE | {test} | {} |\n|{}", controls.join(" | "), "---|".repeat(3 + controls.len())).ok();
        for r in &claim_rows {
            writeln!(report, "{r}").ok();
        }
        writeln!(report).ok();
        let mut worst_json = serde_json::Map::new();
        let worst_txt: Vec<String> = controls
            .iter()
            .zip(&worst)
            .filter_map(|(name, w)| {
                let (i, gap, ci) = (*w)?;
                let sig = match ci {
                    Some((_, hi)) if hi < 0.0 => " (worse: interval below 0)",
                    Some(_) => " (interval includes 0)",
                    None => "",
                };
                let cis = ci.map(|(lo, hi)| format!(" [{lo:+.3}, {hi:+.3}]")).unwrap_or_default();
                let mut w = json!({"budget": c[i].budget, "gap": gap});
                if let Some((lo, hi)) = ci {
                    w["ci"] = json!([lo, hi]);
                }
                worst_json.insert(if name.starts_with("permuted") { "permuted".into() } else { name.clone() }, w);
                Some(format!("vs {name}: {gap:+.3}{cis} at d={}{sig}", c[i].budget))
            })
            .collect();
        // Undefined values are left out (the summary holds no nulls).
        let mut g = serde_json::Map::new();
        for (k, (p, ci)) in [("vs_uniform", b_uni), ("vs_per_channel", b_ch)] {
            if let Some(p) = p {
                g.insert(format!("bd_rate_{k}"), json!(p));
            }
            if let Some((lo, hi)) = ci {
                g.insert(format!("bd_rate_{k}_ci"), json!([lo, hi]));
            }
        }
        // The share of the oracle's saving the guided steps capture, where the oracle saves at
        // least [`ORACLE_ROOM`] (below it the ratio of two small numbers means nothing).
        let capture = match (b_uni.0, b_oracle.0) {
            (Some(t), Some(o)) if o <= -ORACLE_ROOM => Some(t / o),
            _ => None,
        };
        if let Some(f) = capture {
            g.insert("oracle_capture".into(), json!(f));
        }
        // The same comparison at the scale-class coder estimate's rates (points only).
        let ctx = |v: &[&quant::QPoint]| v.iter().map(|p| p.context_rate_point(metric)).collect::<Vec<_>>();
        let ctx_uni = stats::bd_rate(&ctx(&uni), &ctx(&c), 0.0);
        let ctx_oracle = stats::bd_rate(&ctx(&uni), &ctx(&oracle), 0.0);
        for (k, v) in [("bd_rate_vs_uniform_class_coder", ctx_uni), ("oracle_bd_rate_vs_uniform_class_coder", ctx_oracle)] {
            if let Some(v) = v {
                g.insert(k.into(), json!(v));
            }
        }
        g.insert("worst_gap".into(), Value::Object(worst_json));
        g.insert("claim".into(), json!({"holds": holds, "never_below": never_below, "per_budget": claim_json}));
        json_goals.insert(test.clone(), Value::Object(g));
        let pct = |v: Option<f64>| v.map(|v| format!("{:+.1}%", 100.0 * v)).unwrap_or_else(|| "—".into());
        goal_rows.push(format!(
            "| {} | {split} | {metric} | {} | {} | {} / {} | {} | {} | {} | {} |",
            id.name(),
            test,
            fmt_bd(b_uni),
            pct(ctx_uni),
            pct(ctx_oracle),
            fmt_bd(b_ch),
            match (fmt_bd(b_oracle), capture) {
                (o, Some(f)) => format!("{o} (captured {:.0}%)", 100.0 * f),
                (o, None) => o,
            },
            verdict.split(' ').next().unwrap_or(verdict),
            if worst_txt.is_empty() { "—".into() } else { worst_txt.join("; ") }
        ));
    }
    Ok(json!({"clean": q.clean, "patch": q.patch, "points": q.points, "goals": json_goals}))
}

/// Trains one estimator (`featjnd train-jnd`) and writes it to `out`.
pub fn train_jnd(id: TaskId, split: &str, models: &Path, out: &Path, t: &JndTrain, device: Device) -> Result<Meta> {
    let mut task = build(id, models, Sizes::QUICK, device)?;
    if !task.model.split_points().iter().any(|s| s == split) {
        return Err(crate::model::unknown_split(task.model.as_ref(), split));
    }
    let (est, mut meta, log) = train_estimator(task.model.as_ref(), split, &mut task.train, t)?;
    meta.command = crate::cli::command_line();
    est.save(&meta, out)?;
    save_log(out, &log)?;
    Ok(meta)
}

/// `featjnd train-jnd --recalibrate`: sets the scale of the sensitivity-objective estimator at
/// `out` again on fresh training batches (`estimator::sensitivity::calibrate_scale`) and
/// rewrites it; its shape is unchanged. `n` batches for the bisection and `n` others for the
/// measurement. The checkpoint's command records both steps.
#[allow(clippy::too_many_arguments)]
pub fn recalibrate_jnd(
    id: TaskId,
    split: &str,
    models: &Path,
    out: &Path,
    t: &JndTrain,
    n: usize,
    sharpen: Option<f64>,
    device: Device,
) -> Result<Meta> {
    let mut task = build(id, models, Sizes::QUICK, device)?;
    let (mut est, mut meta) = JndEstimator::load(out, device)?;
    if est.config.split != split || !est.config.objective.starts_with("sensitivity") {
        return Err(Error::Arg(format!(
            "{}: an estimator of split `{}` with objective `{}`; --recalibrate needs a sensitivity-objective estimator of `{split}`",
            out.display(),
            est.config.split,
            est.config.objective
        )));
    }
    if let Some(a) = sharpen {
        est.config.sharpen = a;
        meta.metrics.insert("sharpen".into(), a);
    }
    let disc = super::oracle::task_disc(&task, 0);
    let first = meta.metrics.get("steps").copied().unwrap_or(0.0) as usize;
    crate::estimator::sensitivity::calibrate_scale(&mut est, &mut meta, task.model.as_ref(), split, &mut task.train, t, &disc, first, n)?;
    meta.command = format!("{}; then {}", meta.command, crate::cli::command_line());
    est.save(&meta, out)?;
    Ok(meta)
}

/// `featjnd train-jnd --distill-oracle`: an estimator trained to reproduce the oracle control's
/// maps on the task's training inputs (a diagnostic, `estimator::distill`).
pub fn distill_jnd(id: TaskId, split: &str, models: &Path, out: &Path, t: &JndTrain, device: Device) -> Result<Meta> {
    let mut task = build(id, models, Sizes::QUICK, device)?;
    if !task.model.split_points().iter().any(|s| s == split) {
        return Err(crate::model::unknown_split(task.model.as_ref(), split));
    }
    let disc = super::oracle::task_disc(&task, 0);
    let model = task.model.as_ref();
    let target = |f: &[tch::Tensor], c: &[tch::Tensor], step: usize| super::oracle::maps_with(model, &disc, split, f, c, 1000 + step);
    let (est, mut meta, log) = crate::estimator::distill::distill_estimator(model, split, &mut task.train, t, &target)?;
    meta.command = crate::cli::command_line();
    est.save(&meta, out)?;
    save_log(out, &log)?;
    Ok(meta)
}
