//! `featjnd eval-real --dataset deepforest|stardist`: the shapes detector on real images —
//! zero-shot on held-out crops, a short fine-tune, held-out again (see `train::real`).

use crate::model::checkpoint;
use crate::train::real::{finetune_on, RealData, RealDataset, RealOptions};
use crate::Result;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct EvalRealArgs {
    #[arg(long, value_enum)]
    pub dataset: RealDataset,
    /// The shapes detector checkpoint to start from.
    #[arg(long, default_value = "models/shapes-det.safetensors")]
    pub base: PathBuf,
    /// Fine-tuning steps (batch 8); 0 evaluates zero-shot only.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Fine-tuned checkpoint to write (default out/real/<dataset>-det.safetensors; models/ holds only the committed checkpoints).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Data directory (default: the loader's, `.deps/data/<dataset>`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn default_out(dataset: RealDataset) -> PathBuf {
    PathBuf::from(format!("out/real/{}-det.safetensors", dataset.name()))
}

pub fn run(a: &EvalRealArgs) -> Result<serde_json::Value> {
    let device = super::parse_device(&a.device)?;
    let out = a.out.clone().unwrap_or_else(|| default_out(a.dataset));
    let data = RealData::load(a.dataset, a.data.as_deref())?;
    let opts = RealOptions { steps: a.steps, seed: a.seed, quiet: a.quiet, ..RealOptions::default() };
    let (model, mut meta, mut report) = finetune_on(&data, &a.base, &opts, device)?;
    meta.command = super::command_line();
    checkpoint::save(&model.vs, &meta, &out)?;
    report["checkpoint"] = serde_json::json!(out);
    report["command"] = serde_json::json!(meta.command);
    if let Some(p) = &a.report {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        checkpoint::write_atomic(p, text.as_bytes())?;
    }
    Ok(report)
}
