//! Runs the stages of a config in order through the `slimflow` binary and reads their manifests.
//! The stages are the binary's (`slimflow stages --json`), so xtask keeps no list of its own.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// A pipeline stage as `slimflow stages --json` describes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Stage {
    /// Its subcommand and directory name.
    pub name: String,
    /// Its config section.
    pub section: String,
    /// Its one-line description.
    pub about: String,
    /// The files of earlier stages it reads.
    pub inputs: Vec<Input>,
    /// Its main output files.
    pub outputs: Vec<String>,
    /// The model it makes, if any.
    pub model: Option<ModelOutput>,
    /// A Markdown report among its outputs.
    pub report: Option<String>,
}

/// A file a stage reads from an earlier stage.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Input {
    /// The stage that writes it.
    pub producer: String,
    /// Its path in the producer's directory.
    pub file: String,
    /// What it is.
    pub what: String,
    /// When it is read (`None`: always).
    pub when: Option<String>,
}

/// The model a stage makes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ModelOutput {
    /// Its name in the evaluation table.
    pub label: String,
    /// Its file in the stage directory.
    pub file: String,
}

/// Parses the output of `slimflow stages --json`.
pub fn parse_stages(json: &str) -> Result<Vec<Stage>> {
    let stages: Vec<Stage> =
        serde_json::from_str(json).context("parsing `slimflow stages --json`")?;
    if stages.is_empty() {
        bail!("`slimflow stages --json` lists no stages");
    }
    Ok(stages)
}

/// The pipeline's stages in order, from the binary.
pub fn stages(bin: &Path) -> Result<Vec<Stage>> {
    let out = Command::new(bin)
        .args(["stages", "--json"])
        .output()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "`{} stages --json` failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_stages(&String::from_utf8_lossy(&out.stdout))
}

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

fn stage_command(
    bin: &Path,
    stage: &str,
    config: &Path,
    run_dir: &Path,
    overrides: &[String],
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg(stage)
        .arg("--config")
        .arg(config)
        .arg("--run")
        .arg(run_dir);
    for o in overrides {
        cmd.arg("--set").arg(o);
    }
    cmd
}

/// Prints the plan of a run (the binary's `pipeline --dry-run`); an error when it found problems.
pub fn dry_run(bin: &Path, config: &Path, run_dir: &Path, overrides: &[String]) -> Result<()> {
    let mut cmd = stage_command(bin, "pipeline", config, run_dir, overrides);
    let status = cmd
        .arg("--dry-run")
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !status.success() {
        bail!("the run cannot start as configured (see the problems above)");
    }
    Ok(())
}

/// The problems that would stop the run (dataset, weights, teacher), checked before any stage.
fn preflight(bin: &Path, config: &Path, run_dir: &Path, overrides: &[String]) -> Result<()> {
    let out = stage_command(bin, "pipeline", config, run_dir, overrides)
        .arg("--dry-run")
        .output()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let problems: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("# problem: "))
        .collect();
    if !problems.is_empty() {
        bail!("the run cannot start:\n  - {}", problems.join("\n  - "));
    }
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs each stage (as `nproc_per_node` local ranks of a data-parallel job when given); a stage
/// complete for the same config is skipped by the binary itself. Returns the stages.
pub fn run_all(
    bin: &Path,
    config: &Path,
    run_dir: &Path,
    overrides: &[String],
    nproc_per_node: Option<usize>,
) -> Result<Vec<Stage>> {
    preflight(bin, config, run_dir, overrides)?;
    let stages = stages(bin)?;
    for stage in stages.iter().map(|s| s.name.as_str()) {
        let mut cmd = stage_command(bin, stage, config, run_dir, overrides);
        if let Some(n) = nproc_per_node {
            cmd.args(["--nproc-per-node", &n.to_string()]);
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
    let out = Command::new(bin)
        .arg("report")
        .arg(run_dir)
        .output()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "writing the run report failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stages)
}

#[derive(Deserialize)]
struct Row {
    model: String,
    stage: String,
    params: i64,
    #[serde(default = "sw2")]
    metric: String,
    distance_1step: f64,
    distance_many: f64,
    straightness: f64,
    agreement: f64,
    nfe: usize,
    #[serde(default)]
    pictures: Vec<String>,
}

fn sw2() -> String {
    "SW2".into()
}

#[derive(Deserialize)]
struct Timed {
    wall_seconds: f64,
}

/// Prints the evaluation table (per model: params, metric at 1 step and along the ODE,
/// straightness, agreement, NFE, the wall time of the stage that made it), the wall time of the
/// `stages` without a model, and where the pictures are.
pub fn print_report(run_dir: &Path, stages: &[Stage]) -> Result<()> {
    let path = run_dir.join("eval").join("report.json");
    let rows: Vec<Row> = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    let wall = |stage: &str| -> Option<f64> {
        let p = run_dir.join(stage).join("manifest.json");
        let m: Timed = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        Some(m.wall_seconds)
    };
    let metric = rows.first().map(|r| r.metric.clone()).unwrap_or_default();
    println!();
    println!(
        "{:<10} {:>9} {:>14} {:>14} {:>13} {:>13} {:>5} {:>9}",
        "model",
        "params",
        format!("{metric} 1-step"),
        format!("{metric} ODE"),
        "straightness",
        "1-step vs ODE",
        "NFE",
        "time"
    );
    for r in &rows {
        let time = wall(&r.stage)
            .map(|s| format!("{s:.0} s"))
            .unwrap_or_else(|| "–".into());
        println!(
            "{:<10} {:>9} {:>14.4} {:>14.4} {:>13.4} {:>13.4} {:>5} {:>9}",
            r.model,
            r.params,
            r.distance_1step,
            r.distance_many,
            r.straightness,
            r.agreement,
            r.nfe,
            time
        );
    }
    let others: Vec<String> = stages
        .iter()
        .filter(|s| s.model.is_none())
        .filter_map(|s| wall(&s.name).map(|w| format!("{} {w:.0} s", s.name)))
        .collect();
    if !others.is_empty() {
        println!("other stages: {}", others.join(", "));
    }
    println!();
    match metric.as_str() {
        "SW2" => println!(
            "SW2: sliced Wasserstein-2 distance to held-out target samples (lower is better)."
        ),
        "FID" => println!(
            "FID: pytorch-fid Inception-v3 features against the dataset (lower is better)."
        ),
        _ => {
            let note = std::fs::read_to_string(run_dir.join("eval").join("metric.txt"))
                .unwrap_or_else(|_| format!("{metric}: lower is better"));
            println!("{note} (lower is better).");
        }
    }
    println!("NFE: evaluations of the many-step solve; 1-step vs ODE: E‖x_1step − x_ODE‖².");
    println!("Report: {}", path.display());
    let page = run_dir.join("report.html");
    if page.is_file() {
        println!(
            "Run report (stages, models, every picture): {}",
            page.display()
        );
    }
    let comparison = run_dir.join("eval").join("comparison.png");
    if comparison.is_file() {
        println!("Side by side: {}", comparison.display());
    }
    let eval_dir = run_dir.join("eval");
    for r in &rows {
        if !r.pictures.is_empty() {
            let list: Vec<String> = r
                .pictures
                .iter()
                .map(|p| eval_dir.join(p).display().to_string())
                .collect();
            println!("{}: {}", r.model, list.join(", "));
        }
    }
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

    /// `slimflow stages --json` as the binary printed it once: a sample of the format (nothing here
    /// has to follow when a stage is added).
    const CAPTURED: &str = include_str!("testdata/stages.json");

    #[test]
    fn stages_json_round_trips() {
        let stages = parse_stages(CAPTURED).unwrap();
        let again = serde_json::to_value(&stages).unwrap();
        let captured: serde_json::Value = serde_json::from_str(CAPTURED).unwrap();
        assert_eq!(again, captured);
        assert_eq!(parse_stages(&again.to_string()).unwrap(), stages);
        let without_model: Vec<&str> = stages
            .iter()
            .filter(|s| s.model.is_none())
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(without_model, ["generate-pairs", "eval"]);
        assert!(parse_stages("[]").is_err());
        assert!(parse_stages("{\"name\": \"train\"}").is_err());
    }
}
