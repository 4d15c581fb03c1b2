//! The feature codec: token-wise quantized features in a self-contained `.fjq` file.
//!
//! A thin `tch` wrapper over the kernel library's slice codec ([`featjnd_kernels::codec`], the
//! `codec` feature), which holds the format, the step rounding, the entropy coder ([`entropy`])
//! and every check. [`encode_with`] takes one step for the tensor, one per token or one per
//! channel ([`Steps`]) and a [`StepCoding`], rounds the steps to what the file stores, quantizes
//! with the **rounded** steps (contract §4) and entropy-codes the symbols; [`encode`] is the
//! per-token form (the `tensor` mode when all steps are equal, else the `token` mode on the
//! default log grid). [`decode`] rebuilds `x̂ = f32(q)·Δ`, narrowed to the original dtype,
//! bit-identical to the encoder's reconstruction. The container is documented in
//! `docs/fjq-format.md`.
//!
//! Every malformed file is an [`Error::Io`] whose message starts with `fjq:`.

use featjnd_kernels::codec as core;
use tch::{Device, Kind, Tensor};

use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::geom::{Bits, Layout};
use crate::ops;

pub use core::{
    entropy, grid_step, log_grid_table, round_steps, round_token_steps, round_with, step_value, RateReport, Sections, StepCoding, StepMode,
    Table, DEFAULT_PER_OCTAVE, FIXED_HEADER, FIXED_HEADER_V1, MAGIC, MAX_PER_OCTAVE, MIN_FILE, VERSION,
};

/// The result of [`encode`].
#[derive(Debug)]
pub struct Encoded {
    /// The `.fjq` file.
    pub bytes: Vec<u8>,
    /// How the file stores its steps.
    pub step_mode: StepMode,
    /// The per-token steps the file holds (f32, `T` values, rounded as stored; the `tensor` mode
    /// repeats its step). Empty in the channel modes.
    pub steps: Tensor,
    /// The per-channel steps the file holds (f32, `C` values) in the channel modes; else empty.
    pub channel_steps: Tensor,
    /// Symbols (`i8` / `i16`, shape of `x`).
    pub symbols: Tensor,
    /// Reconstruction with the stored steps, dtype of `x`: what [`decode`] returns, bit for bit.
    pub recon: Tensor,
    /// Elements clamped to `±Q`.
    pub clamped: u64,
    /// Measured MSE per element of `recon` against `x` (in f32, contract §4).
    pub mse: f64,
    pub sections: Sections,
    pub rate: RateReport,
}

/// The result of [`decode`].
#[derive(Debug)]
pub struct Decoded {
    /// The file's format version (1 or 2).
    pub version: u16,
    pub dtype: Dtype,
    pub layout: Layout,
    pub patch: usize,
    pub bits: Bits,
    /// How the file stores its steps (version 1: `Token(F16)`).
    pub step_mode: StepMode,
    /// Reconstruction `x̂ = f32(q)·Δ` in the original dtype (CPU).
    pub recon: Tensor,
    /// The stored per-token steps as f32 (`T` values; the `tensor` mode repeats its step). Empty
    /// in the channel modes.
    pub steps: Tensor,
    /// The stored per-channel steps (`C` values) in the channel modes; else empty.
    pub channel_steps: Tensor,
    /// Symbols (`i8` / `i16`, shape of the feature).
    pub symbols: Tensor,
    pub sections: Sections,
    pub rate: RateReport,
}

/// A CPU tensor of `sizes` from the codec's elements (built from bytes with an explicit kind:
/// tch 0.24 tags `half::bf16` slices as Half).
fn elem_tensor(v: &core::ElemVec, sizes: &[i64]) -> Result<Tensor> {
    Ok(Tensor::f_from_data_size(&v.to_le_bytes(), sizes, v.dtype().to_kind())?)
}

fn symbol_tensor(s: &core::SymbolVec, sizes: &[i64]) -> Result<Tensor> {
    Ok(match s {
        core::SymbolVec::I8(v) => Tensor::f_from_slice(v)?,
        core::SymbolVec::I16(v) => Tensor::f_from_slice(v)?,
    }
    .f_reshape(sizes)?)
}

/// The steps handed to [`encode_with`] (f32 tensors of any device and float kind).
#[derive(Debug, Clone, Copy)]
pub enum Steps<'a> {
    /// One step for the whole tensor.
    Tensor(f32),
    /// One step per token (`T` values).
    Token(&'a Tensor),
    /// One step per channel (`C` values: NCHW's `C`, NTC's columns).
    Channel(&'a Tensor),
}

fn host_steps(steps: &Tensor) -> Result<Vec<f32>> {
    if !steps.defined() {
        return Err(Error::Arg("steps must be a defined tensor".into()));
    }
    let st = steps.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
    Ok(Vec::<f32>::try_from(&st.f_flatten(0, -1)?)?)
}

fn check_1d(steps: &Tensor, want: usize, what: &str) -> Result<()> {
    if steps.numel() != want || steps.dim() != 1 {
        return Err(Error::Shape(format!("steps must be a 1-D tensor of {want} values (one per {what}), got {:?}", steps.size())));
    }
    Ok(())
}

/// Encodes `x` with per-token steps `steps` (f32, one per token, e.g. from
/// [`ops::allocate_steps`]): the `tensor` mode when all steps are the same f32, else the `token`
/// mode on the default log grid ([`featjnd_kernels::codec::encode`]). The steps are first rounded
/// to what the file stores, then `x` is quantized with the rounded steps. `x` may live on any
/// device (it is copied to the CPU).
pub fn encode(x: &Tensor, steps: &Tensor, layout: Layout, patch: usize, bits: Bits) -> Result<Encoded> {
    encode_impl(x, Some(steps), layout, patch, bits, None)
}

/// Encodes `x` with the steps of `steps`, per-token and per-channel steps stored as `coding`
/// (a tensor step is stored exactly), see [`featjnd_kernels::codec::encode_with`].
pub fn encode_with(x: &Tensor, steps: Steps, layout: Layout, patch: usize, bits: Bits, coding: StepCoding) -> Result<Encoded> {
    match steps {
        Steps::Tensor(s) => encode_impl(x, None, layout, patch, bits, Some((StepKind::Tensor(s), coding))),
        Steps::Token(t) => encode_impl(x, Some(t), layout, patch, bits, Some((StepKind::Token, coding))),
        Steps::Channel(t) => encode_impl(x, Some(t), layout, patch, bits, Some((StepKind::Channel, coding))),
    }
}

#[derive(Clone, Copy)]
enum StepKind {
    Tensor(f32),
    Token,
    Channel,
}

/// `how = None`: [`core::encode`]'s automatic choice for per-token steps.
fn encode_impl(
    x: &Tensor,
    steps: Option<&Tensor>,
    layout: Layout,
    patch: usize,
    bits: Bits,
    how: Option<(StepKind, StepCoding)>,
) -> Result<Encoded> {
    if !x.defined() || steps.is_some_and(|s| !s.defined()) {
        return Err(Error::Arg("x and steps must be defined tensors".into()));
    }
    let x = x.f_to_device(Device::Cpu)?.f_contiguous()?;
    let dtype = ops::check_tensor(&x, "x")?;
    let grid = ops::grid_of(&x, layout, patch)?;
    let channels = match layout {
        Layout::Nchw => grid.shape.dims[1],
        Layout::Ntc => grid.shape.dims[2],
    };
    let values = match (steps, how) {
        (Some(s), Some((StepKind::Channel, _))) => {
            check_1d(s, channels, "channel")?;
            host_steps(s)?
        }
        (Some(s), _) => {
            check_1d(s, grid.tokens(), "token")?;
            host_steps(s)?
        }
        (None, _) => Vec::new(),
    };
    let numel = grid.numel();
    let mut xb = vec![0u8; numel * dtype.size()];
    x.f_copy_data_u8(&mut xb, numel)?;
    fn wrap<E: featjnd_kernels::Element>(e: core::Encoded<E>, sizes: &[i64]) -> Result<Encoded> {
        Ok(Encoded {
            bytes: e.bytes,
            step_mode: e.step_mode,
            steps: Tensor::f_from_slice(&e.steps)?,
            channel_steps: Tensor::f_from_slice(&e.channel_steps)?,
            symbols: symbol_tensor(&e.symbols, sizes)?,
            recon: elem_tensor(&core::ElemVec::from(e.recon), sizes)?,
            clamped: e.clamped,
            mse: e.mse,
            sections: e.sections,
            rate: e.rate,
        })
    }
    fn run<E: featjnd_kernels::Element>(
        x: &[E],
        grid: &featjnd_kernels::geom::TokenGrid,
        values: &[f32],
        bits: Bits,
        how: Option<(StepKind, StepCoding)>,
    ) -> Result<core::Encoded<E>> {
        Ok(match how {
            None => core::encode(x, grid, values, bits)?,
            Some((StepKind::Tensor(s), c)) => core::encode_with(x, grid, core::StepSpec::Tensor(s), bits, c)?,
            Some((StepKind::Token, c)) => core::encode_with(x, grid, core::StepSpec::Token(values), bits, c)?,
            Some((StepKind::Channel, c)) => core::encode_with(x, grid, core::StepSpec::Channel(values), bits, c)?,
        })
    }
    let sizes = x.size();
    match core::ElemVec::from_le_bytes(dtype, &xb)? {
        core::ElemVec::F32(v) => wrap(run(&v, &grid, &values, bits, how)?, &sizes),
        core::ElemVec::F16(v) => wrap(run(&v, &grid, &values, bits, how)?, &sizes),
        core::ElemVec::Bf16(v) => wrap(run(&v, &grid, &values, bits, how)?, &sizes),
    }
}

/// Decodes a `.fjq` file.
pub fn decode(bytes: &[u8]) -> Result<Decoded> {
    let d = core::decode(bytes)?;
    let sizes = d.shape.sizes();
    Ok(Decoded {
        version: d.version,
        dtype: d.dtype,
        layout: d.layout,
        patch: d.patch,
        bits: d.bits,
        step_mode: d.step_mode,
        recon: elem_tensor(&d.recon, &sizes)?,
        steps: Tensor::f_from_slice(&d.steps)?,
        channel_steps: Tensor::f_from_slice(&d.channel_steps)?,
        symbols: symbol_tensor(&d.symbols, &sizes)?,
        sections: d.sections,
        rate: d.rate,
    })
}
