//! The feature codec on plain slices: token-wise quantized features in a self-contained `.fjq`
//! file (`docs/fjq-format.md`). Behind the `codec` feature; needs no libtorch.
//!
//! [`encode`] rounds the per-token steps to what the file stores (an f16 mantissa under one common
//! power-of-two scale, 16 bits per token as SPEC §4's rate estimate assumes), quantizes with the
//! **rounded** steps ([`cpu::quantize`], SPEC §4), and entropy-codes the symbols ([`entropy`]:
//! constriction's ANS with a static categorical model whose quantized frequency table is in the
//! file). [`decode`] rebuilds `x̂ = f32(q)·Δ_t`, narrowed to the original dtype, bit-identical to
//! the encoder's reconstruction.
//!
//! Every malformed file is an [`Error::Io`] whose message starts with `fjq:`: bad magic, an
//! unsupported version, a checksum mismatch (any corrupted byte after the version, or a truncated
//! file), or a header that contradicts itself. Lengths are checked against the file size before
//! anything is allocated from them; the decoded vectors are allocated fallibly.

pub mod entropy;

use half::{bf16, f16};

use crate::cpu::{self, QuantOut, Symbols};
use crate::element::{Dtype, Element};
use crate::error::{Error, Result};
use crate::geom::{Bits, FeatureShape, Layout, TokenGrid};
use crate::rate;

pub use entropy::Table;

/// The first four bytes of every `.fjq` file.
pub const MAGIC: [u8; 4] = *b"FJQ\0";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Bytes of the fixed header before the dimensions.
pub const FIXED_HEADER: usize = 40;
/// The smallest possible file: fixed header, 3 dims, an empty table, no steps, the payload length,
/// the CRC.
pub const MIN_FILE: usize = FIXED_HEADER + 3 * 8 + 8 + 4;
/// Steps are stored as `f16(Δ / 2^e)`; `e` puts the largest step in `[2^14, 2^15)`.
const TOP_EXP: i32 = 14;

fn err(what: impl std::fmt::Display) -> Error {
    Error::Io(format!("fjq: {what}"))
}

/// Byte counts of the sections of a file (they sum to the file size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sections {
    /// Fixed header and dimensions.
    pub header: usize,
    /// Frequency table.
    pub table: usize,
    /// Steps, 2 bytes per token.
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

/// Rate of a coded feature: the real one (file size) and SPEC §4's estimate.
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
    /// SPEC §4: `(H·T·K + 16·T) / (T·K)` ([`crate::rate::bits_per_element`]).
    pub estimate_bits_per_element: f64,
    /// `bits_per_element / estimate − 1`.
    pub gap: f64,
    /// Ideal code length of the symbols under the stored (quantized) model, bits per element.
    pub model_bits: f64,
}

impl RateReport {
    fn new(file_bytes: usize, grid: &TokenGrid, table: &Table, counts: &[u64]) -> Self {
        let (elements, tokens) = (grid.numel(), grid.tokens());
        let h = rate::entropy_bits(counts);
        let est = rate::bits_per_element(h, tokens, grid.k(), rate::SIDE_BITS_PER_TOKEN);
        let bpe = 8.0 * file_bytes as f64 / elements as f64;
        RateReport {
            file_bytes,
            elements,
            tokens,
            alphabet: table.len(),
            entropy_bits: h,
            bits_per_element: bpe,
            estimate_bits_per_element: est,
            gap: bpe / est - 1.0,
            model_bits: table.code_length_bits(counts) / elements as f64,
        }
    }
}

/// The result of [`encode`].
#[derive(Debug)]
pub struct Encoded<E> {
    /// The `.fjq` file.
    pub bytes: Vec<u8>,
    /// The steps the file holds (`T` values): the given steps rounded to f16 precision.
    pub steps: Vec<f32>,
    /// Symbols (flat, `i8` / `i16` by the width).
    pub symbols: SymbolVec,
    /// Reconstruction with the stored steps (flat, dtype of `x`): what [`decode`] returns, bit
    /// for bit.
    pub recon: Vec<E>,
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
    /// The feature's shape (its [`FeatureShape::sizes`] are the array's sizes).
    pub shape: FeatureShape,
    pub patch: usize,
    pub bits: Bits,
    /// Reconstruction `x̂ = f32(q)·Δ_t` in the original dtype (flat, row-major).
    pub recon: ElemVec,
    /// The stored steps as f32 (`T` values).
    pub steps: Vec<f32>,
    /// Symbols (flat, `i8` / `i16` by the width).
    pub symbols: SymbolVec,
    pub sections: Sections,
    pub rate: RateReport,
}

impl Decoded {
    /// The token grid of the feature.
    pub fn grid(&self) -> TokenGrid {
        TokenGrid { shape: self.shape, patch: self.patch }
    }
}

// ---------- steps ----------

fn pow2(e: i32) -> f64 {
    // e stays well inside f64's normal exponent range (checked by the callers).
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// A stored step: `f32(f16 · 2^e)`, or `None` if that is not a usable step (finite, normal, > 0,
/// with a finite reciprocal). The encoder and the decoder both go through this function.
pub fn step_value(h: u16, e: i32) -> Option<f32> {
    let v = f16::from_bits(h);
    if !v.is_finite() || v <= f16::ZERO || !(-200..=200).contains(&e) {
        return None;
    }
    let s = (v.to_f64() * pow2(e)) as f32;
    (s.is_normal() && (1.0 / s).is_finite()).then_some(s)
}

/// Rounds steps to what a file stores: returns the exponent `e`, the f16 bits and the rounded
/// steps as f32.
pub fn round_steps(steps: &[f32]) -> Result<(i32, Vec<u16>, Vec<f32>)> {
    if steps.is_empty() {
        return Err(Error::Empty("steps"));
    }
    if let Some(t) = steps.iter().position(|&d| !(d.is_finite() && d > 0.0)) {
        return Err(Error::Arg(format!("step Δ[{t}] = {} must be finite and > 0", steps[t])));
    }
    let max = steps.iter().cloned().fold(0.0f32, f32::max) as f64;
    let e = ((max.to_bits() >> 52) & 0x7ff) as i32 - 1023 - TOP_EXP;
    let scale = pow2(-e);
    let mut bits = Vec::with_capacity(steps.len());
    let mut rounded = Vec::with_capacity(steps.len());
    for (t, &d) in steps.iter().enumerate() {
        let h = f16::from_f64(d as f64 * scale).to_bits();
        let s = step_value(h, e).ok_or_else(|| {
            Error::Arg(format!("step Δ[{t}] = {d:e} cannot be stored: it is too small next to the largest step {max:e} (ratio over 2^38) or has no usable reciprocal"))
        })?;
        bits.push(h);
        rounded.push(s);
    }
    Ok((e, bits, rounded))
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

/// Encodes `x` (flat, row-major, the layout and sizes of `grid`) with per-token steps `steps`
/// (one per token, e.g. from [`crate::steps`]): the steps are first rounded to what the file
/// stores, then `x` is quantized with the rounded steps ([`cpu::quantize`]).
pub fn encode<E: Element>(x: &[E], grid: &TokenGrid, steps: &[f32], bits: Bits) -> Result<Encoded<E>> {
    if x.len() != grid.numel() {
        return Err(Error::Shape(format!("x has {} elements, the grid {}", x.len(), grid.numel())));
    }
    if steps.len() != grid.tokens() {
        return Err(Error::Shape(format!("steps must be a 1-D tensor of {} values (one per token), got [{}]", grid.tokens(), steps.len())));
    }
    let layout = grid.shape.layout;
    let patch = grid.patch;
    let (e, step_bits, rounded) = round_steps(steps)?;
    let n = grid.numel();
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
    let q = cpu::quantize::<E>(
        x,
        grid,
        &rounded,
        bits,
        QuantOut { symbols, recon: Some(&mut recon), token_sse: Some(&mut token_sse), histogram: false },
    )?;
    let sym = sym_vec.as_slice();
    let (_, pairs) = histogram(&sym);
    let table = Table::from_counts(&pairs)?;
    let table_bytes = table.to_bytes();
    // Model index of each symbol: its rank in the alphabet.
    let off = 32768i32;
    let mut index = vec![0u32; 65536];
    for (i, &s) in table.symbols.iter().enumerate() {
        index[(s + off) as usize] = i as u32;
    }
    let payload = entropy::encode(&table, n, |i| index[(sym.get(i) + off) as usize] as usize)?;

    let shape = grid.shape;
    let nd = ndim(layout);
    let mut b = Vec::with_capacity(FIXED_HEADER + 8 * nd + table_bytes.len() + 2 * grid.tokens() + 12 + payload.len());
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.push(dtype_code(E::DTYPE));
    b.push(layout_code(layout));
    b.push(bits.bits() as u8);
    b.push(nd as u8);
    b.extend_from_slice(&(e as i16).to_le_bytes());
    b.extend_from_slice(&(patch as u32).to_le_bytes());
    b.extend_from_slice(&(grid.tokens() as u64).to_le_bytes());
    b.extend_from_slice(&(n as u64).to_le_bytes());
    b.extend_from_slice(&(table.len() as u32).to_le_bytes());
    b.extend_from_slice(&(table_bytes.len() as u32).to_le_bytes());
    debug_assert_eq!(b.len(), FIXED_HEADER);
    for &d in &shape.sizes() {
        b.extend_from_slice(&(d as u64).to_le_bytes());
    }
    b.extend_from_slice(&table_bytes);
    for h in &step_bits {
        b.extend_from_slice(&h.to_le_bytes());
    }
    b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    b.extend_from_slice(&payload);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());

    let sections =
        Sections { header: FIXED_HEADER + 8 * nd, table: table_bytes.len(), steps: 2 * grid.tokens(), payload: 8 + payload.len(), crc: 4 };
    debug_assert_eq!(sections.total(), b.len());
    let counts: Vec<u64> = pairs.iter().map(|p| p.1).collect();
    let rate = RateReport::new(b.len(), grid, &table, &counts);
    Ok(Encoded { bytes: b, steps: rounded, symbols: sym_vec, recon, clamped: q.clamped, mse: q.total_sse / n as f64, sections, rate })
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
}

/// The raw fields of a file, located but not yet interpreted.
struct Raw<'a> {
    dtype: u8,
    layout: Layout,
    bits: u8,
    step_exp: i16,
    patch: u32,
    tokens: u64,
    elements: u64,
    alphabet: u32,
    dims: Vec<u64>,
    table: &'a [u8],
    steps: &'a [u8],
    payload: &'a [u8],
    sections: Sections,
}

/// Locates every section, checking each length against the bytes that are there. `body` is the
/// file without its CRC.
fn locate(body: &[u8]) -> Located<Raw<'_>> {
    let mut r = Reader { b: body, pos: 6 };
    let dtype = r.u8("dtype")?;
    let layout = match r.u8("layout")? {
        0 => Layout::Nchw,
        1 => Layout::Ntc,
        l => return Err(bad(format!("header: unknown layout code {l}"))),
    };
    let bits = r.u8("bits")?;
    let nd = r.u8("ndim")?;
    if nd as usize != ndim(layout) {
        return Err(bad(format!("header: {nd} dimensions for layout {layout:?} (needs {})", ndim(layout))));
    }
    let step_exp = r.u16("step exponent")? as i16;
    let patch = r.u32("patch")?;
    let tokens = r.u64("token count")?;
    let elements = r.u64("element count")?;
    let alphabet = r.u32("alphabet size")?;
    let table_len = r.u32("table length")? as usize;
    let dims = (0..nd).map(|_| r.u64("dimensions")).collect::<Located<Vec<_>>>()?;
    let header = r.pos;
    let table = r.take(table_len, "frequency table")?;
    let steps_len = usize::try_from(tokens)
        .ok()
        .and_then(|t| t.checked_mul(2))
        .ok_or_else(|| LocateError { short: true, msg: format!("the steps of {tokens} tokens cannot fit in the file") })?;
    let steps = r.take(steps_len, "steps")?;
    let payload_len = r.u64("payload length")?;
    let payload_len = usize::try_from(payload_len)
        .map_err(|_| LocateError { short: true, msg: format!("a payload of {payload_len} bytes cannot fit in the file") })?;
    let payload = r.take(payload_len, "payload")?;
    if r.pos != body.len() {
        return Err(bad(format!("{} bytes after the payload", body.len() - r.pos)));
    }
    let sections = Sections { header, table: table_len, steps: steps_len, payload: 8 + payload_len, crc: 4 };
    Ok(Raw { dtype, layout, bits, step_exp, patch, tokens, elements, alphabet, dims, table, steps, payload, sections })
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
    if version != VERSION {
        return Err(err(format!("unsupported .fjq version {version} (this build reads version {VERSION})")));
    }
    if bytes.len() < MIN_FILE {
        return Err(err(format!("truncated: {} bytes, the smallest .fjq file has {MIN_FILE}", bytes.len())));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        // Diagnose from the (untrusted) header: does it describe more bytes than there are?
        let hint = match locate(bytes) {
            Err(LocateError { short: true, msg }) => format!("; the file looks truncated: {msg}"),
            _ => String::new(),
        };
        return Err(err(format!(
            "checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is corrupted or truncated{hint}"
        )));
    }
    // The checksum holds, so a structure that does not fit is a file written wrong, not damaged.
    locate(body).map_err(|e| err(format!("inconsistent header: {}", e.msg)))
}

/// Interprets located fields: every header value is checked against the others.
fn validate(raw: &Raw) -> Result<(Dtype, Layout, Bits, TokenGrid, i32)> {
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
    Ok((dtype, layout, bits, grid, e))
}

/// Decodes a `.fjq` file.
pub fn decode(bytes: &[u8]) -> Result<Decoded> {
    let raw = open(bytes)?;
    let (dtype, layout, bits, grid, e) = validate(&raw)?;
    let table = Table::from_bytes(raw.table, raw.alphabet as usize, qmax(bits))?;

    let mut steps = Vec::new();
    steps.try_reserve_exact(grid.tokens()).map_err(|e| err(format!("cannot allocate the steps: {e}")))?;
    for (t, c) in raw.steps.chunks_exact(2).enumerate() {
        let h = u16::from_le_bytes([c[0], c[1]]);
        let s = step_value(h, e).ok_or_else(|| err(format!("step {t} (f16 bits {h:04x}, exponent {e}) is not a finite positive step")))?;
        steps.push(s);
    }

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
    let sym = sym_vec.as_slice();
    let recon = match dtype {
        Dtype::F32 => ElemVec::F32(dequantized(&sym, &grid, &steps)?),
        Dtype::F16 => ElemVec::F16(dequantized(&sym, &grid, &steps)?),
        Dtype::Bf16 => ElemVec::Bf16(dequantized(&sym, &grid, &steps)?),
    };

    let (_, pairs) = histogram(&sym);
    let counts: Vec<u64> = pairs.iter().map(|p| p.1).collect();
    let rate = RateReport::new(bytes.len(), &grid, &table, &counts);
    Ok(Decoded { dtype, layout, shape: grid.shape, patch: grid.patch, bits, recon, steps, symbols: sym_vec, sections: raw.sections, rate })
}

fn dequantized<E: Element>(sym: &SymSlice, grid: &TokenGrid, steps: &[f32]) -> Result<Vec<E>> {
    let mut r = filled(grid.numel(), E::from_f32(0.0), "reconstruction")?;
    dequantize::<E>(sym, grid, steps, &mut r);
    Ok(r)
}

/// `x̂ = f32(q) · Δ_t` (one f32 multiply, as SPEC §4), narrowed row by row to `E`.
fn dequantize<E: Element>(sym: &SymSlice, grid: &TokenGrid, steps: &[f32], out: &mut [E]) {
    let [n, a, b, c] = grid.shape.dims;
    // Rows of contiguous elements that share a step pattern: NCHW rows of W, NTC rows of C.
    let row = match grid.shape.layout {
        Layout::Nchw => c,
        Layout::Ntc => b,
    };
    let mut buf = vec![0.0f32; row];
    for (r, chunk) in out.chunks_mut(row).enumerate() {
        let base = r * row;
        match grid.shape.layout {
            Layout::Nchw => {
                let (p, h, w) = (grid.patch, b, c);
                let (s, y) = (r / (a * h), r % h);
                let t0 = (s * (h / p) + y / p) * (w / p);
                for (x, v) in buf.iter_mut().enumerate() {
                    *v = sym.get(base + x) as f32 * steps[t0 + x / p];
                }
            }
            Layout::Ntc => {
                let st = steps[r];
                for (x, v) in buf.iter_mut().enumerate() {
                    *v = sym.get(base + x) as f32 * st;
                }
            }
        }
        E::narrow(&buf, chunk);
    }
    let _ = n;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic feature with varied magnitudes and exact zeros.
    fn feature(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let v = (s as f32 / u32::MAX as f32 - 0.5) * (1.0 + (i % 7) as f32);
                if i % 5 == 0 {
                    0.0
                } else {
                    v
                }
            })
            .collect()
    }

    fn round_trip<E: Element>(grid: TokenGrid, bits: Bits, seed: u32) {
        let mut x = vec![E::from_f32(0.0); grid.numel()];
        E::narrow(&feature(grid.numel(), seed), &mut x);
        let steps: Vec<f32> = (0..grid.tokens()).map(|t| 0.01 + 0.037 * (t % 5) as f32).collect();
        let enc = encode(&x, &grid, &steps, bits).unwrap();
        assert_eq!(enc.sections.total(), enc.bytes.len());
        let (_, _, rounded) = round_steps(&steps).unwrap();
        assert_eq!(enc.steps, rounded);
        // The encoder's outputs are cpu::quantize's with the rounded steps.
        let mut recon = vec![E::from_f32(0.0); grid.numel()];
        let mut sym = vec![0i16; grid.numel()];
        let mut sym8 = vec![0i8; grid.numel()];
        let symbols = match bits {
            Bits::B8 => Symbols::I8(&mut sym8),
            Bits::B16 => Symbols::I16(&mut sym),
        };
        let q = cpu::quantize(&x, &grid, &rounded, bits, QuantOut { symbols, recon: Some(&mut recon), ..Default::default() }).unwrap();
        assert_eq!(enc.recon, recon);
        assert_eq!(enc.clamped, q.clamped);
        match (&enc.symbols, bits) {
            (SymbolVec::I8(s), Bits::B8) => assert_eq!(s, &sym8),
            (SymbolVec::I16(s), Bits::B16) => assert_eq!(s, &sym),
            _ => panic!("symbol width"),
        }
        let d = decode(&enc.bytes).unwrap();
        assert_eq!((d.dtype, d.layout, d.shape, d.patch, d.bits), (E::DTYPE, grid.shape.layout, grid.shape, grid.patch, bits));
        assert_eq!(d.recon, ElemVec::from(enc.recon.clone()));
        assert_eq!(d.symbols, enc.symbols);
        assert_eq!(d.steps, enc.steps);
        assert_eq!(d.sections, enc.sections);
        assert_eq!(d.rate, enc.rate);
        assert_eq!(ElemVec::from_le_bytes(E::DTYPE, &d.recon.to_le_bytes()).unwrap(), d.recon);
    }

    #[test]
    fn round_trips_every_dtype_layout_and_width() {
        let grids = [
            TokenGrid::new(FeatureShape::nchw(2, 3, 4, 6), 2).unwrap(),
            TokenGrid::new(FeatureShape::nchw(1, 5, 7, 3), 1).unwrap(),
            TokenGrid::new(FeatureShape::ntc(2, 7, 9), 1).unwrap(),
        ];
        for (i, g) in grids.into_iter().enumerate() {
            for bits in [Bits::B8, Bits::B16] {
                round_trip::<f32>(g, bits, i as u32);
                round_trip::<f16>(g, bits, i as u32 + 10);
                round_trip::<bf16>(g, bits, i as u32 + 20);
            }
        }
    }

    #[test]
    fn bad_inputs_and_corrupt_files_are_errors() {
        let g = TokenGrid::new(FeatureShape::ntc(1, 3, 4), 1).unwrap();
        let x = feature(12, 1);
        assert!(matches!(encode(&x, &g, &[1.0, 1.0], Bits::B8), Err(Error::Shape(_))));
        assert!(matches!(encode(&x[..11], &g, &[1.0; 3], Bits::B8), Err(Error::Shape(_))));
        assert!(matches!(encode(&x, &g, &[1.0, 0.0, 1.0], Bits::B8), Err(Error::Arg(_))));
        let enc = encode(&x, &g, &[0.1, 0.2, 0.3], Bits::B8).unwrap();
        for i in 0..enc.bytes.len() {
            let mut c = enc.bytes.clone();
            c[i] ^= 0x10;
            let e = decode(&c).unwrap_err();
            assert!(matches!(&e, Error::Io(m) if m.starts_with("fjq:")), "{i}: {e}");
        }
        assert!(decode(&enc.bytes[..enc.bytes.len() - 1]).is_err());
        assert!(decode(b"").is_err());
    }
}
