//! The training loop shared by the `train`, `reflow` and `distill` stages.
//!
//! Per step: reseed libtorch's generator from (seed, step) (it only drives dropout), draw the batch and
//! the objective's randomness from the loop's ChaCha20 generator, split it into `accumulate`
//! micro-batches whose gradients add up, stop on a non-finite loss, then [`crate::optim::update`]:
//! warm-up lr, the non-finite guard and the clip in the configured order, Adam, EMA. With `autocast`
//! on CUDA the forward passes run under libtorch's autocast: in bfloat16, or in float16 with a
//! dynamic loss scale (halved and the step skipped on overflow, doubled after `loss_scale_window`
//! clean steps; from `loss_scale`, defaults 65536 and 2000; saved with the state). A run resumes
//! from its newest intact state; an interrupt request saves a state and returns. On the ranks of a
//! data-parallel job ([`crate::parallel`]) each computes its rows of every micro-batch and the
//! gradients are averaged before the update.
//!
//! Everything else a step leads to is an [`Observers`] item: metric sinks receive the record of every
//! `log_every`-th step, then [`StepHook`]s run. The stages' set ([`Observers::standard`]) is
//! `metrics.jsonl`, the sample grid every `sample_every` steps (image models) and the keep-last-N
//! checkpoint schedule, so another output is one more item rather than a change to the loop.

mod hooks;

use std::collections::BTreeMap;
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slimflow_losses::{Batch, Objective};
use slimflow_models::{checkpoint as ckpt, ArchConfig, Model};
use tch::Tensor;

use self::hooks::StateRef;
pub use self::hooks::{Checkpoints, SampleGrid, StepHook, StepView};
use crate::checkpointing;
use crate::config::{CheckpointConfig, OptimConfig};
use crate::ema::Ema;
use crate::error::{Error, Result};
use crate::optim::{update, zero_grad, Adam, UpdateInfo};
use crate::parallel::{checksum, Dist};
use crate::progress::Progress;
use crate::sink::{JsonlSink, MetricSink};
use crate::tensorboard::TensorBoard;

/// Settings of one training loop.
#[derive(Debug, Clone, Copy)]
pub struct LoopSettings<'a> {
    /// Total optimizer steps.
    pub steps: u64,
    /// Optimizer and EMA.
    pub optim: &'a OptimConfig,
    /// Checkpoint and logging cadence.
    pub checkpoint: &'a CheckpointConfig,
    /// Seed of the loop's generator.
    pub seed: u64,
    /// Label for progress output.
    pub label: &'a str,
    /// The data-parallel job this process is a rank of, if any.
    pub dist: Option<&'a Dist>,
}

/// How a loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopEnd {
    /// All steps done; the final model is written.
    Finished,
    /// Stopped on request after saving a state.
    Interrupted,
}

/// Supplies batches: `(rng, step) -> (batch, extra fields to log)` (e.g. the annealing β).
pub type BatchFn<'a> =
    dyn FnMut(&mut ChaCha20Rng, u64) -> Result<(Batch, Vec<(&'static str, f64)>)> + 'a;

/// The model's variables sorted by name: the order of the optimizer's and the EMA's lists and of
/// saved training states.
pub fn sorted_variables(model: &Model) -> (Vec<String>, Vec<Tensor>) {
    let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter().unzip()
}

/// What a step leads to besides the update: metric sinks, then step hooks, each in order.
#[derive(Default)]
pub struct Observers<'a> {
    /// Receive the record of every `log_every`-th step and of the last one.
    pub sinks: Vec<Box<dyn MetricSink + 'a>>,
    /// Run after every step, after the sinks.
    pub hooks: Vec<Box<dyn StepHook + 'a>>,
}

impl<'a> Observers<'a> {
    /// The stages' set for `stage_dir`: `metrics.jsonl` and TensorBoard event files, then sample
    /// grids (also logged to TensorBoard) and checkpoints at the cadence of `settings`.
    pub fn standard(stage_dir: &Path, settings: &LoopSettings<'_>) -> Self {
        let tb = TensorBoard::new(stage_dir);
        Observers::default()
            .sink(JsonlSink::new(stage_dir.join("metrics.jsonl")))
            .sink(tb.clone())
            .hook(SampleGrid::new(stage_dir, settings.checkpoint).with_tensorboard(tb))
            .hook(Checkpoints::new(
                stage_dir.join("checkpoints"),
                settings.checkpoint,
            ))
    }

    /// Adds `sink` after the present ones.
    pub fn sink(mut self, sink: impl MetricSink + 'a) -> Self {
        self.sinks.push(Box::new(sink));
        self
    }

    /// Adds `hook` after the present ones.
    pub fn hook(mut self, hook: impl StepHook + 'a) -> Self {
        self.hooks.push(Box::new(hook));
        self
    }

    fn begin(&mut self, start: u64) -> Result<()> {
        for sink in &mut self.sinks {
            sink.begin(start)?;
        }
        for hook in &mut self.hooks {
            hook.begin(start)?;
        }
        Ok(())
    }

    fn after_step(&mut self, view: &StepView<'_>) -> Result<()> {
        if let Some(record) = view.record {
            for sink in &mut self.sinks {
                sink.record(view.step, record)?;
            }
        }
        for hook in &mut self.hooks {
            hook.after_step(view)?;
        }
        Ok(())
    }

    fn finish(&mut self, end: LoopEnd) -> Result<LoopEnd> {
        for sink in &mut self.sinks {
            sink.finish()?;
        }
        for hook in &mut self.hooks {
            hook.finish(end)?;
        }
        Ok(end)
    }
}

/// [`train_with`] with the stages' [`Observers::standard`].
pub fn train(
    stage_dir: &Path,
    model: &mut Model,
    settings: &LoopSettings<'_>,
    objective: &dyn Objective,
    next_batch: &mut BatchFn<'_>,
) -> Result<LoopEnd> {
    let observers = Observers::standard(stage_dir, settings);
    train_with(stage_dir, model, settings, objective, next_batch, observers)
}

/// Trains `model` in the stage directory `stage_dir`, resuming from the newest intact state in
/// `<stage_dir>/checkpoints`, and writes `<stage_dir>/model.safetensors` (EMA or raw weights) at the
/// end. `observers` see every step; the loop itself writes states only on interrupt.
pub fn train_with(
    stage_dir: &Path,
    model: &mut Model,
    settings: &LoopSettings<'_>,
    objective: &dyn Objective,
    next_batch: &mut BatchFn<'_>,
    mut observers: Observers<'_>,
) -> Result<LoopEnd> {
    let ckpt_dir = stage_dir.join("checkpoints");
    let dist = settings.dist;
    // rank 0 alone writes: the other ranks' observers see nothing
    let writer = dist.is_none_or(|d| d.rank() == 0);
    if !writer {
        observers = Observers::default();
    }
    let mut st = LoopState::new(model, settings);
    let start = st.resume(&ckpt_dir, settings.label)?;
    if let Some(d) = dist {
        let mut state = vec![start as f64];
        state.extend(st.checksum()?);
        d.check_identical("resumed step and state", start, &state)?;
    }
    observers.begin(start)?;
    let mut progress = writer.then(|| Progress::new(settings.label, start, settings.steps));
    let (started, comm_before) = (
        std::time::Instant::now(),
        dist.map_or(0.0, |d| d.communication_seconds()),
    );
    let finish_progress = |p: &mut Option<Progress>| {
        if let Some(p) = p.as_mut() {
            p.finish();
        }
    };
    for step in start..settings.steps {
        // on several ranks the request travels with the step's statistics, so all stop together
        if dist.is_none() && crate::interrupt::requested() {
            return interrupted(&st, &ckpt_dir, step, settings, observers, writer);
        }
        let (loss, parts, extra, UpdateInfo { lr, grad_norm }) =
            match st.step(model, settings, objective, next_batch, step, None)? {
                Stepped::Done {
                    loss,
                    parts,
                    extra,
                    info,
                } => (loss, parts, extra, info),
                Stepped::Interrupted => {
                    finish_progress(&mut progress);
                    return interrupted(&st, &ckpt_dir, step, settings, observers, writer);
                }
                Stepped::NonFinite(value) => {
                    finish_progress(&mut progress);
                    let checkpoint = checkpointing::latest_good(&ckpt_dir, &st.names).map(|g| g.0);
                    return Err(Error::NonFiniteLoss {
                        step,
                        value,
                        checkpoint,
                    });
                }
            };
        let done = step + 1;
        let logged = done % settings.checkpoint.log_every.max(1) == 0 || done == settings.steps;
        let record = logged.then(|| {
            let mut fields = vec![("loss", loss), ("grad_norm", grad_norm), ("lr", lr)];
            if st.scale.enabled {
                fields.push(("loss_scale", st.scale.value));
            }
            fields.extend(parts.iter().chain(&extra).copied());
            fields
        });
        if let (Some(d), true) = (dist, logged) {
            d.check_identical("parameters, Adam moments and EMA", done, &st.checksum()?)?;
        }
        if let Some(p) = progress.as_mut() {
            p.set(done, || format!("loss {loss:.4}"));
        }
        observers.after_step(&StepView {
            step: done,
            steps: settings.steps,
            loss,
            record: record.as_deref(),
            model,
            state: st.state_ref(),
        })?;
    }
    finish_progress(&mut progress);
    if let (Some(d), true) = (dist, settings.steps > start) {
        let wall = started.elapsed().as_secs_f64();
        let comm = d.communication_seconds() - comm_before;
        tracing::info!(
            "{}: rank {} of {}: {:.2} ms/step, {:.1} % of it in collectives",
            settings.label,
            d.rank(),
            d.world(),
            wall * 1e3 / (settings.steps - start) as f64,
            100.0 * comm / wall.max(1e-9)
        );
    }
    if writer {
        st.write_model(&stage_dir.join("model.safetensors"), settings)?;
    }
    observers.finish(LoopEnd::Finished)
}

/// Ends the loop on an interrupt request before `step`: rank 0 (or the only process) saves the
/// state the step started from.
fn interrupted(
    st: &LoopState,
    ckpt_dir: &Path,
    step: u64,
    settings: &LoopSettings<'_>,
    mut observers: Observers<'_>,
    writer: bool,
) -> Result<LoopEnd> {
    if writer && !checkpointing::list_states(ckpt_dir).contains(&step) {
        checkpointing::save_state(ckpt_dir, &st.state_ref().at(step))?;
    }
    tracing::info!(
        "{}: interrupted at step {step}; run again to resume",
        settings.label
    );
    observers.finish(LoopEnd::Interrupted)
}

/// What one step did.
enum Stepped {
    /// The parameters were updated.
    Done {
        loss: f64,
        parts: Vec<(&'static str, f64)>,
        /// The batch function's own fields (e.g. β).
        extra: Vec<(&'static str, f64)>,
        info: UpdateInfo,
    },
    /// A micro-batch's loss was not finite; nothing was updated.
    NonFinite(f64),
    /// A rank asked to stop; nothing was updated and the generator is back where the step began.
    Interrupted,
}

/// The loop's trainable state: the parameters (sorted by name), Adam, the EMA and the generator.
struct LoopState {
    names: Vec<String>,
    params: Vec<Tensor>,
    arch: ArchConfig,
    adam: Adam,
    ema: Ema,
    rng: ChaCha20Rng,
    /// The float16 loss scale (inert otherwise).
    scale: LossScale,
    /// The autocast dtype of the forward passes (CUDA only).
    autocast: Option<tch::Kind>,
}

impl LoopState {
    /// One training step, the same for the loop and the bench: the step's reseed, its batch,
    /// gradients (micro-batches), unscaling, then [`update`]. With `clock`, the phases are timed.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        model: &Model,
        settings: &LoopSettings<'_>,
        objective: &dyn Objective,
        next_batch: &mut BatchFn<'_>,
        step: u64,
        mut clock: Option<&mut PhaseClock>,
    ) -> Result<Stepped> {
        tch::manual_seed((settings.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)) as i64);
        let rng_at_start = settings.dist.map(|_| self.rng.clone());
        let (batch, extra) = next_batch(&mut self.rng, step)?;
        zero_grad(&self.params)?;
        if let Some(c) = clock.as_deref_mut() {
            c.phases.batch = c.lap();
        }
        let accumulate = settings.optim.accumulate.max(1);
        let pass = backward(
            model,
            objective,
            &batch,
            accumulate,
            (&self.scale, self.autocast),
            &mut self.rng,
            settings.dist,
            clock,
        )?;
        let (mut loss, mut parts) = match pass {
            Pass::Done { loss, parts } => (loss, parts),
            Pass::NonFinite(value) => return Ok(Stepped::NonFinite(value)),
        };
        if let Some(d) = settings.dist {
            // one reduction carries the loss terms and any rank's interrupt request
            let mut values = vec![loss];
            values.extend(parts.iter().map(|p| p.1));
            values.push(f64::from(u8::from(crate::interrupt::requested())));
            let sums = d.sum(&values)?;
            let w = d.world() as f64;
            if sums[values.len() - 1] > 0.0 {
                if let Some(rng) = rng_at_start {
                    self.rng = rng;
                }
                return Ok(Stepped::Interrupted);
            }
            loss = sums[0] / w;
            for (p, s) in parts.iter_mut().zip(&sums[1..]) {
                p.1 = s / w;
            }
            if !loss.is_finite() {
                return Ok(Stepped::NonFinite(loss));
            }
            d.mean_grads(&self.params)?;
        }
        let stepped = self.scale.unscale(&self.params)?;
        let info = update(
            &self.params,
            &mut self.adam,
            &mut self.ema,
            settings.optim,
            step,
            stepped,
        )?;
        Ok(Stepped::Done {
            loss,
            parts,
            extra,
            info,
        })
    }

    fn new(model: &Model, settings: &LoopSettings<'_>) -> Self {
        let autocast = settings
            .optim
            .autocast
            .kind()
            .filter(|_| model.vs.device().is_cuda());
        let scale = LossScale::new(autocast == Some(tch::Kind::Half), settings.optim);
        let (names, params) = sorted_variables(model);
        let adam = Adam::new(settings.optim, &params);
        let ema = Ema::new(settings.optim.ema_decay, settings.optim.ema_warmup, &params);
        LoopState {
            names,
            params,
            arch: model.config().clone(),
            adam,
            ema,
            rng: ChaCha20Rng::seed_from_u64(settings.seed),
            scale,
            autocast,
        }
    }

    /// Restores the newest intact state in `dir`; the steps it had completed (0 without one).
    fn resume(&mut self, dir: &Path, label: &str) -> Result<u64> {
        let Some(state) = checkpointing::latest_state(dir, &self.names) else {
            return Ok(0);
        };
        if state.arch != self.arch {
            return Err(Error::BadCheckpoint {
                path: dir.to_path_buf(),
                reason: "the saved state belongs to another architecture".into(),
            });
        }
        tch::no_grad(|| -> Result<()> {
            for (i, p) in self.params.iter().enumerate() {
                let mut p = p.shallow_clone();
                // copied into the tensors `new` made like the parameters, so they keep the
                // parameters' layout (channels-last) and the multi-tensor kernels stay usable
                p.f_copy_(&state.params[i].1.to_device(p.device()))?;
                self.adam.m[i].f_copy_(&state.adam_m[i].to_device(p.device()))?;
                self.adam.v[i].f_copy_(&state.adam_v[i].to_device(p.device()))?;
                self.ema.values[i].f_copy_(&state.ema[i].to_device(p.device()))?;
            }
            Ok(())
        })?;
        self.adam.t = state.adam_t;
        // Adam and the EMA advance together (a step skipped by the loss scale skips both).
        self.ema.num_updates = state.adam_t;
        self.rng = state.rng;
        if let (true, Some((value, clean))) = (self.scale.enabled, state.loss_scale) {
            self.scale.value = value;
            self.scale.clean = clean;
        }
        tracing::info!("{label}: resumed at step {}", state.step);
        Ok(state.step)
    }

    /// The fingerprint of everything that must stay identical on every rank.
    fn checksum(&self) -> Result<Vec<f64>> {
        checksum(&[&self.params, &self.adam.m, &self.adam.v, &self.ema.values])
    }

    fn state_ref(&self) -> StateRef<'_> {
        StateRef {
            names: &self.names,
            params: &self.params,
            adam: &self.adam,
            ema: &self.ema,
            rng: &self.rng,
            arch: &self.arch,
            loss_scale: self
                .scale
                .enabled
                .then_some((self.scale.value, self.scale.clean)),
        }
    }

    /// Writes the trained model to `path`: the EMA or the raw weights, as configured.
    fn write_model(&self, path: &Path, settings: &LoopSettings<'_>) -> Result<()> {
        let use_ema = settings.optim.use_ema;
        let values = if use_ema {
            &self.ema.values
        } else {
            &self.params
        };
        let weights: Vec<(String, Tensor)> = self
            .names
            .iter()
            .cloned()
            .zip(values.iter().map(|t| t.detach()))
            .collect();
        let meta = BTreeMap::from([
            ("slimflow.step".to_string(), settings.steps.to_string()),
            (
                "slimflow.weights".to_string(),
                if use_ema { "ema" } else { "raw" }.to_string(),
            ),
        ]);
        ckpt::write_model(path, &self.arch, &weights, &meta)?;
        Ok(())
    }
}

/// One step's forward and backward passes.
enum Pass {
    /// Gradients accumulated: the mean loss and loss terms over the micro-batches.
    Done {
        loss: f64,
        parts: Vec<(&'static str, f64)>,
    },
    /// A micro-batch's loss was not finite (and got no backward pass).
    NonFinite(f64),
}

/// Runs `batch` as `accumulate` micro-batches (under autocast when `scale` is enabled), each loss
/// multiplied by `scale / accumulate` before its backward pass so the gradients add up to the whole
/// batch's. On a rank of `dist`, the objective draws for each whole micro-batch and the rank keeps
/// its rows of batch and draws; a non-finite loss is then returned as the loss, for the ranks to
/// agree on after the reduction.
#[allow(clippy::too_many_arguments)]
fn backward(
    model: &Model,
    objective: &dyn Objective,
    batch: &Batch,
    accumulate: usize,
    (scale, autocast): (&LossScale, Option<tch::Kind>),
    rng: &mut ChaCha20Rng,
    dist: Option<&Dist>,
    mut clock: Option<&mut PhaseClock>,
) -> Result<Pass> {
    let n = batch.x0.size().first().copied().unwrap_or(0);
    let ways = accumulate as i64 * dist.map_or(1, |d| d.world() as i64);
    if n % ways != 0 || n == 0 {
        return Err(Error::Invalid(format!(
            "a batch of {n} cannot be cut into {accumulate} micro-batch(es) on {} rank(s): make \
             batch_size a multiple of optim.accumulate × ranks = {ways}",
            dist.map_or(1, |d| d.world())
        )));
    }
    let mut loss = 0.0;
    let mut parts: Vec<(&'static str, f64)> = Vec::new();
    for micro in split(batch, accumulate) {
        let draws = objective.draw(model, &micro, rng)?;
        let (micro, draws) = match dist {
            Some(d) => {
                let (start, len) = d.shard(micro.x0.size()[0]);
                (rows(&micro, start, len), draws.narrow(start, len))
            }
            None => (micro, draws),
        };
        if let Some(kind) = autocast {
            // libtorch's autocast dtype is per thread: set it where the forward runs
            slimflow_c10d::autocast::set_dtype(slimflow_c10d::autocast::DeviceType::Cuda, kind)?;
        }
        let terms = tch::autocast(autocast.is_some(), || {
            objective.loss_with(model, &micro, &draws)
        })?;
        let value = terms.total.double_value(&[]);
        if let Some(c) = clock.as_deref_mut() {
            c.phases.forward += c.lap();
        }
        if !value.is_finite() {
            if dist.is_some() {
                return Ok(Pass::Done {
                    loss: value,
                    parts: terms.parts,
                });
            }
            return Ok(Pass::NonFinite(value));
        }
        (terms.total.to_kind(tch::Kind::Float) * (scale.value / accumulate as f64)).backward();
        if let Some(c) = clock.as_deref_mut() {
            c.phases.backward += c.lap();
        }
        loss += value / accumulate as f64;
        for (k, v) in terms.parts {
            match parts.iter_mut().find(|(name, _)| *name == k) {
                Some(slot) => slot.1 += v / accumulate as f64,
                None => parts.push((k, v / accumulate as f64)),
            }
        }
    }
    Ok(Pass::Done { loss, parts })
}

/// Wall time of one training step's phases, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepPhases {
    /// Drawing the batch (t, noise, pairs, annealing, flips) and zeroing the gradients.
    pub batch: f64,
    /// The objective's forward passes (student, teacher, LPIPS) and the loss read-back.
    pub forward: f64,
    /// The backward passes.
    pub backward: f64,
    /// Loss-scale check, guard, clip, Adam and the EMA.
    pub update: f64,
}

impl StepPhases {
    /// The whole step.
    pub fn total(&self) -> f64 {
        self.batch + self.forward + self.backward + self.update
    }
}

/// Times consecutive phases of a step, waiting for the device's queued work at each boundary.
pub(crate) struct PhaseClock {
    device: tch::Device,
    last: std::time::Instant,
    pub(crate) phases: StepPhases,
}

impl PhaseClock {
    pub(crate) fn new(device: tch::Device) -> Self {
        synchronize(device);
        PhaseClock {
            device,
            last: std::time::Instant::now(),
            phases: StepPhases::default(),
        }
    }

    /// Seconds since the previous lap (or the start), once the device is idle.
    pub(crate) fn lap(&mut self) -> f64 {
        synchronize(self.device);
        let now = std::time::Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        dt
    }
}

/// Waits for the work queued on `device` (nothing to wait for on the CPU).
pub(crate) fn synchronize(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Runs `warmup + steps` training steps of `model` exactly as [`train_with`] does (the same batch
/// function, objective, micro-batching, loss scale, guard, clip, Adam and EMA), without resuming,
/// logging or checkpointing, and returns the phase times of the last `steps`. `between(step)` runs
/// after each step, outside its timing (the bench interleaves its baseline there).
pub fn timed_steps(
    model: &mut Model,
    settings: &LoopSettings<'_>,
    objective: &dyn Objective,
    next_batch: &mut BatchFn<'_>,
    (warmup, steps): (u64, u64),
    between: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<Vec<StepPhases>> {
    let mut st = LoopState::new(model, settings);
    let device = model.vs.device();
    let mut out = Vec::with_capacity(steps as usize);
    for step in 0..warmup + steps {
        let mut clock = PhaseClock::new(device);
        let stepped = st.step(
            model,
            settings,
            objective,
            next_batch,
            step,
            Some(&mut clock),
        )?;
        // the bench runs one process, so only a non-finite loss ends it early
        if let Stepped::NonFinite(value) = stepped {
            return Err(Error::NonFiniteLoss {
                step,
                value,
                checkpoint: None,
            });
        }
        clock.phases.update = clock.lap();
        if step >= warmup {
            out.push(clock.phases);
        }
        between(step)?;
    }
    Ok(out)
}

/// Rows `start..start + len` of `batch`.
fn rows(batch: &Batch, start: i64, len: i64) -> Batch {
    Batch {
        x0: batch.x0.narrow(0, start, len),
        x1: batch.x1.narrow(0, start, len),
        labels: batch.labels.as_ref().map(|l| l.narrow(0, start, len)),
    }
}

/// `batch` cut into `parts` equal micro-batches along the batch dimension.
fn split(batch: &Batch, parts: usize) -> Vec<Batch> {
    if parts <= 1 {
        return vec![Batch {
            x0: batch.x0.shallow_clone(),
            x1: batch.x1.shallow_clone(),
            labels: batch.labels.as_ref().map(|l| l.shallow_clone()),
        }];
    }
    let n = batch.x0.size()[0] / parts as i64;
    (0..parts as i64).map(|k| rows(batch, k * n, n)).collect()
}

/// Dynamic loss scaling for float16 autocast (1 and inert without it).
struct LossScale {
    value: f64,
    enabled: bool,
    clean: u64,
    window: u64,
}

/// Initial loss scale and growth window when the config leaves them unset.
const DEFAULT_LOSS_SCALE: (f64, u64) = (65536.0, 2000);

impl LossScale {
    fn new(enabled: bool, optim: &OptimConfig) -> Self {
        LossScale {
            value: if enabled {
                optim.loss_scale.unwrap_or(DEFAULT_LOSS_SCALE.0)
            } else {
                1.0
            },
            enabled,
            clean: 0,
            window: optim
                .loss_scale_window
                .unwrap_or(DEFAULT_LOSS_SCALE.1)
                .max(1),
        }
    }

    /// Divides the gradients by the scale; false (step to be skipped, scale halved) on overflow.
    fn unscale(&mut self, params: &[Tensor]) -> Result<bool> {
        if !self.enabled {
            return Ok(true);
        }
        let grads = crate::optim::grads(params);
        // one read-back for all gradients
        let finite = tch::no_grad(|| {
            let flags: Vec<Tensor> = grads.iter().map(|g| g.isfinite().all()).collect();
            flags.is_empty() || Tensor::stack(&flags, 0).all().int64_value(&[]) != 0
        });
        if !finite {
            self.value = (self.value / 2.0).max(1.0);
            self.clean = 0;
            crate::optim::zero_grad(params)?;
            return Ok(false);
        }
        if let Some(g) = grads.first() {
            // as rfpp's `grad *= 1 / loss_scale`: 1/scale rounded to the gradients' dtype
            let inverse = Tensor::from(1.0 / self.value).to_device(g.device());
            slimflow_c10d::foreach::mul(&grads, &inverse.to_kind(g.kind()))?;
        }
        self.clean += 1;
        if self.clean % self.window == 0 {
            self.value *= 2.0;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemorySink;
    use slimflow_losses::{PremetricConfig, Rf};
    use slimflow_models::ArchConfig;
    use slimflow_schedules::TimeDist;
    use tch::{Device, Kind};

    fn model() -> Model {
        Model::new(&ArchConfig::preset("mlp-toy-small").unwrap(), Device::Cpu).unwrap()
    }

    /// Three steps from the weights `init` (copied in: libtorch's global seed is shared by the
    /// tests running in parallel).
    fn trained(accumulate: usize, init: &[Tensor]) -> Vec<Tensor> {
        let dir = tempfile::tempdir().unwrap();
        let mut model = model();
        tch::no_grad(|| {
            for (p, v) in sorted_variables(&model).1.iter().zip(init) {
                p.shallow_clone().copy_(v);
            }
        });
        let optim = OptimConfig {
            warmup_steps: 0,
            accumulate,
            ..OptimConfig::default()
        };
        let checkpoint = CheckpointConfig {
            every: 100,
            ..CheckpointConfig::default()
        };
        let settings = LoopSettings {
            steps: 3,
            optim: &optim,
            checkpoint: &checkpoint,
            seed: 5,
            label: "test",
            dist: None,
        };
        let objective = Rf {
            time: TimeDist::Uniform { eps: 1e-3 },
            premetric: PremetricConfig::L2Squared {},
        };
        let mut batches = |rng: &mut ChaCha20Rng, _step: u64| {
            let x1 = slimflow_losses::normal_tensor(rng, &[8, 2], Device::Cpu);
            let x0 = slimflow_losses::normal_tensor(rng, &[8, 2], Device::Cpu);
            Ok((
                Batch {
                    x0,
                    x1,
                    labels: None,
                },
                Vec::new(),
            ))
        };
        let end = train(dir.path(), &mut model, &settings, &objective, &mut batches).unwrap();
        assert_eq!(end, LoopEnd::Finished);
        sorted_variables(&model).1
    }

    #[test]
    fn a_resumed_state_keeps_the_channels_last_layout() {
        let arch = ArchConfig::preset("slimflow-3.4m").unwrap().cpu_sized();
        let mut model = Model::new(&arch, Device::Cpu).unwrap();
        model.to_channels_last();
        let optim = OptimConfig::default();
        let checkpoint = CheckpointConfig::default();
        let settings = LoopSettings {
            steps: 1,
            optim: &optim,
            checkpoint: &checkpoint,
            seed: 1,
            label: "test",
            dist: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let st = LoopState::new(&model, &settings);
        checkpointing::save_state(dir.path(), &st.state_ref().at(7)).unwrap();
        let mut resumed = LoopState::new(&model, &settings);
        assert_eq!(resumed.resume(dir.path(), "test").unwrap(), 7);
        let nhwc = |t: &Tensor| t.dim() != 4 || t.size()[1] == 1 || t.stride()[1] == 1;
        let convs = resumed.params.iter().filter(|p| p.dim() == 4).count();
        assert!(convs > 0);
        for (i, p) in resumed.params.iter().enumerate() {
            let name = &resumed.names[i];
            assert!(nhwc(p), "{name}");
            assert!(
                nhwc(&resumed.adam.m[i]) && nhwc(&resumed.adam.v[i]),
                "{name} moments"
            );
            assert!(nhwc(&resumed.ema.values[i]), "{name} EMA");
        }
    }

    #[test]
    fn accumulated_micro_batches_train_like_the_whole_batch() {
        let init: Vec<Tensor> = sorted_variables(&model())
            .1
            .iter()
            .map(|t| t.detach().copy())
            .collect();
        let whole = trained(1, &init);
        let split = trained(2, &init);
        let four = trained(4, &init);
        for ((a, b), c) in whole.iter().zip(&split).zip(&four) {
            let d = (a - b).abs().max().double_value(&[]);
            assert!(d < 1e-6, "accumulate 2 differs by {d}");
            let d = (a - c).abs().max().double_value(&[]);
            assert!(d < 1e-6, "accumulate 4 differs by {d}");
        }
        // and training moved the weights at all
        let moved = init
            .iter()
            .zip(&whole)
            .any(|(a, b)| (a - b).abs().max().double_value(&[]) > 1e-5);
        assert!(moved);
    }

    #[test]
    fn loss_scale_skips_overflowing_steps_and_unscales_the_rest() {
        let p = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let params = [p.shallow_clone()];
        let mut scale = LossScale::new(true, &OptimConfig::default());
        assert_eq!(scale.value, 65536.0);
        (&p * f64::INFINITY).sum(Kind::Float).backward();
        assert!(!scale.unscale(&params).unwrap(), "overflow skips the step");
        assert_eq!(scale.value, 32768.0);
        assert_eq!(p.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
        zero_grad(&params).unwrap();
        (&p * 2.0 * scale.value).sum(Kind::Float).backward();
        assert!(scale.unscale(&params).unwrap());
        let g = Vec::<f32>::try_from(&p.grad()).unwrap();
        assert_eq!(g, vec![2.0; 3], "gradients divided by the scale");
        // without autocast the scale is inert
        let mut off = LossScale::new(false, &OptimConfig::default());
        assert!(off.unscale(&params).unwrap() && off.value == 1.0);
    }

    #[test]
    fn loss_scale_starts_and_grows_as_configured() {
        // rfpp's ImageNet run: 32768, doubled after 10 000 clean backward passes = 2500 steps of 4
        let optim = OptimConfig {
            autocast: crate::config::Autocast::F16,
            loss_scale: Some(32768.0),
            loss_scale_window: Some(3),
            ..OptimConfig::default()
        };
        let p = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let params = [p.shallow_clone()];
        let mut scale = LossScale::new(true, &optim);
        assert_eq!(scale.value, 32768.0);
        let mut seen = Vec::new();
        for _ in 0..4 {
            zero_grad(&params).unwrap();
            p.sum(Kind::Float).backward();
            assert!(scale.unscale(&params).unwrap());
            seen.push(scale.value);
        }
        assert_eq!(seen, vec![32768.0, 32768.0, 65536.0, 65536.0]);
        // halved on overflow, never below 1
        let mut low = LossScale::new(
            true,
            &OptimConfig {
                loss_scale: Some(1.0),
                ..optim.clone()
            },
        );
        zero_grad(&params).unwrap();
        (&p * f64::NAN).sum(Kind::Float).backward();
        assert!(!low.unscale(&params).unwrap());
        assert_eq!(low.value, 1.0);
    }

    /// Rf that records the first coordinate of every x1 row it computes a loss on.
    struct Recording {
        inner: Rf,
        seen: std::cell::RefCell<Vec<f32>>,
    }

    impl Objective for Recording {
        fn draw(
            &self,
            student: &dyn slimflow_sampling::Network,
            batch: &Batch,
            rng: &mut dyn rand::RngCore,
        ) -> slimflow_losses::Result<slimflow_losses::Draws> {
            self.inner.draw(student, batch, rng)
        }

        fn loss_with(
            &self,
            student: &dyn slimflow_sampling::Network,
            batch: &Batch,
            draws: &slimflow_losses::Draws,
        ) -> slimflow_losses::Result<slimflow_losses::LossTerms> {
            let x: Vec<f32> = Vec::try_from(&batch.x1.select(1, 0)).unwrap();
            self.seen.borrow_mut().extend(x);
            self.inner.loss_with(student, batch, draws)
        }
    }

    #[test]
    fn each_rank_computes_its_rows_of_every_micro_batch_and_gets_the_mean_gradient() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let init: Vec<Vec<f32>> = sorted_variables(&model())
            .1
            .iter()
            .map(|t| Vec::try_from(&t.flatten(0, -1)).unwrap())
            .collect();
        // batch of 8 rows (x1 = row index), 2 micro-batches of 4: one process, then two ranks
        let run = move |dist: Option<&Dist>| -> (Vec<f32>, f64, Vec<Vec<f32>>) {
            let model = model();
            tch::no_grad(|| {
                for (p, v) in sorted_variables(&model).1.iter().zip(&init) {
                    p.shallow_clone().copy_(&Tensor::from_slice(v).view_as(p));
                }
            });
            let x1 = Tensor::arange(16, (Kind::Float, Device::Cpu)).view([8, 2]) / 16.0;
            let x0 = x1.flip([0]);
            let batch = Batch {
                x0,
                x1: x1 * 16.0,
                labels: None,
            };
            let objective = Recording {
                inner: Rf {
                    time: TimeDist::Uniform { eps: 1e-3 },
                    premetric: PremetricConfig::L2Squared {},
                },
                seen: Default::default(),
            };
            let scale = LossScale::new(false, &OptimConfig::default());
            let mut rng = ChaCha20Rng::seed_from_u64(3);
            let pass = backward(
                &model,
                &objective,
                &batch,
                2,
                (&scale, None),
                &mut rng,
                dist,
                None,
            )
            .unwrap();
            let Pass::Done { loss, .. } = pass else {
                panic!("finite loss expected")
            };
            let params = sorted_variables(&model).1;
            if let Some(d) = dist {
                d.mean_grads(&params).unwrap();
            }
            let grads = params
                .iter()
                .map(|p| Vec::try_from(&p.grad().flatten(0, -1)).unwrap())
                .collect();
            (objective.seen.into_inner(), loss, grads)
        };
        let (rows, loss, grads) = run(None);
        assert_eq!(rows, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0]);
        let ranks: Vec<_> = (0..2)
            .map(|rank| {
                let run = run.clone();
                std::thread::spawn(move || {
                    let at = crate::parallel::Rendezvous {
                        host: "127.0.0.1".into(),
                        port,
                        rank0_serves: true,
                        attempt: 0,
                    };
                    let timeout = std::time::Duration::from_secs(60);
                    let d = Dist::connect(&at, rank, 2, Device::Cpu, timeout).unwrap();
                    let (rows, local_loss, grads) = run(Some(&d));
                    let mean_loss = d.sum(&[local_loss]).unwrap()[0] / 2.0;
                    (rows, mean_loss, grads)
                })
            })
            .collect();
        let out: Vec<_> = ranks.into_iter().map(|h| h.join().unwrap()).collect();
        // rank r keeps rows 2r, 2r+1 of each micro-batch of 4
        assert_eq!(out[0].0, vec![0.0, 2.0, 8.0, 10.0]);
        assert_eq!(out[1].0, vec![4.0, 6.0, 12.0, 14.0]);
        for (_, l, g) in &out {
            assert!((l - loss).abs() <= 1e-6 * loss.abs(), "{l} vs {loss}");
            for (a, b) in g.iter().zip(&grads) {
                let scale = b.iter().fold(0f32, |m, y| m.max(y.abs()));
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() <= 1e-5 * scale, "{x} vs {y} (scale {scale})");
                }
            }
        }
        // both ranks hold the same averaged gradient, bit for bit
        assert_eq!(out[0].2, out[1].2);
    }

    /// Everything a hook is shown.
    #[derive(Default)]
    struct Seen {
        start: Option<u64>,
        steps: Vec<u64>,
        records: Vec<(u64, Vec<(String, f64)>)>,
        end: Option<LoopEnd>,
    }

    impl StepHook for Seen {
        fn begin(&mut self, start: u64) -> Result<()> {
            self.start = Some(start);
            Ok(())
        }

        fn after_step(&mut self, view: &StepView<'_>) -> Result<()> {
            self.steps.push(view.step);
            if let Some(record) = view.record {
                let fields = record.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                self.records.push((view.step, fields));
            }
            Ok(())
        }

        fn finish(&mut self, end: LoopEnd) -> Result<()> {
            self.end = Some(end);
            Ok(())
        }
    }

    #[test]
    fn added_sinks_and_hooks_see_what_metrics_jsonl_gets() {
        let dir = tempfile::tempdir().unwrap();
        let objective = Rf {
            time: TimeDist::Uniform { eps: 1e-3 },
            premetric: PremetricConfig::L2Squared {},
        };
        let optim = OptimConfig {
            warmup_steps: 0,
            ..OptimConfig::default()
        };
        let checkpoint = CheckpointConfig {
            every: 3,
            keep_last: 2,
            log_every: 2,
            ..CheckpointConfig::default()
        };
        let run = |steps: u64, memory: &mut MemorySink, seen: &mut Seen| {
            let settings = LoopSettings {
                steps,
                optim: &optim,
                checkpoint: &checkpoint,
                seed: 5,
                label: "test",
                dist: None,
            };
            let mut batches = |rng: &mut ChaCha20Rng, step: u64| {
                let x1 = slimflow_losses::normal_tensor(rng, &[8, 2], Device::Cpu);
                let x0 = slimflow_losses::normal_tensor(rng, &[8, 2], Device::Cpu);
                let batch = Batch {
                    x0,
                    x1,
                    labels: None,
                };
                Ok((batch, vec![("beta", step as f64)]))
            };
            let observers = Observers::standard(dir.path(), &settings)
                .sink(memory)
                .hook(seen);
            train_with(
                dir.path(),
                &mut model(),
                &settings,
                &objective,
                &mut batches,
                observers,
            )
            .unwrap()
        };
        let (mut memory, mut seen) = (MemorySink::default(), Seen::default());
        assert_eq!(run(5, &mut memory, &mut seen), LoopEnd::Finished);
        // resumed from the final state of the first run
        let (mut memory2, mut seen2) = (MemorySink::default(), Seen::default());
        assert_eq!(run(8, &mut memory2, &mut seen2), LoopEnd::Finished);

        let steps = |m: &MemorySink| m.records.iter().map(|r| r.0).collect::<Vec<_>>();
        assert_eq!(steps(&memory), vec![2, 4, 5]);
        assert_eq!(steps(&memory2), vec![6, 8]);
        assert_eq!((seen.start, seen2.start), (Some(0), Some(5)));
        assert_eq!(seen.steps, vec![1, 2, 3, 4, 5]);
        assert_eq!(seen2.steps, vec![6, 7, 8]);
        assert_eq!(seen.records, memory.records);
        assert_eq!(seen2.records, memory2.records);
        assert_eq!(seen2.end, Some(LoopEnd::Finished));
        let names: Vec<&str> = memory.records[0].1.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["loss", "grad_norm", "lr", "rf", "beta"]);

        // The memory records, written by a JSONL sink of their own, are metrics.jsonl byte for byte.
        let copy = dir.path().join("copy.jsonl");
        let mut sink = JsonlSink::open(&copy, 0).unwrap();
        for (step, fields) in memory.records.iter().chain(&memory2.records) {
            let fields: Vec<(&str, f64)> = fields.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            sink.record(*step, &fields).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&copy), read(&dir.path().join("metrics.jsonl")));
        // TensorBoard: one event file per session, the same records as f32 scalars; the resumed
        // session first marks its restart at step 6 so TensorBoard hides the killed session's past.
        let files = crate::tensorboard::event_files(dir.path());
        assert_eq!(files.len(), 2, "{files:?}");
        let scalars = |events: &[slimflow_tensorboard::Event]| -> Vec<(u64, Vec<(String, f64)>)> {
            events
                .iter()
                .filter(|e| !e.values.is_empty())
                .map(|e| {
                    let fields = e
                        .values
                        .iter()
                        .filter_map(|v| match v {
                            slimflow_tensorboard::Value::Scalar { tag, value } => {
                                Some((tag.clone(), *value as f64))
                            }
                            _ => None,
                        })
                        .collect();
                    (e.step as u64, fields)
                })
                .collect()
        };
        let as_f32 = |m: &MemorySink| -> Vec<(u64, Vec<(String, f64)>)> {
            m.records
                .iter()
                .map(|(s, f)| {
                    (
                        *s,
                        f.iter()
                            .map(|(k, v)| (k.clone(), *v as f32 as f64))
                            .collect(),
                    )
                })
                .collect()
        };
        let first = slimflow_tensorboard::read_events(&files[0]).unwrap();
        let second = slimflow_tensorboard::read_events(&files[1]).unwrap();
        assert_eq!(scalars(&first), as_f32(&memory));
        assert_eq!(scalars(&second), as_f32(&memory2));
        assert!(!first.iter().any(|e| e.session_start));
        let restart: Vec<i64> = second
            .iter()
            .filter(|e| e.session_start)
            .map(|e| e.step)
            .collect();
        assert_eq!(restart, vec![6]);
        // and the standard hooks still keep the checkpoint schedule
        assert_eq!(
            checkpointing::list_states(&dir.path().join("checkpoints")),
            vec![6, 8]
        );
        assert!(dir.path().join("model.safetensors").is_file());
    }
}
