//! Fused ops vs the same computation as eager tch ops vs a plain copy of the op's floor bytes,
//! on CPU (always) and CUDA (where a GPU exists), for features of 1, 16 and 256 MiB (f32 NCHW
//! [N, 256, 32, 32]). Throughput is reported against the op's byte floor (SPEC-level traffic), so
//! criterion's GB/s for the three variants compare directly; `scripts/bench-table.py` turns the
//! results into the BENCHMARKS.md table with the two ratios.
//!
//! `perturb_*` also times the in-place forms (`*_inplace`: `perturb_` on a copy of x restored
//! outside the timed region). `noise_cpu` times the Philox generator alone (`philox::fill`, one
//! thread, f32 into a reused buffer; floor: 4 B written per element) beside torch's `normal_` /
//! `uniform_` (all threads) and a copy of a buffer of the same size.
//!
//! Env: FEATJND_BENCH_MAX_MIB caps the sizes (default 256), FEATJND_BENCH_DEVICES=cpu,cuda.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use featjnd_kernels::ops::{self, Noise, QuantizeOptions};
use featjnd_kernels::{philox, Layout, NoiseKind, Reduce, Strategy};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

const BUDGET: f64 = 0.01;

fn devices() -> Vec<Device> {
    let want = std::env::var("FEATJND_BENCH_DEVICES").unwrap_or_else(|_| "cpu,cuda".into());
    let mut v = Vec::new();
    if want.contains("cpu") {
        v.push(Device::Cpu);
    }
    if want.contains("cuda") {
        featjnd_kernels::cuda::load_torch_cuda();
        match featjnd_kernels::cuda::available() {
            Ok(()) if tch::Cuda::is_available() => v.push(Device::Cuda(0)),
            Ok(()) => eprintln!("bench: libtorch sees no CUDA; GPU benches skipped"),
            Err(e) => eprintln!("bench: GPU benches skipped: {e}"),
        }
    }
    v
}

fn sizes_mib() -> Vec<usize> {
    let max: usize = std::env::var("FEATJND_BENCH_MAX_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    [1usize, 16, 256].into_iter().filter(|&m| m <= max).collect()
}

fn sync(d: Device) {
    if let Device::Cuda(i) = d {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The eager-tch JND step allocation + quantize + dequantize + per-token SSE (what users write).
fn eager_quantize(x: &Tensor, j: &Tensor) -> (Tensor, Tensor, Tensor) {
    let jt = j.mean_dim(1, true, Kind::Float);
    let t = jt.numel() as f64;
    let alpha = (jt.square().sum(Kind::Float).reciprocal() * (12.0 * BUDGET * t)).sqrt();
    let step = jt * alpha;
    let q = (x / &step).round().clamp(-127.0, 127.0);
    let recon = &q * &step;
    let sse = (x - &recon).square().sum_dim_intlist(1, false, Kind::Float);
    (q.to_kind(Kind::Int8), recon, sse)
}

/// The eager-tch matched-NRMSE perturbation (stores the noise, as users do).
fn eager_perturb(x: &Tensor, j: &Tensor, r: f64) -> Tensor {
    let n = x.size()[0];
    let e = j * x.randn_like();
    let nx = x.reshape([n, -1]).norm_scalaropt_dim(2, [1], false);
    let ne = e.reshape([n, -1]).norm_scalaropt_dim(2, [1], false);
    let s = (nx / ne * r).reshape([n, 1, 1, 1]);
    x + s * e
}

/// The memory floor: a plain copy moving `bytes` (read + write) on the device.
fn copy_floor(g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>, d: Device, mib: usize, bytes: u64) {
    let src = Tensor::empty([(bytes / 2) as i64], (Kind::Uint8, d)).fill_(1);
    let mut dst = src.empty_like();
    g.bench_with_input(BenchmarkId::new("copy_floor", mib), &mib, |b, _| {
        b.iter(|| {
            dst.copy_(&src);
            sync(d);
        })
    });
}

fn bench(c: &mut Criterion) {
    for d in devices() {
        let dn = if d == Device::Cpu { "cpu" } else { "cuda" };
        for mib in sizes_mib() {
            let n = (mib as i64 * (1 << 20) / 4) / (256 * 32 * 32);
            let numel = n * 256 * 32 * 32;
            tch::manual_seed(1);
            let x = Tensor::randn([n, 256, 32, 32], (Kind::Float, d));
            let j = Tensor::rand([n, 256, 32, 32], (Kind::Float, d)) + 0.1;
            let opts = QuantizeOptions { histogram: false, ..Default::default() };

            // Quantize chain: floor = read J, read x, write x̂ (4 B each) + write symbol (1 B).
            let qbytes = 13 * numel as u64;
            let mut g = c.benchmark_group(format!("quantize_jnd_{dn}"));
            g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(if mib >= 256 {
                6
            } else {
                2
            }));
            g.throughput(Throughput::Bytes(qbytes));
            // Outputs reused across iterations, as a serving loop would (fresh large CPU tensors
            // pay page faults on first touch); `fused_alloc` allocates them every call.
            let sym = Tensor::empty([n, 256, 32, 32], (Kind::Int8, d));
            let rec = x.empty_like();
            let sse = Tensor::empty([n * 32 * 32], (Kind::Float, d));
            let bufs = ops::QuantizeBuffers { symbols: Some(&sym), recon: Some(&rec), token_sse: Some(&sse) };
            g.bench_with_input(BenchmarkId::new("fused", mib), &mib, |b, _| {
                b.iter(|| {
                    let r =
                        ops::quantize_with_jnd_into(&x, &j, Layout::Nchw, 1, Reduce::Mean, BUDGET, Strategy::Jnd, &opts, &bufs).unwrap();
                    sync(d);
                    r
                })
            });
            g.bench_with_input(BenchmarkId::new("fused_alloc", mib), &mib, |b, _| {
                b.iter(|| {
                    let r = ops::quantize_with_jnd(&x, &j, Layout::Nchw, 1, Reduce::Mean, BUDGET, Strategy::Jnd, &opts).unwrap();
                    sync(d);
                    r
                })
            });
            g.bench_with_input(BenchmarkId::new("eager_tch", mib), &mib, |b, _| {
                b.iter(|| {
                    let r = eager_quantize(&x, &j);
                    sync(d);
                    r
                })
            });
            copy_floor(&mut g, d, mib, qbytes);
            g.finish();

            // Perturbation: floor = x and J read twice, x' written (20 B per element).
            let pbytes = 20 * numel as u64;
            let mut g = c.benchmark_group(format!("perturb_{dn}"));
            g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(if mib >= 256 {
                8
            } else {
                2
            }));
            g.throughput(Throughput::Bytes(pbytes));
            let out = x.empty_like();
            for kind in [NoiseKind::Gaussian, NoiseKind::Uniform] {
                let spec = Noise { kind, seed: 3, subsequence: 0 };
                let name = if kind == NoiseKind::Gaussian { "fused_gaussian" } else { "fused_uniform" };
                g.bench_with_input(BenchmarkId::new(name, mib), &mib, |b, _| {
                    b.iter(|| {
                        let r = ops::perturb_into(&x, Some(&j), 0.1, spec, &out).unwrap();
                        sync(d);
                        r
                    })
                });
            }
            // In place: x restored from a pristine copy before every call, outside the timing (on
            // the CPU by a plain memcpy: a torch copy_ would leave libgomp's threads spinning
            // against rayon's during the timed call).
            let mut xi = x.copy();
            let x_host: Vec<f32> = if d == Device::Cpu { Vec::try_from(x.flatten(0, -1)).unwrap() } else { Vec::new() };
            for kind in [NoiseKind::Gaussian, NoiseKind::Uniform] {
                let spec = Noise { kind, seed: 3, subsequence: 0 };
                let name = if kind == NoiseKind::Gaussian { "fused_gaussian_inplace" } else { "fused_uniform_inplace" };
                g.bench_with_input(BenchmarkId::new(name, mib), &mib, |b, _| {
                    b.iter_custom(|iters| {
                        let mut t = Duration::ZERO;
                        for _ in 0..iters {
                            if d == Device::Cpu {
                                // SAFETY: `xi` is a contiguous CPU f32 tensor of `numel` elements
                                // (a copy of `x`), `x_host` holds `numel` f32, and nothing else
                                // uses `xi` during the copy.
                                unsafe { std::ptr::copy_nonoverlapping(x_host.as_ptr(), xi.data_ptr() as *mut f32, numel as usize) };
                            } else {
                                xi.copy_(&x);
                                sync(d);
                            }
                            let t0 = Instant::now();
                            let r = ops::perturb_(&mut xi, Some(&j), 0.1, spec).unwrap();
                            sync(d);
                            t += t0.elapsed();
                            std::hint::black_box(r);
                        }
                        t
                    })
                });
            }
            g.bench_with_input(BenchmarkId::new("fused_gaussian_alloc", mib), &mib, |b, _| {
                b.iter(|| {
                    let r = ops::perturb(&x, Some(&j), 0.1, Noise { kind: NoiseKind::Gaussian, seed: 3, subsequence: 0 }).unwrap();
                    sync(d);
                    r
                })
            });
            g.bench_with_input(BenchmarkId::new("eager_tch", mib), &mib, |b, _| {
                b.iter(|| {
                    let r = eager_perturb(&x, &j, 0.1);
                    sync(d);
                    r
                })
            });
            copy_floor(&mut g, d, mib, pbytes);
            g.finish();

            // The noise alone (CPU): Philox on one thread vs torch's generators on all threads.
            if d == Device::Cpu && mib <= 16 {
                noise_bench(c, mib, numel as usize);
            }
        }
    }
}

/// `philox::fill` (one thread) vs torch's in-place `normal_`/`uniform_` (all threads) vs copying
/// a buffer of the same size (floor: 4 B written per element).
fn noise_bench(c: &mut Criterion, mib: usize, numel: usize) {
    let mut g = c.benchmark_group("noise_cpu");
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(4 * numel as u64));
    let mut v = vec![0.0f32; numel];
    for (kind, name) in [(NoiseKind::Gaussian, "philox_gaussian_1thread"), (NoiseKind::Uniform, "philox_uniform_1thread")] {
        g.bench_with_input(BenchmarkId::new(name, mib), &mib, |b, _| b.iter(|| philox::fill(std::hint::black_box(&mut v), 0, 3, 0, kind)));
    }
    let mut t = Tensor::empty([numel as i64], (Kind::Float, Device::Cpu));
    g.bench_with_input(BenchmarkId::new("tch_normal", mib), &mib, |b, _| {
        b.iter(|| {
            let _ = t.normal_(0.0, 1.0);
        })
    });
    g.bench_with_input(BenchmarkId::new("tch_uniform", mib), &mib, |b, _| {
        b.iter(|| {
            let _ = t.uniform_(-1.7320508, 1.7320508);
        })
    });
    copy_floor(&mut g, Device::Cpu, mib, 8 * numel as u64);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
