//! `slimflow fid-ref` and `slimflow fid`: FID with pytorch-fid's Inception network.
//!
//! Statistics come from a `.npz` (`mu`, `sigma`; pytorch-fid's and EDM's reference files, or EDM's by
//! name: `fid-ref-imagenet-64x64` after `slimflow weights fetch`), a dataset
//! spec (`cifar10:DIR`, `shapes:32`, …), a pair store (its x1 endpoints) or a samples file written by
//! `slimflow sample` (`samples` [N, C, H, W] in [-1, 1]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use slimflow_data::images::DatasetSpec;
use slimflow_data::PairStore;
use slimflow_metrics::fid::{FeatureStats, GaussianStats};
use tch::{Device, Tensor};

/// Options shared by both commands.
#[derive(Debug, Args)]
pub struct FidOptions {
    /// Inception weights (default: `slimflow weights fetch inception`'s file).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Images per Inception batch.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// cpu, cuda or cuda:N (default: cuda when available).
    #[arg(long)]
    device: Option<String>,
    /// Feature network: `inception` (FID) or `classifier:SPEC`, a small classifier trained here
    /// on the labelled dataset SPEC (e.g. `classifier:shapes:32`) — for machines without the
    /// Inception weights; its distances are reported as a stand-in, never as FID.
    #[arg(long, default_value = "inception")]
    features: String,
}

use slimflow_metrics::features::{choose, FeatureChoice, FeatureNet as Features, FeatureRequest};

/// Options of `fid-ref`.
#[derive(Debug, Args)]
pub struct FidRefArgs {
    /// Dataset spec, e.g. `cifar10:~/data/cifar-10-batches-bin` or `shapes:32,count=10000`.
    #[arg(long)]
    dataset: String,
    /// Output `.npz` (mu, sigma) — readable by pytorch-fid.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    opts: FidOptions,
}

/// Options of `fid`.
#[derive(Debug, Args)]
pub struct FidArgs {
    /// First set: .npz statistics (or `fid-ref-…`, EDM's fetched file), dataset spec, pair-store
    /// directory or samples .safetensors.
    a: String,
    /// Second set, same kinds.
    b: String,
    #[command(flatten)]
    opts: FidOptions,
}

fn device(opts: &FidOptions) -> Result<Device> {
    let choice = opts.device.clone().unwrap_or_else(|| "auto".into());
    match slimflow_trainer::config::DeviceChoice::try_from(choice.clone()) {
        Ok(d) => Ok(d.resolve()?),
        Err(_) => bail!("--device {choice}: use cpu, cuda, cuda:N or auto"),
    }
}

fn network(opts: &FidOptions) -> Result<Features> {
    let (choice, spec) = match opts.features.strip_prefix("classifier:") {
        Some(spec) => (FeatureChoice::Standin, spec),
        None if opts.features == "inception" => (FeatureChoice::Inception, ""),
        None => bail!(
            "--features {}: use inception or classifier:SPEC",
            opts.features
        ),
    };
    let cache = slimflow_weights::default_dir();
    if choice == FeatureChoice::Standin {
        eprintln!(
            "stand-in classifier for {spec} (trained once, cached in {})",
            cache.display()
        );
    }
    let request = FeatureRequest {
        choice,
        inception_weights: opts.weights.as_deref(),
        standin_spec: spec,
        standin_steps: 600,
        cache_dir: &cache,
    };
    let chosen = choose(&request, device(opts)?).context("loading the feature network")?;
    if let Some(acc) = chosen.standin_accuracy {
        eprintln!("stand-in classifier: held-out accuracy {:.1}%", acc * 100.0);
    }
    Ok(chosen.net)
}

/// Feature statistics of images delivered in [-1, 1] batches by `next`, with a progress bar.
fn stats_of(
    net: &Features,
    total: usize,
    batch: usize,
    mut next: impl FnMut(std::ops::Range<usize>) -> Result<Tensor>,
) -> Result<GaussianStats> {
    let mut bar = slimflow_trainer::progress::Progress::new("features", 0, total as u64);
    let mut acc = FeatureStats::new(net.dim());
    let mut done = 0;
    while done < total {
        let end = (done + batch.max(1)).min(total);
        let feats = net.features(&next(done..end)?)?;
        acc.add(&feats)?;
        done = end;
        bar.set(done as u64, String::new);
    }
    bar.finish();
    Ok(GaussianStats::from_features(&acc)?)
}

fn stats_for(source: &str, opts: &FidOptions, net: &mut Option<Features>) -> Result<GaussianStats> {
    let path = Path::new(source);
    if source.starts_with(slimflow_weights::FID_REF_PREFIX) && !path.exists() {
        // EDM's published statistics by name (`slimflow weights fetch fid-ref-…`)
        let file = slimflow_weights::resolve_reference(path, None)?;
        return Ok(GaussianStats::load_npz(&file)?);
    }
    if path.extension().is_some_and(|e| e == "npz") {
        return Ok(GaussianStats::load_npz(path)?);
    }
    let net = match net {
        Some(n) => n,
        None => net.insert(network(opts)?),
    };
    if path.join("pairs.json").is_file() {
        let store = PairStore::open(path)?;
        let reader = store.reader()?;
        let n = store.manifest().count as usize;
        return stats_of(net, n, opts.batch, |r| {
            let idx: Vec<u64> = (r.start as u64..r.end as u64).collect();
            Ok(reader.get(&idx)?.x1)
        });
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        let file = slimflow_tensor_io::read(path)?;
        let x = file.get("samples")?.shallow_clone();
        let n = x.size()[0] as usize;
        return stats_of(net, n, opts.batch, |r| {
            Ok(x.narrow(0, r.start as i64, (r.end - r.start) as i64))
        });
    }
    let spec: DatasetSpec = source.parse().with_context(|| {
        format!("`{source}` is not a .npz, pair store, samples file or dataset spec")
    })?;
    let set = spec.load()?;
    let n = set.len();
    stats_of(net, n, opts.batch, |r| {
        let idx: Vec<usize> = r.collect();
        Ok(set.batch(&idx))
    })
}

/// Runs `fid-ref`.
pub fn run_ref(args: &FidRefArgs) -> Result<ExitCode> {
    let mut net = None;
    let stats = stats_for(&args.dataset, &args.opts, &mut net)?;
    stats.save_npz(&args.out)?;
    println!("{}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// Runs `fid`.
pub fn run(args: &FidArgs) -> Result<ExitCode> {
    let mut net = None;
    let a = stats_for(&args.a, &args.opts, &mut net)?;
    let b = stats_for(&args.b, &args.opts, &mut net)?;
    let d = a.frechet_distance(&b)?;
    match args.opts.features.strip_prefix("classifier:") {
        Some(spec) => println!(
            "Fréchet distance in the features of a classifier trained on {spec} (a stand-in, not FID): {d:.6}"
        ),
        None => println!("{d:.6}"),
    }
    Ok(ExitCode::SUCCESS)
}
