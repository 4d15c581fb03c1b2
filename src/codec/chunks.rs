//! Version 3's payload: the symbols cut into independent chunks, each coded with interleaved rANS
//! ([`super::rans`]) from one static model per tensor, behind a chunk index (byte length and CRC-32
//! of every chunk). Chunks are coded and decoded in parallel (rayon), each fused with the
//! quantization or the dequantization of its elements ([`super::rows`]).
//!
//! File order after the step section: the index (`M` × `[u32 length][u32 CRC-32]`), the CRC-32
//! of every byte before it (the header checksum), then the chunks back to back.

use rayon::prelude::*;

use super::rans::{self, with_lanes, Decoder, Encoder};
use super::rows::{self, QuantTotals, Scratch, Steps};
use crate::element::Element;
use crate::error::{Error, Result};

fn err(what: impl std::fmt::Display) -> Error {
    Error::Io(format!("fjq: {what}"))
}

/// The coded chunks of a feature.
pub(crate) struct Coded {
    /// Per chunk: its bytes and their CRC-32.
    pub chunks: Vec<(Vec<u8>, u32)>,
}

impl Coded {
    pub fn payload_len(&self) -> usize {
        self.chunks.iter().map(|c| c.0.len()).sum()
    }

    /// Appends the index, the header checksum (of `out` as it stands with the index) and the chunks.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.reserve(8 * self.chunks.len() + 4 + self.payload_len());
        for (b, crc) in &self.chunks {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(&crc.to_le_bytes());
        }
        let h = crc32fast::hash(out);
        out.extend_from_slice(&h.to_le_bytes());
        for (b, _) in &self.chunks {
            out.extend_from_slice(b);
        }
    }
}

thread_local! {
    /// Per worker thread, kept across chunks and calls: a chunk's symbol indices (encoder), the
    /// coder's words, a chunk's symbols (decoder). Fresh buffers per rayon job would cost page
    /// faults on every job.
    static BUFFERS: std::cell::RefCell<(Vec<u16>, Vec<u16>, Vec<i16>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// The encoder's model: per symbol index `q + Q` its frequency (0 for symbols that do not occur).
pub(crate) fn encoder(symbols: &[i32], freqs: &[u32], qmax: i32, precision: u32) -> Encoder {
    let mut f = vec![0u32; 2 * qmax as usize + 1];
    for (&s, &fi) in symbols.iter().zip(freqs) {
        f[(s + qmax) as usize] = fi;
    }
    Encoder::new(&f, precision)
}

/// Codes `n` symbols in chunks of `chunk`: `fill(start, idx)` writes the indices `q + Q` of the
/// symbols `start..start + idx.len()`.
pub(crate) fn encode(
    enc: &Encoder,
    n: usize,
    chunk: usize,
    lanes: usize,
    fill: impl Fn(usize, &mut [u16], &mut Scratch) + Sync,
) -> Result<Coded> {
    let m = n.div_ceil(chunk);
    let chunks = (0..m)
        .into_par_iter()
        .map_init(Scratch::default, |sc, c| {
            let start = c * chunk;
            let len = chunk.min(n - start);
            BUFFERS.with_borrow_mut(|(idx, words, _)| {
                if idx.len() < len {
                    idx.resize(len, 0);
                }
                fill(start, &mut idx[..len], sc);
                let mut out = Vec::new();
                with_lanes!(lanes, N => enc.encode::<N>(&idx[..len], words, &mut out), _ => unreachable!("lane count checked"));
                let crc = crc32fast::hash(&out);
                (out, crc)
            })
        })
        .collect();
    Ok(Coded { chunks })
}

/// Where pass 1 keeps the symbol indices `q + Q` of the whole feature for pass 2: one byte each
/// for 8-bit symbols (`2Q + 1 = 255` indices), two for 16-bit ones.
pub(crate) enum IndexStore {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

/// The last encode's store, kept for the next one (up to [`STORE_KEEP`] bytes): a fresh store's
/// pages fault in on first touch, which costs about as much as the second quantization pass the
/// store saves.
static STORE: std::sync::Mutex<Option<IndexStore>> = std::sync::Mutex::new(None);
/// The largest store kept between encodes (the indices of a 1 GiB 8-bit f32 feature).
const STORE_KEEP: usize = 256 << 20;

impl IndexStore {
    /// A store for `n` indices of the symbols of `qmax`: the kept one when it is large enough,
    /// else a fresh one (allocated fallibly).
    pub fn take(n: usize, qmax: f32) -> Result<IndexStore> {
        let kept = STORE.lock().ok().and_then(|mut s| s.take());
        Ok(match (kept, qmax <= 127.0) {
            (Some(IndexStore::U8(v)), true) if v.len() >= n => IndexStore::U8(v),
            (Some(IndexStore::U16(v)), false) if v.len() >= n => IndexStore::U16(v),
            (_, true) => IndexStore::U8(super::calloc(n, "symbol indices")?),
            (_, false) => IndexStore::U16(super::calloc(n, "symbol indices")?),
        })
    }

    fn bytes(&self) -> usize {
        match self {
            IndexStore::U8(v) => v.len(),
            IndexStore::U16(v) => 2 * v.len(),
        }
    }

    /// Keeps the store for the next encode (the larger of it and the kept one, up to
    /// [`STORE_KEEP`] bytes).
    pub fn give_back(self) {
        if self.bytes() > STORE_KEEP {
            return;
        }
        if let Ok(mut s) = STORE.lock() {
            if s.as_ref().is_none_or(|k| k.bytes() <= self.bytes()) {
                *s = Some(self);
            }
        }
    }

    /// Copies the indices `start..start + idx.len()` into `idx` (pass 2's fill).
    pub fn fill(&self, start: usize, idx: &mut [u16]) {
        let end = start + idx.len();
        match self {
            IndexStore::U8(s) => idx.iter_mut().zip(&s[start..end]).for_each(|(o, &v)| *o = v as u16),
            IndexStore::U16(s) => idx.copy_from_slice(&s[start..end]),
        }
    }
}

/// One chunk's slice of an [`IndexStore`].
enum StoreChunk<'a> {
    U8(&'a mut [u8]),
    U16(&'a mut [u16]),
}

impl StoreChunk<'_> {
    fn put(self, idx: &[u16]) {
        match self {
            // Indices of 8-bit symbols are at most 254.
            StoreChunk::U8(s) => s.iter_mut().zip(idx).for_each(|(o, &v)| *o = v as u8),
            StoreChunk::U16(s) => s.copy_from_slice(idx),
        }
    }
}

/// Pass 1 of the fused encoder: the histogram of the symbol indices (`2Q + 1` bins) and the
/// quantization's totals, chunk by chunk in parallel; the indices go to `store` (`x.len()` of
/// them), so that pass 2 codes them without quantizing again.
pub(crate) fn histogram<E: Element>(x: &[E], steps: &Steps, qmax: f32, chunk: usize, store: &mut IndexStore) -> (Vec<u64>, QuantTotals) {
    let n = x.len();
    let bins = 2 * qmax as usize + 1;
    let parts: Vec<StoreChunk> = match store {
        IndexStore::U8(s) => s[..n].chunks_mut(chunk).map(StoreChunk::U8).collect(),
        IndexStore::U16(s) => s[..n].chunks_mut(chunk).map(StoreChunk::U16).collect(),
    };
    let fold = parts
        .into_par_iter()
        .enumerate()
        .fold(
            || (vec![0u64; bins], vec![[0u32; 4]; bins], Scratch::default(), QuantTotals::default()),
            |(mut hist, mut four, mut sc, mut tot), (c, part)| {
                let start = c * chunk;
                let len = chunk.min(n - start);
                BUFFERS.with_borrow_mut(|(idx, _, _)| {
                    if idx.len() < len {
                        idx.resize(len, 0);
                    }
                    let t = rows::quantize(steps, start, &x[start..start + len], qmax, &mut idx[..len], true, &mut sc);
                    tot.clamped += t.clamped;
                    tot.sse += t.sse;
                    if tot.first_bad.is_none() {
                        tot.first_bad = t.first_bad.map(|o| start + o);
                    }
                    // Four interleaved counters per bin: neighbours rarely wait on one another. A
                    // chunk holds fewer than 2^32 symbols, so the u32 counters cannot overflow.
                    let mut quads = idx[..len].chunks_exact(4);
                    for q in &mut quads {
                        four[q[0] as usize][0] += 1;
                        four[q[1] as usize][1] += 1;
                        four[q[2] as usize][2] += 1;
                        four[q[3] as usize][3] += 1;
                    }
                    for &q in quads.remainder() {
                        four[q as usize][0] += 1;
                    }
                    for (h, f) in hist.iter_mut().zip(four.iter_mut()) {
                        *h += f.iter().map(|&v| v as u64).sum::<u64>();
                        *f = [0; 4];
                    }
                    part.put(&idx[..len]);
                });
                (hist, four, sc, tot)
            },
        )
        .map(|(h, _, _, t)| (h, t))
        .collect::<Vec<_>>();
    let mut hist = vec![0u64; bins];
    let mut tot = QuantTotals::default();
    // Folded in chunk order per task, tasks in order: the first bad element is the first overall.
    for (h, t) in fold {
        hist.iter_mut().zip(&h).for_each(|(a, b)| *a += b);
        tot.clamped += t.clamped;
        tot.sse += t.sse;
        if tot.first_bad.is_none() {
            tot.first_bad = t.first_bad;
        }
    }
    (hist, tot)
}

/// The located chunks of a file: byte ranges in the file and CRCs.
pub(crate) struct Index {
    pub ranges: Vec<(usize, usize, u32)>,
}

/// Reads the index (`m` entries at the start of `index`) against the chunk bytes `body` (which
/// must be exactly the chunks).
pub(crate) fn read_index(index: &[u8], m: usize, body: usize) -> Result<Index> {
    let mut ranges = Vec::new();
    ranges.try_reserve_exact(m).map_err(|e| err(format!("cannot allocate the chunk index ({m} chunks): {e}")))?;
    let mut off = 0usize;
    for (c, e) in index.chunks_exact(8).enumerate() {
        let len = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) as usize;
        let crc = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let end = off + len;
        if end > body {
            return Err(err(format!("truncated: chunk {c} of {m} ends {} bytes after the chunk area starts, which has {body} bytes", end)));
        }
        ranges.push((off, end, crc));
        off = end;
    }
    if off != body {
        return Err(err(format!("{} bytes after the last chunk (the index describes {off} bytes of chunks)", body - off)));
    }
    Ok(Index { ranges })
}

/// What a chunk decode writes besides the reconstruction.
pub(crate) struct Extra<'a> {
    /// The symbols (flat), when wanted.
    pub symbols: Option<SymOut<'a>>,
    /// Count a histogram of the symbols (`2Q + 1` bins).
    pub histogram: bool,
}

/// Decodes every chunk (in parallel) into `recon` (and `extra`), checking each chunk's CRC first.
/// Errors name the chunk; when several chunks are bad, the first is reported.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode<E: Element>(
    dec: &Decoder,
    chunks: &[u8],
    index: &Index,
    chunk: usize,
    lanes: usize,
    qmax: i32,
    steps: &Steps,
    recon: &mut [E],
    extra: Extra,
) -> Result<Option<Vec<u64>>> {
    let m = index.ranges.len();
    let bins = 2 * qmax as usize + 1;
    let want_hist = extra.histogram;
    let mut sym_parts: Vec<Option<SymOut>> = match extra.symbols {
        Some(s) => s.split(chunk).into_iter().map(Some).collect(),
        None => (0..m).map(|_| None).collect(),
    };
    let results: Vec<std::result::Result<Option<Vec<u64>>, String>> = recon
        .par_chunks_mut(chunk)
        .zip(sym_parts.par_iter_mut())
        .enumerate()
        .map_init(Scratch::default, |sc, (c, (out, sym))| {
            BUFFERS.with_borrow_mut(|(_, words, buf)| {
                if buf.len() < out.len() {
                    buf.resize(out.len(), 0);
                }
                let (a, b, crc) = index.ranges[c];
                let bytes = &chunks[a..b];
                let got = crc32fast::hash(bytes);
                if got != crc {
                    return Err(format!("checksum mismatch (stored {crc:08x}, computed {got:08x}): the chunk is corrupted"));
                }
                let q = &mut buf[..out.len()];
                with_lanes!(lanes, N => dec.decode::<N>(bytes, words, q)?, _ => unreachable!("lane count checked"));
                rows::dequantize(steps, c * chunk, q, out, sc);
                if let Some(s) = sym.take() {
                    s.put(q);
                }
                Ok(want_hist.then(|| {
                    let mut h = vec![0u64; bins];
                    for &v in q.iter() {
                        h[(v as i32 + qmax) as usize] += 1;
                    }
                    h
                }))
            })
        })
        .collect();
    let mut hist = want_hist.then(|| vec![0u64; bins]);
    for (c, r) in results.into_iter().enumerate() {
        match r {
            Err(e) => return Err(err(format!("chunk {c} of {m}: {e}"))),
            Ok(Some(h)) => {
                if let Some(t) = hist.as_mut() {
                    t.iter_mut().zip(&h).for_each(|(a, b)| *a += b);
                }
            }
            Ok(None) => {}
        }
    }
    Ok(hist)
}

/// The decoder's model from the file's table.
pub(crate) fn decoder(symbols: &[i32], freqs: &[u32], precision: u32) -> Decoder {
    let t: Vec<(i32, u32)> = symbols.iter().copied().zip(freqs.iter().copied()).collect();
    Decoder::new(&t, precision)
}

/// Lane count of a file: at most `lanes`, and fewer for short features so that every lane has
/// some hundreds of symbols (each lane costs 4 bytes of state per chunk).
pub(crate) fn lanes_for(n: usize, chunk: usize, lanes: usize, bits_per_symbol: f64) -> usize {
    let pow2 = |v: usize| 1usize << (usize::BITS - 1 - v.max(1).leading_zeros());
    let per = (chunk.min(n) / 512).max(1);
    // The final lane states cost 32 bits each: at most LANE_SHARE of the chunk's payload (its
    // entropy estimate), so that small or low-entropy features (one photo's feature in the
    // quantization study) stay as small as version 2's files; large ones keep every lane.
    let by_size = (chunk.min(n) as f64 * bits_per_symbol * LANE_SHARE / 32.0) as usize;
    lanes.min(pow2(per)).min(pow2(by_size)).max(1)
}

/// The share of a chunk's payload its final lane states may cost (0.2%).
const LANE_SHARE: f64 = 0.002;

pub(crate) use rans::LANE_COUNTS;

/// Where decoded symbols go (flat, by the symbol width).
pub(crate) enum SymOut<'a> {
    I8(&'a mut [i8]),
    I16(&'a mut [i16]),
}

impl<'a> SymOut<'a> {
    /// The slices of successive chunks of `chunk` symbols.
    fn split(self, chunk: usize) -> Vec<SymOut<'a>> {
        match self {
            SymOut::I8(s) => s.chunks_mut(chunk).map(SymOut::I8).collect(),
            SymOut::I16(s) => s.chunks_mut(chunk).map(SymOut::I16).collect(),
        }
    }

    /// Sets every symbol to `s` (in range of the width).
    pub(crate) fn fill(self, s: i16) {
        match self {
            SymOut::I8(v) => v.fill(s as i8),
            SymOut::I16(v) => v.fill(s),
        }
    }

    /// Stores the chunk's symbols (in range of the width: they come from the checked table).
    fn put(self, q: &[i16]) {
        match self {
            SymOut::I8(s) => s.iter_mut().zip(q).for_each(|(d, &v)| *d = v as i8),
            SymOut::I16(s) => s.copy_from_slice(q),
        }
    }
}
