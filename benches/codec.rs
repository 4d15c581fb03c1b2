//! The `.fjq` codec (docs/fjq-format.md): encode (quantization included) and decode of f32 features of
//! 1, 16 and 256 MiB (`benches/support/codec_feature.rs`: NCHW `[N, 256, H, W]`, Gaussian values
//! under a smooth per-token scale, per-token steps on the default log grid, 8-bit symbols, about
//! 4.1 bits per element), in one run side by side:
//!
//! - `memcpy`: the byte floor, a copy of the feature's f32 bytes into a reused buffer;
//! - `v3`: version 3 through the fused paths (`codec::encode_file`, `codec::decode_recon`);
//! - `v3_into` (decode): `codec::decode_into` a reused buffer, as the floor's copy (no fresh pages);
//! - `v3_full`: version 3 through `codec::encode_with` / `codec::decode` (symbols, x̂ and rate);
//! - `v2`: version 2 (`Format::v2()`, constriction's ANS) through the same full paths.
//!
//! Throughput is in elements (= symbols). Env: FEATJND_BENCH_MAX_MIB caps the sizes (default 256),
//! FEATJND_BENCH_V2=0 leaves out version 2 (slow at 256 MiB).
//! `cargo bench -p featjnd-kernels --no-default-features --features codec --bench codec`
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use featjnd_kernels::codec::{self, Format, StepCoding, StepSpec};
use featjnd_kernels::geom::{FeatureShape, TokenGrid};
use featjnd_kernels::Bits;
use std::hint::black_box;
use std::time::Duration;

#[path = "support/codec_feature.rs"]
mod codec_feature;

fn sizes_mib() -> Vec<usize> {
    let max: usize = std::env::var("FEATJND_BENCH_MAX_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    [1usize, 16, 256].into_iter().filter(|&m| m <= max).collect()
}

/// A group of 10 flat samples over `numel` elements (longer for the 256 MiB feature).
fn group<'a>(c: &'a mut Criterion, name: &str, big: bool, numel: u64) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(if big { 4 } else { 2 }));
    g.throughput(Throughput::Elements(numel));
    g
}

fn bench(c: &mut Criterion) {
    let with_v2 = std::env::var("FEATJND_BENCH_V2").map_or(true, |v| v != "0");
    for mib in sizes_mib() {
        let (x, [n, ch, h, w], steps) = codec_feature::feature(mib, 7);
        let grid = TokenGrid::new(FeatureShape::nchw(n, ch, h, w), 1).unwrap();
        let spec = StepSpec::Token(&steps);
        let coding = StepCoding::default();
        let numel = x.len() as u64;
        let big = mib >= 256;
        let v3 = codec::encode_file(&x, &grid, spec, Bits::B8, coding, &Format::default()).unwrap();
        let v2 = codec::encode_with_format(&x, &grid, spec, Bits::B8, coding, &Format::v2()).unwrap();
        eprintln!(
            "codec {mib} MiB [{n},{ch},{h},{w}]: v3 {} bytes, v2 {} bytes ({:+.3}%), {:.4} vs {:.4} bits/element, entropy {:.4}",
            v3.bytes.len(),
            v2.bytes.len(),
            100.0 * (v3.bytes.len() as f64 / v2.bytes.len() as f64 - 1.0),
            v3.rate.bits_per_element,
            v2.rate.bits_per_element,
            v3.rate.entropy_bits
        );
        let mut dst = vec![0.0f32; x.len()];

        let mut g = group(c, "codec_encode", big, numel);
        g.bench_with_input(BenchmarkId::new("memcpy", mib), &mib, |b, _| b.iter(|| dst.copy_from_slice(black_box(&x))));
        g.bench_with_input(BenchmarkId::new("v3", mib), &mib, |b, _| {
            b.iter(|| codec::encode_file(black_box(&x), &grid, spec, Bits::B8, coding, &Format::default()).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("v3_full", mib), &mib, |b, _| {
            b.iter(|| codec::encode_with(black_box(&x), &grid, spec, Bits::B8, coding).unwrap())
        });
        if with_v2 {
            g.bench_with_input(BenchmarkId::new("v2", mib), &mib, |b, _| {
                b.iter(|| codec::encode_with_format(black_box(&x), &grid, spec, Bits::B8, coding, &Format::v2()).unwrap())
            });
        }
        g.finish();

        let mut g = group(c, "codec_decode", big, numel);
        g.bench_with_input(BenchmarkId::new("memcpy", mib), &mib, |b, _| b.iter(|| dst.copy_from_slice(black_box(&x))));
        g.bench_with_input(BenchmarkId::new("v3", mib), &mib, |b, _| b.iter(|| codec::decode_recon(black_box(&v3.bytes)).unwrap()));
        g.bench_with_input(BenchmarkId::new("v3_into", mib), &mib, |b, _| {
            b.iter(|| codec::decode_into(black_box(&v3.bytes), &mut dst).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("v3_full", mib), &mib, |b, _| b.iter(|| codec::decode(black_box(&v3.bytes)).unwrap()));
        if with_v2 {
            g.bench_with_input(BenchmarkId::new("v2", mib), &mib, |b, _| b.iter(|| codec::decode(black_box(&v2.bytes)).unwrap()));
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
