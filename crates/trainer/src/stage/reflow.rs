//! Stage `reflow`: a 2-rectified flow trained on the teacher's pairs.
//!
//! Options cover both papers: rfpp's U-shaped time distribution, pseudo-Huber or LPIPS-Huber loss and
//! initialisation from the teacher, and SlimFlow's Annealing Reflow for a randomly initialised slim
//! student — pair noise z' = sqrt(1 − β_k²)·z + β_k·ε with fresh ε, β_k from 1 to 0 over
//! `anneal_steps`, and (z', x1) flipped together with probability ½ (per pair, or the whole batch at
//! once as SlimFlow does).

use serde_json::json;
use slimflow_models::Model;

use rand::Rng;

use crate::config::{Init, PairFlip};
use crate::error::Result;
use crate::run_dir::{run_stage, StageCtx, StageOutcome};
use crate::run_loop::{self, LoopSettings};
use crate::stage::{
    anneal_noise, batch_flips, build, coin_flips, hflip, input, stage_seed, training_outcome,
    PairSource,
};

/// Runs (or resumes, or skips) the stage.
pub fn run(ctx: &StageCtx) -> Result<StageOutcome> {
    let cfg = &ctx.config;
    let rc = &cfg.reflow;
    let (pairs_json, pairs_sha) = input(
        ctx,
        "reflow",
        "generate-pairs",
        "the pair store",
        "pairs/pairs.json",
    )?;
    let teacher = match rc.init {
        Init::Teacher => Some(input(
            ctx,
            "reflow",
            "train",
            "the teacher model",
            "model.safetensors",
        )?),
        Init::Random => None,
    };
    let student_arch = cfg.student_arch().clone();
    let mut hash = json!({
        "seed": cfg.seed, "reflow": rc, "student": student_arch, "pairs": pairs_sha,
        "teacher": teacher.as_ref().map(|t| t.1.clone()),
    });
    // the annealing ε follows the source; N(0, I) runs keep their hash
    if !crate::config::is_standard(&cfg.data.source) {
        hash["source"] = json!(cfg.data.source);
    }
    let source_std = match cfg.data.source {
        slimflow_data::Toy::Gaussian { std } => std,
        _ => 1.0, // annealing is refused for other sources (config check)
    };
    run_stage(ctx, "reflow", hash, |dir| {
        tch::manual_seed(stage_seed(cfg.seed, 2) as i64);
        let mut model = Model::new(&student_arch, ctx.device)?;
        if let Some((path, _)) = &teacher {
            slimflow_tensor_io::load_strict(&mut model.vs, &slimflow_tensor_io::read(path)?, &[])?;
        }
        cfg.performance.prepare(&mut model);
        tracing::info!(
            "reflow: 2-RF student with {} parameters ({:?} init)",
            model.num_params(),
            rc.init
        );
        let pairs = PairSource::open(&pairs_json, ctx.device, &student_arch)?;
        let objective = build(rc.objective().build(ctx.device))?;
        let device = ctx.device;
        let mut batches = |rng: &mut rand_chacha::ChaCha20Rng, step: u64| {
            let batch = pairs.batch(rc.batch_size, rng)?;
            let (batch, beta) = mix_pairs(rc, batch, step, source_std, device, rng);
            Ok((batch, vec![("beta", beta)]))
        };
        let settings = LoopSettings {
            steps: rc.steps,
            optim: &rc.optim,
            checkpoint: &rc.checkpoint,
            seed: stage_seed(cfg.seed, 12),
            label: "reflow",
            dist: ctx.dist.as_deref(),
            grad_reduce: cfg.performance.grad_reduce,
        };
        let end = run_loop::train(&dir.path, &mut model, &settings, &*objective, &mut batches)?;
        dir.output("pairs_sha256", pairs_sha.clone());
        Ok(training_outcome(dir, end))
    })
}

/// A drawn batch of pairs as the stage trains on it: the pair noise annealed by β_step (fresh ε
/// from the source's law), then (z', x1) flipped together as configured; returns the batch and β.
pub(crate) fn mix_pairs(
    rc: &crate::config::ReflowConfig,
    mut batch: slimflow_losses::Batch,
    step: u64,
    source_std: f64,
    device: tch::Device,
    rng: &mut rand_chacha::ChaCha20Rng,
) -> (slimflow_losses::Batch, f64) {
    let n = batch.x0.size()[0] as usize;
    let (keep, beta) = rc.anneal.mix(step, rc.anneal_steps);
    batch.x0 = anneal_noise(&batch.x0, keep, beta, source_std, rng);
    let flip = match rc.hflip {
        PairFlip::None => None,
        PairFlip::PerSample => Some(coin_flips(rng, n, device)),
        PairFlip::PerBatch => Some(batch_flips(rng.gen::<f64>(), n, device)),
    };
    if let Some(flip) = flip {
        batch.x0 = hflip(&batch.x0, &flip);
        batch.x1 = hflip(&batch.x1, &flip);
    }
    (batch, beta)
}

/// The stage's work: the student, its initialisation and loss, and its training samples.
pub(crate) fn work(cfg: &crate::PipelineConfig) -> String {
    let loss = cfg.reflow.objective().describe();
    format!(
        "2-RF {} ({:?} init, {loss}): {}",
        cfg.student_arch().name(),
        cfg.reflow.init,
        crate::plan::images(cfg.reflow.steps, cfg.reflow.batch_size)
    )
}

/// The LPIPS-Huber loss needs the LPIPS weights.
pub(crate) fn preflight(cfg: &crate::PipelineConfig) -> Vec<crate::stage::Need> {
    crate::stage::loss_needs(cfg.reflow.objective().weights())
}
