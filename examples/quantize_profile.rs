//! A fixed CPU workload for profilers (perf, callgrind): the fused JND chain on an f32 NCHW
//! [64, 256, 32, 32] feature (64 MiB) with reused output buffers, 10 times.
use featjnd_kernels::ops::{self, QuantizeBuffers, QuantizeOptions};
use featjnd_kernels::{Layout, Reduce, Strategy};
use tch::{Device, Kind, Tensor};

fn main() {
    let x = Tensor::randn([64, 256, 32, 32], (Kind::Float, Device::Cpu));
    let j = Tensor::rand([64, 256, 32, 32], (Kind::Float, Device::Cpu)) + 0.1;
    let (sym, rec, sse) = (
        Tensor::empty([64, 256, 32, 32], (Kind::Int8, Device::Cpu)),
        x.empty_like(),
        Tensor::empty([64 * 1024], (Kind::Float, Device::Cpu)),
    );
    let bufs = QuantizeBuffers { symbols: Some(&sym), recon: Some(&rec), token_sse: Some(&sse) };
    let opts = QuantizeOptions { histogram: false, ..Default::default() };
    let t = std::time::Instant::now();
    for _ in 0..10 {
        let _ = ops::quantize_with_jnd_into(&x, &j, Layout::Nchw, 1, Reduce::Mean, 0.01, Strategy::Jnd, &opts, &bufs).unwrap();
    }
    println!("{:.2} ms per call", t.elapsed().as_secs_f64() * 100.0);
    let t = std::time::Instant::now();
    for _ in 0..10 {
        let _ = ops::token_tolerance(&j, Layout::Nchw, 1, Reduce::Mean).unwrap();
    }
    println!("token_tolerance alone: {:.2} ms per call", t.elapsed().as_secs_f64() * 100.0);
    let t = std::time::Instant::now();
    for _ in 0..10 {
        let _ = j.sum(Kind::Float).double_value(&[]);
    }
    println!("torch j.sum() (a read-only floor): {:.2} ms per call", t.elapsed().as_secs_f64() * 100.0);
}
