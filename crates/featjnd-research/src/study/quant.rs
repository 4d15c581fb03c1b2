//! The quantization study (docs/quantization.md): every held-out image's split-point feature is coded into a
//! real `.fjq` file (one per image and feature level) at a sweep of per-element MSE budgets, with
//! the steps of each strategy, and the task runs on the decoded features.
//!
//! * Budgets are relative and per image: `D = d · mean(x²)` of that image's level, matched on the
//!   **measured** MSE (contract §3.4's bisection) with the strategy's unrounded steps; the file
//!   then stores its steps rounded to its step coding, so the reported MSE is the decoded file's.
//! * Rate = the files' sizes (header, tables, steps and symbols all counted) over the elements.
//!   Each strategy's file carries what it needs: one step (`uniform-step`), `C` steps
//!   (`per-channel`), or `T` log-grid-coded token steps (the token-wise strategies).
//! * Strategies: `jnd` (contract §3.2 `Jnd`, mean-reduced `j_t`), `permuted` (its steps shuffled),
//!   `capped-κ` (§3.5: `min(α·j_t, κ·rms_t)`), `uniform-step`, `per-channel` (`Δ_c ∝ max|x_c|`, the
//!   usual feature-coding default), `absmax` (`Δ_t ∝ max|x_t|`, LLM serving stacks' per-token
//!   scaling).
//! * The patch is chosen per split so a token holds at least 64 elements (`C·p² ≥ 64`): at `p = 1`
//!   on a 16-channel feature even a well-coded step per token costs a large part of a bit per
//!   element, which no token-wise strategy can win back.

use super::resample::{self, ImageOutputs};
use super::tasks::Task;
use crate::train::Progress;
use crate::{cpu, steps, Bits, Error, FeatureShape, Reduce, Result, Strategy, TokenGrid};
use featjnd_kernels::codec as fjq;
use rayon::prelude::*;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum QStrategy {
    /// Steps `∝ j_t^γ` (γ = 1: contract §3.2 `Jnd`), `j_t` the token's mean tolerance.
    Jnd(f32),
    /// `(seed, γ)`: the steps of `Jnd(γ)`, shuffled over the tokens (the control that keeps the
    /// distribution of steps and drops their placement).
    Permuted(u64, f32),
    /// `(κ, γ)`: contract §3.5 with caps `κ·rms_t` and tolerances `j_t^γ`.
    Capped(f32, f32),
    Uniform,
    Channel,
    Absmax,
    /// The control for the room (not deployable): steps `∝ F_t^(−1/2)`, `F_t` the token's mean
    /// squared task gradient measured on the image being coded ([`oracle_token_tolerance`]).
    Oracle,
}

impl QStrategy {
    /// From the command line: `jnd[:GAMMA]`, `permuted[:GAMMA]`, `uniform`, `per-channel`,
    /// `absmax`, `capped[:KAPPA[:GAMMA]]`, `oracle`.
    pub fn parse(s: &str) -> Result<QStrategy> {
        let mut it = s.split(':');
        let bad = || {
            Error::Arg(format!(
                "quantization strategy {s:?}: expected jnd[:GAMMA], permuted[:GAMMA], uniform, per-channel, absmax, capped[:KAPPA[:GAMMA]] or oracle"
            ))
        };
        let num = |v: Option<&str>, d: f32| -> Result<f32> {
            match v {
                None => Ok(d),
                Some(v) => v.parse::<f32>().ok().filter(|x| x.is_finite() && *x > 0.0).ok_or_else(bad),
            }
        };
        let q = match it.next().unwrap_or("") {
            "jnd" => QStrategy::Jnd(num(it.next(), 1.0)?),
            "permuted" => QStrategy::Permuted(1, num(it.next(), 1.0)?),
            "uniform" | "uniform-step" => QStrategy::Uniform,
            "per-channel" => QStrategy::Channel,
            "absmax" => QStrategy::Absmax,
            "capped" => QStrategy::Capped(num(it.next(), 2.0)?, num(it.next(), 1.0)?),
            "oracle" | "oracle-steps" => QStrategy::Oracle,
            _ => return Err(bad()),
        };
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(q)
    }

    pub fn name(&self) -> String {
        match self {
            QStrategy::Jnd(g) if *g == 1.0 => "jnd".into(),
            QStrategy::Jnd(g) => format!("jnd-g{g}"),
            QStrategy::Permuted(_, g) if *g == 1.0 => "permuted".into(),
            QStrategy::Permuted(_, g) => format!("permuted-g{g}"),
            QStrategy::Capped(k, g) if *g == 1.0 => format!("capped-{k}"),
            QStrategy::Capped(k, g) => format!("capped-{k}-g{g}"),
            QStrategy::Uniform => "uniform-step".into(),
            QStrategy::Channel => "per-channel".into(),
            QStrategy::Absmax => "absmax".into(),
            QStrategy::Oracle => "oracle-steps".into(),
        }
    }

    /// Whether the steps follow an estimator's tolerance map (the strategies the goals test).
    pub fn guided(&self) -> bool {
        matches!(self, QStrategy::Jnd(_) | QStrategy::Capped(..))
    }

    /// The shuffled control of a guided strategy (the same γ).
    pub fn permuted_control(&self) -> Option<QStrategy> {
        match self {
            QStrategy::Jnd(g) | QStrategy::Capped(_, g) => Some(QStrategy::Permuted(1, *g)),
            _ => None,
        }
    }
}

/// `v^γ` elementwise, kept positive (a tiny tolerance raised to a large γ must not reach 0).
fn powered(v: Vec<f32>, g: f32) -> Vec<f32> {
    if g == 1.0 {
        v
    } else {
        v.into_iter().map(|x| x.powf(g).max(f32::MIN_POSITIVE)).collect()
    }
}

/// The oracle's token tolerance from per-element squared task gradients `g2` (`g²` of
/// `study::oracle::sensitivity`): `F_t = mean_{k∈t} g2_k`, tolerance `F_t^(−1/2)`, so that the
/// steps (`∝` tolerance at the matched budget) are the high-rate optimum for a task loss
/// `Σ_t F_t e_t` (reverse water-filling with weights: `Δ_t ∝ F_t^(−1/2)`, saving
/// `½·log2(AM(F)/GM(F))` bits per element over one uniform step). Floored at `1e-6` of the
/// largest `F_t` so a token with no measured sensitivity gets a finite step.
/// (Zeros are common, e.g. behind a ReLU that never fires, so this is its own mean and not
/// contract §3.2's token tolerance, which refuses non-positive maps.)
pub fn oracle_token_tolerance(g2: &[f32], grid: &TokenGrid) -> Result<Vec<f32>> {
    if g2.len() != grid.numel() {
        return Err(Error::Shape(format!("g² has {} values for a grid of {}", g2.len(), grid.numel())));
    }
    let (mut sum, mut count) = (vec![0.0f64; grid.tokens()], vec![0u32; grid.tokens()]);
    for (i, &v) in g2.iter().enumerate() {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::Arg(format!("g²[{i}] = {v}: squared gradients are finite and ≥ 0")));
        }
        let t = grid.token_of(i);
        sum[t] += v as f64;
        count[t] += 1;
    }
    let f = floored(sum.iter().zip(&count).map(|(&s, &c)| (s / c.max(1) as f64) as f32).collect());
    Ok(f.into_iter().map(|v| v.powf(-0.5)).collect())
}

/// Symbol width of the study's files: 16 bits, because with 8 the finest budgets clamp symbols of
/// token-wise steps that follow a tolerance spread over orders of magnitude (shapes `fpn`: the
/// budget becomes unreachable on most images); the entropy coder charges only the symbols that
/// occur, so the width itself costs nothing.
pub const BITS: Bits = Bits::B16;

/// Token steps on a log grid of 4 points per octave (steps within ±9%): a study file holds only
/// tens to thousands of tokens, where the index table of a finer grid costs more than the shape
/// it preserves; the budget is matched on the measured MSE anyway.
pub const STEP_CODING: fjq::StepCoding = fjq::StepCoding::LogGrid { per_octave: 4 };

/// What one image's files cost and did at one point.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ImageCost {
    pub file_bits: f64,
    pub step_bits: f64,
    /// contract §4's estimate (symbol entropy + 16 bits per token), for comparison.
    pub estimate_bits: f64,
    /// [`scale_class_bits`]: what a coder with one table per token scale class would need (an
    /// estimate, not a file).
    pub context_bits: f64,
    pub elements: f64,
    pub sse: f64,
    pub energy: f64,
    pub clamped: u64,
}

impl ImageCost {
    /// Adds another level's cost (an image's cost is the sum over its feature levels).
    fn add(&mut self, o: &ImageCost) {
        self.file_bits += o.file_bits;
        self.step_bits += o.step_bits;
        self.estimate_bits += o.estimate_bits;
        self.context_bits += o.context_bits;
        self.elements += o.elements;
        self.sse += o.sse;
        self.energy += o.energy;
        self.clamped += o.clamped;
    }
}

/// One point of the sweep: a strategy at one relative budget, over all held-out images.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QPoint {
    pub strategy: String,
    pub budget: f64,
    /// `Σ (x − x̂)² / Σ x²` of the decoded files.
    pub measured_mse: f64,
    /// File bits per feature element.
    pub bits_per_element: f64,
    /// Of which the steps.
    pub step_bits_per_element: f64,
    /// contract §4's estimate (entropy + 16 bits per token) per element.
    pub estimate_bits_per_element: f64,
    /// The scale-class coder estimate ([`scale_class_bits`]) per element.
    pub context_bits_per_element: f64,
    pub clamped: u64,
    /// Images whose budget could not be matched (coded at the closest β found; counted here).
    pub unmatched: usize,
    pub metrics: BTreeMap<String, f64>,
    /// Per-image outputs for the bootstrap (headline metric).
    #[serde(skip)]
    pub outputs: ImageOutputs,
    #[serde(skip)]
    pub costs: Vec<ImageCost>,
}

impl QPoint {
    pub fn rate_point(&self, metric: &str) -> (f64, f64) {
        (self.bits_per_element, self.metrics[metric])
    }
    /// The same point at the scale-class coder estimate's rate.
    pub fn context_rate_point(&self, metric: &str) -> (f64, f64) {
        (self.context_bits_per_element, self.metrics[metric])
    }
    /// File bits per element over the images `idx` (a bootstrap replicate).
    pub fn bits_on(&self, idx: &[usize]) -> f64 {
        idx.iter().map(|&i| self.costs[i].file_bits).sum::<f64>() / idx.iter().map(|&i| self.costs[i].elements).sum::<f64>()
    }
}

/// The sweep at one split.
pub struct SplitQuant {
    pub clean: BTreeMap<String, f64>,
    pub patch: usize,
    pub points: Vec<QPoint>,
}

/// Smallest `p ∈ {1, 2, 4, 8}` with `C·p² ≥ 64` that divides every level's `H` and `W` (else the
/// largest that divides).
pub fn choose_patch(levels: &[Vec<i64>]) -> usize {
    let divides = |p: i64| levels.iter().all(|s| s[2] % p == 0 && s[3] % p == 0);
    let cmin = levels.iter().map(|s| s[1]).min().unwrap_or(1);
    let mut best = 1;
    for p in [1i64, 2, 4, 8] {
        if !divides(p) {
            break;
        }
        best = p;
        if cmin * p * p >= 64 {
            break;
        }
    }
    best as usize
}

/// Raises every value to `1e-6` of the largest, so an all-zero token or channel still gets a
/// positive step.
fn floored(mut m: Vec<f32>) -> Vec<f32> {
    let floor = m.iter().cloned().fold(0.0f32, f32::max).max(f32::MIN_POSITIVE) * 1e-6;
    m.iter_mut().for_each(|v| *v = v.max(floor));
    m
}

/// Per-token `max|x|`, [`floored`].
fn token_absmax(x: &[f32], grid: &TokenGrid) -> Vec<f32> {
    let mut m = vec![0.0f32; grid.tokens()];
    for (i, v) in x.iter().enumerate() {
        let t = grid.token_of(i);
        m[t] = m[t].max(v.abs());
    }
    floored(m)
}

/// Per-channel `max|x|` of a `[1, C, H, W]` feature, [`floored`].
fn channel_absmax(x: &[f32], c: usize) -> Vec<f32> {
    let hw = x.len() / c;
    floored(x.chunks(hw).map(|ch| ch.iter().fold(0.0f32, |a, v| a.max(v.abs()))).collect())
}

/// Squared error of contract §4's quantizer with one step per channel (what the codec's channel
/// mode does), for the measured-budget bisection.
fn channel_sse(x: &[f32], steps: &[f32], qmax: f32) -> f64 {
    let hw = x.len() / steps.len();
    x.chunks(hw)
        .zip(steps)
        .map(|(ch, &s)| {
            let inv = 1.0f32 / s;
            ch.iter().map(|&v| (v - (v * inv).round_ties_even().clamp(-qmax, qmax) * s) as f64).map(|d| d * d).sum::<f64>()
        })
        .sum()
}

/// Codes one image's level at relative budget `d`; returns the decoded feature and its cost.
fn code_level(x: &[f32], j: &[f32], g2: Option<&[f32]>, grid: &TokenGrid, s: QStrategy, d: f64) -> Result<(Vec<f32>, ImageCost, bool)> {
    let n = x.len() as f64;
    let energy: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    if energy == 0.0 {
        // Nothing to code: a uniform file of zeros.
        let e = fjq::encode_with(x, grid, fjq::StepSpec::Tensor(1.0), BITS, fjq::StepCoding::default())?;
        let cost = ImageCost { file_bits: 8.0 * e.bytes.len() as f64, elements: n, ..Default::default() };
        return Ok((e.recon, cost, false));
    }
    let budget = d * energy / n;
    let t = grid.tokens();
    let qmax = BITS.qmax();
    let token_sse = |st: &[f32]| -> Result<f64> { Ok(cpu::quantize(x, grid, st, BITS, cpu::QuantOut::default())?.mse(x.len())) };
    let mut st = vec![0.0f32; t];
    // The unrounded steps at β for every strategy; the channel strategy fills `ch` instead.
    let c = grid.shape.sizes()[1] as usize;
    let jt = match s {
        QStrategy::Jnd(g) | QStrategy::Permuted(_, g) | QStrategy::Capped(_, g) => powered(cpu::token_tolerance(j, grid, Reduce::Mean)?, g),
        QStrategy::Oracle => {
            let g2 = g2.ok_or_else(|| Error::Arg("the oracle-steps strategy needs the measured sensitivity".into()))?;
            oracle_token_tolerance(g2, grid)?
        }
        QStrategy::Absmax => token_absmax(x, grid),
        QStrategy::Uniform | QStrategy::Channel => vec![1.0; t],
    };
    let caps = match s {
        QStrategy::Capped(k, _) => Some(steps::caps_from_rms(&cpu::token_rms(x, grid)?, k)?),
        _ => None,
    };
    // The channel strategy's steps `Δ_c = scale·β·max|x_c|` (nominal budget at β = 1).
    let channel = (s == QStrategy::Channel).then(|| {
        let amax = channel_absmax(x, c);
        let scale = (12.0 * budget * c as f64 / amax.iter().map(|&a| (a as f64).powi(2)).sum::<f64>()).sqrt();
        (amax, scale)
    });
    let fill = |beta: f64, st: &mut [f32]| -> Result<()> {
        match (s, &caps) {
            (QStrategy::Capped(..), Some(cp)) => steps::allocate_capped_into(&jt, cp, budget, beta, st),
            (QStrategy::Permuted(seed, _), _) => steps::allocate_into(&jt, budget, Strategy::Permuted { seed }, beta, st),
            (QStrategy::Uniform, _) => steps::allocate_into(&jt, budget, Strategy::Uniform, beta, st),
            _ => steps::allocate_into(&jt, budget, Strategy::Jnd, beta, st),
        }
    };
    let ch_steps = |beta: f64| -> Vec<f32> {
        channel.as_ref().map(|(amax, scale)| amax.iter().map(|&a| (scale * beta) as f32 * a).collect()).unwrap_or_default()
    };
    let matched = steps::bisect_beta(budget, |beta| {
        if s == QStrategy::Channel {
            Ok(channel_sse(x, &ch_steps(beta), qmax) / n)
        } else {
            fill(beta, &mut st)?;
            token_sse(&st)
        }
    });
    let (beta, unmatched) = match matched {
        Ok(m) => (m.beta, false),
        // Tiny features can jump across D: code at β = 1 (nominal) and count it.
        Err(Error::Unreachable { .. }) => (1.0, true),
        Err(e) => return Err(e),
    };
    let coding = STEP_CODING;
    let enc = match s {
        QStrategy::Channel => fjq::encode_with(x, grid, fjq::StepSpec::Channel(&ch_steps(beta)), BITS, coding)?,
        QStrategy::Uniform => {
            fill(beta, &mut st)?;
            fjq::encode_with(x, grid, fjq::StepSpec::Tensor(st[0]), BITS, coding)?
        }
        _ => {
            fill(beta, &mut st)?;
            fjq::encode_with(x, grid, fjq::StepSpec::Token(&st), BITS, coding)?
        }
    };
    let cost = ImageCost {
        file_bits: 8.0 * enc.bytes.len() as f64,
        step_bits: 8.0 * enc.sections.steps as f64,
        estimate_bits: enc.rate.estimate_bits_per_element * n,
        context_bits: scale_class_bits(&enc.symbols, grid),
        elements: n,
        sse: enc.mse * n,
        energy,
        clamped: enc.clamped,
    };
    Ok((enc.recon, cost, unmatched))
}

/// Half-octave classes of a token's symbol RMS ([`scale_class_bits`]).
const CLASSES_PER_OCTAVE: f64 = 2.0;

/// Bits of an ideal coder that keeps one symbol table per token *scale class* (the token's symbol
/// RMS on a half-octave grid, sent as a fixed-length index per token): `Σ_c n_c·H_c + T·⌈log2 K⌉`
/// over the `K` classes that occur; the tables themselves are not counted. An estimate, not a
/// file: today's `.fjq` has one table per tensor, so its symbols cost the entropy of the mixture
/// over tokens, and token-wise steps that change the symbols' scale from token to token pay for
/// the mixing (`tests/quant_steps.rs`: a 1.24-bit saving in theory, 0.51 in the file). This
/// measures how much of the rate a context-coded format would win back.
pub fn scale_class_bits(symbols: &fjq::SymbolVec, grid: &TokenGrid) -> f64 {
    let sym: Vec<i32> = match symbols {
        fjq::SymbolVec::I8(v) => v.iter().map(|&q| q as i32).collect(),
        fjq::SymbolVec::I16(v) => v.iter().map(|&q| q as i32).collect(),
    };
    let t = grid.tokens();
    let mut ss = vec![0.0f64; t];
    let mut count = vec![0u64; t];
    for (i, &q) in sym.iter().enumerate() {
        let k = grid.token_of(i);
        ss[k] += (q as f64) * (q as f64);
        count[k] += 1;
    }
    let class: Vec<i64> = ss
        .iter()
        .zip(&count)
        .map(|(&s, &c)| if s == 0.0 { i64::MIN } else { (CLASSES_PER_OCTAVE * 0.5 * (s / c.max(1) as f64).log2()).round() as i64 })
        .collect();
    let mut hist: BTreeMap<i64, BTreeMap<i32, u64>> = BTreeMap::new();
    for (i, &q) in sym.iter().enumerate() {
        *hist.entry(class[grid.token_of(i)]).or_default().entry(q).or_default() += 1;
    }
    let symbol_bits: f64 = hist
        .values()
        .map(|h| {
            let counts: Vec<u64> = h.values().copied().collect();
            crate::rate::entropy_bits(&counts) * counts.iter().sum::<u64>() as f64
        })
        .sum();
    symbol_bits + t as f64 * (hist.len() as f64).log2().ceil()
}

/// A feature level of one image, flat f32 on the host, with its grid.
struct Level {
    x: Vec<f32>,
    j: Vec<f32>,
    /// The squared task gradient per element (only when the oracle-steps control runs).
    g2: Option<Vec<f32>>,
    grid: TokenGrid,
}

/// One image of a host copy of `t` (`[B, …]`), flat f32.
fn host_image(t: &Tensor, i: usize) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(&t.get(i as i64).flatten(0, -1))?)
}

fn host_images(f: &Tensor, j: &Tensor, g: Option<&Tensor>, patch: usize) -> Result<Vec<Level>> {
    let s = f.size();
    let (b, c, h, w) = (s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize);
    let grid = TokenGrid::new(FeatureShape::nchw(1, c, h, w), patch)?;
    let host = |t: &Tensor| t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let (fx, jx, g2) = (host(f), host(j), g.map(|g| host(&g.square())));
    (0..b)
        .map(|i| Ok(Level { x: host_image(&fx, i)?, j: host_image(&jx, i)?, g2: g2.as_ref().map(|g| host_image(g, i)).transpose()?, grid }))
        .collect()
}

/// Runs the sweep on `task` at `split` (its held-out batches `held`) for relative budgets `budgets`.
pub fn run_split(
    task: &Task,
    split: &str,
    held: &super::HeldOut,
    budgets: &[f64],
    strategies: &[QStrategy],
    quiet: bool,
) -> Result<SplitQuant> {
    let model = task.model.as_ref();
    let (feats, jnds, clean) = (&held.feats, &held.step_jnds, &held.clean);
    let clean_metrics = task.scorer.score(clean, clean)?;
    let headline = task.id.metrics()[0];
    let patch = choose_patch(&feats[0].iter().map(|f| f.size()).collect::<Vec<_>>());
    // The oracle control's measured sensitivity (the perturbation study's probes, shared through
    // `held`), only when it runs.
    let sens = if strategies.contains(&QStrategy::Oracle) { Some(held.sensitivity(task, split, quiet)?) } else { None };
    // Host copies, per batch → level → image.
    let host: Vec<Vec<Vec<Level>>> = feats
        .iter()
        .zip(jnds)
        .enumerate()
        .map(|(bi, (fs, js))| {
            fs.iter().zip(js).enumerate().map(|(li, (f, j))| host_images(f, j, sens.map(|g| &g[bi][li]), patch)).collect::<Result<_>>()
        })
        .collect::<Result<_>>()?;
    let mut pb = Progress::new((strategies.len() * budgets.len()) as u64, &format!("quant {} {split}", task.id.name()), quiet);
    let mut points = Vec::new();
    for &s in strategies {
        for &d in budgets {
            let mut costs = Vec::new();
            let mut unmatched = 0;
            let mut outs = Vec::new();
            for (bi, levels) in host.iter().enumerate() {
                let mut rec_levels = Vec::new();
                let nimg = levels[0].len();
                let mut img_cost = vec![ImageCost::default(); nimg];
                for (li, imgs) in levels.iter().enumerate() {
                    let coded: Vec<(Vec<f32>, ImageCost, bool)> =
                        imgs.par_iter().map(|l| code_level(&l.x, &l.j, l.g2.as_deref(), &l.grid, s, d)).collect::<Result<_>>()?;
                    let size = feats[bi][li].size();
                    let mut flat = Vec::with_capacity(coded.iter().map(|c| c.0.len()).sum());
                    for (i, (r, c, um)) in coded.into_iter().enumerate() {
                        flat.extend_from_slice(&r);
                        img_cost[i].add(&c);
                        unmatched += um as usize;
                    }
                    let kind = feats[bi][li].kind();
                    rec_levels.push(Tensor::f_from_slice(&flat)?.reshape(&size).to_kind(kind).to_device(feats[bi][li].device()));
                }
                costs.extend(img_cost);
                outs.push(tch::no_grad(|| model.tail(&rec_levels, split))?);
            }
            let sum = |f: fn(&ImageCost) -> f64| costs.iter().map(f).sum::<f64>();
            let elems = sum(|c| c.elements);
            points.push(QPoint {
                strategy: s.name(),
                budget: d,
                measured_mse: sum(|c| c.sse) / sum(|c| c.energy),
                bits_per_element: sum(|c| c.file_bits) / elems,
                step_bits_per_element: sum(|c| c.step_bits) / elems,
                estimate_bits_per_element: sum(|c| c.estimate_bits) / elems,
                context_bits_per_element: sum(|c| c.context_bits) / elems,
                clamped: costs.iter().map(|c| c.clamped).sum(),
                unmatched,
                metrics: task.scorer.score(&outs, clean)?,
                outputs: resample::outputs(&task.scorer, &outs, clean, headline)?,
                costs,
            });
            pb.step(format!("{} d={d}", s.name()));
        }
    }
    pb.finish();
    Ok(SplitQuant { clean: clean_metrics, patch, points })
}

/// The points of one strategy, ascending budget.
pub fn curve<'a>(points: &'a [QPoint], strategy: &str) -> Vec<&'a QPoint> {
    let mut v: Vec<&QPoint> = points.iter().filter(|p| p.strategy == strategy).collect();
    v.sort_by(|a, b| a.budget.total_cmp(&b.budget));
    v
}
