//! `slimflow`: train one-step generators with rectified flows.
//!
//! Every stage command reads the pipeline config (`--config FILE`, overridable with `--set key=value`)
//! and works in the run directory (`runs/<name>` or `--run DIR`). Exit codes: 0 success, 1 failure,
//! 2 invalid configuration or usage, 130 interrupted (run the same command again to resume).

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{
    data::DataArgs,
    fid::{FidArgs, FidRefArgs},
    import::ImportArgs,
    models::ModelsArgs,
    parity::ParityArgs,
    report::ReportArgs,
    sample::SampleArgs,
    stage::StageArgs,
    weights::WeightsArgs,
};

/// Train small one-step image generators with rectified flows (SlimFlow, 2-rectified flow++).
#[derive(Debug, Parser)]
#[command(name = "slimflow", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train the 1-rectified-flow teacher on independent (noise, data) pairs.
    Train(StageArgs),
    /// Solve the teacher's ODE from seeded noise into a sharded, resumable pair store.
    GeneratePairs(StageArgs),
    /// Train the 2-rectified flow on the teacher's pairs (optionally Annealing Reflow).
    Reflow(StageArgs),
    /// Distil the 2-rectified flow into a one-step generator (optionally flow-guided).
    Distill(StageArgs),
    /// Evaluate every trained model: distance to target at 1 and many steps, straightness, NFE.
    Eval(StageArgs),
    /// Run every stage in order, skipping complete ones and resuming a partial one.
    Pipeline(StageArgs),
    /// Draw samples from a stage's model or a checkpoint.
    Sample(SampleArgs),
    /// Inspect datasets and pair stores (`data info`), import or export pairs as .npy.
    Data(DataArgs),
    /// Reference FID statistics (.npz, pytorch-fid compatible) of a dataset.
    FidRef(FidRefArgs),
    /// FID between two sets: .npz statistics, dataset specs, pair stores or samples files.
    Fid(FidArgs),
    /// Convert a reference checkpoint (EDM, rfpp, RectifiedFlow / SlimFlow) into a slimflow model,
    /// reading PyTorch files without executing pickled code.
    Import(ImportArgs),
    /// Summarise a pipeline run: per stage status and wall time, the model table, the pictures
    /// (also written to RUN_DIR/report.md).
    Report(ReportArgs),
    /// Fetch (SHA-256 verified), convert or list the pretrained LPIPS and FID Inception networks.
    Weights(WeightsArgs),
    /// List registered architectures and presets with their parameter counts.
    Models(ModelsArgs),
    /// Compare our networks and functions with reference vectors: per case max abs/rel error and
    /// PASS/FAIL by the case's tolerance; exit 1 on any failure.
    Parity(ParityArgs),
}

/// `slimflow … | head` closes stdout early; Rust's print macros then panic. Exit quietly with the
/// conventional status 141 (killed by SIGPIPE) instead of printing a panic.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLIMFLOW_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => commands::stage::run(&a, commands::stage::Which::One("train")),
        Command::GeneratePairs(a) => {
            commands::stage::run(&a, commands::stage::Which::One("generate-pairs"))
        }
        Command::Reflow(a) => commands::stage::run(&a, commands::stage::Which::One("reflow")),
        Command::Distill(a) => commands::stage::run(&a, commands::stage::Which::One("distill")),
        Command::Eval(a) => commands::stage::run(&a, commands::stage::Which::One("eval")),
        Command::Pipeline(a) => commands::stage::run(&a, commands::stage::Which::All),
        Command::Sample(a) => commands::sample::run(&a),
        Command::Data(a) => commands::data::run(&a),
        Command::FidRef(a) => commands::fid::run_ref(&a),
        Command::Fid(a) => commands::fid::run(&a),
        Command::Import(a) => commands::import::run(&a),
        Command::Report(a) => commands::report::run(&a),
        Command::Weights(a) => commands::weights::run(&a),
        Command::Models(a) => commands::models::run(&a),
        Command::Parity(a) => commands::parity::run(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.chain()
                .any(|c| c.downcast_ref::<slimflow_trainer::ConfigError>().is_some())
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
