//! Settings a user can type that imply absurd memory or work, or mean nothing, through the binary:
//! each must end in a clean error naming the setting (exit 1 or 2, never a panic or an abort),
//! quickly and within bounded memory (`SLIMFLOW_REPORT_PEAK_MEMORY` makes the binary print its own
//! high-water mark). Before these checks existed, most of them panicked, aborted or allocated
//! gigabytes.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{slimflow, toy_config};

/// Wall time allowed per command (generous: the machine is shared).
const TIME_LIMIT: Duration = Duration::from_secs(60);
/// Resident memory any refusal may reach (libtorch alone keeps a few hundred MB).
const PEAK_LIMIT: u64 = 1 << 30;

/// Runs `args` in `dir`; returns (exit code, stderr), killing the process past [`TIME_LIMIT`].
fn run(args: &[String], dir: &Path) -> (Option<i32>, String) {
    let mut child = slimflow()
        .args(args)
        .current_dir(dir)
        .env("SLIMFLOW_REPORT_PEAK_MEMORY", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the slimflow binary starts");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            panic!("{args:?} ran past {TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let peak: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_bytes="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{args:?}: no peak_rss_bytes line ({:?}): {stderr}",
                out.status
            )
        });
    eprintln!(
        "{args:?}: exit {:?}, peak {} MiB, {:.2?}",
        out.status.code(),
        peak >> 20,
        start.elapsed()
    );
    assert!(peak < PEAK_LIMIT, "{args:?}: peak {peak} bytes");
    (out.status.code(), stderr)
}

/// Asserts that `args` are refused with exit 1 or 2 and a message containing every one of `needles`.
fn refused(args: &[String], dir: &Path, needles: &[&str]) {
    let (code, stderr) = run(args, dir);
    assert!(
        matches!(code, Some(1 | 2)),
        "{args:?}: exit {code:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: no `{n}` in: {stderr}");
    }
}

/// `slimflow <cmd> -c toy.toml --set …` as owned arguments.
fn stage(cmd: &str, sets: &[&str]) -> Vec<String> {
    let mut a = vec![
        cmd.to_string(),
        "-c".into(),
        toy_config().display().to_string(),
        "--set".into(),
        "device=\"cpu\"".into(),
    ];
    for s in sets {
        a.push("--set".into());
        a.push(s.to_string());
    }
    a
}

const IMAGE_MODEL: &str = "model={ arch = \"ncsnpp\", image_size = 16, nf = 16, ch_mult = [1, 2], \
                           num_res_blocks = 1, attn_resolutions = [] }";

#[test]
fn absurd_sizes_are_refused_with_the_number_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (sets, needles) in [
        (
            &["model.hidden=200000"][..],
            &["--set model", "memory limit"][..],
        ),
        (&["model.depth=100000"], &["--set model", "memory limit"]),
        (
            &["train.batch_size=1000000000"],
            &["train.batch_size", "memory limit"],
        ),
        (
            &["eval.samples=100000000"],
            &["eval.samples", "memory limit"],
        ),
        (&["pairs.count=1000000000000"], &["pairs.count"]),
        (
            &["pairs.solver={ kind = \"heun\", steps = 1000000000 }"],
            &["pairs.solver", "1000000000 steps"],
        ),
    ] {
        refused(&stage("train", sets), d, needles);
    }
    for spec in [
        "shapes:16,size=100000",
        "shapes:16,count=1000000000",
        "shapes:16,pad=100000",
    ] {
        // The toy config with the target replaced by the dataset.
        let text = std::fs::read_to_string(toy_config()).unwrap();
        let target = "target = { kind = \"checkerboard\", squares = 4, size = 4.0 }";
        assert!(text.contains(target));
        let cfg = d.join("images.toml");
        std::fs::write(&cfg, text.replace(target, &format!("dataset = \"{spec}\""))).unwrap();
        let mut args = stage("train", &[IMAGE_MODEL]);
        args[2] = cfg.display().to_string();
        refused(&args, d, &["data.dataset", spec, "memory limit"]);
        // The same spec given to `data info` directly, with no config to check it first.
        let args = ["data".to_string(), "info".into(), spec.into()];
        refused(&args, d, &[spec, "memory limit"]);
    }
}

#[test]
fn meaningless_and_misplaced_settings_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (sets, needles) in [
        (&["train.steps=0"][..], &["train.steps"][..]),
        (&["distill.eps=-1"], &["distill.eps"]),
        (&["eval.projections=0"], &["eval.projections"]),
        (&["eval.plot_extent=nan"], &["eval.plot_extent"]),
        (&["name=\"../../x\""], &["name"]),
        (&["name=\"/tmp/x\""], &["name"]),
        (&["train=5"], &["--set train", "integer"]),
        (
            &["train=5", "train.steps=3"],
            &["--set train.steps=3", "`train` is integer `5`, not a table"],
        ),
        (&["train.stepz=3"], &["stepz"]),
    ] {
        refused(&stage("train", sets), d, needles);
    }
    let mut bogus = stage("train", &[]);
    bogus.extend(["--device".into(), "bogus".into()]);
    refused(&bogus, d, &["--device", "bogus"]);
}

#[test]
fn a_cuda_request_without_cuda_names_the_fix() {
    if tch::Cuda::device_count() > 0 {
        eprintln!("skipped: this machine has CUDA");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fix = ["device cuda:0", "no CUDA device", "--device cpu"];
    let mut train = stage("train", &[]);
    train.extend(["--device".into(), "cuda".into()]);
    refused(&train, d, &fix);
    let mut set = stage("train", &["device=\"cuda:0\""]);
    set.push("--dry-run".into());
    refused(&set, d, &fix);
    let config = toy_config().display().to_string();
    let bench = [
        "bench", "--config", &config, "--stage", "train", "--batch", "8",
    ];
    let mut bench: Vec<String> = bench.map(String::from).to_vec();
    bench.extend(["--device".into(), "cuda".into()]);
    refused(&bench, d, &fix);
}

#[test]
fn sample_counts_that_make_nothing_or_too_much_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut train = stage("train", &["train.steps=5", "name=\"bad-n\""]);
    train.push("--run".into());
    train.push(d.join("run").display().to_string());
    let (code, stderr) = run(&train, d);
    assert_eq!(code, Some(0), "{stderr}");
    let sample = |n: &str| {
        let mut a = stage("sample", &["name=\"bad-n\""]);
        a.extend(
            [
                "--run",
                &d.join("run").display().to_string(),
                "--model-stage",
                "train",
                "--n",
                n,
                "--out",
                &d.join("s.safetensors").display().to_string(),
            ]
            .map(String::from),
        );
        a
    };
    refused(&sample("0"), d, &["--n 0", "at least one"]);
    refused(
        &sample("1000000000000"),
        d,
        &["--n 1000000000000", "memory limit"],
    );
    assert!(!d.join("s.safetensors").exists());
    let (code, stderr) = run(&sample("4"), d);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(d.join("s.safetensors").exists());
}
