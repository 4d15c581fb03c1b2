//! `featjnd run`: the whole study end to end on the bundled tasks. For every task and split
//! point: load (or train and cache) the FeatJND estimator, run the matched-NRMSE study, draw the
//! curves and the attribution panels, then write `report.md` and `summary.json`.

use super::attrib;
use super::perturb::{run_split, NoiseShape, SplitCurves};
use super::plot::{line_chart, Series};
use super::quant::{self, QConfig, QStrategy};
use super::tasks::{build, Sizes, Task, TaskId};
use crate::estimator::train::{train_estimator, JndTrain, LogPoint};
use crate::estimator::JndEstimator;
use crate::model::checkpoint::{self, Meta};
use crate::Reduce;
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
}

impl RunConfig {
    pub fn levels(&self) -> Vec<f64> {
        if self.quick {
            vec![0.1, 0.5]
        } else {
            vec![0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0]
        }
    }
    pub fn seeds(&self) -> Vec<u64> {
        if self.quick {
            vec![1]
        } else {
            vec![1, 2, 3]
        }
    }
    pub fn budgets(&self) -> Vec<f64> {
        if self.quick {
            vec![0.01, 0.1]
        } else {
            vec![0.003, 0.01, 0.03, 0.1, 0.3]
        }
    }
    pub fn quant_configs(&self) -> Vec<QConfig> {
        use QStrategy::*;
        if self.quick {
            return vec![
                QConfig { patch: 1, measured: true, strategies: vec![Jnd(Reduce::Mean), Permuted(1), Uniform, Absmax] },
                QConfig { patch: 1, measured: false, strategies: vec![Jnd(Reduce::Mean)] },
            ];
        }
        vec![
            QConfig {
                patch: 1,
                measured: true,
                strategies: vec![Jnd(Reduce::Mean), Jnd(Reduce::Rms), Jnd(Reduce::Min), Permuted(1), Permuted(2), Uniform, Absmax],
            },
            QConfig { patch: 1, measured: false, strategies: vec![Jnd(Reduce::Mean), Permuted(1), Uniform, Absmax] },
            QConfig { patch: 2, measured: true, strategies: vec![Jnd(Reduce::Mean), Permuted(1), Uniform] },
        ]
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
        TaskId::Fmnist => JndTrain { steps: 200, ..d },
        TaskId::Shapes => JndTrain { steps: 150, ..d },
        TaskId::Mobilenet => JndTrain { steps: 120, ..d },
        // Hidden width 32: 2·128·32 + 9·32² ≈ 17 k multiply-adds per position, 47 M at `stage2`
        // and 62 M at `neck` against ≈ 2 G for NanoDet at 416×416 (≈ 3%; `featjnd run` measures it).
        TaskId::Nanodet => JndTrain { steps: 1000, hidden: 32, ..d },
    }
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
    let mut t = jnd_defaults(task.id);
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
    line_chart(
        &b,
        &format!("{name}: multiplier lambda and mean log(J/std)"),
        "step",
        "value",
        &[
            Series { name: "lambda".into(), x: x.clone(), y: log.iter().map(|p| p.lambda).collect(), lo: vec![], hi: vec![] },
            Series { name: "log J".into(), x, y: log.iter().map(|p| p.log_j).collect(), lo: vec![], hi: vec![] },
        ],
    )?;
    Ok((a, b))
}

fn rel(path: &Path, base: &Path) -> String {
    path.strip_prefix(base).unwrap_or(path).display().to_string()
}

/// The first `r` at which Gaussian noise costs at least `drop` of `metric`, and FeatJND's cost there.
pub fn goal(c: &SplitCurves, metric: &str, drop: f64) -> Option<(f64, f64, f64)> {
    let clean = *c.clean.get(metric)?;
    let g = c.curves.get("gaussian")?;
    let j = c.curves.get("featjnd")?;
    g.iter()
        .zip(j)
        .find(|(pg, _)| clean - pg.mean[metric] >= drop)
        .map(|(pg, pj)| (pg.nrmse, clean - pg.mean[metric], clean - pj.mean[metric]))
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
    let mut skipped = Vec::new();
    let mut goal_rows = Vec::new();
    let mut goal_rows_q = Vec::new();
    for &id in &cfg.tasks {
        let mut task = match build(id, &cfg.models, cfg.sizes(), cfg.device) {
            Ok(t) => t,
            Err(e) => {
                skipped.push(format!("{}: {e}", id.name()));
                writeln!(report, "## {}\n\nSkipped: {e}\n", id.name()).ok();
                summary.insert(id.name().into(), json!({"skipped": e.to_string()}));
                continue;
            }
        };
        writeln!(report, "## Task `{}` ({})\n", id.name(), task.model.arch()).ok();
        let mut task_json = serde_json::Map::new();
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
                "Estimator cost: {:.1} ms per held-out pass vs {:.1} ms for the whole model ({:.1}% of the backbone's forward time; best of 3, this machine).\n",
                t_est * 1e3,
                t_model * 1e3,
                100.0 * t_est / t_model
            )
            .ok();
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
            let mut split_json = json!({});
            if cfg.perturb {
                let curves = run_split(&task, &split, &est, &levels, &seeds, &NoiseShape::ALL, cfg.quiet)?;
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
                        goal_rows.push(format!("| {} | {split} | {metric} | – | < 10 at every level | – | n/a |", id.name()));
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
                    .map(|a| {
                        format!(
                            "{} {:.2}/{:.2}",
                            a["sample"].as_str().unwrap_or(""),
                            a["spearman_gradcam"].as_f64().unwrap_or(f64::NAN),
                            a["spearman_grad_input"].as_f64().unwrap_or(f64::NAN)
                        )
                    })
                    .collect();
                writeln!(report, "Spearman ρ of 1/J with Grad-CAM / |grad×input| over positions: {}.\n", rho.join(", ")).ok();
                split_json = serde_json::to_value(&curves).unwrap_or_default();
                split_json["attribution"] = Value::Array(attr);
            }
            if cfg.quant {
                split_json["quant"] = quant_section(&mut report, &mut goal_rows_q, &task, &split, &est, cfg)?;
            }
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
    writeln!(head, "| task | split | metric | NRMSE | Gaussian drop (pts) | FeatJND drop (pts) | goal |\n|---|---|---|---|---|---|---|")
        .ok();
    for r in &goal_rows {
        writeln!(head, "{r}").ok();
    }
    writeln!(head).ok();
    if cfg.quant {
        writeln!(
            head,
            "## Quantization goals: at equal measured MSE JND-guided is best; at equal task metric ≥ 20% fewer bits than uniform\n"
        )
        .ok();
        writeln!(head, "| task | split | metric | budgets where `jnd` ≥ every other strategy (measured, p=1) | bit saving of `jnd` vs `uniform-step` at uniform's metric levels |\n|---|---|---|---|---|").ok();
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
        "config": {"levels": levels, "seeds": seeds, "quick": cfg.quick, "sizes": cfg.sizes(), "device": format!("{:?}", cfg.device)},
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
        let feats: Vec<_> = task.eval.iter().map(|x| task.model.head(x, split)).collect::<Result<_>>()?;
        let (mut tm, mut te) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..3 {
            let t = std::time::Instant::now();
            for x in &task.eval {
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

/// The quantization part of one split: sweep, plots, table, goal rows; returns its JSON.
fn quant_section(
    report: &mut String,
    goal_rows: &mut Vec<String>,
    task: &Task,
    split: &str,
    est: &JndEstimator,
    cfg: &RunConfig,
) -> Result<Value> {
    let id = task.id;
    let budgets = cfg.budgets();
    let (clean, points) = quant::run_split(task, split, est, &budgets, &cfg.quant_configs(), cfg.quiet)?;
    let names = ["jnd", "permuted", "uniform-step", "absmax"];
    writeln!(report, "#### Token-wise quantization at `{split}`\n").ok();
    for &metric in &id.metrics()[..1] {
        for (by_bits, xlabel) in [(false, "relative budget d = D / mean(x²)"), (true, "bits per feature element (entropy + 16 bits/token)")]
        {
            let series: Vec<Series> = names
                .iter()
                .filter_map(|n| {
                    let c = quant::curve(&points, n, 1, true, metric);
                    (!c.is_empty()).then(|| Series {
                        name: n.to_string(),
                        x: c.iter().map(|p| if by_bits { p.4 } else { p.0.log10() }).collect(),
                        y: c.iter().map(|p| p.1).collect(),
                        lo: c.iter().map(|p| p.2).collect(),
                        hi: c.iter().map(|p| p.3).collect(),
                    })
                })
                .collect();
            let tag = if by_bits { "bits" } else { "budget" };
            let png = cfg.out.join(format!("quant-{}-{split}-{metric}-{tag}.png", id.name()));
            let xl = if by_bits { xlabel.to_string() } else { format!("log10 {xlabel}") };
            line_chart(
                &png,
                &format!("{} / {split}: {metric}, token-wise quantization (p=1, measured MSE)", id.name()),
                &xl,
                metric,
                &series,
            )?;
            writeln!(report, "![quant {metric} {tag}]({})\n", rel(&png, &cfg.out)).ok();
        }
        writeln!(report, "`{metric}` (clean {:.4}) per point; MSEs relative to mean(x²); permuted: mean over seeds.\n", clean[metric]).ok();
        writeln!(
            report,
            "| p | match | strategy | d | nominal MSE | measured MSE | bits/elem | {metric} |\n|---|---|---|---|---|---|---|---|"
        )
        .ok();
        for p in &points {
            writeln!(
                report,
                "| {} | {} | {}{} | {} | {:.4} | {:.4} | {:.3} | {:.4} |",
                p.patch,
                if p.measured_match { "measured" } else { "nominal" },
                p.strategy,
                p.seed.map(|s| format!(" (seed {s})")).unwrap_or_default(),
                p.budget,
                p.nominal_mse,
                p.measured_mse,
                p.bits_per_element,
                p.metrics[metric]
            )
            .ok();
        }
        writeln!(report).ok();
        // Goals.
        let jnd = quant::curve(&points, "jnd", 1, true, metric);
        let others: Vec<_> = ["jnd-rms", "jnd-min", "permuted", "uniform-step", "absmax"]
            .iter()
            .map(|n| quant::curve(&points, n, 1, true, metric))
            .filter(|c| !c.is_empty())
            .collect();
        let wins =
            jnd.iter().enumerate().filter(|(i, p)| others.iter().all(|c| p.1 >= c[*i].1)).map(|(_, p)| p.0.to_string()).collect::<Vec<_>>();
        let uni = quant::curve(&points, "uniform-step", 1, true, metric);
        let savings: Vec<String> = uni
            .iter()
            .map(|u| match quant::bits_at(&jnd, u.1) {
                Some(b) => format!("{:.0}% at {metric}={:.3}", 100.0 * (1.0 - b / u.4), u.1),
                None => format!("never reaches {metric}={:.3}", u.1),
            })
            .collect();
        goal_rows.push(format!(
            "| {} | {split} | {metric} | {} of {} | {} |",
            id.name(),
            if wins.is_empty() { "none".to_string() } else { wins.join(", ") },
            jnd.len(),
            savings.join("; ")
        ));
    }
    Ok(json!({"clean": clean, "points": points}))
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
