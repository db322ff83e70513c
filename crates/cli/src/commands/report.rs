//! `slimflow report RUN_DIR`: summarise a pipeline run (also written to RUN_DIR/report.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

/// Options of `report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run directory (runs/<name>).
    run: PathBuf,
}

/// Runs the command.
pub fn run(args: &ReportArgs) -> Result<ExitCode> {
    if !args.run.is_dir() {
        anyhow::bail!("{}: not a run directory", args.run.display());
    }
    let md = slimflow_trainer::summary::pipeline_report(&args.run)
        .with_context(|| format!("summarising {}", args.run.display()))?;
    print!("{md}");
    Ok(ExitCode::SUCCESS)
}
