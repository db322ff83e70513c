//! The stage commands: one per row of the trainer's stage table, and `pipeline` for all of them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use slimflow_trainer::stage::{Stage, STAGES};
use slimflow_trainer::{config::DeviceChoice, load_config, StageCtx, StageOutcome};

/// Options shared by every stage command.
#[derive(Debug, Args)]
pub struct StageArgs {
    /// Pipeline config (TOML), e.g. configs/toy/checkerboard.toml.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Override a config value before validation, e.g. `--set train.steps=500` or
    /// `--set reflow.anneal='{ kind = "linear" }'`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run directory (default: runs/<name> from the config).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Device: auto, cpu, cuda or cuda:N (overrides the config's `device`).
    #[arg(long)]
    pub device: Option<String>,
    /// Discard a stage directory made with a different config instead of refusing.
    #[arg(long)]
    pub force: bool,
    /// Print the resolved config and the run directory, then exit.
    #[arg(long)]
    pub dry_run: bool,
    /// generate-pairs: this writer's index among --world writers (shards i with i mod W = R).
    #[arg(long, default_value_t = 0)]
    pub rank: usize,
    /// generate-pairs: number of independent writers filling one store (processes, GPUs, nodes).
    #[arg(long, default_value_t = 1)]
    pub world: usize,
}

/// Which stages to run.
#[derive(Debug, Clone, Copy)]
pub enum Which {
    /// One stage.
    One(&'static Stage),
    /// All, in order.
    All,
}

/// Builds the stage context from the arguments.
pub fn context(args: &StageArgs) -> Result<StageCtx> {
    let mut overrides = args.overrides.clone();
    if let Some(d) = &args.device {
        DeviceChoice::try_from(d.clone()).map_err(|message| {
            slimflow_trainer::ConfigError::Invalid {
                location: format!("--device {d}"),
                message,
            }
        })?;
        overrides.push(format!("device=\"{d}\""));
    }
    if args.world == 0 || args.rank >= args.world {
        anyhow::bail!(
            "--rank {} --world {}: need 0 ≤ rank < world",
            args.rank,
            args.world
        );
    }
    let config = load_config(&args.config, &overrides)?;
    let run_dir = args
        .run
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&config.name));
    let device = config.device.device();
    if let DeviceChoice::Cuda(n) = config.device {
        if n as i64 >= tch::Cuda::device_count() {
            anyhow::bail!(
                "device = \"cuda:{n}\" but libtorch sees {} CUDA device(s)",
                tch::Cuda::device_count()
            );
        }
    }
    Ok(StageCtx {
        run_dir,
        config,
        device,
        force: args.force,
        rank: args.rank,
        world: args.world,
    })
}

fn run_one(ctx: &StageCtx, stage: &Stage) -> Result<StageOutcome> {
    (stage.run)(ctx).with_context(|| format!("stage `{}` in {}", stage.name, ctx.run_dir.display()))
}

/// Runs the selected stages; exit 130 when one was interrupted.
pub fn run(args: &StageArgs, which: Which) -> Result<ExitCode> {
    let ctx = context(args)?;
    if args.dry_run {
        println!("# run directory: {}", ctx.run_dir.display());
        println!("{}", toml_string(&ctx)?);
        println!("# plan");
        for row in slimflow_trainer::plan::plan(&ctx) {
            println!("#   {:<15} {:<22} {}", row.stage, row.state, row.work);
        }
        let problems = slimflow_trainer::plan::preflight(&ctx);
        for p in &problems {
            println!("# problem: {p}");
        }
        return Ok(if problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        });
    }
    if matches!(which, Which::All) {
        let problems = slimflow_trainer::plan::preflight(&ctx);
        if !problems.is_empty() {
            anyhow::bail!("the run cannot start:\n  - {}", problems.join("\n  - "));
        }
    }
    slimflow_trainer::interrupt::install();
    let stages: Vec<&Stage> = match which {
        Which::One(s) => vec![s],
        Which::All => STAGES.iter().collect(),
    };
    for stage in &stages {
        let name = stage.name;
        match run_one(&ctx, stage)? {
            StageOutcome::Interrupted => {
                eprintln!("stage `{name}` interrupted; run the same command again to resume");
                return Ok(ExitCode::from(130));
            }
            StageOutcome::Partial => {
                eprintln!(
                    "stage `{name}`: writer {} of {} done; other writers' shards remain",
                    ctx.rank, ctx.world
                );
                return Ok(ExitCode::SUCCESS);
            }
            StageOutcome::Skipped => eprintln!("stage `{name}`: already complete"),
            StageOutcome::Completed => eprintln!("stage `{name}`: complete"),
        }
    }
    for stage in stages {
        let Some(report) = stage.report else { continue };
        let md = ctx.run_dir.join(stage.name).join(report);
        if let Ok(table) = std::fs::read_to_string(&md) {
            println!("{table}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn toml_string(ctx: &StageCtx) -> Result<String> {
    slimflow_trainer::config::to_toml(&ctx.config).context("serialising the resolved config")
}
