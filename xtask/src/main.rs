//! `cargo xtask`: setup of libtorch, the demo, the papers' recipes, the test suite and pipelines.
//!
//! xtask does not link libtorch: it installs it, then drives `cargo` and the `slimflow` binary, and
//! reads the manifests and reports those write. It never reimplements a stage.

mod gpu_check;
mod pipeline;
mod recipes;
mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// Project automation for slimflow.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install PyTorch 2.11.0 (libtorch for `tch`) once per user and link it for cargo.
    Setup,
    /// Run the SlimFlow pipeline on the built-in procedural images (CPU, minutes) and print the
    /// results table; `--toy` runs the 2-D checkerboard pipeline instead.
    Demo {
        /// Run directory (default runs/demo, or runs/demo-toy with --toy).
        #[arg(long)]
        run: Option<PathBuf>,
        /// The 2-D toy pipeline (seconds) instead of the image one.
        #[arg(long)]
        toy: bool,
        /// Config overrides passed to every stage (`key=value`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Train with a paper's recipe, configs/<DATASET>/<RECIPE>.toml (e.g. imagenet64/rfpp,
    /// ffhq64/slimflow): teacher, pairs, reflow, distillation, FID. Complete stages are skipped and a
    /// partial one resumes, so the same command continues a run.
    Train {
        /// DATASET/RECIPE; an unknown name lists the available ones.
        #[arg(long)]
        recipe: String,
        #[command(flatten)]
        flags: RecipeFlags,
    },
    /// `train --recipe cifar10/<RECIPE>`: a paper's CIFAR-10 recipe.
    TrainCifar {
        /// `slimflow` (Annealing Reflow + Flow-Guided Distillation, a slim student) or `rfpp`
        /// (2-rectified flow++ from an EDM teacher).
        #[arg(long, default_value = "slimflow", value_parser = ["slimflow", "rfpp"])]
        recipe: String,
        #[command(flatten)]
        flags: RecipeFlags,
    },
    /// Run the whole test suite (after setup), plus formatting and lint checks with --lint.
    Test {
        /// Also run `cargo fmt --check` and `cargo clippy -D warnings`.
        #[arg(long)]
        lint: bool,
        /// Extra arguments passed to `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the criterion benchmarks (CPU; CUDA variants where a GPU is present).
    Bench {
        /// Extra arguments passed to `cargo bench` (e.g. a benchmark name filter after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Check a build on this machine: the CUDA tests (when a GPU is visible), the parity cases and
    /// the `slimflow bench` table (CPU: small sizes, CUDA: the recipes'), into one JSON report.
    GpuCheck(gpu_check::GpuCheckArgs),
    /// Run every stage of a config in order, skipping complete stages and resuming a partial one.
    Pipeline {
        /// Pipeline config, e.g. configs/toy/checkerboard.toml.
        #[arg(long)]
        config: PathBuf,
        /// Run directory (default runs/<name>).
        #[arg(long)]
        run: Option<PathBuf>,
        /// Config overrides passed to every stage (`key=value`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Run every stage as N local ranks of a data-parallel job, one device each.
        #[arg(long, value_name = "N")]
        nproc_per_node: Option<usize>,
    },
}

/// The flags of `train` and `train-cifar`; each becomes a `--set` override of the recipe.
#[derive(Debug, clap::Args)]
struct RecipeFlags {
    /// SlimFlow student size (slimflow recipes): 27.9M, 15.7M, 7.0M or 3.4M (CIFAR-10, FFHQ 64),
    /// 80.7M or 44.7M (ImageNet 64).
    #[arg(long)]
    student: Option<String>,
    /// Pretrained teacher checkpoint, in the recipe's format: an EDM snapshot `.pkl` (rfpp recipes,
    /// SlimFlow at 64×64) or a RectifiedFlow / SlimFlow 1-RF checkpoint (SlimFlow on CIFAR-10).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// The dataset: CIFAR-10's binary archive or folder; an EDM dataset zip or folder; for ImageNet
    /// also a folder of downsampled-ImageNet `.npz` batches.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run name: the run directory is runs/<NAME> (default: the config's name).
    #[arg(long)]
    run: Option<String>,
    /// Print the plan (stages, their state, the work left) and every problem that would stop the
    /// run, each with the command that fixes it; then exit.
    #[arg(long)]
    dry_run: bool,
    /// Further config overrides (`key=value`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Run every stage as N local ranks of a data-parallel job, one GPU each (`batch_size` stays
    /// the global batch). For several nodes launch `slimflow pipeline` with torchrun or srun.
    #[arg(long, value_name = "N")]
    nproc_per_node: Option<usize>,
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command in the workspace root, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// `cargo`, as the one running xtask.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Builds the `slimflow` binary and returns its path; `$SLIMFLOW_BIN` names a prebuilt one instead.
pub fn build_cli() -> Result<PathBuf> {
    build_cli_profile(false)
}

/// Whether the binary is built with NCCL (data parallelism between GPUs): when a GPU is visible, or
/// `SLIMFLOW_NCCL=1` asks for it (a cluster's login node without GPUs that builds for its GPU
/// nodes); `SLIMFLOW_NCCL=0` leaves it out.
fn with_nccl() -> bool {
    match std::env::var("SLIMFLOW_NCCL").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => gpu_check::cuda_available(),
    }
}

/// [`build_cli`] in the release (`true`) or the dev profile.
pub fn build_cli_profile(release: bool) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SLIMFLOW_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let mut args = vec!["build"];
    if release {
        args.push("--release");
    }
    args.extend(["--quiet", "-p", "slimflow-cli", "--bin", "slimflow"]);
    if with_nccl() {
        args.extend(["--features", "nccl"]);
    }
    run(cargo().args(args))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let profile = if release { "release" } else { "debug" };
    Ok(target.join(profile).join("slimflow"))
}

fn main() -> std::process::ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Setup => setup::ensure().map(|_| ()),
        Cmd::Demo {
            run,
            toy,
            overrides,
        } => {
            setup::ensure()?;
            let bin = build_cli()?;
            let (name, config) = if toy {
                ("demo-toy", "configs/toy/checkerboard.toml")
            } else {
                ("demo", "configs/shapes/slimflow-demo.toml")
            };
            let run_dir = run.unwrap_or_else(|| root().join("runs").join(name));
            let config = root().join(config);
            let stages = pipeline::run_all(&bin, &config, &run_dir, &overrides, None)?;
            pipeline::print_report(&run_dir, &stages)
        }
        Cmd::Train { recipe, flags } => train(&recipe, flags),
        Cmd::TrainCifar { recipe, flags } => train(&format!("cifar10/{recipe}"), flags),
        Cmd::Test { lint, args } => {
            setup::ensure()?;
            if lint {
                run(cargo().args(["fmt", "--all", "--", "--check"]))?;
                run(cargo().args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))?;
            }
            let mut test = cargo();
            if let Some(py) = setup::tensorboard_python()? {
                test.env("SLIMFLOW_TENSORBOARD_PYTHON", py);
            }
            run(test.args(["test", "--workspace"]).args(&args))
        }
        Cmd::Bench { args } => {
            setup::ensure()?;
            run(cargo()
                .args(["bench", "--workspace", "--bench", "*", "--"])
                .args(&args))
        }
        Cmd::GpuCheck(args) => {
            if let Some(dir) = &args.bundle {
                setup::ensure()?;
                return gpu_check::bundle(dir);
            }
            // a bundle's binaries find libtorch through LD_LIBRARY_PATH; nothing to install
            if args.prebuilt.is_none() {
                setup::ensure()?;
            }
            gpu_check::run(&args)
        }
        Cmd::Pipeline {
            config,
            run,
            overrides,
            nproc_per_node,
        } => {
            setup::ensure()?;
            let bin = build_cli()?;
            let run_dir = match run {
                Some(r) => r,
                None => root().join("runs").join(pipeline::config_name(&config)?),
            };
            let stages = pipeline::run_all(&bin, &config, &run_dir, &overrides, nproc_per_node)?;
            pipeline::print_report(&run_dir, &stages)
        }
    }
}

/// Runs (or with `--dry-run` plans) recipe `id` with its flags.
fn train(id: &str, flags: RecipeFlags) -> Result<()> {
    let recipe = recipes::find(&root().join("configs"), id)?;
    let facts = recipes::Facts::read(&recipe.path)?;
    let mut sets = recipes::overrides(
        &recipe,
        &facts,
        recipes::Flags {
            student: flags.student.as_deref(),
            teacher: flags.teacher.as_deref(),
            data: flags.data.as_deref(),
        },
    )?;
    sets.extend(flags.overrides);
    setup::ensure()?;
    let bin = build_cli()?;
    let name = match flags.run {
        Some(name) => name,
        None => pipeline::config_name(&recipe.path)?,
    };
    let run_dir = root().join("runs").join(name);
    if flags.dry_run {
        return pipeline::dry_run(&bin, &recipe.path, &run_dir, &sets);
    }
    let stages = pipeline::run_all(&bin, &recipe.path, &run_dir, &sets, flags.nproc_per_node)?;
    pipeline::print_report(&run_dir, &stages)
}
