//! Stage `train`: a 1-rectified flow on independent (source, target) pairs (Liu et al. 2023, Alg. 1).

use serde_json::json;
use slimflow_losses::{Batch, Rf};
use slimflow_models::Model;

use crate::error::Result;
use crate::run_dir::{run_stage, StageCtx, StageOutcome};
use crate::run_loop::{self, LoopSettings};
use crate::stage::{stage_seed, training_outcome};

/// Runs (or resumes, or skips) the stage.
pub fn run(ctx: &StageCtx) -> Result<StageOutcome> {
    let cfg = &ctx.config;
    let hash = json!({"seed": cfg.seed, "data": cfg.data, "model": cfg.model, "train": cfg.train});
    run_stage(ctx, "train", hash, |dir| {
        tch::manual_seed(stage_seed(cfg.seed, 1) as i64);
        let mut model = Model::new(&cfg.model, ctx.device)?;
        tracing::info!("train: 1-RF with {} parameters", model.num_params());
        let objective = Rf {
            time: cfg.train.time,
            premetric: cfg.train.premetric,
        };
        let (source, target, n, device) = (
            &cfg.data.source,
            &cfg.data.target,
            cfg.train.batch_size,
            ctx.device,
        );
        let mut batches = |rng: &mut rand_chacha::ChaCha20Rng, _step: u64| {
            let batch = Batch {
                x0: source.sample_tensor(rng, n, device),
                x1: target.sample_tensor(rng, n, device),
                labels: None,
            };
            Ok((batch, Vec::new()))
        };
        let settings = LoopSettings {
            steps: cfg.train.steps,
            optim: &cfg.train.optim,
            checkpoint: &cfg.train.checkpoint,
            seed: stage_seed(cfg.seed, 11),
            label: "train",
        };
        let end = run_loop::train(&dir.path, &mut model, &settings, &objective, &mut batches)?;
        Ok(training_outcome(dir, end))
    })
}
