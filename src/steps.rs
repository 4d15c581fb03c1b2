//! Step allocation under a noise budget (contract §3): the formulas shared by every path, the CPU
//! allocation, and the measured-budget bisection (which takes any "measure the MSE at β" function,
//! so the CPU and CUDA paths share it).
use crate::error::{Error, Result};
use crate::geom::Strategy;
use crate::philox;

/// Checks `D > 0` and finite.
pub fn check_budget(budget: f64) -> Result<()> {
    if budget.is_finite() && budget > 0.0 {
        Ok(())
    } else {
        Err(Error::Budget(budget))
    }
}

/// Checks token tolerances: finite and > 0 (they come from a J that must be).
pub fn check_token_tol(jt: &[f32]) -> Result<()> {
    if jt.is_empty() {
        return Err(Error::Empty("token tolerances"));
    }
    match jt.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
        Some(index) => Err(Error::Jnd { index, value: jt[index] }),
        None => Ok(()),
    }
}

/// `Σ_t j_t²` in f64 (the Jnd normaliser).
pub fn sum_sq(jt: &[f32]) -> f64 {
    jt.iter().map(|&v| (v as f64) * (v as f64)).sum()
}

/// The common scale, computed in f64 and rounded once to f32 (the CUDA kernel does the same):
/// `sqrt(12 D)·β` (Uniform) or `sqrt(12 D T / Σ j²)·β` (Jnd, Permuted).
pub fn scale(strategy: Strategy, budget: f64, tokens: usize, sum_sq: f64, beta: f64) -> f32 {
    match strategy {
        Strategy::Uniform => ((12.0 * budget).sqrt() * beta) as f32,
        _ => ((12.0 * budget * tokens as f64 / sum_sq).sqrt() * beta) as f32,
    }
}

/// Writes `Δ_t` for a common factor `beta` (1 = nominal budget).
pub fn allocate_into(jt: &[f32], budget: f64, strategy: Strategy, beta: f64, out: &mut [f32]) -> Result<()> {
    check_budget(budget)?;
    check_token_tol(jt)?;
    if out.len() != jt.len() {
        return Err(Error::Shape(format!("steps has {} values for {} tokens", out.len(), jt.len())));
    }
    let s = scale(strategy, budget, jt.len(), sum_sq(jt), beta);
    match strategy {
        Strategy::Uniform => out.fill(s),
        Strategy::Jnd => out.iter_mut().zip(jt).for_each(|(o, &j)| *o = s * j),
        Strategy::Permuted { seed } => {
            let p = philox::permutation(jt.len(), seed);
            out.iter_mut().zip(&p).for_each(|(o, &i)| *o = s * jt[i as usize]);
        }
    }
    Ok(())
}

/// Nominal steps for budget `D` (`(1/T) Σ Δ_t²/12 = D`).
pub fn allocate(jt: &[f32], budget: f64, strategy: Strategy) -> Result<Vec<f32>> {
    let mut out = vec![0.0; jt.len()];
    allocate_into(jt, budget, strategy, 1.0, &mut out)?;
    Ok(out)
}

/// The nominal MSE of a set of steps: `(1/T) Σ Δ_t²/12`.
pub fn nominal_mse(steps: &[f32]) -> f64 {
    steps.iter().map(|&d| (d as f64) * (d as f64) / 12.0).sum::<f64>() / steps.len().max(1) as f64
}

/// Result of matching the measured budget.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Measured {
    /// Common factor applied to the nominal steps.
    pub beta: f64,
    /// Measured MSE per element of the quantize–dequantize at `beta`.
    pub measured_mse: f64,
    /// Quantize passes it took.
    pub evaluations: u32,
}

/// Relative tolerance of the measured budget (contract §3).
pub const MEASURED_TOL: f64 = 1e-3;

/// Finds `β` with `|measure(β)/D − 1| ≤ 1e-3` by bisection on `log β`, starting from the nominal
/// steps (`β = 1`). `measure` returns the measured MSE per element with all steps scaled by `β`.
/// Errors when `D` is out of reach: above the feature's energy (everything rounds to 0), or below
/// what the symbol range allows (clamping at ±Q makes tiny steps worse, not better).
pub fn bisect_beta(budget: f64, mut measure: impl FnMut(f64) -> Result<f64>) -> Result<Measured> {
    check_budget(budget)?;
    let mut evals = 0u32;
    let mut f = |b: f64| -> Result<f64> {
        evals += 1;
        measure(b)
    };
    let close = |m: f64| (m / budget - 1.0).abs() <= MEASURED_TOL;
    let m1 = f(1.0)?;
    if close(m1) {
        return Ok(Measured { beta: 1.0, measured_mse: m1, evaluations: evals });
    }
    let (mut lo, mut hi, mut mlo, mut mhi);
    if m1 < budget {
        (lo, mlo, hi) = (1.0, m1, 2.0);
        mhi = f(hi)?;
        while mhi < budget {
            if close(mhi) {
                return Ok(Measured { beta: hi, measured_mse: mhi, evaluations: evals });
            }
            if mhi <= mlo * (1.0 + 1e-12) && hi > 1e3 {
                return Err(Error::Unreachable {
                    budget,
                    why: format!("the error saturates at {mhi:.6e} per element (all symbols 0): D is above the feature's mean square"),
                });
            }
            (lo, mlo) = (hi, mhi);
            hi *= 2.0;
            mhi = f(hi)?;
        }
    } else {
        (hi, mhi, lo) = (1.0, m1, 0.5);
        mlo = f(lo)?;
        while mlo > budget {
            if close(mlo) {
                return Ok(Measured { beta: lo, measured_mse: mlo, evaluations: evals });
            }
            if mlo >= mhi || lo < 1e-12 {
                return Err(Error::Unreachable {
                    budget,
                    why: format!("smaller steps stop lowering the error (min seen {:.6e}): symbols clamp at ±Q; use 16 bits", mlo.min(mhi)),
                });
            }
            (hi, mhi) = (lo, mlo);
            lo *= 0.5;
            mlo = f(lo)?;
        }
    }
    let _ = (mlo, mhi);
    for _ in 0..200 {
        let mid = (lo * hi).sqrt();
        let m = f(mid)?;
        if close(m) {
            return Ok(Measured { beta: mid, measured_mse: m, evaluations: evals });
        }
        if m < budget {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi / lo - 1.0 < 1e-12 {
            break;
        }
    }
    Err(Error::Unreachable { budget, why: "bisection did not converge (the measured MSE jumps across D)".into() })
}

// ---------- capped allocation (contract §3.5) ----------

/// Checks caps: one per token, finite and > 0.
pub fn check_caps(caps: &[f32], tokens: usize) -> Result<()> {
    if caps.len() != tokens {
        return Err(Error::Shape(format!("caps has {} values for {tokens} tokens", caps.len())));
    }
    match caps.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
        Some(t) => Err(Error::Arg(format!("cap c[{t}] = {} must be finite and > 0", caps[t]))),
        None => Ok(()),
    }
}

/// Caps `c_t = κ·max(r_t, 2^-24·max_t r_t)` from the token RMS `r_t` of the feature (contract §3.5):
/// the floor keeps an all-zero token's step positive (its value does not matter: every symbol of
/// such a token is 0 whatever the step). Errors when every token is zero or `κ` is not finite > 0.
pub fn caps_from_rms(rms: &[f32], kappa: f32) -> Result<Vec<f32>> {
    if !(kappa.is_finite() && kappa > 0.0) {
        return Err(Error::Arg(format!("cap factor κ = {kappa} must be finite and > 0")));
    }
    let max = rms.iter().cloned().fold(0.0f32, f32::max);
    if !(max > 0.0 && max.is_finite()) {
        return Err(Error::Arg("the feature is zero (or not finite) in every token: the capped allocation has no scale".into()));
    }
    let floor = max * (1.0 / 16_777_216.0);
    Ok(rms.iter().map(|&r| kappa * r.max(floor)).collect())
}

/// The two `f64` scales of the capped allocation at `β = 1`: `Δ_t = min(a·j_t, b·c_t)`.
///
/// * Unsaturated (`S_c = Σ c_t² > 12·D·T`): `b = 1` and `a = s`, the root of
///   `Σ_t min(s·j_t, c_t)² = 12·D·T`, found exactly: sort the ratios `ρ_t = c_t / j_t` ascending
///   and capture tokens (smallest ratio first) until the closed-form
///   `s = sqrt((12·D·T − Σ_capped c²) / Σ_free j²)` lies at or below the next ratio; the final sums
///   are recomputed from scratch over the final sets (no cancellation from running updates).
/// * Saturated (`S_c ≤ 12·D·T`: even every token at its cap spends less than the budget): every
///   step is its cap scaled up, `b = sqrt(12·D·T / S_c)`, and `a = +∞` (the `j` term never wins).
pub fn capped_scales(jt: &[f32], caps: &[f32], budget: f64) -> Result<(f64, f64)> {
    check_budget(budget)?;
    check_token_tol(jt)?;
    check_caps(caps, jt.len())?;
    let target = 12.0 * budget * jt.len() as f64;
    let sc: f64 = caps.iter().map(|&c| (c as f64) * (c as f64)).sum();
    if sc <= target {
        return Ok((f64::INFINITY, (target / sc).sqrt()));
    }
    let mut order: Vec<(f64, u32)> = jt.iter().zip(caps).enumerate().map(|(t, (&j, &c))| (c as f64 / j as f64, t as u32)).collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    // Running sums only locate the active set; the answer is recomputed below.
    let mut free_j: f64 = jt.iter().map(|&j| (j as f64) * (j as f64)).sum();
    let mut capped_c = 0.0f64;
    let mut k = 0;
    while k < order.len() {
        let s = ((target - capped_c).max(0.0) / free_j).sqrt();
        if s <= order[k].0 {
            break;
        }
        let t = order[k].1 as usize;
        free_j -= (jt[t] as f64) * (jt[t] as f64);
        capped_c += (caps[t] as f64) * (caps[t] as f64);
        k += 1;
    }
    if k == order.len() {
        // Unreachable in exact arithmetic (S_c > target); rounding can only land here at the
        // boundary, where the saturated formula gives the same steps.
        return Ok((f64::INFINITY, (target / sc).sqrt()));
    }
    let free: f64 = order[k..].iter().map(|&(_, t)| (jt[t as usize] as f64).powi(2)).sum();
    let capped: f64 = order[..k].iter().map(|&(_, t)| (caps[t as usize] as f64).powi(2)).sum();
    Ok((((target - capped).max(0.0) / free).sqrt(), 1.0))
}

/// Writes the capped steps `Δ_t = min(f32(a·β)·j_t, f32(b·β)·c_t)` (contract §3.5): each scale
/// rounded once to `f32`, each candidate one `f32` multiply.
pub fn allocate_capped_into(jt: &[f32], caps: &[f32], budget: f64, beta: f64, out: &mut [f32]) -> Result<()> {
    let (a, b) = capped_scales(jt, caps, budget)?;
    if out.len() != jt.len() {
        return Err(Error::Shape(format!("steps has {} values for {} tokens", out.len(), jt.len())));
    }
    let (fa, fb) = ((a * beta) as f32, (b * beta) as f32);
    out.iter_mut().zip(jt.iter().zip(caps)).for_each(|(o, (&j, &c))| *o = (fa * j).min(fb * c));
    Ok(())
}

/// Nominal capped steps for budget `D` (contract §3.5).
pub fn allocate_capped(jt: &[f32], caps: &[f32], budget: f64) -> Result<Vec<f32>> {
    let mut out = vec![0.0; jt.len()];
    allocate_capped_into(jt, caps, budget, 1.0, &mut out)?;
    Ok(out)
}
