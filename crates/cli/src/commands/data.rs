//! `slimflow data`: inspect datasets and pair stores, import and export pairs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use slimflow_data::images::{DatasetSpec, CIFAR10_MD5, CIFAR10_URL};
use slimflow_data::{PairDtype, PairStore, Verify};

/// Options of `data`.
#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Dtype {
    F32,
    F16,
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Verify and describe a dataset (`fashion-mnist`, `cifar10:DIR`, `folder:DIR,size=64`,
    /// `shapes:32,count=1000`, `idx:FILE`, options `,split=test`, `,pad=2`) or a pair-store
    /// directory: count, shape, dtype, value range, labels.
    Info {
        /// Dataset spec or pair-store directory.
        spec: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Pair stores: check every byte against its SHA-256 (default: sizes only).
        #[arg(long)]
        full: bool,
    },
    /// Build a pair store from SlimFlow-style arrays (z0.npy noise, z1.npy endpoints, label.npy)
    /// or from 2-rectified flow++'s `samples.zip` + `z.zip` (`--rfpp DIR`; the noise is regenerated
    /// from the stored NumPy generator states, bit-identical).
    Import {
        /// Noise array [N, …].
        #[arg(long, required_unless_present = "rfpp", conflicts_with = "rfpp")]
        z0: Option<PathBuf>,
        /// Teacher endpoints [N, …].
        #[arg(long, required_unless_present = "rfpp", conflicts_with = "rfpp")]
        z1: Option<PathBuf>,
        /// A folder with rfpp's `samples.zip` (PNG images) and `z.zip` (PCG64 states).
        #[arg(long)]
        rfpp: Option<PathBuf>,
        /// Class labels [N].
        #[arg(long)]
        label: Option<PathBuf>,
        /// Store directory.
        #[arg(long)]
        out: PathBuf,
        /// Pairs per shard.
        #[arg(long, default_value_t = 10_000)]
        shard_size: u64,
        /// Stored dtype.
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
    },
    /// Download a dataset from its official address (checksum-verified, resumable). Only
    /// `cifar10` needs this; Fashion-MNIST comes from Debian (`apt-get install
    /// dataset-fashion-mnist`) and `shapes` is built in.
    Fetch {
        /// `cifar10`.
        name: String,
        /// Folder (default: $SLIMFLOW_DATA_DIR, else ~/.cache/slimflow/data).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Base URL of a mirror serving the same file name.
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Write a pair store as z0.npy, z1.npy [, label.npy] (float32 / int64).
    Export {
        /// Pair-store directory.
        store: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

fn store_info(dir: &Path, full: bool) -> Result<serde_json::Value> {
    let store = PairStore::open(dir)?;
    store.verify(if full { Verify::Full } else { Verify::Fast })?;
    let m = store.manifest();
    let reader = store.reader()?;
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut counts = vec![0u64; m.num_classes as usize];
    for i in 0..store.num_shards() {
        let idx: Vec<u64> = store.shard_range(i).collect();
        let p = reader.get(&idx)?;
        for t in [&p.z, &p.x1] {
            lo = lo.min(t.min().double_value(&[]));
            hi = hi.max(t.max().double_value(&[]));
        }
        if let Some(l) = &p.labels {
            for c in Vec::<i64>::try_from(l)? {
                counts[c as usize] += 1;
            }
        }
    }
    Ok(json!({
        "kind": "pair_store",
        "path": dir.display().to_string(),
        "count": m.count,
        "sample_shape": m.sample_shape,
        "dtype": m.dtype,
        "shards": store.num_shards(),
        "verified": if full { "sha256" } else { "sizes" },
        "value_range": [lo, hi],
        "num_classes": m.num_classes,
        "label_counts": counts,
        "teacher_sha256": m.teacher_sha256,
        "solver": m.solver,
    }))
}

fn dataset_info(spec: &str) -> Result<serde_json::Value> {
    let spec: DatasetSpec = spec.parse()?;
    let set = spec.load()?;
    let (lo, hi) = set
        .pixels
        .iter()
        .fold((u8::MAX, u8::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let counts: Vec<u64> = match &set.labels {
        Some(l) => {
            let mut c = vec![0u64; set.num_classes()];
            for &v in l {
                c[v as usize] += 1;
            }
            c
        }
        None => Vec::new(),
    };
    Ok(json!({
        "kind": "dataset",
        "spec": spec.to_string(),
        "count": set.len(),
        "shape": [set.channels, set.height, set.width],
        "dtype": "uint8 (batches: float32 in [-1, 1])",
        "value_range": [lo, hi],
        "num_classes": set.num_classes(),
        "classes": set.classes,
        "label_counts": counts,
    }))
}

/// Runs the command.
pub fn run(args: &DataArgs) -> Result<ExitCode> {
    match &args.command {
        DataCommand::Info { spec, json, full } => {
            let path = Path::new(spec);
            let info = if path.join("pairs.json").is_file() {
                store_info(path, *full)?
            } else if path.join("generate-pairs/pairs/pairs.json").is_file() {
                store_info(&path.join("generate-pairs/pairs"), *full)?
            } else if path.exists() {
                anyhow::bail!(
                    "{spec}: not a pair store (no pairs.json); datasets are named kind:PATH, e.g. folder:{spec} or cifar10:{spec}"
                );
            } else {
                dataset_info(spec)?
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else if let Some(obj) = info.as_object() {
                for (k, v) in obj {
                    println!("{k:<15} {v}");
                }
            }
        }
        DataCommand::Import {
            z0,
            z1,
            rfpp,
            label,
            out,
            shard_size,
            dtype,
        } => {
            let dtype = match dtype {
                Dtype::F32 => PairDtype::F32,
                Dtype::F16 => PairDtype::F16,
            };
            let store = match (rfpp, z0, z1) {
                (Some(dir), _, _) => slimflow_data::rfpp::import_rfpp(
                    &dir.join("samples.zip"),
                    &dir.join("z.zip"),
                    out,
                    *shard_size,
                    dtype,
                )
                .with_context(|| format!("importing rfpp pairs from {}", dir.display()))?,
                (None, Some(z0), Some(z1)) => {
                    PairStore::import_npy(z0, z1, label.as_deref(), out, *shard_size, dtype)
                        .with_context(|| format!("importing {} / {}", z0.display(), z1.display()))?
                }
                _ => anyhow::bail!("give --z0 and --z1, or --rfpp DIR"),
            };
            store.verify(Verify::Full)?;
            println!(
                "{}: {} pairs of {:?} in {} shards",
                out.display(),
                store.manifest().count,
                store.manifest().sample_shape,
                store.num_shards()
            );
        }
        DataCommand::Fetch { name, dir, mirror } => {
            if name != "cifar10" {
                anyhow::bail!("`{name}`: only cifar10 is downloaded (fashion-mnist: apt-get install dataset-fashion-mnist; shapes is built in)");
            }
            let dir = dir
                .clone()
                .unwrap_or_else(slimflow_data::images::default_data_dir);
            let file = CIFAR10_URL
                .rsplit('/')
                .next()
                .unwrap_or("cifar-10-binary.tar.gz");
            let url = match mirror {
                Some(m) => format!("{}/{file}", m.trim_end_matches('/')),
                None => CIFAR10_URL.to_string(),
            };
            let dest = dir.join(file);
            slimflow_weights::download(
                &url,
                &dest,
                slimflow_weights::Checksum::Md5(CIFAR10_MD5),
                true,
            )?;
            let set = DatasetSpec {
                kind: "cifar10".into(),
                arg: Some(dest.display().to_string()),
                options: Vec::new(),
            }
            .load()?;
            println!("cifar10:{} ({} training images)", dest.display(), set.len());
        }
        DataCommand::Export { store, out } => {
            let s = PairStore::open(store)?;
            for p in s.export_npy(out)? {
                println!("{}", p.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
