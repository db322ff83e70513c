//! The pipeline stages, in order in [`STAGES`]. Each reads its inputs from the run directory, writes
//! its outputs and a manifest into `<run>/<stage>/`, and is skipped when already complete for the
//! same config.

pub(crate) mod distill;
mod eval;
mod generate_pairs;
mod reflow;
mod sample;
mod table;
mod train;

pub(crate) use reflow::mix_pairs;

pub use distill::run as distill;
pub use eval::run as eval;
pub use generate_pairs::run as generate_pairs;
pub use reflow::run as reflow;
pub use sample::{run as sample, SampleClasses, SampleRequest};
pub use table::{find, models, Input, ModelOutput, Need, Stage, StageInfo};
pub use train::run as train;

use std::path::PathBuf;

use rand::Rng;
use rand_chacha::ChaCha20Rng;
use slimflow_data::{PairStore, Pairs};
use slimflow_losses::Batch;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::run_dir::{sha256_file, StageCtx, StageDir, StageOutcome};
use crate::run_loop::LoopEnd;

/// The pair store, read by the stages that train on pairs.
const PAIR_STORE: Input = Input {
    producer: "generate-pairs",
    file: "pairs/pairs.json",
    what: "the pair store",
    when: None,
};

/// The stages in pipeline order: the one table that the CLI, plan, preflight, summary, `eval` and
/// `cargo xtask` follow. A new stage is its module above, a row here and its config section.
pub static STAGES: &[Stage] = &[
    Stage {
        name: "train",
        section: "train",
        about: "Train the 1-rectified-flow teacher on independent (noise, data) pairs",
        inputs: &[],
        reads_models: false,
        outputs: &["model.safetensors"],
        model: Some(ModelOutput {
            label: "1-RF",
            file: "model.safetensors",
        }),
        report: None,
        run: train::run,
        work: train::work,
        preflight: train::preflight,
    },
    Stage {
        name: "generate-pairs",
        section: "pairs",
        about: "Solve the teacher's ODE from seeded noise into a sharded, resumable pair store",
        inputs: &[Input {
            producer: "train",
            file: "model.safetensors",
            what: "the teacher (1-RF) model",
            when: Some("pairs.import is not set"),
        }],
        reads_models: false,
        outputs: &["pairs/pairs.json"],
        model: None,
        report: None,
        run: generate_pairs::run,
        work: generate_pairs::work,
        preflight: generate_pairs::preflight,
    },
    Stage {
        name: "reflow",
        section: "reflow",
        about: "Train the 2-rectified flow on the teacher's pairs (optionally Annealing Reflow)",
        inputs: &[
            PAIR_STORE,
            Input {
                producer: "train",
                file: "model.safetensors",
                what: "the teacher model",
                when: Some("reflow.init = \"teacher\""),
            },
        ],
        reads_models: false,
        outputs: &["model.safetensors"],
        model: Some(ModelOutput {
            label: "2-RF",
            file: "model.safetensors",
        }),
        report: None,
        run: reflow::run,
        work: reflow::work,
        preflight: reflow::preflight,
    },
    Stage {
        name: "distill",
        section: "distill",
        about: "Distil the 2-rectified flow into a one-step generator (optionally flow-guided)",
        inputs: &[
            PAIR_STORE,
            Input {
                producer: "reflow",
                file: "model.safetensors",
                what: "the 2-RF model",
                when: None,
            },
        ],
        reads_models: false,
        outputs: &["model.safetensors"],
        model: Some(ModelOutput {
            label: "distilled",
            file: "model.safetensors",
        }),
        report: None,
        run: distill::run,
        work: distill::work,
        preflight: distill::preflight,
    },
    Stage {
        name: "eval",
        section: "eval",
        about: "Evaluate every trained model: distance to target at 1 and many steps, \
                straightness, NFE",
        inputs: &[],
        reads_models: true,
        outputs: &["report.json", "report.md"],
        model: None,
        report: Some("report.md"),
        run: eval::run,
        work: eval::work,
        preflight: eval::preflight,
    },
];

/// Per-stage salt mixed into the master seed so stages draw independent streams.
pub(crate) fn stage_seed(seed: u64, salt: u64) -> u64 {
    seed.wrapping_mul(0x0000_0100_0000_01B3).wrapping_add(salt)
}

/// A required input file of `stage`, produced by `producer`.
pub(crate) fn input(
    ctx: &StageCtx,
    stage: &'static str,
    producer: &'static str,
    what: &'static str,
    rel: &str,
) -> Result<(PathBuf, String)> {
    debug_assert!(
        table::declares(stage, producer, what, rel),
        "{stage} reads {producer}/{rel} ({what}), which its row in the stage table does not list"
    );
    let path = ctx.stage_path(producer).join(rel);
    let complete = ctx
        .manifest(producer)?
        .is_some_and(|m| m.status == crate::run_dir::Status::Complete);
    if !path.exists() || !complete {
        return Err(Error::MissingInput {
            stage,
            what,
            path,
            producer,
        });
    }
    let sha = sha256_file(&path)?;
    Ok((path, sha))
}

/// The outcome of a training stage whose loop ended with `end`; records the model output.
pub(crate) fn training_outcome(dir: &mut StageDir, end: LoopEnd) -> StageOutcome {
    match end {
        LoopEnd::Finished => {
            dir.output("model", "model.safetensors");
            let jsonl = dir.path.join("metrics.jsonl");
            if jsonl.exists() {
                match slimflow_metrics::pictures::loss_curve_png(&jsonl, &dir.path.join("loss.png"))
                {
                    Ok(_) => dir.output("loss_curve", "loss.png"),
                    Err(e) => tracing::warn!("no loss curve: {e}"),
                }
            }
            StageOutcome::Completed
        }
        LoopEnd::Interrupted => StageOutcome::Interrupted,
    }
}

/// Pair stores up to this many bytes (z and x1 as float32) are held in memory; larger ones are read
/// per batch.
const IN_MEMORY_PAIR_BYTES: u64 = 2 << 30;

/// Where training batches of pairs come from.
pub(crate) enum PairSource {
    /// The whole store, on the training device.
    Memory(Pairs),
    /// Positioned reads per batch.
    Reader(slimflow_data::PairReader, tch::Device),
}

impl PairSource {
    /// Opens the store next to `pairs_json`, verifying every shard against its SHA-256 (a damaged
    /// shard is an error naming it), and checks that its labels fit the `student` (labels exactly
    /// when it is class-conditional, within its classes).
    pub(crate) fn open(
        pairs_json: &std::path::Path,
        device: tch::Device,
        student: &slimflow_models::ArchConfig,
    ) -> Result<Self> {
        let dir = pairs_json.parent().unwrap_or(std::path::Path::new("."));
        let store = PairStore::open(dir)?;
        store.verify(slimflow_data::Verify::Full)?;
        let m = store.manifest();
        check_pair_labels(m.num_classes, student.label_dim(), dir)?;
        let bytes = m.count * m.sample_numel() as u64 * 8;
        Ok(if bytes <= IN_MEMORY_PAIR_BYTES {
            let mut pairs = store.load(device)?;
            pairs.labels = pairs.labels.map(|l| l.to_device(device));
            PairSource::Memory(pairs)
        } else {
            PairSource::Reader(store.reader()?, device)
        })
    }

    fn len(&self) -> u64 {
        match self {
            PairSource::Memory(p) => p.z.size()[0] as u64,
            PairSource::Reader(r, _) => r.len(),
        }
    }

    /// A batch of `n` pairs drawn uniformly with replacement using `rng`.
    pub(crate) fn batch(&self, n: usize, rng: &mut ChaCha20Rng) -> Result<Batch> {
        let total = self.len();
        let idx: Vec<u64> = (0..n).map(|_| rng.gen_range(0..total)).collect();
        Ok(match self {
            PairSource::Memory(pairs) => {
                let idx: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
                let idx = slimflow_tensor_io::upload(&Tensor::from_slice(&idx), pairs.z.device());
                Batch {
                    x0: pairs.z.index_select(0, &idx),
                    x1: pairs.x1.index_select(0, &idx),
                    labels: pairs.labels.as_ref().map(|l| l.index_select(0, &idx)),
                }
            }
            PairSource::Reader(reader, device) => {
                let p = reader.get(&idx)?;
                Batch {
                    x0: slimflow_tensor_io::upload(&p.z, *device),
                    x1: slimflow_tensor_io::upload(&p.x1, *device),
                    labels: p.labels.map(|l| slimflow_tensor_io::upload(&l, *device)),
                }
            }
        })
    }
}

/// A pair store with `classes` label classes (0: unlabelled) for a student with `label_dim`
/// classes: labels must be there exactly when the student is class-conditional, and fit its
/// classes. A labelled store is never fed to an unconditional student (its labels would be
/// ignored).
pub(crate) fn check_pair_labels(
    classes: u32,
    label_dim: i64,
    store: &std::path::Path,
) -> Result<()> {
    let classes = i64::from(classes);
    let problem = match (classes, label_dim) {
        (0, 0) => return Ok(()),
        (c, 0) => format!(
            "the pairs in {} carry labels of {c} classes but the student is unconditional \
             (label_dim = 0 in reflow.model, or model when it is absent); give it label_dim = {c} \
             or use unlabelled pairs",
            store.display()
        ),
        (0, d) => format!(
            "the student is class-conditional (label_dim = {d}) but the pairs in {} carry no \
             labels; generate them with a class-conditional teacher (model.label_dim) or import \
             them with their labels (label.npy, rfpp's images_labels.csv)",
            store.display()
        ),
        (c, d) if c > d => format!(
            "the pairs in {} carry labels of {c} classes but the student has label_dim = {d}",
            store.display()
        ),
        _ => return Ok(()),
    };
    Err(Error::Invalid(problem))
}

/// An image set's labels checked against a model with `label_dim` classes: a class-conditional
/// model needs a labelled dataset with exactly its classes.
pub(crate) fn check_dataset_labels(
    set: &slimflow_data::images::ImageSet,
    label_dim: i64,
) -> Result<()> {
    let classes = set.num_classes() as i64;
    if label_dim == 0 || (set.labels.is_some() && classes == label_dim) {
        return Ok(());
    }
    Err(Error::Invalid(if set.labels.is_none() {
        format!(
            "model.label_dim = {label_dim} (class-conditional) but data.dataset `{}` has no class \
             labels (folders need one sub-folder per class; idx: labels=FILE); use a labelled \
             dataset or label_dim = 0",
            set.name
        )
    } else {
        format!(
            "model.label_dim = {label_dim} but data.dataset `{}` has {classes} classes; set \
             label_dim = {classes}",
            set.name
        )
    }))
}

/// The run's source distribution as fresh noise for the objectives (the flow-guided term's ε):
/// N(0, std²·I) for any shape, the other 2-D distributions for [B, 2].
#[derive(Debug)]
pub(crate) struct SourceNoise<'a>(pub &'a slimflow_data::Toy);

impl slimflow_losses::NoiseSource for SourceNoise<'_> {
    fn sample(
        &self,
        rng: &mut dyn rand::RngCore,
        shape: &[i64],
        device: tch::Device,
    ) -> slimflow_losses::Result<Tensor> {
        use slimflow_data::Toy;
        match *self.0 {
            Toy::Gaussian { std: 1.0 } => Ok(slimflow_losses::normal_tensor(rng, shape, device)),
            Toy::Gaussian { std } => Ok(slimflow_losses::normal_tensor(rng, shape, device) * std),
            ref toy if shape.len() == 2 && shape[1] == 2 => {
                Ok(toy.sample_tensor(rng, shape[0] as usize, device))
            }
            ref toy => Err(slimflow_losses::Error::Invalid(format!(
                "the source {toy:?} is 2-D but noise of shape {shape:?} was asked for"
            ))),
        }
    }
}

/// The image dataset of an image run, checked against the architecture's sample shape.
pub(crate) fn image_set(
    spec: &slimflow_data::images::DatasetSpec,
    arch: &slimflow_models::ArchConfig,
) -> Result<std::sync::Arc<slimflow_data::images::ImageSet>> {
    let set = spec.load()?;
    let have = vec![set.channels as i64, set.height as i64, set.width as i64];
    let want = arch.data_shape();
    if have != want {
        return Err(Error::Invalid(format!(
            "dataset {} holds {:?} images but the model `{}` expects {:?}; set the dataset's \
             size=… option or the model's image size / channels",
            set.name,
            have,
            arch.name(),
            want
        )));
    }
    Ok(std::sync::Arc::new(set))
}

/// The VGG LPIPS network of `preset`, from the installed weights (`slimflow weights fetch
/// lpips-vgg`); a missing file is an error naming the commands that provide it.
/// A loss built by `slimflow-losses`; missing LPIPS weights become a config-level error naming
/// the commands that install them.
pub(crate) fn build<T>(built: slimflow_losses::Result<T>) -> Result<T> {
    built.map_err(|e| match e {
        slimflow_losses::Error::NotInstalled(e) => Error::Invalid(format!("LPIPS loss: {e}")),
        e => e.into(),
    })
}

/// The preflight needs of a loss's pretrained networks.
pub(crate) fn loss_needs(nets: Vec<slimflow_weights::Net>) -> Vec<Need> {
    nets.into_iter()
        .map(|net| Need::Weights(net, "LPIPS loss"))
        .collect()
}

/// Mixes `beta`-scaled fresh noise into the pair noise: SlimFlow's annealed z' (no draw when β = 0).
/// ε ~ N(0, source_std²·I), the (Gaussian) source's law, which the mix then keeps; non-Gaussian
/// sources are refused with annealing by the config check.
pub fn anneal_noise(
    x0: &Tensor,
    keep: f64,
    beta: f64,
    source_std: f64,
    rng: &mut ChaCha20Rng,
) -> Tensor {
    if beta > 0.0 {
        let eps = slimflow_losses::normal_tensor(rng, &x0.size(), x0.device());
        let eps = if source_std == 1.0 {
            eps
        } else {
            eps * source_std
        };
        mix_noise(x0, &eps, keep, beta)
    } else {
        x0.shallow_clone()
    }
}

/// z' = keep·z + β·ε with keep = sqrt(1 − β²) ([`slimflow_schedules::Anneal::mix`]).
pub fn mix_noise(z: &Tensor, eps: &Tensor, keep: f64, beta: f64) -> Tensor {
    z * keep + eps.to_kind(z.kind()) * beta
}

/// Mirrors the samples where `flip` is set: images ([B, C, H, W]) horizontally, vectors ([B, D]) in
/// their first coordinate.
pub fn hflip(x: &Tensor, flip: &Tensor) -> Tensor {
    match x.dim() {
        4 => x.flip([3]).where_self(&flip.view([-1, 1, 1, 1]), x),
        _ => {
            let sign = Tensor::ones([x.size()[1]], (x.kind(), x.device()));
            let _ = sign.narrow(0, 0, 1).fill_(-1.0);
            (x * sign).where_self(&flip.view([-1, 1]), x)
        }
    }
}

/// SlimFlow's per-batch flip from one uniform draw u ∈ [0, 1): a \[n\] boolean mask, all set when
/// u > ½ (`np.random.rand() > 0.5`), none otherwise.
pub fn batch_flips(u: f64, n: usize, device: tch::Device) -> Tensor {
    Tensor::full([n as i64], i64::from(u > 0.5), (Kind::Int64, device)).to_kind(Kind::Bool)
}

/// A [B] boolean mask with each entry set with probability ½ by `rng`.
pub(crate) fn coin_flips(rng: &mut ChaCha20Rng, n: usize, device: tch::Device) -> Tensor {
    let v: Vec<bool> = (0..n).map(|_| rng.gen::<bool>()).collect();
    slimflow_tensor_io::upload(&Tensor::from_slice(&v).to_kind(Kind::Bool), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn hflip_mirrors_only_selected_samples() {
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let flip = Tensor::from_slice(&[true, false]);
        let y = hflip(&x, &flip);
        assert_eq!(
            Vec::<f32>::try_from(&y.flatten(0, -1)).unwrap(),
            vec![-1.0, 2.0, 3.0, 4.0]
        );
        let img = Tensor::arange(8, (Kind::Float, Device::Cpu)).reshape([2, 1, 2, 2]);
        let y = hflip(&img, &flip);
        assert_eq!(
            Vec::<f32>::try_from(&y.flatten(0, -1)).unwrap(),
            vec![1.0, 0.0, 3.0, 2.0, 4.0, 5.0, 6.0, 7.0]
        );
    }
}
