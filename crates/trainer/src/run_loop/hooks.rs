//! Work done after a training step besides the update: the [`StepHook`] trait, the [`StepView`] it
//! receives, and the built-in hooks for sample grids and the checkpoint schedule.

use std::path::{Path, PathBuf};

use rand_chacha::ChaCha20Rng;
use slimflow_models::{ArchConfig, Model};
use tch::Tensor;

use super::LoopEnd;
use crate::checkpointing::{self, Action, TrainState};
use crate::config::CheckpointConfig;
use crate::ema::Ema;
use crate::error::Result;
use crate::optim::Adam;
use crate::tensorboard::TensorBoard;
use slimflow_metrics::pictures::RgbImage;

/// Runs after every optimizer step, after the metric sinks have received the step's record.
pub trait StepHook {
    /// The run starts (or resumes) after `start` completed steps.
    fn begin(&mut self, start: u64) -> Result<()> {
        let _ = start;
        Ok(())
    }

    /// Step `view.step` is done.
    fn after_step(&mut self, view: &StepView<'_>) -> Result<()>;

    /// Whether [`StepHook::after_step`] does anything after `step` of `steps`. Where no hook (and
    /// no sink) does, the loop leaves the step's numbers on the device rather than wait for it;
    /// a hook that answers true gets them in [`StepView::loss`]. The default is every step.
    fn acts_at(&self, step: u64, steps: u64) -> bool {
        let _ = (step, steps);
        true
    }

    /// The run ended without error: all steps done and the final model written, or interrupted
    /// with a state saved.
    fn finish(&mut self, end: LoopEnd) -> Result<()> {
        let _ = end;
        Ok(())
    }
}

/// Lets a caller keep a hook and read it after the loop has used it.
impl<H: StepHook + ?Sized> StepHook for &mut H {
    fn begin(&mut self, start: u64) -> Result<()> {
        (**self).begin(start)
    }

    fn after_step(&mut self, view: &StepView<'_>) -> Result<()> {
        (**self).after_step(view)
    }

    fn acts_at(&self, step: u64, steps: u64) -> bool {
        (**self).acts_at(step, steps)
    }

    fn finish(&mut self, end: LoopEnd) -> Result<()> {
        (**self).finish(end)
    }
}

/// The loop right after a step.
pub struct StepView<'a> {
    /// Steps completed, this one included.
    pub step: u64,
    /// Steps of the whole run.
    pub steps: u64,
    /// The step's loss (mean over its micro-batches), read back on the steps that log or where
    /// a hook acts ([`StepHook::acts_at`]); `None` on the others.
    pub loss: Option<f64>,
    /// What the metric sinks received at this step; `None` between logging steps.
    pub record: Option<&'a [(&'a str, f64)]>,
    /// The model being trained.
    pub model: &'a Model,
    pub(super) state: StateRef<'a>,
}

impl StepView<'_> {
    /// Whether this was the run's last step.
    pub fn is_last(&self) -> bool {
        self.step == self.steps
    }

    /// The resumable state after this step (tensors shared with the loop, not copied).
    pub fn train_state(&self) -> TrainState {
        self.state.at(self.step)
    }
}

/// The loop's parts of a [`TrainState`], borrowed.
pub(super) struct StateRef<'a> {
    pub(super) names: &'a [String],
    pub(super) params: &'a [Tensor],
    pub(super) adam: &'a Adam,
    pub(super) ema: &'a Ema,
    pub(super) rng: &'a ChaCha20Rng,
    pub(super) arch: &'a ArchConfig,
    /// The float16 loss scale and its clean steps, when the run scales the loss.
    pub(super) loss_scale: Option<(f64, u64)>,
}

impl StateRef<'_> {
    /// The state as of `step` completed steps.
    pub(super) fn at(&self, step: u64) -> TrainState {
        TrainState {
            step,
            params: self
                .names
                .iter()
                .cloned()
                .zip(self.params.iter().map(|p| p.detach()))
                .collect(),
            ema: self.ema.values.iter().map(|t| t.shallow_clone()).collect(),
            adam_m: self.adam.m.iter().map(|t| t.shallow_clone()).collect(),
            adam_v: self.adam.v.iter().map(|t| t.shallow_clone()).collect(),
            adam_t: self.adam.t,
            rng: self.rng.clone(),
            arch: self.arch.clone(),
            loss_scale: self.loss_scale,
        }
    }
}

/// Writes `samples/step-N.png` every `sample_every` steps and at the last one (image models; never
/// when `sample_every` is 0).
#[derive(Debug, Clone)]
pub struct SampleGrid {
    stage_dir: PathBuf,
    every: u64,
    solver_steps: usize,
    tensorboard: Option<TensorBoard>,
}

impl SampleGrid {
    /// Grids under `stage_dir` at the cadence of `cfg`.
    pub fn new(stage_dir: &Path, cfg: &CheckpointConfig) -> Self {
        SampleGrid {
            stage_dir: stage_dir.to_path_buf(),
            every: cfg.sample_every,
            solver_steps: cfg.sample_steps,
            tensorboard: None,
        }
    }

    /// Also logs each grid to `tb` (tag `samples`).
    pub fn with_tensorboard(mut self, tb: TensorBoard) -> Self {
        self.tensorboard = Some(tb);
        self
    }
}

impl StepHook for SampleGrid {
    fn acts_at(&self, step: u64, steps: u64) -> bool {
        self.every > 0 && (step % self.every == 0 || step == steps)
    }

    fn after_step(&mut self, view: &StepView<'_>) -> Result<()> {
        if self.acts_at(view.step, view.steps) {
            let grid = sample_grid(&self.stage_dir, view.model, view.step, self.solver_steps)?;
            if let (Some(tb), Some(grid)) = (&self.tensorboard, grid) {
                tb.image("samples", view.step, &grid)?;
            }
        }
        Ok(())
    }
}

/// Euler samples of the current weights from fixed noise (and fixed labels for class-conditional
/// models), as `samples/step-N.png` (image models; the grid is returned, `None` for others).
fn sample_grid(
    stage_dir: &Path,
    model: &Model,
    step: u64,
    steps: usize,
) -> Result<Option<RgbImage>> {
    let shape = model.config().data_shape();
    if shape.len() != 3 {
        return Ok(None);
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
    let grid = slimflow_metrics::pictures::grid_image(&x, 8)?;
    grid.save(&dir.join(format!("step-{step:07}.png")))?;
    Ok(Some(grid))
}

/// The keep-last-N schedule of [`checkpointing::plan`]: a state every `every` steps and at the last
/// one, older ones deleted.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    every: u64,
    keep_last: usize,
}

impl Checkpoints {
    /// States in `dir` at the cadence of `cfg`.
    pub fn new(dir: impl Into<PathBuf>, cfg: &CheckpointConfig) -> Self {
        Checkpoints {
            dir: dir.into(),
            every: cfg.every,
            keep_last: cfg.keep_last,
        }
    }
}

impl StepHook for Checkpoints {
    fn acts_at(&self, step: u64, steps: u64) -> bool {
        checkpointing::due(step, steps, self.every)
    }

    fn after_step(&mut self, view: &StepView<'_>) -> Result<()> {
        // Only steps that save touch the file system.
        if !self.acts_at(view.step, view.steps) {
            return Ok(());
        }
        let existing = checkpointing::list_states(&self.dir);
        for action in
            checkpointing::plan(view.step, view.steps, self.every, self.keep_last, &existing)
        {
            match action {
                Action::Save(s) => {
                    let state = TrainState {
                        step: s,
                        ..view.train_state()
                    };
                    // A diverged state must not push the good ones out of the keep-last window.
                    if let Some(tensor) = state.non_finite() {
                        let names: Vec<String> = state.params.iter().map(|p| p.0.clone()).collect();
                        return Err(crate::Error::NonFiniteState {
                            step: s,
                            tensor,
                            checkpoint: checkpointing::latest_good(&self.dir, &names).map(|g| g.0),
                        });
                    }
                    checkpointing::save_state(&self.dir, &state)?;
                }
                Action::Delete(s) => checkpointing::delete_state(&self.dir, s)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use tch::Device;

    #[test]
    fn sample_grids_follow_the_cadence_and_the_last_step() {
        let arch: ArchConfig = serde_json::from_value(serde_json::json!({
            "arch": "ncsnpp", "image_size": 32, "nf": 8, "ch_mult": [1, 2],
            "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0
        }))
        .unwrap();
        let model = Model::new(&arch, Device::Cpu).unwrap();
        let (names, params) = super::super::sorted_variables(&model);
        let optim = crate::config::OptimConfig::default();
        let (adam, ema) = (Adam::new(&optim, &params), Ema::new(0.9, false, &params));
        let rng = ChaCha20Rng::seed_from_u64(0);
        let dir = tempfile::tempdir().unwrap();
        let cfg = CheckpointConfig {
            sample_every: 2,
            ..CheckpointConfig::default()
        };
        let mut grid = SampleGrid::new(dir.path(), &cfg);
        for step in 1..=3 {
            let view = StepView {
                step,
                steps: 3,
                loss: Some(0.0),
                record: None,
                model: &model,
                state: StateRef {
                    names: &names,
                    params: &params,
                    adam: &adam,
                    ema: &ema,
                    rng: &rng,
                    arch: &arch,
                    loss_scale: None,
                },
            };
            grid.after_step(&view).unwrap();
        }
        let mut written: Vec<String> = std::fs::read_dir(dir.path().join("samples"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        written.sort();
        assert_eq!(written, ["step-0000002.png", "step-0000003.png"]);
    }

    #[test]
    fn a_diverged_state_keeps_the_good_ones_and_stops_the_run() {
        let arch = ArchConfig::preset("mlp-toy-small").unwrap();
        let model = Model::new(&arch, Device::Cpu).unwrap();
        let (names, params) = super::super::sorted_variables(&model);
        let optim = crate::config::OptimConfig::default();
        let (adam, ema) = (Adam::new(&optim, &params), Ema::new(0.9, false, &params));
        let rng = ChaCha20Rng::seed_from_u64(0);
        let dir = tempfile::tempdir().unwrap();
        let cfg = CheckpointConfig {
            every: 1,
            keep_last: 1,
            ..CheckpointConfig::default()
        };
        let mut hook = Checkpoints::new(dir.path(), &cfg);
        let view = |step| StepView {
            step,
            steps: 10,
            loss: Some(0.0),
            record: None,
            model: &model,
            state: StateRef {
                names: &names,
                params: &params,
                adam: &adam,
                ema: &ema,
                rng: &rng,
                arch: &arch,
                loss_scale: None,
            },
        };
        hook.after_step(&view(1)).unwrap();
        assert_eq!(checkpointing::list_states(dir.path()), [1]);
        tch::no_grad(|| {
            let _ = params[0].shallow_clone().fill_(f64::NAN);
        });
        let e = hook.after_step(&view(2)).unwrap_err().to_string();
        assert!(
            e.contains("step 2") && e.contains(&format!("param.{}", names[0])),
            "{e}"
        );
        assert!(e.contains("state-"), "names the last good state: {e}");
        // The good state is still there and nothing was written for step 2.
        assert_eq!(checkpointing::list_states(dir.path()), [1]);
    }
}
