//! The C ABI of the `.fjq` feature codec (docs/fjq-format.md): `fj_encode_bound`, `fj_encode`,
//! `fj_decode_info`, `fj_decode`, their `_async` forms and `fj_round_steps`. Thin converters: the
//! arguments become the kernel library's validated calls (`call::EncodeArgs`, `call::DecodeArgs`,
//! whose checks every surface shares) and the errors become status codes; a malformed file is
//! `FJ_ERR_FORMAT` with the codec's message (`fjq: ...`, naming the field or the chunk).
//!
//! The bytes of a file are always host memory. The feature and the steps follow the context: on
//! a CUDA context `fj_encode` and `fj_decode` stage through host memory on the caller's stream
//! (there are no GPU codec kernels yet) and synchronize it; the `_async` forms, which must not
//! synchronize, are refused there with `FJ_ERR_DEVICE`. On a CPU context the `_async` forms run
//! synchronously, as every `_async` call does there.
use std::ffi::c_void;
use std::mem::size_of;

use featjnd_kernels::call::{Buf, DecodeArgs, Elem, EncodeArgs, Mem};
use featjnd_kernels::codec::{self, Format, Header, StepCoding, StepLayout, StepMode, DEFAULT_LANES, DEFAULT_PER_OCTAVE};
use featjnd_kernels::geom::{Bits, Layout, TokenGrid};
use featjnd_kernels::Dtype;

use super::*;

/// Options of `fj_encode`, `fj_encode_bound` and `fj_round_steps`. Zero-initialise, set
/// `size = sizeof(FjEncodeOptions)`; a null pointer means all zero (8 bits, patch 1, automatic
/// step mode, the log grid of 16 points per octave, the default chunk size).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FjEncodeOptions {
    pub size: u32,
    /// 8 or 16 (0 means 8).
    pub bits: u32,
    /// Patch size for NCHW tokens (0 means 1).
    pub patch: u32,
    /// `FJ_STEPS_AUTO` (0), `FJ_STEPS_TENSOR`, `FJ_STEPS_TOKEN` or `FJ_STEPS_CHANNEL`.
    pub step_mode: u32,
    /// `FJ_CODING_GRID` (0) or `FJ_CODING_F16` (`FJ_CODING_F32` with `FJ_STEPS_TENSOR` only; the
    /// tensor mode stores its step exactly whatever this says).
    pub step_coding: u32,
    /// Log-grid points per octave: 1, 2, 4, ..., 64 (0 means 16); 0 with `FJ_CODING_F16`.
    pub per_octave: u32,
    /// Symbols per chunk of the file, 1 to 2^24 (0 means 2^17): smaller chunks decode with more
    /// parallelism and cost a few bytes each.
    pub chunk_symbols: u32,
    pub pad0: u32,
    /// Optional (`fj_encode`): receives the steps the file stores, rounded as the file holds them
    /// (as many floats as `steps_len`, in the context's memory; may be `steps` itself).
    /// Quantizing `x` with these steps (`fj_quantize`) gives exactly the reconstruction
    /// `fj_decode` returns.
    pub steps_out: *mut f32,
}

impl Default for FjEncodeOptions {
    fn default() -> Self {
        FjEncodeOptions {
            size: 0,
            bits: 0,
            patch: 0,
            step_mode: 0,
            step_coding: 0,
            per_octave: 0,
            chunk_symbols: 0,
            pad0: 0,
            steps_out: std::ptr::null_mut(),
        }
    }
}

/// What `fj_decode_info` reads from a file's header. Set `size = sizeof(FjFileInfo)`; the call
/// writes the fields that fit in `size` bytes (a caller built against an older, shorter struct
/// gets the fields it knows).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct FjFileInfo {
    pub size: u32,
    /// The format version (1, 2 or 3).
    pub version: u32,
    /// `FJ_F32`, `FJ_F16` or `FJ_BF16`: the dtype `fj_decode`'s output must have.
    pub dtype: u32,
    /// `FJ_NCHW` or `FJ_NTC`.
    pub layout: u32,
    /// N, C, H, W (NCHW) or N, T, C, 0 (NTC): an `FjFeature` with this dtype, layout and dims is
    /// what `fj_decode` writes.
    pub dims: [u64; 4],
    pub patch: u32,
    /// 8 or 16.
    pub bits: u32,
    /// `FJ_STEPS_TENSOR`, `FJ_STEPS_TOKEN` or `FJ_STEPS_CHANNEL`.
    pub step_mode: u32,
    /// `FJ_CODING_GRID`, `FJ_CODING_F16`, or `FJ_CODING_F32` (the tensor mode).
    pub step_coding: u32,
    /// Log-grid points per octave (0 unless `FJ_CODING_GRID`).
    pub per_octave: u32,
    pub pad0: u32,
    pub tokens: u64,
    /// Elements of the feature (`fj_decode` writes as many).
    pub elements: u64,
    /// Bytes of the file the header describes.
    pub file_bytes: u64,
}

/// The encoder's settings from the options.
struct Settings {
    bits: Bits,
    patch: usize,
    layout: StepLayout,
    coding: StepCoding,
    format: Format,
}

/// Reads the options (null: the defaults) and converts their codes; the core checks the grid
/// size and the chunk size.
///
/// # Safety
/// `opts` is null or readable for its declared size.
unsafe fn settings(opts: *const FjEncodeOptions) -> R<(Settings, FjEncodeOptions)> {
    // SAFETY: `opts` is null or readable for its declared size (contract).
    let o = if opts.is_null() { FjEncodeOptions::default() } else { unsafe { read_opts(opts, "opts")? } };
    let layout = match o.step_mode {
        FJ_STEPS_AUTO => StepLayout::Auto,
        FJ_STEPS_TENSOR => StepLayout::Tensor,
        FJ_STEPS_TOKEN => StepLayout::Token,
        FJ_STEPS_CHANNEL => StepLayout::Channel,
        m => {
            return fail(
                FJ_ERR_ARG,
                format!("opts->step_mode {m} (use FJ_STEPS_AUTO, FJ_STEPS_TENSOR, FJ_STEPS_TOKEN or FJ_STEPS_CHANNEL)"),
            )
        }
    };
    let coding = match (o.step_coding, o.per_octave) {
        (FJ_CODING_GRID, 0) => StepCoding::LogGrid { per_octave: DEFAULT_PER_OCTAVE },
        (FJ_CODING_GRID, g) => StepCoding::LogGrid { per_octave: g },
        (FJ_CODING_F16, 0) => StepCoding::F16,
        (FJ_CODING_F32, 0) if layout == StepLayout::Tensor => StepCoding::default(),
        (c, g) => {
            return fail(
                FJ_ERR_ARG,
                format!(
                    "opts->step_coding {c} with per_octave {g} (FJ_CODING_GRID with 0 or a grid size; FJ_CODING_F16 with 0; FJ_CODING_F32 with FJ_STEPS_TENSOR only)"
                ),
            )
        }
    };
    let chunk_symbols = if o.chunk_symbols == 0 { Format::default().chunk_symbols } else { o.chunk_symbols as usize };
    let format = Format { version: 3, chunk_symbols, lanes: DEFAULT_LANES };
    Ok((Settings { bits: bits_of(o.bits)?, patch: o.patch.max(1) as usize, layout, coding, format }, o))
}

/// The most bytes `fj_encode` can write for feature `x` (its data is not read) with `opts`,
/// whatever the values: a buffer of `*out_bound` bytes always holds the file, so one call
/// suffices. The bound is the sum of every section's worst case (docs/fjq-format.md): about
/// 2 bytes per element plus the header, the tables and the steps, so the file itself (usually
/// far smaller: an 8-bit feature codes at its entropy) should be sent with the length
/// `fj_encode` reports. The exact size needs the encode itself (see `fj_encode`'s
/// `FJ_ERR_SPACE`).
///
/// # Safety
/// `x` is null or a readable `FjFeature`; `opts` null or readable for its declared size;
/// `out_bound` null or writable for one `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn fj_encode_bound(x: *const FjFeature, opts: *const FjEncodeOptions, out_bound: *mut u64) -> i32 {
    guard(|| {
        nonnull(out_bound, "out_bound")?;
        // SAFETY: `x` is null or a readable struct (contract).
        let f = unsafe { feature(x, "x")? };
        // SAFETY: `opts` is null or readable (contract).
        let (s, _) = unsafe { settings(opts)? };
        let g = TokenGrid::new(f.shape, s.patch)?;
        if s.layout != StepLayout::Tensor {
            featjnd_kernels::call::codec::check_coding(s.coding)?;
        }
        let b = codec::encode_bound(&g, s.bits, s.layout, s.coding, &s.format)?;
        // SAFETY: non-null (checked) and writable (contract).
        unsafe { put(out_bound, b as u64) };
        Ok(())
    })
}

/// `fj_encode` and `fj_encode_async`.
///
/// # Safety
/// As `fj_encode`.
#[allow(clippy::too_many_arguments)]
unsafe fn encode(
    ctx: *const FjContext,
    x: *const FjFeature,
    steps: *const f32,
    steps_len: u64,
    opts: *const FjEncodeOptions,
    out: *mut u8,
    out_cap: u64,
    out_len: *mut u64,
    stream: *mut c_void,
    sync_free: bool,
) -> R<()> {
    // SAFETY: `ctx` is null or live (contract).
    let c = unsafe { ctx_ref(ctx)? };
    check_stream(c, stream)?;
    // SAFETY: `x` is null or a readable struct (contract).
    let f = unsafe { feature(x, "x")? };
    // SAFETY: `opts` is null or readable (contract).
    let (s, o) = unsafe { settings(opts)? };
    nonnull(steps, "steps")?;
    nonnull(out_len, "out_len")?;
    if out.is_null() && out_cap > 0 {
        return fail(FJ_ERR_NULL, format!("out is null with out_cap {out_cap} (pass out_cap 0 to ask for the size)"));
    }
    if steps_len > (isize::MAX / 4) as u64 || out_cap > isize::MAX as u64 {
        return fail(FJ_ERR_SHAPE, format!("steps_len {steps_len} or out_cap {out_cap} overflow the address space"));
    }
    if sync_free && c.gpu.is_some() {
        return fail(
            FJ_ERR_DEVICE,
            "fj_encode_async is not available on a CUDA context yet (no GPU codec kernels; it would have to synchronize): use fj_encode, which stages through host memory",
        );
    }
    let (n, mem) = (f.shape.numel(), c.mem());
    // SAFETY: (every `Buf`) the pointer rules: `x->data` holds its elements and `steps`
    // `steps_len` floats in the context's memory, `opts->steps_out` (unless null) as many
    // writable floats there, `out` (unless null) `out_cap` writable bytes of host memory.
    let args = unsafe {
        EncodeArgs {
            x: Buf::new("x->data", f.data as usize, n, f.dt.into(), mem, false),
            shape: f.shape,
            patch: s.patch,
            steps: Buf::new("steps", steps as usize, steps_len as usize, Elem::F32, mem, false),
            layout: s.layout,
            coding: s.coding,
            bits: s.bits,
            format: s.format,
            steps_out: c_buf("opts->steps_out", o.steps_out, steps_len as usize, Elem::F32, mem),
            out: (out_cap > 0).then(|| Buf::new("out", out as usize, out_cap as usize, Elem::I8, Mem::Host, true)),
        }
    };
    let call = args.validate()?;
    // SAFETY: `stream` per the contract.
    let file = unsafe { run_on(c, stream, |ex| ex.run(&call))? };
    let len = file.bytes.len();
    // SAFETY: non-null (checked) and writable (contract).
    unsafe { put(out_len, len as u64) };
    if len as u64 > out_cap {
        return fail(
            FJ_ERR_SPACE,
            format!(
                "the file takes {len} bytes, out_cap is {out_cap} (*out_len holds the size; fj_encode_bound gives a size that always fits)"
            ),
        );
    }
    Ok(())
}

/// Encodes feature `x` with `steps[steps_len]` into a `.fjq` file (docs/fjq-format.md) in the host
/// buffer `out[out_cap]`, and its length into `*out_len`. The steps are one per token
/// (`FJ_STEPS_AUTO`, `FJ_STEPS_TOKEN`: `fj_token_count`), one (`FJ_STEPS_TENSOR`) or one per
/// channel (`FJ_STEPS_CHANNEL`), each finite and > 0 (`FJ_ERR_SHAPE` for another count); the
/// file stores them rounded (`opts->step_coding`; the tensor mode exactly) and `x` is quantized
/// with the rounded steps (docs/contract.md §4), so `fj_quantize` with the same steps rounded by
/// `fj_round_steps` (or with `opts->steps_out`) gives exactly the reconstruction `fj_decode`
/// returns, and the symbols are the ones the file holds. `opts` may be null (the defaults).
///
/// Output size: `fj_encode_bound` gives a size that always fits. With a smaller `out_cap` (0 and a
/// null `out` included), a file that does not fit is `FJ_ERR_SPACE` with `*out_len` = the bytes
/// needed, nothing written to `out` (the encode then runs again with a large enough buffer).
/// `opts->steps_out` is written either way. Other errors: `FJ_ERR_NONFINITE` for a NaN or ±Inf in
/// `x` (the message names the first index), `FJ_ERR_ARG` for a step that cannot be stored, the
/// usual argument statuses; nothing is written then.
///
/// On a CUDA context `x`, `steps` and `opts->steps_out` are device memory (`out` is host memory):
/// they are copied to the host on `stream`, which is synchronized, encoded on the CPU, and
/// `steps_out` copied back (synchronized again). No GPU codec kernels exist yet; this staging has
/// not been run on a GPU.
///
/// # Safety
/// `ctx` is a live context; `x` a readable `FjFeature` whose data holds its elements; `steps`
/// readable for `steps_len` floats; `opts` null or a readable `FjEncodeOptions` of at least its
/// `size` bytes whose `steps_out` is null or writable for `steps_len` floats; those arrays in the
/// context's memory; `out` null or writable for `out_cap` bytes of host memory; `out_len`
/// writable for one `uint64_t`; `stream` null or a CUDA stream of a CUDA context's device.
#[no_mangle]
pub unsafe extern "C" fn fj_encode(
    ctx: *const FjContext,
    x: *const FjFeature,
    steps: *const f32,
    steps_len: u64,
    opts: *const FjEncodeOptions,
    out: *mut u8,
    out_cap: u64,
    out_len: *mut u64,
    stream: *mut c_void,
) -> i32 {
    // SAFETY: the caller's contract is `encode`'s.
    guard(|| unsafe { encode(ctx, x, steps, steps_len, opts, out, out_cap, out_len, stream, false) })
}

/// `fj_encode` without a synchronization. On a CPU context it runs synchronously (as every
/// `_async` call there) and is `fj_encode`. On a CUDA context it is `FJ_ERR_DEVICE` for now:
/// there are no GPU codec kernels, and staging through the host needs a sync (use `fj_encode`).
///
/// # Safety
/// As `fj_encode`.
#[no_mangle]
pub unsafe extern "C" fn fj_encode_async(
    ctx: *const FjContext,
    x: *const FjFeature,
    steps: *const f32,
    steps_len: u64,
    opts: *const FjEncodeOptions,
    out: *mut u8,
    out_cap: u64,
    out_len: *mut u64,
    stream: *mut c_void,
) -> i32 {
    // SAFETY: the caller's contract is `encode`'s.
    guard(|| unsafe { encode(ctx, x, steps, steps_len, opts, out, out_cap, out_len, stream, true) })
}

/// The file as a slice.
///
/// # Safety
/// `bytes` is null or readable for `len` bytes.
unsafe fn file<'a>(bytes: *const u8, len: u64) -> R<&'a [u8]> {
    nonnull(bytes, "bytes")?;
    if len > isize::MAX as u64 {
        return fail(FJ_ERR_SHAPE, format!("len {len} overflows the address space"));
    }
    // SAFETY: non-null (checked), readable for `len` bytes (contract) that nobody writes during
    // the call; bytes need no alignment.
    Ok(unsafe { std::slice::from_raw_parts(bytes, len as usize) })
}

fn dtype_code(d: Dtype) -> u32 {
    match d {
        Dtype::F32 => FJ_F32,
        Dtype::F16 => FJ_F16,
        Dtype::Bf16 => FJ_BF16,
    }
}

/// The C description of a header.
fn file_info(h: &Header) -> FjFileInfo {
    let (step_mode, coding) = match h.step_mode {
        StepMode::Tensor => (FJ_STEPS_TENSOR, None),
        StepMode::Token(c) => (FJ_STEPS_TOKEN, Some(c)),
        StepMode::Channel(c) => (FJ_STEPS_CHANNEL, Some(c)),
    };
    let (step_coding, per_octave) = match coding {
        None => (FJ_CODING_F32, 0),
        Some(StepCoding::LogGrid { per_octave }) => (FJ_CODING_GRID, per_octave),
        Some(StepCoding::F16) => (FJ_CODING_F16, 0),
    };
    let mut dims = [0u64; 4];
    for (d, s) in dims.iter_mut().zip(h.shape.sizes()) {
        *d = s as u64;
    }
    let g = h.grid();
    FjFileInfo {
        size: size_of::<FjFileInfo>() as u32,
        version: h.version as u32,
        dtype: dtype_code(h.dtype),
        layout: match h.shape.layout {
            Layout::Nchw => FJ_NCHW,
            Layout::Ntc => FJ_NTC,
        },
        dims,
        patch: h.patch as u32,
        bits: h.bits.bits(),
        step_mode,
        step_coding,
        per_octave,
        pad0: 0,
        tokens: g.tokens() as u64,
        elements: g.numel() as u64,
        file_bytes: h.file_bytes as u64,
    }
}

/// Reads and checks the header of the `.fjq` file `bytes[len]` (host memory) into `*info`:
/// dtype, layout, dims, bits, step mode, element count. Everything `fj_decode` needs to size its
/// output, without decoding the steps or the symbols. A malformed header is `FJ_ERR_FORMAT`
/// (the message names the field); a file whose header passes can still be damaged further on
/// (`fj_decode` finds it). Versions 1 and 2 have one checksum over the whole file, checked here.
///
/// # Safety
/// `bytes` null or readable for `len` bytes; `info` null or writable for the `size` bytes its
/// leading `uint32_t` declares (at least 4).
#[no_mangle]
pub unsafe extern "C" fn fj_decode_info(bytes: *const u8, len: u64, info: *mut FjFileInfo) -> i32 {
    guard(|| {
        nonnull(info, "info")?;
        // SAFETY: non-null (checked) and readable for its leading `u32` (contract).
        let declared = unsafe { std::ptr::read_unaligned(info as *const u32) } as usize;
        if declared < 4 {
            return fail(FJ_ERR_ARG, format!("info->size must be sizeof(FjFileInfo), got {declared}"));
        }
        // SAFETY: `bytes` is null or readable for `len` bytes (contract).
        let h = codec::header(unsafe { file(bytes, len)? })?;
        let mut v = file_info(&h);
        v.size = declared as u32;
        let n = declared.min(size_of::<FjFileInfo>());
        // SAFETY: `info` is writable for `declared >= n` bytes (contract), `v` is a local of
        // `size_of::<FjFileInfo>() >= n` bytes; they do not overlap; no alignment is needed.
        unsafe { std::ptr::copy_nonoverlapping(&v as *const FjFileInfo as *const u8, info as *mut u8, n) };
        Ok(())
    })
}

/// `fj_decode` and `fj_decode_async`.
///
/// # Safety
/// As `fj_decode`.
unsafe fn decode(ctx: *const FjContext, bytes: *const u8, len: u64, out: *const FjFeature, stream: *mut c_void, sync_free: bool) -> R<()> {
    // SAFETY: `ctx` is null or live (contract).
    let c = unsafe { ctx_ref(ctx)? };
    check_stream(c, stream)?;
    // SAFETY: `bytes` is null or readable for `len` bytes (contract).
    let b = unsafe { file(bytes, len)? };
    // SAFETY: `out` is null or a readable struct (contract).
    let f = unsafe { feature(out, "out")? };
    if sync_free && c.gpu.is_some() {
        return fail(
            FJ_ERR_DEVICE,
            "fj_decode_async is not available on a CUDA context yet (no GPU codec kernels): use fj_decode, which stages through host memory",
        );
    }
    // SAFETY: the file is `len` readable host bytes (above); `out->data` holds as many writable
    // elements of its dtype as its dims say, in the context's memory (the pointer rules).
    let args = unsafe {
        DecodeArgs {
            file: Buf::new("bytes", b.as_ptr() as usize, b.len(), Elem::I8, Mem::Host, false),
            out: Buf::new("out->data", f.data as usize, f.shape.numel(), f.dt.into(), c.mem(), true),
            shape: f.shape,
        }
    };
    let call = args.validate()?;
    // SAFETY: `stream` per the contract.
    unsafe { run_on(c, stream, |ex| ex.run(&call).map(drop)) }
}

/// Decodes the `.fjq` file `bytes[len]` (host memory; versions 1, 2 and 3) into the feature
/// buffer `out`: `out->data` receives the reconstruction `x̂ = f32(q)·Δ` narrowed to the file's
/// dtype, bit for bit what `fj_quantize` gives with the file's stored steps. `out`'s dtype must be
/// the file's (`FJ_ERR_DTYPE`) and its layout and dims the file's (`FJ_ERR_SHAPE`); read them
/// with `fj_decode_info` first. A malformed file is `FJ_ERR_FORMAT`, its message naming the
/// field or the chunk (`fjq: chunk 3 of 17: checksum mismatch ...`); `out->data` is then
/// unspecified where a damaged chunk was found (the header is checked before anything is
/// written). Chunks decode in parallel on the context's threads.
///
/// On a CUDA context `out->data` is device memory: the file is decoded on the host and copied up
/// on `stream`, which is synchronized (no GPU codec kernels yet; not run on a GPU).
///
/// # Safety
/// `ctx` is a live context; `bytes` readable for `len` bytes of host memory; `out` a readable
/// `FjFeature` whose data is writable for its elements in the context's memory (it is written
/// although the struct's pointer is `const`); `stream` null or a CUDA stream of a CUDA context's
/// device.
#[no_mangle]
pub unsafe extern "C" fn fj_decode(ctx: *const FjContext, bytes: *const u8, len: u64, out: *const FjFeature, stream: *mut c_void) -> i32 {
    // SAFETY: the caller's contract is `decode`'s.
    guard(|| unsafe { decode(ctx, bytes, len, out, stream, false) })
}

/// `fj_decode` without a synchronization. On a CPU context it runs synchronously and is
/// `fj_decode`. On a CUDA context it is `FJ_ERR_DEVICE` for now (no GPU codec kernels; use
/// `fj_decode`, which stages through the host and synchronizes `stream`).
///
/// # Safety
/// As `fj_decode`.
#[no_mangle]
pub unsafe extern "C" fn fj_decode_async(
    ctx: *const FjContext,
    bytes: *const u8,
    len: u64,
    out: *const FjFeature,
    stream: *mut c_void,
) -> i32 {
    // SAFETY: the caller's contract is `decode`'s.
    guard(|| unsafe { decode(ctx, bytes, len, out, stream, true) })
}

/// Rounds `steps[count]` (host memory) as a file with `opts` stores them (`opts->step_coding`,
/// `opts->per_octave`; null `opts`: the log grid of 16 points per octave) into
/// `steps_out[count]` (host memory; may be `steps`, in place). Quantizing with the rounded steps
/// gives exactly the symbols and the reconstruction of the file `fj_encode` writes with them
/// (rounding is idempotent: `fj_encode` keeps rounded steps as they are). `FJ_STEPS_TENSOR` and
/// `FJ_CODING_F32` keep the steps as they are. A step that is not finite and > 0, or cannot be
/// stored, is `FJ_ERR_ARG` naming the first; `count` 0 is `FJ_ERR_SHAPE`.
///
/// # Safety
/// `steps` null or readable, `steps_out` null or writable, for `count` floats of host memory
/// (equal or disjoint); `opts` null or readable for its declared size.
#[no_mangle]
pub unsafe extern "C" fn fj_round_steps(steps: *const f32, count: u64, opts: *const FjEncodeOptions, steps_out: *mut f32) -> i32 {
    guard(|| {
        // SAFETY: `opts` is null or readable (contract).
        let (s, _) = unsafe { settings(opts)? };
        nonnull(steps, "steps")?;
        nonnull(steps_out, "steps_out")?;
        if count == 0 || count > (isize::MAX / 4) as u64 {
            return fail(FJ_ERR_SHAPE, format!("count {count} (at least one step, within the address space)"));
        }
        let n = count as usize;
        // SAFETY: `n` floats of host memory each (contract); only read.
        let (ib, ob) = unsafe {
            (
                Buf::new("steps", steps as usize, n, Elem::F32, Mem::Host, false),
                Buf::new("steps_out", steps_out as usize, n, Elem::F32, Mem::Host, true),
            )
        };
        ib.expect(Elem::F32, n, Mem::Host)?;
        ob.expect_out(Elem::F32, n, Mem::Host)?;
        featjnd_kernels::call::no_overlap(&[ib], &[ob], Some(("steps_out", "steps")))?;
        // SAFETY: `n` aligned (checked) floats of host memory that nobody writes during the call
        // (contract); copied before `steps_out`, which may be the same array, is written.
        let v: Vec<f32> = unsafe { std::slice::from_raw_parts(steps, n) }.to_vec();
        let r = featjnd_kernels::call::codec::round_steps(&v, s.layout, s.coding)?;
        // SAFETY: `n` aligned (checked) writable floats of host memory (contract), no other view
        // live (the input was copied).
        unsafe { std::slice::from_raw_parts_mut(steps_out, n) }.copy_from_slice(&r);
        Ok(())
    })
}
