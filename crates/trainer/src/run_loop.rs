//! The training loop shared by the `train`, `reflow` and `distill` stages.
//!
//! Per step: reseed libtorch's generator from (seed, step) (it only drives dropout), draw the batch and
//! the objective's randomness from the loop's ChaCha20 generator, split it into `accumulate`
//! micro-batches whose gradients add up, then [`crate::optim::update`]: warm-up lr, the non-finite
//! guard and the clip in the configured order, Adam, EMA.
//!
//! An ordinary step never waits for the device: its loss, loss terms and gradient norm stay there,
//! and a device-side watch notes the first non-finite loss. They are read back, in one transfer, on
//! the steps that log or where a hook acts (a checkpoint, a sample grid), and before an interrupt's
//! state: a non-finite loss then stops the run naming its step, before anything after it is logged
//! or saved. Three things still wait every step, each a host decision as in the reference code: the
//! float16 loss scale's overflow check (torch's `GradScaler` with an unfused optimizer), the
//! `skip_step` guard (rfpp's check before `optimizer.step()`), and on several ranks the reduction
//! that lets them agree to stop. With `autocast`
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
use crate::config::{CheckpointConfig, GradReduce, OptimConfig};
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
    /// How its ranks average the gradients.
    pub grad_reduce: GradReduce,
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

    /// Whether a hook acts after `step` of `steps` (sinks act on the logged steps).
    fn acts_at(&self, step: u64, steps: u64) -> bool {
        self.hooks.iter().any(|h| h.acts_at(step, steps))
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
        if settings.grad_reduce == GradReduce::Overlap {
            // the trainable ones: buffers have no gradient to reduce
            let trainable: Vec<Tensor> = st
                .params
                .iter()
                .filter(|p| p.requires_grad())
                .map(|p| p.shallow_clone())
                .collect();
            st.reducer = Some(d.grad_reducer(&trainable)?);
        }
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
    // the newest loss read back, for the progress line
    let mut shown: Option<f64> = None;
    for step in start..settings.steps {
        // on several ranks the request travels with the step's statistics, so all stop together
        if dist.is_none() && crate::interrupt::requested() {
            // the state about to be saved must not follow a non-finite step
            if let Some((bad, value)) = st.watch.first()? {
                return Err(non_finite_loss(bad, value, &ckpt_dir, &st.names));
            }
            return interrupted(&st, &ckpt_dir, step, settings, observers, writer);
        }
        let out = match st.step(model, settings, objective, next_batch, step, None)? {
            Stepped::Done(out) => out,
            Stepped::Interrupted => {
                finish_progress(&mut progress);
                return interrupted(&st, &ckpt_dir, step, settings, observers, writer);
            }
            Stepped::NonFinite(value) => {
                finish_progress(&mut progress);
                return Err(non_finite_loss(step, value, &ckpt_dir, &st.names));
            }
        };
        let done = step + 1;
        let logged = done % settings.checkpoint.log_every.max(1) == 0 || done == settings.steps;
        // Reading the step's numbers waits for the device: only where something uses them, and
        // then with the non-finite watch, so nothing is logged or saved after a non-finite loss.
        let values = if logged || observers.acts_at(done, settings.steps) {
            let values = out.read(&st.watch)?;
            if let Some((bad, value)) = values.non_finite {
                finish_progress(&mut progress);
                return Err(non_finite_loss(bad, value, &ckpt_dir, &st.names));
            }
            shown = Some(values.loss);
            Some(values)
        } else {
            None
        };
        let record = match (&values, logged) {
            (Some(v), true) => {
                let mut fields = vec![("loss", v.loss), ("grad_norm", v.grad_norm), ("lr", out.lr)];
                if st.scale.enabled {
                    fields.push(("loss_scale", st.scale.value));
                }
                fields.extend(v.parts.iter().chain(&out.extra).copied());
                Some(fields)
            }
            _ => None,
        };
        if let (Some(d), true) = (dist, logged) {
            d.check_identical("parameters, Adam moments and EMA", done, &st.checksum()?)?;
        }
        if let Some(p) = progress.as_mut() {
            p.set(done, || {
                shown.map_or_else(String::new, |l| format!("loss {l:.4}"))
            });
        }
        observers.after_step(&StepView {
            step: done,
            steps: settings.steps,
            loss: values.as_ref().map(|v| v.loss),
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

/// The error for a non-finite loss at `step` (0-based), naming the newest intact state.
fn non_finite_loss(step: u64, value: f64, ckpt_dir: &Path, names: &[String]) -> Error {
    Error::NonFiniteLoss {
        step,
        value,
        checkpoint: checkpointing::latest_good(ckpt_dir, names).map(|g| g.0),
    }
}

/// What one step did.
enum Stepped {
    /// The parameters were updated (or the update was skipped by the loss scale or the guard).
    Done(StepOut),
    /// The ranks' mean loss was not finite; nothing was updated (several ranks only: one process
    /// learns of a non-finite loss from its [`NonFiniteWatch`]).
    NonFinite(f64),
    /// A rank asked to stop; nothing was updated and the generator is back where the step began.
    Interrupted,
}

/// A done step's numbers, left on the device until a step that logs or saves reads them.
struct StepOut {
    /// The mean loss over the micro-batches (0-dim, float64).
    loss: Tensor,
    /// The objective's parts, likewise.
    parts: Vec<(&'static str, Tensor)>,
    /// The batch function's own fields (e.g. β).
    extra: Vec<(&'static str, f64)>,
    lr: f64,
    /// The gradient norm before clipping (0-dim).
    grad_norm: Tensor,
}

/// [`StepOut`] read back.
struct StepValues {
    loss: f64,
    grad_norm: f64,
    parts: Vec<(&'static str, f64)>,
    /// The first non-finite step since the run (re)started and its loss.
    non_finite: Option<(u64, f64)>,
}

impl StepOut {
    /// Reads the step's numbers and `watch` back in one transfer.
    fn read(&self, watch: &NonFiniteWatch) -> Result<StepValues> {
        let mut all = vec![&self.loss, &self.grad_norm];
        all.extend(self.parts.iter().map(|p| &p.1));
        all.push(&watch.first);
        let values = read_f64(&all)?;
        let (head, watched) = values.split_at(values.len() - 2);
        Ok(StepValues {
            loss: head[0],
            grad_norm: head[1],
            parts: self
                .parts
                .iter()
                .map(|p| p.0)
                .zip(head[2..].iter().copied())
                .collect(),
            non_finite: NonFiniteWatch::decode(watched),
        })
    }
}

/// The values of `tensors` (any devices and dtypes, each flattened) as float64, in one transfer
/// per device.
fn read_f64(tensors: &[&Tensor]) -> Result<Vec<f64>> {
    #[cfg(test)]
    tests::READS.with(|r| r.set(r.get() + 1));
    let Some(first) = tensors.first() else {
        return Ok(Vec::new());
    };
    let device = first.device();
    let flat: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.to_device(device).to_kind(tch::Kind::Double).reshape([-1]))
        .collect();
    Ok(Vec::<f64>::try_from(
        &Tensor::f_cat(&flat, 0)?.to_device(tch::Device::Cpu),
    )?)
}

/// The first step whose loss was not finite, tracked on the device so that ordinary steps need
/// no read-back: `[step, loss]`, step −1 while every loss was finite. The loop reads it with each
/// step it logs or saves at, and before an interrupt's state.
struct NonFiniteWatch {
    first: Tensor,
}

impl NonFiniteWatch {
    fn new(device: tch::Device) -> Self {
        NonFiniteWatch {
            first: Tensor::from_slice(&[-1.0f64, 0.0]).to_device(device),
        }
    }

    /// Notes the loss of `step` (0-dim float64 on the watch's device).
    fn observe(&mut self, step: u64, loss: &Tensor) {
        tch::no_grad(|| {
            let fresh = self
                .first
                .get(0)
                .lt(0.0)
                .logical_and(&loss.isfinite().logical_not());
            let candidate = Tensor::stack(&[loss.full_like(step as f64), loss.shallow_clone()], 0);
            self.first = candidate.where_self(&fresh, &self.first);
        })
    }

    /// The first non-finite step and its loss, if there was one (a read-back).
    fn first(&self) -> Result<Option<(u64, f64)>> {
        Ok(Self::decode(&read_f64(&[&self.first])?))
    }

    /// The watch's `[step, loss]` read back: the step and loss, if one was not finite.
    fn decode(v: &[f64]) -> Option<(u64, f64)> {
        (v[0] >= 0.0).then_some((v[0] as u64, v[1]))
    }
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
    watch: NonFiniteWatch,
    /// On several ranks: c10d's DDP reducer, which averages the gradients during the backward pass.
    reducer: Option<slimflow_c10d::GradReducer>,
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
            settings.dist.map(|d| (d, self.reducer.as_mut())),
            clock,
        )?;
        let (mut loss, mut parts) = pass;
        if let Some(d) = settings.dist {
            // one reduction carries the loss terms and any rank's interrupt request (the ranks
            // must agree on both, so this step reads back every step)
            let mut all = vec![&loss];
            all.extend(parts.iter().map(|p| &p.1));
            let mut values = read_f64(&all)?;
            values.push(f64::from(u8::from(crate::interrupt::requested())));
            let sums = d.sum(&values)?;
            let w = d.world() as f64;
            if sums[values.len() - 1] > 0.0 {
                if let Some(rng) = rng_at_start {
                    self.rng = rng;
                }
                return Ok(Stepped::Interrupted);
            }
            let mean = sums[0] / w;
            if !mean.is_finite() {
                return Ok(Stepped::NonFinite(mean));
            }
            loss = Tensor::from(mean);
            for (p, s) in parts.iter_mut().zip(&sums[1..]) {
                p.1 = Tensor::from(s / w);
            }
            if self.reducer.is_none() {
                d.mean_grads(&self.params)?;
            }
        } else {
            self.watch.observe(step, &loss);
        }
        let stepped = self.scale.unscale(&self.params)?;
        let UpdateInfo { lr, grad_norm } = update(
            &self.params,
            &mut self.adam,
            &mut self.ema,
            settings.optim,
            step,
            stepped,
        )?;
        Ok(Stepped::Done(StepOut {
            loss,
            parts,
            extra,
            lr,
            grad_norm,
        }))
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
        let ema = Ema::for_optim(settings.optim, &params);
        LoopState {
            names,
            params,
            arch: model.config().clone(),
            adam,
            ema,
            rng: ChaCha20Rng::seed_from_u64(settings.seed),
            scale,
            autocast,
            watch: NonFiniteWatch::new(model.vs.device()),
            reducer: None,
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

/// One step's forward and backward passes: the mean loss and loss terms over the micro-batches
/// (0-dim float64 tensors on the device).
type Pass = (Tensor, Vec<(&'static str, Tensor)>);

/// Runs `batch` as `accumulate` micro-batches (under autocast when `scale` is enabled), each loss
/// multiplied by `scale / accumulate` before its backward pass so the gradients add up to the whole
/// batch's. On a rank of `dist`, the objective draws for each whole micro-batch and the rank keeps
/// its rows of batch and draws. Nothing is read back: a non-finite loss gets its backward pass like
/// any other, and the caller's watch (or the ranks' reduction) stops the run.
#[allow(clippy::too_many_arguments)]
fn backward(
    model: &Model,
    objective: &dyn Objective,
    batch: &Batch,
    accumulate: usize,
    (scale, autocast): (&LossScale, Option<tch::Kind>),
    rng: &mut ChaCha20Rng,
    dist: Option<(&Dist, Option<&mut slimflow_c10d::GradReducer>)>,
    mut clock: Option<&mut PhaseClock>,
) -> Result<Pass> {
    let (dist, mut reducer) = match dist {
        Some((d, r)) => (Some(d), r),
        None => (None, None),
    };

    let n = batch.x0.size().first().copied().unwrap_or(0);
    let ways = accumulate as i64 * dist.map_or(1, |d| d.world() as i64);
    if n % ways != 0 || n == 0 {
        return Err(Error::Invalid(format!(
            "a batch of {n} cannot be cut into {accumulate} micro-batch(es) on {} rank(s): make \
             batch_size a multiple of optim.accumulate × ranks = {ways}",
            dist.map_or(1, |d| d.world())
        )));
    }
    let mut loss: Option<Tensor> = None;
    let mut parts: Vec<(&'static str, Tensor)> = Vec::new();
    let share = |t: &Tensor| t.detach().to_kind(tch::Kind::Double) / accumulate as f64;
    let add =
        |sum: Option<Tensor>, t: Tensor| Some(sum.map_or_else(|| t.shallow_clone(), |s| s + &t));
    for (k, micro) in split(batch, accumulate).into_iter().enumerate() {
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
        if let Some(c) = clock.as_deref_mut() {
            c.phases.forward += c.lap();
        }
        let scaled = terms.total.to_kind(tch::Kind::Float) * (scale.value / accumulate as f64);
        // the reducer averages during the last micro-batch's pass; the others only accumulate
        match (dist, reducer.as_deref_mut()) {
            (Some(d), Some(r)) if k + 1 == accumulate => {
                r.prepare_for_backward(&scaled)
                    .map_err(|e| reducer_error(d, e))?;
                scaled.f_backward().map_err(|e| {
                    d.lost(
                        "all_reduce of the gradients",
                        r.backward_error(e.to_string()),
                    )
                })?;
                // on every rank alike: a bucket left open (a parameter without a gradient) fails
                // here, before the update; after the first step the buckets are rebuilt
                r.rebuild_buckets().map_err(|e| reducer_error(d, e))?;
            }
            _ => scaled.backward(),
        }
        if let Some(c) = clock.as_deref_mut() {
            c.phases.backward += c.lap();
        }
        loss = add(loss, share(&terms.total));
        for (k, v) in terms.parts {
            let v = share(&v);
            match parts.iter_mut().find(|(name, _)| *name == k) {
                Some(slot) => slot.1 = &slot.1 + v,
                None => parts.push((k, v)),
            }
        }
    }
    let loss = loss.ok_or_else(|| Error::Invalid("a step without micro-batches".into()))?;
    Ok((loss, parts))
}

/// The error of the DDP reducer: a parameter without a gradient in a reduced pass is the model's
/// doing (the reducer's own message says which, by index in the sorted parameter list), anything
/// else a lost peer.
fn reducer_error(d: &Dist, e: slimflow_c10d::C10dError) -> Error {
    let message = e.to_string();
    if message.contains("did not receive grad") || message.contains("not used in producing loss") {
        return Error::Invalid(format!(
            "{message}\n(parameter indices count the trainable parameters sorted by name.) A \
             parameter that gets no gradient in some step stops the overlapped gradient reduction: \
             set performance.grad_reduce = \"after_backward\""
        ));
    }
    d.lost("the gradient reducer", e)
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

/// The timings of [`timed_steps`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepTimes {
    /// Phase times of each step of the phase pass, the device idle at each phase boundary.
    pub phases: Vec<StepPhases>,
    /// Seconds of each whole step, waiting for the device only at step boundaries (as a training
    /// step is timed by `torch.cuda.synchronize()` around it); on the CPU the phase totals.
    pub whole: Vec<f64>,
    /// Seconds per step of steps run back to back with one wait at the end, as the loop runs
    /// (host work of a step overlaps the device's work on the one before). CUDA only.
    pub pipelined: Option<f64>,
}

/// Runs `warmup + steps` training steps of `model` exactly as [`train_with`] does (the same batch
/// function, objective, micro-batching, loss scale, guard, clip, Adam and EMA), without resuming,
/// logging or checkpointing, and returns the phase times of the last `steps`. `between(step)` runs
/// after each step of the phase pass, outside its timing (the bench interleaves its baseline
/// there). On CUDA, where waiting at phase boundaries changes what is timed, `steps` more steps
/// are timed whole and `steps` more back to back.
pub fn timed_steps(
    model: &mut Model,
    settings: &LoopSettings<'_>,
    objective: &dyn Objective,
    next_batch: &mut BatchFn<'_>,
    (warmup, steps): (u64, u64),
    between: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<StepTimes> {
    let mut st = LoopState::new(model, settings);
    let device = model.vs.device();
    let mut out = Vec::with_capacity(steps as usize);
    let mut whole = Vec::with_capacity(steps as usize);
    let mut pipelined = None;
    for step in 0..warmup + steps {
        let mut clock = PhaseClock::new(device);
        // one process: a done step (the watch sees a non-finite loss)
        st.step(
            model,
            settings,
            objective,
            next_batch,
            step,
            Some(&mut clock),
        )?;
        clock.phases.update = clock.lap();
        if step >= warmup {
            out.push(clock.phases);
        }
        between(step)?;
    }
    let first = warmup + steps;
    if device.is_cuda() {
        for step in first..first + steps {
            synchronize(device);
            let start = std::time::Instant::now();
            st.step(model, settings, objective, next_batch, step, None)?;
            synchronize(device);
            whole.push(start.elapsed().as_secs_f64());
        }
        let start = std::time::Instant::now();
        for step in first + steps..first + 2 * steps {
            st.step(model, settings, objective, next_batch, step, None)?;
        }
        synchronize(device);
        pipelined = Some(start.elapsed().as_secs_f64() / steps.max(1) as f64);
    }
    if let Some((step, value)) = st.watch.first()? {
        return Err(Error::NonFiniteLoss {
            step,
            value,
            checkpoint: None,
        });
    }
    if whole.is_empty() {
        whole = out.iter().map(StepPhases::total).collect();
    }
    Ok(StepTimes {
        phases: out,
        whole,
        pipelined,
    })
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
            // filled on the device (no copy from the host)
            let inverse = Tensor::full([], 1.0 / self.value, (g.kind(), g.device()));
            slimflow_c10d::foreach::mul(&grads, &inverse)?;
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

    thread_local! {
        /// The loop's read-backs on this thread ([`read_f64`]).
        pub(super) static READS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    use slimflow_losses::{PremetricConfig, Rf};
    use slimflow_models::ArchConfig;
    use slimflow_schedules::TimeDist;
    use tch::{Device, Kind};

    fn model() -> Model {
        Model::new(&ArchConfig::preset("mlp-toy-small").unwrap(), Device::Cpu).unwrap()
    }

    /// The toy model with its sorted variables set to `init` (flattened values).
    fn model_with(init: &[Vec<f32>]) -> Model {
        let model = model();
        tch::no_grad(|| {
            for (p, v) in sorted_variables(&model).1.iter().zip(init) {
                p.shallow_clone().copy_(&Tensor::from_slice(v).view_as(p));
            }
        });
        model
    }

    /// A loopback port free at the time of asking.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Rank `rank` of a 2-rank Gloo job over loopback at `port` (rank 0 serves the store).
    fn loopback_rank(port: u16, rank: usize) -> Dist {
        let at = crate::parallel::Rendezvous {
            host: "127.0.0.1".into(),
            port,
            rank0_serves: true,
            attempt: 0,
        };
        Dist::connect(
            &at,
            rank,
            2,
            Device::Cpu,
            std::time::Duration::from_secs(60),
        )
        .unwrap()
    }

    /// The toy runs' objective: the 1-RF loss with uniform t.
    fn toy_objective() -> Rf {
        Rf {
            time: TimeDist::Uniform { eps: 1e-3 },
            premetric: PremetricConfig::L2Squared {},
        }
    }

    /// A batch of 8 independent 2-D (noise, data) pairs from `rng` (x1 drawn first).
    fn toy_batch(rng: &mut ChaCha20Rng, device: Device) -> Batch {
        let x1 = slimflow_losses::normal_tensor(rng, &[8, 2], device);
        let x0 = slimflow_losses::normal_tensor(rng, &[8, 2], device);
        Batch {
            x0,
            x1,
            labels: None,
        }
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
            grad_reduce: GradReduce::default(),
        };
        let objective = toy_objective();
        let mut batches =
            |rng: &mut ChaCha20Rng, _: u64| Ok((toy_batch(rng, Device::Cpu), Vec::new()));
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
            grad_reduce: GradReduce::default(),
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
        // weights from the test's own generator: libtorch's global one moves with the other tests
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let init: Vec<Tensor> = sorted_variables(&model())
            .1
            .iter()
            .map(|t| slimflow_losses::normal_tensor(&mut rng, &t.size(), Device::Cpu) * 0.3)
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

    /// A toy run of `steps` steps from `init` whose batch at step `nan_at` is NaN; the loop's
    /// read-backs, the logged steps, the saved states and how it ended.
    fn toy_run(
        device: Device,
        steps: u64,
        (log_every, every): (u64, u64),
        nan_at: Option<u64>,
        hook: Option<&mut dyn StepHook>,
    ) -> (u64, Vec<u64>, Vec<u64>, Result<LoopEnd>) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::new(&ArchConfig::preset("mlp-toy-small").unwrap(), device).unwrap();
        let optim = OptimConfig {
            warmup_steps: 0,
            ..OptimConfig::default()
        };
        let checkpoint = CheckpointConfig {
            every,
            log_every,
            keep_last: 100,
            ..CheckpointConfig::default()
        };
        let settings = LoopSettings {
            steps,
            optim: &optim,
            checkpoint: &checkpoint,
            seed: 5,
            label: "test",
            dist: None,
            grad_reduce: GradReduce::default(),
        };
        let objective = toy_objective();
        let mut batches = |rng: &mut ChaCha20Rng, step: u64| {
            let mut batch = toy_batch(rng, device);
            if Some(step) == nan_at {
                batch.x1 *= f64::NAN;
            }
            Ok((batch, Vec::new()))
        };
        let mut sink = MemorySink::default();
        let mut observers = Observers::default().sink(&mut sink).hook(Checkpoints::new(
            dir.path().join("checkpoints"),
            &checkpoint,
        ));
        if let Some(h) = hook {
            observers = observers.hook(h);
        }
        READS.with(|r| r.set(0));
        let end = train_with(
            dir.path(),
            &mut model,
            &settings,
            &objective,
            &mut batches,
            observers,
        );
        let logged = sink.records.iter().map(|r| r.0).collect();
        let saved = checkpointing::list_states(&dir.path().join("checkpoints"));
        (READS.with(|r| r.get()), logged, saved, end)
    }

    #[test]
    fn ordinary_steps_read_nothing_back() {
        // 12 steps, logging every 4, a state every 6: reads at 4, 6, 8, 12 only
        let (reads, logged, saved, end) = toy_run(Device::Cpu, 12, (4, 6), None, None);
        assert_eq!(end.unwrap(), LoopEnd::Finished);
        assert_eq!(logged, vec![4, 8, 12]);
        assert_eq!(saved, vec![6, 12]);
        assert_eq!(reads, 4, "one read-back per step that logs or saves");
    }

    #[test]
    fn ordinary_cuda_steps_never_wait_for_the_device() {
        use slimflow_c10d::cuda::{set_sync_debug_mode, SyncDebugMode};
        if !tch::Cuda::is_available() {
            eprintln!("no CUDA device: skipped");
            return;
        }
        const CHILD: &str = "SLIMFLOW_SYNC_FREE_CHILD";
        let name = "run_loop::tests::ordinary_cuda_steps_never_wait_for_the_device";
        if std::env::var_os(CHILD).is_none() {
            // the debug mode is process-wide: run alone in a child process of this test binary
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--nocapture", "--test-threads", "1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("1 passed"), "{text}");
            return;
        }
        if let Err(e) = set_sync_debug_mode(SyncDebugMode::Error) {
            // the CUDA build of the shim must set it; the others cannot
            if cfg!(feature = "nccl") {
                panic!("the CUDA build could not set the sync debug mode: {e}");
            }
            eprintln!("skipped: {e} (gpu-check runs this with `--features nccl`)");
            return;
        }
        // the mode is in force: a blocking read-back fails
        let probe = Tensor::ones([4], (Kind::Float, Device::Cuda(0)));
        assert!(
            probe.f_to_device(Device::Cpu).is_err(),
            "sync debug mode not in force"
        );
        set_sync_debug_mode(SyncDebugMode::Off).unwrap();

        /// Forbids waiting for the device after step 2 up to step 10 (nothing logs or saves there).
        struct NoWaits;
        impl StepHook for NoWaits {
            fn acts_at(&self, _: u64, _: u64) -> bool {
                false
            }
            fn after_step(&mut self, view: &StepView<'_>) -> Result<()> {
                let mode = match view.step {
                    2 => SyncDebugMode::Error,
                    10 => SyncDebugMode::Off,
                    _ => return Ok(()),
                };
                set_sync_debug_mode(mode).map_err(|e| Error::Invalid(e.to_string()))
            }
        }
        let mut hook = NoWaits;
        let (reads, logged, _, end) = toy_run(Device::Cuda(0), 12, (12, 0), None, Some(&mut hook));
        set_sync_debug_mode(SyncDebugMode::Off).unwrap();
        assert_eq!(end.unwrap(), LoopEnd::Finished);
        assert_eq!((reads, logged), (1, vec![12]));
    }

    #[test]
    fn a_hook_without_a_cadence_gets_the_loss_of_every_step() {
        struct Losses(Vec<Option<f64>>);
        impl StepHook for Losses {
            fn after_step(&mut self, view: &StepView<'_>) -> Result<()> {
                self.0.push(view.loss);
                Ok(())
            }
        }
        let mut hook = Losses(Vec::new());
        let (reads, _, _, end) = toy_run(Device::Cpu, 5, (100, 0), None, Some(&mut hook));
        assert_eq!(end.unwrap(), LoopEnd::Finished);
        assert_eq!(reads, 5);
        assert!(hook.0.iter().all(|l| l.is_some_and(f64::is_finite)));
    }

    #[test]
    fn a_non_finite_loss_stops_the_run_before_anything_is_logged_or_saved_after_it() {
        // NaN at step index 5 (the 6th step): the states at 2 and 4 stay, nothing from 6 on
        let (reads, logged, saved, end) = toy_run(Device::Cpu, 20, (3, 2), Some(5), None);
        match end {
            Err(Error::NonFiniteLoss {
                step,
                value,
                checkpoint,
            }) => {
                assert_eq!(step, 5);
                assert!(value.is_nan());
                let checkpoint = checkpoint.expect("the state of step 4");
                assert!(checkpoint.to_string_lossy().contains('4'), "{checkpoint:?}");
            }
            other => panic!("expected NonFiniteLoss, got {other:?}"),
        }
        assert_eq!(logged, vec![3]);
        assert_eq!(saved, vec![2, 4]);
        // reads at 2, 3, 4 and at 6, where the stop is found
        assert_eq!(reads, 4);
    }

    #[test]
    fn overlapped_and_after_backward_reductions_train_two_ranks_alike() {
        // two ranks as threads, 4 steps of 2 micro-batches from the same weights, each mode
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        let init: Vec<Vec<f32>> = sorted_variables(&model())
            .1
            .iter()
            .map(|t| {
                let v = slimflow_losses::normal_tensor(&mut rng, &t.size(), Device::Cpu) * 0.3;
                Vec::try_from(&v.flatten(0, -1)).unwrap()
            })
            .collect();
        // `unused`: the model has a parameter no step gives a gradient
        let train_mode = |mode: GradReduce, unused: bool| -> Result<Vec<Vec<f32>>> {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap();
            let ranks: Vec<_> = (0..2)
                .map(|rank| {
                    let (init, path) = (init.clone(), dir.path().to_path_buf());
                    std::thread::spawn(move || {
                        let d = loopback_rank(port, rank);
                        let mut model = model_with(&init);
                        // a buffer, as the EDM networks' resample filters: not for the reducer
                        let _ = model.vs.root().zeros_no_train("buffer", &[2]);
                        if unused {
                            let _ = model.vs.root().zeros("unused", &[3]);
                        }
                        let optim = OptimConfig {
                            warmup_steps: 0,
                            accumulate: 2,
                            lr: 1e-2,
                            ..OptimConfig::default()
                        };
                        let checkpoint = CheckpointConfig {
                            every: 0,
                            log_every: 2,
                            ..CheckpointConfig::default()
                        };
                        let settings = LoopSettings {
                            steps: 4,
                            optim: &optim,
                            checkpoint: &checkpoint,
                            seed: 9,
                            label: "test",
                            dist: Some(&d),
                            grad_reduce: mode,
                        };
                        let objective = toy_objective();
                        let mut batches = |rng: &mut ChaCha20Rng, _: u64| {
                            Ok((toy_batch(rng, Device::Cpu), Vec::new()))
                        };
                        let end = train_with(
                            &path,
                            &mut model,
                            &settings,
                            &objective,
                            &mut batches,
                            Observers::default(),
                        )?;
                        assert_eq!(end, LoopEnd::Finished);
                        Ok::<_, Error>(
                            sorted_variables(&model)
                                .1
                                .iter()
                                .filter(|t| t.requires_grad())
                                .map(|t| Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap())
                                .collect::<Vec<_>>(),
                        )
                    })
                })
                .collect();
            let mut out = Vec::new();
            for h in ranks {
                out.push(h.join().unwrap()?);
            }
            assert_eq!(out[0], out[1], "{mode:?}: the ranks' weights differ");
            Ok(out.remove(0))
        };
        let overlap = train_mode(GradReduce::Overlap, false).unwrap();
        let after = train_mode(GradReduce::AfterBackward, false).unwrap();
        let diff = |a: &[Vec<f32>], b: &[Vec<f32>]| {
            a.iter()
                .flatten()
                .zip(b.iter().flatten())
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        assert!(diff(&overlap, &after) < 1e-6, "{}", diff(&overlap, &after));
        assert!(diff(&overlap, &init) > 1e-3, "training moved the weights");
        // a parameter without gradients stops the overlapped reduction with the fix named; the
        // after-backward reduction trains on
        let e = train_mode(GradReduce::Overlap, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("performance.grad_reduce = \"after_backward\""),
            "{e}"
        );
        train_mode(GradReduce::AfterBackward, true).unwrap();
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
        let port = free_port();
        let init: Vec<Vec<f32>> = sorted_variables(&model())
            .1
            .iter()
            .map(|t| Vec::try_from(&t.flatten(0, -1)).unwrap())
            .collect();
        // batch of 8 rows (x1 = row index), 2 micro-batches of 4: one process, then two ranks
        let run = move |dist: Option<&Dist>| -> (Vec<f32>, f64, Vec<Vec<f32>>) {
            let model = model_with(&init);
            let x1 = Tensor::arange(16, (Kind::Float, Device::Cpu)).view([8, 2]) / 16.0;
            let x0 = x1.flip([0]);
            let batch = Batch {
                x0,
                x1: x1 * 16.0,
                labels: None,
            };
            let objective = Recording {
                inner: toy_objective(),
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
                dist.map(|d| (d, None)),
                None,
            )
            .unwrap();
            let loss = pass.0.double_value(&[]);
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
                    let d = loopback_rank(port, rank);
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
        let objective = toy_objective();
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
                grad_reduce: GradReduce::default(),
            };
            let mut batches = |rng: &mut ChaCha20Rng, step: u64| {
                Ok((toy_batch(rng, Device::Cpu), vec![("beta", step as f64)]))
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
