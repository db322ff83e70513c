//! Stage `eval`: every available model (1-RF, 2-RF, distilled) against the data.
//!
//! From the same seeded noise (drawn per sample from the run's source, `data.source`): one Euler
//! step, the many-step solver, and an Euler trajectory for straightness. Class-conditional models get
//! one label per sample: by default uniform over their classes and drawn from the sample's seed (as
//! EDM's `generate.py` draws them for its FID), or with `eval.class_labels = "balanced"` class i mod K
//! for sample i; the distances are over all of them, and a per-class grid (one row per class, the same noise in each column)
//! sits beside the sample grids. Reported per model: the distance to the data at one step and many steps, straightness,
//! one-step vs ODE agreement (E‖x_1step − x_ODE‖², the direct measure of distillation quality) and NFE
//! — in `report.json` (one object per model), `report.md`, and pictures. The distance is the sliced
//! Wasserstein-2 (plus energy distance) for 2-D data; for images FID with the Inception weights, or
//! the stand-in classifier's Fréchet distance (`FD-standin`, never called FID) without them.

use std::path::PathBuf;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::json;
use slimflow_data::images::DatasetSpec;
use slimflow_data::{seeded_labels, seeded_source};
use slimflow_metrics::features::{choose, FeatureNet, FeatureRequest};
use slimflow_metrics::fid::{FeatureStats, GaussianStats};
use slimflow_metrics::report::{self, ModelReport};
use slimflow_metrics::{
    agreement, pictures, plot, straightness, straightness_rfpp, straightness_slimflow, toy,
};
use slimflow_models::Model;
use slimflow_sampling::{solve, Solution, SolverConfig};
use tch::Tensor;

use crate::config::{ClassLabels, FeatureChoice, Target};
use crate::error::{io_err, Error, Result};
use crate::progress::Progress;
use crate::run_dir::{run_stage, sha256_file, StageCtx, StageDir, StageOutcome};
use crate::stage::{image_set, stage_seed};

/// Seeds of the evaluation noise start here (disjoint from pair seeds).
const EVAL_SEED_BASE: u64 = 1 << 48;

/// A model found in the run.
struct Found {
    name: &'static str,
    stage: &'static str,
    path: PathBuf,
}

/// Runs (or skips) the stage.
pub fn run(ctx: &StageCtx) -> Result<StageOutcome> {
    let cfg = &ctx.config;
    let ec = &cfg.eval;
    let mut found = Vec::new();
    let mut shas = Vec::new();
    for (stage, model) in crate::stage::models() {
        let (name, stage) = (model.label, stage.name);
        let path = ctx.stage_path(stage).join(model.file);
        let complete = ctx
            .manifest(stage)?
            .is_some_and(|m| m.status == crate::run_dir::Status::Complete);
        if path.exists() && complete {
            shas.push(json!([name, sha256_file(&path)?]));
            found.push(Found { name, stage, path });
        }
    }
    // No model yet: the error names the first stage that makes one.
    if let Some((first, model)) = crate::stage::models().next().filter(|_| found.is_empty()) {
        return Err(Error::MissingInput {
            stage: "eval",
            what: "at least one trained model",
            path: ctx.stage_path(first.name).join(model.file),
            producer: first.name,
        });
    }
    let target = cfg.data.resolve().map_err(Error::Invalid)?;
    let hash = json!({"seed": cfg.seed, "eval": ec, "data": cfg.data, "models": shas});
    run_stage(ctx, "eval", hash, |dir| {
        let rows = match &target {
            // toy evaluation is quick: rank 0 does it alone
            Target::Toy(_) if !dir.writes() => return Ok(StageOutcome::Completed),
            Target::Toy(t) => toy_rows(ctx, dir, t, &found)?,
            Target::Images(spec) => image_rows(ctx, dir, spec, &found)?,
        };
        if !dir.writes() {
            return Ok(StageOutcome::Completed);
        }
        report::write_json(&dir.path.join("report.json"), &rows)?;
        let md_path = dir.path.join("report.md");
        let mut md = report::to_markdown(&rows);
        if let Some(note) = dir_note(dir) {
            md.push_str(&format!("\n{note}\n"));
        }
        std::fs::write(&md_path, md).map_err(io_err(&md_path))?;
        dir.output("report", "report.json");
        Ok(StageOutcome::Completed)
    })
}

/// The evaluation inputs of `seeds` (evaluation seeds, `EVAL_SEED_BASE + i` for sample i) for
/// `model`: noise from the run's source and, for a class-conditional model, labels as
/// `eval.class_labels` says, each a function of its seed alone.
fn inputs(ctx: &StageCtx, model: &Model, seeds: &[u64]) -> Result<(Tensor, Option<Tensor>)> {
    let config = model.config();
    let z = seeded_source(
        &ctx.config.data.source,
        seeds,
        &config.data_shape(),
        ctx.device,
    )?;
    let classes = config.label_dim();
    let labels = (classes > 0)
        .then(|| {
            eval_labels(
                ctx.config.eval.class_labels.unwrap_or_default(),
                seeds,
                classes,
                ctx.device,
            )
        })
        .transpose()?;
    Ok((z, labels))
}

/// The classes of evaluation samples `seeds` out of `classes`: uniform per seed, or sample i
/// (seed `EVAL_SEED_BASE + i`) of class i mod K.
fn eval_labels(
    how: ClassLabels,
    seeds: &[u64],
    classes: i64,
    device: tch::Device,
) -> Result<Tensor> {
    match how {
        ClassLabels::Random => Ok(seeded_labels(seeds, classes as u32, device)?),
        ClassLabels::Balanced => {
            let labels: Vec<i64> = seeds
                .iter()
                .map(|s| (s.wrapping_sub(EVAL_SEED_BASE) % classes as u64) as i64)
                .collect();
            Ok(Tensor::from_slice(&labels).to_device(device))
        }
    }
}

/// The label rule recorded in the report rows of `model` (none for an unconditional one).
fn label_rule(ctx: &StageCtx, model: &Model) -> Option<String> {
    (model.config().label_dim() > 0).then(|| {
        ctx.config
            .eval
            .class_labels
            .unwrap_or_default()
            .name()
            .to_string()
    })
}

fn dir_note(dir: &StageDir) -> Option<String> {
    std::fs::read_to_string(dir.path.join("metric.txt")).ok()
}

fn slug(name: &str) -> String {
    name.to_lowercase().replace('-', "")
}

/// 2-D data: sliced Wasserstein-2 and energy distance against held-out target samples, scatter and
/// trajectory plots.
fn toy_rows(
    ctx: &StageCtx,
    dir: &mut StageDir,
    target: &slimflow_data::Toy,
    found: &[Found],
) -> Result<Vec<ModelReport>> {
    let (cfg, ec) = (&ctx.config, &ctx.config.eval);
    let mut rng = ChaCha20Rng::seed_from_u64(stage_seed(cfg.seed, 5));
    let reference = target.sample_tensor(&mut rng, ec.samples, ctx.device);
    let seeds: Vec<u64> = (0..ec.samples as u64).map(|i| EVAL_SEED_BASE + i).collect();
    let proj_seed = stage_seed(cfg.seed, 6);
    let mut rows = Vec::new();
    for f in found {
        let model = ctx.load_model(&f.path)?;
        let shape = model.config().data_shape();
        let (z, labels) = inputs(ctx, &model, &seeds)?;
        let field = model.eval_field(labels.as_ref());
        let (one, many) = one_and_many(&field, &z, ec)?;
        let path_points = trajectory(&field, &z, ec)?;
        // the samples themselves, with the noise they started from
        let file = format!("samples-{}.safetensors", slug(f.name));
        let mut tensors = vec![
            ("noise".to_string(), z.shallow_clone()),
            ("samples_1step".to_string(), one.x.shallow_clone()),
            ("samples_ode".to_string(), many.x.shallow_clone()),
        ];
        tensors.extend(labels.map(|l| ("labels".to_string(), l)));
        slimflow_tensor_io::write(&dir.path.join(&file), &tensors, &Default::default())?;
        dir.output(&format!("samples_{}", slug(f.name)), file);
        let flat = |x: &Tensor| x.flatten(1, -1);
        let sw = |x: &Tensor| {
            toy::sliced_wasserstein(&flat(x), &flat(&reference), ec.projections, proj_seed)
        };
        let mut row = ModelReport {
            model: f.name.to_string(),
            stage: f.stage.to_string(),
            params: model.num_params(),
            metric: "SW2".into(),
            distance_1step: sw(&one.x)?,
            distance_many: sw(&many.x)?,
            energy_1step: Some(toy::energy_distance(&flat(&one.x), &flat(&reference))?),
            energy_many: Some(toy::energy_distance(&flat(&many.x), &flat(&reference))?),
            straightness: straightness(&path_points)?,
            straightness_rfpp: Some(straightness_rfpp(&path_points)?),
            straightness_slimflow: Some(straightness_slimflow(&path_points)?),
            agreement: agreement::mean_squared_distance(&one.x, &many.x)?,
            nfe: many.nfe,
            solver: ec.solver.label(),
            pictures: Vec::new(),
            class_labels: label_rule(ctx, &model),
        };
        if shape == [2] {
            let s = slug(f.name);
            for (suffix, x) in [("1step", &one.x), ("ode", &many.x)] {
                let file = format!("samples-{s}-{suffix}.png");
                plot::samples_png(&dir.path.join(&file), &reference, x, ec.plot_extent)?;
                dir.output(&format!("plot_{s}_{suffix}"), file.clone());
                row.pictures.push(file);
            }
            let file = format!("trajectories-{s}.png");
            plot::trajectories_png(&dir.path.join(&file), &path_points, 64, ec.plot_extent)?;
            dir.output(&format!("plot_{s}_trajectories"), file.clone());
            row.pictures.push(file);
        }
        log_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// Samples per panel of `comparison.png`, in rows of [`COMPARISON_COLUMNS`].
const COMPARISON_SAMPLES: usize = 16;
const COMPARISON_COLUMNS: usize = 4;

/// The one-step and ODE panels of one model, captioned with its name, size, NFE and metric.
fn comparison_panels(row: &ModelReport, one: &Tensor, many: &Tensor) -> [pictures::Panel; 2] {
    let size = format_params(row.params);
    let panel = |how: &str, nfe: usize, distance: f64, x: &Tensor| pictures::Panel {
        caption: vec![
            format!("{} {how}", row.model),
            format!("{size} params · NFE {nfe}"),
            format!("{} {distance:.1}", row.metric),
        ],
        images: x.shallow_clone(),
    };
    [
        panel("1 step", 1, row.distance_1step, one),
        panel("ODE", row.nfe, row.distance_many, many),
    ]
}

/// 15_700_000 → "15.7M", 820_000 → "820K".
fn format_params(n: i64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.0}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// One Euler step and the many-step solve from the same noise `z`.
fn one_and_many(
    field: &dyn slimflow_sampling::Velocity,
    z: &Tensor,
    ec: &crate::config::EvalConfig,
) -> Result<(Solution, Solution)> {
    let one = solve(
        &SolverConfig::Euler { steps: 1 },
        field,
        z,
        ec.eps,
        1.0,
        false,
    )?;
    let many = solve(&ec.solver, field, z, ec.eps, 1.0, false)?;
    Ok((one, many))
}

/// The Euler trajectory from `z` on which straightness is measured.
fn trajectory(
    field: &dyn slimflow_sampling::Velocity,
    z: &Tensor,
    ec: &crate::config::EvalConfig,
) -> Result<Vec<(f64, Tensor)>> {
    let euler = SolverConfig::Euler {
        steps: ec.straightness_steps,
    };
    let traj = solve(&euler, field, z, ec.eps, 1.0, true)?;
    Ok(traj.path.expect("trajectory was captured"))
}

fn log_row(row: &ModelReport) {
    tracing::info!(
        "eval {}: {} 1-step {:.4}, ODE {:.4}, straightness {:.4}, NFE {}",
        row.model,
        row.metric,
        row.distance_1step,
        row.distance_many,
        row.straightness,
        row.nfe
    );
}

/// The feature network chosen by `eval.features`.
fn feature_net(ctx: &StageCtx, spec: &str) -> Result<FeatureNet> {
    let ec = &ctx.config.eval;
    let cache = slimflow_weights::default_dir();
    let request = FeatureRequest {
        choice: ec.features,
        inception_weights: None,
        standin_spec: spec,
        standin_steps: ec.standin_steps,
        cache_dir: &cache,
    };
    let chosen = choose(&request, ctx.device).map_err(|e| match e {
        slimflow_metrics::Error::NotInstalled(e) => {
            Error::Invalid(format!("eval.features = inception: {e}"))
        }
        e => e.into(),
    })?;
    if chosen.inception_missing {
        tracing::info!(
            "eval: no Inception weights (`slimflow weights fetch inception`); using the \
             stand-in classifier, reported as FD-standin"
        );
    }
    if let Some(acc) = chosen.standin_accuracy {
        tracing::info!(
            "eval: trained the stand-in classifier on {spec}: held-out accuracy {:.1}%",
            acc * 100.0
        );
    }
    Ok(chosen.net)
}

/// Images as they would be saved: clamped to [-1, 1] and quantised to 8 bits.
fn as_saved(x: &Tensor) -> Tensor {
    ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0
}

/// Images: Fréchet distance of `eval.samples` samples per model against the dataset (or the given
/// reference statistics), 8×8 grids of one-step and ODE samples and a trajectory strip. On several
/// ranks each samples every W-th batch of seeds and the statistics are summed; rank 0 alone writes
/// the pictures and returns the rows (the others return none).
fn image_rows(
    ctx: &StageCtx,
    dir: &mut StageDir,
    spec: &DatasetSpec,
    found: &[Found],
) -> Result<Vec<ModelReport>> {
    let ec = &ctx.config.eval;
    let device = ctx.device;
    let spec_text = ctx.config.data.dataset.clone().unwrap_or_default();
    let net = feature_net(ctx, &spec_text)?;
    let seeds: Vec<u64> = (0..ec.samples as u64).map(|i| EVAL_SEED_BASE + i).collect();
    if !dir.writes() {
        for f in found {
            let model = ctx.load_model(&f.path)?;
            sampled_stats(ctx, &net, &model, &seeds, |_, _, _, _| Ok(()))?;
        }
        return Ok(Vec::new());
    }
    // With published statistics only the data grid needs the dataset: read 64 images, not all.
    let from_reference = ec.reference.is_some() && matches!(net, FeatureNet::Inception(_));
    let set = if from_reference {
        image_set(&spec.at_most(64), &ctx.config.model)?
    } else {
        image_set(spec, &ctx.config.model)?
    };
    let n_grid = set.len().min(64);
    let grid_idx: Vec<usize> = (0..n_grid).collect();
    pictures::grid_png(&dir.path.join("samples-data.png"), &set.batch(&grid_idx), 8)?;
    dir.output("grid_data", "samples-data.png");
    let reference = match (&ec.reference, &net) {
        (Some(p), FeatureNet::Inception(_)) => {
            let path = slimflow_weights::resolve_reference(p, None)
                .map_err(|e| Error::Invalid(format!("eval.reference: {e}")))?;
            GaussianStats::load_npz(&path)?
        }
        _ => net.stats_of_set(&set, ec.batch_size, device)?,
    };
    let note = net.describe();
    std::fs::write(dir.path.join("metric.txt"), &note).map_err(io_err(&dir.path))?;
    dir.output("metric", net.metric_name().to_string());
    let mut rows = Vec::new();
    let mut panels = vec![pictures::Panel {
        caption: vec!["data".into()],
        images: set.batch(&grid_idx[..n_grid.min(COMPARISON_SAMPLES)]),
    }];
    for f in found {
        let model = ctx.load_model(&f.path)?;
        let mut progress = Progress::new(&format!("eval {}", f.name), 0, seeds.len() as u64);
        let s = slug(f.name);
        let mut firsts = Vec::new();
        let (one_stats, many_stats, [agree, nfe_total, batches]) =
            sampled_stats(ctx, &net, &model, &seeds, |i, done, one, many| {
                if i == 0 {
                    let k = one.x.size()[0].min(64);
                    for (suffix, x) in [("1step", &one.x), ("ode", &many.x)] {
                        let file = format!("samples-{s}-{suffix}.png");
                        pictures::grid_png(&dir.path.join(&file), &x.narrow(0, 0, k), 8)?;
                        dir.output(&format!("grid_{s}_{suffix}"), file);
                        let c = k.min(COMPARISON_SAMPLES as i64);
                        firsts.push(x.narrow(0, 0, c).to_device(tch::Device::Cpu));
                    }
                }
                progress.set(done as u64, || format!("NFE {}", many.nfe));
                Ok(())
            })?;
        progress.finish();
        let mut pictures = vec![
            format!("samples-{s}-1step.png"),
            format!("samples-{s}-ode.png"),
        ];
        pictures.extend(class_grids(ctx, dir, &model, &s, &seeds)?);
        let m = ec.straightness_samples.clamp(1, seeds.len());
        let (z, labels) = inputs(ctx, &model, &seeds[..m])?;
        let field = model.eval_field(labels.as_ref());
        let path_points = trajectory(&field, &z, ec)?;
        let strip = format!("trajectory-{s}.png");
        let states: Vec<Tensor> = path_points.iter().map(|(_, x)| x.shallow_clone()).collect();
        pictures::trajectory_strip_png(&dir.path.join(&strip), &states, 8, 11)?;
        dir.output(&format!("trajectory_{s}"), strip.clone());
        let fd = |stats: &FeatureStats| -> Result<f64> {
            Ok(GaussianStats::from_features(stats)?.frechet_distance(&reference)?)
        };
        let row = ModelReport {
            model: f.name.to_string(),
            stage: f.stage.to_string(),
            params: model.num_params(),
            metric: net.metric_name().to_string(),
            distance_1step: fd(&one_stats)?,
            distance_many: fd(&many_stats)?,
            energy_1step: None,
            energy_many: None,
            straightness: straightness(&path_points)?,
            straightness_rfpp: Some(straightness_rfpp(&path_points)?),
            straightness_slimflow: Some(straightness_slimflow(&path_points)?),
            agreement: agree / seeds.len() as f64,
            nfe: (nfe_total as usize).div_ceil((batches as usize).max(1)),
            solver: ec.solver.label(),
            pictures: {
                pictures.push(strip);
                pictures
            },
            class_labels: label_rule(ctx, &model),
        };
        log_row(&row);
        if let [one, many] = &firsts[..] {
            panels.extend(comparison_panels(&row, one, many));
        }
        rows.push(row);
    }
    pictures::comparison_png(
        &dir.path.join("comparison.png"),
        &panels,
        COMPARISON_COLUMNS,
    )?;
    dir.output("comparison", "comparison.png");
    Ok(rows)
}

/// This rank's batches of `seeds` for `model` (every W-th batch of `eval.batch_size` on rank r of
/// W) through [`sample_chunk`], calling `seen(batch index, seeds up to its end, one-step, ODE)`
/// after each; the statistics summed over the ranks: one-step and ODE features, and [agreement ×
/// samples, NFE summed over batches, batches].
fn sampled_stats(
    ctx: &StageCtx,
    net: &FeatureNet,
    model: &Model,
    seeds: &[u64],
    mut seen: impl FnMut(usize, usize, &Solution, &Solution) -> Result<()>,
) -> Result<(FeatureStats, FeatureStats, [f64; 3])> {
    let dist = ctx.dist.as_deref();
    let (rank, world) = dist.map_or((0, 1), |d| (d.rank(), d.world()));
    let mut one_stats = FeatureStats::new(net.dim());
    let mut many_stats = FeatureStats::new(net.dim());
    let mut totals = [0.0; 3];
    let mut done = 0usize;
    for (i, chunk) in seeds.chunks(ctx.config.eval.batch_size.max(1)).enumerate() {
        done += chunk.len();
        if i % world != rank {
            continue;
        }
        let (one, many) = sample_chunk(
            ctx,
            net,
            model,
            chunk,
            &mut one_stats,
            &mut many_stats,
            &mut totals,
        )?;
        seen(i, done, &one, &many)?;
    }
    if let Some(d) = dist {
        one_stats = d.sum_stats(&one_stats)?;
        many_stats = d.sum_stats(&many_stats)?;
        let summed = d.sum(&totals)?;
        totals.copy_from_slice(&summed);
    }
    Ok((one_stats, many_stats, totals))
}

/// Samples one batch of evaluation seeds with `model` (one Euler step and the solver), adds the
/// features to the statistics and [agreement × samples, NFE, 1] to `totals`; returns the samples.
#[allow(clippy::too_many_arguments)]
fn sample_chunk(
    ctx: &StageCtx,
    net: &FeatureNet,
    model: &Model,
    chunk: &[u64],
    one_stats: &mut FeatureStats,
    many_stats: &mut FeatureStats,
    totals: &mut [f64; 3],
) -> Result<(Solution, Solution)> {
    let (z, labels) = inputs(ctx, model, chunk)?;
    let field = model.eval_field(labels.as_ref());
    let (one, many) = one_and_many(&field, &z, &ctx.config.eval)?;
    one_stats.add(&net.features(&as_saved(&one.x))?)?;
    many_stats.add(&net.features(&as_saved(&many.x))?)?;
    totals[0] += agreement::mean_squared_distance(&one.x, &many.x)? * chunk.len() as f64;
    totals[1] += many.nfe as f64;
    totals[2] += 1.0;
    Ok((one, many))
}

/// Columns of the per-class grids.
const CLASS_GRID_COLUMNS: usize = 8;

/// For a class-conditional image model: `samples-<model>-1step-classes.png` and
/// `samples-<model>-ode-classes.png`, one row per class, column j starting from the noise of the
/// j-th evaluation seed in every row (so a column shows what the label changes). Returns the
/// pictures written (none for an unconditional model).
fn class_grids(
    ctx: &StageCtx,
    dir: &mut StageDir,
    model: &Model,
    s: &str,
    seeds: &[u64],
) -> Result<Vec<String>> {
    let classes = model.config().label_dim();
    if classes <= 0 {
        return Ok(Vec::new());
    }
    let cols = CLASS_GRID_COLUMNS.min(seeds.len());
    let (z, _) = inputs(ctx, model, &seeds[..cols])?;
    let z = z.repeat([classes, 1, 1, 1]);
    let labels = Tensor::arange(classes, (tch::Kind::Int64, ctx.device))
        .repeat_interleave_self_int(cols as i64, 0, None);
    let field = model.eval_field(Some(&labels));
    let (one, many) = one_and_many(&field, &z, &ctx.config.eval)?;
    let mut written = Vec::new();
    for (suffix, x) in [("1step", &one.x), ("ode", &many.x)] {
        let file = format!("samples-{s}-{suffix}-classes.png");
        pictures::grid_png(&dir.path.join(&file), x, cols)?;
        dir.output(&format!("grid_{s}_{suffix}_classes"), file.clone());
        written.push(file);
    }
    Ok(written)
}

/// The stage's work: every model's samples at one step and along the solver.
pub(crate) fn work(cfg: &crate::PipelineConfig) -> String {
    format!(
        "{} models × {} samples × (1 + NFE {}) ({})",
        crate::stage::models().count(),
        cfg.eval.samples,
        crate::plan::solver_nfe(&cfg.eval.solver),
        cfg.eval.solver.label()
    )
}

/// The dataset, and for images the Inception weights and reference statistics the config names.
pub(crate) fn preflight(cfg: &crate::PipelineConfig) -> Vec<crate::stage::Need> {
    use crate::stage::Need;
    let mut needs = vec![Need::Dataset];
    if !matches!(cfg.data.resolve(), Ok(Target::Images(_))) {
        return needs;
    }
    if cfg.eval.features == FeatureChoice::Inception {
        needs.push(Need::Weights(
            slimflow_weights::Net::Inception,
            "eval.features = inception",
        ));
    }
    if let Some(r) = &cfg.eval.reference {
        match slimflow_weights::resolve_reference(r, None) {
            Err(e) => needs.push(Need::Problem(format!("eval.reference: {e}"))),
            Ok(p) if !p.is_file() => needs.push(Need::Problem(format!(
                "eval.reference {}: no such file; {}",
                p.display(),
                crate::plan::reference_hint(&p, cfg.data.dataset.as_deref().unwrap_or("SPEC"))
            ))),
            Ok(_) => {}
        }
    }
    needs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_labels_cycle_through_the_classes_by_sample_index() {
        let seeds: Vec<u64> = (0..12).map(|i| EVAL_SEED_BASE + i).collect();
        let l = eval_labels(ClassLabels::Balanced, &seeds, 4, tch::Device::Cpu).unwrap();
        let l = Vec::<i64>::try_from(&l).unwrap();
        assert_eq!(l, vec![0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]);
        // a batch later in the run continues the cycle from its own indices
        let l = eval_labels(ClassLabels::Balanced, &seeds[5..7], 4, tch::Device::Cpu).unwrap();
        assert_eq!(Vec::<i64>::try_from(&l).unwrap(), vec![1, 2]);
        // random labels are the per-seed draws of `seeded_labels`
        let r = eval_labels(ClassLabels::Random, &seeds, 4, tch::Device::Cpu).unwrap();
        assert!(r.equal(&seeded_labels(&seeds, 4, tch::Device::Cpu).unwrap()));
    }
}
