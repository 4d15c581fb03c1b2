//! Fused ops vs the same computation as eager tch ops vs a plain copy of the op's floor bytes,
//! on CPU (always) and CUDA (where a GPU exists), for features of 1, 16 and 256 MiB (f32 NCHW
//! [N, 256, 32, 32]). Throughput is reported against the op's byte floor (the contract's minimum traffic), so
//! criterion's GB/s for the three variants compare directly; `scripts/bench-table.py` turns the
//! results into the BENCHMARKS.md table with the two ratios.
//!
//! `perturb_*` also times the in-place forms (`*_inplace`: `perturb_` on a copy of x restored
//! outside the timed region). `noise_cpu` times the Philox generator alone (`philox::fill`, one
//! thread, f32 into a reused buffer; floor: 4 B written per element) beside torch's `normal_` /
//! `uniform_` (all threads) and a copy of a buffer of the same size.
//!
//! `paths_*` (1 and 16 MiB) times the pieces and variants of the chain one by one,
//! with 8-bit symbols, reconstruction and token errors reused: the token tolerance alone
//! (`token_tolerance`), the quantizer with given steps in NCHW without and with its histogram
//! (`quantize_nchw`, `quantize_nchw_hist`), with 16-bit symbols (`quantize_nchw_b16`), on the same
//! elements as NTC `[N, 1024, 256]` (`quantize_ntc`), the perturbation without J in both noises
//! (`perturb_gaussian_no_j`, `perturb_uniform_no_j`), and the noise alone (`noise_gaussian`).
//! Each specialised kernel module of the GPU path is one of these rows.
//!
//! Env: FEATJND_BENCH_MAX_MIB caps the sizes (default 256), FEATJND_BENCH_DEVICES=cpu,cuda.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use featjnd_kernels::ops::{self, Noise, QuantizeOptions};
use featjnd_kernels::{philox, Bits, Layout, NoiseKind, Reduce, Strategy};
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

/// The serving path (contract §8) at 1 and 16 MiB: the fused JND quantization as the
/// synchronous call (`sync_call`), as the sync-free call with a decode (one sync) per call
/// (`async_decode_each`), and as a loop of sync-free calls with one sync at the end
/// (`async_loop`, the time per call); on CUDA also the same chain captured into a CUDA graph and
/// replayed (`graph_replay`, per call). Then a batch of 16 features of mixed sizes (1 K to 37 K
/// f32 elements, 1.15 MiB in all) in one call (`batched`) against a loop of 16 synchronous calls (`loop_sync`) and of 16
/// sync-free calls with one decode each (`loop_async`).
fn serving_bench(c: &mut Criterion) {
    for d in devices() {
        let dn = if d == Device::Cpu { "cpu" } else { "cuda" };
        let opts = QuantizeOptions { histogram: false, ..Default::default() };
        for mib in [1usize, 16].into_iter().filter(|&m| sizes_mib().iter().any(|&s| s >= m)) {
            let n = (mib as i64 * (1 << 20) / 4) / (256 * 32 * 32);
            let numel = n * 256 * 32 * 32;
            let x = bench_feature(&[n, 256, 32, 32], 1, d);
            let j = bench_feature(&[n, 256, 32, 32], 2, d).abs() + 0.1;
            let t = n * 32 * 32;
            let mut g = c.benchmark_group(format!("serving_{dn}"));
            g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
            g.throughput(Throughput::Bytes(13 * numel as u64));
            let sym = Tensor::empty([n, 256, 32, 32], (Kind::Int8, d));
            let rec = x.empty_like();
            let sse = Tensor::empty([t], (Kind::Float, d));
            let steps = Tensor::empty([t], (Kind::Float, d));
            let bufs = ops::QuantizeBuffers { symbols: Some(&sym), recon: Some(&rec), token_sse: Some(&sse) };
            let ws = ops::stats_buffer(ops::quantize_with_jnd_stats_slots(opts.bits, t as usize), d).unwrap();
            let call = || {
                ops::quantize_with_jnd_async(&x, &j, Layout::Nchw, 1, Reduce::Mean, BUDGET, Strategy::Jnd, &opts, &bufs, &steps, &ws)
                    .unwrap()
            };
            g.bench_with_input(BenchmarkId::new("sync_call", mib), &mib, |b, _| {
                b.iter(|| ops::quantize_with_jnd_into(&x, &j, Layout::Nchw, 1, Reduce::Mean, BUDGET, Strategy::Jnd, &opts, &bufs).unwrap())
            });
            g.bench_with_input(BenchmarkId::new("async_decode_each", mib), &mib, |b, _| b.iter(|| call().decode().unwrap()));
            g.bench_with_input(BenchmarkId::new("async_loop", mib), &mib, |b, _| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        let _ = std::hint::black_box(call());
                    }
                    sync(d);
                    t0.elapsed()
                })
            });
            if let Device::Cuda(o) = d {
                graph_bench(&mut g, o, mib, &x, &j, &bufs, &steps, &ws);
            }
            g.finish();
        }
        batch_bench(c, d, dn, &opts);
    }
}

/// A feature from Philox (no torch global RNG): Gaussian values on `d`.
fn bench_feature(sizes: &[i64], seed: u64, d: Device) -> Tensor {
    let mut v = vec![0.0f32; sizes.iter().product::<i64>() as usize];
    philox::fill(&mut v, 0, seed, 0, NoiseKind::Gaussian);
    Tensor::from_slice(&v).reshape(sizes).to_device(d)
}

/// The fused chain captured into a CUDA graph on a stream of our own (with the raw launchers, as
/// a server embedding the C ABI would), then replayed: the time per replay.
#[allow(clippy::too_many_arguments)]
fn graph_bench(
    g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    o: usize,
    mib: usize,
    x: &Tensor,
    j: &Tensor,
    bufs: &ops::QuantizeBuffers,
    steps: &Tensor,
    ws: &Tensor,
) {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    use featjnd_kernels::cuda::raw::{self, DevPtr, DevPtrMut, Elems, Launch, QuantPtrs, StatsBuf};
    use featjnd_kernels::{Bits, Dtype};
    let dev = featjnd_kernels::cuda::Device::get(o).unwrap();
    let stream = dev.ctx.new_stream().unwrap();
    let grid = ops::grid_of(x, Layout::Nchw, 1).unwrap();
    let on = Launch { dev: &dev, stream: &stream };
    let out = |t: Option<&Tensor>| t.map_or(DevPtrMut::null(), |t| DevPtrMut::from_addr(t.data_ptr() as u64));
    let p = QuantPtrs {
        x: DevPtr::from_addr(x.data_ptr() as u64),
        steps: DevPtr::from_addr(steps.data_ptr() as u64),
        symbols: out(bufs.symbols),
        recon: out(bufs.recon),
        token_sse: out(bufs.token_sse).cast(),
    };
    let wsb = StatsBuf::new(DevPtrMut::from_addr(ws.data_ptr() as u64), ws.numel());
    let jnd = Elems { ptr: DevPtr::from_addr(j.data_ptr() as u64), dt: Dtype::F32 };
    let enqueue = || {
        // SAFETY: every pointer is a live CUDA tensor of the sizes the chain needs (x, J, the
        // outputs and the steps of the grid, the workspace of quantize_with_jnd_stats_slots), all
        // disjoint, alive until the benchmark group ends; the stream is synchronized before.
        unsafe {
            raw::zero_stats(on, wsb.sub(0, raw::quantize_slots(Bits::B8, true)).unwrap()).unwrap();
            let st = DevPtrMut::from_addr(steps.data_ptr() as u64);
            raw::quantize_with_jnd(Dtype::F32, &grid, jnd, Reduce::Mean, BUDGET, Strategy::Jnd, &p, st, Bits::B8, false, wsb)
                .unwrap()
                .launch(on)
                .unwrap();
        }
    };
    tch::Cuda::synchronize(o as i64);
    enqueue(); // compiles and caches the kernels before the capture
    stream.synchronize().unwrap();
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
    enqueue();
    let graph = stream.end_capture(CUgraphInstantiate_flags(0)).unwrap().expect("an empty capture");
    g.bench_with_input(BenchmarkId::new("graph_replay", mib), &mib, |b, _| {
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                graph.launch().unwrap();
            }
            stream.synchronize().unwrap();
            t0.elapsed()
        })
    });
}

/// 16 features of mixed sizes (NCHW and NTC, 1 K to 37 K elements, 302 592 in all) quantized in one
/// batched call vs loops of single calls, then perturbed the same two ways.
fn batch_bench(c: &mut Criterion, d: Device, dn: &str, opts: &QuantizeOptions) {
    let shapes: Vec<(Layout, Vec<i64>)> = (0..16)
        .map(|i| match i % 4 {
            0 => (Layout::Ntc, vec![1, 4 << (i / 4), 256]),
            1 => (Layout::Nchw, vec![1, 64, 4 << (i / 4), 16]),
            2 => (Layout::Ntc, vec![1, 49, 768]),
            _ => (Layout::Nchw, vec![1, 256, 7, 7 << (i / 8)]),
        })
        .collect();
    let xs: Vec<Tensor> = shapes.iter().enumerate().map(|(i, (_, s))| bench_feature(s, 10 + i as u64, d)).collect();
    let tokens: Vec<i64> = shapes.iter().zip(&xs).map(|((l, _), x)| ops::grid_of(x, *l, 1).unwrap().tokens() as i64).collect();
    let steps: Vec<Tensor> = tokens.iter().map(|&t| Tensor::full([t], 0.05, (Kind::Float, d))).collect();
    let syms: Vec<Tensor> = xs.iter().map(|x| Tensor::empty(x.size(), (Kind::Int8, d))).collect();
    let recs: Vec<Tensor> = xs.iter().map(|x| x.empty_like()).collect();
    let sses: Vec<Tensor> = tokens.iter().map(|&t| Tensor::empty([t], (Kind::Float, d))).collect();
    let items: Vec<ops::QuantizeItem> = (0..xs.len())
        .map(|i| ops::QuantizeItem {
            x: &xs[i],
            layout: shapes[i].0,
            patch: 1,
            steps: &steps[i],
            bufs: ops::QuantizeBuffers { symbols: Some(&syms[i]), recon: Some(&recs[i]), token_sse: Some(&sses[i]) },
        })
        .collect();
    let total: i64 = xs.iter().map(|x| x.numel() as i64).sum();
    let ws = ops::stats_buffer(ops::quantize_batch_stats_slots(opts.bits, items.len()), d).unwrap();
    let one = ops::stats_buffer(ops::quantize_batch_stats_slots(opts.bits, items.len()), d).unwrap();
    let per = ops::quantize_stats_slots(opts.bits) as i64;
    let mut g = c.benchmark_group(format!("batch16_{dn}"));
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    // Floor: read x, write x̂ (4 B each) and the symbol (1 B).
    g.throughput(Throughput::Bytes(9 * total as u64));
    let mib = (4 * total as usize) >> 20;
    g.bench_with_input(BenchmarkId::new("batched", mib), &mib, |b, _| {
        b.iter(|| ops::quantize_batch_async(&items, opts, &ws).unwrap().decode().into_iter().map(|r| r.unwrap().clamped).sum::<u64>())
    });
    g.bench_with_input(BenchmarkId::new("loop_sync", mib), &mib, |b, _| {
        b.iter(|| items.iter().map(|it| ops::quantize_into(it.x, it.layout, 1, it.steps, opts, &it.bufs).unwrap().clamped).sum::<u64>())
    });
    let slices: Vec<Tensor> = (0..items.len() as i64).map(|i| one.narrow(0, i * per, per)).collect();
    g.bench_with_input(BenchmarkId::new("loop_async", mib), &mib, |b, _| {
        b.iter(|| {
            let p: Vec<_> = items
                .iter()
                .zip(&slices)
                .map(|(it, s)| ops::quantize_async(it.x, it.layout, 1, it.steps, opts, &it.bufs, s).unwrap())
                .collect();
            p.iter().map(|p| p.decode().unwrap().clamped).sum::<u64>()
        })
    });

    // The same 16 features perturbed (Gaussian with J = 1, r = 0.1): one batched call vs a loop.
    let pouts: Vec<Tensor> = xs.iter().map(|x| x.empty_like()).collect();
    let noise = Noise { kind: NoiseKind::Gaussian, seed: 3, subsequence: 0 };
    let pitems: Vec<ops::PerturbItem> =
        (0..xs.len()).map(|i| ops::PerturbItem { x: &xs[i], jnd: None, nrmse: 0.1, noise, out: &pouts[i] }).collect();
    let pws = ops::stats_buffer(ops::perturb_batch_stats_slots(&pitems), d).unwrap();
    g.bench_with_input(BenchmarkId::new("perturb_batched", mib), &mib, |b, _| {
        b.iter(|| ops::perturb_batch_async(&pitems, &pws).unwrap().decode().into_iter().map(|r| r.unwrap().scales.len()).sum::<usize>())
    });
    g.bench_with_input(BenchmarkId::new("perturb_loop_sync", mib), &mib, |b, _| {
        b.iter(|| pitems.iter().map(|it| ops::perturb_into(it.x, None, 0.1, noise, it.out).unwrap().scales.len()).sum::<usize>())
    });
    g.finish();
}

/// The pieces and variants of the chain, one row each (see the module comment).
fn paths_bench(c: &mut Criterion) {
    for d in devices() {
        let dn = if d == Device::Cpu { "cpu" } else { "cuda" };
        for mib in [1usize, 16].into_iter().filter(|&m| sizes_mib().iter().any(|&s| s >= m)) {
            let n = (mib as i64 * (1 << 20) / 4) / (256 * 32 * 32);
            let numel = n * 256 * 32 * 32;
            let t = n * 32 * 32;
            let x = bench_feature(&[n, 256, 32, 32], 1, d);
            let j = bench_feature(&[n, 256, 32, 32], 2, d).abs() + 0.1;
            let xt = bench_feature(&[n, 1024, 256], 1, d);
            let jt = ops::token_tolerance(&j, Layout::Nchw, 1, Reduce::Mean).unwrap();
            let steps = ops::allocate_steps(&jt, BUDGET, Strategy::Jnd).unwrap();
            let mut g = c.benchmark_group(format!("paths_{dn}"));
            g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
            // Throughput against each row's own floor would make the rows incomparable; report
            // elements per second instead.
            g.throughput(Throughput::Elements(numel as u64));
            g.bench_with_input(BenchmarkId::new("token_tolerance", mib), &mib, |b, _| {
                b.iter(|| {
                    let r = ops::token_tolerance(&j, Layout::Nchw, 1, Reduce::Mean).unwrap();
                    sync(d);
                    r
                })
            });
            let sse = Tensor::empty([t], (Kind::Float, d));
            for (name, bits, hist, ntc) in [
                ("quantize_nchw", Bits::B8, false, false),
                ("quantize_nchw_hist", Bits::B8, true, false),
                ("quantize_nchw_b16", Bits::B16, false, false),
                ("quantize_ntc", Bits::B8, false, true),
            ] {
                let opts = QuantizeOptions { bits, histogram: hist, ..Default::default() };
                let (xx, layout) = if ntc { (&xt, Layout::Ntc) } else { (&x, Layout::Nchw) };
                let sym = Tensor::empty(xx.size(), (if bits == Bits::B8 { Kind::Int8 } else { Kind::Int16 }, d));
                let rec = xx.empty_like();
                let bufs = ops::QuantizeBuffers { symbols: Some(&sym), recon: Some(&rec), token_sse: Some(&sse) };
                g.bench_with_input(BenchmarkId::new(name, mib), &mib, |b, _| {
                    b.iter(|| {
                        let r = ops::quantize_into(xx, layout, 1, &steps, &opts, &bufs).unwrap();
                        sync(d);
                        r
                    })
                });
            }
            let out = x.empty_like();
            for (name, kind) in [("perturb_gaussian_no_j", NoiseKind::Gaussian), ("perturb_uniform_no_j", NoiseKind::Uniform)] {
                g.bench_with_input(BenchmarkId::new(name, mib), &mib, |b, _| {
                    b.iter(|| {
                        let r = ops::perturb_into(&x, None, 0.1, Noise { kind, seed: 3, subsequence: 0 }, &out).unwrap();
                        sync(d);
                        r
                    })
                });
            }
            g.bench_with_input(BenchmarkId::new("noise_gaussian", mib), &mib, |b, _| {
                b.iter(|| {
                    let r = ops::noise(numel as usize, 0, Noise { kind: NoiseKind::Gaussian, seed: 3, subsequence: 0 }, d).unwrap();
                    sync(d);
                    r
                })
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench, serving_bench, paths_bench);
criterion_main!(benches);
