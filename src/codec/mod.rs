//! The feature codec on plain slices: quantized features in a self-contained `.fjq` file
//! (`docs/fjq-format.md`). Behind the `codec` feature; needs no libtorch.
//!
//! [`encode_with`] takes the steps as one of three [`StepSpec`]s — one for the tensor, one per
//! token, one per channel — and a [`StepCoding`] for the per-token/per-channel ones (a log grid
//! of `G` points per octave, or version 1's f16). It rounds the steps to what the file stores
//! ([`steps`]), quantizes with the **rounded** steps (per token: [`cpu::quantize`], contract §4; per
//! channel: the same arithmetic with the channel's step), and entropy-codes the symbols
//! ([`entropy`]: constriction's ANS with a static categorical model whose quantized frequency
//! table is in the file); per-token grid indices are entropy-coded the same way, as differences.
//! [`encode`] is the per-token entry point: it writes the `tensor` mode when every step is the
//! same f32, else the `token` mode on the default grid ([`DEFAULT_PER_OCTAVE`] points per octave).
//! [`decode`] reads versions 1 and 2 and rebuilds `x̂ = f32(q)·Δ`, narrowed to the original
//! dtype, bit-identical to the encoder's reconstruction.
//!
//! Every malformed file is an [`Error::Io`] whose message starts with `fjq:`: bad magic, an
//! unsupported version, a checksum mismatch (any corrupted byte after the version, or a truncated
//! file), or a header that contradicts itself. Lengths are checked against the file size before
//! anything is allocated from them; the decoded vectors are allocated fallibly.

mod channel;
mod chunks;
pub mod entropy;
pub mod rans;
#[cfg(target_arch = "x86_64")]
mod rans_avx2;
#[cfg(target_arch = "x86_64")]
mod rans_avx2_enc;
mod rows;
pub mod steps;
mod v3;

use half::{bf16, f16};

use crate::cpu::{self, QuantOut, Symbols};
use crate::element::{Dtype, Element};
use crate::error::{Error, Result};
use crate::geom::{Bits, FeatureShape, Layout, TokenGrid};
use crate::rate;

pub use entropy::Table;
pub use steps::{
    grid_step, log_grid_table, round_steps, round_token_steps, round_with, step_value, StepCoding, StepMode, StepSpec, DEFAULT_PER_OCTAVE,
    MAX_PER_OCTAVE,
};

/// The first four bytes of every `.fjq` file.
pub const MAGIC: [u8; 4] = *b"FJQ\0";
/// The format version this build writes by default (it reads 1, 2 and 3; [`Format`] can still
/// write 2).
pub const VERSION: u16 = 3;
/// Bytes of version 2's fixed header before the dimensions.
pub const FIXED_HEADER: usize = 52;
/// Bytes of version 1's fixed header before the dimensions.
pub const FIXED_HEADER_V1: usize = 40;
/// The smallest possible file of any version (version 1: fixed header, 3 dims, an empty table,
/// no steps, the payload length, the CRC).
pub const MIN_FILE: usize = FIXED_HEADER_V1 + 3 * 8 + 8 + 4;
/// Version 2's smallest file (fixed header, 3 dims, empty table and steps, payload length, CRC).
const MIN_FILE_V2: usize = FIXED_HEADER + 3 * 8 + 8 + 4;
/// Bytes of version 3's coder fields after the dimensions (precision, lanes, reserved, chunk
/// size, chunk count).
pub const CODER_FIELDS_V3: usize = 12;
/// Version 3's smallest file (fixed header, 3 dims, coder fields, empty table, steps and index,
/// the header CRC, no chunks).
const MIN_FILE_V3: usize = FIXED_HEADER + 3 * 8 + CODER_FIELDS_V3 + 4;

pub use v3::{decode_into, decode_recon, encode_file, EncodedFile, Format, Reconstruction, DEFAULT_CHUNK, DEFAULT_LANES, MAX_CHUNK};
/// Bound on a per-token grid index difference: indices of normal f32 steps span at most
/// `254·G ≤ 16256`.
const DIFF_MAX: i32 = 1 << 15;

fn err(what: impl std::fmt::Display) -> Error {
    Error::Io(format!("fjq: {what}"))
}

/// Byte counts of the sections of a file (they sum to the file size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sections {
    /// Fixed header and dimensions.
    pub header: usize,
    /// Frequency table of the symbols.
    pub table: usize,
    /// The steps' side information: the step section (version 1: 2 bytes per token). The few
    /// step fields of the fixed header (mode, coding, grid, exponent) are counted in `header`.
    pub steps: usize,
    /// The 8-byte payload length and the payload.
    pub payload: usize,
    /// The CRC32.
    pub crc: usize,
}

impl Sections {
    pub fn total(&self) -> usize {
        self.header + self.table + self.steps + self.payload + self.crc
    }
    /// Offsets where each section starts, then the file size: the region boundaries.
    pub fn boundaries(&self) -> [usize; 6] {
        let a = self.header;
        let b = a + self.table;
        let c = b + self.steps;
        let d = c + self.payload;
        [0, a, b, c, d, d + self.crc]
    }
}

/// Rate of a coded feature: the real one (file size), contract §4's estimate, and the split between
/// the steps' side information and the symbols.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RateReport {
    pub file_bytes: usize,
    pub elements: usize,
    pub tokens: usize,
    /// Symbols that occur (the alphabet of the table).
    pub alphabet: usize,
    /// Empirical entropy `H` of the symbols (exact histogram), bits per element.
    pub entropy_bits: f64,
    /// `8 · file_bytes / elements`.
    pub bits_per_element: f64,
    /// contract §4: `(H·T·K + 16·T) / (T·K)` ([`crate::rate::bits_per_element`]), whatever the file
    /// really spends on steps.
    pub estimate_bits_per_element: f64,
    /// `bits_per_element / estimate − 1`.
    pub gap: f64,
    /// Ideal code length of the symbols under the stored (quantized) model, bits per element.
    pub model_bits: f64,
    /// Bytes of the step section ([`Sections::steps`]).
    pub step_bytes: usize,
    /// `8 · step_bytes / T`: what the steps really cost per token (contract §4 assumes 16).
    pub step_bits_per_token: f64,
    /// `8 · step_bytes / elements`.
    pub step_bits_per_element: f64,
    /// `8 · (table + payload sections) / elements`: what the symbols cost.
    pub symbol_bits_per_element: f64,
    /// contract §4's estimate with the file's real side information: `H + step_bits_per_element`.
    pub coded_estimate_bits_per_element: f64,
    /// `bits_per_element / coded_estimate − 1`: the header, the table, the model's quantization
    /// and the coder's flush only.
    pub coded_gap: f64,
}

impl RateReport {
    /// `precision`: the bits of the table's fixed point (24 for versions 1 and 2).
    fn new(file_bytes: usize, grid: &TokenGrid, table: &Table, precision: u32, counts: &[u64], sections: &Sections) -> Self {
        let (elements, tokens) = (grid.numel(), grid.tokens());
        let h = rate::entropy_bits(counts);
        let est = rate::bits_per_element(h, tokens, grid.k(), rate::SIDE_BITS_PER_TOKEN);
        let bpe = 8.0 * file_bytes as f64 / elements as f64;
        let step_bpe = 8.0 * sections.steps as f64 / elements as f64;
        let coded_est = h + step_bpe;
        RateReport {
            file_bytes,
            elements,
            tokens,
            alphabet: table.len(),
            entropy_bits: h,
            bits_per_element: bpe,
            estimate_bits_per_element: est,
            gap: bpe / est - 1.0,
            model_bits: rans::code_length_bits(counts, &table.freqs, precision) / elements as f64,
            step_bytes: sections.steps,
            step_bits_per_token: 8.0 * sections.steps as f64 / tokens as f64,
            step_bits_per_element: step_bpe,
            symbol_bits_per_element: 8.0 * (sections.table + sections.payload) as f64 / elements as f64,
            coded_estimate_bits_per_element: coded_est,
            coded_gap: bpe / coded_est - 1.0,
        }
    }
}

/// The result of [`encode`] / [`encode_with`].
#[derive(Debug)]
pub struct Encoded<E> {
    /// The `.fjq` file.
    pub bytes: Vec<u8>,
    /// How the file stores its steps.
    pub step_mode: StepMode,
    /// The per-token steps the file holds (`T` values, rounded as stored; the `tensor` mode
    /// repeats its one step). Empty in the channel modes.
    pub steps: Vec<f32>,
    /// The per-channel steps the file holds (`C` values, rounded as stored) in the channel modes;
    /// empty otherwise.
    pub channel_steps: Vec<f32>,
    /// Symbols (flat, `i8` / `i16` by the width).
    pub symbols: SymbolVec,
    /// Reconstruction with the stored steps (flat, dtype of `x`): what [`decode`] returns, bit
    /// for bit.
    pub recon: Vec<E>,
    /// Elements clamped to `±Q`.
    pub clamped: u64,
    /// Measured MSE per element of `recon` against `x` (in f32, contract §4).
    pub mse: f64,
    pub sections: Sections,
    pub rate: RateReport,
}

/// What a file says about its feature (every version): the description [`decode`],
/// [`decode_recon`] and [`decode_into`] return beside the reconstruction.
#[derive(Debug)]
pub struct FileInfo {
    /// The file's format version (1, 2 or 3).
    pub version: u16,
    pub dtype: Dtype,
    pub layout: Layout,
    /// The feature's shape (its [`FeatureShape::sizes`] are the array's sizes).
    pub shape: FeatureShape,
    pub patch: usize,
    pub bits: Bits,
    /// How the file stores its steps (version 1: `Token(F16)`).
    pub step_mode: StepMode,
    /// The stored per-token steps as f32 (`T` values; the `tensor` mode repeats its one step).
    /// Empty in the channel modes.
    pub steps: Vec<f32>,
    /// The stored per-channel steps (`C` values) in the channel modes; empty otherwise.
    pub channel_steps: Vec<f32>,
}

impl FileInfo {
    /// The token grid of the feature.
    pub fn grid(&self) -> TokenGrid {
        TokenGrid { shape: self.shape, patch: self.patch }
    }
}

/// The result of [`decode`]: the file's description (read through: `d.dtype`), the
/// reconstruction, the symbols and the rate.
#[derive(Debug)]
pub struct Decoded {
    pub info: FileInfo,
    /// Reconstruction `x̂ = f32(q)·Δ` in the original dtype (flat, row-major).
    pub recon: ElemVec,
    /// Symbols (flat, `i8` / `i16` by the width).
    pub symbols: SymbolVec,
    pub sections: Sections,
    pub rate: RateReport,
}

impl std::ops::Deref for Decoded {
    type Target = FileInfo;
    fn deref(&self) -> &FileInfo {
        &self.info
    }
}

// ---------- symbols ----------

/// Histogram of the symbols and the `(symbol, count)` pairs that occur.
fn histogram(sym: &SymSlice) -> (Vec<u64>, Vec<(i32, u64)>) {
    let (mut h, off) = match sym {
        SymSlice::I8(_) => (vec![0u64; 256], 128i32),
        SymSlice::I16(_) => (vec![0u64; 65536], 32768i32),
    };
    match sym {
        SymSlice::I8(s) => s.iter().for_each(|&q| h[(q as i32 + off) as usize] += 1),
        SymSlice::I16(s) => s.iter().for_each(|&q| h[(q as i32 + off) as usize] += 1),
    }
    let pairs = h.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| (i as i32 - off, c)).collect();
    (h, pairs)
}

/// `(symbol, count)` of the bins of symbol indices `q + Q` that are not empty.
fn histogram_pairs_from_bins(bins: &[u64], qmax: i32) -> Vec<(i32, u64)> {
    bins.iter().enumerate().filter(|(_, &c)| c > 0).map(|(k, &c)| (k as i32 - qmax, c)).collect()
}

enum SymSlice<'a> {
    I8(&'a [i8]),
    I16(&'a [i16]),
}

impl SymSlice<'_> {
    fn get(&self, i: usize) -> i32 {
        match self {
            SymSlice::I8(s) => s[i] as i32,
            SymSlice::I16(s) => s[i] as i32,
        }
    }
}

/// Symbols, `i8` or `i16` by the symbol width, in flat (row-major) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolVec {
    I8(Vec<i8>),
    I16(Vec<i16>),
}

impl SymbolVec {
    fn as_slice(&self) -> SymSlice<'_> {
        match self {
            SymbolVec::I8(v) => SymSlice::I8(v),
            SymbolVec::I16(v) => SymSlice::I16(v),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            SymbolVec::I8(v) => v.len(),
            SymbolVec::I16(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The symbols as little-endian bytes (1 or 2 per symbol).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            SymbolVec::I8(v) => v.iter().map(|&q| q as u8).collect(),
            SymbolVec::I16(v) => v.iter().flat_map(|q| q.to_le_bytes()).collect(),
        }
    }
}

/// Feature elements in one of the dtypes (the reconstruction of a decoded file).
#[derive(Debug, Clone, PartialEq)]
pub enum ElemVec {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl ElemVec {
    pub fn dtype(&self) -> Dtype {
        match self {
            ElemVec::F32(_) => Dtype::F32,
            ElemVec::F16(_) => Dtype::F16,
            ElemVec::Bf16(_) => Dtype::Bf16,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            ElemVec::F32(v) => v.len(),
            ElemVec::F16(v) => v.len(),
            ElemVec::Bf16(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The raw element values as little-endian bytes (`dtype().size()` per element).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            ElemVec::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ElemVec::F16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
            ElemVec::Bf16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        }
    }
    /// Elements of `dtype` from little-endian bytes (`dtype.size()` per element).
    pub fn from_le_bytes(dtype: Dtype, b: &[u8]) -> Result<Self> {
        if !b.len().is_multiple_of(dtype.size()) {
            return Err(Error::Shape(format!("{} bytes are not a whole number of {} elements", b.len(), dtype.name())));
        }
        Ok(match dtype {
            Dtype::F32 => ElemVec::F32(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            Dtype::F16 => ElemVec::F16(b.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect()),
            Dtype::Bf16 => ElemVec::Bf16(b.chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect()),
        })
    }
}

impl<E: Element> From<Vec<E>> for ElemVec {
    /// The vector, tagged with its dtype (no copy).
    fn from(v: Vec<E>) -> Self {
        let any: Box<dyn std::any::Any> = Box::new(v);
        let any = match any.downcast::<Vec<f32>>() {
            Ok(v) => return ElemVec::F32(*v),
            Err(a) => a,
        };
        let any = match any.downcast::<Vec<f16>>() {
            Ok(v) => return ElemVec::F16(*v),
            Err(a) => a,
        };
        match any.downcast::<Vec<bf16>>() {
            Ok(v) => ElemVec::Bf16(*v),
            Err(_) => unreachable!("Element is implemented for f32, f16 and bf16 only"),
        }
    }
}

/// A zeroed vector of `n` values, or an error naming `what` when it cannot be allocated (a
/// corrupt header must not abort the process).
fn zeroed<T: Clone + Default>(n: usize, what: &str) -> Result<Vec<T>> {
    filled(n, T::default(), what)
}

/// A vector of `n` zero values of a type for which all-zero bytes are a zero (the dtypes and the
/// symbol types), allocated fallibly *and lazily*: fresh pages come zeroed from the allocator, so
/// the first write of the decoder is the only pass over the memory.
fn calloc<T: Zeroed>(n: usize, what: &str) -> Result<Vec<T>> {
    if n == 0 || std::mem::size_of::<T>() == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n).map_err(|e| err(format!("cannot allocate the {what} ({n} values): {e}")))?;
    // SAFETY: `layout` has a non-zero size (checked above).
    let p = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    if p.is_null() {
        return Err(err(format!("cannot allocate the {what} ({n} values)")));
    }
    // SAFETY: `p` was allocated by the global allocator with the layout of `n` values of `T`
    // (so capacity `n`), and all-zero bytes are a valid `T` (the `Zeroed` contract), so all `n`
    // values are initialised.
    Ok(unsafe { Vec::from_raw_parts(p, n, n) })
}

/// Types whose all-zero bit pattern is a valid value (zero).
///
/// # Safety
/// Implement only for such types.
pub(crate) unsafe trait Zeroed: Copy {}
// SAFETY: all-zero bytes are 0 for the integers and +0.0 for the IEEE types.
unsafe impl Zeroed for i8 {}
// SAFETY: as above.
unsafe impl Zeroed for i16 {}
// SAFETY: as above.
unsafe impl Zeroed for u8 {}
// SAFETY: as above.
unsafe impl Zeroed for u16 {}
// SAFETY: as above.
unsafe impl Zeroed for f32 {}
// SAFETY: as above.
unsafe impl Zeroed for f16 {}
// SAFETY: as above.
unsafe impl Zeroed for bf16 {}

/// A vector of `n` copies of `v`, allocated fallibly (see [`zeroed`]).
fn filled<T: Clone>(n: usize, v: T, what: &str) -> Result<Vec<T>> {
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|e| err(format!("cannot allocate the {what} ({n} values): {e}")))?;
    out.resize(n, v);
    Ok(out)
}

// ---------- header ----------

fn dtype_code(d: Dtype) -> u8 {
    match d {
        Dtype::F32 => 0,
        Dtype::F16 => 1,
        Dtype::Bf16 => 2,
    }
}

fn layout_code(l: Layout) -> u8 {
    match l {
        Layout::Nchw => 0,
        Layout::Ntc => 1,
    }
}

fn ndim(l: Layout) -> usize {
    match l {
        Layout::Nchw => 4,
        Layout::Ntc => 3,
    }
}

fn qmax(bits: Bits) -> i32 {
    bits.qmax() as i32
}

/// Step scope codes of the version 2 header (byte 10).
const SCOPE_TENSOR: u8 = 0;
const SCOPE_TOKEN: u8 = 1;
const SCOPE_CHANNEL: u8 = 2;
/// Step coding codes of the version 2 header (byte 11).
const CODING_F32: u8 = 0;
const CODING_LOG_GRID: u8 = 1;
const CODING_F16: u8 = 2;

/// The step fields of a version 2 header and the step section, ready to write.
struct StepPlan {
    mode: StepMode,
    exp: i32,
    section: Vec<u8>,
    /// Per-token steps (tensor and token modes) or per-channel steps (channel modes).
    values: Vec<f32>,
}

fn mode_codes(mode: StepMode) -> (u8, u8, u8) {
    let coding = |c: StepCoding| match c {
        StepCoding::LogGrid { per_octave } => (CODING_LOG_GRID, per_octave as u8),
        StepCoding::F16 => (CODING_F16, 0),
    };
    match mode {
        StepMode::Tensor => (SCOPE_TENSOR, CODING_F32, 0),
        StepMode::Token(c) => {
            let (k, g) = coding(c);
            (SCOPE_TOKEN, k, g)
        }
        StepMode::Channel(c) => {
            let (k, g) = coding(c);
            (SCOPE_CHANNEL, k, g)
        }
    }
}

/// f16 steps: their bits, little-endian.
fn f16_section(bits: &[u16]) -> Vec<u8> {
    bits.iter().flat_map(|h| h.to_le_bytes()).collect()
}

/// Per-token grid indices: the differences `k_t − k_{t−1}` (`k_{−1} = 0`) entropy-coded with
/// their own table: `[A_k u32][L_k u32][table][payload]`.
fn token_grid_section(k: &[i64]) -> Result<Vec<u8>> {
    let off = DIFF_MAX as i64;
    let mut diffs = Vec::with_capacity(k.len());
    let mut hist = vec![0u64; 2 * DIFF_MAX as usize + 1];
    let mut prev = 0i64;
    for &kt in k {
        let d = kt - prev;
        prev = kt;
        if d.abs() > off {
            return Err(Error::Arg(format!("grid index difference {d} out of range")));
        }
        hist[(d + off) as usize] += 1;
        diffs.push((d + off) as usize);
    }
    let pairs: Vec<(i32, u64)> = hist.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| (i as i32 - DIFF_MAX, c)).collect();
    let table = Table::from_counts(&pairs)?;
    let mut index = vec![0u32; hist.len()];
    for (i, &s) in table.symbols.iter().enumerate() {
        index[(s + DIFF_MAX) as usize] = i as u32;
    }
    let payload = entropy::encode(&table, diffs.len(), |i| index[diffs[i]] as usize)?;
    let tb = table.to_bytes();
    let mut out = Vec::with_capacity(8 + tb.len() + payload.len());
    out.extend_from_slice(&(table.len() as u32).to_le_bytes());
    out.extend_from_slice(&(tb.len() as u32).to_le_bytes());
    out.extend_from_slice(&tb);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Per-channel grid indices: the differences `k_c − k_{c−1}` (`k_{−1} = 0`) as zigzag varints.
fn channel_grid_section(k: &[i64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(k.len() * 2);
    let mut prev = 0i64;
    for &kc in k {
        // |k| ≤ 2^15 for normal f32 steps (see DIFF_MAX), so the difference fits an i32.
        entropy::put_varint(&mut out, entropy::zigzag((kc - prev) as i32));
        prev = kc;
    }
    out
}

fn plan_steps(grid: &TokenGrid, spec: StepSpec, coding: StepCoding) -> Result<StepPlan> {
    let expect = |got: usize, want: usize, what: &str| {
        if got == want {
            Ok(())
        } else {
            Err(Error::Shape(format!("steps must be a 1-D tensor of {want} values (one per {what}), got [{got}]")))
        }
    };
    let (values, channel) = match spec {
        StepSpec::Tensor(s) => {
            if !steps::usable(s) {
                return Err(Error::Arg(format!("tensor step Δ = {s:e} must be a finite, normal f32 > 0 with a finite reciprocal")));
            }
            let values = filled(grid.tokens(), s, "steps")?;
            return Ok(StepPlan { mode: StepMode::Tensor, exp: 0, section: s.to_bits().to_le_bytes().to_vec(), values });
        }
        StepSpec::Token(v) => {
            expect(v.len(), grid.tokens(), "token")?;
            (v, false)
        }
        StepSpec::Channel(v) => {
            expect(v.len(), channel::channels(grid), "channel")?;
            (v, true)
        }
    };
    let mode = if channel { StepMode::Channel(coding) } else { StepMode::Token(coding) };
    match coding {
        StepCoding::LogGrid { per_octave } => {
            let g = steps::round_to_grid(values, per_octave)?;
            let section = if channel { channel_grid_section(&g.k) } else { token_grid_section(&g.k)? };
            Ok(StepPlan { mode, exp: g.e, section, values: g.rounded })
        }
        StepCoding::F16 => {
            let (e, bits, rounded) = round_steps(values)?;
            Ok(StepPlan { mode, exp: e, section: f16_section(&bits), values: rounded })
        }
    }
}

/// Writes the fixed header (versions 2 and 3: offsets 0 to 51) and the dimensions.
#[allow(clippy::too_many_arguments)]
fn write_header(
    b: &mut Vec<u8>,
    version: u16,
    dtype: Dtype,
    grid: &TokenGrid,
    bits: Bits,
    plan: &StepPlan,
    alphabet: usize,
    table_len: usize,
) {
    let nd = ndim(grid.shape.layout);
    let (scope, coding_code, per_octave) = mode_codes(plan.mode);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&version.to_le_bytes());
    b.push(dtype_code(dtype));
    b.push(layout_code(grid.shape.layout));
    b.push(bits.bits() as u8);
    b.push(nd as u8);
    b.push(scope);
    b.push(coding_code);
    b.push(per_octave);
    b.push(0); // reserved
    b.extend_from_slice(&(plan.exp as i16).to_le_bytes());
    b.extend_from_slice(&(grid.patch as u32).to_le_bytes());
    b.extend_from_slice(&(alphabet as u32).to_le_bytes());
    b.extend_from_slice(&(grid.tokens() as u64).to_le_bytes());
    b.extend_from_slice(&(grid.numel() as u64).to_le_bytes());
    b.extend_from_slice(&(plan.section.len() as u64).to_le_bytes());
    b.extend_from_slice(&(table_len as u32).to_le_bytes());
    debug_assert_eq!(b.len(), FIXED_HEADER);
    for &d in &grid.shape.sizes() {
        b.extend_from_slice(&(d as u64).to_le_bytes());
    }
}

/// A version 2 file: one constriction ANS stream of every symbol, the whole file under one CRC.
fn write_v2(
    dtype: Dtype,
    grid: &TokenGrid,
    bits: Bits,
    plan: &StepPlan,
    pairs: &[(i32, u64)],
    sym: &SymSlice,
) -> Result<(Vec<u8>, Table, Sections)> {
    let n = grid.numel();
    let table = Table::from_counts(pairs)?;
    let table_bytes = table.to_bytes();
    // Model index of each symbol: its rank in the alphabet.
    let off = 32768i32;
    let mut index = vec![0u32; 65536];
    for (i, &s) in table.symbols.iter().enumerate() {
        index[(s + off) as usize] = i as u32;
    }
    let payload = entropy::encode(&table, n, |i| index[(sym.get(i) + off) as usize] as usize)?;
    let nd = ndim(grid.shape.layout);
    let mut b = Vec::with_capacity(FIXED_HEADER + 8 * nd + table_bytes.len() + plan.section.len() + 12 + payload.len());
    write_header(&mut b, 2, dtype, grid, bits, plan, table.len(), table_bytes.len());
    b.extend_from_slice(&table_bytes);
    b.extend_from_slice(&plan.section);
    b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    b.extend_from_slice(&payload);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let sections =
        Sections { header: FIXED_HEADER + 8 * nd, table: table_bytes.len(), steps: plan.section.len(), payload: 8 + payload.len(), crc: 4 };
    debug_assert_eq!(sections.total(), b.len());
    Ok((b, table, sections))
}

/// Encodes `x` (flat, row-major, the layout and sizes of `grid`) with per-token steps `steps`
/// (one per token, e.g. from [`crate::steps`]). When every step is the same f32 (bit for bit),
/// the file stores that one step exactly (the `tensor` mode); otherwise the steps are rounded to
/// the log grid of [`DEFAULT_PER_OCTAVE`] points per octave (the `token` mode,
/// [`round_token_steps`]). `x` is quantized with the stored steps. [`encode_with`] chooses.
pub fn encode<E: Element>(x: &[E], grid: &TokenGrid, steps: &[f32], bits: Bits) -> Result<Encoded<E>> {
    let uniform = steps.len() == grid.tokens() && steps.first().is_some_and(|s0| steps.iter().all(|s| s.to_bits() == s0.to_bits()));
    let spec = if uniform { StepSpec::Tensor(steps[0]) } else { StepSpec::Token(steps) };
    encode_with(x, grid, spec, bits, StepCoding::default())
}

/// Encodes `x` (flat, row-major, the layout and sizes of `grid`) with the steps of `spec`: the
/// steps are first rounded to what the file stores (`coding` for per-token and per-channel steps;
/// a tensor step is stored exactly and ignores `coding`), then `x` is quantized with the stored
/// steps (per token: [`cpu::quantize`]; per channel: the same contract §4 arithmetic).
pub fn encode_with<E: Element>(x: &[E], grid: &TokenGrid, spec: StepSpec, bits: Bits, coding: StepCoding) -> Result<Encoded<E>> {
    encode_with_format(x, grid, spec, bits, coding, &Format::default())
}

/// [`encode_with`] into a chosen container ([`Format`]: version 2, or version 3 with a chunk size
/// and a lane count). Whatever the container, the symbols and the reconstruction are the same.
pub fn encode_with_format<E: Element>(
    x: &[E],
    grid: &TokenGrid,
    spec: StepSpec,
    bits: Bits,
    coding: StepCoding,
    format: &Format,
) -> Result<Encoded<E>> {
    format.check()?;
    if x.len() != grid.numel() {
        return Err(Error::Shape(format!("x has {} elements, the grid {}", x.len(), grid.numel())));
    }
    let plan = plan_steps(grid, spec, coding)?;
    let n = grid.numel();
    let (sym_vec, recon, clamped, total_sse) = if let StepMode::Channel(_) = plan.mode {
        let q = channel::quantize_channels(x, grid, &plan.values, bits)?;
        let sym = match bits {
            Bits::B8 => SymbolVec::I8(q.symbols.iter().map(|&s| s as i8).collect()),
            Bits::B16 => SymbolVec::I16(q.symbols.iter().map(|&s| s as i16).collect()),
        };
        (sym, q.recon, q.clamped, q.total_sse)
    } else {
        let mut recon = filled(n, E::from_f32(0.0), "reconstruction")?;
        let mut token_sse = zeroed::<f32>(grid.tokens(), "token errors")?;
        let mut sym_vec = match bits {
            Bits::B8 => SymbolVec::I8(zeroed(n, "symbols")?),
            Bits::B16 => SymbolVec::I16(zeroed(n, "symbols")?),
        };
        let symbols = match &mut sym_vec {
            SymbolVec::I8(v) => Symbols::I8(v),
            SymbolVec::I16(v) => Symbols::I16(v),
        };
        let out = QuantOut { symbols, recon: Some(&mut recon), token_sse: Some(&mut token_sse), histogram: false };
        let q = cpu::quantize::<E>(x, grid, &plan.values, bits, out)?;
        (sym_vec, recon, q.clamped, q.total_sse)
    };
    let sym = sym_vec.as_slice();
    let (_, pairs) = histogram(&sym);
    let (b, table, precision, sections) = if format.version == 2 {
        let (b, table, sections) = write_v2(E::DTYPE, grid, bits, &plan, &pairs, &sym)?;
        (b, table, entropy::PRECISION, sections)
    } else {
        let q = qmax(bits);
        v3::write(E::DTYPE, grid, bits, &plan, &pairs, format, |start, idx, _| match &sym {
            SymSlice::I8(s) => idx.iter_mut().zip(&s[start..]).for_each(|(o, &v)| *o = (v as i32 + q) as u16),
            SymSlice::I16(s) => idx.iter_mut().zip(&s[start..]).for_each(|(o, &v)| *o = (v as i32 + q) as u16),
        })?
    };
    let counts: Vec<u64> = pairs.iter().map(|p| p.1).collect();
    let rate = RateReport::new(b.len(), grid, &table, precision, &counts, &sections);
    let (steps, channel_steps) = match plan.mode {
        StepMode::Channel(_) => (Vec::new(), plan.values),
        _ => (plan.values, Vec::new()),
    };
    Ok(Encoded {
        bytes: b,
        step_mode: plan.mode,
        steps,
        channel_steps,
        symbols: sym_vec,
        recon,
        clamped,
        mse: total_sse / n as f64,
        sections,
        rate,
    })
}

/// Why a file's sections could not be located: it ends too early (`short`), or a field is
/// impossible.
struct LocateError {
    short: bool,
    msg: String,
}

type Located<T> = std::result::Result<T, LocateError>;

fn bad(msg: String) -> LocateError {
    LocateError { short: false, msg }
}

/// A little-endian reader over a byte slice that names the section it is in when bytes run out.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Located<&'a [u8]> {
        match self.pos.checked_add(n).filter(|&end| end <= self.b.len()) {
            Some(end) => {
                let s = &self.b[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(LocateError {
                short: true,
                msg: format!("the {what} ({n} bytes at offset {}) runs past the end of the {}-byte file", self.pos, self.b.len()),
            }),
        }
    }
    fn u8(&mut self, what: &str) -> Located<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Located<u16> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, what: &str) -> Located<u32> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &str) -> Located<u64> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn len(&mut self, what: &str) -> Located<usize> {
        let v = self.u64(what)?;
        usize::try_from(v).map_err(|_| LocateError { short: true, msg: format!("a {what} of {v} bytes cannot fit in the file") })
    }
}

/// The raw fields of a file, located but not yet interpreted.
struct Raw<'a> {
    version: u16,
    dtype: u8,
    layout: Layout,
    bits: u8,
    /// Version 2's step scope, coding, grid size and reserved byte (version 1: token, f16, 0, 0).
    scope: u8,
    coding: u8,
    per_octave: u8,
    reserved: u8,
    step_exp: i16,
    patch: u32,
    tokens: u64,
    elements: u64,
    alphabet: u32,
    dims: Vec<u64>,
    table: &'a [u8],
    steps: &'a [u8],
    /// Versions 1 and 2: the ANS stream. Version 3: the chunks, back to back.
    payload: &'a [u8],
    sections: Sections,
    /// Version 3's coder fields, index and header checksum.
    v3: Option<RawV3<'a>>,
}

/// Version 3's fields after the dimensions, its chunk index and its header checksum.
struct RawV3<'a> {
    precision: u8,
    lanes: u8,
    reserved: u16,
    chunk: u32,
    count: u32,
    index: &'a [u8],
    /// The stored header CRC and the number of bytes it covers.
    header_crc: u32,
    header_len: usize,
}

fn layout_of(r: &mut Reader) -> Located<Layout> {
    match r.u8("layout")? {
        0 => Ok(Layout::Nchw),
        1 => Ok(Layout::Ntc),
        l => Err(bad(format!("header: unknown layout code {l}"))),
    }
}

fn ndim_of(r: &mut Reader, layout: Layout) -> Located<u8> {
    let nd = r.u8("ndim")?;
    if nd as usize != ndim(layout) {
        return Err(bad(format!("header: {nd} dimensions for layout {layout:?} (needs {})", ndim(layout))));
    }
    Ok(nd)
}

/// Locates every section, checking each length against the bytes that are there. `body` is the
/// file without its CRC (or, to diagnose a damaged file, the whole file).
fn locate(body: &[u8], version: u16) -> Located<Raw<'_>> {
    let mut r = Reader { b: body, pos: 6 };
    let dtype = r.u8("dtype")?;
    let layout = layout_of(&mut r)?;
    let bits = r.u8("bits")?;
    let nd = ndim_of(&mut r, layout)?;
    let (scope, coding, per_octave, reserved, step_exp, patch, alphabet, tokens, elements, steps_len, table_len);
    if version == 1 {
        (scope, coding, per_octave, reserved) = (SCOPE_TOKEN, CODING_F16, 0, 0);
        step_exp = r.u16("step exponent")? as i16;
        patch = r.u32("patch")?;
        tokens = r.u64("token count")?;
        elements = r.u64("element count")?;
        alphabet = r.u32("alphabet size")?;
        table_len = r.u32("table length")? as usize;
        steps_len = usize::try_from(tokens)
            .ok()
            .and_then(|t| t.checked_mul(2))
            .ok_or_else(|| LocateError { short: true, msg: format!("the steps of {tokens} tokens cannot fit in the file") })?;
    } else {
        scope = r.u8("step scope")?;
        coding = r.u8("step coding")?;
        per_octave = r.u8("grid size")?;
        reserved = r.u8("reserved byte")?;
        step_exp = r.u16("step exponent")? as i16;
        patch = r.u32("patch")?;
        alphabet = r.u32("alphabet size")?;
        tokens = r.u64("token count")?;
        elements = r.u64("element count")?;
        steps_len = r.len("step section")?;
        table_len = r.u32("table length")? as usize;
    }
    let dims = (0..nd).map(|_| r.u64("dimensions")).collect::<Located<Vec<_>>>()?;
    let coder = if version == 3 {
        Some((r.u8("precision")?, r.u8("lane count")?, r.u16("reserved field")?, r.u32("chunk size")?, r.u32("chunk count")?))
    } else {
        None
    };
    let header = r.pos;
    let table = r.take(table_len, "frequency table")?;
    let steps = r.take(steps_len, "steps")?;
    let (payload, sections, v3);
    if let Some((precision, lanes, reserved, chunk, count)) = coder {
        let index = r.take(8 * count as usize, "chunk index")?;
        let header_len = r.pos;
        let header_crc = r.u32("header checksum")?;
        payload = &body[r.pos..];
        sections = Sections { header, table: table_len, steps: steps_len, payload: index.len() + payload.len(), crc: 4 };
        v3 = Some(RawV3 { precision, lanes, reserved, chunk, count, index, header_crc, header_len });
    } else {
        let payload_len = r.len("payload")?;
        payload = r.take(payload_len, "payload")?;
        if r.pos != body.len() {
            return Err(bad(format!("{} bytes after the payload", body.len() - r.pos)));
        }
        sections = Sections { header, table: table_len, steps: steps_len, payload: 8 + payload_len, crc: 4 };
        v3 = None;
    }
    Ok(Raw {
        version,
        dtype,
        layout,
        bits,
        scope,
        coding,
        per_octave,
        reserved,
        step_exp,
        patch,
        tokens,
        elements,
        alphabet,
        dims,
        table,
        steps,
        payload,
        sections,
        v3,
    })
}

/// Checks magic, version and checksum, and locates the sections. The error of a file whose CRC
/// does not match says "checksum mismatch" and, when its header describes more bytes than there
/// are, that it looks truncated.
fn open(bytes: &[u8]) -> Result<Raw<'_>> {
    if bytes.len() < 4 || bytes[..4] != MAGIC {
        return Err(err(format!("not an .fjq file (bad magic {:02x?}, expected {:02x?})", &bytes[..bytes.len().min(4)], MAGIC)));
    }
    if bytes.len() < 6 {
        return Err(err(format!("truncated: {} bytes, the smallest .fjq file has {MIN_FILE}", bytes.len())));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if !(1..=VERSION).contains(&version) {
        return Err(err(format!("unsupported .fjq version {version} (this build reads versions 1 to {VERSION})")));
    }
    let min = [MIN_FILE, MIN_FILE_V2, MIN_FILE_V3][version as usize - 1];
    if bytes.len() < min {
        return Err(err(format!("truncated: {} bytes, the smallest version {version} .fjq file has {min}", bytes.len())));
    }
    if version == 3 {
        // The header checksum sits after the index, so the header is located first (every
        // length against the file's size, nothing allocated), then checked; each chunk has its own.
        let raw = locate(bytes, version).map_err(|e| {
            let what = if e.short { "truncated file or inconsistent header" } else { "damaged or inconsistent header" };
            err(format!("{what}: {}", e.msg))
        })?;
        let v = raw.v3.as_ref().unwrap_or_else(|| unreachable!("version 3 has its coder fields"));
        let computed = crc32fast::hash(&bytes[..v.header_len]);
        if computed != v.header_crc {
            return Err(err(format!(
                "checksum mismatch in the header (stored {:08x}, computed {computed:08x}): the file is corrupted",
                v.header_crc
            )));
        }
        return Ok(raw);
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        // Diagnose from the (untrusted) header: does it describe more bytes than there are?
        let hint = match locate(bytes, version) {
            Err(LocateError { short: true, msg }) => format!("; the file looks truncated: {msg}"),
            _ => String::new(),
        };
        return Err(err(format!(
            "checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is corrupted or truncated{hint}"
        )));
    }
    // The checksum holds, so a structure that does not fit is a file written wrong, not damaged.
    locate(body, version).map_err(|e| err(format!("inconsistent header: {}", e.msg)))
}

/// Interprets located fields: every header value is checked against the others.
fn validate(raw: &Raw) -> Result<(Dtype, Layout, Bits, TokenGrid, i32, StepMode)> {
    let dtype = match raw.dtype {
        0 => Dtype::F32,
        1 => Dtype::F16,
        2 => Dtype::Bf16,
        d => return Err(err(format!("header: unknown dtype code {d}"))),
    };
    let layout = raw.layout;
    let bits = match raw.bits {
        8 => Bits::B8,
        16 => Bits::B16,
        b => return Err(err(format!("header: {b}-bit symbols (8 or 16)"))),
    };
    let mut numel = 1u64;
    for &d in &raw.dims {
        numel = numel
            .checked_mul(d)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| err(format!("header: dimensions {:?} overflow", raw.dims)))?;
    }
    if numel != raw.elements {
        return Err(err(format!("header: dimensions {:?} hold {numel} elements, the header says {}", raw.dims, raw.elements)));
    }
    let sizes: Vec<i64> = raw.dims.iter().map(|&d| d as i64).collect();
    let grid = TokenGrid::new(FeatureShape::from_sizes(layout, &sizes)?, raw.patch as usize).map_err(|e| err(format!("header: {e}")))?;
    if grid.tokens() as u64 != raw.tokens {
        return Err(err(format!(
            "header: shape {sizes:?} with patch {} has {} tokens, the header says {}",
            raw.patch,
            grid.tokens(),
            raw.tokens
        )));
    }
    let e = raw.step_exp as i32;
    if !(-200..=200).contains(&e) {
        return Err(err(format!("header: step exponent {e}")));
    }
    if raw.reserved != 0 {
        return Err(err(format!("header: reserved byte 13 is {} (must be 0)", raw.reserved)));
    }
    let g = raw.per_octave;
    let coding = match (raw.coding, g) {
        (CODING_F32, 0) => None,
        (CODING_LOG_GRID, g) if g.is_power_of_two() && g as u32 <= MAX_PER_OCTAVE => Some(StepCoding::LogGrid { per_octave: g as u32 }),
        (CODING_F16, 0) => Some(StepCoding::F16),
        (c, g) => return Err(err(format!("header: step coding {c} with grid size {g} (0 f32, 1 log grid of 2^0..2^6 points, 2 f16)"))),
    };
    let mode = match (raw.scope, coding) {
        (SCOPE_TENSOR, None) if e == 0 => StepMode::Tensor,
        (SCOPE_TOKEN, Some(c)) => StepMode::Token(c),
        (SCOPE_CHANNEL, Some(c)) => StepMode::Channel(c),
        (s, _) => {
            return Err(err(format!(
                "header: step scope {s} with step coding {} and exponent {e} (tensor steps are f32 with exponent 0; token and channel steps a log grid or f16)",
                raw.coding
            )))
        }
    };
    Ok((dtype, layout, bits, grid, e, mode))
}

/// Reads `n` zigzag varints of grid index differences from exactly `b`.
fn channel_indices(b: &[u8], n: usize) -> Result<Vec<i64>> {
    // Each varint takes at least one byte: check before allocating.
    if b.len() < n {
        return Err(err(format!("step section of {} bytes cannot hold {n} channel steps", b.len())));
    }
    let mut k = Vec::with_capacity(n);
    let (mut pos, mut prev) = (0usize, 0i64);
    for _ in 0..n {
        let d = entropy::unzigzag(entropy::get_varint(b, &mut pos, "step section")?) as i64;
        prev += d;
        k.push(prev);
    }
    if pos != b.len() {
        return Err(err(format!("step section: {} trailing bytes after {n} channel steps", b.len() - pos)));
    }
    Ok(k)
}

/// Decodes `n` per-token grid index differences from `[A_k u32][L_k u32][table][payload]`.
fn token_indices(b: &[u8], n: usize) -> Result<Vec<i64>> {
    if b.len() < 8 {
        return Err(err(format!("step section of {} bytes is shorter than its 8-byte header", b.len())));
    }
    let a = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let l = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    if l > b.len() - 8 {
        return Err(err(format!("step section: a table of {l} bytes in {} bytes", b.len() - 8)));
    }
    let table = Table::from_bytes(&b[8..8 + l], a, DIFF_MAX)?;
    let mut d = zeroed::<i32>(n, "step indices")?;
    entropy::decode(&table, &b[8 + l..], n, |i, s| d[i] = table.symbols[s])?;
    let mut k = zeroed::<i64>(n, "step indices")?;
    let mut prev = 0i64;
    for (kt, &dt) in k.iter_mut().zip(&d) {
        prev += dt as i64;
        *kt = prev;
    }
    Ok(k)
}

/// The stored steps: `n` values for the scope (1, `T` or `C`).
fn decode_steps(raw: &Raw, mode: StepMode, e: i32, n: usize) -> Result<Vec<f32>> {
    let b = raw.steps;
    let coding = match mode {
        StepMode::Tensor => {
            if b.len() != 4 {
                return Err(err(format!("step section of {} bytes (the tensor step takes 4)", b.len())));
            }
            let s = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if !steps::usable(s) {
                return Err(err(format!("tensor step {s:e} is not a finite, normal positive step")));
            }
            return Ok(vec![s]);
        }
        StepMode::Token(c) | StepMode::Channel(c) => c,
    };
    match coding {
        StepCoding::F16 => {
            if Some(b.len()) != n.checked_mul(2) {
                return Err(err(format!("step section of {} bytes for {n} f16 steps", b.len())));
            }
            let mut out = zeroed::<f32>(n, "steps")?;
            for (t, (c, o)) in b.chunks_exact(2).zip(out.iter_mut()).enumerate() {
                let h = u16::from_le_bytes([c[0], c[1]]);
                *o = step_value(h, e)
                    .ok_or_else(|| err(format!("step {t} (f16 bits {h:04x}, exponent {e}) is not a finite positive step")))?;
            }
            Ok(out)
        }
        StepCoding::LogGrid { per_octave } => {
            let table = log_grid_table(per_octave).map_err(|x| err(format!("header: {x}")))?;
            let k = match mode {
                StepMode::Channel(_) => channel_indices(b, n)?,
                _ => token_indices(b, n)?,
            };
            let mut out = zeroed::<f32>(n, "steps")?;
            for (t, (&kt, o)) in k.iter().zip(out.iter_mut()).enumerate() {
                *o = grid_step(kt, e, &table)
                    .ok_or_else(|| err(format!("step {t} (grid index {kt}, exponent {e}, {per_octave}/octave) is not a usable step")))?;
            }
            Ok(out)
        }
    }
}

/// The stored steps of a validated file: `(per-token steps, per-channel steps)` (the tensor mode
/// repeats its step for every token; the channel modes have no per-token steps).
fn stored_steps(raw: &Raw, step_mode: StepMode, e: i32, grid: &TokenGrid) -> Result<(Vec<f32>, Vec<f32>)> {
    Ok(match step_mode {
        StepMode::Tensor => (filled(grid.tokens(), decode_steps(raw, step_mode, e, 1)?[0], "steps")?, Vec::new()),
        StepMode::Token(_) => (decode_steps(raw, step_mode, e, grid.tokens())?, Vec::new()),
        StepMode::Channel(_) => (Vec::new(), decode_steps(raw, step_mode, e, channel::channels(grid))?),
    })
}

/// Which step each element uses, for the chunked coder.
fn step_map<'a>(step_mode: StepMode, steps: &'a [f32], channel_steps: &'a [f32]) -> rows::StepMap<'a> {
    match step_mode {
        StepMode::Tensor => rows::StepMap::Tensor(steps[0]),
        StepMode::Token(_) => rows::StepMap::Token(steps),
        StepMode::Channel(_) => rows::StepMap::Channel(channel_steps),
    }
}

/// What a file's header says: all a caller needs to allocate the output before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The format version (1, 2 or 3).
    pub version: u16,
    pub dtype: Dtype,
    /// The feature's layout and dimensions.
    pub shape: FeatureShape,
    pub patch: usize,
    pub bits: Bits,
    pub step_mode: StepMode,
    /// Bytes of the file the header describes.
    pub file_bytes: usize,
}

impl Header {
    /// The token grid of the feature.
    pub fn grid(&self) -> TokenGrid {
        TokenGrid { shape: self.shape, patch: self.patch }
    }
}

/// Reads and checks a file's header without decoding its steps or its symbols: the magic, the
/// version, the header's checksum (version 3; versions 1 and 2 have one checksum over the whole
/// file, which is checked), and every header field against the others and the file's size.
/// Errors are [`decode`]'s (`Error::Io`, message `fjq: ...` naming the field); a file whose
/// header passes can still fail in [`decode`] (a damaged step section or chunk).
pub fn header(bytes: &[u8]) -> Result<Header> {
    let raw = open(bytes)?;
    let (dtype, _, bits, grid, _, step_mode) = validate(&raw)?;
    if let Some(v) = &raw.v3 {
        v3::table(&raw, v, bits)?;
    }
    Ok(Header { version: raw.version, dtype, shape: grid.shape, patch: grid.patch, bits, step_mode, file_bytes: bytes.len() })
}

/// How [`encode_bound`] is told the steps will be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepLayout {
    /// [`encode`]'s choice: the `tensor` mode when every step is the same f32, else per token.
    Auto,
    Tensor,
    Token,
    Channel,
}

/// Bytes of a varint of any `u32` (the most [`entropy::put_varint`] writes).
const VARINT_MAX: usize = 5;

/// The most bytes a file of `grid`'s feature can take, whatever its values, with the steps laid
/// out as `layout` and coded as `coding` in the container `format`: a buffer of this size always
/// holds what [`v3::encode_file`] (or [`encode_with_format`]) writes.
///
/// Every section is bounded from what the encoder can write: the fixed header and dimensions;
/// the symbol table (at most `min(2Q + 1, numel, 2^16)` entries of two varints); the steps
/// (tensor: 4 bytes; f16: 2 per step; channel grid: one varint per channel; token grid: an
/// 8-byte header, a table of at most `min(T, 2^16 + 1)` entries and constriction's ANS stream,
/// at most 24 bits per token plus rounding, its 64-bit state and a word of slack); version 3's chunk index
/// and header checksum (`8·M + 4`) and chunks (the rANS coder emits at most one 16-bit word per
/// symbol, plus 4 bytes of state per lane); version 2's one stream (at most 24 bits per symbol
/// plus state) with its length and checksum.
pub fn encode_bound(grid: &TokenGrid, bits: Bits, layout: StepLayout, coding: StepCoding, format: &Format) -> Result<usize> {
    format.check()?;
    let (n, t) = (grid.numel(), grid.tokens());
    // constriction's ANS at 24-bit precision: at most 24 bits per symbol, plus under 0.006 bits
    // per symbol of rounding (its state stays at or above 2^32), its 64-bit state and a word.
    let ans24 = |symbols: usize| 3 * symbols + symbols.div_ceil(64) + 12;
    let alphabet = (2 * bits.qmax() as usize + 1).min(n).min(1 << 16);
    let header = FIXED_HEADER + 8 * ndim(grid.shape.layout) + if format.version == 3 { CODER_FIELDS_V3 } else { 0 };
    let table = 2 * VARINT_MAX * alphabet;
    let token_grid = 8 + 2 * VARINT_MAX * t.min(2 * DIFF_MAX as usize + 1) + ans24(t);
    let per_token = match coding {
        StepCoding::LogGrid { .. } => token_grid,
        StepCoding::F16 => 2 * t,
    };
    let channels = channel::channels(grid);
    let steps = match layout {
        StepLayout::Tensor => 4,
        StepLayout::Token => per_token,
        StepLayout::Auto => per_token.max(4),
        StepLayout::Channel => match coding {
            StepCoding::LogGrid { .. } => VARINT_MAX * channels,
            StepCoding::F16 => 2 * channels,
        },
    };
    let payload = if format.version == 3 {
        let chunk = format.chunk_symbols.min(n.max(1));
        let m = n.div_ceil(chunk);
        8 * m + 4 + 4 * format.lanes * m + 2 * n
    } else {
        8 + ans24(n) + 4
    };
    Ok(header + table + steps + payload)
}

/// Decodes a `.fjq` file (version 1, 2 or 3): the reconstruction, the symbols and the rate.
/// [`decode_recon`] is the faster form that returns the reconstruction only.
pub fn decode(bytes: &[u8]) -> Result<Decoded> {
    let raw = open(bytes)?;
    let (dtype, layout, bits, grid, e, step_mode) = validate(&raw)?;
    let (table, precision) = match &raw.v3 {
        Some(v) => v3::table(&raw, v, bits)?,
        None => (Table::from_bytes(raw.table, raw.alphabet as usize, qmax(bits))?, entropy::PRECISION),
    };
    let (steps, channel_steps) = stored_steps(&raw, step_mode, e, &grid)?;
    let map = step_map(step_mode, &steps, &channel_steps);
    let (sym_vec, recon, counts) = if let Some(v) = &raw.v3 {
        let (sym_vec, recon, counts) = v3::decode_chunks(&raw, v, dtype, bits, &grid, map, &table, precision, true)?;
        (sym_vec.unwrap_or_else(|| unreachable!("symbols were asked for")), recon, counts)
    } else {
        let n = grid.numel();
        let sym_vec = match bits {
            Bits::B8 => {
                let mut s = zeroed::<i8>(n, "symbols")?;
                entropy::decode(&table, raw.payload, n, |i, k| s[i] = table.symbols[k] as i8)?;
                SymbolVec::I8(s)
            }
            Bits::B16 => {
                let mut s = zeroed::<i16>(n, "symbols")?;
                entropy::decode(&table, raw.payload, n, |i, k| s[i] = table.symbols[k] as i16)?;
                SymbolVec::I16(s)
            }
        };
        let per = match step_mode {
            StepMode::Channel(_) => PerStep::Channel(&channel_steps),
            _ => PerStep::Token(&steps),
        };
        let sym = sym_vec.as_slice();
        let recon = match dtype {
            Dtype::F32 => ElemVec::F32(dequantized(&sym, &grid, per)?),
            Dtype::F16 => ElemVec::F16(dequantized(&sym, &grid, per)?),
            Dtype::Bf16 => ElemVec::Bf16(dequantized(&sym, &grid, per)?),
        };
        let (_, pairs) = histogram(&sym);
        let counts: Vec<u64> = pairs.iter().map(|p| p.1).collect();
        (sym_vec, recon, counts)
    };
    let rate = RateReport::new(bytes.len(), &grid, &table, precision, &counts, &raw.sections);
    let info =
        FileInfo { version: raw.version, dtype, layout, shape: grid.shape, patch: grid.patch, bits, step_mode, steps, channel_steps };
    Ok(Decoded { info, recon, symbols: sym_vec, sections: raw.sections, rate })
}

/// Which steps an element's reconstruction uses.
#[derive(Clone, Copy)]
enum PerStep<'a> {
    Token(&'a [f32]),
    Channel(&'a [f32]),
}

fn dequantized<E: Element>(sym: &SymSlice, grid: &TokenGrid, steps: PerStep) -> Result<Vec<E>> {
    let mut r = filled(grid.numel(), E::from_f32(0.0), "reconstruction")?;
    dequantize::<E>(sym, grid, steps, &mut r);
    Ok(r)
}

/// `x̂ = f32(q) · Δ` (one f32 multiply, as contract §4), narrowed row by row to `E`.
fn dequantize<E: Element>(sym: &SymSlice, grid: &TokenGrid, steps: PerStep, out: &mut [E]) {
    let [_, a, b, c] = grid.shape.dims;
    // Rows of contiguous elements that share a step pattern: NCHW rows of W, NTC rows of C.
    let row = match grid.shape.layout {
        Layout::Nchw => c,
        Layout::Ntc => b,
    };
    if row == 0 {
        return;
    }
    let mut buf = vec![0.0f32; row];
    for (r, chunk) in out.chunks_mut(row).enumerate() {
        let base = r * row;
        match (grid.shape.layout, steps) {
            (Layout::Nchw, PerStep::Token(steps)) => {
                let (p, h, w) = (grid.patch, b, c);
                let (s, y) = (r / (a * h), r % h);
                let t0 = (s * (h / p) + y / p) * (w / p);
                for (x, v) in buf.iter_mut().enumerate() {
                    *v = sym.get(base + x) as f32 * steps[t0 + x / p];
                }
            }
            (Layout::Ntc, PerStep::Token(steps)) => {
                let st = steps[r];
                for (x, v) in buf.iter_mut().enumerate() {
                    *v = sym.get(base + x) as f32 * st;
                }
            }
            (Layout::Nchw, PerStep::Channel(steps)) => {
                let st = steps[(r / b) % a];
                for (x, v) in buf.iter_mut().enumerate() {
                    *v = sym.get(base + x) as f32 * st;
                }
            }
            (Layout::Ntc, PerStep::Channel(steps)) => {
                for (x, v) in buf.iter_mut().enumerate() {
                    *v = sym.get(base + x) as f32 * steps[x];
                }
            }
        }
        E::narrow(&buf, chunk);
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_v3;
