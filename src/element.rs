//! Element dtypes: f32, f16, bf16. Inputs widen exactly to f32; outputs narrow with
//! round-to-nearest-even (contract §1). Slice conversions use `half`'s SIMD paths where the CPU has them.
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
    #[cfg(feature = "torch")]
    pub fn to_kind(self) -> tch::Kind {
        match self {
            Dtype::F32 => tch::Kind::Float,
            Dtype::F16 => tch::Kind::Half,
            Dtype::Bf16 => tch::Kind::BFloat16,
        }
    }
    #[cfg(feature = "torch")]
    pub fn from_kind(k: tch::Kind) -> crate::Result<Self> {
        match k {
            tch::Kind::Float => Ok(Dtype::F32),
            tch::Kind::Half => Ok(Dtype::F16),
            tch::Kind::BFloat16 => Ok(Dtype::Bf16),
            other => Err(crate::Error::Dtype(format!("{other:?} (featjnd takes f32, f16 or bf16)"))),
        }
    }
    /// The kernel-side code (FJ_DTYPE_*).
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// A feature element type.
pub trait Element: Copy + Send + Sync + PartialEq + std::fmt::Debug + 'static {
    const DTYPE: Dtype;
    /// The largest finite value, widened to f32.
    const MAX_FINITE: f32;
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
    /// `dst[i] = src[i] as f32` (exact).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// `dst[i] = Self::from_f32(src[i])` (round to nearest even).
    fn narrow(src: &[f32], dst: &mut [Self]);
    /// Reinterpret as f32 when the type is f32 (lets the f32 path skip copies).
    fn as_f32_slice(s: &[Self]) -> Option<&[f32]>;
    fn as_f32_slice_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
    const MAX_FINITE: f32 = f32::MAX;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src)
    }
    fn narrow(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src)
    }
    fn as_f32_slice(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_slice_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
    }
}

macro_rules! half_element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: Dtype = $d;
            const MAX_FINITE: f32 = <$t>::MAX.to_f32_const();
            #[inline(always)]
            fn to_f32(self) -> f32 {
                <$t>::to_f32(self)
            }
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                <$t>::from_f32(v)
            }
            fn widen(src: &[Self], dst: &mut [f32]) {
                src.convert_to_f32_slice(dst)
            }
            fn narrow(src: &[f32], dst: &mut [Self]) {
                dst.convert_from_f32_slice(src)
            }
            fn as_f32_slice(_: &[Self]) -> Option<&[f32]> {
                None
            }
            fn as_f32_slice_mut(_: &mut [Self]) -> Option<&mut [f32]> {
                None
            }
        }
    };
}
half_element!(f16, Dtype::F16);
half_element!(bf16, Dtype::Bf16);

/// Runs `$body` with `$E` bound to the element type of a [`Dtype`] (one monomorphised copy per
/// dtype; the single place where runtime dtypes meet the generic code).
#[macro_export]
#[doc(hidden)]
macro_rules! with_elem {
    ($dtype:expr, $E:ident => $body:expr) => {
        match $dtype {
            $crate::Dtype::F32 => {
                type $E = f32;
                $body
            }
            $crate::Dtype::F16 => {
                type $E = $crate::__half::f16;
                $body
            }
            $crate::Dtype::Bf16 => {
                type $E = $crate::__half::bf16;
                $body
            }
        }
    };
}
pub use crate::with_elem;
