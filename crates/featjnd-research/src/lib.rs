//! featjnd-research: the FeatJND research pipeline in `tch`, and the `featjnd` command-line tool.
//!
//! Split models (a Fashion-MNIST ResNet and a shapes detector trained here, torchvision's
//! MobileNetV2, TorchScript pairs), the FeatJND estimator and its training, the matched-NRMSE and
//! quantization studies, attribution pictures, data loaders, COCO evaluation and the `.fjq` feature
//! codec. The kernel library (`featjnd-kernels`) is re-exported, so `featjnd_research::ops` is the
//! same tensor API.

// `!(a > b)` on floats is deliberate throughout: it is true for NaN, which is what the checks want.
#![allow(clippy::neg_cmp_op_on_partial_ord, clippy::needless_range_loop)]

pub mod cli;
pub mod coco;
pub mod codec;
pub mod data;
pub mod estimator;
pub mod eval;
pub mod io;
pub mod model;
pub mod paths;
pub mod study;
pub mod train;

pub use featjnd_kernels::{cpu, cuda, element, error, geom, ops, params, philox, rate, reference, steps};
pub use featjnd_kernels::{Bits, Dtype, Element, Error, FeatureShape, Layout, NoiseKind, Reduce, Result, Strategy, TokenGrid};
