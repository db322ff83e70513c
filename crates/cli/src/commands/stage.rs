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
    /// Under torchrun or srun, rank and world come from the launcher's environment instead.
    #[arg(long, default_value_t = 1)]
    pub world: usize,
    /// Start N local ranks of a data-parallel job, one device each (`cuda:LOCAL_RANK` for `auto`
    /// or `cuda`), as `torchrun --nproc-per-node N` would.
    #[arg(long, value_name = "N")]
    pub nproc_per_node: Option<usize>,
    /// Seconds a rank waits for the others in a collective before the job stops with an error
    /// naming the ranks that no longer answer.
    #[arg(long, value_name = "SECS", default_value_t = slimflow_trainer::parallel::DEFAULT_TIMEOUT.as_secs())]
    pub collective_timeout: u64,
}

/// The stage whose writers may also run unconnected (`--rank/--world`), sharing nothing but the
/// store.
const INDEPENDENT_WRITERS_STAGE: &str = "generate-pairs";

/// `Err` unless `which` can run as one of several unconnected writers.
fn check_independent_writers(which: Which, how: &str) -> Result<()> {
    match which {
        Which::One(s) if s.name == INDEPENDENT_WRITERS_STAGE => Ok(()),
        Which::One(s) => anyhow::bail!(
            "`{}` {how}: only `{INDEPENDENT_WRITERS_STAGE}` runs as unconnected writers; launch \
             a data-parallel job instead (`--nproc-per-node N`, torchrun or srun)",
            s.name
        ),
        Which::All => anyhow::bail!(
            "`pipeline` {how}: only `{INDEPENDENT_WRITERS_STAGE}` runs as unconnected writers; \
             launch a data-parallel job instead (`--nproc-per-node N`, torchrun or srun)"
        ),
    }
}

/// Which stages to run.
#[derive(Debug, Clone, Copy)]
pub enum Which {
    /// One stage.
    One(&'static Stage),
    /// All, in order.
    All,
}

/// Builds the stage context from the arguments (and, under torchrun or srun, the launcher's
/// environment: then this process joins the data-parallel job, and every rank must have been
/// started with the same binary, config and options).
pub fn context(args: &StageArgs, what: &str) -> Result<StageCtx> {
    let launch = slimflow_launch::Launch::from_env().context("reading the launch environment")?;
    let (rank, world) = if launch.is_distributed() {
        if args.world != 1 || args.rank != 0 {
            anyhow::bail!(
                "--rank {} --world {} given inside a launched job ({launch}): use one or the other",
                args.rank,
                args.world
            );
        }
        (launch.rank, launch.world)
    } else {
        (args.rank, args.world)
    };
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
    if world == 0 || rank >= world {
        anyhow::bail!("--rank {rank} --world {world}: need 0 ≤ rank < world");
    }
    let config = load_config(&args.config, &overrides)?;
    let run_dir = args
        .run
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&config.name));
    // Local workers of a launched job each take their own GPU.
    let mut choice = config.device;
    if launch.local_world > 1
        && matches!(choice, DeviceChoice::Auto | DeviceChoice::Cuda(0))
        && choice.device().is_cuda()
    {
        choice = DeviceChoice::Cuda(launch.local_rank);
    }
    let device = choice.resolve()?;
    config
        .performance
        .apply_globals(device)
        .map_err(anyhow::Error::msg)?;
    let dist = if launch.is_distributed() && !args.dry_run {
        if device == tch::Device::Cpu
            && launch.local_world > 1
            && std::env::var_os("OMP_NUM_THREADS").is_none()
        {
            // the node's cores are shared by its ranks
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            tch::set_num_threads((cores / launch.local_world).max(1) as i32);
        }
        let timeout = std::time::Duration::from_secs(args.collective_timeout.max(1));
        let at = slimflow_trainer::parallel::Rendezvous {
            host: launch.master_addr.clone(),
            port: launch.master_port,
            rank0_serves: !launch.agent_store,
            attempt: launch.attempt,
        };
        let dist = slimflow_trainer::parallel::Dist::connect(&at, rank, world, device, timeout)
            .with_context(|| format!("joining the data-parallel job ({launch})"))?;
        let toml = slimflow_trainer::config::to_toml(&config).context("serialising the config")?;
        let identity = format!(
            "{} {what} {toml} run={} force={} device={:?}",
            env!("CARGO_PKG_VERSION"),
            run_dir.display(),
            args.force,
            config.device,
        );
        dist.check_same("config", identity.as_bytes())?;
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| slimflow_tensor_io::sha256_file(&p).ok())
            .map(|h| h.0)
            .unwrap_or_default();
        dist.check_same("binary", exe.as_bytes())?;
        Some(std::sync::Arc::new(dist))
    } else {
        None
    };
    Ok(StageCtx {
        run_dir,
        config,
        device,
        force: args.force,
        rank,
        world,
        dist,
    })
}

fn run_one(ctx: &StageCtx, stage: &Stage) -> Result<StageOutcome> {
    (stage.run)(ctx).with_context(|| format!("stage `{}` in {}", stage.name, ctx.run_dir.display()))
}

/// Runs the selected stages; exit 130 when one was interrupted.
pub fn run(args: &StageArgs, which: Which) -> Result<ExitCode> {
    if let Some(n) = args.nproc_per_node.filter(|&n| n != 1) {
        return run_local_workers(args, n);
    }
    let what = match which {
        Which::One(s) => s.name,
        Which::All => "pipeline",
    };
    let ctx = context(args, what)?;
    if ctx.world > 1 && ctx.dist.is_none() && !args.dry_run {
        check_independent_writers(which, &format!("as writer {} of {}", ctx.rank, ctx.world))?;
    }
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

/// `--nproc-per-node N`: this command again as N local workers under the torchrun contract.
pub(crate) fn run_local_workers(args: &StageArgs, n: usize) -> Result<ExitCode> {
    if n == 0 {
        anyhow::bail!("--nproc-per-node 0: need at least one worker");
    }
    let launch = slimflow_launch::Launch::from_env().context("reading the launch environment")?;
    if launch.is_distributed() {
        anyhow::bail!(
            "--nproc-per-node {n} inside a launched job ({launch}): use one or the other"
        );
    }
    if args.world != 1 || args.rank != 0 {
        anyhow::bail!("--nproc-per-node {n} with --rank/--world: use one or the other");
    }
    let program = std::env::current_exe().context("locating this executable")?;
    let mut rest = std::env::args_os().skip(1);
    let mut worker_args = Vec::new();
    while let Some(a) = rest.next() {
        match a.to_str() {
            Some("--nproc-per-node") => {
                rest.next();
            }
            Some(s) if s.starts_with("--nproc-per-node=") => {}
            _ => worker_args.push(a),
        }
    }
    slimflow_trainer::interrupt::install();
    let job = slimflow_launch::LocalJob {
        nproc: n,
        program,
        args: worker_args,
        port: 0,
        grace: std::time::Duration::from_secs(30),
    };
    match slimflow_launch::spawn_local(&job, &slimflow_trainer::interrupt::requested) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(slimflow_launch::Error::Worker(f)) if f.code == Some(130) => {
            eprintln!("{f}; run the same command again to resume");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e).context(format!("{n} local workers")),
    }
}
