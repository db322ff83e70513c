//! What a pipeline run will do: per stage its state in the run directory and the work left, plus
//! the problems that would stop it later (missing dataset, weights or teacher), found up front so a
//! long run does not fail hours in.

use slimflow_sampling::SolverConfig;

use crate::config::{FeatureChoice, PipelineConfig, Target};
use crate::run_dir::{StageCtx, Status};
use crate::stage::STAGES;

/// One stage of the plan.
#[derive(Debug, Clone)]
pub struct PlanRow {
    /// Stage name.
    pub stage: &'static str,
    /// `complete`, `resumes at step N`, `pending`, …
    pub state: String,
    /// The work the stage does in total, in words.
    pub work: String,
}

fn solver_nfe(s: &SolverConfig) -> String {
    match *s {
        SolverConfig::Euler { steps } | SolverConfig::XPred { steps } => steps.to_string(),
        SolverConfig::Heun { steps } => format!("{}–{}", 2 * steps - 1, 2 * steps),
        SolverConfig::Rk45 { .. } => "adaptive (RK45)".into(),
        SolverConfig::Rfpp { nfe, .. } => nfe.to_string(),
        SolverConfig::Edm(e) => e.nfe().to_string(),
    }
}

fn images(steps: u64, batch: usize) -> String {
    let n = steps as f64 * batch as f64;
    format!("{steps} steps × batch {batch} = {:.3e} samples", n)
}

/// The work of every stage of `cfg`, in words.
pub fn work(cfg: &PipelineConfig) -> Vec<(&'static str, String)> {
    let train = match &cfg.teacher {
        Some(t) => format!("import the {} checkpoint {}", t.from, t.file.display()),
        None => format!(
            "1-RF {}: {}",
            cfg.model.name(),
            images(cfg.train.steps, cfg.train.batch_size)
        ),
    };
    let pairs = match &cfg.pairs.import {
        Some(dir) => format!("import reference pairs from {}", dir.display()),
        None => format!(
            "{} pairs × NFE {} ({}, {} storage)",
            cfg.pairs.count,
            solver_nfe(&cfg.pairs.solver),
            cfg.pairs.solver.label(),
            serde_json::to_value(cfg.pairs.dtype)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        ),
    };
    let loss = match cfg.reflow.lpips_huber {
        Some(_) => "LPIPS-Huber".to_string(),
        None => format!("{:?}", cfg.reflow.premetric),
    };
    let reflow = format!(
        "2-RF {} ({:?} init, {loss}): {}",
        cfg.student_arch().name(),
        cfg.reflow.init,
        images(cfg.reflow.steps, cfg.reflow.batch_size)
    );
    let distill = format!(
        "one-step distillation{}{}: {}",
        if cfg.distill.lpips.is_some() {
            " with LPIPS"
        } else {
            ""
        },
        if cfg.distill.flow_guided_weight > 0.0 {
            ", flow-guided"
        } else {
            ""
        },
        images(cfg.distill.steps, cfg.distill.batch_size)
    );
    let eval = format!(
        "3 models × {} samples × (1 + NFE {}) ({})",
        cfg.eval.samples,
        solver_nfe(&cfg.eval.solver),
        cfg.eval.solver.label()
    );
    STAGES
        .into_iter()
        .zip([train, pairs, reflow, distill, eval])
        .collect()
}

/// The plan of `ctx`'s run: stage states and work.
pub fn plan(ctx: &StageCtx) -> Vec<PlanRow> {
    work(&ctx.config)
        .into_iter()
        .map(|(stage, work)| {
            let state = match ctx.manifest(stage) {
                Ok(Some(m)) => match m.status {
                    Status::Complete => "complete".to_string(),
                    status => {
                        let dir = ctx.stage_path(stage).join("checkpoints");
                        match crate::checkpointing::list_states(&dir).last() {
                            Some(step) => format!("resumes at step {step}"),
                            None => format!("{status:?}, restarts").to_lowercase(),
                        }
                    }
                },
                Ok(None) => "pending".to_string(),
                Err(e) => format!("unreadable manifest: {e}"),
            };
            PlanRow { stage, state, work }
        })
        .collect()
}

/// Problems that would stop the run, all at once: a dataset that does not load, LPIPS or Inception
/// weights the config needs but that are not installed, a missing teacher file or pair directory.
/// Stages already complete are not checked.
pub fn preflight(ctx: &StageCtx) -> Vec<String> {
    let cfg = &ctx.config;
    let done =
        |stage: &str| matches!(ctx.manifest(stage), Ok(Some(m)) if m.status == Status::Complete);
    let mut problems = Vec::new();
    let needs_data = !done("train") && cfg.teacher.is_none() || !done("eval");
    match cfg.data.resolve() {
        Err(e) => problems.push(format!("data: {e}")),
        Ok(Target::Images(spec)) if needs_data => {
            let loaded = spec.load();
            if let Ok(set) = &loaded {
                if let Err(e) = crate::stage::check_dataset_labels(set, cfg.model.label_dim()) {
                    problems.push(e.to_string());
                }
            }
            if let Err(e) = loaded {
                let e = e.to_string();
                let hint = if spec.kind == "cifar10" && !e.contains("data fetch cifar10") {
                    "; `slimflow data fetch cifar10` downloads it (then pass --data DIR or set \
                     data.dataset)"
                } else {
                    ""
                };
                problems.push(format!("data.dataset: {e}{hint}"));
            }
        }
        Ok(_) => {}
    }
    if let Some(t) = &cfg.teacher {
        if !done("train") && !t.file.is_file() {
            problems.push(format!(
                "teacher.file {}: no such file (download the reference checkpoint, see the \
                 README's CIFAR-10 section)",
                t.file.display()
            ));
        }
    }
    if let Some(dir) = &cfg.pairs.import {
        let found = dir.join("z0.npy").is_file() || slimflow_data::rfpp::is_rfpp_dir(dir);
        if !done("generate-pairs") && !found {
            problems.push(format!(
                "pairs.import {}: neither z0.npy / z1.npy nor z.zip / samples.zip there",
                dir.display()
            ));
        }
    }
    let lpips = (cfg.reflow.lpips_huber.is_some() && !done("reflow"))
        || (cfg.distill.lpips.is_some() && !done("distill"));
    if lpips {
        if let Err(e) = slimflow_weights::locate(slimflow_weights::Net::LpipsVgg, None) {
            problems.push(format!("LPIPS loss: {e}"));
        }
    }
    let images = matches!(cfg.data.resolve(), Ok(Target::Images(_)));
    if images && cfg.eval.features == FeatureChoice::Inception && !done("eval") {
        if let Err(e) = slimflow_weights::locate(slimflow_weights::Net::Inception, None) {
            problems.push(format!("eval.features = inception: {e}"));
        }
    }
    problems
        .into_iter()
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}
