//! Entropy coding of the symbol stream: one static categorical model built from the symbol
//! histogram, quantized to the coder's fixed point (`2^24` total), and `constriction`'s ANS coder
//! (32-bit words, 64-bit state). The quantized model (the frequency table) travels in the file, so
//! the decoder rebuilds exactly the encoder's model without any floating point.
//!
//! Symbols are mapped to model indices `0..A` by their rank among the symbols that occur (the
//! alphabet), so an unused symbol costs nothing. An alphabet of one symbol needs no payload at all
//! (constriction does not model degenerate distributions; every symbol is then known).

use constriction::stream::model::{DefaultContiguousCategoricalEntropyModel, IterableEntropyModel};
use constriction::stream::stack::DefaultAnsCoder;
use constriction::stream::Decode;

use crate::error::{Error, Result};

/// Fixed-point precision of the model: the frequencies of a table sum to `2^PRECISION`.
pub const PRECISION: u32 = 24;
/// `2^PRECISION`.
pub const TOTAL: u32 = 1 << PRECISION;

fn err(what: impl std::fmt::Display) -> Error {
    Error::Io(format!("fjq: {what}"))
}

/// The frequency table: the symbols that occur (strictly ascending) and their fixed-point
/// probabilities (each `≥ 1`, summing to [`TOTAL`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub symbols: Vec<i32>,
    pub freqs: Vec<u32>,
}

impl Table {
    /// The quantized model of a histogram: `(symbol, count)` pairs, symbols strictly ascending,
    /// every count `> 0`. Quantization is constriction's `from_floating_point_probabilities_fast`
    /// (every symbol keeps a nonzero probability).
    pub fn from_counts(counts: &[(i32, u64)]) -> Result<Table> {
        if counts.is_empty() {
            return Err(Error::Empty("symbol histogram"));
        }
        if counts.windows(2).any(|w| w[0].0 >= w[1].0) || counts.iter().any(|c| c.1 == 0) {
            return Err(Error::Arg("symbol histogram: symbols must ascend and counts be > 0".into()));
        }
        let symbols: Vec<i32> = counts.iter().map(|c| c.0).collect();
        if counts.len() == 1 {
            return Ok(Table { symbols, freqs: vec![TOTAL] });
        }
        let probs: Vec<f64> = counts.iter().map(|c| c.1 as f64).collect();
        let model = DefaultContiguousCategoricalEntropyModel::from_floating_point_probabilities_fast::<f64>(&probs, None)
            .map_err(|()| Error::Arg(format!("cannot quantize a model of {} symbols to {PRECISION} bits", counts.len())))?;
        let freqs: Vec<u32> = model.symbol_table().map(|(_, _, p)| p.get()).collect();
        debug_assert_eq!(freqs.len(), symbols.len());
        Ok(Table { symbols, freqs })
    }

    /// Alphabet size `A`.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// Serialised form (see `docs/fjq-format.md`): per entry two LEB128 varints, the symbol
    /// (entry 0: zigzag of the symbol; later entries: gap to the previous symbol minus one) and the
    /// frequency.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * 4);
        let mut prev = 0i32;
        for (i, (&s, &f)) in self.symbols.iter().zip(&self.freqs).enumerate() {
            let v = if i == 0 { zigzag(s) } else { (s - prev - 1) as u32 };
            put_varint(&mut out, v);
            put_varint(&mut out, f);
            prev = s;
        }
        out
    }

    /// Parses exactly `bytes` as a table of `entries` entries whose symbols lie in `-qmax..=qmax`,
    /// and checks the frequencies (each `≥ 1`, sum [`TOTAL`]).
    pub fn from_bytes(bytes: &[u8], entries: usize, qmax: i32) -> Result<Table> {
        Table::from_bytes_with_precision(bytes, entries, qmax, PRECISION)
    }

    /// As [`Table::from_bytes`] for frequencies summing to `2^precision` (version 3: `0..=16`).
    pub fn from_bytes_with_precision(bytes: &[u8], entries: usize, qmax: i32, precision: u32) -> Result<Table> {
        let total = 1u32 << precision;
        let max_entries = (2 * qmax as usize + 1).min(total as usize);
        if entries == 0 || entries > max_entries {
            return Err(err(format!("alphabet of {entries} symbols (must be 1..={max_entries})")));
        }
        // Each entry takes at least two bytes: check before allocating.
        if bytes.len() < 2 * entries {
            return Err(err(format!("frequency table of {} bytes cannot hold {entries} entries", bytes.len())));
        }
        let (mut symbols, mut freqs) = (Vec::with_capacity(entries), Vec::with_capacity(entries));
        let mut pos = 0usize;
        let mut sum = 0u64;
        for i in 0..entries {
            let v = get_varint(bytes, &mut pos, "frequency table")?;
            let s = if i == 0 { unzigzag(v) as i64 } else { symbols[i - 1] as i64 + v as i64 + 1 };
            if s < -(qmax as i64) || s > qmax as i64 {
                return Err(err(format!("frequency table: symbol {s} outside -{qmax}..={qmax}")));
            }
            let f = get_varint(bytes, &mut pos, "frequency table")?;
            if f == 0 || f > total || (entries > 1 && f == total) {
                return Err(err(format!("frequency table: frequency {f} of symbol {s} (must be 1..{total})")));
            }
            sum += f as u64;
            symbols.push(s as i32);
            freqs.push(f);
        }
        if pos != bytes.len() {
            return Err(err(format!("frequency table: {} trailing bytes", bytes.len() - pos)));
        }
        if sum != total as u64 {
            return Err(err(format!("frequency table: frequencies sum to {sum}, not 2^{precision}")));
        }
        Ok(Table { symbols, freqs })
    }

    /// Ideal code length in bits of data with these `counts` (same order as the table) under the
    /// quantized model: `−Σ n_i log2(f_i / 2^24)`. The ANS payload is within a few words of it.
    pub fn code_length_bits(&self, counts: &[u64]) -> f64 {
        counts.iter().zip(&self.freqs).map(|(&n, &f)| n as f64 * (PRECISION as f64 - (f as f64).log2())).sum()
    }

    fn model(&self) -> Result<DefaultContiguousCategoricalEntropyModel> {
        DefaultContiguousCategoricalEntropyModel::from_nonzero_fixed_point_probabilities(self.freqs.iter().copied(), false)
            .map_err(|()| err("frequency table does not form a valid model"))
    }
}

pub(crate) fn zigzag(s: i32) -> u32 {
    ((s << 1) ^ (s >> 31)) as u32
}

pub(crate) fn unzigzag(v: u32) -> i32 {
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads one varint at `*pos` of `b` (the `what` section, named in errors).
pub(crate) fn get_varint(b: &[u8], pos: &mut usize, what: &str) -> Result<u32> {
    let mut v = 0u64;
    for shift in (0..35).step_by(7) {
        let byte = *b.get(*pos).ok_or_else(|| err(format!("{what} ends inside a number")))?;
        *pos += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(v).map_err(|_| err(format!("{what}: number over 32 bits")));
        }
    }
    Err(err(format!("{what}: number over 5 bytes")))
}

/// ANS-codes the model indices of a symbol sequence (`index(i)` is the index of the `i`-th
/// symbol). Returns the payload: the coder's 32-bit words, little-endian. Empty for `A = 1`.
pub fn encode(table: &Table, n: usize, index: impl Fn(usize) -> usize) -> Result<Vec<u8>> {
    if table.len() == 1 {
        return Ok(Vec::new());
    }
    let model = table.model()?;
    let mut ans = DefaultAnsCoder::new();
    // ANS is a stack: encoding in reverse order decodes in forward order.
    ans.encode_iid_symbols_reverse((0..n).map(index), model.as_view()).map_err(|e| Error::Arg(format!("entropy coder: {e:?}")))?;
    let words = ans.into_compressed().map_err(|e| Error::Arg(format!("entropy coder: {e:?}")))?;
    Ok(words.iter().flat_map(|w| w.to_le_bytes()).collect())
}

/// Decodes `n` model indices from a payload, handing each to `put(i, index)`. The payload must
/// hold exactly those `n` symbols (the coder ends empty) or it is an error.
pub fn decode(table: &Table, payload: &[u8], n: usize, mut put: impl FnMut(usize, usize)) -> Result<()> {
    if table.len() == 1 {
        if !payload.is_empty() {
            return Err(err(format!("a one-symbol alphabet has no payload, found {} bytes", payload.len())));
        }
        (0..n).for_each(|i| put(i, 0));
        return Ok(());
    }
    if !payload.len().is_multiple_of(4) {
        return Err(err(format!("payload of {} bytes is not a whole number of 32-bit words", payload.len())));
    }
    let words: Vec<u32> = payload.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let model = table.model()?;
    let mut ans = DefaultAnsCoder::from_compressed(words).map_err(|_| err("payload ends with a zero word (not an ANS stream)"))?;
    for (i, s) in ans.decode_iid_symbols(n, model.as_view()).enumerate() {
        let s = s.map_err(|e| err(format!("entropy decoder: {e:?}")))?;
        put(i, s);
    }
    if !ans.is_empty() {
        return Err(err(format!("payload holds more than the {n} symbols of the header")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag_round_trip() {
        for s in [0, 1, -1, 127, -127, 32767, -32767, i32::MAX, i32::MIN] {
            assert_eq!(unzigzag(zigzag(s)), s);
        }
        let mut b = Vec::new();
        for v in [0u32, 1, 127, 128, 16383, 16384, 1 << 24, u32::MAX] {
            b.clear();
            put_varint(&mut b, v);
            let mut pos = 0;
            assert_eq!(get_varint(&b, &mut pos, "test").unwrap(), v);
            assert_eq!(pos, b.len());
        }
    }

    #[test]
    fn table_and_stream_round_trip() {
        let counts = [(-3, 5u64), (0, 1000), (2, 1), (7, 40)];
        let t = Table::from_counts(&counts).unwrap();
        assert_eq!(t.freqs.iter().map(|&f| f as u64).sum::<u64>(), TOTAL as u64);
        assert_eq!(Table::from_bytes(&t.to_bytes(), 4, 127).unwrap(), t);
        let idx: Vec<usize> = (0..3000).map(|i| [1, 1, 1, 0, 3, 1, 2, 1][i % 8]).collect();
        let p = encode(&t, idx.len(), |i| idx[i]).unwrap();
        let mut back = vec![usize::MAX; idx.len()];
        decode(&t, &p, idx.len(), |i, s| back[i] = s).unwrap();
        assert_eq!(back, idx);
        assert!(decode(&t, &p, idx.len() - 1, |_, _| {}).is_err());
        // (Decoding *more* symbols than were coded is not detectable: an empty ANS coder keeps
        // yielding index 0. The count comes from the checksummed header.)
    }

    #[test]
    fn bad_tables_are_errors() {
        let t = Table::from_counts(&[(-3, 5u64), (0, 1000), (2, 1), (7, 40)]).unwrap();
        let b = t.to_bytes();
        assert!(Table::from_bytes(&b, 3, 127).is_err()); // trailing bytes
        assert!(Table::from_bytes(&b, 5, 127).is_err()); // runs out
        assert!(Table::from_bytes(&b, 4, 6).is_err()); // symbol 7 outside ±6
        assert!(Table::from_bytes(&b, 0, 127).is_err());
        assert!(Table::from_bytes(&b, 256, 127).is_err());
        let mut bad = t.clone();
        bad.freqs[0] += 1; // sum 2^24 + 1
        assert!(Table::from_bytes(&bad.to_bytes(), 4, 127).is_err());
        let one = Table::from_counts(&[(5, 9)]).unwrap();
        assert_eq!(one.freqs, vec![TOTAL]);
        assert_eq!(Table::from_bytes(&one.to_bytes(), 1, 127).unwrap(), one);
        assert!(Table::from_bytes(&[0x01, 0x80, 0x80, 0x80, 0x80, 0x10], 1, 127).is_err()); // 6-byte varint
        assert!(Table::from_counts(&[(1, 1), (0, 1)]).is_err());
    }
}
