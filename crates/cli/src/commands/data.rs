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
    /// `shapes:32,count=1000`, `idx:FILE`, `edm:ZIP_OR_DIR`, `imagenet64-npz:DIR`, options
    /// `,split=test`, `,pad=2`, `,count=N`) or a pair-store
    /// directory: count, shape, dtype, value range, labels.
    Info {
        /// Dataset spec or pair-store directory.
        spec: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Pair stores: every byte is checked against its SHA-256 in any case; accepted for
        /// compatibility.
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
    /// Download a dataset from its official address (checksum-verified, resumable): `cifar10`.
    /// `imagenet64`, `ffhq64` and `afhqv2-64` have no public download address: for them this
    /// prints the exact preparation steps and the resulting `data.dataset` value, and exits
    /// non-zero. Fashion-MNIST comes from Debian (`apt-get install dataset-fashion-mnist`) and
    /// `shapes` is built in.
    Fetch {
        /// `cifar10`, `imagenet64`, `ffhq64` or `afhqv2-64`.
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

fn store_info(dir: &Path) -> Result<serde_json::Value> {
    let store = PairStore::open(dir)?;
    store.verify(Verify::Full)?;
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
        "verified": "sha256",
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
    let numbered = !set.classes.is_empty()
        && set
            .classes
            .iter()
            .enumerate()
            .all(|(i, c)| *c == i.to_string());
    Ok(json!({
        "kind": "dataset",
        "spec": spec.to_string(),
        "count": set.len(),
        "shape": [set.channels, set.height, set.width],
        "dtype": "uint8 (batches: float32 in [-1, 1])",
        "value_range": [lo, hi],
        "num_classes": set.num_classes(),
        // class names; index-only names (EDM archives, ImageNet: "0", "1", …) say nothing more
        "classes": if numbered { serde_json::Value::Null } else { json!(set.classes) },
        "label_counts": counts,
    }))
}

/// Runs the command.
pub fn run(args: &DataArgs) -> Result<ExitCode> {
    match &args.command {
        DataCommand::Info { spec, json, .. } => {
            let path = Path::new(spec);
            let info = if path.join("pairs.json").is_file() {
                store_info(path)?
            } else if path.join("generate-pairs/pairs/pairs.json").is_file() {
                store_info(&path.join("generate-pairs/pairs"))?
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
            let dir = dir
                .clone()
                .unwrap_or_else(slimflow_data::images::default_data_dir);
            if let Some(steps) = preparation_steps(name, &dir) {
                eprintln!("{steps}");
                return Ok(ExitCode::FAILURE);
            }
            if name != "cifar10" {
                anyhow::bail!("`{name}`: known datasets are cifar10 (downloaded), imagenet64, ffhq64 and afhqv2-64 (prepared by hand; this command prints how); fashion-mnist: apt-get install dataset-fashion-mnist; shapes is built in");
            }
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

/// How to prepare the datasets that cannot be downloaded for the user (no public address, or an
/// account and licence needed), following EDM's README ("Preparing datasets"); `None` for others.
fn preparation_steps(name: &str, dir: &Path) -> Option<String> {
    let d = dir.display();
    let edm_tool =
        "git clone https://github.com/NVlabs/edm && pip install click numpy pillow tqdm \
                    (EDM's dataset_tool.py writes the zip)";
    let text = match name {
        "imagenet64" => format!(
            "imagenet64: ImageNet has no public download address (an account and its licence \
             are needed), so nothing was downloaded. Two ways to get it, both class-conditional \
             (1000 classes):

A. EDM's preparation (what EDM's ImageNet models and its FID reference were made from):
  1. Accept the rules of the ImageNet Object Localization Challenge on Kaggle, then
       kaggle competitions download -c imagenet-object-localization-challenge
       unzip imagenet-object-localization-challenge.zip -d downloads/imagenet
  2. {edm_tool}, then
       python edm/dataset_tool.py --source=downloads/imagenet/ILSVRC/Data/CLS-LOC/train \\
           --dest={d}/imagenet-64x64.zip --resolution=64x64 --transform=center-crop
  3. data.dataset = \"edm:{d}/imagenet-64x64.zip\"
     FID reference: `slimflow weights fetch fid-ref-imagenet-64x64`, then
     eval.reference = \"fid-ref-imagenet-64x64\"

B. Downsampled ImageNet 64x64 (Chrabaszcz et al. 2017; resized their own way, not with EDM's centre crop):
  1. Log in at https://image-net.org/download-images and download Imagenet64_train_part1_npz.zip,
     Imagenet64_train_part2_npz.zip and Imagenet64_val_npz.zip
  2. unzip all three into {d}/imagenet64
  3. data.dataset = \"imagenet64-npz:{d}/imagenet64\"   (split=test reads val_data.npz)
     Its images differ from EDM's, so compare against its own statistics:
       slimflow fid-ref --dataset imagenet64-npz:{d}/imagenet64 --out {d}/imagenet64-npz-fid.npz"
        ),
        "ffhq64" => format!(
            "ffhq64: FFHQ is served from Google Drive through its own script, with no direct \
             address, so nothing was downloaded. Steps (EDM's preparation):
  1. git clone https://github.com/NVlabs/ffhq-dataset && cd ffhq-dataset && python download_ffhq.py --images
     (89 GB: 70 000 PNGs in images1024x1024/)
  2. {edm_tool}, then
       python edm/dataset_tool.py --source=ffhq-dataset/images1024x1024 \\
           --dest={d}/ffhq-64x64.zip --resolution=64x64
  3. data.dataset = \"edm:{d}/ffhq-64x64.zip\"   (unconditional: model.label_dim = 0; the zip's labels
     are dataset_tool.py's indices of the top-level folders and mean nothing)
     FID reference: `slimflow weights fetch fid-ref-ffhq-64x64`, then eval.reference = \"fid-ref-ffhq-64x64\""
        ),
        "afhqv2-64" => format!(
            "afhqv2-64: AFHQv2 comes through StarGAN v2's download script, with no stable direct \
             address, so nothing was downloaded. Steps (EDM's preparation):
  1. git clone https://github.com/clovaai/stargan-v2 && cd stargan-v2 && bash download.sh afhq-v2-dataset
     (unpacks data/afhq_v2/ with train/ and test/, each cat/ dog/ wild/)
  2. {edm_tool}, then
       python edm/dataset_tool.py --source=stargan-v2/data/afhq_v2 \\
           --dest={d}/afhqv2-64x64.zip --resolution=64x64
  3. data.dataset = \"edm:{d}/afhqv2-64x64.zip\"   (unconditional: model.label_dim = 0; the zip's labels
     are dataset_tool.py's indices of the top-level folders, test/train)
     FID reference: `slimflow weights fetch fid-ref-afhqv2-64x64`, then eval.reference = \"fid-ref-afhqv2-64x64\""
        ),
        _ => return None,
    };
    Some(format!(
        "{text}\n\nCheck the result with `slimflow data info SPEC`."
    ))
}
