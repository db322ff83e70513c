//! The training loop shared by the `train`, `reflow` and `distill` stages.
//!
//! Per step: reseed libtorch's generator from (seed, step) (it only drives dropout), draw the batch and
//! the objective's randomness from the loop's ChaCha20 generator, split it into `accumulate`
//! micro-batches whose gradients add up, stop on a non-finite loss, then [`crate::optim::update`]:
//! warm-up lr, the non-finite guard and the clip in the configured order, Adam, EMA. With `autocast` on CUDA the forward passes run in float16 under
//! libtorch's autocast with a dynamic loss scale (halved and the step skipped on overflow, doubled
//! after `loss_scale_window` clean steps; from `loss_scale`, defaults 65536 and 2000). Checkpoints follow the keep-last-N policy; an interrupt request saves a
//! state and returns. Image models can write a sample grid every `sample_every` steps.

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
use crate::optim::{update, zero_grad, Adam, UpdateInfo};
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

/// The model's variables sorted by name: the order of the optimizer's and the EMA's lists and of
/// saved training states.
pub fn sorted_variables(model: &Model) -> (Vec<String>, Vec<Tensor>) {
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
    let mut ema = Ema::new(settings.optim.ema_decay, settings.optim.ema_warmup, &params);
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
        // Adam and the EMA advance together (a step skipped by the loss scale skips both).
        ema.num_updates = state.adam_t;
        rng = state.rng;
        start = state.step;
        tracing::info!("{}: resumed at step {start}", settings.label);
    }
    let mut sink = JsonlSink::open(&stage_dir.join("metrics.jsonl"), start)?;
    let accumulate = settings.optim.accumulate.max(1);
    let amp = settings.optim.autocast && model.vs.device().is_cuda();
    let mut scale = LossScale::new(amp, settings.optim);
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
        zero_grad(&params);
        let mut loss = 0.0;
        let mut parts: Vec<(&'static str, f64)> = Vec::new();
        for micro in split(&batch, accumulate) {
            let terms = tch::autocast(amp, || objective.loss(model, &micro, &mut rng))?;
            let value = terms.total.double_value(&[]);
            if !value.is_finite() {
                progress.finish();
                let last = checkpointing::list_states(&ckpt_dir)
                    .last()
                    .map(|&s| checkpointing::state_path(&ckpt_dir, s));
                return Err(Error::NonFiniteLoss {
                    step,
                    value,
                    checkpoint: last,
                });
            }
            (terms.total.to_kind(tch::Kind::Float) * (scale.value / accumulate as f64)).backward();
            loss += value / accumulate as f64;
            for (k, v) in terms.parts {
                match parts.iter_mut().find(|(name, _)| *name == k) {
                    Some(slot) => slot.1 += v / accumulate as f64,
                    None => parts.push((k, v / accumulate as f64)),
                }
            }
        }
        let stepped = scale.unscale(&params);
        let UpdateInfo { lr, grad_norm } =
            update(&params, &mut adam, &mut ema, settings.optim, step, stepped);
        let done = step + 1;
        let every = settings.checkpoint.log_every.max(1);
        if done % every == 0 || done == settings.steps {
            let mut fields: Vec<(&str, f64)> =
                vec![("loss", loss), ("grad_norm", grad_norm), ("lr", lr)];
            if amp {
                fields.push(("loss_scale", scale.value));
            }
            fields.extend(parts.iter().chain(&extra).map(|(k, v)| (*k, *v)));
            sink.record(done, &fields)?;
        }
        let sample_every = settings.checkpoint.sample_every;
        if sample_every > 0 && (done % sample_every == 0 || done == settings.steps) {
            sample_grid(stage_dir, model, done, settings.checkpoint.sample_steps)?;
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
    (0..parts as i64)
        .map(|k| Batch {
            x0: batch.x0.narrow(0, k * n, n),
            x1: batch.x1.narrow(0, k * n, n),
            labels: batch.labels.as_ref().map(|l| l.narrow(0, k * n, n)),
        })
        .collect()
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
    fn unscale(&mut self, params: &[Tensor]) -> bool {
        if !self.enabled {
            return true;
        }
        let finite = tch::no_grad(|| {
            params.iter().all(|p| {
                let g = p.grad();
                !g.defined() || g.isfinite().all().int64_value(&[]) != 0
            })
        });
        if !finite {
            self.value = (self.value / 2.0).max(1.0);
            self.clean = 0;
            crate::optim::zero_grad(params);
            return false;
        }
        tch::no_grad(|| {
            for p in params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(1.0 / self.value);
                }
            }
        });
        self.clean += 1;
        if self.clean % self.window == 0 {
            self.value *= 2.0;
        }
        true
    }
}

/// Euler samples of the current weights from fixed noise (and fixed labels for class-conditional
/// models), as `samples/step-N.png` (image models).
fn sample_grid(stage_dir: &Path, model: &Model, step: u64, steps: usize) -> Result<()> {
    let shape = model.config().data_shape();
    if shape.len() != 3 {
        return Ok(());
    }
    let seeds: Vec<u64> = (0..64u64).map(|i| (1 << 50) + i).collect();
    let z = slimflow_data::seeded_normal(&seeds, &shape, model.vs.device());
    // Class-conditional models: row r of the 8×8 grid shows classes 8r … 8r + 7 (mod the classes).
    let classes = model.config().label_dim();
    let labels = (classes > 0).then(|| {
        let l: Vec<i64> = (0..seeds.len() as i64).map(|i| i % classes).collect();
        Tensor::from_slice(&l).to_device(model.vs.device())
    });
    let field = model.eval_field(labels.as_ref());
    let solver = slimflow_sampling::SolverConfig::Euler {
        steps: steps.max(1),
    };
    let x = slimflow_sampling::solve(&solver, &field, &z, 1e-3, 1.0, false)?.x;
    let dir = stage_dir.join("samples");
    std::fs::create_dir_all(&dir).map_err(crate::error::io_err(&dir))?;
    slimflow_metrics::pictures::grid_png(&dir.join(format!("step-{step:07}.png")), &x, 8)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert!(!scale.unscale(&params), "overflow skips the step");
        assert_eq!(scale.value, 32768.0);
        assert_eq!(p.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
        zero_grad(&params);
        (&p * 2.0 * scale.value).sum(Kind::Float).backward();
        assert!(scale.unscale(&params));
        let g = Vec::<f32>::try_from(&p.grad()).unwrap();
        assert_eq!(g, vec![2.0; 3], "gradients divided by the scale");
        // without autocast the scale is inert
        let mut off = LossScale::new(false, &OptimConfig::default());
        assert!(off.unscale(&params) && off.value == 1.0);
    }

    #[test]
    fn loss_scale_starts_and_grows_as_configured() {
        // rfpp's ImageNet run: 32768, doubled after 10 000 clean backward passes = 2500 steps of 4
        let optim = OptimConfig {
            autocast: true,
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
            zero_grad(&params);
            p.sum(Kind::Float).backward();
            assert!(scale.unscale(&params));
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
        zero_grad(&params);
        (&p * f64::NAN).sum(Kind::Float).backward();
        assert!(!low.unscale(&params));
        assert_eq!(low.value, 1.0);
    }
}
