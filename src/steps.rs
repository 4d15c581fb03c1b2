//! Step allocation under a noise budget (SPEC §3): the formulas shared by every path, the CPU
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

/// Relative tolerance of the measured budget (SPEC §3).
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
