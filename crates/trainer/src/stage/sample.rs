//! `sample`: draw samples from a stage's model (or any model checkpoint) with a chosen solver.

use std::path::PathBuf;

use slimflow_data::seeded_normal;
use slimflow_metrics::plot;
use slimflow_models::{checkpoint, Model};
use slimflow_sampling::{solve, SolverConfig};
use tch::Tensor;

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
    /// Output safetensors file (tensors `samples` and `noise`); a PNG beside it (a scatter plot for 2-D data, an 8×8 grid for images).
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
    let classes = model.config().label_dim();
    let seeds: Vec<u64> = (0..req.count as u64).map(|i| req.seed + i).collect();
    // batches bound memory for large sample counts; noise is per-seed, so batching changes nothing
    let chunk = if shape.len() == 1 { 100_000 } else { 256 };
    let (mut zs, mut xs, mut ls) = (Vec::new(), Vec::new(), Vec::new());
    let mut nfe = 0;
    let mut progress = crate::progress::Progress::new("sample", 0, req.count as u64);
    for part in seeds.chunks(chunk) {
        let z = seeded_normal(part, &shape, ctx.device);
        // class-conditional models: classes cycle through the seeds
        let labels = (classes > 0).then(|| {
            let l: Vec<i64> = part
                .iter()
                .map(|&s| ((s - req.seed) as i64) % classes)
                .collect();
            Tensor::from_slice(&l).to_device(ctx.device)
        });
        let sol = solve(
            &req.solver,
            &model.eval_field(labels.as_ref()),
            &z,
            ctx.config.eval.eps,
            1.0,
            false,
        )?;
        nfe = nfe.max(sol.nfe);
        zs.push(z);
        xs.push(sol.x);
        ls.extend(labels);
        let done: usize = xs.iter().map(|x| x.size()[0] as usize).sum();
        progress.set(done as u64, || format!("NFE {nfe}"));
    }
    progress.finish();
    let (z, x) = (Tensor::cat(&zs, 0), Tensor::cat(&xs, 0));
    let mut tensors = vec![
        ("samples".to_string(), x.shallow_clone()),
        ("noise".to_string(), z),
    ];
    if !ls.is_empty() {
        tensors.push(("labels".to_string(), Tensor::cat(&ls, 0)));
    }
    checkpoint::write(&req.out, &tensors, &Default::default())?;
    let sol_x = x;
    if shape.len() == 3 {
        let n = sol_x.size()[0].min(64);
        slimflow_metrics::pictures::grid_png(
            &req.out.with_extension("png"),
            &sol_x.narrow(0, 0, n),
            8,
        )?;
    }
    if let (true, Some(target)) = (shape == [2], ctx.config.data.toy()) {
        let reference = target.sample_tensor(
            &mut <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(req.seed),
            req.count,
            ctx.device,
        );
        plot::samples_png(
            &req.out.with_extension("png"),
            &reference,
            &sol_x,
            ctx.config.eval.plot_extent,
        )?;
    }
    Ok(nfe)
}
