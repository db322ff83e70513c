//! `slimflow stages [--json]`: the trainer's stage table without its functions, so that other
//! programs (`cargo xtask`) follow the binary's stages instead of keeping their own list.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use slimflow_trainer::stage::{StageInfo, STAGES};

/// Options of `stages`.
#[derive(Debug, Args)]
pub struct StagesArgs {
    /// Print a JSON array, one object per stage in pipeline order (name, section, about, inputs,
    /// outputs, model, report).
    #[arg(long)]
    json: bool,
}

/// The table as `--json` prints it.
pub fn json() -> Result<String> {
    let infos: Vec<StageInfo> = STAGES.iter().map(|s| s.info()).collect();
    serde_json::to_string_pretty(&infos).context("serialising the stage table")
}

/// The table in words: one line per stage.
fn text() -> String {
    let mut out = format!(
        "{:<15} {:<8} {:<10} {:<30} {}\n",
        "stage", "section", "model", "writes", "reads"
    );
    for info in STAGES.iter().map(|s| s.info()) {
        let reads: Vec<String> = info
            .inputs
            .iter()
            .map(|i| match i.when {
                Some(when) => format!("{}/{} ({when})", i.producer, i.file),
                None => format!("{}/{}", i.producer, i.file),
            })
            .collect();
        let reads = if reads.is_empty() {
            "–".to_string()
        } else {
            reads.join(", ")
        };
        out.push_str(&format!(
            "{:<15} {:<8} {:<10} {:<30} {}\n",
            info.name,
            info.section,
            info.model.map_or("–", |m| m.label),
            info.outputs.join(", "),
            reads
        ));
    }
    out
}

/// Runs the command.
pub fn run(args: &StagesArgs) -> Result<ExitCode> {
    if args.json {
        println!("{}", json()?);
    } else {
        print!("{}", text());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_a_line_per_stage_in_order() {
        let text = text();
        let names: Vec<&str> = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let want: Vec<&str> = STAGES.iter().map(|s| s.name).collect();
        assert_eq!(names, want);
    }

    #[test]
    fn json_is_the_table_in_order() {
        let v: serde_json::Value = serde_json::from_str(&json().unwrap()).unwrap();
        let names: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = STAGES.iter().map(|s| s.name).collect();
        assert_eq!(names, want);
    }
}
