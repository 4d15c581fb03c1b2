//! Quantization with one step per channel (the `channel` step mode): contract §4's arithmetic with
//! the step chosen by the element's channel instead of its token. `inv_c = 1.0f / Δ_c` (one f32
//! division per channel), `q = rint_half_even(x · inv_c)` clamped to `±Q`, `x̂ = f32(q) · Δ_c`
//! (one f32 multiply each, never fused). This is the conventional per-channel feature-coding
//! baseline; it lives here (CPU only) because the op library's kernels are per token.

use crate::element::Element;
use crate::error::{Error, Result};
use crate::geom::{Bits, Layout, TokenGrid};

/// Output of [`quantize_channels`].
pub(crate) struct ChannelQuant<E> {
    /// Symbols as i32 (flat), in `−Q..=Q`.
    pub symbols: Vec<i32>,
    /// `x̂` narrowed to `E` (flat).
    pub recon: Vec<E>,
    pub clamped: u64,
    /// Σ (x − x̂)² over the elements: f32 sums per row of contiguous elements, added in f64.
    pub total_sse: f64,
}

/// The number of channels of a grid's feature (NCHW `C`, NTC `C`).
pub(crate) fn channels(grid: &TokenGrid) -> usize {
    match grid.shape.layout {
        Layout::Nchw => grid.shape.dims[1],
        Layout::Ntc => grid.shape.dims[2],
    }
}

/// Quantizes `x` (flat, row-major, the layout of `grid`) with `steps[c]` for channel `c`. Every
/// step must be usable (checked by the caller); a non-finite element is an error naming its flat
/// index, before anything is computed.
pub(crate) fn quantize_channels<E: Element>(x: &[E], grid: &TokenGrid, steps: &[f32], bits: Bits) -> Result<ChannelQuant<E>> {
    let n = grid.numel();
    if x.len() != n {
        return Err(Error::Shape(format!("x has {} elements, the grid {n}", x.len())));
    }
    if steps.len() != channels(grid) {
        return Err(Error::Shape(format!("{} channel steps for {} channels", steps.len(), channels(grid))));
    }
    if let Some(i) = x.iter().position(|v| !v.to_f32().is_finite()) {
        return Err(Error::NonFinite { index: i, value: x[i].to_f32() });
    }
    let inv: Vec<f32> = steps.iter().map(|&d| 1.0f32 / d).collect();
    let qmax = bits.qmax();
    let [_, a, b, c] = grid.shape.dims;
    // Rows of contiguous elements: NCHW rows of H·W (one channel each), NTC rows of C.
    let row = match grid.shape.layout {
        Layout::Nchw => b * c,
        Layout::Ntc => b,
    };
    let mut symbols = Vec::new();
    symbols.try_reserve_exact(n).map_err(|e| Error::Arg(format!("cannot allocate {n} symbols: {e}")))?;
    symbols.resize(n, 0i32);
    let mut recon = Vec::new();
    recon.try_reserve_exact(n).map_err(|e| Error::Arg(format!("cannot allocate a reconstruction of {n} elements: {e}")))?;
    recon.resize(n, E::from_f32(0.0));
    let (mut xf, mut yf) = (vec![0.0f32; row], vec![0.0f32; row]);
    let (mut clamped, mut total_sse) = (0u64, 0.0f64);
    for (r, ((xs, qs), ys)) in x.chunks(row.max(1)).zip(symbols.chunks_mut(row.max(1))).zip(recon.chunks_mut(row.max(1))).enumerate() {
        E::widen(xs, &mut xf);
        let mut sse = 0.0f32;
        for (i, (&v, q)) in xf.iter().zip(qs.iter_mut()).enumerate() {
            let ch = match grid.shape.layout {
                Layout::Nchw => r % a,
                Layout::Ntc => i,
            };
            let s = (v * inv[ch]).round_ties_even();
            clamped += (s.abs() > qmax) as u64;
            let s = s.clamp(-qmax, qmax);
            let y = s * steps[ch];
            *q = s as i32;
            yf[i] = y;
            let d = v - y;
            sse += d * d;
        }
        E::narrow(&yf, ys);
        total_sse += sse as f64;
    }
    Ok(ChannelQuant { symbols, recon, clamped, total_sse })
}
