//! Shapes, layouts and tokens (contract §1) and the small enums of the ops.
use crate::error::{Error, Result};
use crate::params::{FjTokenGeom, FJ_LAYOUT_NCHW, FJ_LAYOUT_NTC};

/// Layout of a feature tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Layout {
    /// `[N, C, H, W]` (CNN split points).
    Nchw,
    /// `[N, T, C]` (transformer split points; a row is a token).
    Ntc,
}

/// A validated feature shape: its layout and dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureShape {
    pub layout: Layout,
    /// NCHW: `[N, C, H, W]`; NTC: `[N, T, C, 1]`.
    pub dims: [usize; 4],
}

impl FeatureShape {
    pub fn nchw(n: usize, c: usize, h: usize, w: usize) -> Self {
        FeatureShape { layout: Layout::Nchw, dims: [n, c, h, w] }
    }
    pub fn ntc(n: usize, t: usize, c: usize) -> Self {
        FeatureShape { layout: Layout::Ntc, dims: [n, t, c, 1] }
    }
    /// From a tensor's sizes and a layout (4 dims for NCHW, 3 for NTC).
    pub fn from_sizes(layout: Layout, sizes: &[i64]) -> Result<Self> {
        let want = match layout {
            Layout::Nchw => 4,
            Layout::Ntc => 3,
        };
        if sizes.len() != want || sizes.iter().any(|&s| s < 0) {
            return Err(Error::Shape(format!("{layout:?} needs {want} dimensions, got {sizes:?}")));
        }
        let d: Vec<usize> = sizes.iter().map(|&s| s as usize).collect();
        Ok(match layout {
            Layout::Nchw => FeatureShape::nchw(d[0], d[1], d[2], d[3]),
            Layout::Ntc => FeatureShape::ntc(d[0], d[1], d[2]),
        })
    }
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
    /// Number of samples N.
    pub fn samples(&self) -> usize {
        self.dims[0]
    }
    /// The sizes as a tensor would have them.
    pub fn sizes(&self) -> Vec<i64> {
        let d = self.dims.map(|v| v as i64);
        match self.layout {
            Layout::Nchw => d.to_vec(),
            Layout::Ntc => d[..3].to_vec(),
        }
    }
}

/// How a feature splits into tokens: one quantization step per token (contract §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrid {
    pub shape: FeatureShape,
    pub patch: usize,
}

impl TokenGrid {
    /// Validates the patch size (NCHW: must divide H and W; NTC: must be 1) and sizes.
    pub fn new(shape: FeatureShape, patch: usize) -> Result<Self> {
        if shape.numel() == 0 {
            return Err(Error::Empty("feature"));
        }
        if patch == 0 {
            return Err(Error::Arg("patch must be >= 1".into()));
        }
        match shape.layout {
            Layout::Nchw => {
                let [_, _, h, w] = shape.dims;
                if h % patch != 0 || w % patch != 0 {
                    return Err(Error::Patch { patch, h, w });
                }
            }
            Layout::Ntc => {
                if patch != 1 {
                    return Err(Error::Arg(format!("NTC tokens are rows: patch must be 1, got {patch}")));
                }
            }
        }
        let g = TokenGrid { shape, patch };
        // The kernels index tokens and rows with 32 bits (elements with 64).
        if g.tokens() > i32::MAX as usize || g.k() > i32::MAX as usize {
            return Err(Error::Arg(format!("{} tokens of {} elements: over the 2^31 limit", g.tokens(), g.k())));
        }
        Ok(g)
    }
    /// T, the number of tokens over all samples.
    pub fn tokens(&self) -> usize {
        let [n, a, b, c] = self.shape.dims;
        match self.shape.layout {
            Layout::Nchw => n * (b / self.patch) * (c / self.patch),
            Layout::Ntc => n * a,
        }
    }
    /// K, the elements per token.
    pub fn k(&self) -> usize {
        let [_, a, _, _] = self.shape.dims;
        match self.shape.layout {
            Layout::Nchw => a * self.patch * self.patch,
            Layout::Ntc => self.shape.dims[2],
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    /// Token of the element with flat index `i` (row-major), straight from contract §1.
    pub fn token_of(&self, i: usize) -> usize {
        let [_, c, h, w] = self.shape.dims;
        match self.shape.layout {
            Layout::Nchw => {
                let (p, hw) = (self.patch, h * w);
                let n = i / (c * hw);
                let hh = (i % hw) / w;
                let ww = i % w;
                (n * (h / p) + hh / p) * (w / p) + ww / p
            }
            Layout::Ntc => i / self.k(),
        }
    }
    /// The kernel-side description.
    pub fn to_params(&self) -> FjTokenGeom {
        let [n, a, b, c] = self.shape.dims;
        let (layout, c_, h_, w_) = match self.shape.layout {
            Layout::Nchw => (FJ_LAYOUT_NCHW, a, b, c),
            Layout::Ntc => (FJ_LAYOUT_NTC, b, a, 1),
        };
        FjTokenGeom {
            layout,
            n: n as u32,
            c: c_ as u32,
            h: h_ as u32,
            w: w_ as u32,
            patch: self.patch as u32,
            tokens: self.tokens() as u32,
            k: self.k() as u32,
        }
    }
}

/// Token tolerance reduction (contract §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Reduce {
    #[default]
    Mean,
    Rms,
    Min,
}

/// Step strategy (contract §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Strategy {
    Uniform,
    Jnd,
    Permuted { seed: u64 },
}

/// Noise of contract §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum NoiseKind {
    #[default]
    Gaussian,
    /// Unit-variance uniform.
    Uniform,
}

/// Symbol width of the fused quantizer: `Q = 2^(b-1) - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Bits {
    #[default]
    #[cfg_attr(feature = "clap", value(name = "8"))]
    B8,
    #[cfg_attr(feature = "clap", value(name = "16"))]
    B16,
}

impl Bits {
    /// The one rule for a symbol width given as a number, on every surface (C, Python, CLI):
    /// 8 or 16, and 0 for the default (8), which is what a zero-filled C option struct holds.
    pub fn from_code(b: u32) -> crate::Result<Bits> {
        match b {
            0 | 8 => Ok(Bits::B8),
            16 => Ok(Bits::B16),
            b => Err(crate::Error::Arg(format!("bits {b} (use 8 or 16; 0 means 8)"))),
        }
    }
    pub fn qmax(self) -> f32 {
        match self {
            Bits::B8 => 127.0,
            Bits::B16 => 32767.0,
        }
    }
    pub fn bits(self) -> u32 {
        match self {
            Bits::B8 => 8,
            Bits::B16 => 16,
        }
    }
    /// Histogram bins: 255 for b = 8 (−127…127); 511 + 1 overflow for b = 16 (−255…255, |q| > 255).
    pub fn hist_bins(self) -> usize {
        match self {
            Bits::B8 => 255,
            Bits::B16 => 512,
        }
    }
    /// Histogram bin of a symbol.
    #[inline(always)]
    pub fn bin(self, q: i32) -> usize {
        match self {
            Bits::B8 => (q + 127) as usize,
            Bits::B16 => {
                if q.abs() <= 255 {
                    (q + 255) as usize
                } else {
                    511
                }
            }
        }
    }
}
