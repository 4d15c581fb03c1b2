//! Training the shapes detector on procedurally generated scenes (a fresh batch every step, so
//! there is no over-fitting to a fixed set): CenterNet focal loss on the centre heat-maps, L1 on
//! box size/offset at the centres, BCE on foreground coverage and L1 on the centre votes.
//! Held-out scenes come from another seed; the end-of-training numbers are COCO box/mask AP.

use super::{cosine_lr, Progress};
use crate::data::shapes::{generate, Scene, SceneConfig};
use crate::eval::detect::{decode, ground_truth, score, to_coco, DecodeParams};
use crate::model::checkpoint::Meta;
use crate::model::detector::{DetConfig, ShapesDetector, ARCH, SPLITS, STRIDE, VOTE_UNIT};
use crate::Result;
use rayon::prelude::*;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

/// Scene indices of held-out scenes start here (same seed stream as training, disjoint indices).
pub const HELD_OUT_BASE: u64 = 1 << 40;
/// First scene index of the validation scenes (decoder settings are chosen on these).
pub const VALIDATION_BASE: u64 = 1 << 41;

#[derive(Debug, Clone, serde::Serialize)]
pub struct DetTrain {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    /// Wall-clock limit in seconds: the cosine schedule then runs on the clock (it reaches zero when
    /// time is up, or at `steps`, whichever comes first) and the steps done go into the metadata.
    pub time_limit: Option<f64>,
    pub train_seed: u64,
    pub data_seed: u64,
    pub eval_scenes: usize,
    /// Start from this checkpoint's weights (continued training) instead of a fresh network.
    pub init: Option<std::path::PathBuf>,
    pub quiet: bool,
}

impl Default for DetTrain {
    fn default() -> Self {
        DetTrain {
            steps: 2000,
            batch: 16,
            lr: 2e-3,
            train_seed: 1,
            data_seed: 1,
            eval_scenes: 200,
            init: None,
            quiet: false,
            time_limit: None,
        }
    }
}

/// Dense targets of a batch of scenes.
pub struct Targets {
    pub heat: Tensor,
    pub bx: Tensor,
    pub box_w: Tensor,
    pub fg: Tensor,
    pub vote: Tensor,
    pub vote_w: Tensor,
}

/// Builds the targets of `scenes` (all the same size) for `classes` classes.
pub fn targets(scenes: &[Scene], classes: usize) -> Targets {
    let (h, w) = (scenes[0].height, scenes[0].width);
    let s = STRIDE as usize;
    let (gh, gw) = (h / s, w / s);
    let cells = gh * gw;
    let per: Vec<[Vec<f32>; 6]> = scenes
        .par_iter()
        .map(|sc| {
            let mut heat = vec![0f32; classes * cells];
            let mut bx = vec![0f32; 4 * cells];
            let mut box_w = vec![0f32; cells];
            let mut fg = vec![0f32; cells];
            let mut vote = vec![0f32; 2 * cells];
            let mut vote_w = vec![0f32; cells];
            let inst = sc.instance_map();
            let mut centre = vec![(0f32, 0f32); sc.objects.len() + 1];
            for o in &sc.objects {
                let [x, y, bw, bh] = o.bbox;
                let (cx, cy) = (x + bw / 2.0, y + bh / 2.0);
                centre[o.instance_id as usize] = (cx, cy);
                let (gx, gy) = (cx / s as f32, cy / s as f32);
                let (ix, iy) = ((gx as usize).min(gw - 1), (gy as usize).min(gh - 1));
                let sigma = ((bw * bh).sqrt() / s as f32 / 6.0).max(0.6);
                let hm = &mut heat[o.class.id() * cells..][..cells];
                for r in 0..gh {
                    for c in 0..gw {
                        let d2 = (c as f32 - ix as f32).powi(2) + (r as f32 - iy as f32).powi(2);
                        let g = (-d2 / (2.0 * sigma * sigma)).exp();
                        hm[r * gw + c] = hm[r * gw + c].max(g);
                    }
                }
                let q = iy * gw + ix;
                hm[q] = 1.0;
                bx[q] = (bw / s as f32).max(1e-3).ln();
                bx[cells + q] = (bh / s as f32).max(1e-3).ln();
                bx[2 * cells + q] = gx - ix as f32;
                bx[3 * cells + q] = gy - iy as f32;
                box_w[q] = 1.0;
            }
            for r in 0..gh {
                for c in 0..gw {
                    let q = r * gw + c;
                    let mut n = 0;
                    for y in r * s..(r + 1) * s {
                        for x in c * s..(c + 1) * s {
                            n += (inst[y * w + x] != 0) as usize;
                        }
                    }
                    fg[q] = n as f32 / (s * s) as f32;
                    // The vote of the cell: the instance under its centre pixel.
                    let (py, px) = (r * s + s / 2, c * s + s / 2);
                    let id = inst[py * w + px] as usize;
                    if id != 0 {
                        let (cx, cy) = centre[id];
                        vote[q] = (cx - (px as f32 + 0.5)) / VOTE_UNIT as f32;
                        vote[cells + q] = (cy - (py as f32 + 0.5)) / VOTE_UNIT as f32;
                        vote_w[q] = 1.0;
                    }
                }
            }
            [heat, bx, box_w, fg, vote, vote_w]
        })
        .collect();
    let b = scenes.len() as i64;
    let (gh, gw) = (gh as i64, gw as i64);
    let stack = |k: usize, c: i64| {
        let v: Vec<f32> = per.iter().flat_map(|p| p[k].iter().copied()).collect();
        Tensor::from_slice(&v).reshape([b, c, gh, gw])
    };
    Targets { heat: stack(0, classes as i64), bx: stack(1, 4), box_w: stack(2, 1), fg: stack(3, 1), vote: stack(4, 2), vote_w: stack(5, 1) }
}

/// The training loss of `out = [heat, box, mask]` against `t`; also returns its four parts.
pub fn loss(out: &[Tensor], t: &Targets) -> (Tensor, [f64; 4]) {
    let npos = t.box_w.sum(Kind::Float).clamp_min(1.0);
    let p = out[0].sigmoid().clamp(1e-4, 1.0 - 1e-4);
    let pos = t.heat.eq(1.0).to_kind(Kind::Float);
    let neg_w = (t.heat.neg() + 1.0).pow_tensor_scalar(4.0) * (pos.neg() + 1.0);
    let q = p.neg() + 1.0;
    let focal = -((&pos * q.square() * p.log()) + neg_w * p.square() * q.log()).sum(Kind::Float) / &npos;
    let l_box = ((&out[1] - &t.bx).abs() * &t.box_w).sum(Kind::Float) / &npos;
    let fg_logit = out[2].narrow(1, 0, 1);
    let l_fg = fg_logit.binary_cross_entropy_with_logits::<Tensor>(&t.fg, None, None, tch::Reduction::Mean);
    let l_vote = ((out[2].narrow(1, 1, 2) - &t.vote).abs() * &t.vote_w).sum(Kind::Float) / (t.vote_w.sum(Kind::Float) * 2.0).clamp_min(1.0);
    let parts = [&focal, &l_box, &l_fg, &l_vote].map(|x| x.double_value(&[]));
    (focal + l_box + l_fg + l_vote, parts)
}

/// One optimiser step on `batch` at learning rate `lr`: targets, forward in training mode, loss,
/// backward with the gradient norm clipped at 5. Returns the four loss parts.
pub fn train_step(model: &ShapesDetector, opt: &mut nn::Optimizer, batch: &[Scene], classes: usize, lr: f64, device: Device) -> [f64; 4] {
    let t = targets(batch, classes);
    let t = Targets {
        heat: t.heat.to_device(device),
        bx: t.bx.to_device(device),
        box_w: t.box_w.to_device(device),
        fg: t.fg.to_device(device),
        vote: t.vote.to_device(device),
        vote_w: t.vote_w.to_device(device),
    };
    opt.set_lr(lr);
    let out = model.forward_t(&images(batch).to_device(device), true);
    let (l, parts) = loss(&out, &t);
    opt.backward_step_clip(&l, 5.0);
    parts
}

/// Scenes `start..start+n` of `seed`, generated in parallel.
pub fn scenes(seed: u64, start: u64, n: usize, cfg: &SceneConfig) -> Vec<Scene> {
    (0..n as u64).into_par_iter().map(|i| generate(seed, start + i, cfg)).collect()
}

/// Stacks scene images into `[B, 3, H, W]`.
pub fn images(scenes: &[Scene]) -> Tensor {
    Tensor::stack(&scenes.iter().map(|s| s.to_tensor()).collect::<Vec<_>>(), 0)
}

/// Box and mask AP of `model` on the held-out scenes of `data_seed`.
pub fn evaluate(model: &ShapesDetector, data_seed: u64, n: usize, device: Device) -> Result<(crate::coco::Stats, crate::coco::Stats)> {
    outputs(model, data_seed, HELD_OUT_BASE, n, device)?.score(DecodeParams::default())
}

/// The detector's raw outputs on a set of scenes with their ground truth, so decoder settings can
/// be scored many times without running the network or rebuilding the ground truth again.
pub struct SceneOutputs {
    gt: crate::coco::GroundTruth,
    size: (usize, usize),
    /// Outputs (on the CPU) of consecutive chunks of the scenes.
    chunks: Vec<Vec<Tensor>>,
}

impl SceneOutputs {
    /// Box and mask AP of the outputs decoded with `p`.
    pub fn score(&self, p: DecodeParams) -> Result<(crate::coco::Stats, crate::coco::Stats)> {
        let (h, w) = self.size;
        let mut dets = Vec::new();
        for out in &self.chunks {
            dets.extend(decode(out, h, w, p)?);
        }
        score(&self.gt, &to_coco(&dets, h, w))
    }
}

/// Runs `model` on the scenes `base..base+n` of `data_seed`, in chunks.
pub fn outputs(model: &ShapesDetector, data_seed: u64, base: u64, n: usize, device: Device) -> Result<SceneOutputs> {
    let held = scenes(data_seed, base, n, &SceneConfig::default());
    let chunks = tch::no_grad(|| {
        held.chunks(32)
            .map(|chunk| model.forward_t(&images(chunk).to_device(device), false).iter().map(|t| t.to_device(Device::Cpu)).collect())
            .collect()
    });
    Ok(SceneOutputs { gt: ground_truth(&held)?, size: (held[0].height, held[0].width), chunks })
}

/// Trains a fresh detector; returns it with checkpoint metadata (held-out AP filled in).
pub fn train_shapes(cfg: &DetTrain, model_cfg: DetConfig, device: Device) -> Result<(ShapesDetector, Meta)> {
    tch::manual_seed(cfg.train_seed as i64);
    let mut model = ShapesDetector::new(model_cfg.clone(), device);
    if let Some(p) = &cfg.init {
        crate::model::checkpoint::load(&mut model.vs, ARCH, p)?;
    }
    let mut opt = nn::AdamW::default().build(&model.vs, cfg.lr)?;
    opt.set_weight_decay(1e-4);
    let scene_cfg = SceneConfig::default();
    let classes = model_cfg.classes as usize;
    let mut pb = Progress::new(cfg.steps as u64, "shapes", cfg.quiet);
    let mut avg = [f64::NAN; 4];
    let (t0, mut done) = (std::time::Instant::now(), 0usize);
    for step in 0..cfg.steps {
        let at = match cfg.time_limit {
            Some(tl) => step.max((t0.elapsed().as_secs_f64() / tl * cfg.steps as f64) as usize),
            None => step,
        };
        if at >= cfg.steps {
            break;
        }
        // A continued run draws scenes after the ones its starting checkpoint has seen.
        let first = if cfg.init.is_some() { 1u64 << 32 } else { 0 };
        let batch = scenes(cfg.data_seed, first + (step * cfg.batch) as u64, cfg.batch, &scene_cfg);
        let parts = train_step(&model, &mut opt, &batch, classes, cosine_lr(cfg.lr, at, cfg.steps, cfg.steps / 30), device);
        done += 1;
        for (a, p) in avg.iter_mut().zip(parts) {
            *a = if a.is_nan() { p } else { 0.98 * *a + 0.02 * p };
        }
        pb.step(format!("heat {:.3} box {:.3} fg {:.3} vote {:.3}", avg[0], avg[1], avg[2], avg[3]));
    }
    pb.finish();
    if cfg.time_limit.is_some() && !cfg.quiet {
        eprintln!("shapes: {done} steps in {:.0} s (time limit)", t0.elapsed().as_secs_f64());
    }
    let (bbox, segm) = evaluate(&model, cfg.data_seed, cfg.eval_scenes, device)?;
    let mut meta = Meta::new(ARCH, serde_json::to_value(&model_cfg).unwrap_or_default(), SPLITS.map(String::from).to_vec());
    meta.train_seed = cfg.train_seed;
    meta.data_seed = cfg.data_seed;
    for (name, s) in [("box", bbox), ("mask", segm)] {
        meta.metrics.insert(format!("{name}_ap"), s.ap);
        meta.metrics.insert(format!("{name}_ap50"), s.ap50);
        meta.metrics.insert(format!("{name}_ap75"), s.ap75);
    }
    meta.metrics.insert("eval_scenes".into(), cfg.eval_scenes as f64);
    meta.metrics.insert("train_steps".into(), done as f64);
    meta.metrics.insert("batch".into(), cfg.batch as f64);
    let prior = match &cfg.init {
        Some(p) => crate::model::checkpoint::read_meta(p)?.metrics.get("total_train_steps").or(None).copied().unwrap_or_else(|| {
            crate::model::checkpoint::read_meta(p).ok().and_then(|m| m.metrics.get("train_steps").copied()).unwrap_or(0.0)
        }),
        None => 0.0,
    };
    meta.metrics.insert("total_train_steps".into(), prior + done as f64);
    Ok((model, meta))
}
