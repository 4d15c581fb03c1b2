//! `featjnd encode` / `featjnd decode`: the feature codec (`crate::codec`) on files. Both print a
//! JSON summary: file size, bits per element (real, from the file size) against SPEC §4's entropy
//! estimate, and the nominal/measured MSE.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::codec::{self, RateReport, Sections};
use crate::ops;
use crate::{io, steps, Bits, Error, Layout, Reduce, Result, Strategy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LayoutArg {
    Nchw,
    Ntc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReduceArg {
    Mean,
    Rms,
    Min,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyArg {
    Jnd,
    Uniform,
    Permuted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BitsArg {
    #[value(name = "8")]
    B8,
    #[value(name = "16")]
    B16,
}

#[derive(Debug, Clone, clap::Args)]
pub struct EncodeArgs {
    /// Feature x (.npy or .safetensors[:NAME]; f32, f16 or bf16).
    #[arg(long)]
    pub x: String,
    /// Tolerance map J (not needed for --strategy uniform).
    #[arg(long)]
    pub jnd: Option<String>,
    /// Budget D: target MSE per element, in x's units.
    #[arg(long, allow_negative_numbers = true)]
    pub budget: f64,
    /// NCHW patch size p (a token is C·p·p elements).
    #[arg(long, default_value_t = 1)]
    pub patch: usize,
    /// How J reduces over a token.
    #[arg(long, value_enum, default_value_t = ReduceArg::Mean)]
    pub reduce: ReduceArg,
    #[arg(long, value_enum, default_value_t = StrategyArg::Jnd)]
    pub strategy: StrategyArg,
    /// Seed of the permuted strategy.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Match the measured (not the nominal Δ²/12) MSE to D (before the steps are rounded to f16).
    #[arg(long)]
    pub measured: bool,
    #[arg(long, value_enum, default_value_t = BitsArg::B8)]
    pub bits: BitsArg,
    /// Feature layout (default: nchw for 4-D, ntc for 3-D).
    #[arg(long, value_enum)]
    pub layout: Option<LayoutArg>,
    /// The .fjq file to write.
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DecodeArgs {
    /// The .fjq file.
    pub input: PathBuf,
    /// Reconstruction to write (.npy or .safetensors; bf16 goes to .npy as f32, exactly).
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
}

/// `FILE` or `FILE.safetensors:NAME`.
fn split_input(spec: &str) -> (PathBuf, Option<&str>) {
    const EXT: &str = ".safetensors:";
    match spec.find(EXT) {
        Some(i) => (PathBuf::from(&spec[..i + EXT.len() - 1]), Some(&spec[i + EXT.len()..])),
        None => (PathBuf::from(spec), None),
    }
}

fn load(spec: &str) -> Result<Tensor> {
    let (path, name) = split_input(spec);
    io::load_feature(&path, name)?.to_tensor()
}

fn layout_of(arg: Option<LayoutArg>, x: &Tensor) -> Result<Layout> {
    match (arg, x.dim()) {
        (Some(LayoutArg::Nchw), _) | (None, 4) => Ok(Layout::Nchw),
        (Some(LayoutArg::Ntc), _) | (None, 3) => Ok(Layout::Ntc),
        (None, d) => Err(Error::Shape(format!("a {d}-D feature: expected 4-D NCHW or 3-D NTC"))),
    }
}

fn layout_name(l: Layout) -> &'static str {
    match l {
        Layout::Nchw => "nchw",
        Layout::Ntc => "ntc",
    }
}

fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    let t = t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?.f_flatten(0, -1)?;
    Ok(Vec::<f32>::try_from(&t)?)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(p) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p).map_err(|e| Error::Io(format!("{}: cannot create directory: {e}", p.display())))?;
    }
    std::fs::write(path, bytes).map_err(|e| Error::Io(format!("{}: cannot write: {e}", path.display())))
}

fn rate_json(r: &RateReport, s: &Sections) -> Value {
    json!({
        "file_bytes": r.file_bytes,
        "elements": r.elements,
        "tokens": r.tokens,
        "alphabet": r.alphabet,
        "sections": s,
        "entropy_bits": r.entropy_bits,
        "bits_per_element": r.bits_per_element,
        "estimate_bits_per_element": r.estimate_bits_per_element,
        "gap": r.gap,
        "model_bits": r.model_bits,
    })
}

pub fn encode(a: &EncodeArgs) -> Result<Value> {
    let x = load(&a.x)?;
    let layout = layout_of(a.layout, &x)?;
    let patch = a.patch;
    let grid = ops::grid_of(&x, layout, patch)?;
    let reduce = match a.reduce {
        ReduceArg::Mean => Reduce::Mean,
        ReduceArg::Rms => Reduce::Rms,
        ReduceArg::Min => Reduce::Min,
    };
    let strategy = match a.strategy {
        StrategyArg::Jnd => Strategy::Jnd,
        StrategyArg::Uniform => Strategy::Uniform,
        StrategyArg::Permuted => Strategy::Permuted { seed: a.seed },
    };
    let bits = match a.bits {
        BitsArg::B8 => Bits::B8,
        BitsArg::B16 => Bits::B16,
    };
    let jt = match &a.jnd {
        Some(spec) => {
            let j = load(spec)?;
            if j.size() != x.size() {
                return Err(Error::Shape(format!("x is {:?}, J is {:?}: they must match", x.size(), j.size())));
            }
            ops::token_tolerance(&j, layout, patch, reduce)?
        }
        // Uniform ignores j_t; any positive values do.
        None if strategy == Strategy::Uniform => Tensor::f_ones([grid.tokens() as i64], (Kind::Float, Device::Cpu))?,
        None => return Err(Error::Arg(format!("--jnd is required for --strategy {:?}", a.strategy).to_lowercase())),
    };
    let (allocated, beta) = if a.measured {
        let (s, m) = ops::allocate_steps_measured(&x, layout, patch, &jt, a.budget, strategy, bits)?;
        (s, Some(m.beta))
    } else {
        (ops::allocate_steps(&jt, a.budget, strategy)?, None)
    };
    let enc = codec::encode(&x, &allocated, layout, patch, bits)?;
    write_file(&a.out, &enc.bytes)?;
    let dtype = crate::Dtype::from_kind(x.kind())?;
    Ok(json!({
        "command": "encode",
        "input": a.x,
        "out": a.out,
        "shape": x.size(), "dtype": dtype.name(), "layout": layout_name(layout), "patch": patch,
        "k": grid.k(), "bits": bits.bits(),
        "strategy": format!("{:?}", a.strategy).to_lowercase(),
        "seed": match strategy { Strategy::Permuted { seed } => Some(seed), _ => None },
        "budget": a.budget, "measured_budget": a.measured, "beta": beta.unwrap_or(1.0),
        "nominal_mse_allocated": steps::nominal_mse(&host_f32(&allocated)?),
        // The file's steps (rounded to f16 precision) and the MSE of the coded reconstruction.
        "nominal_mse": steps::nominal_mse(&host_f32(&enc.steps)?),
        "measured_mse": enc.mse,
        "clamped": enc.clamped,
        "rate": rate_json(&enc.rate, &enc.sections),
    }))
}

pub fn decode(a: &DecodeArgs) -> Result<Value> {
    let bytes = std::fs::read(&a.input).map_err(|e| Error::Io(format!("{}: cannot read: {e}", a.input.display())))?;
    let d = codec::decode(&bytes).map_err(|e| match e {
        Error::Io(m) => Error::Io(format!("{}: {m}", a.input.display())),
        other => other,
    })?;
    if let Some(p) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p).map_err(|e| Error::Io(format!("{}: cannot create directory: {e}", p.display())))?;
    }
    io::save_tensor(&a.out, &d.recon)?;
    Ok(json!({
        "command": "decode",
        "input": a.input,
        "out": a.out,
        "shape": d.recon.size(), "dtype": d.dtype.name(), "layout": layout_name(d.layout), "patch": d.patch,
        "bits": d.bits.bits(),
        "nominal_mse": steps::nominal_mse(&host_f32(&d.steps)?),
        "rate": rate_json(&d.rate, &d.sections),
    }))
}
