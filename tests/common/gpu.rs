//! Shared by the GPU tests of the kernel library (`tests/gpu.rs`) and of the C ABI
//! (`crates/featjnd-capi/tests/gpu.rs`): the GPU probe, awkward shapes, inputs from Philox (no
//! global RNG), and bitwise / tolerance comparisons.
#![allow(dead_code)]
use featjnd_kernels::{philox, Layout, NoiseKind};
use tch::{Device, Kind, Tensor};

pub fn gpu() -> Option<Device> {
    featjnd_kernels::cuda::load_torch_cuda();
    if let Err(e) = featjnd_kernels::cuda::available() {
        skip(&format!("SKIP {} (no GPU): {e}", test_name()));
        return None;
    }
    if !tch::Cuda::is_available() {
        skip(&format!("SKIP {} (no GPU): libtorch sees no CUDA (libtorch_cuda.so not loadable)", test_name()));
        return None;
    }
    Some(Device::Cuda(0))
}

/// The running test's name (the harness names each test's thread after it).
pub fn test_name() -> String {
    std::thread::current().name().unwrap_or("?").to_string()
}

/// Prints a line straight to the process's stderr, past the harness's output capture, so that
/// `scripts/test.sh` can count the skipped GPU tests.
pub fn skip(line: &str) {
    use std::io::Write as _;
    // A leading newline: the harness may be half-way through a "test name ... " line on stdout.
    let _ = writeln!(std::io::stderr().lock(), "\n{line}");
}

pub const KINDS: [Kind; 3] = [Kind::Float, Kind::Half, Kind::BFloat16];

include!("shapes.rs");

/// Shapes with awkward sizes ([`SHAPES`], shared with the emulation tier): (layout, sizes, patch).
pub fn shapes() -> Vec<(Layout, Vec<i64>, usize)> {
    SHAPES.iter().map(|&(l, s, p)| (l, s.iter().map(|&d| d as i64).collect(), p)).collect()
}

/// Gaussian values times 3 from Philox (key `seed`): no torch global RNG, so parallel tests
/// cannot disturb each other's inputs.
pub fn feature(sizes: &[i64], kind: Kind, seed: i64) -> Tensor {
    let n = sizes.iter().product::<i64>() as usize;
    let mut v = vec![0.0f32; n];
    philox::fill(&mut v, 0, seed as u64, 0, NoiseKind::Gaussian);
    v.iter_mut().for_each(|x| *x *= 3.0);
    Tensor::from_slice(&v).reshape(sizes).to_kind(kind)
}

/// Tolerances in [0.05, 2.05) from Philox.
pub fn jnd(sizes: &[i64], kind: Kind, seed: i64) -> Tensor {
    let n = sizes.iter().product::<i64>() as usize;
    let mut v = vec![0.0f32; n];
    philox::fill(&mut v, 0, seed as u64 + 1000, 0, NoiseKind::Uniform);
    // Unit-variance uniform ξ in [-√3, √3) mapped to [0, 1), then to [0.05, 2.05).
    v.iter_mut().for_each(|x| *x = (*x / 3f32.sqrt() + 1.0) * 0.5 * 2.0 + 0.05);
    Tensor::from_slice(&v).reshape(sizes).to_kind(kind)
}

pub fn bits_eq(a: &Tensor, b: &Tensor, what: &str) {
    let a = a.to_device(Device::Cpu).contiguous();
    let b = b.to_device(Device::Cpu).contiguous();
    assert_eq!(a.size(), b.size(), "{what}: sizes");
    // Compare the raw bits (f16/bf16 compared as i16, f32 as i32).
    let view = |t: &Tensor| match t.kind() {
        Kind::Float => t.view_dtype(Kind::Int),
        Kind::Half | Kind::BFloat16 => t.view_dtype(Kind::Int16),
        _ => t.shallow_clone(),
    };
    let ne = view(&a).ne_tensor(&view(&b)).sum(Kind::Int64).int64_value(&[]);
    assert_eq!(ne, 0, "{what}: {ne} elements differ bitwise");
}

pub fn close(a: &Tensor, b: &Tensor, rel: f64, abs: f64, what: &str) {
    let a = a.to_device(Device::Cpu).to_kind(Kind::Double);
    let b = b.to_device(Device::Cpu).to_kind(Kind::Double);
    let err = (&a - &b).abs() - (b.abs() * rel + abs);
    let worst = err.max().double_value(&[]);
    assert!(worst <= 0.0, "{what}: off by {worst} beyond rel {rel} + abs {abs}");
}
