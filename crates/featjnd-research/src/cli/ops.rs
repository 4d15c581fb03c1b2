//! `featjnd ops ...`: one op of the kernel library (docs/contract.md) on `.npy` / `.safetensors`
//! feature files. Every command writes its arrays and a `summary.json`.
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::ops::{self, Noise, QuantizeOptions, Quantized};
use crate::{io, steps, Bits, Error, Layout, NoiseKind, Reduce, Result, Strategy};

#[derive(Subcommand)]
pub enum Op {
    /// Token tolerances j_t of a tolerance map J (contract §2) -> token_tol.npy, summary.json.
    Tokens(TokensArgs),
    /// Allocate steps under a budget and quantize x (contract §3-4) -> symbols, steps, recon, token_sse, summary.
    Quantize(QuantizeArgs),
    /// Perturb x at a matched per-sample NRMSE (contract §6) -> perturbed.npy, summary.json.
    Perturb(PerturbArgs),
    /// Write Philox noise (contract §5) for flat elements offset..offset+numel.
    Noise(NoiseArgs),
    /// Synthetic feature and tolerance map; compares the strategies. Needs no input files.
    Demo(DemoArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StrategyArg {
    Jnd,
    Uniform,
    Permuted,
    /// Contract §3.5: `min(α·j_t, κ·rms_t)` (never coarser than κ times the token's RMS).
    Capped,
}

#[derive(Args)]
struct DeviceOpt {
    /// Where the ops run (cuda = GPU 0).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
}

#[derive(Args)]
struct TokenOpts {
    /// Feature layout (default: nchw for 4-D, ntc for 3-D).
    #[arg(long, value_enum)]
    layout: Option<Layout>,
    /// NCHW patch size p (a token is C·p·p elements).
    #[arg(long, default_value_t = 1)]
    patch: usize,
    /// How J reduces over a token.
    #[arg(long, value_enum, default_value_t = Reduce::Mean)]
    reduce: Reduce,
}

#[derive(Args)]
pub struct TokensArgs {
    /// Tolerance map J (.npy or .safetensors[:NAME]).
    #[arg(long)]
    jnd: String,
    #[command(flatten)]
    tok: TokenOpts,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    dev: DeviceOpt,
}

#[derive(Args)]
pub struct QuantizeArgs {
    /// Feature x (.npy or .safetensors[:NAME]).
    #[arg(long)]
    x: String,
    /// Tolerance map J (not needed for --strategy uniform).
    #[arg(long)]
    jnd: Option<String>,
    /// Budget D: target MSE per element, in x's units.
    #[arg(long, allow_negative_numbers = true)]
    budget: f64,
    #[arg(long, value_enum, default_value_t = StrategyArg::Jnd)]
    strategy: StrategyArg,
    /// Seed of the permuted strategy.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Cap factor κ of the capped strategy (steps ≤ κ × the token's RMS).
    #[arg(long, default_value_t = 2.0)]
    kappa: f32,
    #[arg(long, value_enum, default_value_t = Bits::B8)]
    bits: Bits,
    #[command(flatten)]
    tok: TokenOpts,
    /// Match the measured (not the nominal Δ²/12) MSE to D.
    #[arg(long)]
    measured: bool,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    dev: DeviceOpt,
}

#[derive(Args)]
pub struct PerturbArgs {
    #[arg(long)]
    x: String,
    /// Tolerance map J (omit for the unstructured J ≡ 1 baseline).
    #[arg(long)]
    jnd: Option<String>,
    /// Requested per-sample NRMSE r.
    #[arg(long, allow_negative_numbers = true)]
    nrmse: f64,
    #[arg(long, value_enum, default_value_t = NoiseKind::Gaussian)]
    noise: NoiseKind,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Philox subsequence (third counter word): independent draws from one seed.
    #[arg(long, default_value_t = 0)]
    subsequence: u32,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    dev: DeviceOpt,
}

#[derive(Args)]
pub struct NoiseArgs {
    #[arg(long)]
    numel: usize,
    #[arg(long, default_value_t = 0)]
    offset: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Philox subsequence (third counter word): independent draws from one seed.
    #[arg(long, default_value_t = 0)]
    subsequence: u32,
    #[arg(long, value_enum, default_value_t = NoiseKind::Gaussian)]
    noise: NoiseKind,
    /// Output file (.npy or .safetensors).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    dev: DeviceOpt,
}

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    dev: DeviceOpt,
}

/// Runs one `featjnd ops` command.
pub fn run(op: Op) -> Result<()> {
    match op {
        Op::Tokens(a) => tokens(a),
        Op::Quantize(a) => quantize(a),
        Op::Perturb(a) => perturb(a),
        Op::Noise(a) => noise(a),
        Op::Demo(a) => demo(a),
    }
}

// ---------- helpers ----------

fn device(d: DeviceArg) -> Result<Device> {
    if d == DeviceArg::Cpu {
        return Ok(Device::Cpu);
    }
    let torch_cuda = crate::cuda::load_torch_cuda();
    crate::cuda::available()?;
    if !torch_cuda || !tch::Cuda::is_available() {
        return Err(Error::CudaUnavailable(
            "libtorch cannot use CUDA here (libtorch_cuda.so missing or not loadable); use --device cpu".into(),
        ));
    }
    Ok(Device::Cuda(0))
}

/// `FILE` or `FILE.safetensors:NAME`.
fn split_input(spec: &str) -> (PathBuf, Option<&str>) {
    const EXT: &str = ".safetensors:";
    match spec.find(EXT) {
        Some(i) => (PathBuf::from(&spec[..i + EXT.len() - 1]), Some(&spec[i + EXT.len()..])),
        None => (PathBuf::from(spec), None),
    }
}

fn load(spec: &str, dev: Device) -> Result<Tensor> {
    let (path, name) = split_input(spec);
    Ok(io::load_feature(&path, name)?.to_tensor()?.f_to_device(dev)?)
}

fn out_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: cannot create directory: {e}", dir.display())))
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Io(e.to_string()))?;
    std::fs::write(path, s + "\n").map_err(|e| Error::Io(format!("{}: cannot write: {e}", path.display())))
}

/// A tensor's values as f32 on the host.
fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    let t = t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?.f_flatten(0, -1)?;
    Ok(Vec::<f32>::try_from(&t)?)
}

fn layout_of(arg: Option<Layout>, x: &Tensor) -> Result<Layout> {
    match (arg, x.dim()) {
        (Some(l), _) => Ok(l),
        (None, 4) => Ok(Layout::Nchw),
        (None, 3) => Ok(Layout::Ntc),
        (None, d) => Err(Error::Shape(format!("a {d}-D feature: expected 4-D NCHW or 3-D NTC"))),
    }
}

fn layout_name(l: Layout) -> &'static str {
    match l {
        Layout::Nchw => "nchw",
        Layout::Ntc => "ntc",
    }
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Uniform => "uniform",
        Strategy::Jnd => "jnd",
        Strategy::Permuted { .. } => "permuted",
    }
}

fn same_shape(x: &Tensor, j: &Tensor) -> Result<()> {
    if x.size() != j.size() {
        return Err(Error::Shape(format!("x is {:?}, J is {:?}: they must match", x.size(), j.size())));
    }
    Ok(())
}

/// Per-sample `‖a_n − b_n‖ / ‖b_n‖` (NaN for a zero sample), in f64.
fn nrmse_per_sample(a: &[f32], b: &[f32], samples: usize) -> Vec<f64> {
    let per = b.len() / samples.max(1);
    (0..samples)
        .map(|n| {
            let r = n * per..(n + 1) * per;
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (&p, &x) in a[r.clone()].iter().zip(&b[r]) {
                num += (p as f64 - x as f64).powi(2);
                den += (x as f64).powi(2);
            }
            (num / den).sqrt()
        })
        .collect()
}

// ---------- tokens ----------

fn tokens(a: TokensArgs) -> Result<()> {
    let dev = device(a.dev.device)?;
    let j = load(&a.jnd, dev)?;
    let layout = layout_of(a.tok.layout, &j)?;
    let grid = ops::grid_of(&j, layout, a.tok.patch)?;
    let reduce = a.tok.reduce;
    let jt = ops::token_tolerance(&j, layout, a.tok.patch, reduce)?;
    out_dir(&a.out)?;
    io::save_tensor(&a.out.join("token_tol.npy"), &jt)?;
    let v = host_f32(&jt)?;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    let summary = json!({
        "shape": j.size(), "layout": layout_name(layout), "patch": a.tok.patch, "reduce": format!("{reduce:?}").to_lowercase(),
        "tokens": grid.tokens(), "k": grid.k(),
        "min": v.iter().cloned().fold(f32::INFINITY, f32::min),
        "mean": mean,
        "max": v.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
    });
    write_json(&a.out.join("summary.json"), &summary)
}

// ---------- quantize ----------

/// One quantization run: steps (nominal or measured) and all outputs, plus its summary.
struct QuantRun {
    steps: Tensor,
    q: Quantized,
    summary: Value,
}

#[allow(clippy::too_many_arguments)]
fn quantize_run(
    x: &Tensor,
    jt: &Tensor,
    layout: Layout,
    patch: usize,
    budget: f64,
    strategy: Strategy,
    bits: Bits,
    measured: bool,
    capped: Option<(&Tensor, f32)>,
) -> Result<QuantRun> {
    let grid = ops::grid_of(x, layout, patch)?;
    let (steps, m) = super::allocate(x, layout, patch, jt, capped.map(|c| c.0), budget, strategy, bits, measured)?;
    let q = ops::quantize(x, layout, patch, &steps, &QuantizeOptions { bits, ..Default::default() })?;
    let rate = q.rate.ok_or_else(|| Error::Arg("quantize returned no rate".into()))?;
    let summary = json!({
        "shape": x.size(), "layout": layout_name(layout), "patch": patch, "tokens": grid.tokens(), "k": grid.k(),
        "strategy": if capped.is_some() { "capped" } else { strategy_name(strategy) },
        "kappa": capped.map(|c| c.1),
        "seed": match strategy { Strategy::Permuted { seed } => Some(seed), _ => None },
        "bits": bits.bits(), "budget": budget, "measured_budget": measured,
        "nominal_mse": steps::nominal_mse(&host_f32(&steps)?),
        "measured_mse": q.mse,
        "beta": m.map_or(1.0, |m| m.beta),
        "clamped": q.clamped,
        "entropy_bits": rate.entropy_bits,
        "bits_per_element": rate.bits_per_element,
        // Bin i counts symbol histogram_min_symbol + i (b = 16: the last bin counts |q| > 255).
        "histogram_min_symbol": if bits == Bits::B8 { -127 } else { -255 },
        "histogram": q.histogram,
    });
    Ok(QuantRun { steps, q, summary })
}

fn quantize(a: QuantizeArgs) -> Result<()> {
    let dev = device(a.dev.device)?;
    let x = load(&a.x, dev)?;
    let layout = layout_of(a.tok.layout, &x)?;
    let (patch, reduce) = (a.tok.patch, a.tok.reduce);
    let grid = ops::grid_of(&x, layout, patch)?;
    let strategy = match a.strategy {
        StrategyArg::Jnd | StrategyArg::Capped => Strategy::Jnd,
        StrategyArg::Uniform => Strategy::Uniform,
        StrategyArg::Permuted => Strategy::Permuted { seed: a.seed },
    };
    let jt = match &a.jnd {
        Some(spec) => {
            let j = load(spec, dev)?;
            same_shape(&x, &j)?;
            ops::token_tolerance(&j, layout, patch, reduce)?
        }
        // Uniform ignores j_t; any positive values do.
        None if strategy == Strategy::Uniform => Tensor::f_ones([grid.tokens() as i64], (Kind::Float, dev))?,
        None => return Err(Error::Arg(format!("--jnd is required for --strategy {}", strategy_name(strategy)))),
    };
    let bits = a.bits;
    let caps = match a.strategy {
        StrategyArg::Capped => Some(ops::caps_from_rms(&ops::token_rms(&x, layout, patch)?, a.kappa)?),
        _ => None,
    };
    let r = quantize_run(&x, &jt, layout, patch, a.budget, strategy, bits, a.measured, caps.as_ref().map(|c| (c, a.kappa)))?;
    out_dir(&a.out)?;
    let missing = || Error::Arg("quantize did not return a requested output".into());
    io::save_tensor(&a.out.join("symbols.npy"), r.q.symbols.as_ref().ok_or_else(missing)?)?;
    io::save_tensor(&a.out.join("steps.npy"), &r.steps)?;
    io::save_tensor(&a.out.join("recon.npy"), r.q.recon.as_ref().ok_or_else(missing)?)?;
    io::save_tensor(&a.out.join("token_sse.npy"), r.q.token_sse.as_ref().ok_or_else(missing)?)?;
    write_json(&a.out.join("summary.json"), &r.summary)
}

// ---------- perturb ----------

/// Perturbs, writes `path`, and measures the NRMSE from what was written.
fn perturb_run(x: &Tensor, j: Option<&Tensor>, nrmse: f64, noise: Noise, path: &Path) -> Result<Value> {
    let (xp, rep) = ops::perturb(x, j, nrmse, noise)?;
    io::save_tensor(path, &xp)?;
    let written = host_f32(&io::load_tensor(path, None)?)?;
    let measured = nrmse_per_sample(&written, &host_f32(x)?, x.size()[0] as usize);
    Ok(json!({
        "shape": x.size(), "jnd": j.is_some(), "noise": noise,
        "nrmse": nrmse, "measured_nrmse": measured,
        "scales": rep.scales, "zero_samples": rep.zero_samples,
    }))
}

fn perturb(a: PerturbArgs) -> Result<()> {
    let dev = device(a.dev.device)?;
    let x = load(&a.x, dev)?;
    let j = a.jnd.as_deref().map(|s| load(s, dev)).transpose()?;
    out_dir(&a.out)?;
    let noise = Noise { kind: a.noise, seed: a.seed, subsequence: a.subsequence };
    let summary = perturb_run(&x, j.as_ref(), a.nrmse, noise, &a.out.join("perturbed.npy"))?;
    write_json(&a.out.join("summary.json"), &summary)
}

// ---------- noise ----------

fn noise(a: NoiseArgs) -> Result<()> {
    let dev = device(a.dev.device)?;
    let spec = Noise { kind: a.noise, seed: a.seed, subsequence: a.subsequence };
    // ops::noise allocates the whole f32 buffer: refuse sizes that cannot exist rather than abort.
    if a.numel > (isize::MAX as usize) / 4 {
        return Err(Error::Arg(format!("--numel {} is too large", a.numel)));
    }
    let t = ops::noise(a.numel, a.offset, spec, dev)?;
    if let Some(p) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        out_dir(p)?;
    }
    io::save_tensor(&a.out, &t)
}

// ---------- demo ----------

/// A deterministic NCHW feature whose magnitude varies smoothly in space (a bright blob per sample
/// over a dim floor) and a tolerance map proportional to that magnitude plus a floor.
fn synthetic(dev: Device) -> Result<(Tensor, Tensor)> {
    let (n, c, h, w) = (2usize, 16usize, 24usize, 24usize);
    let xi = host_f32(&ops::noise(n * c * h * w, 0, Noise { kind: NoiseKind::Gaussian, seed: 2024, subsequence: 0 }, Device::Cpu)?)?;
    let (mut x, mut j) = (Vec::with_capacity(xi.len()), Vec::with_capacity(xi.len()));
    for (i, &e) in xi.iter().enumerate() {
        let (s, ch, y, z) = (i / (c * h * w), (i / (h * w)) % c, (i / w) % h, i % w);
        let (cy, cz) = (8.0 + 8.0 * s as f32, 14.0 - 4.0 * s as f32);
        let d2 = (y as f32 - cy).powi(2) + (z as f32 - cz).powi(2);
        let m = (0.2 + 2.0 * (-d2 / 50.0).exp()) * (1.0 + 0.5 * (ch as f32).cos());
        x.push(m * e);
        j.push(0.05 + 0.5 * m);
    }
    let size = [n as i64, c as i64, h as i64, w as i64];
    let t = |v: &[f32]| -> Result<Tensor> { Ok(Tensor::from_slice(v).f_reshape(size)?.f_to_device(dev)?) };
    Ok((t(&x)?, t(&j)?))
}

fn demo(a: DemoArgs) -> Result<()> {
    let dev = device(a.dev.device)?;
    let (x, j) = synthetic(dev)?;
    out_dir(&a.out)?;
    io::save_tensor(&a.out.join("x.npy"), &x)?;
    io::save_tensor(&a.out.join("jnd.npy"), &j)?;
    let (layout, patch) = (Layout::Nchw, 1);
    let jt = ops::token_tolerance(&j, layout, patch, Reduce::Mean)?;
    // Budget at 20 dB below the feature's mean square, rounded to 3 significant digits.
    let ms = host_f32(&x)?.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.numel() as f64;
    let budget = format!("{:.2e}", ms / 100.0).parse::<f64>().unwrap_or(ms / 100.0);

    println!("featjnd demo: x {:?} f32 (NCHW), budget D = {budget:.3e} (mean x^2 = {ms:.3e}), 8-bit symbols", x.size());
    println!("{:<10} {:<9} {:>12} {:>12} {:>10} {:>8}", "strategy", "budget", "nominal MSE", "measured MSE", "bits/elem", "clamped");
    let mut rows = Vec::new();
    for strategy in [Strategy::Uniform, Strategy::Jnd, Strategy::Permuted { seed: 1 }] {
        for measured in [false, true] {
            let mode = if measured { "measured" } else { "nominal" };
            match quantize_run(&x, &jt, layout, patch, budget, strategy, Bits::B8, measured, None) {
                Ok(r) => {
                    let s = &r.summary;
                    println!(
                        "{:<10} {:<9} {:>12.4e} {:>12.4e} {:>10.3} {:>8}",
                        strategy_name(strategy),
                        mode,
                        s["nominal_mse"].as_f64().unwrap_or(f64::NAN),
                        r.q.mse,
                        s["bits_per_element"].as_f64().unwrap_or(f64::NAN),
                        r.q.clamped
                    );
                    let mut s = r.summary;
                    if let Some(o) = s.as_object_mut() {
                        // Keeps demo.json readable; `ops quantize` writes the full histogram.
                        o.remove("histogram");
                        o.remove("histogram_min_symbol");
                    }
                    rows.push(s);
                }
                Err(e) => {
                    println!("{:<10} {:<9} {e}", strategy_name(strategy), mode);
                    rows.push(json!({ "strategy": strategy_name(strategy), "measured_budget": measured, "error": e.to_string() }));
                }
            }
        }
    }

    let r = 0.1;
    println!("(no task here: at equal MSE, one uniform step is what minimises the rate; FeatJND's steps pay off in");
    println!(" task accuracy at equal MSE, which needs the task models of the study, not this synthetic feature)");
    println!("\nperturbation at NRMSE r = {r} (Gaussian, seed 0): measured per-sample NRMSE");
    let mut perturbs = Vec::new();
    for (name, jm) in [("J-shaped", Some(&j)), ("J = 1", None)] {
        let file = if jm.is_some() { "perturbed_jnd.npy" } else { "perturbed_plain.npy" };
        let s = perturb_run(&x, jm, r, Noise::default(), &a.out.join(file))?;
        let m: Vec<String> =
            s["measured_nrmse"].as_array().into_iter().flatten().map(|v| format!("{:.6}", v.as_f64().unwrap_or(f64::NAN))).collect();
        println!("{name:<10} {}", m.join("  "));
        perturbs.push(s);
    }
    let report = json!({ "shape": x.size(), "budget": budget, "mean_square": ms, "quantize": rows, "perturb": perturbs });
    write_json(&a.out.join("demo.json"), &report)?;
    println!("\nwrote x.npy, jnd.npy, perturbed_*.npy and demo.json to {}", a.out.display());
    Ok(())
}
