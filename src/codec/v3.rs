//! Version 3 of the container: the symbols in independent chunks of interleaved rANS behind a chunk
//! index ([`super::chunks`]), written and read chunk-parallel. [`encode_file`] and
//! [`decode_recon`] are the fast paths: quantization fused with the encoder chunk by chunk, and
//! dequantization fused with the decoder, so neither materialises a whole symbol tensor.

use half::{bf16, f16};

use super::chunks::{self, Extra, SymOut, LANE_COUNTS};
use super::rans::{self, MAX_PRECISION};
use super::rows::{self, StepMap, Steps};
use super::{
    err, histogram_pairs_from_bins, plan_steps, qmax, step_map, stored_steps, validate, write_header, Dtype, ElemVec, FileInfo, RateReport,
    Raw, RawV3, Sections, StepCoding, StepMode, StepPlan, StepSpec, SymbolVec, Table, CODER_FIELDS_V3, FIXED_HEADER,
};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::geom::{Bits, TokenGrid};

/// Symbols per chunk written by default (the last chunk may be shorter).
pub const DEFAULT_CHUNK: usize = 1 << 17;
/// Interleaved rANS lanes written by default (fewer for short or low-entropy chunks:
/// `chunks::lanes_for`, docs/fjq-format.md).
pub const DEFAULT_LANES: usize = 32;
/// The largest chunk a file may declare (`2^24` symbols).
pub const MAX_CHUNK: usize = 1 << 24;
/// How much longer (relative) than with the 16-bit model the symbols may code with a coarser one.
const PRECISION_SLACK: f64 = 0.0005;

/// The container to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// 2 or 3.
    pub version: u16,
    /// Version 3: symbols per chunk, `1..=MAX_CHUNK`.
    pub chunk_symbols: usize,
    /// Version 3: the most interleaved lanes (1, 2, 4, 8, 16 or 32); short or low-entropy chunks
    /// use fewer.
    pub lanes: usize,
}

impl Default for Format {
    fn default() -> Self {
        Format { version: 3, chunk_symbols: DEFAULT_CHUNK, lanes: DEFAULT_LANES }
    }
}

impl Format {
    /// Version 2 (one constriction ANS stream, one CRC for the file).
    pub fn v2() -> Self {
        Format { version: 2, ..Format::default() }
    }

    pub(crate) fn check(&self) -> Result<()> {
        if !(2..=3).contains(&self.version) {
            return Err(Error::Arg(format!("cannot write .fjq version {} (2 or 3)", self.version)));
        }
        if !(1..=MAX_CHUNK).contains(&self.chunk_symbols) {
            return Err(Error::Arg(format!("chunk of {} symbols (1..={MAX_CHUNK})", self.chunk_symbols)));
        }
        if !LANE_COUNTS.contains(&self.lanes) {
            return Err(Error::Arg(format!("{} lanes (one of {LANE_COUNTS:?})", self.lanes)));
        }
        Ok(())
    }
}

/// The result of [`encode_file`]: the file and what it cost, without the symbols or the
/// reconstruction.
#[derive(Debug)]
pub struct EncodedFile {
    pub bytes: Vec<u8>,
    pub step_mode: StepMode,
    /// As [`super::Encoded::steps`].
    pub steps: Vec<f32>,
    /// As [`super::Encoded::channel_steps`].
    pub channel_steps: Vec<f32>,
    pub clamped: u64,
    /// MSE per element of the reconstruction against `x` (f32 sums per segment of a chunk, added
    /// in f64: equal to [`super::Encoded::mse`] up to the order of the additions).
    pub mse: f64,
    pub sections: Sections,
    pub rate: RateReport,
}

/// The result of [`decode_recon`].
#[derive(Debug)]
pub struct Reconstruction {
    /// What the file is (as [`decode_into`] tells it).
    pub info: FileInfo,
    /// `x̂ = f32(q)·Δ` in the original dtype (flat, row-major), as [`super::Decoded::recon`].
    pub recon: ElemVec,
}

/// Writes a version 3 file for the symbol histogram `pairs` (`(q, count)`, ascending), the symbol
/// indices coming from `fill(start, idx, scratch)`. Returns the file, its table and precision,
/// and its sections.
pub(crate) fn write(
    dtype: Dtype,
    grid: &TokenGrid,
    bits: Bits,
    plan: &StepPlan,
    pairs: &[(i32, u64)],
    format: &Format,
    fill: impl Fn(usize, &mut [u16], &mut rows::Scratch) + Sync,
) -> Result<(Vec<u8>, Table, u32, Sections)> {
    let n = grid.numel();
    let counts: Vec<u64> = pairs.iter().map(|p| p.1).collect();
    let symbols: Vec<i32> = pairs.iter().map(|p| p.0).collect();
    let (precision, freqs) = if pairs.len() == 1 {
        (0, vec![1])
    } else {
        rans::choose_precision(&counts, PRECISION_SLACK)
            .ok_or_else(|| Error::Arg(format!("cannot model {} symbols in {MAX_PRECISION} bits", pairs.len())))?
    };
    let table = Table { symbols, freqs };
    let table_bytes = table.to_bytes();
    let chunk = format.chunk_symbols.min(n.max(1));
    let total = counts.iter().sum::<u64>().max(1) as f64;
    let bits_per_symbol: f64 = counts.iter().filter(|&&c| c > 0).map(|&c| c as f64 / total * (total / c as f64).log2()).sum();
    let lanes = chunks::lanes_for(n, chunk, format.lanes, bits_per_symbol);
    let coded = if table.len() == 1 {
        chunks::Coded { chunks: Vec::new() }
    } else {
        let enc = chunks::encoder(&table.symbols, &table.freqs, qmax(bits), precision);
        chunks::encode(&enc, n, chunk, lanes, fill)?
    };
    let m = coded.chunks.len();
    let header = FIXED_HEADER + 8 * super::ndim(grid.shape.layout) + CODER_FIELDS_V3;
    let mut b = Vec::with_capacity(header + table_bytes.len() + plan.section.len() + 8 * m + 4 + coded.payload_len());
    write_header(&mut b, 3, dtype, grid, bits, plan, table.len(), table_bytes.len());
    b.push(precision as u8);
    b.push(lanes as u8);
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&(chunk as u32).to_le_bytes());
    b.extend_from_slice(&(m as u32).to_le_bytes());
    debug_assert_eq!(b.len(), header);
    b.extend_from_slice(&table_bytes);
    b.extend_from_slice(&plan.section);
    coded.write(&mut b);
    let sections = Sections { header, table: table_bytes.len(), steps: plan.section.len(), payload: 8 * m + coded.payload_len(), crc: 4 };
    debug_assert_eq!(sections.total(), b.len());
    Ok((b, table, precision, sections))
}

/// Encodes `x` like [`super::encode_with_format`] into the same file, bit for bit, but fused:
/// pass 1 quantizes chunk by chunk (in parallel) into the histogram and a store of the symbol
/// indices (one byte per element for 8-bit symbols, two for 16-bit ones), pass 2 codes the stored
/// indices chunk by chunk; no reconstruction array is made. A version 2 `format` goes through
/// [`super::encode_with_format`].
pub fn encode_file<E: Element>(
    x: &[E],
    grid: &TokenGrid,
    spec: StepSpec,
    bits: Bits,
    coding: StepCoding,
    format: &Format,
) -> Result<EncodedFile> {
    format.check()?;
    if format.version == 2 {
        let e = super::encode_with_format(x, grid, spec, bits, coding, format)?;
        return Ok(EncodedFile {
            bytes: e.bytes,
            step_mode: e.step_mode,
            steps: e.steps,
            channel_steps: e.channel_steps,
            clamped: e.clamped,
            mse: e.mse,
            sections: e.sections,
            rate: e.rate,
        });
    }
    if x.len() != grid.numel() {
        return Err(Error::Shape(format!("x has {} elements, the grid {}", x.len(), grid.numel())));
    }
    let plan = plan_steps(grid, spec, coding)?;
    crate::cpu::check_steps_values(&plan.values)?;
    let map = match plan.mode {
        StepMode::Tensor => StepMap::Tensor(plan.values[0]),
        StepMode::Token(_) => StepMap::Token(&plan.values),
        StepMode::Channel(_) => StepMap::Channel(&plan.values),
    };
    let steps = Steps::new(*grid, map);
    let n = grid.numel();
    let q = bits.qmax();
    let chunk = format.chunk_symbols.min(n.max(1));
    let mut store = chunks::IndexStore::take(n, q)?;
    let (bins, tot) = chunks::histogram(x, &steps, q, chunk, &mut store);
    if let Some(i) = tot.first_bad {
        store.give_back();
        return Err(Error::NonFinite { index: i, value: x[i].to_f32() });
    }
    let pairs = histogram_pairs_from_bins(&bins, q as i32);
    let written = write(E::DTYPE, grid, bits, &plan, &pairs, format, |start, idx, _| store.fill(start, idx));
    store.give_back();
    let (b, table, precision, sections) = written?;
    let counts: Vec<u64> = pairs.iter().map(|p| p.1).collect();
    let rate = RateReport::new(b.len(), grid, &table, precision, &counts, &sections);
    let (steps, channel_steps) = match plan.mode {
        StepMode::Channel(_) => (Vec::new(), plan.values),
        _ => (plan.values, Vec::new()),
    };
    Ok(EncodedFile { bytes: b, step_mode: plan.mode, steps, channel_steps, clamped: tot.clamped, mse: tot.sse / n as f64, sections, rate })
}

/// The table of a version 3 file and its precision, after the coder fields are checked.
pub(crate) fn table(raw: &Raw, v: &RawV3, bits: Bits) -> Result<(Table, u32)> {
    let p = v.precision as u32;
    if p > MAX_PRECISION {
        return Err(err(format!("header: model precision {p} bits (at most {MAX_PRECISION})")));
    }
    if !LANE_COUNTS.contains(&(v.lanes as usize)) {
        return Err(err(format!("header: {} lanes (one of {LANE_COUNTS:?})", v.lanes)));
    }
    if v.reserved != 0 {
        return Err(err(format!("header: reserved coder field is {} (must be 0)", v.reserved)));
    }
    if v.chunk == 0 || v.chunk as usize > MAX_CHUNK {
        return Err(err(format!("header: chunk of {} symbols (1..={MAX_CHUNK})", v.chunk)));
    }
    let table = Table::from_bytes_with_precision(raw.table, raw.alphabet as usize, qmax(bits), p)?;
    let n = raw.elements as usize; // checked against the dimensions by `validate`
    let want = if table.len() == 1 { 0 } else { n.div_ceil(v.chunk as usize) };
    if v.count as usize != want {
        return Err(err(format!(
            "header: {} chunks, but {n} symbols in chunks of {} with an alphabet of {} make {want}",
            v.count,
            v.chunk,
            table.len()
        )));
    }
    Ok((table, p))
}

/// Decodes the chunks of a validated version 3 file (or its one symbol) into `out` (`T·K`
/// elements), and `extra`'s symbols and histogram.
#[allow(clippy::too_many_arguments)]
fn decode_into_slice<E: Element>(
    raw: &Raw,
    v: &RawV3,
    bits: Bits,
    grid: &TokenGrid,
    map: StepMap,
    table: &Table,
    precision: u32,
    out: &mut [E],
    extra: Extra,
) -> Result<Option<Vec<u64>>> {
    let n = grid.numel();
    let q = qmax(bits);
    let steps = Steps::new(*grid, map);
    if table.len() == 1 {
        // Every symbol is the table's one: no chunks.
        let s = table.symbols[0];
        if !raw.payload.is_empty() {
            return Err(err(format!("a one-symbol alphabet has no chunks, found {} bytes after the header", raw.payload.len())));
        }
        if let Some(sym) = extra.symbols {
            sym.fill(s as i16);
        }
        let block = vec![s as i16; n.min(1 << 16)];
        let mut sc = rows::Scratch::default();
        for (b, o) in out.chunks_mut(1 << 16).enumerate() {
            rows::dequantize(&steps, b << 16, &block[..o.len()], o, &mut sc);
        }
        return Ok(extra.histogram.then(|| {
            let mut h = vec![0u64; 2 * q as usize + 1];
            h[(s + q) as usize] = n as u64;
            h
        }));
    }
    let index = chunks::read_index(v.index, v.count as usize, raw.payload.len())?;
    let dec = chunks::decoder(&table.symbols, &table.freqs, precision);
    chunks::decode(&dec, raw.payload, &index, v.chunk as usize, v.lanes as usize, q, &steps, out, extra)
}

/// Decodes a validated version 3 file: symbols (when `symbols`), reconstruction, and the count of
/// every table symbol (when `symbols`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_chunks(
    raw: &Raw,
    v: &RawV3,
    dtype: Dtype,
    bits: Bits,
    grid: &TokenGrid,
    map: StepMap,
    table: &Table,
    precision: u32,
    symbols: bool,
) -> Result<(Option<SymbolVec>, ElemVec, Vec<u64>)> {
    let n = grid.numel();
    let q = qmax(bits);
    let mut sym_vec = match (symbols, bits) {
        (false, _) => None,
        (true, Bits::B8) => Some(SymbolVec::I8(super::calloc(n, "symbols")?)),
        (true, Bits::B16) => Some(SymbolVec::I16(super::calloc(n, "symbols")?)),
    };
    let out_syms = match sym_vec.as_mut() {
        Some(SymbolVec::I8(s)) => Some(SymOut::I8(s)),
        Some(SymbolVec::I16(s)) => Some(SymOut::I16(s)),
        None => None,
    };
    let extra = Extra { symbols: out_syms, histogram: symbols };
    macro_rules! run {
        ($t:ty, $wrap:path) => {{
            let mut r = super::calloc::<$t>(n, "reconstruction")?;
            let hist = decode_into_slice(raw, v, bits, grid, map, table, precision, &mut r, extra)?;
            ($wrap(r), hist)
        }};
    }
    let (recon, hist) = match dtype {
        Dtype::F32 => run!(f32, ElemVec::F32),
        Dtype::F16 => run!(f16, ElemVec::F16),
        Dtype::Bf16 => run!(bf16, ElemVec::Bf16),
    };
    let counts = match hist {
        Some(h) => table.symbols.iter().map(|&s| h[(s + q) as usize]).collect(),
        None => Vec::new(),
    };
    Ok((sym_vec, recon, counts))
}

/// Decodes a `.fjq` file to its reconstruction only (no symbols, no rate): for version 3 the
/// chunks are decoded in parallel straight into `x̂`. Versions 1 and 2 go through
/// [`super::decode`]. Same checks and errors as [`super::decode`].
pub fn decode_recon(bytes: &[u8]) -> Result<Reconstruction> {
    let raw = super::open(bytes)?;
    let Some(v) = raw.v3.as_ref() else {
        let super::Decoded { info, recon, .. } = super::decode(bytes)?;
        return Ok(Reconstruction { info, recon });
    };
    let (info, grid, table, precision) = open_v3(&raw, v)?;
    let map = step_map(info.step_mode, &info.steps, &info.channel_steps);
    let (_, recon, _) = decode_chunks(&raw, v, info.dtype, info.bits, &grid, map, &table, precision, false)?;
    Ok(Reconstruction { info, recon })
}

/// A version 3 file's header, table and steps, validated: its description, grid, table and
/// model precision (what every v3 decoder needs before the chunks).
fn open_v3(raw: &Raw, v: &RawV3) -> Result<(FileInfo, TokenGrid, Table, u32)> {
    let (dtype, layout, bits, grid, e, step_mode) = validate(raw)?;
    let (table, precision) = table(raw, v, bits)?;
    let (steps, channel_steps) = stored_steps(raw, step_mode, e, &grid)?;
    let info = FileInfo { version: 3, dtype, layout, shape: grid.shape, patch: grid.patch, bits, step_mode, steps, channel_steps };
    Ok((info, grid, table, precision))
}

/// Decodes a `.fjq` file's reconstruction into `out`, a buffer the caller reuses (no allocation of
/// the feature, no fresh pages to fault in). `out` must have the file's dtype (`E`) and element
/// count, else [`Error::Arg`]; a damaged file is an [`Error::Io`] as with [`super::decode`] (and
/// `out` is then unspecified). Versions 1 and 2 go through [`super::decode`] and a copy.
pub fn decode_into<E: Element>(bytes: &[u8], out: &mut [E]) -> Result<FileInfo> {
    let raw = super::open(bytes)?;
    let Some(v) = raw.v3.as_ref() else {
        let super::Decoded { info, recon, .. } = super::decode(bytes)?;
        check_out::<E>(&info, out.len())?;
        let mut f = vec![0.0f32; out.len()];
        match &recon {
            ElemVec::F32(r) => f.copy_from_slice(r),
            ElemVec::F16(r) => f.iter_mut().zip(r).for_each(|(a, b)| *a = b.to_f32()),
            ElemVec::Bf16(r) => f.iter_mut().zip(r).for_each(|(a, b)| *a = b.to_f32()),
        }
        E::narrow(&f, out); // exact: the values are of E's type already
        return Ok(info);
    };
    let (info, grid, table, precision) = open_v3(&raw, v)?;
    check_out::<E>(&info, out.len())?;
    let map = step_map(info.step_mode, &info.steps, &info.channel_steps);
    decode_into_slice(&raw, v, info.bits, &grid, map, &table, precision, out, Extra { symbols: None, histogram: false })?;
    Ok(info)
}

/// `Error::Arg` unless a caller's output of `len` elements of `E` fits the file.
fn check_out<E: Element>(info: &FileInfo, len: usize) -> Result<()> {
    let n = info.shape.numel();
    if info.dtype != E::DTYPE || n != len {
        return Err(Error::Arg(format!("the file holds {n} {:?} elements, the output {len} {:?}", info.dtype, E::DTYPE)));
    }
    Ok(())
}
