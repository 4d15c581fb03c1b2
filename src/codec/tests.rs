//! Tests of the slice codec: round trips of every step mode, dtype, layout and width; the log
//! grid's known answers; version 1 files; corrupted files; the size of the steps' side info.

use super::*;

/// A small deterministic generator (xorshift32), local to each test.
struct Rng(u32);

impl Rng {
    fn new(seed: u32) -> Self {
        Rng(seed.wrapping_mul(2_654_435_761).wrapping_add(0x9E37_79B9) | 1)
    }
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 8) as f32 / (1u32 << 24) as f32
    }
}

/// A deterministic feature with varied magnitudes and exact zeros.
fn feature(n: usize, seed: u32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|i| {
            let v = (r.uniform() - 0.5) * (1.0 + (i % 7) as f32);
            if i % 5 == 0 {
                0.0
            } else {
                v
            }
        })
        .collect()
}

fn channels_of(g: &TokenGrid) -> usize {
    channel::channels(g)
}

/// Steps of `spec`'s kind for the grid, varied over about two octaves.
fn steps_for(n: usize, seed: u32) -> Vec<f32> {
    let mut r = Rng::new(seed ^ 0xABCD);
    (0..n).map(|_| 0.02 * (1.0 + 3.0 * r.uniform())).collect()
}

/// Independent reference of the channel mode: contract §4's f32 operations, one element at a time.
fn channel_reference<E: Element>(x: &[E], g: &TokenGrid, steps: &[f32], bits: Bits) -> (Vec<i32>, Vec<E>) {
    let qmax = bits.qmax();
    let mut q = Vec::new();
    let mut y = Vec::new();
    for (i, v) in x.iter().enumerate() {
        let c = match g.shape.layout {
            Layout::Nchw => (i / (g.shape.dims[2] * g.shape.dims[3])) % g.shape.dims[1],
            Layout::Ntc => i % g.shape.dims[2],
        };
        let inv = 1.0f32 / steps[c];
        let s = (v.to_f32() * inv).round_ties_even();
        let s = if s > qmax {
            qmax
        } else if s < -qmax {
            -qmax
        } else {
            s
        };
        q.push(s as i32);
        y.push(E::from_f32(s * steps[c]));
    }
    (q, y)
}

fn symbols_i32(s: &SymbolVec) -> Vec<i32> {
    match s {
        SymbolVec::I8(v) => v.iter().map(|&q| q as i32).collect(),
        SymbolVec::I16(v) => v.iter().map(|&q| q as i32).collect(),
    }
}

const MODES: [StepMode; 7] = [
    StepMode::Tensor,
    StepMode::Token(StepCoding::LogGrid { per_octave: 16 }),
    StepMode::Token(StepCoding::LogGrid { per_octave: 1 }),
    StepMode::Token(StepCoding::LogGrid { per_octave: 64 }),
    StepMode::Token(StepCoding::F16),
    StepMode::Channel(StepCoding::LogGrid { per_octave: 16 }),
    StepMode::Channel(StepCoding::F16),
];

fn round_trip<E: Element>(grid: TokenGrid, bits: Bits, mode: StepMode, seed: u32) {
    let what = format!("{:?} {:?} p{} b{} {mode:?}", E::DTYPE, grid.shape, grid.patch, bits.bits());
    let mut x = vec![E::from_f32(0.0); grid.numel()];
    E::narrow(&feature(grid.numel(), seed), &mut x);
    let token_steps = steps_for(grid.tokens(), seed);
    let channel_steps = steps_for(channels_of(&grid), seed + 1);
    let (spec, coding) = match mode {
        StepMode::Tensor => (StepSpec::Tensor(0.037), StepCoding::default()),
        StepMode::Token(c) => (StepSpec::Token(&token_steps), c),
        StepMode::Channel(c) => (StepSpec::Channel(&channel_steps), c),
    };
    let enc = encode_with(&x, &grid, spec, bits, coding).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(enc.step_mode, mode, "{what}");
    assert_eq!(enc.sections.total(), enc.bytes.len(), "{what}");
    assert_eq!(enc.rate.step_bytes, enc.sections.steps, "{what}");
    let sym = symbols_i32(&enc.symbols);
    match mode {
        StepMode::Channel(c) => {
            assert!(enc.steps.is_empty(), "{what}");
            assert_eq!(enc.channel_steps, round_with(&channel_steps, c).unwrap(), "{what}");
            let (q, y) = channel_reference(&x, &grid, &enc.channel_steps, bits);
            assert_eq!(sym, q, "{what}: symbols vs the reference");
            assert_eq!(enc.recon, y, "{what}: recon vs the reference");
        }
        _ => {
            let stored = match mode {
                StepMode::Tensor => vec![0.037f32; grid.tokens()],
                StepMode::Token(c) => round_with(&token_steps, c).unwrap(),
                StepMode::Channel(_) => unreachable!(),
            };
            assert_eq!(enc.steps, stored, "{what}");
            assert!(enc.channel_steps.is_empty(), "{what}");
            // The encoder's outputs are cpu::quantize's with the stored steps.
            let mut recon = vec![E::from_f32(0.0); grid.numel()];
            let mut s16 = vec![0i16; grid.numel()];
            let mut s8 = vec![0i8; grid.numel()];
            let symbols = match bits {
                Bits::B8 => Symbols::I8(&mut s8),
                Bits::B16 => Symbols::I16(&mut s16),
            };
            let q = cpu::quantize(&x, &grid, &stored, bits, QuantOut { symbols, recon: Some(&mut recon), ..Default::default() }).unwrap();
            assert_eq!(enc.recon, recon, "{what}");
            assert_eq!(enc.clamped, q.clamped, "{what}");
            let want: Vec<i32> = match bits {
                Bits::B8 => s8.iter().map(|&v| v as i32).collect(),
                Bits::B16 => s16.iter().map(|&v| v as i32).collect(),
            };
            assert_eq!(sym, want, "{what}");
        }
    }
    let d = decode(&enc.bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(d.version, VERSION);
    assert_eq!(
        (d.dtype, d.layout, d.shape, d.patch, d.bits, d.step_mode),
        (E::DTYPE, grid.shape.layout, grid.shape, grid.patch, bits, mode)
    );
    assert_eq!(d.recon, ElemVec::from(enc.recon.clone()), "{what}");
    assert_eq!(d.symbols, enc.symbols, "{what}");
    assert_eq!(d.steps, enc.steps, "{what}");
    assert_eq!(d.channel_steps, enc.channel_steps, "{what}");
    assert_eq!(d.sections, enc.sections, "{what}");
    assert_eq!(d.rate, enc.rate, "{what}");
    assert_eq!(ElemVec::from_le_bytes(E::DTYPE, &d.recon.to_le_bytes()).unwrap(), d.recon);
    // The same feature in version 2, and through the fused paths: the same symbols and x̂, and
    // the fused encoder writes the very same file.
    let v2 = encode_with_format(&x, &grid, spec, bits, coding, &Format::v2()).unwrap();
    let d2 = decode(&v2.bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(d2.version, 2);
    assert_eq!(d2.recon, d.recon, "{what}: v2 recon");
    assert_eq!(d2.symbols, d.symbols, "{what}: v2 symbols");
    let ef = encode_file(&x, &grid, spec, bits, coding, &Format::default()).unwrap();
    assert_eq!(ef.bytes, enc.bytes, "{what}: encode_file");
    assert_eq!((ef.clamped, ef.sections, ef.rate, ef.step_mode), (enc.clamped, enc.sections, enc.rate, enc.step_mode), "{what}");
    assert_eq!((&ef.steps, &ef.channel_steps), (&enc.steps, &enc.channel_steps), "{what}");
    assert!((ef.mse - enc.mse).abs() <= 1e-5 * enc.mse, "{what}: mse {} vs {}", ef.mse, enc.mse);
    let r = decode_recon(&enc.bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(r.recon, d.recon, "{what}: decode_recon");
    let i = &r.info;
    assert_eq!((i.version, i.dtype, i.shape, i.patch, i.bits, i.step_mode), (3, d.dtype, d.shape, d.patch, d.bits, d.step_mode));
    assert_eq!((&i.steps, &i.channel_steps), (&d.steps, &d.channel_steps));
    // Into a reused buffer, from either version; a buffer of another size is refused.
    for bytes in [&enc.bytes, &v2.bytes] {
        let mut buf = vec![E::from_f32(1.0); grid.numel()];
        let info = decode_into(bytes, &mut buf).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(ElemVec::from(buf), d.recon, "{what}: decode_into");
        assert_eq!((info.shape, info.step_mode, info.steps), (d.shape, d.step_mode, d.steps.clone()), "{what}");
    }
    let mut short = vec![E::from_f32(0.0); grid.numel() + 1];
    assert!(matches!(decode_into(&enc.bytes, &mut short), Err(Error::Arg(_))), "{what}");
}

fn grids() -> Vec<TokenGrid> {
    vec![
        TokenGrid::new(FeatureShape::nchw(1, 1, 1, 1), 1).unwrap(),
        TokenGrid::new(FeatureShape::nchw(1, 7, 1, 7), 1).unwrap(),
        TokenGrid::new(FeatureShape::nchw(1, 5, 7, 3), 1).unwrap(),
        TokenGrid::new(FeatureShape::nchw(2, 3, 4, 6), 2).unwrap(),
        TokenGrid::new(FeatureShape::nchw(1, 17, 2, 2), 2).unwrap(),
        TokenGrid::new(FeatureShape::ntc(1, 1, 7), 1).unwrap(),
        TokenGrid::new(FeatureShape::ntc(2, 7, 9), 1).unwrap(),
        TokenGrid::new(FeatureShape::ntc(1, 17, 3), 1).unwrap(),
    ]
}

#[test]
fn round_trips_every_mode_dtype_layout_and_width() {
    let mut seed = 0u32;
    for g in grids() {
        for bits in [Bits::B8, Bits::B16] {
            for mode in MODES {
                seed += 1;
                round_trip::<f32>(g, bits, mode, seed);
                round_trip::<f16>(g, bits, mode, seed + 1000);
                round_trip::<bf16>(g, bits, mode, seed + 2000);
            }
        }
    }
}

#[test]
fn encode_picks_tensor_mode_for_equal_steps_and_the_log_grid_otherwise() {
    let g = TokenGrid::new(FeatureShape::nchw(1, 3, 5, 5), 1).unwrap();
    let x = feature(g.numel(), 3);
    let enc = encode(&x, &g, &[0.1f32; 25], Bits::B8).unwrap();
    assert_eq!(enc.step_mode, StepMode::Tensor);
    assert_eq!(enc.steps, vec![0.1f32; 25], "a tensor step is stored exactly");
    assert!(enc.sections.steps <= 8, "{:?}", enc.sections);
    let mut st = vec![0.1f32; 25];
    st[7] = 0.1f32.next_up();
    let enc = encode(&x, &g, &st, Bits::B8).unwrap();
    assert_eq!(enc.step_mode, StepMode::Token(StepCoding::LogGrid { per_octave: DEFAULT_PER_OCTAVE }));
    assert_eq!(enc.steps, round_token_steps(&st, DEFAULT_PER_OCTAVE).unwrap());
    assert_eq!(decode(&enc.bytes).unwrap().steps, enc.steps);
}

#[test]
fn log_grid_table_known_answers() {
    assert_eq!(log_grid_table(1).unwrap(), vec![1.0f32]);
    let m2 = log_grid_table(2).unwrap();
    assert_eq!(m2.iter().map(|m| m.to_bits()).collect::<Vec<_>>(), vec![0x3F80_0000, 0x3FB5_04F3]);
    let m4 = log_grid_table(4).unwrap();
    assert_eq!(m4.iter().map(|m| m.to_bits()).collect::<Vec<_>>(), vec![0x3F80_0000, 0x3F98_37F0, 0x3FB5_04F3, 0x3FD7_44FD]);
    let m16 = log_grid_table(16).unwrap();
    assert_eq!(
        &m16[..5].iter().map(|m| m.to_bits()).collect::<Vec<_>>(),
        &[0x3F80_0000, 0x3F85_AAC3, 0x3F8B_95C2, 0x3F91_C3D3, 0x3F98_37F0]
    );
    for g in [1u32, 2, 4, 8, 16, 32, 64] {
        let m = log_grid_table(g).unwrap();
        assert_eq!(m.len(), g as usize);
        assert!(m.windows(2).all(|w| w[0] < w[1]) && m[g as usize - 1] < 2.0);
        // Coarser grids are subsets of finer ones (same factors), and every entry is within one
        // f32 ulp of 2^(i/G).
        if g > 1 {
            let half = log_grid_table(g / 2).unwrap();
            for (i, &h) in half.iter().enumerate() {
                assert_eq!(h.to_bits(), m[2 * i].to_bits(), "G={g} i={i}");
            }
        }
        for (i, &v) in m.iter().enumerate() {
            let exact = (i as f64 / g as f64).exp2();
            assert!((v as f64 - exact).abs() <= (v.next_up() - v) as f64, "G={g} i={i}: {v} vs {exact}");
        }
    }
    for bad in [0u32, 3, 12, 128, 256] {
        assert!(matches!(log_grid_table(bad), Err(Error::Arg(_))), "{bad}");
    }
}

#[test]
fn rounding_to_the_log_grid() {
    let mut r = Rng::new(5);
    for g in [1u32, 2, 16, 64] {
        let m = log_grid_table(g).unwrap();
        let steps: Vec<f32> = (0..2000).map(|_| (r.uniform() * 80.0 - 40.0).exp2()).collect();
        let rounded = round_token_steps(&steps, g).unwrap();
        let bound = (0.5 / g as f64).exp2();
        for (&s, &q) in steps.iter().zip(&rounded) {
            let ratio = q as f64 / s as f64;
            assert!(ratio <= bound * (1.0 + 1e-6) && ratio >= 1.0 / bound / (1.0 + 1e-6), "G={g}: {s} -> {q}");
            // A grid point: its mantissa is in the table.
            let f = f32::from_bits((q.to_bits() & 0x007f_ffff) | (127 << 23));
            assert!(m.contains(&f), "G={g}: {q}");
        }
        // Grid points round to themselves (idempotent).
        assert_eq!(round_token_steps(&rounded, g).unwrap(), rounded);
    }
    // Exact grid values and the octave boundary.
    assert_eq!(round_token_steps(&[1.0, 2.0, 0.5, 1.9999], 1).unwrap(), vec![1.0, 2.0, 0.5, 2.0]);
    // Between 1 and sqrt(2) (G=2) the log-domain midpoint is 2^(1/4) ≈ 1.1892.
    assert_eq!(round_token_steps(&[1.1892, 1.1893], 2).unwrap(), vec![1.0, f32::from_bits(0x3FB5_04F3)]);
    // Steps a file cannot hold.
    assert!(matches!(round_token_steps(&[1.0, 0.0], 16), Err(Error::Arg(_))));
    assert!(matches!(round_token_steps(&[1.0, f32::NAN], 16), Err(Error::Arg(_))));
    let e = round_token_steps(&[1.0, 1e-40], 16).unwrap_err();
    assert!(e.to_string().contains("cannot be stored"), "{e}");
    assert!(round_token_steps(&[f32::MAX], 16).is_err(), "rounds up to 2^128");
    assert!(round_token_steps(&[1.0], 3).is_err());
    assert!(round_token_steps(&[], 16).is_err());
    // The extremes of the normal range are storable, and so is a spread of 2^250.
    let wide = [f32::MIN_POSITIVE, 1e38, 1.0];
    let g = TokenGrid::new(FeatureShape::ntc(1, 3, 2), 1).unwrap();
    for per_octave in [1, 64] {
        let enc = encode_with(&[0.5f32; 6], &g, StepSpec::Token(&wide), Bits::B8, StepCoding::LogGrid { per_octave }).unwrap();
        assert_eq!(decode(&enc.bytes).unwrap().steps, round_token_steps(&wide, per_octave).unwrap());
        let c = TokenGrid::new(FeatureShape::ntc(1, 2, 3), 1).unwrap();
        let enc = encode_with(&[0.5f32; 6], &c, StepSpec::Channel(&wide), Bits::B8, StepCoding::LogGrid { per_octave }).unwrap();
        assert_eq!(decode(&enc.bytes).unwrap().channel_steps, round_token_steps(&wide, per_octave).unwrap());
    }
}

/// Builds the version 1 file of a version 2 `token-f16` file (the old layout, byte by byte as
/// the format document describes it).
fn to_v1(v2: &[u8]) -> Vec<u8> {
    let d = decode(v2).unwrap();
    assert_eq!(d.step_mode, StepMode::Token(StepCoding::F16));
    let nd = v2[9] as usize;
    let s = d.sections;
    let mut b = Vec::new();
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&v2[6..10]); // dtype, layout, bits, ndim
    b.extend_from_slice(&v2[14..16]); // step exponent
    b.extend_from_slice(&v2[16..20]); // patch
    b.extend_from_slice(&v2[24..32]); // tokens
    b.extend_from_slice(&v2[32..40]); // elements
    b.extend_from_slice(&v2[20..24]); // alphabet
    b.extend_from_slice(&v2[48..52]); // table length
    b.extend_from_slice(&v2[52..52 + 8 * nd]); // dims
    let bd = s.boundaries();
    b.extend_from_slice(&v2[bd[1]..bd[4]]); // table, steps, payload length and payload
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn version_1_files_still_decode() {
    for (i, g) in grids().into_iter().enumerate() {
        let x = feature(g.numel(), i as u32);
        let st = steps_for(g.tokens(), i as u32);
        let enc = encode_with_format(&x, &g, StepSpec::Token(&st), Bits::B8, StepCoding::F16, &Format::v2()).unwrap();
        let v1 = to_v1(&enc.bytes);
        assert_eq!(v1.len(), enc.bytes.len() - (FIXED_HEADER - FIXED_HEADER_V1));
        let d = decode(&v1).unwrap();
        assert_eq!(d.version, 1);
        assert_eq!(d.step_mode, StepMode::Token(StepCoding::F16));
        assert_eq!(d.recon, ElemVec::from(enc.recon.clone()));
        assert_eq!(d.steps, enc.steps);
        assert_eq!(d.symbols, enc.symbols);
        assert_eq!(d.sections.header, FIXED_HEADER_V1 + 8 * ndim(g.shape.layout));
        assert_eq!(d.sections.steps, 2 * g.tokens());
        assert_eq!(d.sections.total(), v1.len());
        // Corrupt version 1 files are errors too.
        for k in 0..v1.len() {
            let mut c = v1.clone();
            c[k] ^= 0x04;
            assert!(matches!(decode(&c), Err(Error::Io(m)) if m.starts_with("fjq:")), "{k}");
        }
        for cut in 0..v1.len() {
            assert!(matches!(decode(&v1[..cut]), Err(Error::Io(m)) if m.starts_with("fjq:")), "{cut}");
        }
    }
}

fn recrc(b: &mut [u8]) {
    let n = b.len() - 4;
    let c = crc32fast::hash(&b[..n]);
    b[n..].copy_from_slice(&c.to_le_bytes());
}

fn io_err(b: &[u8]) -> String {
    match decode(b) {
        Err(Error::Io(m)) if m.starts_with("fjq:") => m,
        other => panic!("expected an fjq error, got {other:?}"),
    }
}

/// A version 2 file (the container the tests below take apart by its offsets).
fn encode_v2<E: Element>(x: &[E], g: &TokenGrid, spec: StepSpec, bits: Bits, coding: StepCoding) -> Result<Encoded<E>> {
    encode_with_format(x, g, spec, bits, coding, &Format::v2())
}

#[test]
fn corrupt_files_are_errors_not_panics() {
    let g = TokenGrid::new(FeatureShape::nchw(1, 3, 4, 4), 2).unwrap();
    let gc = TokenGrid::new(FeatureShape::ntc(1, 5, 3), 1).unwrap();
    let x = feature(g.numel(), 9);
    let st = steps_for(g.tokens(), 9);
    let cst = steps_for(3, 10);
    let files = [
        encode_v2(&x, &g, StepSpec::Tensor(0.05), Bits::B8, StepCoding::default()).unwrap().bytes,
        encode_v2(&x, &g, StepSpec::Token(&st), Bits::B8, StepCoding::default()).unwrap().bytes,
        encode_v2(&x, &g, StepSpec::Token(&st), Bits::B16, StepCoding::F16).unwrap().bytes,
        encode_v2(&x[..15], &gc, StepSpec::Channel(&cst), Bits::B8, StepCoding::default()).unwrap().bytes,
        encode_v2(&x[..15], &gc, StepSpec::Channel(&cst), Bits::B8, StepCoding::F16).unwrap().bytes,
    ];
    for b in &files {
        for i in 0..b.len() {
            for mask in [0x01u8, 0x10, 0x80] {
                let mut c = b.clone();
                c[i] ^= mask;
                let m = io_err(&c);
                match i {
                    0..=3 => assert!(m.contains("bad magic"), "{i}: {m}"),
                    // 2 → 3 is another readable version, whose header then does not hold.
                    4 | 5 => assert!(m.contains("version") || m.contains("inconsistent header"), "{i}: {m}"),
                    _ => assert!(m.contains("checksum mismatch"), "{i}: {m}"),
                }
            }
        }
        for cut in 0..b.len() {
            let m = io_err(&b[..cut]);
            if cut >= 6 {
                assert!(m.contains("truncated"), "cut {cut}: {m}");
            }
        }
        // With a valid checksum every header byte of the step fields and every step-section byte
        // is checked: each change is an error or (for a still-valid index) another reconstruction,
        // never a panic.
        let d = decode(b).unwrap();
        let bd = d.sections.boundaries();
        for i in (6..FIXED_HEADER).chain(bd[2]..bd[3]) {
            for v in [0u8, 1, 2, 3, 7, 0x40, 0x80, 0xff] {
                let mut c = b.clone();
                c[i] = v;
                recrc(&mut c);
                let _ = decode(&c);
            }
        }
    }
    // Version 4 and later, and version 0, are rejected.
    for v in [0u16, 4, 0xffff] {
        let mut c = files[0].clone();
        c[4..6].copy_from_slice(&v.to_le_bytes());
        recrc(&mut c);
        assert!(io_err(&c).contains(&format!("unsupported .fjq version {v}")));
    }
    // Inconsistent step fields with a valid checksum: named errors.
    let put = |f: usize, off: usize, v: &[u8]| {
        let mut c = files[f].clone();
        c[off..off + v.len()].copy_from_slice(v);
        recrc(&mut c);
        io_err(&c)
    };
    assert!(put(0, 10, &[3]).contains("step scope 3"));
    assert!(put(0, 11, &[1]).contains("grid size 0"));
    assert!(put(0, 14, &[1]).contains("exponent 1"));
    assert!(put(0, 13, &[1]).contains("reserved"));
    assert!(put(1, 11, &[0]).contains("step coding 0"));
    assert!(put(1, 12, &[3]).contains("grid size 3"));
    assert!(put(1, 12, &[128]).contains("grid size 128"));
    assert!(put(1, 12, &[0]).contains("grid size 0"));
    assert!(put(2, 12, &[16]).contains("grid size 16"));
    assert!(put(1, 14, &300i16.to_le_bytes()).contains("exponent"));
    assert!(put(1, 40, &u64::MAX.to_le_bytes()).contains("inconsistent header"));
    assert!(put(1, 40, &0u64.to_le_bytes()).contains("inconsistent header"));
    assert!(put(0, 10, &[1]).contains("step scope 1"));
    // A tensor step of zero, infinity or a subnormal.
    let sb = decode(&files[0]).unwrap().sections.boundaries()[2];
    for bad in [0.0f32, f32::INFINITY, f32::NAN, 1e-40, -1.0] {
        assert!(put(0, sb, &bad.to_le_bytes()).contains("tensor step"), "{bad}");
    }
    // Token-grid section: a huge alphabet, a table longer than the section.
    let sb = decode(&files[1]).unwrap().sections.boundaries()[2];
    assert!(put(1, sb, &100_000u32.to_le_bytes()).contains("alphabet"));
    assert!(put(1, sb + 4, &u32::MAX.to_le_bytes()).contains("table"));
    // Channel section: a varint over 5 bytes, an index off the grid.
    let sb = decode(&files[3]).unwrap().sections.boundaries()[2];
    assert!(put(3, sb, &[0xff, 0xff, 0xff]).contains("step"));
}

/// A smooth random map of `t` token steps: a few random low-frequency waves in the log domain.
fn smooth_steps(h: usize, w: usize, seed: u32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    let waves: Vec<[f32; 4]> = (0..4).map(|_| [r.uniform() * 0.3, r.uniform() * 0.3, r.uniform() * 6.3, 0.5 + r.uniform()]).collect();
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            let l: f32 = waves.iter().map(|v| v[3] * (v[0] * y as f32 + v[1] * x as f32 + v[2]).sin()).sum();
            out.push(0.05 * (l * 0.5).exp2());
        }
    }
    out
}

#[test]
fn step_side_information_is_small() {
    let (h, w) = (32, 32);
    let g = TokenGrid::new(FeatureShape::nchw(1, 16, h, w), 1).unwrap();
    let x = feature(g.numel(), 4);
    let t = g.tokens() as f64;
    let smooth = smooth_steps(h, w, 1);
    let mut r = Rng::new(2);
    let random: Vec<f32> = (0..g.tokens()).map(|_| 0.05 * (r.uniform() * 3.0).exp2()).collect();
    let tensor = encode_with(&x, &g, StepSpec::Tensor(0.05), Bits::B8, StepCoding::default()).unwrap();
    assert!(tensor.sections.steps <= 8);
    eprintln!("tensor: {} step bytes", tensor.sections.steps);
    let mut smooth16 = 0.0;
    for (name, st) in [("smooth", &smooth), ("random (3 octaves)", &random)] {
        for coding in [
            StepCoding::LogGrid { per_octave: 4 },
            StepCoding::LogGrid { per_octave: 16 },
            StepCoding::LogGrid { per_octave: 64 },
            StepCoding::F16,
        ] {
            let enc = encode_with(&x, &g, StepSpec::Token(st), Bits::B8, coding).unwrap();
            let per_token = enc.sections.steps as f64 / t;
            eprintln!(
                "{name} steps, {coding:?}: {} step bytes for {t} tokens = {:.3} bytes/token ({:.3} bits/element of {:.3})",
                enc.sections.steps, per_token, enc.rate.step_bits_per_element, enc.rate.bits_per_element
            );
            assert!((enc.rate.step_bits_per_token - 8.0 * per_token).abs() < 1e-9);
            if name == "smooth" && coding == StepCoding::default() {
                smooth16 = per_token;
            }
        }
    }
    assert!(smooth16 < 0.5, "smooth steps on the default grid: {smooth16} bytes/token (f16: 2)");
    let cst = steps_for(16, 3);
    let ch = encode_with(&x, &g, StepSpec::Channel(&cst), Bits::B8, StepCoding::default()).unwrap();
    eprintln!("channel: {} step bytes for 16 channels", ch.sections.steps);
    assert!(ch.sections.steps <= 2 * 16);
}

#[test]
fn bad_inputs_are_errors() {
    let g = TokenGrid::new(FeatureShape::ntc(1, 3, 4), 1).unwrap();
    let x = feature(12, 1);
    assert!(matches!(encode(&x, &g, &[1.0, 1.0], Bits::B8), Err(Error::Shape(_))));
    assert!(matches!(encode(&x[..11], &g, &[1.0; 3], Bits::B8), Err(Error::Shape(_))));
    assert!(matches!(encode(&x, &g, &[1.0, 0.0, 1.0], Bits::B8), Err(Error::Arg(_))));
    assert!(matches!(encode(&x, &g, &[0.0; 3], Bits::B8), Err(Error::Arg(_))));
    assert!(matches!(encode_with(&x, &g, StepSpec::Channel(&[1.0; 3]), Bits::B8, StepCoding::default()), Err(Error::Shape(_))));
    assert!(matches!(encode_with(&x, &g, StepSpec::Tensor(f32::NAN), Bits::B8, StepCoding::default()), Err(Error::Arg(_))));
    assert!(matches!(encode_with(&x, &g, StepSpec::Tensor(1e-40), Bits::B8, StepCoding::default()), Err(Error::Arg(_))));
    let bad = StepCoding::LogGrid { per_octave: 5 };
    assert!(matches!(encode_with(&x, &g, StepSpec::Token(&[1.0, 2.0, 3.0]), Bits::B8, bad), Err(Error::Arg(_))));
    let mut xn = x.clone();
    xn[5] = f32::NAN;
    let e = encode_with(&xn, &g, StepSpec::Channel(&[1.0; 4]), Bits::B8, StepCoding::default()).unwrap_err();
    assert!(matches!(e, Error::NonFinite { index: 5, .. }), "{e}");
    assert!(encode_with(&xn, &g, StepSpec::Token(&[1.0, 2.0, 3.0]), Bits::B8, StepCoding::default()).is_err());
    assert!(decode(b"").is_err());
}
