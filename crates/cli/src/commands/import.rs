//! `slimflow import`: reference checkpoints (EDM, rfpp, RectifiedFlow / SlimFlow) → slimflow models.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use slimflow_models::import::{import, read_tensors, ImportOptions, ImportSource};
use slimflow_models::ArchConfig;

/// Which implementation wrote the file.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum From {
    /// NVlabs/edm: `network-snapshot-*.pkl` (takes `ema`) or `training-state-*.pt` (takes `net`).
    Edm,
    /// rfpp: `flow_model_*_ema.pth` or `training_state_*.pth` (takes `model_state_dict`).
    Rfpp,
    /// RectifiedFlow / SlimFlow score_sde checkpoints (takes the EMA `shadow_params`).
    Ncsnpp,
}

/// Options of `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The implementation that wrote FILE.
    #[arg(long = "from", value_enum)]
    from: From,
    /// A PyTorch file (.pt / .pth / .pkl; read without executing pickled code) or .safetensors.
    file: PathBuf,
    /// Where to write the slimflow checkpoint (.safetensors).
    #[arg(long, required_unless_present = "list")]
    out: Option<PathBuf>,
    /// Architecture preset (see `slimflow models`); by default the preset of an EDM snapshot's
    /// published name (e.g. edm-imagenet-64x64-cond-adm.pkl → edm-adm-imagenet64), else
    /// edm-ddpmpp-cifar10 for edm/rfpp and rf-ncsnpp-cifar10 for ncsnpp.
    #[arg(long, conflicts_with = "arch_json")]
    arch: Option<String>,
    /// Architecture config as JSON (the `slimflow.arch` format, e.g. from `slimflow models --json`
    /// or a config's [model] table).
    #[arg(long)]
    arch_json: Option<PathBuf>,
    /// Sub-tree of the file to read (e.g. `ema`, `model`, `net`); default depends on --from.
    #[arg(long)]
    key: Option<String>,
    /// Load the matching tensors and report the rest instead of refusing.
    #[arg(long)]
    allow_partial: bool,
    /// Only list the file's entries and tensors (name, dtype, shape); write nothing.
    #[arg(long)]
    list: bool,
}

fn source(f: From) -> ImportSource {
    match f {
        From::Edm => ImportSource::Edm,
        From::Rfpp => ImportSource::Rfpp,
        From::Ncsnpp => ImportSource::Ncsnpp,
    }
}

fn list(args: &ImportArgs) -> Result<ExitCode> {
    let is_safetensors = args.file.extension().is_some_and(|e| e == "safetensors");
    if !is_safetensors {
        let file = slimflow_torchfile::load(&args.file)?;
        println!(
            "{} ({:?} format); top-level entries: {}",
            args.file.display(),
            file.format,
            file.top_level_keys().join(", ")
        );
    }
    let tensors = read_tensors(&args.file, args.key.as_deref())?;
    let mut total = 0i64;
    for (name, t) in &tensors.tensors {
        total += t.numel() as i64;
        println!("{name:<60} {:<9} {:?}", format!("{:?}", t.kind()), t.size());
    }
    println!(
        "{} tensors, {total} values{}",
        tensors.tensors.len(),
        args.key
            .as_deref()
            .map(|k| format!(" under `{k}`"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs the command.
pub fn run(args: &ImportArgs) -> Result<ExitCode> {
    if args.list {
        return list(args);
    }
    let out = args.out.as_ref().context("--out is required")?;
    let source = source(args.from);
    let (arch, arch_name) = match (&args.arch, &args.arch_json) {
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let cfg: ArchConfig = serde_json::from_str(&text)
                .with_context(|| format!("{}: not an architecture config", path.display()))?;
            (cfg, path.display().to_string())
        }
        (name, None) => {
            let name = name
                .as_deref()
                .unwrap_or(source.preset_for_file(&args.file));
            (ArchConfig::preset(name)?, name.to_string())
        }
    };
    if out.exists() && out.canonicalize().ok() == args.file.canonicalize().ok() {
        bail!("--out {} would overwrite the input", out.display());
    }
    let opts = ImportOptions {
        source,
        arch,
        key: args.key.clone(),
        allow_partial: args.allow_partial,
    };
    let got = import(&args.file, &opts, tch::Device::Cpu)
        .with_context(|| format!("importing {}", args.file.display()))?;
    let r = &got.report;
    let key = if got.key.is_empty() { "root" } else { &got.key };
    println!(
        "{} [{key}{}] → {arch_name} ({} params)",
        args.file.display(),
        if got.from_shadow_params {
            ", shadow_params named from `model`"
        } else {
            ""
        },
        got.model.num_params()
    );
    println!(
        "  tensors read {}, loaded {}{}",
        got.tensors_read,
        r.loaded,
        if got.cast_from.is_empty() {
            String::new()
        } else {
            format!("; cast to float32 from {}", got.cast_from.join(", "))
        }
    );
    for (title, items) in [
        ("left at initialisation (missing)", &r.missing),
        ("skipped (unexpected)", &r.unexpected),
        ("skipped (shape mismatch)", &r.mismatched),
    ] {
        if !items.is_empty() {
            println!("  {title}: {}", items.join(", "));
        }
    }
    let file_name = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let meta = BTreeMap::from([
        ("slimflow.imported_from".to_string(), file_name),
        (
            "slimflow.import_source".to_string(),
            format!("{:?}", args.from).to_lowercase(),
        ),
        ("slimflow.import_key".to_string(), got.key.clone()),
        (
            "slimflow.source_sha256".to_string(),
            slimflow_tensor_io::sha256_file(&args.file)?.0,
        ),
        (
            "slimflow.import_partial".to_string(),
            (!(r.missing.is_empty() && r.unexpected.is_empty() && r.mismatched.is_empty()))
                .to_string(),
        ),
    ]);
    got.model
        .save(out, &meta)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("  wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}
