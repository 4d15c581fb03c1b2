//! Commands of the `featjnd` tool that drive the tch pipeline (training, studies). They live in the
//! library so that tests can call them directly; `src/bin/featjnd.rs` only parses and dispatches.

pub mod coco;
pub mod codec;
pub mod ops;
pub mod real;
pub mod study;
pub mod train_task;
pub mod user;

use crate::steps::Measured;
use crate::{Bits, Error, Layout, Result, Strategy};
use tch::{Device, Tensor};

/// `cpu`, `cuda` or `cuda:N` → a tch device, with a clear error when CUDA is absent.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let idx = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| Error::Arg(format!("bad device {s:?}: use cpu, cuda or cuda:N")))?,
                None => return Err(Error::Arg(format!("bad device {s:?}: use cpu, cuda or cuda:N"))),
            };
            // tch sees CUDA only once libtorch_cuda.so is loaded (design §4).
            crate::cuda::load_torch_cuda();
            if !tch::Cuda::is_available() {
                return Err(Error::CudaUnavailable(format!("device {s} requested but libtorch sees no GPU")));
            }
            Ok(Device::Cuda(idx))
        }
    }
}

/// The command line as one string (recorded in checkpoints and reports).
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Steps for budget `D` from token tolerances `jt` (contract §3): the capped allocation (§3.5) when
/// `caps` are given, else `strategy`; nominal, or matched to the measured MSE of `x` quantized with
/// `bits` (§3.4, returned with its `β`) when `measured`.
#[allow(clippy::too_many_arguments)]
pub fn allocate(
    x: &Tensor,
    layout: Layout,
    patch: usize,
    jt: &Tensor,
    caps: Option<&Tensor>,
    budget: f64,
    strategy: Strategy,
    bits: Bits,
    measured: bool,
) -> Result<(Tensor, Option<Measured>)> {
    Ok(match (caps, measured) {
        (Some(c), true) => crate::ops::allocate_steps_capped_measured(x, layout, patch, jt, c, budget, bits).map(|(s, m)| (s, Some(m)))?,
        (Some(c), false) => (crate::ops::allocate_steps_capped(jt, c, budget, 1.0)?, None),
        (None, true) => crate::ops::allocate_steps_measured(x, layout, patch, jt, budget, strategy, bits).map(|(s, m)| (s, Some(m)))?,
        (None, false) => (crate::ops::allocate_steps(jt, budget, strategy)?, None),
    })
}
