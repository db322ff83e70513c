//! Runs the stages of a config in order through the `slimflow` binary and reads their manifests.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Stage order.
pub const STAGES: [&str; 5] = ["train", "generate-pairs", "reflow", "distill", "eval"];

/// The top-level `name` of a config file (for the default run directory). Only this key is read
/// here; the binary validates the whole config.
pub fn config_name(config: &Path) -> Result<String> {
    #[derive(Deserialize)]
    struct Named {
        name: String,
    }
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let named: Named = toml::from_str(&text)
        .with_context(|| format!("{}: no valid top-level `name`", config.display()))?;
    Ok(named.name)
}

#[derive(Deserialize)]
struct Manifest {
    status: String,
}

/// Runs each stage; a stage complete for the same config is skipped by the binary itself.
pub fn run_all(bin: &Path, config: &Path, run_dir: &Path, overrides: &[String]) -> Result<()> {
    for stage in STAGES {
        let mut cmd = Command::new(bin);
        cmd.arg(stage)
            .arg("--config")
            .arg(config)
            .arg("--run")
            .arg(run_dir);
        for o in overrides {
            cmd.arg("--set").arg(o);
        }
        let status = cmd
            .status()
            .with_context(|| format!("starting {}", bin.display()))?;
        if status.code() == Some(130) {
            bail!("stage `{stage}` was interrupted; run the same command again to resume");
        }
        if !status.success() {
            bail!("stage `{stage}` failed ({status})");
        }
        let path = run_dir.join(stage).join("manifest.json");
        let m: Manifest = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?;
        if m.status != "complete" {
            bail!(
                "stage `{stage}` ended with status `{}` ({})",
                m.status,
                path.display()
            );
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct Row {
    model: String,
    params: i64,
    distance_1step: f64,
    distance_many: f64,
    straightness: f64,
    nfe: usize,
}

/// Prints the evaluation table and where the pictures are.
pub fn print_report(run_dir: &Path) -> Result<()> {
    let path = run_dir.join("eval").join("report.json");
    let rows: Vec<Row> = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    println!();
    println!(
        "{:<10} {:>8} {:>12} {:>12} {:>13} {:>5}",
        "model", "params", "SW2 1-step", "SW2 ODE", "straightness", "NFE"
    );
    for r in &rows {
        println!(
            "{:<10} {:>8} {:>12.4} {:>12.4} {:>13.4} {:>5}",
            r.model, r.params, r.distance_1step, r.distance_many, r.straightness, r.nfe
        );
    }
    println!(
        "\nSW2: sliced Wasserstein-2 distance to 2000 held-out target samples (lower is better);"
    );
    println!(
        "NFE: evaluations of the adaptive many-step solve. Report: {}",
        path.display()
    );
    println!(
        "Plots: {}/eval/samples-*.png, trajectories-*.png",
        run_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_is_read_from_the_top_level() {
        let dir = std::env::temp_dir().join(format!("xtask-name-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(
            &p,
            "# c\nname = \"toy\"\nseed = 1\n[data]\nname = \"other\"\n",
        )
        .unwrap();
        assert_eq!(config_name(&p).unwrap(), "toy");
        std::fs::write(&p, "[data]\nname = \"x\"").unwrap();
        assert!(config_name(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
