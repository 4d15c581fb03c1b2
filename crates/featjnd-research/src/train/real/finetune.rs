//! The short fine-tune on real crops, with zero-shot and fine-tuned evaluations around it.
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};
use tch::nn::OptimizerConfig;
use tch::{nn, Device};

use super::super::detect::train_step;
use super::super::{cosine_lr, Progress, SplitMix};
use crate::coco::Stats;
use crate::data::shapes::Scene;
use crate::model::checkpoint::{self, Meta};
use crate::model::detector::{DetConfig, ShapesDetector, ARCH};
use crate::{Error, Result};

use super::data::*;
use super::eval::*;

/// Fine-tuning settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RealOptions {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    pub quiet: bool,
}

impl Default for RealOptions {
    fn default() -> Self {
        RealOptions { steps: 200, batch: 8, lr: 5e-4, seed: 1, quiet: false }
    }
}

/// Loads `dataset` and runs [`finetune_on`] with default options but `steps` and `seed`.
pub fn finetune_real(
    dataset: RealDataset,
    base_checkpoint: &Path,
    steps: usize,
    seed: u64,
    device: Device,
) -> Result<(ShapesDetector, Meta, Value)> {
    let data = RealData::load(dataset, None)?;
    finetune_on(&data, base_checkpoint, &RealOptions { steps, seed, ..RealOptions::default() }, device)
}

/// Loads the shapes detector `base_checkpoint`, evaluates it zero-shot on the held-out crops,
/// fine-tunes it on random training crops, evaluates again. Returns the model, its checkpoint
/// metadata (base metadata with the real-data numbers as metrics) and a JSON report.
pub fn finetune_on(data: &RealData, base_checkpoint: &Path, opts: &RealOptions, device: Device) -> Result<(ShapesDetector, Meta, Value)> {
    if opts.batch == 0 {
        return Err(Error::Arg("batch must be at least 1".into()));
    }
    let t0 = Instant::now();
    let (base_meta, cfg): (_, DetConfig) = checkpoint::read_config(base_checkpoint)?;
    tch::manual_seed(opts.seed as i64);
    let mut model = ShapesDetector::new(cfg.clone(), device);
    checkpoint::load(&mut model.vs, ARCH, base_checkpoint)?;
    let classes = cfg.classes as usize;

    let ceiling = target_ceiling(&data.held_out, classes)?;
    let before = evaluate_real(&model, &data.held_out, device, Agnostic::MapToZero)?;
    let before_max = evaluate_real(&model, &data.held_out, device, Agnostic::MaxHeat)?;
    let eval_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut opt = nn::Adam::default().build(&model.vs, opts.lr)?;
    let mut rng = SplitMix(opts.seed ^ 0x5EA1_DA7A_0000_0000);
    let warm = (opts.steps / 10).min(20);
    let mut pb = Progress::new(opts.steps as u64, data.dataset.name(), opts.quiet);
    let mut avg = [f64::NAN; 4];
    let mut seen = 0usize;
    for step in 0..opts.steps {
        let batch: Vec<Scene> = (0..opts.batch).map(|i| data.sample(&mut rng, (step * opts.batch + i) as u64).0).collect();
        seen += batch.iter().map(|s| s.objects.len()).sum::<usize>();
        let parts = train_step(&model, &mut opt, &batch, classes, cosine_lr(opts.lr, step, opts.steps, warm), device);
        for (a, p) in avg.iter_mut().zip(parts) {
            *a = if a.is_nan() { p } else { 0.9 * *a + 0.1 * p };
        }
        pb.step(format!("heat {:.3} box {:.3} fg {:.3} vote {:.3}", avg[0], avg[1], avg[2], avg[3]));
    }
    pb.finish();
    let train_s = t1.elapsed().as_secs_f64();
    let after = evaluate_real(&model, &data.held_out, device, Agnostic::MapToZero)?;

    let mut meta = base_meta.clone();
    meta.train_seed = opts.seed;
    meta.data_seed = opts.seed;
    meta.metrics.clear();
    let ds = data.dataset;
    let mut put = |prefix: &str, (b, m): &(Stats, Stats)| {
        meta.metrics.insert(format!("{prefix}_box_ap"), b.ap);
        meta.metrics.insert(format!("{prefix}_box_ap50"), b.ap50);
        if ds.has_masks() {
            meta.metrics.insert(format!("{prefix}_mask_ap"), m.ap);
            meta.metrics.insert(format!("{prefix}_mask_ap50"), m.ap50);
        }
    };
    put("zero_shot", &before);
    put("finetuned", &after);
    meta.metrics.insert("finetune_steps".into(), opts.steps as f64);
    meta.metrics.insert("held_out_crops".into(), data.held_out.len() as f64);

    let masks = if ds.has_masks() {
        "real instance masks (box and mask AP)"
    } else {
        "boxes only: training targets use the filled box as the instance mask; only box AP is reported"
    };
    let report = json!({
        "dataset": ds.name(),
        "base_checkpoint": base_checkpoint,
        "base_metrics": base_meta.metrics,
        "class_agnostic": "every instance is class 0; detections mapped to class 0 before scoring",
        "masks": masks,
        "crop": data.crop,
        "train": data.train.iter().map(|s| json!({
            "source": s.name, "size": [s.height, s.width], "rows": [s.rows.0, s.rows.1], "instances": s.instances(),
        })).collect::<Vec<_>>(),
        "held_out": {
            "source": data.held.name,
            "rows": [data.held.rows.0, data.held.rows.1],
            "crops": data.held_out.len(),
            "instances": data.held_out_instances(),
            "tiling": "edge-flush 128 px tiles (last row/column may overlap its neighbour)",
        },
        "finetune": {
            "optimizer": "Adam, cosine lr with warm-up, grad-norm clip 5",
            "augment": "random crops from the training sources + horizontal/vertical flips",
            "options": opts,
            "warmup_steps": warm,
            "train_crops": opts.steps * opts.batch,
            "train_instances_seen": seen,
            "final_loss_ema": {"heat": avg[0], "box": avg[1], "fg": avg[2], "vote": avg[3]},
            "seconds": train_s,
        },
        "target_ceiling": ap_json(ds, &ceiling),
        "zero_shot": ap_json(ds, &before),
        "zero_shot_max_heat": ap_json(ds, &before_max),
        "finetuned": ap_json(ds, &after),
        "eval_seconds": eval_s,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    Ok((model, meta, report))
}
