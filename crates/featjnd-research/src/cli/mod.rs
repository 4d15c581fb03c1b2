//! Commands of the `featjnd` tool that drive the tch pipeline (training, studies). They live in the
//! library so that tests can call them directly; `src/bin/featjnd.rs` only parses and dispatches.

pub mod coco;
pub mod codec;
pub mod ops;
pub mod real;
pub mod study;
pub mod train_task;
pub mod user;

use crate::{Error, Result};
use tch::Device;

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
            // tch sees CUDA only once libtorch_cuda.so is loaded (DESIGN §4).
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
