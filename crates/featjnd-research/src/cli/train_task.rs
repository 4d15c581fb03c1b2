//! `featjnd train-task --task <name>`: trains a bundled task model and writes its checkpoint.

use crate::model::checkpoint;
use crate::model::detector::DetConfig;
use crate::model::resnet::ResNetConfig;
use crate::train::classify::{train_fmnist, FmnistTrain};
use crate::train::detect::{train_shapes, DetTrain};
use crate::Result;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskName {
    /// Small ResNet on Fashion-MNIST (classification; splits stage1, stage2).
    Fmnist,
    /// CenterNet-style detector + instance masks on shapes scenes (splits stem, fpn).
    Shapes,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TrainTaskArgs {
    #[arg(long, value_enum)]
    pub task: TaskName,
    /// Checkpoint to write (default models/<task>.safetensors).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 1)]
    pub data_seed: u64,
    /// Epochs (Fashion-MNIST).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Optimiser steps (shapes; default 2000), or a cap on them (Fashion-MNIST smoke tests).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Evaluate on this many held-out samples only (smoke tests).
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Continue from this checkpoint (shapes): its weights are the starting point.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Scenes per step (shapes; default 16).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Stop after this many seconds of training (shapes): the learning-rate schedule runs on the
    /// clock and the steps done are recorded (such a run is not bit-reproducible).
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Peak learning rate (default: the task's).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn default_checkpoint(task: TaskName) -> PathBuf {
    PathBuf::from(match task {
        TaskName::Fmnist => "models/fmnist-resnet.safetensors",
        TaskName::Shapes => "models/shapes-det.safetensors",
    })
}

pub fn run(a: &TrainTaskArgs) -> Result<serde_json::Value> {
    let device = super::parse_device(&a.device)?;
    let out = a.out.clone().unwrap_or_else(|| default_checkpoint(a.task));
    let t0 = std::time::Instant::now();
    let (vs, mut meta) = match a.task {
        TaskName::Fmnist => {
            let d = FmnistTrain::default();
            let cfg = FmnistTrain {
                epochs: a.epochs.unwrap_or(d.epochs),
                train_seed: a.seed,
                data_seed: a.data_seed,
                max_steps: a.max_steps,
                test_limit: a.eval_limit,
                lr: a.lr.unwrap_or(d.lr),
                quiet: a.quiet,
                ..d
            };
            let (m, meta) = train_fmnist(&cfg, ResNetConfig::default(), device)?;
            (m.vs, meta)
        }
        TaskName::Shapes => {
            let d = DetTrain::default();
            let cfg = DetTrain {
                steps: a.max_steps.unwrap_or(d.steps),
                train_seed: a.seed,
                data_seed: a.data_seed,
                eval_scenes: a.eval_limit.unwrap_or(d.eval_scenes),
                init: a.init.clone(),
                batch: a.batch.unwrap_or(d.batch),
                time_limit: a.time_limit,
                lr: a.lr.unwrap_or(d.lr),
                quiet: a.quiet,
            };
            let (m, meta) = train_shapes(&cfg, DetConfig::default(), device)?;
            (m.vs, meta)
        }
    };
    meta.command = super::command_line();
    meta.metrics.insert("train_seconds".into(), t0.elapsed().as_secs_f64());
    checkpoint::save(&vs, &meta, &out)?;
    Ok(serde_json::json!({ "checkpoint": out, "metrics": meta.metrics }))
}
