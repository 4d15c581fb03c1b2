//! Attribution pictures (design §1): for a sample image, the gradient-based attributions (Grad-CAM
//! where the model says it is meaningful — the last convolution, a detector's head inputs —
//! resized to the split's grid; |gradient × input| at the split point; both channel-aggregated), the channel-aggregated
//! inverse tolerance `mean_c(std_c / J_c)` (high where FeatJND says the task is sensitive), and the
//! energy `mean_c δ²` of one FeatJND noise draw, side by side with colour bars. Also the Spearman
//! rank correlation of each attribution with `1/J` over positions, the number behind the picture.
//!
//! For a multi-level split (FPN) the finest level is shown. The attribution target is the clean
//! top-1 logit (classification), the sum of the heat-map logits at the confident detections
//! (score ≥ 0.3; the strongest peak when there is none), or every pixel's largest logit summed
//! over pixels and outputs (a user's dense tail).

use super::tasks::Task;
use crate::estimator::JndEstimator;
use crate::model::{SplitModel, TaskKind};
use crate::ops::{self, Noise};
use crate::{Error, Result};
use plotters::prelude::*;
use std::path::Path;
use tch::{Kind, Tensor};

/// The maps of one sample, each `[h, w]` on the CPU.
pub struct Maps {
    pub image: Tensor,
    pub gradcam: Tensor,
    pub grad_input: Tensor,
    pub inv_j: Tensor,
    pub noise_energy: Tensor,
    pub rho_gradcam: f64,
    pub rho_grad_input: f64,
}

/// Ranks of `v` (average ranks for ties).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (NaN when either input is constant).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    sab / (saa * sbb).sqrt()
}

fn flat(t: &Tensor) -> Vec<f64> {
    let t = t.to_kind(Kind::Double).to_device(tch::Device::Cpu).contiguous().view([-1]);
    Vec::<f64>::try_from(&t).unwrap_or_default()
}

/// The attribution target of a batch-of-one output: the clean top-1 logit (classification), the
/// heat-map logits at the confident detections (shapes detector), the best class logit of every
/// confident anchor (NanoDet); the strongest single value where nothing is confident.
fn target(kind: TaskKind, out: &[Tensor]) -> Result<Tensor> {
    Ok(match kind {
        // Every pixel's winning logit (its argmax over the channels), summed over pixels and
        // outputs: the dense analogue of the top-1 logit.
        TaskKind::Dense => out
            .iter()
            .map(|o| o.amax([1i64].as_slice(), false).sum(Kind::Float))
            .reduce(|a, b| a + b)
            .ok_or_else(|| crate::Error::Model("attribution: a dense tail with no outputs".into()))?,
        TaskKind::Classification => {
            let logits = out.first().filter(|o| o.dim() == 2).ok_or_else(|| {
                crate::Error::Model(format!("attribution: a classifier's output must be [1, classes] logits, got {} tensor(s)", out.len()))
            })?;
            let k = logits.f_argmax(-1, false)?.f_int64_value(&[0])?;
            logits.get(0).get(k)
        }
        TaskKind::DetectionSegmentation => {
            let heat = out[0].get(0);
            let p = heat.sigmoid();
            let peaks = p.unsqueeze(0).max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false).squeeze_dim(0);
            let keep = p.eq_tensor(&peaks).logical_and(&p.ge(0.3)).to_kind(Kind::Float);
            if keep.sum(Kind::Float).f_double_value(&[])? > 0.0 {
                (heat * keep).sum(Kind::Float)
            } else {
                heat.max()
            }
        }
        TaskKind::Detection => {
            let best = out[0].get(0).amax([1i64].as_slice(), false);
            let keep = best.sigmoid().ge(0.3).to_kind(Kind::Float);
            if keep.sum(Kind::Float).f_double_value(&[])? > 0.0 {
                (best * keep).sum(Kind::Float)
            } else {
                best.max()
            }
        }
    })
}

/// Grad-CAM of the batch-of-one input `xb` read at split point `layer` (every level of it):
/// `relu(Σ_c mean_hw(∂target/∂A_c) · A_c)` per level, each resized (bilinear) to `hw` and summed.
pub fn gradcam_at(model: &dyn SplitModel, layer: &str, xb: &Tensor, hw: (i64, i64)) -> Result<Tensor> {
    let acts: Vec<Tensor> = tch::no_grad(|| model.head(xb, layer))?.iter().map(|a| a.detach().set_requires_grad(true)).collect();
    let out = model.tail(&acts, layer)?;
    let grads = Tensor::run_backward(&[target(model.task(), &out)?], &acts.iter().collect::<Vec<_>>(), false, false);
    let mut cam = Tensor::zeros([hw.0, hw.1], (Kind::Float, xb.device()));
    for (a, g) in acts.iter().zip(&grads) {
        let w = g.mean_dim([2i64, 3].as_slice(), true, Kind::Float);
        let c = (&w * a.detach()).sum_dim_intlist(1, true, Kind::Float).relu();
        cam += c.upsample_bilinear2d([hw.0, hw.1], false, None, None).get(0).get(0);
    }
    Ok(cam)
}

/// Computes the maps of `x` (`[C, H, W]`) at `split`. Grad-CAM is read where the model says it is
/// meaningful ([`SplitModel::gradcam_split`]: the last convolution, a detector's head inputs),
/// resized to the split's grid; |grad × input| is taken at the split itself.
pub fn maps(task: &Task, split: &str, est: &JndEstimator, x: &Tensor, nrmse: f64) -> Result<Maps> {
    let model = task.model.as_ref();
    let device = task.eval[0].device();
    let xb = x.unsqueeze(0).to_device(device);
    let feats = tch::no_grad(|| model.head(&xb, split))?;
    let f0 = feats[0].detach().set_requires_grad(true);
    let mut inputs = vec![f0.shallow_clone()];
    inputs.extend(feats[1..].iter().map(|f| f.detach()));
    let out = model.tail(&inputs, split)?;
    let target = target(model.task(), &out)?;
    let g = Tensor::run_backward(&[target], &[&f0], false, false)
        .pop()
        .ok_or_else(|| Error::Model("no gradient at the split point".into()))?
        .get(0);
    let f = f0.detach().get(0);
    let gradcam = match model.gradcam_split() {
        Some(layer) => gradcam_at(model, layer, &xb, (f.size()[1], f.size()[2]))?,
        None => {
            let w = g.mean_dim([1i64, 2].as_slice(), true, Kind::Float);
            (&w * &f).sum_dim_intlist(0, false, Kind::Float).relu()
        }
    };
    let grad_input = (&g * &f).abs().sum_dim_intlist(0, false, Kind::Float);
    let (j, inv_j) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
        let maps = est.forward_log(&feats)?;
        let (j, lj) = &maps[0];
        // std/J = 1/unit: the unit-free inverse tolerance.
        Ok((j.shallow_clone(), (lj.neg().exp()).get(0).mean_dim(0, false, Kind::Float)))
    })?;
    let fb = feats[0].contiguous();
    let (pert, _) = ops::perturb(&fb, Some(&j.to_kind(fb.kind()).contiguous()), nrmse, Noise { seed: 1, ..Default::default() })?;
    let noise_energy = (pert - &fb).square().get(0).mean_dim(0, false, Kind::Float);
    let (a, b, c) = (flat(&gradcam), flat(&grad_input), flat(&inv_j));
    Ok(Maps {
        image: x.to_device(tch::Device::Cpu),
        rho_gradcam: spearman(&a, &c),
        rho_grad_input: spearman(&b, &c),
        gradcam: gradcam.to_device(tch::Device::Cpu),
        grad_input: grad_input.to_device(tch::Device::Cpu),
        inv_j: inv_j.to_device(tch::Device::Cpu),
        noise_energy: noise_energy.to_device(tch::Device::Cpu),
    })
}

/// At most this many held-out images for the rank correlations' intervals.
pub const RHO_IMAGES: usize = 32;

/// Spearman ρ of 1/J with Grad-CAM and with |grad × input| on each of the first [`RHO_IMAGES`]
/// held-out images (pairs; NaN where a map is constant).
pub fn rho_per_image(task: &Task, split: &str, est: &JndEstimator) -> Result<Vec<(f64, f64)>> {
    let mut v = Vec::new();
    for xb in &task.eval {
        for i in 0..xb.size()[0] {
            if v.len() == RHO_IMAGES {
                return Ok(v);
            }
            let m = maps(task, split, est, &xb.get(i), 0.3)?;
            v.push((m.rho_gradcam, m.rho_grad_input));
        }
    }
    Ok(v)
}

/// A perceptually ordered dark-blue → teal → yellow colour map (viridis-like control points).
pub fn colormap(t: f64) -> RGBColor {
    const P: [(f64, f64, f64); 5] =
        [(68.0, 1.0, 84.0), (59.0, 82.0, 139.0), (33.0, 145.0, 140.0), (94.0, 201.0, 98.0), (253.0, 231.0, 37.0)];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * 4.0;
    let i = (t.floor() as usize).min(3);
    let u = t - i as f64;
    let l = |a: f64, b: f64| (a + (b - a) * u).round() as u8;
    RGBColor(l(P[i].0, P[i + 1].0), l(P[i].1, P[i + 1].1), l(P[i].2, P[i + 1].2))
}

fn perr<E: std::fmt::Display>(e: E) -> Error {
    Error::Io(format!("attribution panel: {e}"))
}

/// Writes the panel: image, Grad-CAM, |grad × input|, 1/J, FeatJND noise energy.
pub fn panel(path: &Path, title: &str, m: &Maps) -> Result<()> {
    const TILE: i32 = 200;
    let tiles: [(&str, &Tensor); 4] =
        [("Grad-CAM", &m.gradcam), ("|grad x input|", &m.grad_input), ("1/J (std/J)", &m.inv_j), ("FeatJND noise energy", &m.noise_energy)];
    let width = (TILE + 20) * 5 + 20;
    super::plot::register_font()?;
    let root = BitMapBackend::new(path, (width as u32, (TILE + 110) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(perr)?;
    let style = ("sans-serif", 15).into_font();
    root.draw(&Text::new(
        format!("{title}   Spearman(1/J, Grad-CAM) = {:.2}, (1/J, |g x f|) = {:.2}", m.rho_gradcam, m.rho_grad_input),
        (10, 6),
        ("sans-serif", 16).into_font(),
    ))
    .map_err(perr)?;
    // The image (grey or RGB) in the first tile.
    let img = m.image.to_kind(Kind::Float).clamp(0.0, 1.0);
    let (c, h, w) = img.size3()?;
    let vals = flat(&img);
    let (x0, y0) = (20, 50);
    root.draw(&Text::new("input", (x0, 30), style.clone())).map_err(perr)?;
    let sx = TILE as f64 / w as f64;
    let sy = TILE as f64 / h as f64;
    for y in 0..h {
        for x in 0..w {
            let px = |ch: i64| (vals[((ch.min(c - 1) * h + y) * w + x) as usize] * 255.0).round() as u8;
            let col = RGBColor(px(0), px(1), px(2));
            let (ax, ay) = (x0 + (x as f64 * sx) as i32, y0 + (y as f64 * sy) as i32);
            let (bx, by) = (x0 + ((x + 1) as f64 * sx).ceil() as i32, y0 + ((y + 1) as f64 * sy).ceil() as i32);
            root.draw(&Rectangle::new([(ax, ay), (bx, by)], col.filled())).map_err(perr)?;
        }
    }
    for (k, (name, t)) in tiles.iter().enumerate() {
        let x0 = 20 + (k as i32 + 1) * (TILE + 20);
        root.draw(&Text::new(*name, (x0, 30), style.clone())).map_err(perr)?;
        let (h, w) = (t.size()[0], t.size()[1]);
        let v = flat(t);
        let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let span = (hi - lo).max(1e-30);
        let (sx, sy) = (TILE as f64 / w as f64, TILE as f64 / h as f64);
        for y in 0..h {
            for x in 0..w {
                let col = colormap((v[(y * w + x) as usize] - lo) / span);
                let (ax, ay) = (x0 + (x as f64 * sx) as i32, y0 + (y as f64 * sy) as i32);
                let (bx, by) = (x0 + ((x + 1) as f64 * sx).ceil() as i32, y0 + ((y + 1) as f64 * sy).ceil() as i32);
                root.draw(&Rectangle::new([(ax, ay), (bx, by)], col.filled())).map_err(perr)?;
            }
        }
        // Colour bar under the tile, with its range.
        let by = y0 + TILE + 8;
        for i in 0..TILE {
            let col = colormap(i as f64 / (TILE - 1) as f64);
            root.draw(&Rectangle::new([(x0 + i, by), (x0 + i + 1, by + 12)], col.filled())).map_err(perr)?;
        }
        let small = ("sans-serif", 12).into_font();
        root.draw(&Text::new(format!("{lo:.3e}"), (x0, by + 16), small.clone())).map_err(perr)?;
        root.draw(&Text::new(format!("{hi:.3e}"), (x0 + TILE - 62, by + 16), small)).map_err(perr)?;
    }
    root.present().map_err(perr)?;
    Ok(())
}
