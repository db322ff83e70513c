//! `sample`: draw samples from a stage's model (or any model checkpoint) with a chosen solver.

use std::path::PathBuf;

use slimflow_data::{seeded_labels, seeded_source};
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
    /// Class-conditional models: every sample of this class; `None` draws each sample's label
    /// uniformly from its seed. An unconditional model takes no label (an error).
    pub label: Option<i64>,
    /// Output safetensors file (tensors `samples`, `noise` and, for class-conditional models,
    /// `labels`); a PNG beside it (a scatter plot for 2-D data, an 8×8 grid for images).
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
    match (req.label, classes) {
        (Some(k), 0) => {
            return Err(Error::Invalid(format!(
                "--label {k}: the model {} is unconditional (label_dim = 0)",
                path.display()
            )))
        }
        (Some(k), c) if !(0..c).contains(&k) => {
            return Err(Error::Invalid(format!(
                "--label {k}: the model has {c} classes (labels 0 to {})",
                c - 1
            )))
        }
        _ => {}
    }
    let seeds: Vec<u64> = (0..req.count as u64).map(|i| req.seed + i).collect();
    // batches bound memory for large sample counts; noise is per-seed, so batching changes nothing
    let chunk = if shape.len() == 1 { 100_000 } else { 256 };
    let (mut zs, mut xs, mut ls) = (Vec::new(), Vec::new(), Vec::new());
    let mut nfe = 0;
    let mut progress = crate::progress::Progress::new("sample", 0, req.count as u64);
    for part in seeds.chunks(chunk) {
        // noise from the run's source, per seed
        let z = seeded_source(&ctx.config.data.source, part, &shape, ctx.device)?;
        // class-conditional models: the requested class, or uniform labels per seed
        let labels = match (classes, req.label) {
            (0, _) => None,
            (_, Some(k)) => Some(Tensor::full(
                [part.len() as i64],
                k,
                (tch::Kind::Int64, ctx.device),
            )),
            (c, None) => Some(seeded_labels(part, c as u32, ctx.device)?),
        };
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
