//! Stage `train`: the teacher. Either a 1-rectified flow trained on independent (noise, data) pairs
//! (Liu et al. 2023, Alg. 1; (noise, image, label) triples for a class-conditional model), or a
//! pretrained checkpoint imported from a reference implementation (`[teacher]`: EDM, rfpp,
//! RectifiedFlow / SlimFlow).

use std::collections::BTreeMap;

use serde_json::json;
use slimflow_data::loader::{Loader, LoaderConfig, Position};
use slimflow_losses::{normal_tensor, Batch};
use slimflow_models::import::{import, ImportOptions, ImportSource};
use slimflow_models::{checkpoint, Model};

use crate::config::{Target, TeacherConfig};
use crate::error::{Error, Result};
use crate::run_dir::{run_stage, sha256_file, StageCtx, StageDir, StageOutcome};
use crate::run_loop::{self, LoopSettings};
use crate::stage::{build, check_dataset_labels, image_set, stage_seed, training_outcome};

/// Runs (or resumes, or skips) the stage.
pub fn run(ctx: &StageCtx) -> Result<StageOutcome> {
    let cfg = &ctx.config;
    if let Some(teacher) = &cfg.teacher {
        return import_teacher(ctx, teacher);
    }
    let hash = json!({"seed": cfg.seed, "data": cfg.data, "model": cfg.model, "train": cfg.train});
    run_stage(ctx, "train", hash, |dir| {
        tch::manual_seed(stage_seed(cfg.seed, 1) as i64);
        let mut model = Model::new(&cfg.model, ctx.device)?;
        cfg.performance.prepare(&mut model);
        tracing::info!("train: 1-RF with {} parameters", model.num_params());
        let objective = build(cfg.train.objective().build(ctx.device))?;
        let (n, device) = (cfg.train.batch_size, ctx.device);
        let target = cfg.data.resolve().map_err(Error::Invalid)?;
        let images = match &target {
            Target::Images(spec) => {
                let set = image_set(spec, &cfg.model)?;
                check_dataset_labels(&set, cfg.model.label_dim())?;
                Some(set)
            }
            Target::Toy(_) => None,
        };
        // a class-conditional teacher trains on (noise, image, label)
        let conditional = cfg.model.label_dim() > 0;
        let source = &cfg.data.source;
        let mut loader: Option<Loader> = None;
        let loader_cfg = LoaderConfig {
            batch_size: n,
            seed: stage_seed(cfg.seed, 21),
            shuffle: true,
            hflip: cfg.data.hflip,
            prefetch: 2,
        };
        let mut batches = |rng: &mut rand_chacha::ChaCha20Rng, step: u64| {
            let batch = match (&target, &images) {
                (Target::Toy(t), _) => Batch {
                    x0: source.sample_tensor(rng, n, device),
                    x1: t.sample_tensor(rng, n, device),
                    labels: None,
                },
                (Target::Images(_), Some(set)) => {
                    // The data stream is a pure function of its position, so a resumed run
                    // continues exactly where the saved step left it.
                    if loader.is_none() {
                        let start = Position {
                            samples: step * n as u64,
                        };
                        loader = Some(Loader::new(set.clone(), loader_cfg, start)?);
                    }
                    let images = loader.as_mut().expect("created above").next_batch()?;
                    let x1 = slimflow_tensor_io::upload(&images.x, device);
                    let labels = match images.labels {
                        Some(l) if conditional => Some(slimflow_tensor_io::upload(&l, device)),
                        _ => None,
                    };
                    Batch {
                        x0: normal_tensor(rng, &x1.size(), device),
                        x1,
                        labels,
                    }
                }
                (Target::Images(_), None) => unreachable!("image sets are loaded for image runs"),
            };
            Ok((batch, Vec::new()))
        };
        let settings = LoopSettings {
            steps: cfg.train.steps,
            optim: &cfg.train.optim,
            checkpoint: &cfg.train.checkpoint,
            seed: stage_seed(cfg.seed, 11),
            label: "train",
            dist: ctx.dist.as_deref(),
            grad_reduce: cfg.performance.grad_reduce,
        };
        let end = run_loop::train(&dir.path, &mut model, &settings, &*objective, &mut batches)?;
        Ok(training_outcome(dir, end))
    })
}

/// Converts the configured reference checkpoint into the stage's `model.safetensors`.
fn import_teacher(ctx: &StageCtx, teacher: &TeacherConfig) -> Result<StageOutcome> {
    let file = &teacher.file;
    if !file.is_file() {
        return Err(Error::Invalid(format!(
            "teacher.file {}: no such file; {}",
            file.display(),
            crate::plan::teacher_hint(teacher)
        )));
    }
    let source: ImportSource = teacher.from.parse()?;
    let sha = sha256_file(file)?;
    let hash = json!({"teacher": teacher, "sha256": sha, "model": ctx.config.model});
    run_stage(ctx, "train", hash, |dir: &mut StageDir| {
        // on several ranks rank 0 alone converts the checkpoint
        if !dir.writes() {
            return Ok(StageOutcome::Completed);
        }
        let opts = ImportOptions {
            source,
            arch: ctx.config.model.clone(),
            key: teacher.key.clone(),
            allow_partial: false,
        };
        let imported = import(file, &opts, ctx.device)?;
        let model = &imported.model;
        tracing::info!(
            "train: imported {} ({} tensors under `{}`, {} parameters)",
            file.display(),
            imported.tensors_read,
            imported.key,
            model.num_params()
        );
        let mut weights: Vec<(String, tch::Tensor)> = model.vs.variables().into_iter().collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        let meta = BTreeMap::from([
            ("slimflow.source".to_string(), teacher.from.clone()),
            ("slimflow.source_sha256".to_string(), sha.clone()),
        ]);
        checkpoint::write_model(
            &dir.path.join("model.safetensors"),
            model.config(),
            &weights,
            &meta,
        )?;
        dir.output("model", "model.safetensors");
        dir.output("imported_from", file.display().to_string());
        Ok(StageOutcome::Completed)
    })
}

/// The stage's work: the 1-RF's training samples, or the teacher import.
pub(crate) fn work(cfg: &crate::PipelineConfig) -> String {
    match &cfg.teacher {
        Some(t) => format!("import the {} checkpoint {}", t.from, t.file.display()),
        None => format!(
            "1-RF {}: {}",
            cfg.model.name(),
            crate::plan::images(cfg.train.steps, cfg.train.batch_size)
        ),
    }
}

/// A trained teacher needs the dataset; an imported one its file.
pub(crate) fn preflight(cfg: &crate::PipelineConfig) -> Vec<crate::stage::Need> {
    use crate::stage::Need;
    match &cfg.teacher {
        None => vec![Need::Dataset],
        Some(t) if !t.file.is_file() => vec![Need::Problem(format!(
            "teacher.file {}: no such file; {}",
            t.file.display(),
            crate::plan::teacher_hint(t)
        ))],
        Some(_) => Vec::new(),
    }
}
