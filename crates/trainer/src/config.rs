//! The pipeline configuration: one TOML file with a section per stage.
//!
//! Loading applies `--set a.b=value` overrides to the TOML document *before* deserialisation, so
//! overrides pass the same checks as the file; unknown keys are rejected everywhere
//! (`deny_unknown_fields`), and errors name the file, line and key path.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slimflow_data::Toy;
pub use slimflow_losses::DistillForm;

mod fidelity;
pub use fidelity::{is_gaussian, is_standard};
use slimflow_losses::PremetricConfig;
use slimflow_models::ArchConfig;
use slimflow_sampling::SolverConfig;
use slimflow_schedules::{Anneal, TimeDist};

/// A configuration problem, reported with file, line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or a value/key rejected by the schema.
    #[error("{location}: {message}")]
    Invalid {
        /// `file:line:column` (or `--set key`).
        location: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A `--set` argument is malformed.
    #[error("--set {arg}: {reason}")]
    BadOverride {
        /// The argument.
        arg: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where the stages run: `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    /// CUDA device 0 when available, else CPU.
    #[default]
    Auto,
    /// CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("unknown device `{other}` (auto, cpu, cuda, cuda:N)")),
        }
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        match d {
            DeviceChoice::Auto => "auto".into(),
            DeviceChoice::Cpu => "cpu".into(),
            DeviceChoice::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// The libtorch device.
    pub fn device(self) -> tch::Device {
        match self {
            DeviceChoice::Auto => tch::Device::cuda_if_available(),
            DeviceChoice::Cpu => tch::Device::Cpu,
            DeviceChoice::Cuda(n) => tch::Device::Cuda(n),
        }
    }
}

/// Adam and the schedule around it (defaults: the references' Adam, see DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Learning rate (RectifiedFlow / SlimFlow / rfpp: 2e-4).
    pub lr: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Linear LR warm-up steps (references: 5000; 0 when fine-tuning).
    pub warmup_steps: u64,
    /// Gradient-norm clip (1.0); 0 disables.
    pub grad_clip: f64,
    /// EMA decay per step (rfpp 0.9999, SlimFlow 0.999999).
    pub ema_decay: f64,
    /// Save the EMA weights (true) or the raw weights as the stage's model.
    pub use_ema: bool,
    /// Micro-batches per optimizer step (gradient accumulation); `batch_size` stays the effective
    /// batch and must be divisible by it.
    pub accumulate: usize,
    /// Mixed precision on CUDA (libtorch autocast, float16, with dynamic loss scaling); ignored on CPU.
    pub autocast: bool,
    /// Initial dynamic loss scale of `autocast` (default 65536; rfpp's ImageNet run: 32768,
    /// `--loss_scaling`). Halved (down to 1) with the update skipped when a gradient overflows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// Clean optimizer steps after which the loss scale doubles (default 2000; rfpp: 10 000 backward
    /// passes, i.e. 10 000 / `accumulate` steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale_window: Option<u64>,
    /// EMA decay warm-up min(ema_decay, (1 + n)/(10 + n)) over the n-th update of the stage
    /// (SlimFlow / score_sde); off: the fixed decay from the first update (rfpp).
    pub ema_warmup: bool,
    /// How the learning rate ramps up over `warmup_steps` (see [`WarmupRule`]).
    pub warmup_rule: WarmupRule,
    /// Order of the gradient-norm clip and the non-finite guard (see [`GradGuard`]).
    pub grad_guard: GradGuard,
}

/// The learning rate of update k (0-based) during the warm-up of W steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmupRule {
    /// lr·min(1, (k + 1)/W): every update moves the weights.
    #[default]
    FromFirst,
    /// lr·min(1, k/W): the first update runs at lr 0 (score_sde's `optimization_manager`, used by
    /// SlimFlow's every stage).
    FromZero,
}

/// What happens to a gradient with non-finite entries, and in which order with the norm clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradGuard {
    /// Zero NaN/±inf entries, then clip the norm of what is left: one bad entry costs only itself.
    #[default]
    ZeroThenClip,
    /// Clip first (a non-finite norm turns every entry into NaN), then replace NaN by 0 and ±inf by
    /// ±1e5 (the order of SlimFlow's `optimization_manager`): one bad entry zeroes the whole update.
    /// (The reference's replacement loop sees an exhausted parameter generator and does nothing, so
    /// there a non-finite gradient reaches Adam; with finite gradients both are the same.)
    ClipThenReplace,
    /// Skip the whole update (no Adam step, no EMA update) when any entry is non-finite, else clip
    /// (rfpp's `train.py`, which checks every gradient before `optimizer.step()`).
    SkipStep,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 5000,
            grad_clip: 1.0,
            ema_decay: 0.9999,
            use_ema: true,
            accumulate: 1,
            autocast: false,
            loss_scale: None,
            loss_scale_window: None,
            ema_warmup: false,
            warmup_rule: WarmupRule::FromFirst,
            grad_guard: GradGuard::ZeroThenClip,
        }
    }
}

/// Checkpoint and logging cadence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Save a resumable state every this many steps (and at the end and on interrupt).
    pub every: u64,
    /// How many state checkpoints to keep.
    pub keep_last: usize,
    /// Append a metrics line every this many steps.
    pub log_every: u64,
    /// Write a sample grid (`samples/step-N.png`, image models only) every this many steps; 0 never.
    pub sample_every: u64,
    /// Euler steps of those samples (1 shows the one-step generator).
    pub sample_steps: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every: 1000,
            keep_last: 2,
            log_every: 100,
            sample_every: 0,
            sample_steps: 1,
        }
    }
}

/// The data: a 2-D toy target or an image dataset, with Gaussian noise as the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Source (noise) distribution of toy runs; standard Gaussian by default. Every stage draws from
    /// it (training, pairs, eval, sampling, the flow-guided term's fresh noise). Image runs use
    /// N(0, I): another source with a dataset is an error, as is Annealing Reflow or flipping with
    /// a non-Gaussian source.
    #[serde(default = "default_source")]
    pub source: Toy,
    /// Toy target distribution (exclusive with `dataset`).
    #[serde(default)]
    pub target: Option<Toy>,
    /// Image dataset spec (`cifar10:DIR`, `shapes:16,count=4096`, `folder:DIR`, …; see `slimflow
    /// data info`), images scaled to [-1, 1] (exclusive with `target`).
    #[serde(default)]
    pub dataset: Option<String>,
    /// Random horizontal flips of the training images (1-RF teacher training; the references use
    /// them on CIFAR-10).
    #[serde(default)]
    pub hflip: bool,
}

/// What the data section resolves to.
#[derive(Debug, Clone)]
pub enum Target<'a> {
    /// A 2-D toy distribution.
    Toy(&'a Toy),
    /// An image dataset.
    Images(slimflow_data::images::DatasetSpec),
}

impl DataConfig {
    /// The target, checked: exactly one of `target` and `dataset`.
    pub fn resolve(&self) -> Result<Target<'_>, String> {
        match (&self.target, &self.dataset) {
            (Some(t), None) => Ok(Target::Toy(t)),
            (None, Some(d)) => d.parse().map(Target::Images).map_err(|e| e.to_string()),
            (Some(_), Some(_)) => Err("set `target` (toy) or `dataset` (images), not both".into()),
            (None, None) => Err("set `target` (a toy distribution) or `dataset` (images)".into()),
        }
    }

    /// The toy target, when this is a toy run.
    pub fn toy(&self) -> Option<&Toy> {
        self.target.as_ref()
    }
}

fn default_source() -> Toy {
    Toy::Gaussian { std: 1.0 }
}

/// A pretrained teacher imported instead of training the 1-RF (stage `train` then converts it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// Which reference wrote the file: `edm` (EDM snapshot `.pkl`), `rfpp` (`flow_model_*_ema.pth`)
    /// or `ncsnpp` (RectifiedFlow / SlimFlow score_sde checkpoint); `[model]` is its architecture.
    pub from: String,
    /// The checkpoint file.
    pub file: PathBuf,
    /// Sub-tree of the file (`ema`, `net`, `model_state_dict`, …); the source's default when absent.
    #[serde(default)]
    pub key: Option<String>,
}

/// The two papers' LPIPS variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LpipsPreset {
    /// SlimFlow: VGG, max pooling, inputs resized to 64×64 (align_corners = true).
    Slimflow,
    /// 2-rectified flow++: VGG with average pooling, inputs resized to 224×224.
    Rfpp,
}

impl LpipsPreset {
    /// The network configuration.
    pub fn config(self) -> slimflow_losses::LpipsConfig {
        match self {
            LpipsPreset::Slimflow => slimflow_losses::LpipsConfig::slimflow(),
            LpipsPreset::Rfpp => slimflow_losses::LpipsConfig::rfpp(),
        }
    }
}

/// rfpp's LPIPS-Huber reflow loss (replaces `premetric` when present).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LpipsHuberConfig {
    /// LPIPS variant (rfpp: `rfpp`).
    #[serde(default = "rfpp_preset")]
    pub lpips: LpipsPreset,
    /// Divide the LPIPS term by (1 − t) (rfpp's "divide by t" option in its own time).
    #[serde(default)]
    pub divide_by_one_minus_t: bool,
}

fn rfpp_preset() -> LpipsPreset {
    LpipsPreset::Rfpp
}

/// An LPIPS term of the distillation distance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LpipsTerm {
    /// LPIPS variant (SlimFlow: `slimflow`).
    pub preset: LpipsPreset,
    /// Weight of the term.
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// Stage `train`: a 1-rectified flow on independent (noise, data) pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Batch size.
    pub batch_size: usize,
    /// Training-time distribution.
    #[serde(default)]
    pub time: TimeDist,
    /// Velocity premetric.
    #[serde(default)]
    pub premetric: PremetricConfig,
    /// Optimizer.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Checkpoints and logging.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
}

/// Stage `generate-pairs`: teacher ODE solves from seeded noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairsConfig {
    /// Number of pairs.
    pub count: u64,
    /// Pairs per shard.
    #[serde(default = "default_shard_size")]
    pub shard_size: u64,
    /// Pairs per teacher batch.
    #[serde(default = "default_pair_batch")]
    pub batch_size: usize,
    /// Solver (reference: RK45 with rtol = atol = 1e-5).
    #[serde(default)]
    pub solver: SolverConfig,
    /// Start time of the solve.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Pair i uses noise seed `seed_base + i`.
    #[serde(default = "default_seed_base")]
    pub seed_base: u64,
    /// The teacher's inference precision (`f32`, `bf16`, `f16`); the ODE state stays float32.
    #[serde(default)]
    pub precision: slimflow_models::Precision,
    /// Stored element type of z and x1 (`f32` or `f16`).
    #[serde(default)]
    pub dtype: slimflow_data::PairDtype,
    /// `from_noise`: x1 = ODE(z) from seeded noise (the papers' reflow pairs); `from_data`: z =
    /// reverse ODE of seeded data samples x1 (pairs anchored on real data).
    #[serde(default)]
    pub direction: PairDirection,
    /// Import reference pairs instead of generating them: a directory (or `.npz`) with SlimFlow's
    /// `z.npy`, `z1.npy` [, `label.npy`].
    #[serde(default)]
    pub import: Option<PathBuf>,
    /// Class labels of a class-conditional teacher's pairs: `random` (uniform over the classes,
    /// drawn per pair from its seed, as rfpp's `generate_edm.py` does; the default for `from_noise`)
    /// or `dataset` (the label of the pair's data sample; `from_data` only, and its default).
    /// Unconditional teachers take no labels, so setting it for one is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<PairLabels>,
}

/// Where the class labels of generated pairs come from (see [`PairsConfig::labels`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairLabels {
    /// Uniform over the classes, per pair from its seed.
    Random,
    /// The label of the pair's data sample (`direction = "from_data"`).
    Dataset,
}

impl PairsConfig {
    /// The effective label source for a teacher with `classes` classes (`None`: unconditional).
    pub fn label_source(&self, classes: i64) -> Option<PairLabels> {
        (classes > 0).then(|| {
            self.labels.unwrap_or(match self.direction {
                PairDirection::FromNoise => PairLabels::Random,
                PairDirection::FromData => PairLabels::Dataset,
            })
        })
    }
}

/// Which end of the teacher's ODE a pair starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairDirection {
    /// Seeded noise z, integrated forward to x1.
    #[default]
    FromNoise,
    /// Seeded data samples x1, integrated backward to z.
    FromData,
}

fn default_shard_size() -> u64 {
    10_000
}
fn default_pair_batch() -> usize {
    5_000
}
fn default_eps() -> f64 {
    1e-3
}
fn default_seed_base() -> u64 {
    1 << 32
}

/// How the reflow student starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// Copy the teacher's weights (same architecture required).
    #[default]
    Teacher,
    /// Fresh random weights (SlimFlow's slim students).
    Random,
}

/// Stage `reflow`: a 2-rectified flow on teacher pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReflowConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Batch size.
    pub batch_size: usize,
    /// Student architecture (a preset name such as `"slimflow-15.7m"` or a table); the teacher's
    /// (`[model]`) when absent.
    #[serde(default, deserialize_with = "optional_arch")]
    pub model: Option<ArchConfig>,
    /// Initialisation.
    #[serde(default)]
    pub init: Init,
    /// Training-time distribution (rfpp: `u_shaped`, a = 4).
    #[serde(default)]
    pub time: TimeDist,
    /// Velocity premetric (rfpp: `pseudo_huber`).
    #[serde(default)]
    pub premetric: PremetricConfig,
    /// rfpp's LPIPS-Huber loss (images; needs the VGG LPIPS weights); its velocity term is the
    /// pseudo-Huber `premetric`, which must then say so.
    #[serde(default)]
    pub lpips_huber: Option<LpipsHuberConfig>,
    /// SlimFlow's Annealing Reflow schedule β_k (default: fixed β = 0, plain reflow).
    #[serde(default)]
    pub anneal: Anneal,
    /// Steps K over which β anneals.
    #[serde(default)]
    pub anneal_steps: u64,
    /// Flip (z', x1) together with probability ½ (images: horizontally; 2-D: the first coordinate):
    /// `false`/`"none"`, `true`/`"per_sample"` (one coin per pair) or `"per_batch"` (one coin for the
    /// whole batch, as SlimFlow's `train_step` does).
    #[serde(default)]
    pub hflip: PairFlip,
    /// Optimizer.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Checkpoints and logging.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
}

/// How reflow flips its pairs (see [`ReflowConfig::hflip`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PairFlip {
    /// No flips.
    #[default]
    None,
    /// An independent coin per pair.
    PerSample,
    /// One coin per batch: the whole batch is flipped or not (SlimFlow `reflow/reflow.py`).
    PerBatch,
}

impl<'de> Deserialize<'de> for PairFlip {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(false) => Ok(PairFlip::None),
            Raw::Bool(true) => Ok(PairFlip::PerSample),
            Raw::Name(n) => match n.as_str() {
                "none" => Ok(PairFlip::None),
                "per_sample" => Ok(PairFlip::PerSample),
                "per_batch" => Ok(PairFlip::PerBatch),
                other => Err(serde::de::Error::custom(format!(
                    "unknown flip `{other}`: use false, true, \"none\", \"per_sample\" or \"per_batch\""
                ))),
            },
        }
    }
}

/// Stage `distill`: one-step distillation of the 2-RF.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Batch size.
    pub batch_size: usize,
    /// Start time of the one-step generator.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// The prediction trained: `euler` (our sampler's one step) or `slimflow` (the reference's).
    #[serde(default)]
    pub form: DistillForm,
    /// Distance between prediction and pair endpoint (weighted by `premetric_weight`).
    #[serde(default)]
    pub premetric: PremetricConfig,
    /// Weight of `premetric` in the distance (0 leaves LPIPS alone).
    #[serde(default = "one")]
    pub premetric_weight: f64,
    /// An LPIPS term added to the distance (SlimFlow: `{ preset = "slimflow" }`; needs the VGG
    /// LPIPS weights).
    #[serde(default)]
    pub lpips: Option<LpipsTerm>,
    /// Weight λ of SlimFlow's flow-guided term (0 disables it).
    #[serde(default)]
    pub flow_guided_weight: f64,
    /// Range of t' for the flow-guided term.
    #[serde(default = "default_fg_range")]
    pub flow_guided_t: [f64; 2],
    /// Optimizer.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Checkpoints and logging.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
}

fn default_fg_range() -> [f64; 2] {
    [0.2, 0.8]
}

/// Stage `eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Generated and held-out target samples per model.
    pub samples: usize,
    /// Many-step solver.
    #[serde(default)]
    pub solver: SolverConfig,
    /// Euler steps of the trajectories used for straightness.
    #[serde(default = "default_straightness_steps")]
    pub straightness_steps: usize,
    /// Start time of all solves.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Random directions of the sliced Wasserstein distance.
    #[serde(default = "default_projections")]
    pub projections: usize,
    /// Half-width of the plotted square.
    #[serde(default = "default_extent")]
    pub plot_extent: f64,
    /// Image features of the Fréchet distance: `auto` (FID with the Inception weights when
    /// installed, else the stand-in classifier), `inception` (FID; error when missing) or `standin`.
    #[serde(default)]
    pub features: FeatureChoice,
    /// Samples of the straightness trajectories (images: a subset keeps it cheap).
    #[serde(default = "default_straightness_samples")]
    pub straightness_samples: usize,
    /// Images per sampling / feature batch.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Reference statistics: a `.npz` path (`mu`, `sigma`: pytorch-fid's, EDM's or `slimflow
    /// fid-ref`'s) or the name of EDM's published file in the weights cache (`fid-ref-cifar10-32x32`,
    /// `fid-ref-imagenet-64x64`, `fid-ref-ffhq-64x64`, `fid-ref-afhqv2-64x64`; `slimflow weights
    /// fetch NAME`); computed from the dataset when absent. Inception features only.
    #[serde(default)]
    pub reference: Option<PathBuf>,
    /// Training batches of the stand-in classifier (when it is used and not cached yet).
    #[serde(default = "default_standin_steps")]
    pub standin_steps: usize,
    /// Class of each evaluation sample of a class-conditional model: `random` (the default: uniform,
    /// drawn from the sample's seed, as EDM's `generate.py` does for its FID) or `balanced` (sample
    /// i gets class i mod K: exactly samples / K per class). Unconditional models take no labels,
    /// so setting it for one is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_labels: Option<ClassLabels>,
}

/// How the evaluation draws class labels (see [`EvalConfig::class_labels`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassLabels {
    /// Uniform over the classes, per sample from its seed (EDM `generate.py`).
    #[default]
    Random,
    /// Sample i gets class i mod K, so each class has exactly samples / K.
    Balanced,
}

impl ClassLabels {
    /// The name used in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            ClassLabels::Random => "random",
            ClassLabels::Balanced => "balanced",
        }
    }
}

fn default_eval_batch() -> usize {
    500
}
fn default_standin_steps() -> usize {
    600
}

/// Feature network of the image Fréchet distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureChoice {
    /// Inception when its weights are installed, else the stand-in.
    #[default]
    Auto,
    /// pytorch-fid's Inception (FID).
    Inception,
    /// A small classifier trained on the dataset's labels (a stand-in, never called FID).
    Standin,
}

fn default_straightness_samples() -> usize {
    256
}

fn default_straightness_steps() -> usize {
    100
}
fn default_projections() -> usize {
    256
}
fn default_extent() -> f64 {
    4.0
}

/// The whole pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Run name: the run directory is `runs/<name>` unless given explicitly.
    pub name: String,
    /// Master seed.
    #[serde(default)]
    pub seed: u64,
    /// Device.
    #[serde(default)]
    pub device: DeviceChoice,
    /// Data.
    pub data: DataConfig,
    /// Teacher architecture: a preset name (`"edm-ddpmpp-cifar10"`) or a table (`arch = "ncsnpp"`, …).
    #[serde(deserialize_with = "arch")]
    pub model: ArchConfig,
    /// Import this pretrained teacher instead of training the 1-RF.
    #[serde(default)]
    pub teacher: Option<TeacherConfig>,
    /// Stage `train`.
    pub train: TrainConfig,
    /// Stage `generate-pairs`.
    pub pairs: PairsConfig,
    /// Stage `reflow`.
    pub reflow: ReflowConfig,
    /// Stage `distill`.
    pub distill: DistillConfig,
    /// Stage `eval`.
    pub eval: EvalConfig,
}

impl PipelineConfig {
    /// Semantic checks beyond the schema, all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let require = |ok: bool, msg: &str| if ok { Ok(()) } else { Err(msg.to_string()) };
        note(&mut p, "model", self.model.validate());
        if let Some(m) = &self.reflow.model {
            note(&mut p, "reflow.model", m.validate());
        }
        note(&mut p, "data.source", self.data.source.validate());
        match self.data.resolve() {
            Ok(Target::Toy(t)) => note(&mut p, "data.target", t.validate()),
            Ok(Target::Images(_)) => {
                let ok = self.model.data_shape().len() == 3;
                note(
                    &mut p,
                    "model",
                    require(ok, "an image dataset needs an image architecture"),
                );
            }
            Err(e) => p.push(format!("data: {e}")),
        }
        p.extend(self.fidelity_problems());
        if let Some(t) = &self.teacher {
            let ok = t
                .from
                .parse::<slimflow_models::import::ImportSource>()
                .is_ok();
            note(
                &mut p,
                "teacher.from",
                require(ok, "use edm, rfpp or ncsnpp"),
            );
        }
        note(&mut p, "train.time", self.train.time.validate());
        note(&mut p, "reflow.time", self.reflow.time.validate());
        note(&mut p, "reflow.anneal", self.reflow.anneal.validate());
        let annealed = !matches!(self.reflow.anneal, Anneal::Fixed { .. });
        note(
            &mut p,
            "reflow.anneal_steps",
            require(
                !annealed || self.reflow.anneal_steps > 0,
                "an annealing schedule needs anneal_steps > 0 (with 0, β stays 0: plain reflow)",
            ),
        );
        note(
            &mut p,
            "reflow.anneal_steps",
            require(
                annealed || self.reflow.anneal_steps == 0,
                "anneal_steps is set but reflow.anneal is a fixed β; set reflow.anneal's kind",
            ),
        );
        if self.reflow.lpips_huber.is_some() {
            note(
                &mut p,
                "reflow.premetric",
                require(
                    self.reflow.premetric == PremetricConfig::PseudoHuber {},
                    "lpips_huber's velocity term is rfpp's pseudo-Huber; set reflow.premetric = \
                     { kind = \"pseudo_huber\" } (any other premetric would not be used)",
                ),
            );
        }
        note(&mut p, "pairs.solver", self.pairs.solver.validate());
        note(&mut p, "eval.solver", self.eval.solver.validate());
        for (key, bs) in [
            ("train.batch_size", self.train.batch_size),
            ("reflow.batch_size", self.reflow.batch_size),
            ("distill.batch_size", self.distill.batch_size),
            ("pairs.batch_size", self.pairs.batch_size),
        ] {
            note(&mut p, key, require(bs > 0, "must be positive"));
        }
        for (key, bs, o) in [
            ("train", self.train.batch_size, &self.train.optim),
            ("reflow", self.reflow.batch_size, &self.reflow.optim),
            ("distill", self.distill.batch_size, &self.distill.optim),
        ] {
            let ok = o.accumulate >= 1 && bs % o.accumulate.max(1) == 0;
            let msg = "optim.accumulate must be ≥ 1 and divide batch_size";
            note(&mut p, &format!("{key}.optim.accumulate"), require(ok, msg));
            let key = &format!("{key}.optim");
            let unit = 0.0..1.0;
            let ok = o.lr.is_finite()
                && o.lr > 0.0
                && unit.contains(&o.beta1)
                && unit.contains(&o.beta2)
                && o.eps > 0.0
                && o.grad_clip >= 0.0
                && unit.contains(&o.ema_decay);
            let msg = "need lr > 0, β in [0, 1), eps > 0, grad_clip ≥ 0, ema_decay in [0, 1)";
            note(&mut p, key, require(ok, msg));
            let ok = o.warmup_steps > 0 || o.warmup_rule == WarmupRule::default();
            let msg = "warmup_rule is set but warmup_steps = 0";
            note(&mut p, &format!("{key}.warmup_rule"), require(ok, msg));
            let ok = o.use_ema || !o.ema_warmup;
            let msg = "ema_warmup is set but use_ema = false (the EMA is not saved)";
            note(&mut p, &format!("{key}.ema_warmup"), require(ok, msg));
            for (name, set) in [
                ("loss_scale", o.loss_scale.is_some()),
                ("loss_scale_window", o.loss_scale_window.is_some()),
            ] {
                let msg = format!(
                    "{name} is set but autocast = false (only float16 autocast scales the loss)"
                );
                note(
                    &mut p,
                    &format!("{key}.{name}"),
                    require(o.autocast || !set, &msg),
                );
            }
            let ok = o.loss_scale.is_none_or(|s| s.is_finite() && s >= 1.0);
            note(
                &mut p,
                &format!("{key}.loss_scale"),
                require(ok, "must be ≥ 1"),
            );
            let ok = o.loss_scale_window.is_none_or(|w| w >= 1);
            let msg = "must be ≥ 1";
            note(
                &mut p,
                &format!("{key}.loss_scale_window"),
                require(ok, msg),
            );
        }
        let same_arch = self.reflow.model.as_ref().is_none_or(|m| m == &self.model);
        let msg = "`teacher` needs the student to share the teacher's architecture; use init = \"random\"";
        note(
            &mut p,
            "reflow.init",
            require(self.reflow.init == Init::Random || same_arch, msg),
        );
        let [lo, hi] = self.distill.flow_guided_t;
        let ok = self.distill.eps <= lo && lo < hi && hi <= 1.0;
        note(
            &mut p,
            "distill.flow_guided_t",
            require(ok, "need eps ≤ lo < hi ≤ 1"),
        );
        let ok = self.distill.premetric_weight >= 0.0
            && self.distill.lpips.is_none_or(|l| l.weight >= 0.0)
            && (self.distill.premetric_weight > 0.0
                || self.distill.lpips.is_some_and(|l| l.weight > 0.0));
        note(
            &mut p,
            "distill.premetric_weight",
            require(ok, "weights must be ≥ 0 with at least one positive"),
        );
        let ok = self.distill.flow_guided_weight >= 0.0;
        note(
            &mut p,
            "distill.flow_guided_weight",
            require(ok, "must be ≥ 0"),
        );
        note(
            &mut p,
            "eval.samples",
            require(self.eval.samples >= 2, "need at least 2"),
        );
        let ok = self.eval.straightness_steps >= 1;
        note(
            &mut p,
            "eval.straightness_steps",
            require(ok, "need at least 1"),
        );
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                location: "config".into(),
                message: p.join("; "),
            })
        }
    }

    /// The reflow/distill student's architecture.
    pub fn student_arch(&self) -> &ArchConfig {
        self.reflow.model.as_ref().unwrap_or(&self.model)
    }
}

/// Records `key: error` when `r` failed.
fn note<E: std::fmt::Display>(problems: &mut Vec<String>, key: &str, r: Result<(), E>) {
    if let Err(e) = r {
        problems.push(format!("{key}: {e}"));
    }
}

/// An architecture given as a preset name or as a table.
fn arch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ArchConfig, D::Error> {
    use serde::de::Error as _;
    match toml::Value::deserialize(d)? {
        toml::Value::String(name) => ArchConfig::preset(&name).map_err(D::Error::custom),
        other => ArchConfig::deserialize(other).map_err(D::Error::custom),
    }
}

fn optional_arch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ArchConfig>, D::Error> {
    arch(d).map(Some)
}

/// Parses a `--set` value as TOML (number, bool, string, inline table, array), falling back to a bare
/// string.
fn parse_value(raw: &str) -> toml_edit::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml_edit::DocumentMut>() {
        Ok(d) => d["v"].as_value().cloned().unwrap_or_else(|| raw.into()),
        Err(_) => raw.into(),
    }
}

/// Applies `a.b.c=value` to the document.
fn apply_override(doc: &mut toml_edit::DocumentMut, arg: &str) -> Result<(), ConfigError> {
    let bad = |reason: &str| ConfigError::BadOverride {
        arg: arg.to_string(),
        reason: reason.to_string(),
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected key=value"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty key segment"));
    }
    let mut item = doc.as_item_mut();
    for part in &parts[..parts.len() - 1] {
        let table = item
            .as_table_like_mut()
            .ok_or_else(|| bad("parent is not a table"))?;
        if table.get(part).is_none() {
            table.insert(part, toml_edit::Item::Table(toml_edit::Table::new()));
        }
        item = table.get_mut(part).expect("just inserted");
    }
    let table = item
        .as_table_like_mut()
        .ok_or_else(|| bad("parent is not a table"))?;
    table.insert(
        parts[parts.len() - 1],
        toml_edit::Item::Value(parse_value(raw.trim())),
    );
    Ok(())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|i| before.len() - i)
        .unwrap_or(before.len() + 1);
    (line, col)
}

/// Deserialises `T` from TOML text with overrides applied; `origin` names the file in errors.
pub fn parse_with_overrides<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &Path,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let file = origin.display().to_string();
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        ConfigError::Invalid {
            location: format!("{file}:{line}:{col}"),
            message: format!("invalid TOML: {}", e.message()),
        }
    })?;
    for o in overrides {
        apply_override(&mut doc, o)?;
    }
    let edited = doc.to_string();
    let de = toml::Deserializer::new(&edited);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let overridden = overrides
            .iter()
            .filter_map(|o| o.split_once('=').map(|(k, _)| k.trim().to_string()))
            .find(|k| {
                path == *k
                    || path.starts_with(&format!("{k}."))
                    || k.starts_with(&format!("{path}."))
            });
        let location = match (overridden, inner.span()) {
            (Some(k), _) => format!("--set {k}"),
            (None, Some(span)) => {
                let (line, col) = line_col(&edited, span.start);
                format!("{file}:{line}:{col}")
            }
            (None, None) => file.clone(),
        };
        let key = if path == "." {
            String::new()
        } else {
            format!("key `{path}`: ")
        };
        ConfigError::Invalid {
            location,
            message: format!("{key}{}", inner.message().trim()),
        }
    })
}

/// The resolved config as TOML (written into every stage directory and printed by `--dry-run`).
pub fn to_toml(cfg: &PipelineConfig) -> Result<String, toml::ser::Error> {
    toml::to_string_pretty(cfg)
}

/// Loads and validates a pipeline config file with `--set` overrides.
pub fn load_config(path: &Path, overrides: &[String]) -> Result<PipelineConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let cfg: PipelineConfig = parse_with_overrides(&text, path, overrides)?;
    cfg.validate().map_err(|e| match e {
        ConfigError::Invalid { message, .. } => ConfigError::Invalid {
            location: path.display().to_string(),
            message,
        },
        other => other,
    })?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
seed = 1

[data]
target = { kind = "checkerboard", squares = 4, size = 4.0 }

[model]
arch = "mlp"
hidden = 32

[train]
steps = 10
batch_size = 8

[pairs]
count = 16

[reflow]
steps = 10
batch_size = 8

[distill]
steps = 10
batch_size = 8

[eval]
samples = 16
"#;

    fn parse(text: &str, overrides: &[&str]) -> Result<PipelineConfig, ConfigError> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let cfg: PipelineConfig = parse_with_overrides(text, Path::new("cfg.toml"), &o)?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn minimal_config_takes_documented_defaults() {
        let c = parse(MINIMAL, &[]).unwrap();
        assert_eq!(c.train.optim.lr, 2e-4);
        assert_eq!(
            c.pairs.solver,
            SolverConfig::Rk45 {
                rtol: 1e-5,
                atol: 1e-5
            }
        );
        assert_eq!(c.data.source, Toy::Gaussian { std: 1.0 });
        assert_eq!(c.student_arch(), &c.model);
    }

    #[test]
    fn unknown_key_is_reported_with_line_and_path() {
        let text = MINIMAL.replace(
            "batch_size = 8\n\n[pairs]",
            "batch_size = 8\nbatchsize = 3\n\n[pairs]",
        );
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(err.starts_with("cfg.toml:15:"), "{err}");
        assert!(err.contains("batchsize"), "{err}");
    }

    #[test]
    fn mistyped_value_names_the_key() {
        let text = MINIMAL.replace(
            "steps = 10\nbatch_size = 8\n\n[pairs]",
            "steps = \"ten\"\nbatch_size = 8\n\n[pairs]",
        );
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            err.contains("cfg.toml:13:") && err.contains("train.steps"),
            "{err}"
        );
    }

    #[test]
    fn malformed_toml_is_reported_with_its_line() {
        let text = MINIMAL.replace("seed = 1", "seed = = 1");
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            err.starts_with("cfg.toml:3:") && err.contains("invalid TOML"),
            "{err}"
        );
    }

    #[test]
    fn values_that_would_be_ignored_are_refused() {
        let err = |sets: &[&str]| parse(MINIMAL, sets).unwrap_err().to_string();
        // An annealing schedule over 0 steps is β = 0 throughout: plain reflow.
        let e = err(&["reflow.anneal={ kind = \"linear\" }"]);
        assert!(
            e.contains("reflow.anneal_steps") && e.contains("β stays 0"),
            "{e}"
        );
        // anneal_steps with a fixed β does nothing.
        let e = err(&["reflow.anneal_steps=100"]);
        assert!(e.contains("reflow.anneal_steps"), "{e}");
        // LPIPS-Huber's velocity term is pseudo-Huber; another premetric would be unused.
        let e = err(&["reflow.lpips_huber={ lpips = \"rfpp\" }"]);
        assert!(
            e.contains("reflow.premetric") && e.contains("pseudo_huber"),
            "{e}"
        );
        assert!(parse(
            MINIMAL,
            &[
                "reflow.lpips_huber={ lpips = \"rfpp\" }",
                "reflow.premetric={ kind = \"pseudo_huber\" }"
            ]
        )
        .is_ok());
        // A warm-up rule without warm-up steps, an EMA warm-up of an unsaved EMA.
        let e = err(&[
            "distill.optim.warmup_steps=0",
            "distill.optim.warmup_rule=\"from_zero\"",
        ]);
        assert!(e.contains("distill.optim.warmup_rule"), "{e}");
        let e = err(&["train.optim.use_ema=false", "train.optim.ema_warmup=true"]);
        assert!(e.contains("train.optim.ema_warmup"), "{e}");
        // A loss scale without float16 autocast scales nothing.
        let e = err(&["reflow.optim.loss_scale=32768.0"]);
        assert!(
            e.contains("reflow.optim.loss_scale") && e.contains("autocast = false"),
            "{e}"
        );
        let e = err(&["distill.optim.loss_scale_window=10"]);
        assert!(e.contains("distill.optim.loss_scale_window"), "{e}");
        let e = err(&["reflow.optim.autocast=true", "reflow.optim.loss_scale=0.5"]);
        assert!(e.contains("reflow.optim.loss_scale: must be ≥ 1"), "{e}");
        let c = parse(
            MINIMAL,
            &[
                "reflow.optim.autocast=true",
                "reflow.optim.loss_scale=32768.0",
                "reflow.optim.loss_scale_window=2500",
            ],
        )
        .unwrap();
        assert_eq!(c.reflow.optim.loss_scale, Some(32768.0));
        assert_eq!(c.reflow.optim.loss_scale_window, Some(2500));
    }

    #[test]
    fn reflow_flips_take_booleans_and_names() {
        let flip =
            |v: &str| parse(MINIMAL, &[&format!("reflow.hflip={v}")]).map(|c| c.reflow.hflip);
        assert_eq!(flip("true").unwrap(), PairFlip::PerSample);
        assert_eq!(flip("false").unwrap(), PairFlip::None);
        assert_eq!(flip("\"per_batch\"").unwrap(), PairFlip::PerBatch);
        assert_eq!(flip("\"none\"").unwrap(), PairFlip::None);
        let e = flip("\"sometimes\"").unwrap_err().to_string();
        assert!(e.contains("per_batch") && e.contains("sometimes"), "{e}");
        // The SlimFlow semantics parse by name.
        let c = parse(
            MINIMAL,
            &[
                "reflow.optim={ warmup_steps = 10, warmup_rule = \"from_zero\", ema_warmup = true, grad_guard = \"clip_then_replace\" }",
                "distill.form=\"slimflow\"",
            ],
        )
        .unwrap();
        assert_eq!(c.reflow.optim.warmup_rule, WarmupRule::FromZero);
        assert_eq!(c.reflow.optim.grad_guard, GradGuard::ClipThenReplace);
        assert!(c.reflow.optim.ema_warmup);
        assert_eq!(c.distill.form, DistillForm::Slimflow);
    }

    #[test]
    fn overrides_edit_the_tree_and_are_checked() {
        let c = parse(
            MINIMAL,
            &[
                "train.optim.lr=0.01",
                "reflow.anneal={ kind = \"linear\" }",
                "reflow.anneal_steps=50",
                "name=other",
            ],
        )
        .unwrap();
        assert_eq!(c.train.optim.lr, 0.01);
        assert_eq!(c.reflow.anneal, Anneal::Linear {});
        assert_eq!(c.name, "other");
        let err = parse(MINIMAL, &["train.optim.lrr=0.01"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--set train.optim.lrr") && err.contains("lrr"),
            "{err}"
        );
        let err = parse(MINIMAL, &["train.steps=abc"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--set train.steps"), "{err}");
        assert!(parse(MINIMAL, &["novalue"]).is_err());
    }

    #[test]
    fn devices_parse() {
        assert_eq!(
            parse(MINIMAL, &["device=\"cuda:1\""]).unwrap().device,
            DeviceChoice::Cuda(1)
        );
        assert_eq!(
            parse(MINIMAL, &["device=\"cpu\""]).unwrap().device,
            DeviceChoice::Cpu
        );
        let err = parse(MINIMAL, &["device=\"tpu\""]).unwrap_err().to_string();
        assert!(err.contains("unknown device `tpu`"), "{err}");
    }

    #[test]
    fn semantic_problems_are_all_listed() {
        let err = parse(
            MINIMAL,
            &[
                "train.batch_size=0",
                "eval.samples=1",
                "reflow.model={ arch = \"mlp\", hidden = 8 }",
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("train.batch_size")
                && err.contains("eval.samples")
                && err.contains("reflow.init"),
            "{err}"
        );
    }
}
