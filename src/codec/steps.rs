//! The steps' side information: how a file stores its quantization steps (`docs/fjq-format.md`,
//! *Steps*), and the rounding an encoder applies so that the stored steps are exactly the ones it
//! quantized with.
//!
//! * **Log grid** (`G` points per octave, `G = 2^g`, `g ∈ 0..=6`): `Δ = m[k mod G] · 2^(e + ⌊k/G⌋)`
//!   for an integer `k`, with `m[i] = f32(2^(i/G))`. The table `m` is built from square roots and
//!   products only (both correctly rounded in IEEE arithmetic), never from `powf`/`exp2`, so every
//!   platform gets the same bits; a step is rounded to its nearest grid point in the log domain
//!   with an exact comparison (no logarithm either).
//! * **f16** (version 1's form): `Δ = f32(f16 · 2^e)`, one common power-of-two scale.
//! * **f32**: the tensor-wide step of the `tensor` mode, stored as is.

use half::f16;

use crate::error::{Error, Result};

/// Grid points per octave of [`StepCoding::default`].
pub const DEFAULT_PER_OCTAVE: u32 = 16;
/// The finest grid: `2^6` points per octave.
pub const MAX_PER_OCTAVE: u32 = 64;
/// f16 steps: `e` puts the largest step divided by `2^e` in `[2^14, 2^15)`.
const TOP_EXP: i32 = 14;

/// How per-token or per-channel steps are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StepCoding {
    /// An integer index on a log grid of `per_octave` points per octave (a power of two, at most
    /// [`MAX_PER_OCTAVE`]): relative rounding error at most `2^(1/(2G)) − 1` (2.2% for `G = 16`).
    LogGrid { per_octave: u32 },
    /// Version 1's f16 mantissa under a common power-of-two scale (16 bits per step, relative
    /// rounding error at most `2^-11`).
    F16,
}

impl Default for StepCoding {
    fn default() -> Self {
        StepCoding::LogGrid { per_octave: DEFAULT_PER_OCTAVE }
    }
}

/// What the steps of a file are: one for the tensor, one per token, or one per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StepMode {
    /// One step for every element, stored as f32 bits.
    Tensor,
    /// One step per token (contract §1).
    Token(StepCoding),
    /// One step per channel: NCHW's `C`, NTC's columns; the same for every token.
    Channel(StepCoding),
}

impl StepMode {
    /// Short name: `tensor`, `token`, `token-f16`, `channel`, `channel-f16` (the command line's
    /// `--step-mode`; the grid size is not part of it).
    pub fn name(&self) -> &'static str {
        match self {
            StepMode::Tensor => "tensor",
            StepMode::Token(StepCoding::LogGrid { .. }) => "token",
            StepMode::Token(StepCoding::F16) => "token-f16",
            StepMode::Channel(StepCoding::LogGrid { .. }) => "channel",
            StepMode::Channel(StepCoding::F16) => "channel-f16",
        }
    }

    /// Grid points per octave, for the log-grid modes.
    pub fn per_octave(&self) -> Option<u32> {
        match self {
            StepMode::Token(StepCoding::LogGrid { per_octave }) | StepMode::Channel(StepCoding::LogGrid { per_octave }) => {
                Some(*per_octave)
            }
            _ => None,
        }
    }
}

/// The steps handed to [`super::encode_with`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepSpec<'a> {
    /// One step for the whole tensor.
    Tensor(f32),
    /// One step per token (`T` values, token order of contract §1).
    Token(&'a [f32]),
    /// One step per channel (`C` values).
    Channel(&'a [f32]),
}

pub(crate) fn pow2(e: i32) -> f64 {
    // e stays well inside f64's normal exponent range (checked by the callers).
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// A step a file may hold: finite, normal, > 0, with a finite reciprocal (contract §4's `1/Δ`).
pub(crate) fn usable(s: f32) -> bool {
    s.is_normal() && s > 0.0 && (1.0 / s).is_finite()
}

fn check_finite_positive(steps: &[f32]) -> Result<()> {
    if steps.is_empty() {
        return Err(Error::Empty("steps"));
    }
    match steps.iter().position(|&d| !(d.is_finite() && d > 0.0)) {
        Some(t) => Err(Error::Arg(format!("step Δ[{t}] = {} must be finite and > 0", steps[t]))),
        None => Ok(()),
    }
}

// ---------- f16 ----------

/// A stored f16 step: `f32(f16 · 2^e)`, or `None` if that is not a usable step (finite, normal,
/// > 0, with a finite reciprocal). The encoder and the decoder both go through this function.
pub fn step_value(h: u16, e: i32) -> Option<f32> {
    let v = f16::from_bits(h);
    if !v.is_finite() || v <= f16::ZERO || !(-200..=200).contains(&e) {
        return None;
    }
    let s = (v.to_f64() * pow2(e)) as f32;
    usable(s).then_some(s)
}

/// Rounds steps to the f16 form (version 1, `token-f16`): returns the exponent `e`, the f16 bits
/// and the rounded steps as f32.
pub fn round_steps(steps: &[f32]) -> Result<(i32, Vec<u16>, Vec<f32>)> {
    check_finite_positive(steps)?;
    let max = steps.iter().cloned().fold(0.0f32, f32::max) as f64;
    let e = ((max.to_bits() >> 52) & 0x7ff) as i32 - 1023 - TOP_EXP;
    let scale = pow2(-e);
    let mut bits = Vec::with_capacity(steps.len());
    let mut rounded = Vec::with_capacity(steps.len());
    for (t, &d) in steps.iter().enumerate() {
        let h = f16::from_f64(d as f64 * scale).to_bits();
        let s = step_value(h, e).ok_or_else(|| {
            Error::Arg(format!("step Δ[{t}] = {d:e} cannot be stored: it is too small next to the largest step {max:e} (ratio over 2^38) or has no usable reciprocal"))
        })?;
        bits.push(h);
        rounded.push(s);
    }
    Ok((e, bits, rounded))
}

// ---------- log grid ----------

/// `log2(G)` of a valid grid size.
pub(crate) fn grid_log2(per_octave: u32) -> Result<u32> {
    if per_octave.is_power_of_two() && per_octave <= MAX_PER_OCTAVE {
        Ok(per_octave.trailing_zeros())
    } else {
        Err(Error::Arg(format!("log grid of {per_octave} points per octave: must be 1, 2, 4, …, {MAX_PER_OCTAVE}")))
    }
}

/// The grid's mantissas `m[i] = f32(2^(i/G))`, `i ∈ 0..G`, computed the same on every platform:
/// `2^(i/G)` is the f64 product, over the set bits `b` of `i` in ascending order, of
/// `2^(2^b/G) = 2^(1/2^(g−b))`, which is `2.0` square-rooted `g − b` times. IEEE `sqrt` and `*` are
/// correctly rounded, so the bits are reproducible; the product is rounded to f32 once.
pub fn log_grid_table(per_octave: u32) -> Result<Vec<f32>> {
    let g = grid_log2(per_octave)? as usize;
    // roots[j] = 2^(1/2^j).
    let mut roots = [2.0f64; 7];
    for j in 1..roots.len() {
        roots[j] = roots[j - 1].sqrt();
    }
    Ok((0..per_octave as usize)
        .map(|i| {
            let mut p = 1.0f64;
            for b in 0..g {
                if (i >> b) & 1 == 1 {
                    p *= roots[g - b];
                }
            }
            p as f32
        })
        .collect())
}

/// The absolute grid index `k` (`Δ ≈ m[k mod G] · 2^⌊k/G⌋`) of the grid point nearest to `d` in
/// the log domain, or `None` for a step that is not a normal positive f32. With `d = f · 2^x`,
/// `f ∈ [1, 2)`, and `m[r] ≤ f < m[r+1]` (`m[G] = 2`), `f` is nearer to `m[r+1]` exactly when
/// `f² > m[r] · m[r+1]`; both products of 24-bit mantissas are exact in f64. Ties go down.
fn grid_index(d: f32, table: &[f32]) -> Option<i64> {
    if !(d.is_normal() && d > 0.0) {
        return None;
    }
    let bits = d.to_bits();
    let x = ((bits >> 23) & 0xff) as i64 - 127;
    let f = f32::from_bits((bits & 0x007f_ffff) | (127 << 23)) as f64;
    let g = table.len();
    // m[0] = 1 ≤ f, so at least one entry qualifies.
    let r = table.partition_point(|&m| m as f64 <= f) - 1;
    let lo = table[r] as f64;
    let hi = if r + 1 < g { table[r + 1] as f64 } else { 2.0 };
    let up = f * f > lo * hi;
    Some(x * g as i64 + r as i64 + up as i64)
}

/// The step at grid index `k` under exponent `e`: `m[k mod G] · 2^(e + ⌊k/G⌋)`, exact (a power of
/// two times an f32), or `None` when that is not a usable step. Encoder and decoder both use it.
pub fn grid_step(k: i64, e: i32, table: &[f32]) -> Option<f32> {
    let g = table.len() as i64;
    let oct = (e as i64).checked_add(k.div_euclid(g))?;
    if !(-200..=200).contains(&oct) {
        return None;
    }
    let s = (table[k.rem_euclid(g) as usize] as f64 * pow2(oct as i32)) as f32;
    usable(s).then_some(s)
}

/// Steps rounded to a log grid, as a file stores them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GridSteps {
    /// `⌊k_abs(first step) / G⌋`: makes the first index land in `0..G`.
    pub e: i32,
    /// Indices relative to `e` (`k_abs − e·G`).
    pub k: Vec<i64>,
    /// The steps the indices stand for.
    pub rounded: Vec<f32>,
}

pub(crate) fn round_to_grid(steps: &[f32], per_octave: u32) -> Result<GridSteps> {
    check_finite_positive(steps)?;
    let table = log_grid_table(per_octave)?;
    let g = per_octave as i64;
    let mut k = Vec::with_capacity(steps.len());
    let mut e = 0i32;
    let mut rounded = Vec::with_capacity(steps.len());
    for (t, &d) in steps.iter().enumerate() {
        let cannot = |why: &str| Error::Arg(format!("step Δ[{t}] = {d:e} cannot be stored on the log grid: {why}"));
        let ka = grid_index(d, &table).ok_or_else(|| cannot("not a normal f32"))?;
        if t == 0 {
            e = ka.div_euclid(g) as i32;
        }
        let kr = ka - e as i64 * g;
        let s = grid_step(kr, e, &table).ok_or_else(|| cannot("its grid point has no usable f32 reciprocal"))?;
        k.push(kr);
        rounded.push(s);
    }
    Ok(GridSteps { e, k, rounded })
}

/// Rounds steps to the nearest points of a log grid of `per_octave` points per octave (in the
/// log domain), exactly as a file in the `token` or `channel` mode stores them: quantizing with
/// the returned steps gives the file's symbols and reconstruction. Errors for a step that is not
/// finite and > 0, not a normal f32, or whose grid point has no usable reciprocal.
pub fn round_token_steps(steps: &[f32], per_octave: u32) -> Result<Vec<f32>> {
    Ok(round_to_grid(steps, per_octave)?.rounded)
}

/// Rounds steps as a file of `coding` stores them ([`round_token_steps`] or [`round_steps`]).
pub fn round_with(steps: &[f32], coding: StepCoding) -> Result<Vec<f32>> {
    match coding {
        StepCoding::LogGrid { per_octave } => round_token_steps(steps, per_octave),
        StepCoding::F16 => Ok(round_steps(steps)?.2),
    }
}
