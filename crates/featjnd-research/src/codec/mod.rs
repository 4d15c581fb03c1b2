//! The feature codec: token-wise quantized features in a self-contained `.fjq` file.
//!
//! A thin `tch` wrapper over the kernel library's slice codec ([`featjnd_kernels::codec`], the
//! `codec` feature), which holds the format, the step rounding, the entropy coder ([`entropy`])
//! and every check. [`encode`] rounds the per-token steps to what the file stores, quantizes with
//! the **rounded** steps (SPEC §4) and entropy-codes the symbols; [`decode`] rebuilds
//! `x̂ = f32(q)·Δ_t`, narrowed to the original dtype, bit-identical to the encoder's
//! reconstruction. The container is documented in `docs/fjq-format.md`.
//!
//! Every malformed file is an [`Error::Io`] whose message starts with `fjq:`.

use featjnd_kernels::codec as core;
use tch::{Device, Kind, Tensor};

use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::geom::{Bits, Layout};
use crate::ops;

pub use core::{entropy, round_steps, step_value, RateReport, Sections, Table, FIXED_HEADER, MAGIC, MIN_FILE, VERSION};

/// The result of [`encode`].
#[derive(Debug)]
pub struct Encoded {
    /// The `.fjq` file.
    pub bytes: Vec<u8>,
    /// The steps the file holds (f32, `T` values): the given steps rounded to f16 precision.
    pub steps: Tensor,
    /// Symbols (`i8` / `i16`, shape of `x`).
    pub symbols: Tensor,
    /// Reconstruction with the stored steps, dtype of `x`: what [`decode`] returns, bit for bit.
    pub recon: Tensor,
    /// Elements clamped to `±Q`.
    pub clamped: u64,
    /// Measured MSE per element of `recon` against `x` (in f32, SPEC §4).
    pub mse: f64,
    pub sections: Sections,
    pub rate: RateReport,
}

/// The result of [`decode`].
#[derive(Debug)]
pub struct Decoded {
    pub dtype: Dtype,
    pub layout: Layout,
    pub patch: usize,
    pub bits: Bits,
    /// Reconstruction `x̂ = f32(q)·Δ_t` in the original dtype (CPU).
    pub recon: Tensor,
    /// The stored steps as f32 (`T` values).
    pub steps: Tensor,
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

/// Encodes `x` with per-token steps `steps` (f32, one per token, e.g. from
/// [`ops::allocate_steps`]): the steps are first rounded to what the file stores, then `x` is
/// quantized with the rounded steps. `x` may live on any device (it is copied to the CPU).
pub fn encode(x: &Tensor, steps: &Tensor, layout: Layout, patch: usize, bits: Bits) -> Result<Encoded> {
    if !x.defined() || !steps.defined() {
        return Err(Error::Arg("x and steps must be defined tensors".into()));
    }
    let x = x.f_to_device(Device::Cpu)?.f_contiguous()?;
    let dtype = ops::check_tensor(&x, "x")?;
    let grid = ops::grid_of(&x, layout, patch)?;
    if steps.numel() != grid.tokens() || steps.dim() != 1 {
        return Err(Error::Shape(format!(
            "steps must be a 1-D tensor of {} values (one per token), got {:?}",
            grid.tokens(),
            steps.size()
        )));
    }
    let st = steps.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
    let steps = Vec::<f32>::try_from(&st.f_flatten(0, -1)?)?;
    let numel = grid.numel();
    let mut xb = vec![0u8; numel * dtype.size()];
    x.f_copy_data_u8(&mut xb, numel)?;
    fn wrap<E: featjnd_kernels::Element>(e: core::Encoded<E>, sizes: &[i64]) -> Result<Encoded> {
        Ok(Encoded {
            bytes: e.bytes,
            steps: Tensor::f_from_slice(&e.steps)?,
            symbols: symbol_tensor(&e.symbols, sizes)?,
            recon: elem_tensor(&core::ElemVec::from(e.recon), sizes)?,
            clamped: e.clamped,
            mse: e.mse,
            sections: e.sections,
            rate: e.rate,
        })
    }
    let sizes = x.size();
    match core::ElemVec::from_le_bytes(dtype, &xb)? {
        core::ElemVec::F32(v) => wrap(core::encode(&v, &grid, &steps, bits)?, &sizes),
        core::ElemVec::F16(v) => wrap(core::encode(&v, &grid, &steps, bits)?, &sizes),
        core::ElemVec::Bf16(v) => wrap(core::encode(&v, &grid, &steps, bits)?, &sizes),
    }
}

/// Decodes a `.fjq` file.
pub fn decode(bytes: &[u8]) -> Result<Decoded> {
    let d = core::decode(bytes)?;
    let sizes = d.shape.sizes();
    Ok(Decoded {
        dtype: d.dtype,
        layout: d.layout,
        patch: d.patch,
        bits: d.bits,
        recon: elem_tensor(&d.recon, &sizes)?,
        steps: Tensor::f_from_slice(&d.steps)?,
        symbols: symbol_tensor(&d.symbols, &sizes)?,
        sections: d.sections,
        rate: d.rate,
    })
}
