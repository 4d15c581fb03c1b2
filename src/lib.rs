//! featjnd: task-aligned just-noticeable differences for deep features.
//!
//! The kernel library implements the ops of `SPEC.md` (token tolerance, step allocation, fused
//! quantize/dequantize, Philox noise, matched-NRMSE perturbation) three times over:
//! * [`cpu`]: fast, multi-threaded, streaming CPU implementations on plain slices;
//! * [`cuda`]: CUDA C kernels in `kernels/`, compiled at run time by NVRTC;
//! * [`reference`]: slow, obviously-correct versions that the tests compare against.
//!
//! [`ops`] is the public tensor API: it takes `tch::Tensor`s (CPU or CUDA, f32/f16/bf16, zero-copy)
//! and dispatches on the tensor's device.

// `!(a > b)` on floats is deliberate throughout: it is true for NaN, which is what the checks want.
#![allow(clippy::neg_cmp_op_on_partial_ord, clippy::needless_range_loop)]

pub mod capi;
pub mod cli;
pub mod coco;
pub mod codec;
pub mod cpu;
pub mod cuda;
pub mod data;
pub mod element;
pub mod error;
pub mod estimator;
pub mod eval;
pub mod fastmath;
pub mod geom;
pub mod io;
pub mod model;
pub mod nvtx;
pub mod ops;
pub mod params;
pub mod philox;
pub mod rate;
pub mod reference;
pub mod steps;
pub mod study;
pub mod train;

pub use element::{Dtype, Element};
pub use error::{Error, Result};
pub use geom::{Bits, Layout, NoiseKind, Reduce, Shape, Strategy, TokenGrid};
