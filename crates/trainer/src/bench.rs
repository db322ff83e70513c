//! Timing a stage's training step: the same batch assembly, objective, backward pass, guard, clip,
//! Adam and EMA the `train`, `reflow` and `distill` stages run ([`run_loop::timed_steps`]), on
//! synthetic data of the network's shape held in memory, after warm-up steps; and, interleaved with
//! it step by step, a plain tch step (forward, L2 loss, backward, `nn::Adam`) of the same network and
//! batch, so the ratio is the loop's overhead and load or clock drift on a shared machine falls on
//! both alike.

use std::cell::Cell;
use std::time::Instant;

use rand::Rng;
use rand_chacha::ChaCha20Rng;
use slimflow_losses::{normal_tensor, Batch, Lpips, LpipsConfig, Objective};
use slimflow_models::{ArchConfig, Model};
use tch::{nn::OptimizerConfig, Device, Kind, Tensor};

use crate::config::{CheckpointConfig, OptimConfig, PipelineConfig};
use crate::error::{Error, Result};
use crate::run_loop::{self, synchronize, LoopSettings, StepTimes};
use crate::stage::{mix_pairs, SourceNoise};

/// The training stage whose step is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchStage {
    /// The 1-RF teacher (`[train]`).
    Train,
    /// The 2-RF student on pairs (`[reflow]`).
    Reflow,
    /// One-step distillation, with the flow-guided term when configured (`[distill]`).
    Distill,
}

impl BenchStage {
    /// The network the stage trains and its section's optimizer settings.
    fn section(self, cfg: &PipelineConfig) -> (&ArchConfig, &OptimConfig) {
        match self {
            BenchStage::Train => (&cfg.model, &cfg.train.optim),
            BenchStage::Reflow => (cfg.student_arch(), &cfg.reflow.optim),
            BenchStage::Distill => (cfg.student_arch(), &cfg.distill.optim),
        }
    }

    /// The stage's name.
    pub fn name(self) -> &'static str {
        match self {
            BenchStage::Train => "train",
            BenchStage::Reflow => "reflow",
            BenchStage::Distill => "distill",
        }
    }
}

/// What to time.
#[derive(Debug, Clone, Copy)]
pub struct BenchRequest {
    /// The stage.
    pub stage: BenchStage,
    /// Batch size (replaces the section's).
    pub batch: usize,
    /// Timed steps.
    pub steps: u64,
    /// Untimed steps first.
    pub warmup: u64,
    /// Device.
    pub device: Device,
    /// The loop's autocast (CUDA only): float16 with its dynamic loss scale, or bfloat16.
    pub autocast: crate::config::Autocast,
    /// Also time the plain tch step, one after each timed step of ours.
    pub baseline: bool,
}

/// What [`bench_step`] measured.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// The trained network's architecture name.
    pub arch: String,
    /// Its parameter count.
    pub params: i64,
    /// The stage's loss, in words.
    pub objective: String,
    /// Whether the LPIPS weights were not installed and random ones stood in.
    pub random_lpips: bool,
    /// The timed steps: phase times, whole steps and, on CUDA, back-to-back steps.
    pub times: StepTimes,
    /// Seconds of each interleaved plain tch step (empty without `baseline`).
    pub baseline: Vec<f64>,
}

/// Number of synthetic pairs held in memory, in batches.
const POOL_BATCHES: i64 = 4;

/// Times `req.steps` training steps of `req.stage` as configured in `cfg` (its objective, optimizer
/// and EMA settings; the batch size from `req`), on synthetic pairs of the network's data shape.
///
/// `first_timed` runs once our first timed step is done and before the baseline's network exists
/// (the caller reads the memory high-water mark of our step alone there). With `req.baseline` a
/// plain tch step ([`PlainStep`]) then warms up and runs after each of our timed steps.
pub fn bench_step(
    cfg: &PipelineConfig,
    req: &BenchRequest,
    first_timed: &mut dyn FnMut(),
) -> Result<BenchResult> {
    if req.batch == 0 || req.steps == 0 {
        return Err(Error::Invalid("batch and steps must be at least 1".into()));
    }
    let device = req.device;
    let random_lpips = Cell::new(false);
    let loader = |config: LpipsConfig, device: Device| -> slimflow_losses::Result<Lpips> {
        match Lpips::from_installed(config, device) {
            Ok(l) => Ok(l),
            Err(e) => {
                tracing::warn!("LPIPS weights unavailable ({e}); timing with random weights");
                random_lpips.set(true);
                Ok(Lpips::with_random_weights(config, device, 0))
            }
        }
    };
    let (arch, section_optim) = req.stage.section(cfg);
    let optim = OptimConfig {
        autocast: req.autocast,
        ..section_optim.clone()
    };
    let accumulate = optim.accumulate.max(1);
    if req.batch % accumulate != 0 {
        return Err(Error::Invalid(format!(
            "batch {} is not a multiple of {}.optim.accumulate = {accumulate}",
            req.batch,
            req.stage.name()
        )));
    }
    cfg.performance
        .apply_globals(device)
        .map_err(Error::Invalid)?;
    tch::manual_seed(0);
    let mut model = Model::new(arch, device)?;
    cfg.performance.prepare(&mut model);
    let pool = SyntheticPairs::new(&model, req.batch, device);
    let (n, source) = (req.batch, &cfg.data.source);
    let source_std = match cfg.data.source {
        slimflow_data::Toy::Gaussian { std } => std,
        _ => 1.0,
    };
    let checkpoint = CheckpointConfig::default();
    let settings = LoopSettings {
        steps: req.warmup + req.steps,
        optim: &optim,
        checkpoint: &checkpoint,
        seed: 12,
        label: "bench",
        dist: None,
        grad_reduce: cfg.performance.grad_reduce,
    };
    let teacher;
    let distance;
    let source_noise = SourceNoise(source);
    let (objective, describe): (Box<dyn Objective + '_>, String) = match req.stage {
        BenchStage::Train => {
            let spec = cfg.train.objective();
            (
                crate::stage::build(spec.build_with(device, &loader))?,
                spec.describe(),
            )
        }
        BenchStage::Reflow => {
            let spec = cfg.reflow.objective();
            (
                crate::stage::build(spec.build_with(device, &loader))?,
                spec.describe(),
            )
        }
        BenchStage::Distill => {
            let dc = &cfg.distill;
            let mut t = Model::new(arch, device)?;
            t.vs.freeze();
            cfg.performance.prepare(&mut t);
            teacher = t;
            distance = crate::stage::build(dc.distance().build_with(device, &loader))?;
            let objective =
                crate::stage::distill::objective(dc, &teacher, &distance, &source_noise);
            let describe = format!(
                "distillation ({:?}{}{})",
                dc.premetric,
                if dc.lpips.is_some() { " + LPIPS" } else { "" },
                if objective.guide.is_some() {
                    " + flow-guided"
                } else {
                    ""
                }
            );
            (Box::new(objective), describe)
        }
    };
    let stage = req.stage;
    let rc = &cfg.reflow;
    let mut batches = |rng: &mut ChaCha20Rng, step: u64| {
        Ok(match stage {
            BenchStage::Train => {
                let drawn = pool.batch(n, rng);
                let x0 = if drawn.x1.dim() == 2 {
                    source.sample_tensor(rng, n, device)
                } else {
                    normal_tensor(rng, &drawn.x1.size(), device)
                };
                (Batch { x0, ..drawn }, Vec::new())
            }
            BenchStage::Reflow => {
                let (batch, beta) =
                    mix_pairs(rc, pool.batch(n, rng), step, source_std, device, rng);
                (batch, vec![("beta", beta)])
            }
            BenchStage::Distill => (pool.batch(n, rng), Vec::new()),
        })
    };
    let mut plain: Option<PlainStep> = None;
    let mut baseline = Vec::new();
    let mut between = |step: u64| -> Result<()> {
        if step < req.warmup {
            return Ok(());
        }
        if step == req.warmup {
            first_timed();
            if req.baseline {
                let mut p = PlainStep::new(cfg, req)?;
                for _ in 0..req.warmup {
                    p.run()?;
                }
                plain = Some(p);
            }
        }
        if let Some(p) = plain.as_mut() {
            baseline.push(p.run()?);
        }
        Ok(())
    };
    let times = run_loop::timed_steps(
        &mut model,
        &settings,
        &*objective,
        &mut batches,
        (req.warmup, req.steps),
        &mut between,
    )?;
    Ok(BenchResult {
        arch: arch.name().to_string(),
        params: model.num_params(),
        objective: describe,
        random_lpips: random_lpips.get(),
        times,
        baseline,
    })
}

/// A plain tch 1-RF step on the network [`bench_step`] trains for `req.stage`, at the same batch:
/// t ~ U(0, 1), x_t, forward, mean squared error to x1 − x0, backward and `nn::Adam` at the
/// section's lr (no guard, clip, warm-up or EMA), in the default layout whatever
/// `[performance]` says: the baseline of the loop's overhead and of `channels_last`.
pub struct PlainStep {
    model: Model,
    opt: tch::nn::Optimizer,
    x0: Tensor,
    x1: Tensor,
    labels: Option<Tensor>,
    shape: Vec<i64>,
}

impl PlainStep {
    /// A fresh network (seeded) and optimizer with one synthetic batch.
    pub fn new(cfg: &PipelineConfig, req: &BenchRequest) -> Result<Self> {
        if req.batch == 0 {
            return Err(Error::Invalid("batch must be at least 1".into()));
        }
        let (arch, optim) = req.stage.section(cfg);
        tch::manual_seed(0);
        let model = Model::new(arch, req.device)?;
        let pool = SyntheticPairs::new(&model, req.batch, req.device);
        let opt = tch::nn::Adam::default().build(&model.vs, optim.lr)?;
        let n = req.batch as i64;
        let x1 = pool.x1.narrow(0, 0, n);
        let mut shape = vec![n];
        shape.extend(std::iter::repeat_n(1, x1.dim() - 1));
        Ok(PlainStep {
            x0: pool.x0.narrow(0, 0, n),
            labels: pool.labels.as_ref().map(|l| l.narrow(0, 0, n)),
            x1,
            model,
            opt,
            shape,
        })
    }

    /// One step; its wall time in seconds, once the device is idle.
    pub fn run(&mut self) -> Result<f64> {
        let device = self.model.vs.device();
        synchronize(device);
        let start = Instant::now();
        let n = self.x1.size()[0];
        let t = Tensor::rand([n], (Kind::Float, device));
        let tb = t.view(self.shape.as_slice());
        let xt = &tb * &self.x1 + (1.0 - &tb) * &self.x0;
        let v = self
            .model
            .net()
            .forward_t(&xt, &t, self.labels.as_ref(), true);
        let loss = (v - (&self.x1 - &self.x0)).square().mean(Kind::Float);
        self.opt.backward_step(&loss);
        let _ = loss.double_value(&[]);
        synchronize(device);
        Ok(start.elapsed().as_secs_f64())
    }
}

/// Synthetic pairs (z, x1[, label]) of the network's data shape on the device, drawn per batch
/// with replacement as the stages draw stored pairs held in memory.
struct SyntheticPairs {
    x0: Tensor,
    x1: Tensor,
    labels: Option<Tensor>,
}

impl SyntheticPairs {
    fn new(model: &Model, batch: usize, device: Device) -> Self {
        let count = batch as i64 * POOL_BATCHES;
        let mut shape = vec![count];
        shape.extend(model.config().data_shape());
        let x0 = Tensor::randn(shape.as_slice(), (Kind::Float, device));
        let x1 = Tensor::randn(shape.as_slice(), (Kind::Float, device)).clamp(-1.0, 1.0);
        let classes = model.config().label_dim();
        let labels =
            (classes > 0).then(|| Tensor::randint(classes, [count], (Kind::Int64, device)));
        SyntheticPairs { x0, x1, labels }
    }

    fn batch(&self, n: usize, rng: &mut ChaCha20Rng) -> Batch {
        let total = self.x0.size()[0];
        let idx: Vec<i64> = (0..n).map(|_| rng.gen_range(0..total)).collect();
        let idx = Tensor::from_slice(&idx).to_device(self.x0.device());
        Batch {
            x0: self.x0.index_select(0, &idx),
            x1: self.x1.index_select(0, &idx),
            labels: self.labels.as_ref().map(|l| l.index_select(0, &idx)),
        }
    }
}

/// Which sampling work is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingKind {
    /// Pair generation: the teacher (`model`) solved by `pairs.solver` from `pairs.eps` to 1 at
    /// `pairs.precision`.
    Pairs,
    /// Evaluation sampling: the student solved by `eval.solver` from `eval.eps` to 1.
    Sample,
}

/// What [`bench_sampling`] measured.
#[derive(Debug, Clone)]
pub struct SamplingResult {
    /// The network's architecture name.
    pub arch: String,
    /// Its parameter count.
    pub params: i64,
    /// The solver, as configured (JSON).
    pub solver: String,
    /// Network evaluations per solve (of the last batch).
    pub nfe: usize,
    /// Seconds per batch of each timed batch.
    pub seconds: Vec<f64>,
}

/// Times `steps` batches of `batch` solves (after `warmup` untimed ones) of a randomly initialised
/// network of the configured architecture, with seeded source noise and, for class-conditional
/// networks, seeded random labels, as the stages draw them. `solver` replaces the configured one;
/// `precision` the network's inference precision.
pub fn bench_sampling(
    cfg: &PipelineConfig,
    kind: SamplingKind,
    req: &BenchRequest,
    solver: Option<&slimflow_sampling::SolverConfig>,
    precision: slimflow_models::Precision,
) -> Result<SamplingResult> {
    if req.batch == 0 || req.steps == 0 {
        return Err(Error::Invalid("batch and steps must be at least 1".into()));
    }
    let (arch, configured, eps) = match kind {
        SamplingKind::Pairs => (&cfg.model, &cfg.pairs.solver, cfg.pairs.eps),
        SamplingKind::Sample => (cfg.student_arch(), &cfg.eval.solver, cfg.eval.eps),
    };
    let solver = solver.unwrap_or(configured);
    tch::manual_seed(0);
    let mut model = Model::new(arch, req.device)?;
    model.set_precision(precision);
    let shape = arch.data_shape();
    let classes = arch.label_dim();
    let mut seconds = Vec::new();
    let mut nfe = 0;
    for round in 0..req.warmup + req.steps {
        let first = round * req.batch as u64;
        let seeds: Vec<u64> = (first..first + req.batch as u64).collect();
        synchronize(req.device);
        let start = Instant::now();
        let labels = (classes > 0)
            .then(|| slimflow_data::seeded_labels(&seeds, classes as u32, req.device))
            .transpose()?;
        let z = slimflow_data::seeded_source(&cfg.data.source, &seeds, &shape, req.device)?;
        let field = model.eval_field(labels.as_ref());
        let sol = slimflow_sampling::solve(solver, &field, &z, eps, 1.0, false)?;
        let _ = sol.x.sum(Kind::Double).double_value(&[]);
        synchronize(req.device);
        nfe = sol.nfe;
        if round >= req.warmup {
            seconds.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(SamplingResult {
        arch: arch.name().to_string(),
        params: model.num_params(),
        solver: serde_json::to_string(solver).expect("solver configs serialise"),
        nfe,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_config, Autocast};

    #[test]
    fn the_baseline_runs_after_each_timed_step_once_our_memory_is_read() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs/toy/checkerboard.toml");
        let cfg = load_config(&path, &[]).unwrap();
        let mut req = BenchRequest {
            stage: BenchStage::Train,
            batch: 8,
            steps: 3,
            warmup: 2,
            device: Device::Cpu,
            autocast: Autocast::Off,
            baseline: true,
        };
        let marks = Cell::new(0);
        let r = bench_step(&cfg, &req, &mut || marks.set(marks.get() + 1)).unwrap();
        assert_eq!(marks.get(), 1);
        assert_eq!((r.times.phases.len(), r.times.whole.len()), (3, 3));
        assert_eq!(r.times.pipelined, None);
        assert_eq!(r.baseline.len(), 3);
        assert!(r.baseline.iter().all(|s| *s > 0.0));
        req.baseline = false;
        let r = bench_step(&cfg, &req, &mut || marks.set(marks.get() + 1)).unwrap();
        assert_eq!(
            (marks.get(), r.times.phases.len(), r.baseline.len()),
            (2, 3, 0)
        );
        // a plain step alone, for callers that time it their own way
        assert!(PlainStep::new(&cfg, &req).unwrap().run().unwrap() > 0.0);
    }
}
