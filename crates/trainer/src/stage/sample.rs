//! `sample`: draw samples from a stage's model (or any model checkpoint) with a chosen solver.

use std::path::PathBuf;

use slimflow_data::{seeded_labels, seeded_source};
use slimflow_metrics::plot;
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
    /// Class labels of a class-conditional model (an unconditional one accepts only
    /// [`SampleClasses::Random`], which gives it none).
    pub classes: SampleClasses,
    /// Output safetensors file (tensors `samples`, `noise` and, for class-conditional models,
    /// `labels`); a PNG beside it (a scatter plot for 2-D data, an 8×8 grid for images, one row per
    /// class with [`SampleClasses::All`]).
    pub out: PathBuf,
}

/// Which classes `sample` draws for a class-conditional model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SampleClasses {
    /// Each sample's label uniform over the classes, from its seed (EDM `generate.py` without
    /// `--class`).
    #[default]
    Random,
    /// Every sample of class K (EDM `generate.py --class K`).
    One(i64),
    /// `count` samples of every class from the same seeds, ordered by class (class k's block is what
    /// `One(k)` gives).
    All,
}

/// Columns of the per-class grid of [`SampleClasses::All`].
const CLASS_GRID_COLUMNS: usize = 8;

/// Refuses an output path that could overwrite a run's files: one inside a stage directory (any
/// directory with a stage manifest, or `<run>/<stage>` of this run) or the model being sampled.
fn check_output(ctx: &StageCtx, out: &std::path::Path, model: &std::path::Path) -> Result<()> {
    let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let real = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| abs(p));
    let refuse = |why: String| {
        Err(Error::Invalid(format!(
            "--out {}: {why}; write the samples outside the run's stage directories",
            out.display()
        )))
    };
    if real(out) == real(model) {
        return refuse(format!("is the model being sampled ({})", model.display()));
    }
    if let Some(dir) = crate::run_dir::stage_dir_containing(out) {
        return refuse(format!(
            "is inside the stage directory {}, whose checkpoints and model it could overwrite",
            dir.display()
        ));
    }
    let out_dir = real(abs(out).parent().unwrap_or(std::path::Path::new("/")));
    for stage in crate::stage::STAGES {
        let dir = real(&ctx.stage_path(stage.name));
        if out_dir.starts_with(&dir) {
            return refuse(format!(
                "is inside the stage directory {} of this run",
                dir.display()
            ));
        }
    }
    Ok(())
}

/// Draws the samples; returns the NFE used. An output path inside a stage directory of a run is
/// refused.
pub fn run(ctx: &StageCtx, req: &SampleRequest) -> Result<usize> {
    let path = req
        .checkpoint
        .clone()
        .unwrap_or_else(|| ctx.stage_path(&req.stage).join("model.safetensors"));
    check_output(ctx, &req.out, &path)?;
    if req.count == 0 {
        return Err(Error::Invalid("--n 0: ask for at least one sample".into()));
    }
    if !path.exists() {
        return Err(Error::BadCheckpoint {
            path,
            reason: "no such model checkpoint".into(),
        });
    }
    let model = ctx.load_model(&path)?;
    let shape = model.config().data_shape();
    let classes = model.config().label_dim();
    match (req.classes, classes) {
        (SampleClasses::One(k), 0) => {
            return Err(Error::Invalid(format!(
                "--class {k}: the model {} is unconditional (label_dim = 0)",
                path.display()
            )))
        }
        (SampleClasses::All, 0) => {
            return Err(Error::Invalid(format!(
                "--classes all: the model {} is unconditional (label_dim = 0)",
                path.display()
            )))
        }
        (SampleClasses::One(k), c) if !(0..c).contains(&k) => {
            return Err(Error::Invalid(format!(
                "--class {k}: the model has {c} classes (labels 0 to {})",
                c - 1
            )))
        }
        _ => {}
    }
    // Samples and their noise are all held until written.
    let per_class = if req.classes == SampleClasses::All {
        classes.max(1)
    } else {
        1
    };
    let numel: f64 = shape.iter().map(|&d| d.max(0) as f64).product();
    let bytes = 2.0 * 4.0 * numel * req.count as f64 * per_class as f64;
    let limit = slimflow_models::size::memory_limit(ctx.device);
    slimflow_models::size::check_bytes(&format!("--n {}", req.count), bytes, limit)
        .map_err(Error::Invalid)?;
    let seeds: Vec<u64> = (0..req.count as u64).map(|i| req.seed + i).collect();
    // (seed, fixed class) per output sample, in output order
    let jobs: Vec<(u64, Option<i64>)> = match req.classes {
        SampleClasses::Random => seeds.iter().map(|&s| (s, None)).collect(),
        SampleClasses::One(k) => seeds.iter().map(|&s| (s, Some(k))).collect(),
        SampleClasses::All => (0..classes)
            .flat_map(|k| seeds.iter().map(move |&s| (s, Some(k))))
            .collect(),
    };
    // On several ranks each solves a contiguous share; the noise is per seed, so the samples do not
    // depend on the split, and rank 0 gathers and writes them.
    let dist = ctx.dist.as_deref();
    let (rank, world) = dist.map_or((0, 1), |d| (d.rank(), d.world()));
    let share = jobs.len().div_ceil(world);
    let all_jobs = jobs.len();
    let jobs = &jobs[(rank * share).min(all_jobs)..((rank + 1) * share).min(all_jobs)];
    // batches bound memory for large sample counts; noise is per-seed, so batching changes nothing
    let chunk = if shape.len() == 1 { 100_000 } else { 256 };
    let (mut zs, mut xs, mut ls) = (Vec::new(), Vec::new(), Vec::new());
    let mut nfe = 0;
    let mut progress = crate::progress::Progress::new("sample", 0, jobs.len() as u64);
    for part in jobs.chunks(chunk) {
        let part_seeds: Vec<u64> = part.iter().map(|&(s, _)| s).collect();
        // noise from the run's source, per seed
        let z = seeded_source(&ctx.config.data.source, &part_seeds, &shape, ctx.device)?;
        // class-conditional models: the requested classes, or uniform labels per seed
        let labels = match (classes, req.classes) {
            (0, _) => None,
            (c, SampleClasses::Random) => Some(seeded_labels(&part_seeds, c as u32, ctx.device)?),
            _ => {
                let fixed: Vec<i64> = part.iter().map(|&(_, k)| k.unwrap_or(0)).collect();
                Some(Tensor::from_slice(&fixed).to_device(ctx.device))
            }
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
    let empty = |kind: tch::Kind, dims: &[i64]| {
        let mut size = vec![0i64];
        size.extend_from_slice(dims);
        Tensor::zeros(size.as_slice(), (kind, ctx.device))
    };
    let cat = |parts: &[Tensor], kind: tch::Kind, dims: &[i64]| {
        if parts.is_empty() {
            empty(kind, dims)
        } else {
            Tensor::cat(parts, 0)
        }
    };
    let (mut z, mut x) = (
        cat(&zs, tch::Kind::Float, &shape),
        cat(&xs, tch::Kind::Float, &shape),
    );
    let mut labels = (classes > 0).then(|| cat(&ls, tch::Kind::Int64, &[]));
    if let Some(d) = dist {
        let gather = |t: &Tensor| -> Result<Tensor> {
            let pad = share as i64 - t.size()[0];
            let padded = if pad > 0 {
                let mut size = t.size();
                size[0] = pad;
                let zeros = Tensor::zeros(size.as_slice(), (t.kind(), t.device()));
                Tensor::cat(&[t.shallow_clone(), zeros], 0)
            } else {
                t.shallow_clone()
            };
            let all = d.gather_rows(&padded)?;
            // rank r's rows are all[r·share ..][.. its own count]
            let parts: Vec<Tensor> = (0..world)
                .map(|r| {
                    let n = (all_jobs.min((r + 1) * share)).saturating_sub(r * share) as i64;
                    all.narrow(0, (r * share) as i64, n)
                })
                .collect();
            Ok(Tensor::cat(&parts, 0))
        };
        z = gather(&z)?;
        x = gather(&x)?;
        labels = labels.as_ref().map(gather).transpose()?;
        if rank != 0 {
            return Ok(nfe);
        }
    }
    let mut tensors = vec![
        ("samples".to_string(), x.shallow_clone()),
        ("noise".to_string(), z),
    ];
    if let Some(l) = labels {
        tensors.push(("labels".to_string(), l));
    }
    slimflow_tensor_io::write(&req.out, &tensors, &Default::default())?;
    let sol_x = x;
    if shape.len() == 3 && req.classes == SampleClasses::All {
        // one row per class: the first CLASS_GRID_COLUMNS samples of each class's block
        let cols = CLASS_GRID_COLUMNS.min(req.count) as i64;
        let n = req.count as i64;
        let idx: Vec<i64> = (0..classes)
            .flat_map(|k| (0..cols).map(move |j| k * n + j))
            .collect();
        let idx = Tensor::from_slice(&idx).to_device(sol_x.device());
        slimflow_metrics::pictures::grid_png(
            &req.out.with_extension("png"),
            &sol_x.index_select(0, &idx),
            cols as usize,
        )?;
    } else if shape.len() == 3 {
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
