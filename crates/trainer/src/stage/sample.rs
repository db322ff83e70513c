//! `sample`: draw samples from a stage's model (or any model checkpoint) with a chosen solver.

use std::path::PathBuf;

use slimflow_data::seeded_normal;
use slimflow_metrics::plot;
use slimflow_models::{checkpoint, Model};
use slimflow_sampling::{solve, SolverConfig};

use crate::error::{Error, Result};
use crate::run_dir::StageCtx;

/// What to sample.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    /// A model checkpoint; when `None`, `<run>/<stage>/model.safetensors`.
    pub checkpoint: Option<PathBuf>,
    /// Stage whose model to use when no checkpoint is given.
    pub stage: String,
    /// Number of samples.
    pub count: usize,
    /// Solver.
    pub solver: SolverConfig,
    /// First noise seed (sample i uses `seed + i`).
    pub seed: u64,
    /// Output safetensors file (tensors `samples` and `noise`); a PNG beside it for 2-D data.
    pub out: PathBuf,
}

/// Draws the samples; returns the NFE used.
pub fn run(ctx: &StageCtx, req: &SampleRequest) -> Result<usize> {
    let path = req
        .checkpoint
        .clone()
        .unwrap_or_else(|| ctx.stage_path(&req.stage).join("model.safetensors"));
    if !path.exists() {
        return Err(Error::BadCheckpoint {
            path,
            reason: "no such model checkpoint".into(),
        });
    }
    let model = Model::load(&path, ctx.device)?;
    let shape = model.config().data_shape();
    let seeds: Vec<u64> = (0..req.count as u64).map(|i| req.seed + i).collect();
    let z = seeded_normal(&seeds, &shape, ctx.device);
    let sol = solve(
        &req.solver,
        &model.eval_field(None),
        &z,
        ctx.config.eval.eps,
        1.0,
        false,
    )?;
    checkpoint::write(
        &req.out,
        &[
            ("samples".to_string(), sol.x.shallow_clone()),
            ("noise".to_string(), z),
        ],
        &Default::default(),
    )?;
    if shape == [2] {
        let reference = ctx.config.data.target.sample_tensor(
            &mut <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(req.seed),
            req.count,
            ctx.device,
        );
        plot::samples_png(
            &req.out.with_extension("png"),
            &reference,
            &sol.x,
            ctx.config.eval.plot_extent,
        )?;
    }
    Ok(sol.nfe)
}
