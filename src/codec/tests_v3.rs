//! Tests of version 3: property tests of the round trip against version 2 (odd sizes, chunk
//! boundaries, every dtype, both widths, every step scope, skewed, uniform and one-symbol data,
//! every lane count), and damaged files: every truncation and every flipped bit of small files is
//! an `fjq:` error, a bad chunk is named, hostile fields behind valid checksums are refused.

use proptest::prelude::*;

use super::*;

/// splitmix64, seeded per test case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[derive(Debug, Clone, Copy)]
enum Dist {
    /// Mostly small symbols (a few distinct values, very unequal counts).
    Skewed,
    /// Every symbol of the width about equally likely (clamped at ±Q).
    Uniform,
    /// One value everywhere: a one-symbol table, no chunks.
    Single,
}

/// A feature of `n` values whose symbols under step `0.1` follow `dist`.
fn values(n: usize, dist: Dist, bits: Bits, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    let q = bits.qmax();
    (0..n)
        .map(|_| match dist {
            Dist::Skewed => {
                let u = r.uniform();
                0.1 * (u * u * u * 6.0 - 1.0) * if r.next() & 1 == 0 { 1.0 } else { -1.0 }
            }
            Dist::Uniform => 0.1 * (r.uniform() * 2.0 - 1.0) * (q + 3.0),
            Dist::Single => 0.0,
        })
        .collect()
}

/// A grid of exactly `n` elements for the scope: NCHW `[1, 1, 1, n]` or NTC `[1, n, 1]` (per
/// token), or NTC `[1, 1, n]` / NCHW `[1, n, 1, 1]` (per channel: a channel per element).
fn grid_for(n: usize, channel: bool, alt: bool) -> TokenGrid {
    let shape = match (channel, alt) {
        (false, false) => FeatureShape::nchw(1, 1, 1, n),
        (false, true) => FeatureShape::ntc(1, n, 1),
        (true, false) => FeatureShape::ntc(1, 1, n),
        (true, true) => FeatureShape::nchw(1, n, 1, 1),
    };
    TokenGrid::new(shape, 1).unwrap()
}

fn steps(k: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed ^ 0x5EED);
    (0..k).map(|_| 0.1 * (0.75 + 0.5 * r.uniform())).collect()
}

#[allow(clippy::too_many_arguments)]
fn check<E: Element>(n: usize, bits: Bits, scope: u8, dist: Dist, format: Format, alt: bool, seed: u64) {
    let what = format!("n {n} {:?} b{} scope {scope} {dist:?} {format:?} alt {alt}", E::DTYPE, bits.bits());
    let grid = grid_for(n, scope == 2, alt);
    let mut x = vec![E::from_f32(0.0); n];
    E::narrow(&values(n, dist, bits, seed), &mut x);
    let st = steps(grid.tokens().max(channel::channels(&grid)), seed);
    let spec = match scope {
        0 => StepSpec::Tensor(0.1),
        1 => StepSpec::Token(&st[..grid.tokens()]),
        _ => StepSpec::Channel(&st[..channel::channels(&grid)]),
    };
    let coding = if seed.is_multiple_of(2) { StepCoding::default() } else { StepCoding::F16 };
    let v3 = encode_with_format(&x, &grid, spec, bits, coding, &format).unwrap_or_else(|e| panic!("{what}: {e}"));
    let v2 = encode_with_format(&x, &grid, spec, bits, coding, &Format::v2()).unwrap();
    assert_eq!(v3.symbols, v2.symbols, "{what}");
    assert_eq!(v3.recon, v2.recon, "{what}");
    let d3 = decode(&v3.bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    let d2 = decode(&v2.bytes).unwrap();
    assert_eq!(d3.version, 3);
    assert_eq!(d3.symbols, d2.symbols, "{what}");
    assert_eq!(d3.recon, d2.recon, "{what}");
    assert_eq!(d3.recon, ElemVec::from(v3.recon.clone()), "{what}");
    assert_eq!((d3.rate.entropy_bits, d3.rate.alphabet), (d2.rate.entropy_bits, d2.rate.alphabet), "{what}");
    assert_eq!(d3.rate, v3.rate, "{what}");
    let fused = encode_file(&x, &grid, spec, bits, coding, &format).unwrap();
    assert_eq!(fused.bytes, v3.bytes, "{what}: fused encoder");
    // The size bound of both containers, and the header alone.
    let layout = [StepLayout::Tensor, StepLayout::Token, StepLayout::Channel][scope as usize];
    for (f, len) in [(format, v3.bytes.len()), (Format::v2(), v2.bytes.len())] {
        let bound = encode_bound(&grid, bits, layout, coding, &f).unwrap();
        assert!(len <= bound, "{what}: {len} bytes, bound {bound} ({f:?})");
    }
    let h = header(&v3.bytes).unwrap();
    assert_eq!((h.version, h.dtype, h.shape, h.patch, h.bits, h.step_mode), (3, E::DTYPE, grid.shape, grid.patch, bits, v3.step_mode));
    assert_eq!(h.file_bytes, v3.bytes.len());
    assert_eq!(decode_recon(&v3.bytes).unwrap().recon, d3.recon, "{what}: decode_recon");
    let chunks = v3.bytes[v3.sections.header - 4..v3.sections.header].to_vec();
    let m = u32::from_le_bytes(chunks.try_into().unwrap()) as usize;
    match dist {
        Dist::Single => assert_eq!(m, 0, "{what}: a one-symbol table needs no chunks"),
        _ if d3.rate.alphabet > 1 => assert_eq!(m, n.div_ceil(format.chunk_symbols), "{what}"),
        _ => {}
    }
}

const SIZES: [usize; 11] = [1, 7, 17, 255, 256, 257, 511, 512, 513, 1025, 5137];

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn v3_round_trips_like_v2(
        size in 0..SIZES.len(),
        dtype in 0..3u8,
        wide in any::<bool>(),
        scope in 0..3u8,
        dist in 0..3u8,
        lanes in 0..6usize,
        chunk in prop::sample::select(vec![1usize, 3, 256, 4096, DEFAULT_CHUNK]),
        alt in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let bits = if wide { Bits::B16 } else { Bits::B8 };
        let dist = [Dist::Skewed, Dist::Uniform, Dist::Single][dist as usize];
        let format = Format { version: 3, chunk_symbols: chunk, lanes: rans::LANE_COUNTS[lanes] };
        let n = SIZES[size];
        match dtype {
            0 => check::<f32>(n, bits, scope, dist, format, alt, seed),
            1 => check::<f16>(n, bits, scope, dist, format, alt, seed),
            _ => check::<bf16>(n, bits, scope, dist, format, alt, seed),
        }
    }
}

/// Sizes at chunk boundaries, every lane count, exhaustively (the property test samples them).
#[test]
fn chunk_boundaries_and_lane_counts() {
    for lanes in rans::LANE_COUNTS {
        for n in [255, 256, 257, 767, 768, 769] {
            let f = Format { version: 3, chunk_symbols: 256, lanes };
            check::<f32>(n, Bits::B8, 1, Dist::Skewed, f, false, n as u64);
            check::<f16>(n, Bits::B16, 2, Dist::Uniform, f, true, n as u64 + 1);
        }
    }
}

fn fjq_err(b: &[u8]) -> String {
    match decode(b) {
        Err(Error::Io(m)) if m.starts_with("fjq:") => m,
        Err(e) => panic!("expected an fjq Io error, got {e:?}"),
        Ok(_) => panic!("decoded a damaged file of {} bytes", b.len()),
    }
}

/// A small multi-chunk file: 17 chunks of 64 symbols.
fn small_file() -> (Vec<u8>, Sections) {
    let g = TokenGrid::new(FeatureShape::nchw(1, 4, 16, 17), 1).unwrap();
    let x = values(g.numel(), Dist::Skewed, Bits::B8, 3);
    let st = steps(g.tokens(), 3);
    let f = Format { version: 3, chunk_symbols: 64, lanes: 8 };
    let e = encode_with_format(&x, &g, StepSpec::Token(&st), Bits::B8, StepCoding::default(), &f).unwrap();
    (e.bytes, e.sections)
}

/// Where the header checksum and the chunks are, and the chunk ranges.
fn layout(b: &[u8], s: &Sections) -> (usize, Vec<(usize, usize)>) {
    let m = u32::from_le_bytes(b[s.header - 4..s.header].try_into().unwrap()) as usize;
    let idx = s.header + s.table + s.steps;
    let hcrc = idx + 8 * m;
    let mut off = hcrc + 4;
    let ranges = (0..m)
        .map(|c| {
            let len = u32::from_le_bytes(b[idx + 8 * c..idx + 8 * c + 4].try_into().unwrap()) as usize;
            off += len;
            (off - len, off)
        })
        .collect();
    (hcrc, ranges)
}

/// Recomputes the header checksum and every chunk's checksum of a modified file.
fn fix_crcs(b: &mut [u8], s: &Sections) {
    let (hcrc, ranges) = layout(b, s);
    let idx = s.header + s.table + s.steps;
    for (c, &(a, e)) in ranges.iter().enumerate() {
        let crc = crc32fast::hash(&b[a..e.min(b.len())]);
        b[idx + 8 * c + 4..idx + 8 * c + 8].copy_from_slice(&crc.to_le_bytes());
    }
    let h = crc32fast::hash(&b[..hcrc]);
    b[hcrc..hcrc + 4].copy_from_slice(&h.to_le_bytes());
}

#[test]
fn every_truncation_and_flipped_bit_is_an_error() {
    let (b, s) = small_file();
    let (hcrc, ranges) = layout(&b, &s);
    assert_eq!(ranges.len(), 17);
    decode(&b).unwrap();
    for cut in 0..b.len() {
        let m = fjq_err(&b[..cut]);
        if cut >= 6 {
            assert!(m.contains("truncated"), "cut {cut}: {m}");
        }
    }
    let mut longer = b.clone();
    longer.push(0);
    assert!(fjq_err(&longer).contains("after the last chunk"));
    for i in 0..b.len() {
        for bit in 0..8 {
            let mut c = b.clone();
            c[i] ^= 1 << bit;
            let m = fjq_err(&c);
            if i < 4 {
                assert!(m.contains("bad magic"), "{i}: {m}");
            } else if i < 6 {
                assert!(m.contains("version") || m.contains("checksum"), "{i}: {m}");
            } else if i < hcrc + 4 {
                assert!(m.contains("checksum mismatch in the header") || m.contains("header"), "{i}: {m}");
            } else {
                let c = ranges.iter().position(|&(a, e)| (a..e).contains(&i)).unwrap();
                assert!(m.contains(&format!("chunk {c} of 17: checksum mismatch")), "{i}: {m}");
            }
        }
    }
}

#[test]
fn damaged_chunks_behind_valid_checksums_are_errors_not_panics() {
    let (b, s) = small_file();
    let (_, ranges) = layout(&b, &s);
    // Garbage in chunk 3 with its CRC fixed: an error naming it (or, rarely, other symbols).
    let (a, e) = ranges[3];
    let mut named = 0;
    for i in a..e {
        for v in [0u8, 0xff, 0x5a] {
            let mut c = b.clone();
            c[i] = v;
            fix_crcs(&mut c, &s);
            if let Err(Error::Io(m)) = decode(&c) {
                assert!(m.starts_with("fjq: chunk 3 of 17"), "{m}");
                named += 1;
            }
        }
    }
    assert!(named > 0);
    // Hostile coder fields with the header checksum fixed.
    let put = |off: usize, v: &[u8]| {
        let mut c = b.clone();
        c[off..off + v.len()].copy_from_slice(v);
        fix_crcs(&mut c, &s);
        fjq_err(&c)
    };
    let h = s.header - 12;
    assert!(put(h, &[17]).contains("precision"));
    let m = put(h, &[3]);
    assert!(m.contains("frequency table") || m.contains("alphabet"), "{m}");
    assert!(put(h + 1, &[3]).contains("lanes"));
    assert!(put(h + 1, &[64]).contains("lanes"));
    assert!(put(h + 1, &[16]).contains("chunk"));
    assert!(put(h + 2, &[1]).contains("reserved"));
    assert!(put(h + 4, &0u32.to_le_bytes()).contains("chunk of 0"));
    assert!(put(h + 4, &50u32.to_le_bytes()).contains("17 chunks"));
    // A chunk count that disagrees, or an index longer than the file: refused before allocating.
    let mut c = b.clone();
    c[h + 8..h + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(fjq_err(&c).contains("truncated"));
    // A chunk length moved from one chunk to the next: the header CRC (fixed) passes, each chunk's
    // CRC then fails or the coder notices.
    let idx = s.header + s.table + s.steps;
    let mut c = b.clone();
    let l0 = u32::from_le_bytes(c[idx..idx + 4].try_into().unwrap());
    let l1 = u32::from_le_bytes(c[idx + 8..idx + 12].try_into().unwrap());
    c[idx..idx + 4].copy_from_slice(&(l0 + 2).to_le_bytes());
    c[idx + 8..idx + 12].copy_from_slice(&(l1 - 2).to_le_bytes());
    let hc = idx + 8 * 17;
    let crc = crc32fast::hash(&c[..hc]);
    c[hc..hc + 4].copy_from_slice(&crc.to_le_bytes());
    assert!(fjq_err(&c).contains("chunk 0 of 17"));
}

#[test]
fn non_finite_inputs_are_errors_in_the_fused_encoder() {
    let g = TokenGrid::new(FeatureShape::ntc(1, 300, 3), 1).unwrap();
    let mut x = values(900, Dist::Skewed, Bits::B8, 5);
    x[777] = f32::INFINITY;
    x[801] = f32::NAN;
    let f = Format { version: 3, chunk_symbols: 100, lanes: 4 };
    let e = encode_file(&x, &g, StepSpec::Tensor(0.1), Bits::B8, StepCoding::default(), &f).unwrap_err();
    assert!(matches!(e, Error::NonFinite { index: 777, .. }), "{e}");
    let e = encode_with_format(&x, &g, StepSpec::Tensor(0.1), Bits::B8, StepCoding::default(), &f).unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    for bad in [Format { version: 1, ..f }, Format { lanes: 3, ..f }, Format { chunk_symbols: 0, ..f }] {
        assert!(matches!(encode_file(&x, &g, StepSpec::Tensor(0.1), Bits::B8, StepCoding::default(), &bad), Err(Error::Arg(_))));
    }
}

/// Version 3 stays within 0.5% of version 2 on a feature of a realistic size and entropy.
#[test]
fn size_is_close_to_version_2() {
    let g = TokenGrid::new(FeatureShape::nchw(1, 64, 64, 64), 1).unwrap();
    let mut r = Rng(11);
    let x: Vec<f32> = (0..g.numel()).map(|_| (r.uniform() + r.uniform() + r.uniform() - 1.5) * 2.0).collect();
    let st = steps(g.tokens(), 11);
    let v3 = encode_with(&x, &g, StepSpec::Token(&st), Bits::B8, StepCoding::default()).unwrap();
    let v2 = encode_with_format(&x, &g, StepSpec::Token(&st), Bits::B8, StepCoding::default(), &Format::v2()).unwrap();
    let ratio = v3.bytes.len() as f64 / v2.bytes.len() as f64;
    eprintln!(
        "v3 {} bytes, v2 {} bytes ({:+.3}%), {:.3} bits/element",
        v3.bytes.len(),
        v2.bytes.len(),
        100.0 * (ratio - 1.0),
        v3.rate.bits_per_element
    );
    assert!(ratio < 1.005, "{ratio}");
}

/// The encoder spends at most 0.2% of a chunk's payload on its final lane states (32 bits a lane):
/// one photo's small, low-entropy feature gets few lanes, so its file stays near version 2's
/// size, while a large feature keeps all 32 lanes (the decoder's speed).
#[test]
fn lane_states_stay_a_small_share_of_the_payload() {
    let lanes_of = |e: &EncodedFile| e.bytes[e.sections.header - 11] as usize;
    for (c, h, w, dist) in [(320, 7, 7, Dist::Skewed), (32, 28, 28, Dist::Skewed), (64, 64, 64, Dist::Uniform)] {
        let g = TokenGrid::new(FeatureShape::nchw(1, c, h, w), 1).unwrap();
        let n = g.numel();
        let x = values(n, dist, Bits::B8, 9);
        let st = steps(g.tokens(), 9);
        let v3 = encode_file(&x, &g, StepSpec::Token(&st), Bits::B8, StepCoding::default(), &Format::default()).unwrap();
        let v2 = encode_with_format(&x, &g, StepSpec::Token(&st), Bits::B8, StepCoding::default(), &Format::v2()).unwrap();
        let lanes = lanes_of(&v3);
        let payload_bits = v3.rate.entropy_bits * n.min(DEFAULT_CHUNK) as f64;
        let what = format!(
            "[{c},{h},{w}] {dist:?}: {lanes} lanes, v3 {} vs v2 {} bytes, H {:.3}",
            v3.bytes.len(),
            v2.bytes.len(),
            v3.rate.entropy_bits
        );
        eprintln!("{what}");
        assert!(lanes == 1 || (lanes * 32) as f64 <= 0.002 * payload_bits, "{what}");
        if n >= DEFAULT_CHUNK && v3.rate.entropy_bits > 4.0 {
            assert_eq!(lanes, DEFAULT_LANES, "{what}");
        }
    }
}
