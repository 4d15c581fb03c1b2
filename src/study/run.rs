//! `featjnd run`: the whole study end to end on the bundled tasks. For every task and split
//! point: load (or train and cache) the FeatJND estimator, run the matched-NRMSE study, draw the
//! curves and the attribution panels, then write `report.md` and `summary.json`.

use super::attrib;
use super::perturb::{run_split, NoiseShape, SplitCurves};
use super::plot::{line_chart, Series};
use super::tasks::{build, Sizes, Task, TaskId};
use crate::estimator::train::{train_estimator, JndTrain, LogPoint};
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
    pub device: Device,
    pub quiet: bool,
    /// Estimator training steps when one must be trained (`None`: per-task default).
    pub jnd_steps: Option<usize>,
    /// Train estimators even when a committed or cached one exists.
    pub retrain: bool,
}

impl RunConfig {
    pub fn levels(&self) -> Vec<f64> {
        if self.quick {
            vec![0.1, 0.5]
        } else {
            vec![0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
        }
    }
    pub fn seeds(&self) -> Vec<u64> {
        if self.quick {
            vec![1]
        } else {
            vec![1, 2, 3]
        }
    }
    pub fn sizes(&self) -> Sizes {
        if self.quick {
            Sizes::QUICK
        } else {
            Sizes::DEFAULT
        }
    }
}

/// Default estimator training of each task.
pub fn jnd_defaults(id: TaskId) -> JndTrain {
    let d = JndTrain::default();
    match id {
        TaskId::Fmnist => JndTrain { steps: 400, ..d },
        TaskId::Shapes => JndTrain { steps: 300, ..d },
        TaskId::Mobilenet => JndTrain { steps: 200, ..d },
    }
}

/// Committed estimator of `task`/`split`.
pub fn estimator_path(models: &Path, id: TaskId, split: &str) -> PathBuf {
    models.join("jnd").join(format!("{}-{split}.safetensors", id.name()))
}

/// Loads the committed or cached estimator, or trains one (and caches it). Returns it with its
/// metadata, the training log when it was trained now, and where it came from.
pub fn estimator(
    task: &mut Task,
    split: &str,
    cfg: &RunConfig,
) -> Result<(JndEstimator, Meta, Option<Vec<LogPoint>>, PathBuf)> {
    let committed = estimator_path(&cfg.models, task.id, split);
    let cached = estimator_path(&cfg.cache, task.id, split);
    if !cfg.retrain {
        for p in [&committed, &cached] {
            if p.is_file() {
                let (e, m) = JndEstimator::load(p, cfg.device)?;
                return Ok((e, m, None, p.clone()));
            }
        }
    }
    let mut t = jnd_defaults(task.id);
    t.quiet = cfg.quiet;
    if let Some(s) = cfg.jnd_steps {
        t.steps = s;
    }
    let (est, mut meta, log) = train_estimator(task.model.as_ref(), split, &mut task.train, &t)?;
    meta.command = crate::cli::command_line();
    est.save(&meta, &cached)?;
    Ok((est, meta, Some(log), cached))
}

fn rel(path: &Path, base: &Path) -> String {
    path.strip_prefix(base).unwrap_or(path).display().to_string()
}

/// The first `r` at which Gaussian noise costs at least `drop` of `metric`, and FeatJND's cost there.
pub fn goal(c: &SplitCurves, metric: &str, drop: f64) -> Option<(f64, f64, f64)> {
    let clean = *c.clean.get(metric)?;
    let g = c.curves.get("gaussian")?;
    let j = c.curves.get("featjnd")?;
    g.iter().zip(j).find(|(pg, _)| clean - pg.mean[metric] >= drop).map(|(pg, pj)| {
        (pg.nrmse, clean - pg.mean[metric], clean - pj.mean[metric])
    })
}

/// Runs everything; returns the summary that is also written to `summary.json`.
pub fn run(cfg: &RunConfig) -> Result<Value> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::Io(format!("{}: {e}", cfg.out.display())))?;
    let t0 = std::time::Instant::now();
    let mut report = String::new();
    let mut summary = serde_json::Map::new();
    let levels = cfg.levels();
    let seeds = cfg.seeds();
    writeln!(report, "# FeatJND study report\n").ok();
    writeln!(
        report,
        "Command: `{}`. Mode: {}. NRMSE levels {levels:?}, noise seeds {seeds:?} (bands: min–max over seeds).\n",
        crate::cli::command_line(),
        if cfg.quick { "quick (smoke test: tiny sets, numbers not meaningful)" } else { "full" }
    )
    .ok();
    let mut goal_rows = Vec::new();
    for &id in &cfg.tasks {
        let mut task = match build(id, &cfg.models, cfg.sizes(), cfg.device) {
            Ok(t) => t,
            Err(e) => {
                writeln!(report, "## {}\n\nSkipped: {e}\n", id.name()).ok();
                summary.insert(id.name().into(), json!({"skipped": e.to_string()}));
                continue;
            }
        };
        writeln!(report, "## Task `{}` ({})\n", id.name(), task.model.arch()).ok();
        let mut task_json = serde_json::Map::new();
        for split in task.model.split_points() {
            let (est, meta, log, from) = estimator(&mut task, &split, cfg)?;
            let curves = run_split(&task, &split, &est, &levels, &seeds, &NoiseShape::ALL, cfg.quiet)?;
            writeln!(report, "### Split `{split}`\n").ok();
            writeln!(
                report,
                "Estimator `{}`: final E[max(0, D−ε)] = {:.4} against τ = {} (ε = {}), λ = {:.2}, mean log(J/std) = {:.2}.\n",
                rel(&from, &cfg.out),
                meta.metrics.get("final_hinge").copied().unwrap_or(f64::NAN),
                meta.metrics.get("tau").copied().unwrap_or(f64::NAN),
                meta.metrics.get("eps").copied().unwrap_or(f64::NAN),
                meta.metrics.get("final_lambda").copied().unwrap_or(f64::NAN),
                meta.metrics.get("final_log_j").copied().unwrap_or(f64::NAN),
            )
            .ok();
            // Curves, one PNG per metric.
            for &metric in id.metrics() {
                let series: Vec<Series> = NoiseShape::ALL
                    .iter()
                    .map(|s| {
                        let pts = &curves.curves[s.name()];
                        Series {
                            name: s.name().into(),
                            x: pts.iter().map(|p| p.nrmse).collect(),
                            y: pts.iter().map(|p| p.mean[metric]).collect(),
                            lo: pts.iter().map(|p| p.min[metric]).collect(),
                            hi: pts.iter().map(|p| p.max[metric]).collect(),
                        }
                    })
                    .collect();
                let png = cfg.out.join(format!("curve-{}-{split}-{metric}.png", id.name()));
                line_chart(&png, &format!("{} / {split}: {metric} vs NRMSE", id.name()), "NRMSE", metric, &series)?;
                writeln!(report, "![{metric}]({})\n", rel(&png, &cfg.out)).ok();
            }
            // Table of the headline metrics.
            for &metric in &id.metrics()[..id.metrics().len().min(2)] {
                writeln!(report, "`{metric}` (clean {:.4}); mean over seeds [min, max]:\n", curves.clean[metric]).ok();
                writeln!(report, "| NRMSE | {} |", NoiseShape::ALL.map(|s| s.name()).join(" | ")).ok();
                writeln!(report, "|---|{}", "---|".repeat(NoiseShape::ALL.len())).ok();
                for (i, &r) in levels.iter().enumerate() {
                    let cells: Vec<String> = NoiseShape::ALL
                        .iter()
                        .map(|s| {
                            let p = &curves.curves[s.name()][i];
                            format!("{:.4} [{:.4}, {:.4}]", p.mean[metric], p.min[metric], p.max[metric])
                        })
                        .collect();
                    writeln!(report, "| {r} | {} |", cells.join(" | ")).ok();
                }
                writeln!(report).ok();
                if let Some((r, dg, dj)) = goal(&curves, metric, 0.10) {
                    goal_rows.push(format!(
                        "| {} | {split} | {metric} | {r} | {:.1} | {:.1} | {} |",
                        id.name(),
                        100.0 * dg,
                        100.0 * dj,
                        if dj <= 0.025 { "met" } else { "not met" }
                    ));
                } else {
                    goal_rows.push(format!(
                        "| {} | {split} | {metric} | – | < 10 at every level | – | n/a |",
                        id.name()
                    ));
                }
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
                .map(|a| format!("{} {:.2}/{:.2}", a["sample"].as_str().unwrap_or(""), a["spearman_gradcam"].as_f64().unwrap_or(f64::NAN), a["spearman_grad_input"].as_f64().unwrap_or(f64::NAN)))
                .collect();
            writeln!(report, "Spearman ρ of 1/J with Grad-CAM / |grad×input| over positions: {}.\n", rho.join(", ")).ok();
            let mut split_json = serde_json::to_value(&curves).unwrap_or_default();
            split_json["estimator"] = json!({"path": from, "metrics": meta.metrics, "trained_now": log.is_some()});
            if let Some(log) = &log {
                split_json["estimator"]["log"] = serde_json::to_value(log.iter().step_by((log.len() / 50).max(1)).collect::<Vec<_>>()).unwrap_or_default();
            }
            split_json["attribution"] = Value::Array(attr);
            task_json.insert(split.clone(), split_json);
        }
        summary.insert(id.name().into(), Value::Object(task_json));
    }
    let mut head = String::new();
    writeln!(head, "## The goal: where Gaussian noise costs ≥ 10 points, FeatJND costs ≤ 2.5\n").ok();
    writeln!(head, "| task | split | metric | NRMSE | Gaussian drop (pts) | FeatJND drop (pts) | goal |\n|---|---|---|---|---|---|---|").ok();
    for r in &goal_rows {
        writeln!(head, "{r}").ok();
    }
    writeln!(head).ok();
    let idx = report.find("## ").unwrap_or(report.len());
    report.insert_str(idx, &head);
    writeln!(report, "\nWall time: {:.0} s.", t0.elapsed().as_secs_f64()).ok();
    let summary = json!({
        "config": {"levels": levels, "seeds": seeds, "quick": cfg.quick, "sizes": cfg.sizes(), "device": format!("{:?}", cfg.device)},
        "tasks": Value::Object(summary),
        "seconds": t0.elapsed().as_secs_f64(),
    });
    checkpoint::write_atomic(&cfg.out.join("report.md"), report.as_bytes())?;
    checkpoint::write_atomic(&cfg.out.join("summary.json"), serde_json::to_string_pretty(&summary).unwrap_or_default().as_bytes())?;
    Ok(summary)
}

/// Trains one estimator (`featjnd train-jnd`) and writes it to `out`.
pub fn train_jnd(id: TaskId, split: &str, models: &Path, out: &Path, t: &JndTrain, device: Device) -> Result<Meta> {
    let mut task = build(id, models, Sizes::QUICK, device)?;
    if !task.model.split_points().iter().any(|s| s == split) {
        return Err(crate::model::unknown_split(task.model.as_ref(), split));
    }
    let (est, mut meta, _) = train_estimator(task.model.as_ref(), split, &mut task.train, t)?;
    meta.command = crate::cli::command_line();
    est.save(&meta, out)?;
    Ok(meta)
}
