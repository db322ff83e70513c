//! `cargo xtask gpu-check`: one command that checks a build on the machine it runs on. It uses the
//! `slimflow` binary (`$SLIMFLOW_BIN`, else a release build), runs the CUDA tests when a CUDA GPU is
//! present (and the `slimflow-c10d` tests with its `nccl` feature, which run real NCCL collectives
//! on the GPUs), the parity cases, and the benchmark table through `slimflow bench --json` (small
//! batches on the CPU, the recipes' sizes on CUDA), and writes one JSON report.
//!
//! `--bundle DIR` builds all of that here into one folder; `DIR/xtask gpu-check --prebuilt DIR`
//! runs it on a GPU machine that has no Rust toolchain (the source tree at the path it was built
//! from, libtorch from `LD_LIBRARY_PATH` or python3's torch).

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
    /// Build here what a GPU machine without a Rust toolchain needs, into DIR: the release
    /// `slimflow` binary with NCCL, the test executables that hold CUDA tests (all of
    /// `slimflow-c10d`'s), this program and a manifest; then run `DIR/xtask gpu-check --prebuilt
    /// DIR` there.
    #[arg(long, value_name = "DIR", conflicts_with = "prebuilt")]
    pub bundle: Option<PathBuf>,
    /// Check with the binaries of a `--bundle` directory instead of building (no cargo needed).
    #[arg(long, value_name = "DIR")]
    pub prebuilt: Option<PathBuf>,
}

/// The manifest of a `--bundle` directory.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// `git rev-parse HEAD` of the tree it was built from, and whether that tree had changes.
    pub commit: String,
    pub dirty: bool,
    /// The test executables, each run as `FILE FILTER` with the package directory as its
    /// working directory, as `cargo test` runs them.
    pub tests: Vec<TestExe>,
}

/// One test executable of a bundle.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct TestExe {
    /// Path inside the bundle.
    pub file: String,
    /// Package, and its directory relative to the workspace root.
    pub package: String,
    pub package_dir: String,
    /// The libtest name filter (empty: every test of the executable).
    pub filter: String,
    /// The tests the filter selects, as listed when the bundle was made.
    pub tests: Vec<String>,
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

/// One test executable of a release build.
struct BuiltTest {
    package: String,
    package_dir: PathBuf,
    exe: PathBuf,
}

/// The test executables of the workspace built with NCCL in release mode, and the `slimflow`
/// binary of the same build (the integration tests run it), from cargo's JSON messages.
fn test_executables() -> Result<(Vec<BuiltTest>, PathBuf)> {
    let out = crate::cargo()
        .args([
            "test",
            "--release",
            "--workspace",
            "--exclude",
            "xtask",
            "--features",
            "slimflow-cli/nccl",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(crate::root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test executables failed ({})", out.status);
    }
    let mut exes = Vec::new();
    let mut bin = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if msg["profile"]["test"] != true {
            if msg["target"]["name"] == "slimflow" && msg["target"]["kind"][0] == "bin" {
                bin = msg["executable"].as_str().map(PathBuf::from);
            }
            continue;
        }
        let (Some(exe), Some(manifest)) =
            (msg["executable"].as_str(), msg["manifest_path"].as_str())
        else {
            continue;
        };
        let package = msg["package_id"]
            .as_str()
            .and_then(|id| id.rsplit('#').next())
            .and_then(|tail| tail.split('@').next())
            .unwrap_or_default()
            .to_string();
        let dir = Path::new(manifest)
            .parent()
            .context("a manifest path without a directory")?
            .to_path_buf();
        exes.push(BuiltTest {
            package,
            package_dir: dir,
            exe: PathBuf::from(exe),
        });
    }
    let bin = bin.context("cargo built no `slimflow` binary for the integration tests")?;
    Ok((exes, bin))
}

/// The tests of `exe` that `filter` selects (`--list`).
fn listed_tests(exe: &Path, filter: &str) -> Result<Vec<String>> {
    let mut cmd = Command::new(exe);
    cmd.args(["--list", "--format", "terse"]);
    if !filter.is_empty() {
        cmd.arg(filter);
    }
    let out = cmd
        .output()
        .with_context(|| format!("listing the tests of {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "{} --list failed ({}): {}",
            exe.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

/// Copies `from` to `to` and strips its symbols where `strip` is installed (the bundle travels).
fn copy_stripped(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    // a missing `strip` only costs size
    let _ = Command::new("strip").arg(to).status();
    Ok(())
}

/// `--bundle DIR`: builds the release binary and test executables with NCCL and writes them, this
/// program and the manifest into `dir`.
pub fn bundle(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    let tests_dir = dir.join("tests");
    std::fs::create_dir_all(&tests_dir)
        .with_context(|| format!("creating {}", tests_dir.display()))?;
    // this program first: a build may replace its file
    let me = std::env::current_exe().context("locating this program")?;
    copy_stripped(&me, &dir.join("xtask"))?;
    let (exes, bin) = test_executables()?;
    copy_stripped(&bin, &dir.join("slimflow"))?;
    let root = crate::root();
    let mut tests = Vec::new();
    for BuiltTest {
        package,
        package_dir,
        exe,
    } in exes
    {
        // the shim's crate runs whole (its NCCL collectives); elsewhere the tests named for CUDA
        let filter = if package == "slimflow-c10d" {
            ""
        } else {
            "cuda"
        };
        let listed = listed_tests(&exe, filter)?;
        if listed.is_empty() {
            continue;
        }
        let name = exe
            .file_name()
            .context("a test executable without a file name")?
            .to_string_lossy()
            .to_string();
        copy_stripped(&exe, &tests_dir.join(&name))?;
        let rel = package_dir
            .strip_prefix(&root)
            .unwrap_or(&package_dir)
            .display()
            .to_string();
        println!("bundle: {name}: {} test(s) ({package})", listed.len());
        tests.push(TestExe {
            file: format!("tests/{name}"),
            package,
            package_dir: rel,
            filter: filter.to_string(),
            tests: listed,
        });
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let manifest = Manifest {
        commit: git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        dirty: git(&["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty()),
        tests,
    };
    let path = dir.join("manifest.json");
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let size: u64 = std::fs::read_dir(dir)?
        .chain(std::fs::read_dir(&tests_dir)?)
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    println!(
        "bundle: {} ({:.1} MB). On the GPU machine, from a checkout of the same tree at {}:\n  \
         LD_LIBRARY_PATH=<torch>/lib {}/xtask gpu-check --prebuilt {}",
        dir.display(),
        size as f64 / 1e6,
        root.display(),
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Reads a bundle's manifest.
fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (made by `gpu-check --bundle`)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Makes a bundle runnable here: the tree it was built from must be at the same path (its
/// executables know the workspace by that path), and libtorch must be findable: without
/// `LD_LIBRARY_PATH`, python3's torch is used (the bundle's rpath names the build machine's).
fn prepare_prebuilt() -> Result<()> {
    let root = crate::root();
    if !root.join("Cargo.toml").is_file() {
        bail!(
            "the bundle was built in {}, which is not a checkout here: run from a checkout at \
             that path (e.g. `ln -s \"$PWD\" {}`)",
            root.display(),
            root.display()
        );
    }
    if std::env::var_os("LD_LIBRARY_PATH").is_some_and(|p| !p.is_empty()) {
        return Ok(());
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .context("starting python3 to locate torch (or set LD_LIBRARY_PATH to libtorch's lib)")?;
    if !out.status.success() {
        bail!(
            "python3 has no torch ({}); set LD_LIBRARY_PATH to libtorch's lib directory",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let lib = String::from_utf8_lossy(&out.stdout).trim().to_string();
    println!("gpu-check: libtorch from python3's torch: {lib}");
    std::env::set_var("LD_LIBRARY_PATH", lib);
    Ok(())
}

/// Runs a bundle's test executables; one JSON entry each.
fn run_prebuilt_tests(dir: &Path, manifest: &Manifest) -> Vec<Value> {
    let mut runs = Vec::new();
    for t in &manifest.tests {
        let exe = dir.join(&t.file);
        let mut cmd = Command::new(&exe);
        if !t.filter.is_empty() {
            cmd.arg(&t.filter);
        }
        let line = format!("{} {}", t.file, t.filter);
        println!("gpu-check: {line} ({} test(s))", t.tests.len());
        let status = cmd.current_dir(crate::root().join(&t.package_dir)).status();
        let passed = status.as_ref().is_ok_and(|s| s.success());
        let mut entry = json!({"command": line, "package": t.package, "passed": passed});
        if let Err(e) = status {
            entry["error"] = json!(format!("starting {}: {e}", exe.display()));
        }
        runs.push(entry);
    }
    runs
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
        name: "edm_teacher_ncsnpp_56.4m_reflow_lpips_huber",
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
    // absolute: the tests run in their packages' directories
    let prebuilt = match &args.prebuilt {
        Some(dir) => {
            prepare_prebuilt()?;
            Some(std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?)
        }
        None => None,
    };
    let manifest = prebuilt.as_deref().map(read_manifest).transpose()?;
    let bin = match &prebuilt {
        Some(dir) => dir.join("slimflow"),
        None => binary()?,
    };
    let cuda = cuda_available();
    let device = if cuda { "cuda" } else { "cpu" };
    println!("gpu-check: {} on {device}", bin.display());
    let mut failed = Vec::new();

    // (b) the CUDA tests: every test whose name mentions cuda, in release mode. From a bundle,
    // its executables, all built with NCCL, in place of (b) and (b2), on any machine (without a
    // GPU they check the refusals).
    let prebuilt_tests = match (&prebuilt, &manifest) {
        (Some(dir), Some(m)) => {
            let runs = run_prebuilt_tests(dir, m);
            let passed = runs.iter().all(|r| r["passed"] == true);
            if !passed {
                failed.push("cuda_tests".to_string());
            }
            Some(json!({
                "ran": true, "passed": passed, "commit": m.commit, "dirty": m.dirty, "runs": runs,
            }))
        }
        _ => None,
    };
    let cuda_tests = if let Some(t) = &prebuilt_tests {
        t.clone()
    } else if cuda {
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
    let nccl_tests = if prebuilt_tests.is_some() {
        json!({"ran": true, "in": "cuda_tests (every bundled executable is built with NCCL)"})
    } else if cuda {
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

    // (c) parity: networks, LPIPS, the Inception and the EDM sampler on the checked device (TF32
    // off on CUDA), the float64 and training-step kinds on the CPU.
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
                .args(["parity", "--json", "--device", device])
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
                "ran": true, "dir": dir.display().to_string(), "device": device,
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
        "prebuilt": args.prebuilt.as_ref().map(|d| d.display().to_string()),
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
