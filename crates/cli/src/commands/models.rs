//! `slimflow models`: registered architectures and presets with parameter counts.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use slimflow_models::{Model, PRESETS};

/// Options of `models`.
#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Print a JSON array of {name, arch, params, description}.
    #[arg(long)]
    json: bool,
}

/// Runs the command.
pub fn run(args: &ModelsArgs) -> Result<ExitCode> {
    let mut rows = Vec::new();
    for p in PRESETS {
        let cfg = (p.config)();
        let params = Model::new(&cfg, tch::Device::Cpu)?.num_params();
        rows.push(serde_json::json!({"name": p.name, "arch": cfg.name(), "params": params, "description": p.description}));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<20} {:<13} {:>11}  description",
            "preset", "arch", "params"
        );
        for r in &rows {
            println!(
                "{:<20} {:<13} {:>11}  {}",
                r["name"].as_str().unwrap_or_default(),
                r["arch"].as_str().unwrap_or_default(),
                r["params"].as_i64().unwrap_or_default(),
                r["description"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
