//! `cargo xtask gpu-check`: one command that checks a build on the machine it runs on. It uses the
//! `slimflow` binary (`$SLIMFLOW_BIN`, else a release build), runs the CUDA tests when a CUDA GPU is
//! present (and the `slimflow-c10d` tests with its `nccl` feature, which run real NCCL collectives
//! on the GPUs), the parity cases, and the benchmark table through `slimflow bench --json` (small
//! batches on the CPU, the recipes' sizes on CUDA), and writes one JSON report.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Options of `gpu-check`.
#[derive(Debug, clap::Args)]
pub struct GpuCheckArgs {
    /// Smallest sizes (one step per row, no warm-up), for CI: a couple of minutes on 2 CPU cores.
    #[arg(long)]
    pub quick: bool,
    /// Report path (default target/gpu-check.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Parity cases (default `$SLIMFLOW_PARITY_DIR`, else ../shared/parity).
    #[arg(long)]
    pub parity: Option<PathBuf>,
    /// Leave out the parity cases.
    #[arg(long)]
    pub skip_parity: bool,
}

/// Whether a CUDA GPU is visible (`nvidia-smi -L` lists one); `SLIMFLOW_NO_CUDA` forces CPU.
pub(crate) fn cuda_available() -> bool {
    if std::env::var_os("SLIMFLOW_NO_CUDA").is_some() {
        return false;
    }
    Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GPU"))
}

/// The `slimflow` binary: `$SLIMFLOW_BIN`, else `cargo build --release -p slimflow-cli`.
fn binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SLIMFLOW_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("SLIMFLOW_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    crate::build_cli_profile(true)
}

/// One row of the bench table: a name and its `slimflow bench` arguments at CPU-quick, CPU and
/// CUDA sizes.
struct Row {
    name: &'static str,
    args: &'static [&'static str],
    /// (batch, steps, warmup) with --quick, on the CPU, on CUDA.
    sizes: [(u32, u32, u32); 3],
    /// Extra arguments on CUDA only.
    cuda_args: &'static [&'static str],
    /// Extra arguments on the CPU only.
    cpu_args: &'static [&'static str],
}

const ROWS: &[Row] = &[
    Row {
        name: "slimflow_student_15.7m_reflow",
        args: &["--preset", "cifar10/slimflow", "--stage", "reflow"],
        sizes: [(2, 1, 1), (16, 5, 1), (128, 20, 5)],
        cuda_args: &[],
        cpu_args: &[],
    },
    Row {
        name: "edm_teacher_55.7m_reflow_lpips_huber",
        args: &[
            "--preset",
            "cifar10/rfpp",
            "--stage",
            "reflow",
            "--no-baseline",
        ],
        sizes: [(1, 1, 0), (4, 2, 1), (64, 20, 5)],
        cuda_args: &[],
        cpu_args: &[],
    },
    Row {
        name: "slimflow_distill_flow_guided",
        args: &[
            "--preset",
            "cifar10/slimflow",
            "--stage",
            "distill",
            "--no-baseline",
        ],
        sizes: [(1, 1, 0), (8, 3, 1), (128, 20, 5)],
        cuda_args: &[],
        cpu_args: &[],
    },
    Row {
        name: "edm_sampler_pairs",
        args: &["--preset", "cifar10/rfpp", "--stage", "pairs"],
        sizes: [(1, 1, 0), (4, 1, 0), (256, 3, 1)],
        cuda_args: &[],
        // the recipe's 35 NFE at CPU speed would take minutes: 3 steps (5 NFE)
        cpu_args: &["--solver", "edm:3"],
    },
    Row {
        // the first row's step with channels-last kernels, against the same default-layout plain
        // step (float32 both); on CUDA with cuDNN autotuning, which is global and so serves both
        name: "slimflow_student_15.7m_reflow_channels_last",
        args: &[
            "--preset",
            "cifar10/slimflow",
            "--stage",
            "reflow",
            "--set",
            "performance.channels_last=true",
        ],
        sizes: [(2, 1, 1), (16, 5, 1), (128, 20, 5)],
        cuda_args: &["--set", "performance.cudnn_benchmark=true"],
        cpu_args: &[],
    },
];

/// Runs `bin` with `args`; its stdout parsed as JSON, or the failure in words.
fn bench_row(bin: &Path, args: &[String]) -> std::result::Result<Value, String> {
    let out = Command::new(bin)
        .args(args)
        .current_dir(crate::root())
        .output()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs the check and writes the report; fails when any part failed (after writing it).
pub fn run(args: &GpuCheckArgs) -> Result<()> {
    let bin = binary()?;
    let cuda = cuda_available();
    let device = if cuda { "cuda" } else { "cpu" };
    println!("gpu-check: {} on {device}", bin.display());
    let mut failed = Vec::new();

    // (b) the CUDA tests: every test whose name mentions cuda, in release mode.
    let cuda_tests = if cuda {
        let status = crate::cargo()
            .args(["test", "--release", "--workspace", "--", "cuda"])
            .current_dir(crate::root())
            .status()
            .context("starting cargo test")?;
        if !status.success() {
            failed.push("cuda_tests".to_string());
        }
        json!({"ran": true, "passed": status.success()})
    } else {
        let reason = "no CUDA GPU visible (nvidia-smi -L)";
        println!("CUDA tests skipped: {reason}");
        json!({"ran": false, "skipped": reason})
    };

    // (b2) the CUDA build of the shim (`nccl` feature): the c10d crate's tests (ProcessGroupNCCL:
    // a 1-rank group on one GPU, 2 ranks on cuda:0 and cuda:1 with two or more) and the trainer's
    // CUDA tests that need it (ordinary steps under CUDA's sync debug mode "error").
    let nccl_tests = if cuda {
        let commands: [&[&str]; 2] = [
            &[
                "test",
                "--release",
                "-p",
                "slimflow-c10d",
                "--features",
                "nccl",
            ],
            &[
                "test",
                "--release",
                "-p",
                "slimflow-trainer",
                "--features",
                "nccl",
                "--lib",
                "--",
                "cuda",
            ],
        ];
        let mut runs = Vec::new();
        for args in commands {
            let line = format!("cargo {}", args.join(" "));
            let status = crate::cargo()
                .args(args)
                .current_dir(crate::root())
                .status()
                .with_context(|| format!("starting {line}"))?;
            runs.push(json!({"command": line, "passed": status.success()}));
        }
        let passed = runs.iter().all(|r| r["passed"] == true);
        if !passed {
            failed.push("nccl_tests".to_string());
        }
        json!({"ran": true, "passed": passed, "runs": runs})
    } else {
        let reason = "no CUDA GPU visible (nvidia-smi -L)";
        println!("NCCL tests skipped: {reason}");
        json!({"ran": false, "skipped": reason})
    };

    // (c) parity (the runner computes on the CPU: `slimflow parity` takes no device).
    let parity = if args.skip_parity {
        json!({"ran": false, "skipped": "--skip-parity"})
    } else {
        let dir = args
            .parity
            .clone()
            .or_else(|| std::env::var_os("SLIMFLOW_PARITY_DIR").map(PathBuf::from))
            .unwrap_or_else(|| crate::root().join("../shared/parity"));
        if !dir.is_dir() {
            println!("parity skipped: {} is not a directory", dir.display());
            json!({"ran": false, "skipped": format!("{} is not a directory", dir.display())})
        } else {
            let out = Command::new(&bin)
                .args(["parity", "--json"])
                .arg(&dir)
                .current_dir(crate::root())
                .output()
                .context("starting slimflow parity")?;
            let cases: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let list = cases.as_array().cloned().unwrap_or_default();
            let count = |s: &str| list.iter().filter(|c| c["status"] == s).count();
            let (pass, fail) = (count("pass"), list.len() - count("pass"));
            println!(
                "parity: {pass} pass, {fail} not passing ({})",
                dir.display()
            );
            json!({
                "ran": true, "dir": dir.display().to_string(), "device": "cpu",
                "pass": pass, "fail": fail, "exit": out.status.code(), "cases": cases,
            })
        }
    };

    // (d) the bench table.
    let size = if cuda {
        2
    } else if args.quick {
        0
    } else {
        1
    };
    let mut rows = Vec::new();
    for row in ROWS {
        let (batch, steps, warmup) = row.sizes[size];
        let mut a: Vec<String> = vec!["bench".into()];
        a.extend(row.args.iter().map(|s| s.to_string()));
        a.extend(
            if cuda { row.cuda_args } else { row.cpu_args }
                .iter()
                .map(|s| s.to_string()),
        );
        a.extend([
            "--device".into(),
            device.into(),
            "--batch".into(),
            batch.to_string(),
            "--steps".into(),
            steps.to_string(),
            "--warmup".into(),
            warmup.to_string(),
            "--json".into(),
        ]);
        match bench_row(&bin, &a) {
            Ok(v) => {
                println!(
                    "{:<40} {:>10.1} ms/step {:>10.2} images/s",
                    row.name,
                    v["ms_per_step"].as_f64().unwrap_or(f64::NAN),
                    v["images_per_s"].as_f64().unwrap_or(f64::NAN)
                );
                rows.push(json!({"name": row.name, "ok": true, "result": v}));
            }
            Err(e) => {
                println!("{:<40} FAILED: {e}", row.name);
                failed.push(row.name.to_string());
                rows.push(json!({"name": row.name, "ok": false, "error": e}));
            }
        }
    }

    // (e) the report.
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| crate::root().join("target").join("gpu-check.json"));
    let report = json!({
        "device": device,
        "cuda": cuda,
        "quick": args.quick,
        "binary": bin.display().to_string(),
        "cuda_tests": cuda_tests,
        "nccl_tests": nccl_tests,
        "parity": parity,
        "bench": rows,
        "failed": failed,
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("report: {}", out.display());
    if !failed.is_empty() {
        bail!("gpu-check: failed: {}", failed.join(", "));
    }
    Ok(())
}
