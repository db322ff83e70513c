//! Stage `eval`: every available model (1-RF, 2-RF, distilled) against held-out target samples.
//!
//! From the same seeded noise: one Euler step, the many-step solver, and an Euler trajectory for
//! straightness. Reported per model: sliced Wasserstein-2 and energy distance to the target at one
//! step and many steps, straightness, one-step vs ODE agreement and NFE — in `report.json` (one object
//! per model), `report.md`, and scatter/trajectory PNGs for 2-D data.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::json;
use slimflow_data::seeded_normal;
use slimflow_metrics::report::{self, ModelReport};
use slimflow_metrics::{agreement, plot, straightness, toy};
use slimflow_models::Model;
use slimflow_sampling::{solve, SolverConfig};

use crate::error::{io_err, Error, Result};
use crate::run_dir::{run_stage, sha256_file, StageCtx, StageOutcome};
use crate::stage::stage_seed;

/// Models evaluated, by display name and producing stage.
pub const MODELS: [(&str, &str); 3] = [
    ("1-RF", "train"),
    ("2-RF", "reflow"),
    ("distilled", "distill"),
];

/// Seeds of the evaluation noise start here (disjoint from pair seeds).
const EVAL_SEED_BASE: u64 = 1 << 48;

/// Runs (or skips) the stage.
pub fn run(ctx: &StageCtx) -> Result<StageOutcome> {
    let cfg = &ctx.config;
    let ec = &cfg.eval;
    let mut found = Vec::new();
    for (name, stage) in MODELS {
        let path = ctx.stage_path(stage).join("model.safetensors");
        let complete = ctx
            .manifest(stage)?
            .is_some_and(|m| m.status == crate::run_dir::Status::Complete);
        if path.exists() && complete {
            let sha = sha256_file(&path)?;
            found.push((name, stage, path, sha));
        }
    }
    if found.is_empty() {
        return Err(Error::MissingInput {
            stage: "eval",
            what: "at least one trained model",
            path: ctx.stage_path("train").join("model.safetensors"),
            producer: "train",
        });
    }
    let shas: Vec<_> = found.iter().map(|f| json!([f.0, f.3])).collect();
    let hash = json!({"seed": cfg.seed, "eval": ec, "target": cfg.data.target, "models": shas});
    run_stage(ctx, "eval", hash, |dir| {
        let mut rng = ChaCha20Rng::seed_from_u64(stage_seed(cfg.seed, 5));
        let reference = cfg
            .data
            .target
            .sample_tensor(&mut rng, ec.samples, ctx.device);
        let seeds: Vec<u64> = (0..ec.samples as u64).map(|i| EVAL_SEED_BASE + i).collect();
        let proj_seed = stage_seed(cfg.seed, 6);
        let mut rows = Vec::new();
        for (name, stage, path, _) in &found {
            let model = Model::load(path, ctx.device)?;
            let shape = model.config().data_shape();
            let z = seeded_normal(&seeds, &shape, ctx.device);
            let field = model.eval_field(None);
            let one = solve(
                &SolverConfig::Euler { steps: 1 },
                &field,
                &z,
                ec.eps,
                1.0,
                false,
            )?;
            let many = solve(&ec.solver, &field, &z, ec.eps, 1.0, false)?;
            let traj = solve(
                &SolverConfig::Euler {
                    steps: ec.straightness_steps,
                },
                &field,
                &z,
                ec.eps,
                1.0,
                true,
            )?;
            let path_points = traj.path.expect("trajectory was captured");
            let flat = |x: &tch::Tensor| x.flatten(1, -1);
            let row = ModelReport {
                model: name.to_string(),
                stage: stage.to_string(),
                params: model.num_params(),
                distance_1step: toy::sliced_wasserstein(
                    &flat(&one.x),
                    &flat(&reference),
                    ec.projections,
                    proj_seed,
                )?,
                distance_many: toy::sliced_wasserstein(
                    &flat(&many.x),
                    &flat(&reference),
                    ec.projections,
                    proj_seed,
                )?,
                energy_1step: toy::energy_distance(&flat(&one.x), &flat(&reference))?,
                energy_many: toy::energy_distance(&flat(&many.x), &flat(&reference))?,
                straightness: straightness(&path_points)?,
                agreement: agreement::mean_squared_distance(&one.x, &many.x)?,
                nfe: many.nfe,
                solver: ec.solver.label(),
            };
            tracing::info!(
                "eval {name}: SW2 1-step {:.4}, ODE {:.4}, straightness {:.4}, NFE {}",
                row.distance_1step,
                row.distance_many,
                row.straightness,
                row.nfe
            );
            if shape == [2] {
                let slug = name.to_lowercase().replace('-', "");
                for (suffix, x) in [("1step", &one.x), ("ode", &many.x)] {
                    let file = format!("samples-{slug}-{suffix}.png");
                    plot::samples_png(&dir.path.join(&file), &reference, x, ec.plot_extent)?;
                    dir.output(&format!("plot_{slug}_{suffix}"), file);
                }
                let file = format!("trajectories-{slug}.png");
                plot::trajectories_png(&dir.path.join(&file), &path_points, 64, ec.plot_extent)?;
                dir.output(&format!("plot_{slug}_trajectories"), file);
            }
            rows.push(row);
        }
        report::write_json(&dir.path.join("report.json"), &rows)?;
        let md_path = dir.path.join("report.md");
        std::fs::write(&md_path, report::to_markdown(&rows)).map_err(io_err(&md_path))?;
        dir.output("report", "report.json");
        Ok(StageOutcome::Completed)
    })
}
