//! `featjnd`: the command line. Parsing and dispatch only; each command lives in
//! `featjnd_research::cli`. Errors print as `error: ...`, exit code 1; a panic (a bug) prints one
//! `error: internal error …` line, exit code 2.
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;

use featjnd_research::cli;
use featjnd_research::Result;

#[derive(Parser)]
#[command(name = "featjnd", version, about = "Task-aligned JND kernels: token-wise quantization and matched-strength perturbation")]
struct Cli {
    #[command(subcommand)]
    cmd: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Run one op of the op contract (docs/contract.md) on feature files.
    Ops {
        #[command(subcommand)]
        op: cli::ops::Op,
    },
    /// Evaluate COCO detections against COCO ground truth: the 12 pycocotools COCOeval numbers.
    EvalCoco(cli::coco::EvalCocoArgs),
    /// Train a bundled task model (progress bar; checkpoint as safetensors + JSON metadata).
    TrainTask(cli::train_task::TrainTaskArgs),
    /// Shapes detector on real images (DeepForest, stardist): zero-shot, fine-tune, held-out AP.
    EvalReal(cli::real::EvalRealArgs),
    /// Encode a feature into a .fjq file (token-wise quantization + entropy coding); prints a JSON summary.
    Encode(cli::codec::EncodeArgs),
    /// Encode the split feature of a user's model straight from photos, one .fjq per photo
    /// (`featjnd encode --model DIR IMAGE… --out DIR` runs this).
    EncodeModel(cli::user::EncodeModelArgs),
    /// Decode a .fjq file to its reconstruction; prints a JSON summary.
    Decode(cli::codec::DecodeArgs),
    /// Train the FeatJND estimator of a task model at a split point.
    TrainJnd(cli::study::TrainJndArgs),
    /// The main job: estimators, matched-NRMSE study, attribution pictures -> report folder.
    Run(cli::study::RunArgs),
    /// The token-wise quantization study alone (same options as `run`; report in --out).
    EvalQuant(cli::study::RunArgs),
}

fn main() -> ExitCode {
    // `featjnd encode --model …` is `featjnd encode-model …` (the feature-file `encode` stays as is).
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "encode")
        && args.iter().skip(2).any(|a| a == "--model" || a.to_string_lossy().starts_with("--model="))
    {
        args[1] = "encode-model".into();
    }
    let cli = Cli::parse_from(args);
    // Every expected failure is an `Err` (exit 1). A panic is a bug: one line that says so and
    // where (not a backtrace dump), exit 2.
    std::panic::set_hook(Box::new(|info| {
        let msg = info.payload().downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| info.payload().downcast_ref::<String>().cloned());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error (a bug in featjnd, please report it){at}: {}", msg.unwrap_or_default().replace('\n', " "));
    }));
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(_) => ExitCode::from(2),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Top::Ops { op } => cli::ops::run(op),
        Top::EvalCoco(a) => cli::coco::run(&a),
        Top::TrainTask(a) => print_json(cli::train_task::run(&a)?),
        Top::EvalReal(a) => print_json(cli::real::run(&a)?),
        Top::Encode(a) => print_json(cli::codec::encode(&a)?),
        Top::EncodeModel(a) => print_json(cli::user::encode(&a)?),
        Top::Decode(a) => print_json(cli::codec::decode(&a)?),
        Top::TrainJnd(a) => print_json(cli::study::train(&a)?),
        Top::Run(a) => print_json(cli::study::run(&a)?),
        Top::EvalQuant(mut a) => {
            a.quant_only = true;
            print_json(cli::study::run(&a)?)
        }
    }
}

fn print_json(v: Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}
