//! `slimflow fid-ref` and `slimflow fid`: FID with pytorch-fid's Inception network.
//!
//! Statistics come from a `.npz` (`mu`, `sigma`; pytorch-fid's and EDM's reference files), a dataset
//! spec (`cifar10:DIR`, `shapes:32`, …), a pair store (its x1 endpoints) or a samples file written by
//! `slimflow sample` (`samples` [N, C, H, W] in [-1, 1]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use slimflow_data::images::DatasetSpec;
use slimflow_data::PairStore;
use slimflow_metrics::fid::{FeatureStats, GaussianStats};
use slimflow_metrics::inception::FidInception;
use tch::{Device, Kind, Tensor};

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
}

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
    /// First set: .npz statistics, dataset spec, pair-store directory or samples .safetensors.
    a: String,
    /// Second set, same kinds.
    b: String,
    #[command(flatten)]
    opts: FidOptions,
}

fn device(opts: &FidOptions) -> Result<Device> {
    Ok(match opts.device.as_deref() {
        None | Some("auto") => Device::cuda_if_available(),
        Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(d) => match d.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => Device::Cuda(i),
            None => bail!("--device {d}: use cpu, cuda, cuda:N or auto"),
        },
    })
}

fn network(opts: &FidOptions) -> Result<FidInception> {
    let path = match &opts.weights {
        Some(p) => p.clone(),
        None => slimflow_weights::locate(slimflow_weights::Net::Inception, None)?,
    };
    let net = FidInception::load(&path, device(opts)?)
        .with_context(|| format!("loading Inception weights {}", path.display()))?;
    Ok(net)
}

/// Feature statistics of images delivered in [-1, 1] batches by `next`, with a progress bar.
fn stats_of(
    net: &FidInception,
    total: usize,
    batch: usize,
    mut next: impl FnMut(std::ops::Range<usize>) -> Result<Tensor>,
) -> Result<GaussianStats> {
    let mut bar = slimflow_trainer::progress::Progress::new("inception features", 0, total as u64);
    let mut acc = FeatureStats::new(2048);
    let mut done = 0;
    while done < total {
        let end = (done + batch.max(1)).min(total);
        let x = next(done..end)?;
        let x = if x.size()[1] == 1 {
            x.repeat([1, 3, 1, 1])
        } else {
            x
        };
        let feats = net.pool3(&((x.to_kind(Kind::Float) + 1.0) / 2.0))?;
        acc.add(&feats)?;
        done = end;
        bar.set(done as u64, String::new);
    }
    bar.finish();
    Ok(GaussianStats::from_features(&acc)?)
}

fn stats_for(
    source: &str,
    opts: &FidOptions,
    net: &mut Option<FidInception>,
) -> Result<GaussianStats> {
    let path = Path::new(source);
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
        let file = slimflow_models::checkpoint::read(path)?;
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
    println!("{:.6}", a.frechet_distance(&b)?);
    Ok(ExitCode::SUCCESS)
}
