//! The typed errors of contract §7. Every op validates before touching data and returns one of these;
//! none of them panics.
use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("unsupported dtype: {0}")]
    Dtype(String),
    #[error("mixed devices: {0}")]
    MixedDevices(String),
    #[error("{0} is not contiguous (call .contiguous() first)")]
    NonContiguous(&'static str),
    #[error("patch {patch} does not divide H={h} and W={w}")]
    Patch { patch: usize, h: usize, w: usize },
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("budget D must be finite and > 0, got {0}")]
    Budget(f64),
    #[error("NRMSE r must be finite and >= 0, got {0}")]
    Nrmse(f64),
    #[error("tolerance map J must be finite and > 0: J[{index}] = {value}")]
    Jnd { index: usize, value: f32 },
    #[error("feature x must be finite: x[{index}] = {value}")]
    NonFinite { index: usize, value: f32 },
    #[error("invalid argument: {0}")]
    Arg(String),
    /// An array whose address is not a multiple of its element size (only raw pointers can be).
    #[error("{0}")]
    Align(String),
    #[error("measured budget D = {budget} cannot be reached: {why}")]
    Unreachable { budget: f64, why: String },
    #[error("CUDA path unavailable: {0}")]
    CudaUnavailable(String),
    #[error("CUDA error: {0}")]
    Cuda(String),
    #[error("NVRTC failed to compile {kernel}: {log}")]
    Nvrtc { kernel: String, log: String },
    #[error("{0}")]
    Io(String),
    #[error("checkpoint {path}: {why}")]
    Checkpoint { path: String, why: String },
    #[error("model: {0}")]
    Model(String),
    /// A result that would not be finite in the output dtype (e.g. an NRMSE so large that
    /// `x + s·J⊙ξ` overflows).
    #[error("overflow: {0}")]
    Overflow(String),
    /// An error libtorch reported (allocation failure, a failed op), with its message.
    #[error("libtorch: {0}")]
    Torch(String),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

#[cfg(feature = "torch")]
impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(e.to_string())
    }
}
