//! `slimflow parity DIR [--strict]`: compare our implementations with reference vectors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use slimflow_parity::{run_dir_on, Status};
use slimflow_trainer::config::DeviceChoice;

/// Options of `parity`.
#[derive(Debug, Args)]
pub struct ParityArgs {
    /// Directory of parity cases (NAME.json, NAME.io.safetensors, weights), e.g. ../shared/parity.
    pub dir: PathBuf,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Fail (exit 1) on cases of a kind this build does not implement, instead of listing them.
    #[arg(long)]
    strict: bool,
    /// Where networks, LPIPS, the Inception and the EDM sampler compute: cpu, cuda or cuda:N
    /// (the float64 and training-step kinds stay on the CPU). On CUDA, TF32 is off while the cases
    /// run (float32 as the CPU reference computed it; libtorch's default allows TF32 convolutions).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs every case; exit 1 if any fails.
pub fn run(args: &ParityArgs) -> Result<ExitCode> {
    let choice = DeviceChoice::try_from(args.device.clone())
        .map_err(|m| anyhow::anyhow!("--device {}: {m}", args.device))?;
    if choice == DeviceChoice::Auto {
        anyhow::bail!("--device auto: say cpu, cuda or cuda:N");
    }
    let device = choice.resolve()?;
    let strict_fp32 = slimflow_c10d::cuda::Tf32 {
        cudnn: false,
        cublas: false,
    };
    let before = if device.is_cuda() {
        Some(slimflow_c10d::cuda::set_tf32(strict_fp32).context("turning TF32 off")?)
    } else {
        None
    };
    let results = run_dir_on(&args.dir, device);
    if let Some(tf32) = before {
        slimflow_c10d::cuda::set_tf32(tf32).context("restoring TF32")?;
    }
    let results =
        results.with_context(|| format!("running the parity cases in {}", args.dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            let label = match r.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::NotImplemented => "NOT RUN",
            };
            let threads = r
                .threads
                .map(|n| format!(", {n} thread(s) as recorded"))
                .unwrap_or_default();
            println!(
                "{label:<8} {} ({}{threads}{})",
                r.case,
                if r.kind.is_empty() { "?" } else { &r.kind },
                if r.device == "cpu" {
                    String::new()
                } else {
                    format!(", on {}", r.device)
                }
            );
            for k in &r.keys {
                println!(
                    "         {} {:<36} max abs {:.3e}  max rel {:.3e}  [{}]",
                    if k.pass { "ok  " } else { "FAIL" },
                    k.key,
                    k.max_abs,
                    k.max_rel,
                    k.rule
                );
            }
            if let Some(e) = &r.error {
                println!("         error: {e}");
            }
        }
    }
    let count = |s: fn(&Status) -> bool| results.iter().filter(|r| s(&r.status)).count();
    let (pass, fail, not_run) = (
        count(|s| matches!(s, Status::Pass)),
        count(|s| matches!(s, Status::Fail)),
        count(|s| matches!(s, Status::NotImplemented)),
    );
    eprintln!("parity: {pass} passed, {fail} failed, {not_run} not implemented");
    if args.strict && not_run > 0 {
        eprintln!("parity: --strict: {not_run} case(s) of a kind this build does not implement");
    }
    Ok(if fail == 0 && !(args.strict && not_run > 0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
