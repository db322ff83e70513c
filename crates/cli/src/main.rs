//! `slimflow`: train one-step generators with rectified flows.
//!
//! Every stage command reads the pipeline config (`--config FILE`, overridable with `--set key=value`)
//! and works in the run directory (`runs/<name>` or `--run DIR`). Exit codes: 0 success, 1 failure,
//! 2 invalid configuration or usage, 130 interrupted (run the same command again to resume).

mod commands;

use std::process::ExitCode;

use clap::{Args, FromArgMatches, Subcommand};
use slimflow_trainer::stage::{Stage, STAGES};

use commands::{
    bench::BenchArgs,
    data::DataArgs,
    fid::{FidArgs, FidRefArgs},
    import::ImportArgs,
    models::ModelsArgs,
    parity::ParityArgs,
    report::ReportArgs,
    sample::SampleArgs,
    stage::{StageArgs, Which},
    stages::StagesArgs,
    weights::WeightsArgs,
};

/// The commands besides the stages' own, which come from the trainer's stage table ([`cli`]).
#[derive(Debug, Subcommand)]
enum Command {
    /// Run every stage in order, skipping complete ones and resuming a partial one.
    Pipeline(StageArgs),
    /// List the pipeline stages in order: config section, inputs, outputs, model (`--json` for
    /// programs).
    Stages(StagesArgs),
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
    /// Time a stage's whole training step (or pair generation, or evaluation sampling) through
    /// the stages' own code on synthetic pairs, beside a plain tch loop: ms/step, images/s, peak
    /// memory, the share of each phase.
    Bench(BenchArgs),
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

/// The command line: a subcommand per stage of the table, in pipeline order, then [`Command`]'s.
fn cli() -> clap::Command {
    let stages = STAGES.iter().map(|s| {
        StageArgs::augment_args(clap::Command::new(s.name))
            .about(s.about)
            .long_about(None)
    });
    let top = clap::Command::new("slimflow").subcommands(stages);
    // After `augment_subcommands`, which would take `Command`'s doc comment as the about.
    Command::augment_subcommands(top)
        .version(env!("CARGO_PKG_VERSION"))
        .about(env!("CARGO_PKG_DESCRIPTION"))
        .long_about(None)
        .subcommand_required(true)
        .arg_required_else_help(true)
}

/// A parsed command line.
#[derive(Debug)]
enum Parsed {
    Stage(&'static Stage, StageArgs),
    Other(Command),
}

/// Parses the process's arguments; exits with clap's message and status on bad usage.
fn parse() -> Parsed {
    let mut cli = cli();
    let matches = cli.get_matches_mut();
    let stage = matches
        .subcommand()
        .and_then(|(name, sub)| Some((slimflow_trainer::stage::find(name)?, sub)));
    let parsed = match stage {
        Some((stage, sub)) => StageArgs::from_arg_matches(sub).map(|a| Parsed::Stage(stage, a)),
        None => Command::from_arg_matches(&matches).map(Parsed::Other),
    };
    parsed.unwrap_or_else(|e| e.format(&mut cli).exit())
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
    let result = match parse() {
        Parsed::Stage(stage, a) => commands::stage::run(&a, Which::One(stage)),
        Parsed::Other(c) => run(c),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", without_cpp_backtrace(&format!("{e:#}")));
            if e.chain()
                .any(|c| c.downcast_ref::<slimflow_trainer::ConfigError>().is_some())
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    };
    report_peak_memory();
    code
}

/// With `SLIMFLOW_REPORT_PEAK_MEMORY` set, prints the process's resident high-water mark
/// (`VmHWM` of /proc/self/status) as `peak_rss_bytes=N` on stderr.
fn report_peak_memory() {
    if std::env::var_os("SLIMFLOW_REPORT_PEAK_MEMORY").is_none() {
        return;
    }
    let kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
    match kib {
        Some(k) => eprintln!("peak_rss_bytes={}", k * 1024),
        None => eprintln!("peak_rss_bytes=unknown"),
    }
}

/// A message without the C++ backtrace libtorch appends to its errors (`Exception raised from …`
/// and `frame #N: …` lines, printed whatever TORCH_SHOW_CPP_STACKTRACES says for some errors):
/// its first line says what went wrong.
fn without_cpp_backtrace(msg: &str) -> String {
    let noise = |l: &str| {
        let l = l.trim_start();
        l.starts_with("Exception raised from ")
            || l.strip_prefix("frame #").is_some_and(|r| {
                r.split_once(':')
                    .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
            })
    };
    msg.lines()
        .filter(|l| !noise(l))
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_string()
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Pipeline(a) => commands::stage::run(&a, Which::All),
        Command::Stages(a) => commands::stages::run(&a),
        Command::Sample(a) => commands::sample::run(&a),
        Command::Data(a) => commands::data::run(&a),
        Command::FidRef(a) => commands::fid::run_ref(&a),
        Command::Fid(a) => commands::fid::run(&a),
        Command::Import(a) => commands::import::run(&a),
        Command::Report(a) => commands::report::run(&a),
        Command::Weights(a) => commands::weights::run(&a),
        Command::Models(a) => commands::models::run(&a),
        Command::Parity(a) => commands::parity::run(&a),
        Command::Bench(a) => commands::bench::run(&a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Subcommands taking the stage options: the table's stages, then `pipeline` and `sample`.
    #[test]
    fn every_stage_is_a_subcommand_and_every_stage_subcommand_a_stage() {
        let cli = cli();
        let with_stage_args: Vec<&str> = cli
            .get_subcommands()
            .filter(|c| c.get_arguments().any(|a| a.get_id() == "world"))
            .map(|c| c.get_name())
            .collect();
        let mut want: Vec<&str> = STAGES.iter().map(|s| s.name).collect();
        want.extend(["pipeline", "sample"]);
        assert_eq!(with_stage_args, want);
        for s in STAGES {
            let sub = cli.find_subcommand(s.name);
            assert_eq!(
                sub.and_then(|c| c.get_about()).map(|a| a.to_string()),
                Some(s.about.into())
            );
        }
    }

    #[test]
    fn libtorch_backtraces_are_left_out_of_error_messages() {
        let msg = "stage `train`: shape '[2, 3]' is invalid for input of size 7\n\
                   Exception raised from view at aten/src/ATen/native/TensorShape.cpp:123 (most \
                   recent call first):\n\
                   frame #0: c10::Error::Error(c10::SourceLocation) + 0x9c (0x7f in libc10.so)\n\
                   frame #1: <unknown function> + 0x3a9361 (0x5582 in slimflow)\n";
        assert_eq!(
            without_cpp_backtrace(msg),
            "stage `train`: shape '[2, 3]' is invalid for input of size 7"
        );
        let err = tch::Tensor::zeros([7], (tch::Kind::Float, tch::Device::Cpu))
            .f_view([2, 3])
            .unwrap_err();
        let shown = without_cpp_backtrace(&format!("{:#}", anyhow::Error::from(err)));
        assert!(
            !shown.contains("frame #") && shown.contains("invalid"),
            "{shown}"
        );
        assert_eq!(shown.lines().count(), 1, "{shown}");
    }

    #[test]
    fn a_stage_subcommand_parses_to_its_row() {
        cli().debug_assert();
        for s in STAGES {
            let m = cli()
                .try_get_matches_from(["slimflow", s.name, "--config", "c.toml", "--world", "2"])
                .unwrap();
            let (name, sub) = m.subcommand().unwrap();
            assert_eq!(
                slimflow_trainer::stage::find(name).map(|r| r.name),
                Some(s.name)
            );
            assert_eq!(StageArgs::from_arg_matches(sub).unwrap().world, 2);
            // the other commands do not claim a stage's name
            assert!(Command::from_arg_matches(&m).is_err());
        }
        let m = cli()
            .try_get_matches_from(["slimflow", "stages", "--json"])
            .unwrap();
        assert!(matches!(
            Command::from_arg_matches(&m),
            Ok(Command::Stages(_))
        ));
    }
}
