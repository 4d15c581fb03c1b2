//! The `.fjq` codec (docs/fjq-format.md) as validated calls: encoding a feature into a file and
//! decoding a file into a caller's feature buffer. The C ABI (`fj_encode`, `fj_decode`) and the
//! Python package (`encode`) fill in these arguments; every check of the arguments is here, every
//! check of a file's bytes is the codec's own ([`codec::header`], [`codec::decode_into`]), so a
//! surface only converts.
//!
//! There are no GPU codec kernels: on the CUDA executor a call stages through host memory (the
//! feature and steps copied to the host on the executor's stream and the stream synchronized, the
//! CPU codec run, the results copied back and the stream synchronized again). The bytes of a file
//! are always host memory. NOT RUN YET on a GPU (no device was lent when it was written).
use crate::codec::{self, EncodedFile, Format, Header, StepCoding, StepLayout, StepSpec};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::geom::{Bits, FeatureShape, TokenGrid};
use crate::with_elem;

use super::buf::{no_overlap, Buf, Elem, Mem};
use super::Cuda;

/// What an encode reads and writes.
#[derive(Debug, Clone, Copy)]
pub struct EncodeArgs {
    /// The feature: `shape.numel()` elements of f32, f16 or bf16.
    pub x: Buf,
    pub shape: FeatureShape,
    pub patch: usize,
    /// f32 steps in `x`'s memory: `T` values (`Auto`, `Token`), one (`Tensor`) or `C` (`Channel`).
    pub steps: Buf,
    /// How the file stores the steps.
    pub layout: StepLayout,
    /// How per-token and per-channel steps are coded (ignored by the `tensor` mode).
    pub coding: StepCoding,
    pub bits: Bits,
    /// The container (version 3 by default).
    pub format: Format,
    /// Where the stored (rounded) steps go as well: as many f32 as `steps`, in `x`'s memory; may be
    /// `steps` itself (rounded in place).
    pub steps_out: Option<Buf>,
    /// Host bytes the file is copied into when it fits (`Elem::I8`, any length): a caller's buffer.
    /// The file is returned either way.
    pub out: Option<Buf>,
}

validated!(
    /// An encode whose arguments passed every check that does not read values.
    EncodeCall(EncodeArgs); ref grid: TokenGrid);

/// How many f32 steps `layout` takes for `grid`.
pub fn step_count(grid: &TokenGrid, layout: StepLayout) -> usize {
    match layout {
        StepLayout::Auto | StepLayout::Token => grid.tokens(),
        StepLayout::Tensor => 1,
        StepLayout::Channel => match grid.shape.layout {
            crate::geom::Layout::Nchw => grid.shape.dims[1],
            crate::geom::Layout::Ntc => grid.shape.dims[2],
        },
    }
}

/// A step coding a file can store: a log grid of 1, 2, 4, …, 64 points per octave, or f16.
pub fn check_coding(coding: StepCoding) -> Result<()> {
    match coding {
        StepCoding::LogGrid { per_octave } => codec::steps::grid_log2(per_octave).map(drop),
        StepCoding::F16 => Ok(()),
    }
}

/// Steps rounded as a file with `layout` and `coding` stores them ([`codec::round_with`]; the
/// tensor mode, and the automatic one when every step is the same f32, store the step exactly, so
/// it is only checked as the encoder checks it). Quantizing
/// with the result gives the file's symbols and reconstruction; rounding is idempotent.
pub fn round_steps(steps: &[f32], layout: StepLayout, coding: StepCoding) -> Result<Vec<f32>> {
    let equal = steps.first().is_some_and(|s0| steps.iter().all(|s| s.to_bits() == s0.to_bits()));
    if layout == StepLayout::Tensor || (layout == StepLayout::Auto && equal) {
        if steps.is_empty() {
            return Err(Error::Empty("steps"));
        }
        if let Some((t, s)) = steps.iter().enumerate().find(|(_, &s)| !codec::steps::usable(s)) {
            return Err(Error::Arg(format!("step Δ[{t}] = {s:e} must be a finite, normal f32 > 0 with a finite reciprocal")));
        }
        return Ok(steps.to_vec());
    }
    check_coding(coding)?;
    codec::round_with(steps, coding)
}

impl EncodeArgs {
    /// The checks before any value is read: `x`'s dtype, the grid (patch, limits), `x`'s length,
    /// the steps (count for the layout, type, memory, alignment), the coding and the container,
    /// `steps_out` (as the steps, writable), then the aliasing rule (`steps_out` may be `steps`).
    pub fn validate(self) -> Result<EncodeCall> {
        let x = &self.x;
        let dt = x.float_dtype()?;
        let grid = TokenGrid::new(self.shape, self.patch)?;
        let mem = x.mem();
        x.expect(dt.into(), grid.numel(), mem)?;
        let want = step_count(&grid, self.layout);
        self.steps.expect(Elem::F32, want, mem)?;
        if self.layout != StepLayout::Tensor {
            check_coding(self.coding)?;
        }
        self.format.check()?;
        if let Some(o) = &self.steps_out {
            o.expect_out(Elem::F32, want, mem)?;
        }
        if let Some(o) = &self.out {
            o.expect_out(Elem::I8, o.len(), Mem::Host)?;
        }
        let outs: Vec<Buf> = self.steps_out.into_iter().chain(self.out).collect();
        no_overlap(&[*x, self.steps], &outs, self.steps_out.map(|o| (o.name, self.steps.name)))?;
        Ok(EncodeCall { a: self, grid })
    }
}

impl EncodeCall {
    /// The most bytes the file can take ([`codec::encode_bound`]).
    pub fn bound(&self) -> Result<usize> {
        codec::encode_bound(&self.grid, self.a.bits, self.a.layout, self.a.coding, &self.a.format)
    }

    /// Encodes host slices of the feature and the steps.
    fn encode<E: Element>(&self, x: &[E], steps: &[f32]) -> Result<EncodedFile> {
        let a = &self.a;
        let spec = match a.layout {
            StepLayout::Tensor => StepSpec::Tensor(steps[0]),
            // As codec::encode: the tensor mode when every step is the same f32, bit for bit.
            StepLayout::Auto if steps.iter().all(|s| s.to_bits() == steps[0].to_bits()) => StepSpec::Tensor(steps[0]),
            StepLayout::Auto | StepLayout::Token => StepSpec::Token(steps),
            StepLayout::Channel => StepSpec::Channel(steps),
        };
        codec::encode_file(x, &self.grid, spec, a.bits, a.coding, &a.format)
    }

    /// Copies the file into the caller's `out` where it fits.
    fn deliver(&self, f: &EncodedFile) {
        if let Some(o) = self.a.out.filter(|o| o.len() >= f.bytes.len()) {
            // SAFETY: a validated writable host output of `o.len() >= f.bytes.len()` bytes that
            // overlaps no input or other output (checked); the only view of it.
            let dst: &mut [u8] = unsafe { o.slice_mut() };
            dst[..f.bytes.len()].copy_from_slice(&f.bytes);
        }
    }

    /// The stored steps to hand back in `steps_out` (as many as the caller's `steps`).
    fn stored<'f>(&self, f: &'f EncodedFile) -> &'f [f32] {
        let v = match self.a.layout {
            StepLayout::Channel => &f.channel_steps,
            _ => &f.steps,
        };
        &v[..step_count(&self.grid, self.a.layout)]
    }

    pub(crate) fn run_host(&self) -> Result<EncodedFile> {
        let a = &self.a;
        a.x.on_host()?;
        // SAFETY: host arrays of a validated call (live, aligned, as long as viewed: `Buf::new`'s
        // contract, `validate`'s checks); they are only read here, and the steps are read to the
        // end (into the file's plan) before `steps_out`, which may be the same array, is written.
        let steps: Vec<f32> = unsafe { a.steps.slice::<f32>() }.to_vec();
        let dt = a.x.float_dtype()?;
        let f = with_elem!(dt, E => {
            // SAFETY: as above (only read).
            let xs: &[E] = unsafe { a.x.slice() };
            self.encode(xs, &steps)?
        });
        if let Some(o) = &a.steps_out {
            // SAFETY: a validated writable host output of the steps' length that overlaps `x`
            // nowhere (checked); no other view of it is live (the steps were copied above).
            unsafe { o.slice_mut::<f32>() }.copy_from_slice(self.stored(&f));
        }
        self.deliver(&f);
        Ok(f)
    }
}

impl Cuda {
    /// An encode call staged through the host: `x` and the steps copied down, the CPU encoder,
    /// `steps_out` up.
    pub(crate) fn encode_file(&self, c: &EncodeCall) -> Result<EncodedFile> {
        let a = &c.a;
        // Every device array before anything is copied (the driver's check, as every op's).
        let mut arrays = vec![&a.x, &a.steps];
        arrays.extend(a.steps_out.as_ref());
        self.check(&arrays)?;
        let steps: Vec<f32> = self.download(&a.steps, 0.0f32)?;
        let dt = a.x.float_dtype()?;
        let f = with_elem!(dt, E => {
            let xs: Vec<E> = self.download(&a.x, E::from_f32(0.0))?;
            c.encode(&xs, &steps)?
        });
        if let Some(o) = &a.steps_out {
            self.upload(o, c.stored(&f))?;
        }
        c.deliver(&f);
        Ok(f)
    }
}

/// What a decode reads and writes.
#[derive(Debug, Clone, Copy)]
pub struct DecodeArgs {
    /// The file: its bytes (`Elem::I8`), host memory, only read.
    pub file: Buf,
    /// The reconstruction: as many elements of the file's dtype as the file holds.
    pub out: Buf,
    /// The layout and dimensions the caller gives the output: must be the file's.
    pub shape: FeatureShape,
}

validated!(
    /// A decode whose arguments passed their checks and whose file's header matches the output.
    DecodeCall(DecodeArgs); copy header: Header);

impl DecodeArgs {
    /// The checks of the arguments (the file's bytes in host memory; the output a float array of
    /// `shape`'s element count, aligned and writable; no overlap), then the file's header
    /// ([`codec::header`]: a malformed header is the codec's `Error::Io`, `fjq: ...`), then the
    /// output against it: the file's dtype (`Error::Dtype`), its layout and dimensions
    /// (`Error::Shape`).
    pub fn validate(self) -> Result<DecodeCall> {
        let (f, o) = (&self.file, &self.out);
        if f.mem() != Mem::Host || f.elem() != Elem::I8 {
            return Err(Error::Arg(format!("{} must be the file's bytes in host memory (got {} in {})", f.name, f.elem().name(), f.mem())));
        }
        let dt = o.float_dtype()?;
        if self.shape.numel() == 0 {
            return Err(Error::Empty("output"));
        }
        o.expect_out(dt.into(), self.shape.numel(), o.mem())?;
        no_overlap(&[*f], &[*o], None)?;
        // SAFETY: a host array of `len` bytes (checked above; `Buf::new`'s contract: live and
        // unwritten while the call is made and runs), only read.
        let bytes: &[u8] = unsafe { f.slice() };
        let header = codec::header(bytes)?;
        if header.dtype != dt {
            return Err(Error::Dtype(format!("the file holds {} elements, {} is {}", header.dtype.name(), o.name, dt.name())));
        }
        if header.shape != self.shape {
            return Err(Error::Shape(format!(
                "the file holds a {:?} feature of sizes {:?}, {} is {:?} of sizes {:?}",
                header.shape.layout,
                header.shape.sizes(),
                o.name,
                self.shape.layout,
                self.shape.sizes()
            )));
        }
        Ok(DecodeCall { a: self, header })
    }
}

impl DecodeCall {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the validated host file (see `DecodeArgs::validate`), only read.
        unsafe { self.a.file.slice() }
    }

    pub(crate) fn run_host(&self) -> Result<Header> {
        let o = &self.a.out;
        o.on_host()?;
        with_elem!(self.header.dtype, E => {
            // SAFETY: a validated writable host output of the file's element count and dtype that
            // overlaps the file nowhere (checked); the only view of it.
            let out: &mut [E] = unsafe { o.slice_mut() };
            codec::decode_into::<E>(self.bytes(), out)?;
        });
        Ok(self.header)
    }
}

impl Cuda {
    /// A decode call staged through the host: the CPU decoder into host memory, then one copy up.
    pub(crate) fn decode_file(&self, c: &DecodeCall) -> Result<Header> {
        self.check(&[&c.a.out])?;
        let n = c.header.shape.numel();
        with_elem!(c.header.dtype, E => {
            let mut v: Vec<E> = vec![E::from_f32(0.0); n];
            codec::decode_into::<E>(c.bytes(), &mut v)?;
            self.upload(&c.a.out, &v)?;
        });
        Ok(c.header)
    }
}
