//! One validated call per op (contract §9): every surface — the tch tensor API (`ops`), the C ABI
//! and the Python package — describes its arrays as framework-free [`Buf`]s, fills in the op's
//! `Args`, and calls `validate()`, which runs the contract's checks in the contract's order and
//! returns a `Call`. Only a validated call runs, on an [`Executor`]: the host (a rayon pool) or
//! one CUDA device and stream ([`Cuda`]). The result is finished (MSE, rate) in one place per op.
//! Every synchronous op is a call, the two fused chains included; the sync-free enqueue
//! (contract §8) takes validated calls too.
//!
//! So a check, a default or a message is written once and every surface agrees on it; the
//! surfaces keep only the conversion of their own types (tensors, `FjFeature`s, DLPack arrays)
//! and of the errors (`FJ_ERR_*` codes, Python exceptions).
/// The validated call type of an op: its arguments and what `validate` derived from them (the
/// grid, in place or not), read-only; only the op's `validate` makes one.
/// `validated!(QuantizeCall(QuantizeArgs); ref grid: TokenGrid; copy in_place: bool)`.
macro_rules! validated {
    ($(#[$doc:meta])* $call:ident($args:ty) $(; $kind:ident $field:ident: $ty:ty)*) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $call {
            pub(crate) a: $args,
            $(pub(crate) $field: $ty,)*
        }
        impl $call {
            pub fn args(&self) -> &$args {
                &self.a
            }
            $(validated!(@get $kind $field $ty);)*
        }
    };
    (@get ref $field:ident $ty:ty) => {
        pub fn $field(&self) -> &$ty {
            &self.$field
        }
    };
    (@get copy $field:ident $ty:ty) => {
        pub fn $field(&self) -> $ty {
            self.$field
        }
    };
}

pub mod buf;
pub mod capped;
pub mod chain;
#[cfg(feature = "codec")]
pub mod codec;
pub mod cuda;
pub mod decode;
pub mod noise;
pub mod perturb;
pub mod quantize;
pub mod steps;
pub mod token_stats;

pub use buf::{no_overlap, Buf, Elem, Mem};
pub use capped::{CappedArgs, CappedCall, CappedMeasuredArgs, CappedMeasuredCall, CapsArgs, CapsCall};
pub use chain::{ChainArgs, ChainCall, StepRule};
#[cfg(feature = "codec")]
pub use codec::{DecodeArgs, DecodeCall, EncodeArgs, EncodeCall};
pub use cuda::Cuda;
pub use decode::{PerturbDecodeArgs, PerturbDecodeCall, QuantizeDecodeArgs, QuantizeDecodeCall};
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

/// A validated call: what it computes on each executor. Every op's `Call` type implements it,
/// and only those types exist, so an executor can only run a call that passed its `validate()`.
pub trait Call: Sync {
    type Output: Send;
    #[doc(hidden)]
    fn run_host(&self) -> Result<Self::Output>;
    #[doc(hidden)]
    fn run_cuda(&self, g: &Cuda) -> Result<Self::Output>;
}

impl Executor<'_> {
    /// Runs a validated call here: in the pool on the host, on the device's stream on CUDA.
    pub fn run<C: Call>(&self, c: &C) -> Result<C::Output> {
        match self {
            Executor::Host(Some(p)) => p.install(|| c.run_host()),
            Executor::Host(None) => c.run_host(),
            Executor::Cuda(g) => c.run_cuda(g),
        }
    }
}

/// `Call` for an op's call type: its host run and its CUDA executor method.
macro_rules! call {
    ($t:ty => $out:ty, $cuda:ident) => {
        impl Call for $t {
            type Output = $out;
            fn run_host(&self) -> Result<$out> {
                <$t>::run_host(self)
            }
            fn run_cuda(&self, g: &Cuda) -> Result<$out> {
                g.$cuda(self)
            }
        }
    };
}

call!(QuantizeCall => QuantizeReport, quantize);
call!(PerturbCall => PerturbReport, perturb);
call!(TokenStatsCall => (), token_stats);
call!(AllocateCall => (), allocate);
call!(MeasuredCall => Measured, allocate_measured);
call!(CapsCall => (), caps);
call!(CappedCall => (), capped);
call!(CappedMeasuredCall => Measured, capped_measured);
call!(NoiseCall => (), noise);
call!(ChainCall => QuantizeReport, chain);
#[cfg(feature = "codec")]
call!(codec::EncodeCall => crate::codec::EncodedFile, encode_file);
#[cfg(feature = "codec")]
call!(codec::DecodeCall => crate::codec::Header, decode_file);
call!(QuantizeDecodeCall => QuantizeReport, quantize_decode);
call!(PerturbDecodeCall => PerturbReport, perturb_decode);
