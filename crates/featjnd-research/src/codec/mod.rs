//! The feature codec: token-wise quantized features in a self-contained `.fjq` file.
//!
//! [`encode`] rounds the per-token steps to what the file stores (an f16 mantissa under one common
//! power-of-two scale, 16 bits per token as SPEC §4's rate estimate assumes), quantizes with the
//! **rounded** steps (`ops::quantize`, SPEC §4), and entropy-codes the symbols ([`entropy`]:
//! constriction's ANS with a static categorical model whose quantized frequency table is in the
//! file). [`decode`] rebuilds `x̂ = f32(q)·Δ_t`, narrowed to the original dtype, bit-identical to
//! the encoder's reconstruction. The container is documented in `docs/fjq-format.md`.
//!
//! Every malformed file is an [`Error::Io`] whose message starts with `fjq:`: bad magic, an
//! unsupported version, a checksum mismatch (any corrupted byte after the version, or a truncated
//! file), or a header that contradicts itself. Lengths are checked against the file size before
//! anything is allocated from them; the decoded tensors are allocated fallibly.

pub mod entropy;

use half::f16;
use tch::{Device, Kind, Tensor};

use crate::element::{with_elem, Dtype, Element};
use crate::error::{Error, Result};
use crate::geom::{Bits, FeatureShape, Layout, TokenGrid};
use crate::ops::{self, QuantizeOptions};
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

/// The symbols of a CPU tensor, copied out (`i8` or `i16` by `bits`).
enum SymVec {
    I8(Vec<i8>),
    I16(Vec<i16>),
}

impl SymVec {
    fn of(t: &Tensor, bits: Bits) -> Result<Self> {
        let flat = t.f_flatten(0, -1)?;
        Ok(match bits {
            Bits::B8 => SymVec::I8(Vec::<i8>::try_from(&flat)?),
            Bits::B16 => SymVec::I16(Vec::<i16>::try_from(&flat)?),
        })
    }
    fn as_slice(&self) -> SymSlice<'_> {
        match self {
            SymVec::I8(v) => SymSlice::I8(v),
            SymVec::I16(v) => SymSlice::I16(v),
        }
    }
}

/// A zeroed vector of `n` values, or an error naming `what` when it cannot be allocated (a
/// corrupt header must not abort the process).
fn zeroed<T: Clone + Default>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|e| err(format!("cannot allocate the {what} ({n} values): {e}")))?;
    v.resize(n, T::default());
    Ok(v)
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
    let (e, step_bits, rounded) = round_steps(&Vec::<f32>::try_from(&st.f_flatten(0, -1)?)?)?;
    let steps_t = Tensor::f_from_slice(&rounded)?;
    let opts = QuantizeOptions { bits, symbols: true, recon: true, token_sse: true, histogram: false };
    let q = ops::quantize(&x, layout, patch, &steps_t, &opts)?;
    let missing = || Error::Arg("quantize did not return a requested output".into());
    let symbols = q.symbols.ok_or_else(missing)?;
    let recon = q.recon.ok_or_else(missing)?;
    let sym_vec = SymVec::of(&symbols, bits)?;
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
    let payload = entropy::encode(&table, grid.numel(), |i| index[(sym.get(i) + off) as usize] as usize)?;

    let shape = grid.shape;
    let nd = ndim(layout);
    let mut b = Vec::with_capacity(FIXED_HEADER + 8 * nd + table_bytes.len() + 2 * grid.tokens() + 12 + payload.len());
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.push(dtype_code(dtype));
    b.push(layout_code(layout));
    b.push(bits.bits() as u8);
    b.push(nd as u8);
    b.extend_from_slice(&(e as i16).to_le_bytes());
    b.extend_from_slice(&(patch as u32).to_le_bytes());
    b.extend_from_slice(&(grid.tokens() as u64).to_le_bytes());
    b.extend_from_slice(&(grid.numel() as u64).to_le_bytes());
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
    let rate = RateReport::new(b.len(), &grid, &table, &counts);
    Ok(Encoded { bytes: b, steps: steps_t, symbols, recon, clamped: q.clamped, mse: q.total_sse / grid.numel() as f64, sections, rate })
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

    let sizes = grid.shape.sizes();
    let n = grid.numel();
    let sym_vec = match bits {
        Bits::B8 => {
            let mut s = zeroed::<i8>(n, "symbols")?;
            entropy::decode(&table, raw.payload, n, |i, k| s[i] = table.symbols[k] as i8)?;
            SymVec::I8(s)
        }
        Bits::B16 => {
            let mut s = zeroed::<i16>(n, "symbols")?;
            entropy::decode(&table, raw.payload, n, |i, k| s[i] = table.symbols[k] as i16)?;
            SymVec::I16(s)
        }
    };
    let sym = sym_vec.as_slice();
    let recon = with_elem!(dtype, E => {
        let mut r = zeroed::<E>(n, "reconstruction")?;
        dequantize::<E>(&sym, &grid, &steps, &mut r);
        // From raw bytes with an explicit kind: tch 0.24 tags `half::bf16` slices as Half.
        // SAFETY: f32, f16 and bf16 are plain data (no padding, every bit pattern valid), so the
        // vector's memory is exactly `len · size_of::<E>()` initialised bytes.
        let bytes = unsafe { std::slice::from_raw_parts(r.as_ptr() as *const u8, std::mem::size_of_val(r.as_slice())) };
        Tensor::f_from_data_size(bytes, &sizes, dtype.to_kind())?
    });
    let symbols = match &sym_vec {
        SymVec::I8(v) => Tensor::f_from_slice(v)?,
        SymVec::I16(v) => Tensor::f_from_slice(v)?,
    }
    .f_reshape(&sizes)?;

    let (_, pairs) = histogram(&sym);
    let counts: Vec<u64> = pairs.iter().map(|p| p.1).collect();
    let rate = RateReport::new(bytes.len(), &grid, &table, &counts);
    Ok(Decoded { dtype, layout, patch: grid.patch, bits, recon, steps: Tensor::from_slice(&steps), symbols, sections: raw.sections, rate })
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
