//! `featjnd encode` / `featjnd decode`: the feature codec (`crate::codec`) on files. Both print a
//! JSON summary: file size, bits per element (real, from the file size) against contract §4's entropy
//! estimate, the bits the steps' side information really takes, and the nominal/measured MSE.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::codec::{self, RateReport, Sections, StepCoding, StepMode, Steps};
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
    /// Contract §3.5: `min(α·j_t, κ·rms_t)` (token step modes only).
    Capped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BitsArg {
    #[value(name = "8")]
    B8,
    #[value(name = "16")]
    B16,
}

/// How the file stores the steps (`docs/fjq-format.md`, *Steps*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StepModeArg {
    /// `tensor` when every allocated step is the same, else `token`.
    Auto,
    /// Per-token steps on a log grid of `--grid` points per octave, entropy-coded.
    Token,
    /// Per-token steps as f16 (16 bits per token, version 1's form).
    #[value(name = "token-f16")]
    TokenF16,
    /// One step for the whole tensor: the allocated steps if all equal, else their RMS (the same
    /// nominal MSE).
    Tensor,
    /// One step per channel on the log grid: steps allocated by the strategy from the channel
    /// means of J (nominal budget only).
    Channel,
    /// One step per channel as f16.
    #[value(name = "channel-f16")]
    ChannelF16,
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
    /// Cap factor κ of the capped strategy (steps ≤ κ × the token's RMS).
    #[arg(long, default_value_t = 2.0)]
    pub kappa: f32,
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
    /// How the file stores the steps.
    #[arg(long, value_enum, default_value_t = StepModeArg::Auto)]
    pub step_mode: StepModeArg,
    /// Log-grid points per octave for the token and channel modes (1, 2, 4, …, 64).
    #[arg(long, default_value_t = codec::DEFAULT_PER_OCTAVE)]
    pub grid: u32,
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
        "step_bytes": r.step_bytes,
        "step_bits_per_token": r.step_bits_per_token,
        "step_bits_per_element": r.step_bits_per_element,
        "symbol_bits_per_element": r.symbol_bits_per_element,
        "coded_estimate_bits_per_element": r.coded_estimate_bits_per_element,
        "coded_gap": r.coded_gap,
    })
}

fn mode_json(m: StepMode) -> Value {
    json!({ "name": m.name(), "per_octave": m.per_octave() })
}

/// Nominal MSE `mean Δ²/12` of the stored steps: per token, or per channel (every channel has
/// the same number of elements).
fn stored_nominal_mse(mode: StepMode, steps: &Tensor, channel_steps: &Tensor) -> Result<f64> {
    Ok(match mode {
        StepMode::Channel(_) => steps::nominal_mse(&host_f32(channel_steps)?),
        _ => steps::nominal_mse(&host_f32(steps)?),
    })
}

/// Per-channel tolerance: the mean of J over every element of the channel.
fn channel_tolerance(j: &Tensor, layout: Layout) -> Result<Tensor> {
    let dims: &[i64] = match layout {
        Layout::Nchw => &[0, 2, 3],
        Layout::Ntc => &[0, 1],
    };
    Ok(j.f_to_kind(Kind::Float)?.f_mean_dim(dims, false, Kind::Float)?)
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
        StrategyArg::Jnd | StrategyArg::Capped => Strategy::Jnd,
        StrategyArg::Uniform => Strategy::Uniform,
        StrategyArg::Permuted => Strategy::Permuted { seed: a.seed },
    };
    let bits = match a.bits {
        BitsArg::B8 => Bits::B8,
        BitsArg::B16 => Bits::B16,
    };
    let j = match &a.jnd {
        Some(spec) => {
            let j = load(spec)?;
            if j.size() != x.size() {
                return Err(Error::Shape(format!("x is {:?}, J is {:?}: they must match", x.size(), j.size())));
            }
            Some(j)
        }
        None if strategy == Strategy::Uniform => None,
        None => return Err(Error::Arg(format!("--jnd is required for --strategy {:?}", a.strategy).to_lowercase())),
    };
    let channel_mode = matches!(a.step_mode, StepModeArg::Channel | StepModeArg::ChannelF16);
    let grid_coding = StepCoding::LogGrid { per_octave: a.grid };
    if channel_mode {
        if a.strategy == StrategyArg::Capped {
            return Err(Error::Arg("--strategy capped caps each token's step: use a token step mode (auto, token, token-f16)".into()));
        }
        if a.measured {
            return Err(Error::Arg("--measured is not supported with the channel step modes (nominal budget only)".into()));
        }
        let channels = match layout {
            Layout::Nchw => grid.shape.dims[1],
            Layout::Ntc => grid.shape.dims[2],
        };
        let jc = match &j {
            Some(j) => host_f32(&channel_tolerance(j, layout)?)?,
            // Uniform ignores the tolerance; any positive values do.
            None => vec![1.0f32; channels],
        };
        let cs = Tensor::f_from_slice(&steps::allocate(&jc, a.budget, strategy)?)?;
        let coding = if a.step_mode == StepModeArg::ChannelF16 { StepCoding::F16 } else { grid_coding };
        let enc = codec::encode_with(&x, Steps::Channel(&cs), layout, patch, bits, coding)?;
        write_file(&a.out, &enc.bytes)?;
        return encode_summary(a, &x, layout, &grid, bits, strategy, &enc, None, steps::nominal_mse(&host_f32(&cs)?));
    }
    let jt = match &j {
        Some(j) => ops::token_tolerance(j, layout, patch, reduce)?,
        // Uniform ignores j_t; any positive values do.
        None => Tensor::f_ones([grid.tokens() as i64], (Kind::Float, Device::Cpu))?,
    };
    let caps = match a.strategy {
        StrategyArg::Capped => Some(ops::caps_from_rms(&ops::token_rms(&x, layout, patch)?, a.kappa)?),
        _ => None,
    };
    let (allocated, m) = super::allocate(&x, layout, patch, &jt, caps.as_ref(), a.budget, strategy, bits, a.measured)?;
    let beta = m.map(|m| m.beta);
    let enc = match a.step_mode {
        StepModeArg::Auto | StepModeArg::Token => {
            let v = host_f32(&allocated)?;
            // As codec::encode, at any grid size.
            if a.step_mode == StepModeArg::Auto && v.iter().all(|s| s.to_bits() == v[0].to_bits()) {
                codec::encode_with(&x, Steps::Tensor(v[0]), layout, patch, bits, grid_coding)?
            } else {
                codec::encode_with(&x, Steps::Token(&allocated), layout, patch, bits, grid_coding)?
            }
        }
        StepModeArg::TokenF16 => codec::encode_with(&x, Steps::Token(&allocated), layout, patch, bits, StepCoding::F16)?,
        StepModeArg::Tensor => {
            let v = host_f32(&allocated)?;
            let s = if v.iter().all(|s| s.to_bits() == v[0].to_bits()) { v[0] } else { (12.0 * steps::nominal_mse(&v)).sqrt() as f32 };
            codec::encode_with(&x, Steps::Tensor(s), layout, patch, bits, grid_coding)?
        }
        StepModeArg::Channel | StepModeArg::ChannelF16 => unreachable!("handled above"),
    };
    write_file(&a.out, &enc.bytes)?;
    encode_summary(a, &x, layout, &grid, bits, strategy, &enc, beta, steps::nominal_mse(&host_f32(&allocated)?))
}

/// `featjnd encode`'s JSON summary. `beta`: the measured budget's factor (`None`: nominal);
/// `nominal_allocated`: the nominal MSE of the steps before they were rounded to the file's.
#[allow(clippy::too_many_arguments)]
fn encode_summary(
    a: &EncodeArgs,
    x: &Tensor,
    layout: Layout,
    grid: &crate::TokenGrid,
    bits: Bits,
    strategy: Strategy,
    enc: &codec::Encoded,
    beta: Option<f64>,
    nominal_allocated: f64,
) -> Result<serde_json::Value> {
    let dtype = crate::Dtype::from_kind(x.kind())?;
    Ok(json!({
        "command": "encode",
        "input": a.x,
        "out": a.out,
        "shape": x.size(), "dtype": dtype.name(), "layout": layout_name(layout), "patch": a.patch,
        "k": grid.k(), "bits": bits.bits(),
        "strategy": format!("{:?}", a.strategy).to_lowercase(),
        "seed": match strategy { Strategy::Permuted { seed } => Some(seed), _ => None },
        "step_mode": mode_json(enc.step_mode),
        "budget": a.budget, "measured_budget": beta.is_some(), "beta": beta.unwrap_or(1.0),
        "nominal_mse_allocated": nominal_allocated,
        // The file's steps (rounded as stored) and the MSE of the coded reconstruction.
        "nominal_mse": stored_nominal_mse(enc.step_mode, &enc.steps, &enc.channel_steps)?,
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
        "version": d.version,
        "step_mode": mode_json(d.step_mode),
        "nominal_mse": stored_nominal_mse(d.step_mode, &d.steps, &d.channel_steps)?,
        "rate": rate_json(&d.rate, &d.sections),
    }))
}
