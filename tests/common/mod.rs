//! Helpers for the end-to-end tests: run the `slimflow` binary on the toy config in a temp dir.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The toy config.
pub fn toy_config() -> PathBuf {
    root().join("configs/toy/checkerboard.toml")
}

/// Settings that keep the toy pipeline quick in tests while preserving its behaviour.
pub const FAST: &[&str] = &[
    "train.steps=1500",
    "pairs.count=6000",
    "pairs.shard_size=2000",
    "pairs.batch_size=2000",
    "pairs.solver={ kind = \"rk45\", rtol = 1e-4, atol = 1e-4 }",
    "reflow.steps=1500",
    "distill.steps=600",
    "eval.samples=1000",
    "eval.projections=128",
    "eval.solver={ kind = \"rk45\", rtol = 1e-4, atol = 1e-4 }",
];

/// A `slimflow` command.
pub fn slimflow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slimflow"));
    c.env("SLIMFLOW_LOG", "warn");
    // Tests run several pipelines at once on a 2-core machine: one libtorch thread each avoids
    // oversubscription.
    c.env("OMP_NUM_THREADS", "1");
    c
}

/// `slimflow <cmd> --config <config> --run <run> --set …` (overrides after `sets`).
pub fn stage_cmd(cmd: &str, config: &Path, run: &Path, sets: &[&str]) -> Command {
    let mut c = slimflow();
    c.arg(cmd).arg("--config").arg(config).arg("--run").arg(run);
    for s in sets {
        c.arg("--set").arg(s);
    }
    c
}

/// Runs a command, returning its output.
pub fn output(mut c: Command) -> Output {
    c.output().expect("the slimflow binary runs")
}

/// Asserts success and returns stdout.
pub fn ok(c: Command) -> String {
    let out = output(c);
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Tensors of a safetensors file as (name, dtype, shape, bytes), sorted by name.
pub fn tensors(path: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                format!("{:?}", t.dtype()),
                t.shape().to_vec(),
                t.data().to_vec(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The step of the newest training state in a `checkpoints/` folder.
pub fn newest_state(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("state-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()
        })
        .max()
}

/// Debian's `dataset-fashion-mnist`. Under CI=true the test requires it; elsewhere it skips.
pub fn fashion_mnist() -> Option<PathBuf> {
    let dir = PathBuf::from("/usr/share/datasets/fashion-mnist");
    if dir.join("t10k-images-idx3-ubyte.gz").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true needs Fashion-MNIST at {}: apt-get install -y dataset-fashion-mnist",
        dir.display()
    );
    eprintln!(
        "skipped: no Fashion-MNIST at {} (apt-get install -y dataset-fashion-mnist)",
        dir.display()
    );
    None
}
