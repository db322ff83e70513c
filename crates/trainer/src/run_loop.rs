//! The training loop shared by the `train`, `reflow` and `distill` stages.
//!
//! Per step: reseed libtorch's generator from (seed, step) (it only drives dropout), draw the batch and
//! the objective's randomness from the loop's ChaCha20 generator, stop on a non-finite loss, backward,
//! zero non-finite gradients, clip, Adam with linear warm-up, EMA. Checkpoints follow the keep-last-N
//! policy; an interrupt request saves a state and returns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slimflow_losses::{Batch, Objective};
use slimflow_models::{checkpoint as ckpt, Model};
use tch::Tensor;

use crate::checkpointing::{self, Action, TrainState};
use crate::config::{CheckpointConfig, OptimConfig};
use crate::ema::Ema;
use crate::error::{Error, Result};
use crate::optim::{sanitize_and_clip, warmup_lr, zero_grad, Adam};
use crate::progress::Progress;
use crate::sink::{JsonlSink, MetricSink};

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

fn sorted_variables(model: &Model) -> (Vec<String>, Vec<Tensor>) {
    let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter().unzip()
}

/// Trains `model` in the stage directory `stage_dir`, resuming from its newest intact state, and
/// writes `<stage_dir>/model.safetensors` (EMA or raw weights) at the end. `metrics.jsonl` receives a
/// line every `log_every` steps.
pub fn train(
    stage_dir: &Path,
    model: &mut Model,
    settings: &LoopSettings<'_>,
    objective: &dyn Objective,
    next_batch: &mut BatchFn<'_>,
) -> Result<LoopEnd> {
    let ckpt_dir = stage_dir.join("checkpoints");
    let (names, params) = sorted_variables(model);
    let arch = model.config().clone();
    let mut adam = Adam::new(settings.optim, &params);
    let mut ema = Ema::new(settings.optim.ema_decay, &params);
    let mut rng = ChaCha20Rng::seed_from_u64(settings.seed);
    let mut start = 0u64;
    if let Some(state) = checkpointing::latest_state(&ckpt_dir, &names) {
        if state.arch != arch {
            return Err(Error::BadCheckpoint {
                path: ckpt_dir.clone(),
                reason: "the saved state belongs to another architecture".into(),
            });
        }
        tch::no_grad(|| -> Result<()> {
            for (i, p) in params.iter().enumerate() {
                let mut p = p.shallow_clone();
                p.f_copy_(&state.params[i].1.to_device(p.device()))?;
                adam.m[i] = state.adam_m[i].to_device(p.device());
                adam.v[i] = state.adam_v[i].to_device(p.device());
                ema.values[i] = state.ema[i].to_device(p.device());
            }
            Ok(())
        })?;
        adam.t = state.adam_t;
        rng = state.rng;
        start = state.step;
        tracing::info!("{}: resumed at step {start}", settings.label);
    }
    let mut sink = JsonlSink::open(&stage_dir.join("metrics.jsonl"), start)?;
    let mut progress = Progress::new(settings.label, start, settings.steps);
    let save = |step: u64, adam: &Adam, ema: &Ema, rng: &ChaCha20Rng| -> Result<PathBuf> {
        let state = TrainState {
            step,
            params: names
                .iter()
                .cloned()
                .zip(params.iter().map(|p| p.detach()))
                .collect(),
            ema: ema.values.iter().map(|t| t.shallow_clone()).collect(),
            adam_m: adam.m.iter().map(|t| t.shallow_clone()).collect(),
            adam_v: adam.v.iter().map(|t| t.shallow_clone()).collect(),
            adam_t: adam.t,
            rng: rng.clone(),
            arch: arch.clone(),
        };
        checkpointing::save_state(&ckpt_dir, &state)
    };
    for step in start..settings.steps {
        if crate::interrupt::requested() {
            if !checkpointing::list_states(&ckpt_dir).contains(&step) {
                save(step, &adam, &ema, &rng)?;
            }
            progress.finish();
            tracing::info!(
                "{}: interrupted at step {step}; run again to resume",
                settings.label
            );
            return Ok(LoopEnd::Interrupted);
        }
        tch::manual_seed((settings.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)) as i64);
        let (batch, extra) = next_batch(&mut rng, step)?;
        let terms = objective.loss(model, &batch, &mut rng)?;
        let loss = terms.total.double_value(&[]);
        if !loss.is_finite() {
            progress.finish();
            let last = checkpointing::list_states(&ckpt_dir)
                .last()
                .map(|&s| checkpointing::state_path(&ckpt_dir, s));
            return Err(Error::NonFiniteLoss {
                step,
                value: loss,
                checkpoint: last,
            });
        }
        zero_grad(&params);
        terms.total.backward();
        let grad_norm = sanitize_and_clip(&params, settings.optim.grad_clip);
        let lr = warmup_lr(settings.optim.lr, step, settings.optim.warmup_steps);
        adam.step(&params, lr);
        ema.update(&params);
        let done = step + 1;
        let every = settings.checkpoint.log_every.max(1);
        if done % every == 0 || done == settings.steps {
            let mut fields: Vec<(&str, f64)> =
                vec![("loss", loss), ("grad_norm", grad_norm), ("lr", lr)];
            fields.extend(terms.parts.iter().chain(&extra).map(|(k, v)| (*k, *v)));
            sink.record(done, &fields)?;
        }
        progress.set(done, || format!("loss {loss:.4}"));
        let existing = checkpointing::list_states(&ckpt_dir);
        for action in checkpointing::plan(
            done,
            settings.steps,
            settings.checkpoint.every,
            settings.checkpoint.keep_last,
            &existing,
        ) {
            match action {
                Action::Save(s) => {
                    save(s, &adam, &ema, &rng)?;
                }
                Action::Delete(s) => checkpointing::delete_state(&ckpt_dir, s)?,
            }
        }
    }
    progress.finish();
    let weights: Vec<(String, Tensor)> = if settings.optim.use_ema {
        names
            .iter()
            .cloned()
            .zip(ema.values.iter().map(|t| t.shallow_clone()))
            .collect()
    } else {
        names
            .iter()
            .cloned()
            .zip(params.iter().map(|t| t.detach()))
            .collect()
    };
    let meta = BTreeMap::from([
        ("slimflow.step".to_string(), settings.steps.to_string()),
        (
            "slimflow.weights".to_string(),
            if settings.optim.use_ema { "ema" } else { "raw" }.to_string(),
        ),
    ]);
    ckpt::write_model(&stage_dir.join("model.safetensors"), &arch, &weights, &meta)?;
    Ok(LoopEnd::Finished)
}
