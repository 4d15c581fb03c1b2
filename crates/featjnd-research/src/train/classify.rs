//! Training the Fashion-MNIST ResNet: SGD with Nesterov momentum, cosine schedule, random
//! shifts (±2 px, zero fill) and horizontal flips; test-set top-1/top-5 at the end.

use super::{cosine_lr, Progress, SplitMix};
use crate::data::fashion_mnist::{FashionMnist, Split};
use crate::eval::classify::ClassStats;
use crate::model::checkpoint::Meta;
use crate::model::resnet::{FmnistResNet, ResNetConfig, ARCH, SPLITS};
use crate::Result;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

#[derive(Debug, Clone, serde::Serialize)]
pub struct FmnistTrain {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Initialisation seed (libtorch's generator).
    pub train_seed: u64,
    /// Shuffle and augmentation seed.
    pub data_seed: u64,
    /// Stop after this many steps (tests); `None` runs every epoch.
    pub max_steps: Option<usize>,
    /// Evaluate on the first `n` test images only (tests); `None` uses all 10,000.
    pub test_limit: Option<usize>,
    pub quiet: bool,
}

impl Default for FmnistTrain {
    fn default() -> Self {
        FmnistTrain {
            epochs: 10,
            batch: 128,
            lr: 0.1,
            weight_decay: 5e-4,
            train_seed: 1,
            data_seed: 1,
            max_steps: None,
            test_limit: None,
            quiet: false,
        }
    }
}

/// One augmented batch: each image shifted by `(dy, dx) ∈ [-2, 2]²` (zero fill) and flipped
/// left-right with probability 1/2. Returns `[B, 1, 28, 28]` in `[0, 1]` and the labels.
fn augmented_batch(data: &FashionMnist, idx: &[usize], rng: &mut SplitMix) -> (Tensor, Tensor) {
    let (h, w) = (data.rows, data.cols);
    let mut x = vec![0f32; idx.len() * h * w];
    let mut y = Vec::with_capacity(idx.len());
    for (b, &i) in idx.iter().enumerate() {
        let img = data.image(i);
        let dy = rng.below(5) as isize - 2;
        let dx = rng.below(5) as isize - 2;
        let flip = rng.below(2) == 1;
        let out = &mut x[b * h * w..(b + 1) * h * w];
        for r in 0..h {
            let sr = r as isize + dy;
            if sr < 0 || sr >= h as isize {
                continue;
            }
            for c in 0..w {
                let cc = if flip { w - 1 - c } else { c };
                let sc = cc as isize + dx;
                if sc >= 0 && sc < w as isize {
                    out[r * w + c] = img[sr as usize * w + sc as usize] as f32 / 255.0;
                }
            }
        }
        y.push(data.labels[i] as i64);
    }
    (Tensor::from_slice(&x).reshape([idx.len() as i64, 1, h as i64, w as i64]), Tensor::from_slice(&y))
}

/// Top-1/top-5 of `model` on `data` (first `limit` images).
pub fn evaluate(model: &FmnistResNet, data: &FashionMnist, limit: Option<usize>, device: Device) -> ClassStats {
    let n = limit.unwrap_or(data.n).min(data.n);
    let mut stats = ClassStats::default();
    tch::no_grad(|| {
        for start in (0..n).step_by(500) {
            let idx: Vec<usize> = (start..(start + 500).min(n)).collect();
            let (x, y) = data.batch(&idx);
            let logits = model.forward_t(&x.to_device(device), false);
            stats.add(&logits.to_device(Device::Cpu), Some(&y), None);
        }
    });
    stats
}

/// Trains a fresh model; returns it with checkpoint metadata (test metrics filled in).
pub fn train_fmnist(cfg: &FmnistTrain, model_cfg: ResNetConfig, device: Device) -> Result<(FmnistResNet, Meta)> {
    let train = FashionMnist::load(Split::Train)?;
    let test = FashionMnist::load(Split::Test)?;
    tch::manual_seed(cfg.train_seed as i64);
    let model = FmnistResNet::new(model_cfg.clone(), device);
    let mut opt = nn::Sgd { momentum: 0.9, dampening: 0.0, wd: cfg.weight_decay, nesterov: true }.build(&model.vs, cfg.lr)?;
    let per_epoch = train.n / cfg.batch;
    let total = cfg.max_steps.unwrap_or(per_epoch * cfg.epochs).min(per_epoch * cfg.epochs);
    let mut rng = SplitMix(cfg.data_seed);
    let mut order: Vec<usize> = (0..train.n).collect();
    let mut pb = Progress::new(total as u64, "fmnist", cfg.quiet);
    let (mut loss_avg, mut acc_avg) = (f64::NAN, f64::NAN);
    for step in 0..total {
        let k = step % per_epoch;
        if k == 0 {
            rng.shuffle(&mut order);
        }
        let (x, y) = augmented_batch(&train, &order[k * cfg.batch..(k + 1) * cfg.batch], &mut rng);
        let (x, y) = (x.to_device(device), y.to_device(device));
        opt.set_lr(cosine_lr(cfg.lr, step, total, total / 50));
        let logits = model.forward_t(&x, true);
        let loss = logits.cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
        let l = loss.double_value(&[]);
        let a = logits.argmax(-1, false).eq_tensor(&y).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        loss_avg = if loss_avg.is_nan() { l } else { 0.98 * loss_avg + 0.02 * l };
        acc_avg = if acc_avg.is_nan() { a } else { 0.98 * acc_avg + 0.02 * a };
        pb.step(format!("epoch {} loss {loss_avg:.3} acc {acc_avg:.3}", step / per_epoch + 1));
    }
    pb.finish();
    let stats = evaluate(&model, &test, cfg.test_limit, device);
    let mut meta = Meta::new(ARCH, serde_json::to_value(&model_cfg).unwrap_or_default(), SPLITS.map(String::from).to_vec());
    meta.train_seed = cfg.train_seed;
    meta.data_seed = cfg.data_seed;
    meta.metrics.insert("test_top1".into(), stats.top1());
    meta.metrics.insert("test_top5".into(), stats.top5());
    meta.metrics.insert("test_images".into(), stats.n as f64);
    meta.metrics.insert("train_steps".into(), total as f64);
    Ok((model, meta))
}
