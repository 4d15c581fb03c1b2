//! Chooses version 3's chunk size and lane count by measurement: encodes and decodes the codec
//! benchmark's synthetic feature (`benches/codec_feature.rs`) with every combination, best of
//! three, and prints throughputs and the file size against version 2.
//! `cargo run --release --example codec_sweep --no-default-features --features codec [MiB]`
//! With `FEATURE=f.npy` (a 4-D little-endian f32 array, NCHW) that feature is coded instead, with
//! per-token steps `Δ_t = 0.25 · rms_t` (its token's RMS over the channels).
use featjnd_kernels::codec::{self, Format, StepCoding, StepSpec};
use featjnd_kernels::geom::{FeatureShape, TokenGrid};
use featjnd_kernels::Bits;
use std::time::Instant;

#[path = "../benches/support/codec_feature.rs"]
mod codec_feature;

fn best<T>(k: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut t = f64::MAX;
    let mut out = None;
    for _ in 0..k {
        let s = Instant::now();
        let v = f();
        t = t.min(s.elapsed().as_secs_f64());
        out = Some(v);
    }
    (t, out.unwrap())
}

/// A 4-D little-endian f32 `.npy` (format 1.0, C order): the values and the shape.
fn read_npy(path: &str) -> (Vec<f32>, [usize; 4]) {
    let b = std::fs::read(path).expect("reading the .npy");
    assert!(b.starts_with(b"\x93NUMPY") && b[6] == 1, "a version 1 .npy");
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hl]).unwrap();
    assert!(header.contains("'<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape = &header[header.find("'shape': (").unwrap() + 10..];
    let dims: Vec<usize> = shape[..shape.find(')').unwrap()].split(',').filter_map(|d| d.trim().parse().ok()).collect();
    let x = b[10 + hl..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (x, [dims[0], dims[1], dims[2], dims[3]])
}

/// `Δ_t = 0.25 · rms_t` over the channels of each (sample, y, x) token.
fn rms_steps(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let mut s = vec![0.0f64; n * h * w];
    for (i, &v) in x.iter().enumerate() {
        let (b, hw) = (i / (c * h * w), i % (h * w));
        s[b * h * w + hw] += (v as f64) * (v as f64);
    }
    s.iter().map(|&e| (0.25 * (e / c as f64).sqrt()).max(1e-3) as f32).collect()
}

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let (x, [n, c, h, w], steps) = match std::env::var("FEATURE") {
        Ok(p) => {
            let (x, d) = read_npy(&p);
            let s = rms_steps(&x, d);
            (x, d, s)
        }
        Err(_) => codec_feature::feature(mib, 7),
    };
    let grid = TokenGrid::new(FeatureShape::nchw(n, c, h, w), 1).unwrap();
    let numel = x.len() as f64;
    let spec = StepSpec::Token(&steps);
    let coding = StepCoding::default();
    let reps: usize = std::env::var("REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let only_encode = std::env::var("ONLY").is_ok_and(|v| v == "encode");
    let (t2, v2) = best(1, || codec::encode_with_format(&x, &grid, spec, Bits::B8, coding, &Format::v2()).unwrap());
    let (td2, _) = best(1, || codec::decode(&v2.bytes).unwrap());
    let mib = x.len() as f64 * 4.0 / (1 << 20) as f64;
    println!(
        "{mib:.1} MiB [{n},{c},{h},{w}] v2: {} bytes, {:.4} bits/elem, H = {:.4}; encode {:.0} M/s, decode {:.0} M/s",
        v2.bytes.len(),
        v2.rate.bits_per_element,
        v2.rate.entropy_bits,
        numel / t2 / 1e6,
        numel / td2 / 1e6
    );
    let chunks: Vec<usize> =
        std::env::var("CHUNKS").map(|s| s.split(',').map(|v| v.parse().unwrap()).collect()).unwrap_or(vec![1 << 14, 1 << 16, 1 << 18]);
    let lanes: Vec<usize> = std::env::var("LANES").map(|s| s.split(',').map(|v| v.parse().unwrap()).collect()).unwrap_or(vec![8, 16, 32]);
    for &chunk in &chunks {
        for &l in &lanes {
            let f = Format { version: 3, chunk_symbols: chunk, lanes: l };
            let (te, e) = best(reps, || codec::encode_file(&x, &grid, spec, Bits::B8, coding, &f).unwrap());
            if only_encode {
                println!("chunk {chunk:>7} lanes {l:>2}: {} bytes; encode {:.0} M/s", e.bytes.len(), numel / te / 1e6);
                continue;
            }
            let (td, d) = best(reps, || codec::decode_recon(&e.bytes).unwrap());
            let (tf, _) = best(1, || codec::decode(&e.bytes).unwrap());
            let mut buf = vec![0.0f32; x.len()];
            let (ti, _) = best(reps, || codec::decode_into(&e.bytes, &mut buf).unwrap());
            assert_eq!(d.recon.len(), x.len());
            println!(
                "chunk {chunk:>7} lanes {l:>2}: {} bytes ({:+.3}% vs v2); encode {:.0} M/s, decode_recon {:.0} M/s, decode_into {:.0} M/s, decode (full) {:.0} M/s",
                e.bytes.len(),
                100.0 * (e.bytes.len() as f64 / v2.bytes.len() as f64 - 1.0),
                numel / te / 1e6,
                numel / td / 1e6,
                numel / ti / 1e6,
                numel / tf / 1e6
            );
        }
    }
}
