//! Stage `generate-pairs`: z ~ N(0, I) from per-pair seeds, x1 = ODE solve of the teacher from eps to 1
//! (reference: RK45, rtol = atol = 1e-5), written shard by shard so that an interrupted or killed run
//! resumes at the first missing shard. `from_data` integrates real samples backwards instead, and
//! `import` takes reference pairs (SlimFlow's `z0.npy` / `z1.npy`) as they are.

use serde_json::json;
use slimflow_data::{seeded_normal, PairStore, PairStoreManifest};
use slimflow_models::Model;
use slimflow_sampling::solve;
use tch::Tensor;

use crate::config::{PairDirection, Target};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::run_dir::{run_stage, sha256_file, StageCtx, StageOutcome};
use crate::stage::{image_set, input};

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
    let hash = json!({"pairs": cfg, "teacher": teacher_sha});
    run_stage(ctx, "generate-pairs", hash, |dir| {
        let mut teacher = Model::load(&teacher_path, ctx.device)?;
        teacher.set_precision(cfg.precision);
        let shape = teacher.config().data_shape();
        let manifest = PairStoreManifest::new(
            cfg.count,
            cfg.shard_size,
            shape.clone(),
            cfg.seed_base,
            teacher_sha.clone(),
            serde_json::to_string(&cfg.solver).expect("solver configs serialise"),
        )?;
        let manifest = manifest.with_dtype(cfg.dtype);
        let store = PairStore::create_or_resume(&dir.path.join("pairs"), manifest)?;
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
        let field = teacher.eval_field(None);
        let data = match cfg.direction {
            PairDirection::FromNoise => None,
            PairDirection::FromData => {
                Some(match ctx.config.data.resolve().map_err(Error::Invalid)? {
                    Target::Toy(t) => DataSource::Toy(t),
                    Target::Images(spec) => DataSource::Images(image_set(&spec, teacher.config())?),
                })
            }
        };
        for shard in missing {
            if crate::interrupt::requested() {
                progress.finish();
                return Ok(StageOutcome::Interrupted);
            }
            let seeds = store.shard_seeds(shard);
            let (mut zs, mut xs) = (Vec::new(), Vec::new());
            let mut nfe = 0;
            for chunk in seeds.chunks(cfg.batch_size) {
                match cfg.direction {
                    PairDirection::FromNoise => {
                        let z = seeded_normal(chunk, &shape, ctx.device);
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
            }
            store.write_shard(shard, &Tensor::cat(&zs, 0), &Tensor::cat(&xs, 0), None)?;
            produced += seeds.len() as u64;
            progress.set(produced, || format!("shard {shard} (NFE {nfe})"));
        }
        progress.finish();
        if !store.missing_shards().is_empty() {
            return Ok(StageOutcome::Partial);
        }
        store.verify(slimflow_data::Verify::Full)?;
        dir.output("pairs", "pairs");
        Ok(StageOutcome::Completed)
    })
}

/// The reference pairs in `src` as the stage's store, checked against the student's sample shape:
/// SlimFlow's `z0.npy`, `z1.npy` [, `label.npy`], or rfpp's `samples.zip` + `z.zip`.
fn import(ctx: &StageCtx, src: &std::path::Path) -> Result<StageOutcome> {
    let cfg = &ctx.config.pairs;
    let file = |name: &str| src.join(name);
    let rfpp = slimflow_data::rfpp::is_rfpp_dir(src);
    let (z0, z1, label) = if rfpp {
        (file("z.zip"), file("samples.zip"), file("label.npy"))
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
    let label = (!rfpp && label.is_file()).then_some(label);
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
        let want = ctx.config.student_arch().data_shape();
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
