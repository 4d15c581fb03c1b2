//! featjnd-kernels: the kernel library of FeatJND (task-aligned just-noticeable differences for
//! deep features).
//!
//! It implements the ops of the op contract (`docs/contract.md`: token tolerance, step
//! allocation, fused quantize/dequantize, Philox noise, matched-NRMSE perturbation) three times over:
//! * [`cpu`]: fast, multi-threaded, streaming CPU implementations on plain slices;
//! * [`cuda`]: CUDA C kernels in `kernels/`, compiled at run time by NVRTC;
//! * [`reference`]: slow, obviously-correct versions that the tests compare against.
//!
//! With the default `torch` feature, [`ops`] is the tensor API: it takes `tch::Tensor`s (CPU or
//! CUDA, f32/f16/bf16, zero-copy) and dispatches on the tensor's device. Without it
//! (`default-features = false`) the crate needs no libtorch: the slice API ([`cpu`], [`steps`],
//! [`philox`], [`rate`], and the `.fjq` codec `codec` behind the `codec` feature) and the
//! raw-pointer CUDA launches ([`cuda::raw`]) remain.

// `!(a > b)` on floats is deliberate throughout: it is true for NaN, which is what the checks want.
#![allow(clippy::neg_cmp_op_on_partial_ord, clippy::needless_range_loop)]

pub mod boxmuller;
pub mod call;
#[cfg(feature = "codec")]
pub mod codec;
pub mod cpu;
pub mod cuda;
pub mod element;
pub mod error;
pub mod geom;
pub mod nvtx;
#[cfg(feature = "torch")]
pub mod ops;
pub mod params;
pub mod philox;
pub mod rate;
pub mod reference;
pub mod steps;

pub use element::{Dtype, Element};
pub use error::{Error, Result};
pub use geom::{Bits, FeatureShape, Layout, NoiseKind, Reduce, Strategy, TokenGrid};

/// Re-exported for the `with_elem!` macro, so callers need no `half` dependency of their own.
#[doc(hidden)]
pub use half as __half;
