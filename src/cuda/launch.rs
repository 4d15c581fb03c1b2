//! Launchers: one per kernel family, each taking its parameter struct (from the C header) and the
//! stream to run on (last argument, as ggml-cuda does). Grid shapes live here, kernel bodies in
//! `kernels/`.
use cudarc::driver::{CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};

use super::{cuda_err, Device};
use crate::element::Dtype;
use crate::error::Result;
use crate::params::*;

unsafe impl DeviceRepr for FjTokenStatsParams {}
unsafe impl DeviceRepr for FjStepAllocParams {}
unsafe impl DeviceRepr for FjQuantizeParams {}
unsafe impl DeviceRepr for FjPerturbParams {}
unsafe impl DeviceRepr for FjNoiseParams {}

/// Threads per block of every kernel (`FJ_BLOCK` in common.cuh).
pub const BLOCK: u32 = 256;
/// Warps per block: NTC kernels give one warp to each token.
const WARPS: u32 = BLOCK / 32;
/// Elements one perturbation block covers (`FJ_PT_CHUNK` in perturb.cu).
pub const PERTURB_CHUNK: u64 = BLOCK as u64 * 4 * 4;

fn cfg(blocks: u64) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks.max(1) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

fn go<P: DeviceRepr>(dev: &Device, file: &'static str, name: &str, p: &P, blocks: u64, stream: &CudaStream) -> Result<()> {
    let f = dev.function(file, name)?;
    let mut b = stream.launch_builder(&f);
    b.arg(p);
    unsafe { b.launch(cfg(blocks)) }.map(|_| ()).map_err(cuda_err)
}

fn layout_blocks(geom: &FjTokenGeom) -> (&'static str, u64) {
    if geom.layout == FJ_LAYOUT_NCHW {
        // 32 tokens per block, channels split over the warps.
        ("nchw", (geom.tokens as u64).div_ceil(32))
    } else {
        ("ntc", (geom.tokens as u64).div_ceil(WARPS as u64))
    }
}

pub fn token_stats(dev: &Device, dtype: Dtype, p: &FjTokenStatsParams, stream: &CudaStream) -> Result<()> {
    let (l, blocks) = layout_blocks(&p.geom);
    go(dev, "token_stats.cu", &format!("fj_token_stats_{l}_{}", dtype.name()), p, blocks, stream)
}

pub fn step_alloc(dev: &Device, p: &FjStepAllocParams, stream: &CudaStream) -> Result<()> {
    go(dev, "step_alloc.cu", "fj_step_alloc", p, (p.tokens as u64).div_ceil(BLOCK as u64), stream)
}

pub fn quantize(dev: &Device, dtype: Dtype, p: &FjQuantizeParams, stream: &CudaStream) -> Result<()> {
    let (l, blocks) = layout_blocks(&p.geom);
    go(dev, "quantize.cu", &format!("fj_quantize_{l}_{}", dtype.name()), p, blocks, stream)
}

fn perturb_blocks(p: &FjPerturbParams) -> u64 {
    p.samples as u64 * p.sample_len.div_ceil(PERTURB_CHUNK)
}

pub fn perturb_norms(dev: &Device, dtype: Dtype, p: &FjPerturbParams, stream: &CudaStream) -> Result<()> {
    go(dev, "perturb.cu", &format!("fj_perturb_norms_{}", dtype.name()), p, perturb_blocks(p), stream)
}

pub fn perturb_apply(dev: &Device, dtype: Dtype, p: &FjPerturbParams, stream: &CudaStream) -> Result<()> {
    go(dev, "perturb.cu", &format!("fj_perturb_apply_{}", dtype.name()), p, perturb_blocks(p), stream)
}

pub fn noise(dev: &Device, p: &FjNoiseParams, stream: &CudaStream) -> Result<()> {
    let groups = (p.offset + p.numel).div_ceil(4) - p.offset / 4;
    go(dev, "perturb.cu", "fj_noise", p, groups.div_ceil(BLOCK as u64), stream)
}
