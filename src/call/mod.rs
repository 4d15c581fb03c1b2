//! One validated call per op (issue 24): every surface — the tch tensor API (`ops`), the C ABI
//! and the Python package — describes its arrays as framework-free [`Buf`]s, fills in the op's
//! `Args`, and calls `validate()`, which runs the contract's checks in the contract's order and
//! returns a `Call`. Only a validated call runs, on an [`Executor`]: the host (a rayon pool) or
//! one CUDA device and stream ([`Cuda`]). The result is finished (MSE, rate) in one place per op.
//! Every synchronous op is a call; the sync-free enqueue (contract §8) is not yet.
//!
//! So a check, a default or a message is written once and every surface agrees on it; the
//! surfaces keep only the conversion of their own types (tensors, `FjFeature`s, DLPack arrays)
//! and of the errors (`FJ_ERR_*` codes, Python exceptions).
pub mod buf;
pub mod capped;
pub mod cuda;
pub mod noise;
pub mod perturb;
pub mod quantize;
pub mod steps;
pub mod token_stats;

pub use buf::{no_overlap, Buf, Elem, Mem};
pub use capped::{CappedArgs, CappedCall, CappedMeasuredArgs, CappedMeasuredCall, CapsArgs, CapsCall};
pub use cuda::Cuda;
pub use noise::{NoiseArgs, NoiseCall};
pub use perturb::{PerturbArgs, PerturbCall};
pub use quantize::{symbol_elem, QuantizeArgs, QuantizeCall, QuantizeReport};
pub use steps::{AllocateArgs, AllocateCall, MeasuredArgs, MeasuredCall};
pub use token_stats::{TokenStat, TokenStatsArgs, TokenStatsCall};

use crate::cpu::PerturbReport;
use crate::error::Result;
use crate::steps::Measured;

/// Where a validated call runs.
pub enum Executor<'a> {
    /// The CPU, on this pool (or rayon's global one).
    Host(Option<&'a rayon::ThreadPool>),
    /// One CUDA device and stream.
    Cuda(&'a Cuda),
}

impl Executor<'_> {
    fn on_host<T: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> T + Send) -> T {
        match pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    pub fn quantize(&self, c: &QuantizeCall) -> Result<QuantizeReport> {
        match self {
            Executor::Host(pool) => Self::on_host(*pool, || c.run_host()),
            Executor::Cuda(g) => g.quantize(c),
        }
    }

    pub fn perturb(&self, c: &PerturbCall) -> Result<PerturbReport> {
        match self {
            Executor::Host(pool) => Self::on_host(*pool, || c.run_host()),
            Executor::Cuda(g) => g.perturb(c),
        }
    }

    pub fn token_stats(&self, c: &TokenStatsCall) -> Result<()> {
        match self {
            Executor::Host(pool) => Self::on_host(*pool, || c.run_host()),
            Executor::Cuda(g) => g.token_stats(c),
        }
    }

    pub fn allocate(&self, c: &AllocateCall) -> Result<()> {
        match self {
            Executor::Host(pool) => Self::on_host(*pool, || c.run_host()),
            Executor::Cuda(g) => g.allocate(c),
        }
    }

    pub fn allocate_measured(&self, c: &MeasuredCall) -> Result<Measured> {
        match self {
            Executor::Host(pool) => Self::on_host(*pool, || c.run_host()),
            Executor::Cuda(g) => g.allocate_measured(c),
        }
    }

    pub fn caps(&self, c: &CapsCall) -> Result<()> {
        match self {
            Executor::Host(pool) => Self::on_host(*pool, || c.run_host()),
            Executor::Cuda(g) => g.caps(c),
        }
    }

    pub fn capped(&self, c: &CappedCall) -> Result<()> {
        match self {
            Executor::Host(pool) => Self::on_host(*pool, || c.run_host()),
            Executor::Cuda(g) => g.capped(c),
        }
    }

    pub fn capped_measured(&self, c: &CappedMeasuredCall) -> Result<Measured> {
        match self {
            Executor::Host(pool) => Self::on_host(*pool, || c.run_host()),
            Executor::Cuda(g) => g.capped_measured(c),
        }
    }

    pub fn noise(&self, c: &NoiseCall) -> Result<()> {
        match self {
            Executor::Host(pool) => Self::on_host(*pool, || c.run_host()),
            Executor::Cuda(g) => g.noise(c),
        }
    }
}
