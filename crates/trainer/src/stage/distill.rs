//! Stage `distill`: one-step distillation of the 2-RF on the pairs, initialised from the 2-RF, with
//! SlimFlow's flow-guided term (frozen 2-RF teacher) when `flow_guided_weight` > 0. The distance is
//! `premetric_weight`·premetric [+ weight·LPIPS] (SlimFlow on CIFAR-10: LPIPS alone).

use serde_json::json;
use slimflow_losses::{Distill, FlowGuided};
use slimflow_models::Model;

use crate::error::Result;
use crate::run_dir::{run_stage, StageCtx, StageOutcome};
use crate::run_loop::{self, LoopSettings};
use crate::stage::{build, input, stage_seed, training_outcome, PairSource, SourceNoise};

/// Runs (or resumes, or skips) the stage.
pub fn run(ctx: &StageCtx) -> Result<StageOutcome> {
    let cfg = &ctx.config;
    let dc = &cfg.distill;
    let (pairs_json, pairs_sha) = input(
        ctx,
        "distill",
        "generate-pairs",
        "the pair store",
        "pairs/pairs.json",
    )?;
    let (rf2_path, rf2_sha) = input(
        ctx,
        "distill",
        "reflow",
        "the 2-RF model",
        "model.safetensors",
    )?;
    let mut hash = json!({"seed": cfg.seed, "distill": dc, "reflow": rf2_sha, "pairs": pairs_sha});
    // the flow-guided term's fresh noise follows the source; N(0, I) runs keep their hash
    if !crate::config::is_standard(&cfg.data.source) {
        hash["source"] = json!(cfg.data.source);
    }
    run_stage(ctx, "distill", hash, |dir| {
        let mut student = ctx.load_model(&rf2_path)?;
        let mut teacher = ctx.load_model(&rf2_path)?;
        teacher.vs.freeze();
        let pairs = PairSource::open(&pairs_json, ctx.device, student.config())?;
        let source = SourceNoise(&cfg.data.source);
        let distance = build(dc.distance().build(ctx.device))?;
        let objective = objective(dc, &teacher, &distance, &source);
        let mut batches = |rng: &mut rand_chacha::ChaCha20Rng, _step: u64| {
            Ok((pairs.batch(dc.batch_size, rng)?, Vec::new()))
        };
        let settings = LoopSettings {
            steps: dc.steps,
            optim: &dc.optim,
            checkpoint: &dc.checkpoint,
            seed: stage_seed(cfg.seed, 13),
            label: "distill",
            dist: ctx.dist.as_deref(),
            grad_reduce: cfg.performance.grad_reduce,
        };
        let end = run_loop::train(&dir.path, &mut student, &settings, &objective, &mut batches)?;
        Ok(training_outcome(dir, end))
    })
}

/// The distillation objective of `dc`: the distance between the student's one step and the
/// pair's end, plus the flow-guided term against the frozen `teacher` when its weight is positive.
pub(crate) fn objective<'a>(
    dc: &crate::config::DistillConfig,
    teacher: &'a Model,
    distance: &'a dyn slimflow_losses::Premetric,
    source: &'a SourceNoise<'a>,
) -> Distill<'a> {
    let guide = (dc.flow_guided_weight > 0.0).then(|| {
        (
            FlowGuided {
                teacher,
                eps: dc.eps,
                t_range: (dc.flow_guided_t[0], dc.flow_guided_t[1]),
                premetric: distance,
                form: dc.form,
                source,
            },
            dc.flow_guided_weight,
        )
    });
    Distill {
        eps: dc.eps,
        form: dc.form,
        premetric: distance,
        guide,
    }
}

/// The stage's work: the distillation's terms and training samples.
pub(crate) fn work(cfg: &crate::PipelineConfig) -> String {
    format!(
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
        crate::plan::images(cfg.distill.steps, cfg.distill.batch_size)
    )
}

/// An LPIPS term needs the LPIPS weights.
pub(crate) fn preflight(cfg: &crate::PipelineConfig) -> Vec<crate::stage::Need> {
    crate::stage::loss_needs(cfg.distill.distance().weights())
}
