//! Stage `generate-pairs`: z from the source (`data.source`, N(0, I) by default) drawn per pair from
//! its seed, x1 = ODE solve of the teacher from eps to 1 (reference: RK45, rtol = atol = 1e-5),
//! written shard by shard so that an interrupted or killed run resumes at the first missing shard.
//! An interrupt request stops within one batch (the unfinished shard is dropped, finished ones are
//! kept). Each run first checks the shards on disk against their SHA-256: damaged ones are removed
//! and regenerated (deterministically, from their seeds), even in a stage marked complete.
//! `from_data` integrates real samples backwards instead, and `import` takes reference pairs
//! (SlimFlow's `z0.npy` / `z1.npy`, rfpp's `z.zip` / `samples.zip`) as they are.
//!
//! A class-conditional teacher stores a label with each pair and solves with it: `pairs.labels =
//! "random"` draws it uniformly from the pair's seed (its own stream, so the store is the same at
//! any shard layout or writer count), `"dataset"` takes the label of the pair's data sample.

use serde_json::json;
use slimflow_data::{seeded_labels, seeded_source, PairStore, PairStoreManifest};
use slimflow_sampling::solve;
use tch::Tensor;

use crate::config::{PairDirection, PairLabels, Target};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::run_dir::{run_stage, run_stage_checked, sha256_file, StageCtx, StageOutcome};
use crate::stage::{check_dataset_labels, check_pair_labels, image_set, input};

/// One target sample per seed, each from its own generator (so pair j is the same at any batch or
/// shard layout); images: image (seed − seed_base) mod N of the dataset.
fn seeded_data(data: &DataSource, seeds: &[u64], seed_base: u64, device: tch::Device) -> Tensor {
    use rand::SeedableRng;
    let target = match data {
        DataSource::Toy(t) => t,
        DataSource::Images(set) => {
            let idx: Vec<usize> = seeds
                .iter()
                .map(|s| (s.wrapping_sub(seed_base) % set.len() as u64) as usize)
                .collect();
            return set.batch(&idx).to_device(device);
        }
    };
    let flat: Vec<f32> = seeds
        .iter()
        .flat_map(|&s| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s);
            target.sample(&mut rng, 1)
        })
        .collect();
    Tensor::from_slice(&flat)
        .reshape([seeds.len() as i64, -1])
        .to_device(device)
}

/// The dataset labels of the samples [`seeded_data`] picks for `seeds` ([n] int64).
fn seeded_data_labels(
    set: &slimflow_data::images::ImageSet,
    seeds: &[u64],
    seed_base: u64,
    device: tch::Device,
) -> Result<Tensor> {
    let labels = set.labels.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "pairs.labels = \"dataset\": data.dataset `{}` has no class labels",
            set.name
        ))
    })?;
    let picked: Vec<i64> = seeds
        .iter()
        .map(|s| i64::from(labels[(s.wrapping_sub(seed_base) % set.len() as u64) as usize]))
        .collect();
    Ok(Tensor::from_slice(&picked).to_device(device))
}

enum DataSource<'a> {
    Toy(&'a slimflow_data::Toy),
    Images(std::sync::Arc<slimflow_data::images::ImageSet>),
}

/// Runs (or resumes, or skips) the stage.
pub fn run(ctx: &StageCtx) -> Result<StageOutcome> {
    let cfg = &ctx.config.pairs;
    if let Some(dir) = &cfg.import {
        return import(ctx, dir);
    }
    let (teacher_path, teacher_sha) = input(
        ctx,
        "generate-pairs",
        "train",
        "the teacher (1-RF) model",
        "model.safetensors",
    )?;
    let source = &ctx.config.data.source;
    let mut hash = json!({"pairs": cfg, "teacher": teacher_sha});
    // the noise follows the source; N(0, I) runs keep their hash
    if !crate::config::is_standard(source) {
        hash["source"] = json!(source);
    }
    run_stage_checked(ctx, "generate-pairs", hash, remove_damaged, |dir| {
        // (the precision cast keeps the channels-last layout)
        let mut teacher = ctx.load_model(&teacher_path)?;
        teacher.set_precision(cfg.precision);
        let shape = teacher.config().data_shape();
        let classes = teacher.config().label_dim();
        let label_source = cfg.label_source(classes);
        let manifest = PairStoreManifest::new(
            cfg.count,
            cfg.shard_size,
            shape.clone(),
            cfg.seed_base,
            teacher_sha.clone(),
            serde_json::to_string(&cfg.solver).expect("solver configs serialise"),
        )?;
        let manifest = manifest
            .with_dtype(cfg.dtype)
            .with_classes(classes.max(0) as u32);
        // in a data-parallel job rank 0 creates (or checks) the store before the others open it
        let dist = ctx.dist.as_deref();
        let store = match dist {
            Some(d) if !dir.writes() => {
                d.barrier("pair store created")?;
                PairStore::create_or_resume(&dir.path.join("pairs"), manifest)?
            }
            Some(d) => {
                let store = PairStore::create_or_resume(&dir.path.join("pairs"), manifest)?;
                d.barrier("pair store created")?;
                store
            }
            None => PairStore::create_or_resume(&dir.path.join("pairs"), manifest)?,
        };
        let mine = store.shards_for(ctx.rank, ctx.world)?;
        let missing: Vec<usize> = store
            .missing_shards()
            .into_iter()
            .filter(|i| mine.contains(i))
            .collect();
        let done: u64 = (0..store.num_shards())
            .filter(|i| !missing.contains(i))
            .map(|i| store.shard_range(i).end - store.shard_range(i).start)
            .sum();
        let mut progress = Progress::new("generate-pairs", done, cfg.count);
        let mut produced = done;
        let data = match cfg.direction {
            PairDirection::FromNoise => None,
            PairDirection::FromData => {
                Some(match ctx.config.data.resolve().map_err(Error::Invalid)? {
                    Target::Toy(t) => DataSource::Toy(t),
                    Target::Images(spec) => DataSource::Images(image_set(&spec, teacher.config())?),
                })
            }
        };
        match (&data, label_source) {
            (Some(DataSource::Images(set)), Some(PairLabels::Dataset)) => {
                check_dataset_labels(set, classes)?
            }
            (_, Some(PairLabels::Dataset)) => {
                return Err(Error::Invalid(
                    "pairs.labels = \"dataset\" needs pairs.direction = \"from_data\" on a \
                     labelled image dataset"
                        .into(),
                ))
            }
            _ => {}
        }
        for shard in missing {
            if crate::interrupt::requested() {
                progress.finish();
                return Ok(StageOutcome::Interrupted);
            }
            let seeds = store.shard_seeds(shard);
            let (mut zs, mut xs, mut ls) = (Vec::new(), Vec::new(), Vec::new());
            let mut nfe = 0;
            for chunk in seeds.chunks(cfg.batch_size) {
                if crate::interrupt::requested() {
                    progress.finish();
                    tracing::info!(
                        "generate-pairs: interrupted in shard {shard}; run again to resume"
                    );
                    return Ok(StageOutcome::Interrupted);
                }
                let labels = match (label_source, &data) {
                    (None, _) => None,
                    (Some(PairLabels::Random), _) => {
                        Some(seeded_labels(chunk, classes as u32, ctx.device)?)
                    }
                    (Some(PairLabels::Dataset), Some(DataSource::Images(set))) => {
                        Some(seeded_data_labels(set, chunk, cfg.seed_base, ctx.device)?)
                    }
                    (Some(PairLabels::Dataset), _) => unreachable!("checked above"),
                };
                let field = teacher.eval_field(labels.as_ref());
                match cfg.direction {
                    PairDirection::FromNoise => {
                        let z = seeded_source(source, chunk, &shape, ctx.device)?;
                        let sol = solve(&cfg.solver, &field, &z, cfg.eps, 1.0, false)?;
                        nfe = sol.nfe;
                        zs.push(z);
                        xs.push(sol.x);
                    }
                    PairDirection::FromData => {
                        let data = data.as_ref().expect("loaded for from_data");
                        let x1 = seeded_data(data, chunk, cfg.seed_base, ctx.device);
                        let sol = solve(&cfg.solver, &field, &x1, 1.0, cfg.eps, false)?;
                        nfe = sol.nfe;
                        zs.push(sol.x);
                        xs.push(x1);
                    }
                }
                ls.extend(labels);
            }
            let labels = (!ls.is_empty()).then(|| Tensor::cat(&ls, 0));
            store.write_shard(
                shard,
                &Tensor::cat(&zs, 0),
                &Tensor::cat(&xs, 0),
                labels.as_ref(),
            )?;
            produced += seeds.len() as u64;
            progress.set(produced, || format!("shard {shard} (NFE {nfe})"));
        }
        progress.finish();
        if let Some(d) = dist {
            // every rank's shards are written before rank 0 checks and completes the store
            d.barrier("pair shards written")?;
            if !dir.writes() {
                return Ok(StageOutcome::Completed);
            }
        }
        if !store.missing_shards().is_empty() {
            return Ok(StageOutcome::Partial);
        }
        store.verify(slimflow_data::Verify::Full)?;
        dir.output("pairs", "pairs");
        Ok(StageOutcome::Completed)
    })
}

/// Removes the shards under `<stage_dir>/pairs` whose bytes no longer match their SHA-256, so that
/// the run regenerates them; whether none was damaged.
fn remove_damaged(stage_dir: &std::path::Path) -> Result<bool> {
    let pairs = stage_dir.join("pairs");
    if !pairs.join("pairs.json").is_file() {
        return Ok(true);
    }
    let store = PairStore::open(&pairs)?;
    let damaged = store.damaged_shards();
    for (i, e) in &damaged {
        tracing::warn!("{e}: removing shard {i} to regenerate it");
        store.remove_shard(*i)?;
    }
    Ok(damaged.is_empty())
}

/// The reference pairs in `src` as the stage's store, checked against the student's sample shape:
/// SlimFlow's `z0.npy`, `z1.npy` [, `label.npy`], or rfpp's `samples.zip` + `z.zip` [+
/// `images_labels.csv`]; labels must be there exactly when the student is class-conditional.
fn import(ctx: &StageCtx, src: &std::path::Path) -> Result<StageOutcome> {
    let cfg = &ctx.config.pairs;
    let file = |name: &str| src.join(name);
    let rfpp = slimflow_data::rfpp::is_rfpp_dir(src);
    let (z0, z1, label) = if rfpp {
        (
            file("z.zip"),
            file("samples.zip"),
            file(slimflow_data::rfpp::RFPP_LABELS),
        )
    } else {
        (file("z0.npy"), file("z1.npy"), file("label.npy"))
    };
    for p in [&z0, &z1] {
        if !p.is_file() {
            return Err(Error::Invalid(format!(
                "pairs.import: {} is missing (expected SlimFlow's z0.npy / z1.npy [/ label.npy] \
                 or rfpp's z.zip / samples.zip)",
                p.display()
            )));
        }
    }
    // rfpp's labels are found by its importer beside samples.zip; hashed here all the same
    let label = label.is_file().then_some(label);
    let mut shas = vec![sha256_file(&z0)?, sha256_file(&z1)?];
    if let Some(l) = &label {
        shas.push(sha256_file(l)?);
    }
    let hash = json!({"import": shas, "shard_size": cfg.shard_size, "dtype": cfg.dtype});
    run_stage(ctx, "generate-pairs", hash, |dir| {
        let out = dir.path.join("pairs");
        if out.exists() {
            std::fs::remove_dir_all(&out).map_err(crate::error::io_err(&out))?;
        }
        let store = if rfpp {
            slimflow_data::rfpp::import_rfpp(&z1, &z0, &out, cfg.shard_size, cfg.dtype)?
        } else {
            PairStore::import_npy(&z0, &z1, label.as_deref(), &out, cfg.shard_size, cfg.dtype)?
        };
        let student = ctx.config.student_arch();
        check_pair_labels(store.manifest().num_classes, student.label_dim(), src)
            .map_err(|e| Error::Invalid(format!("pairs.import: {e}")))?;
        let want = student.data_shape();
        if store.manifest().sample_shape != want {
            return Err(Error::Invalid(format!(
                "pairs.import: {} holds samples of shape {:?}, the student expects {:?}",
                src.display(),
                store.manifest().sample_shape,
                want
            )));
        }
        dir.output("pairs", "pairs");
        dir.output("imported_from", src.display().to_string());
        Ok(StageOutcome::Completed)
    })
}

/// The stage's work: the pairs and the solver's NFE, or the import.
pub(crate) fn work(cfg: &crate::PipelineConfig) -> String {
    match &cfg.pairs.import {
        Some(dir) => format!("import reference pairs from {}", dir.display()),
        None => format!(
            "{} pairs × NFE {} ({}, {} storage)",
            cfg.pairs.count,
            crate::plan::solver_nfe(&cfg.pairs.solver),
            cfg.pairs.solver.label(),
            serde_json::to_value(cfg.pairs.dtype)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        ),
    }
}

/// Imported pairs must be there in one of the known layouts.
pub(crate) fn preflight(cfg: &crate::PipelineConfig) -> Vec<crate::stage::Need> {
    let Some(dir) = &cfg.pairs.import else {
        return Vec::new();
    };
    let found = dir.join("z0.npy").is_file() || slimflow_data::rfpp::is_rfpp_dir(dir);
    if found {
        return Vec::new();
    }
    vec![crate::stage::Need::Problem(format!(
        "pairs.import {}: neither z0.npy / z1.npy nor z.zip / samples.zip there",
        dir.display()
    ))]
}
