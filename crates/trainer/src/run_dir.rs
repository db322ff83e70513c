//! Run directories and stage manifests.
//!
//! `<run>/<stage>/` holds `manifest.json`, `config.toml` (the resolved config), `checkpoints/`,
//! `metrics.jsonl` and the stage's outputs. The manifest records status, the config hash (over the
//! settings the stage depends on and the SHA-256 of its input files), seed, versions and wall time.
//!
//! One process writes a stage directory at a time: [`StageCtx::begin`] takes `<stage>/.lock`
//! ([`StageLock`]; `.lock.<rank>-of-<world>` for each writer of a sharded stage) before it reads the
//! manifest, and a single writer then removes the temporary files that killed writes left behind.
//!
//! In a data-parallel job ([`crate::parallel::Dist`]) rank 0 alone does all of this; the other ranks
//! wait for its decision (run, skip, or its error) through the rendezvous store, run the stage's
//! computation with it, and take its outcome at the end.

mod lock;

pub use lock::{host_name, Holder, StageLock};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Device;

use crate::config::PipelineConfig;
use crate::error::{io_err, Error, Result};

/// Stage status in its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Started and not finished (or killed).
    Running,
    /// Stopped cleanly on request; resumable.
    Interrupted,
    /// Stopped by an error; resumable from its last checkpoint.
    Failed,
    /// Finished.
    Complete,
}

/// `manifest.json` of a stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Stage name.
    pub stage: String,
    /// Status.
    pub status: Status,
    /// SHA-256 over the stage's settings and input hashes.
    pub config_hash: String,
    /// Master seed.
    pub seed: u64,
    /// slimflow version.
    pub version: String,
    /// libtorch version.
    pub torch: String,
    /// `git rev-parse HEAD` of the working directory, when available.
    pub git_revision: Option<String>,
    /// Device used.
    pub device: String,
    /// Last update (RFC 3339).
    pub updated: String,
    /// Wall time of the last session of this stage, seconds.
    pub wall_seconds: f64,
    /// Output files and figures.
    pub outputs: BTreeMap<String, String>,
    /// Error message when failed.
    pub error: Option<String>,
}

/// How a stage call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageOutcome {
    /// Ran to completion now.
    Completed,
    /// Was already complete with the same config hash.
    Skipped,
    /// Stopped on an interrupt request; run again to resume.
    Interrupted,
    /// This writer's share is done, other writers' shards remain (sharded generation).
    Partial,
}

/// Everything a stage needs from its caller.
#[derive(Debug)]
pub struct StageCtx {
    /// The run directory (`runs/<name>` by default).
    pub run_dir: PathBuf,
    /// The resolved config.
    pub config: PipelineConfig,
    /// Device to run on.
    pub device: Device,
    /// Discard an existing stage run made with another config.
    pub force: bool,
    /// This process's writer index and the number of writers (sharded pair generation).
    pub rank: usize,
    /// Number of writers (1: this process does everything).
    pub world: usize,
    /// The data-parallel job this process is a rank of (then `rank` and `world` are its).
    pub dist: Option<std::sync::Arc<crate::parallel::Dist>>,
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    Ok(slimflow_tensor_io::sha256_file(path)?.0)
}

fn git_revision() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A stage being run.
#[derive(Debug)]
pub struct StageDir {
    /// `<run>/<stage>`.
    pub path: PathBuf,
    manifest: Manifest,
    started: Instant,
    /// The writer's lock; `None` on the ranks that follow rank 0 (they write nothing).
    lock: Option<StageLock>,
}

/// Name of the lock file of writer `rank` of `world` in a stage directory.
pub fn lock_name(rank: usize, world: usize) -> String {
    if world <= 1 {
        ".lock".to_string()
    } else {
        format!(".lock.{rank}-of-{world}")
    }
}

/// The stage directory (one holding a `manifest.json` of a stage) that `path` is in or under, if
/// any. Relative paths are taken from the working directory; symbolic links are resolved where the
/// directories exist.
pub fn stage_dir_containing(path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(path).ok()?;
    let mut dir = abs.parent();
    while let Some(d) = dir {
        let real = std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf());
        let manifest = real.join("manifest.json");
        if manifest.is_file()
            && std::fs::read_to_string(&manifest)
                .ok()
                .and_then(|t| serde_json::from_str::<Manifest>(&t).ok())
                .is_some()
        {
            return Some(real);
        }
        dir = d.parent();
    }
    None
}

/// Empties `dir` except for the file `keep`.
fn clear_except(dir: &Path, keep: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let p = entry.map_err(io_err(dir))?.path();
        if p == keep {
            continue;
        }
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
        } else {
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

impl StageCtx {
    /// Loads a model checkpoint onto the stage's device, laid out as `[performance]` says.
    pub fn load_model(&self, path: &Path) -> Result<slimflow_models::Model> {
        let mut model = slimflow_models::Model::load(path, self.device)?;
        self.config.performance.prepare(&mut model);
        Ok(model)
    }

    /// `<run>/<stage>`.
    pub fn stage_path(&self, stage: &str) -> PathBuf {
        self.run_dir.join(stage)
    }

    /// Reads a stage's manifest, if any.
    pub fn manifest(&self, stage: &str) -> Result<Option<Manifest>> {
        let p = self.stage_path(stage).join("manifest.json");
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::BadCheckpoint {
                path: p,
                reason: format!("manifest: {e}"),
            })
    }

    /// Starts `stage`: `None` when it is already complete for the same `hash_input`; otherwise the
    /// stage directory (fresh or to resume). A stage dir holding another config's run is an error
    /// unless `force`, which clears it.
    pub fn begin(&self, stage: &str, hash_input: &serde_json::Value) -> Result<Option<StageDir>> {
        self.begin_checked(stage, hash_input, |_| Ok(true))
    }

    /// [`StageCtx::begin`] where a run of the same config found on disk is first checked by
    /// `intact` (given the stage directory, under the lock): a complete stage whose check fails
    /// (returns false, having removed what is damaged) resumes instead of being skipped.
    pub fn begin_checked(
        &self,
        stage: &str,
        hash_input: &serde_json::Value,
        intact: impl FnOnce(&Path) -> Result<bool>,
    ) -> Result<Option<StageDir>> {
        let Some(d) = &self.dist else {
            return self.begin_writer(stage, hash_input, intact, self.rank, self.world);
        };
        let key = format!("begin/{stage}");
        if d.rank() == 0 {
            let begun = self.begin_writer(stage, hash_input, intact, 0, 1);
            let decision = begun.as_ref().map(|dir| match dir {
                Some(_) => "run".to_string(),
                None => "skip".to_string(),
            });
            publish(d, &key, decision)?;
            return begun;
        }
        match follow(d, &key, stage)?.as_str() {
            "skip" => Ok(None),
            "run" => Ok(Some(StageDir {
                path: self.stage_path(stage),
                manifest: self.new_manifest(stage, String::new()),
                started: Instant::now(),
                lock: None,
            })),
            other => Err(Error::Invalid(format!(
                "rank 0's decision on stage `{stage}` is `{other}`, not run or skip"
            ))),
        }
    }

    /// [`StageCtx::begin_checked`] for the process that writes the stage directory, as writer
    /// `rank` of `world`.
    fn begin_writer(
        &self,
        stage: &str,
        hash_input: &serde_json::Value,
        intact: impl FnOnce(&Path) -> Result<bool>,
        rank: usize,
        world: usize,
    ) -> Result<Option<StageDir>> {
        let hash = hex::encode(Sha256::digest(hash_input.to_string().as_bytes()));
        let path = self.stage_path(stage);
        std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        let lock = StageLock::acquire(&path.join(lock_name(rank, world)))?;
        if world <= 1 {
            for p in slimflow_tensor_io::remove_stale_temps(&path)? {
                tracing::info!("removed {} (left by an interrupted write)", p.display());
            }
        }
        if let Some(m) = self.manifest(stage)? {
            if m.config_hash == hash {
                let ok = intact(&path)?;
                if m.status == Status::Complete && ok {
                    tracing::info!(
                        "stage `{stage}` already complete ({}), skipping",
                        path.display()
                    );
                    return Ok(None);
                }
                if m.status == Status::Complete {
                    tracing::warn!(
                        "stage `{stage}` was complete but its outputs are damaged: repairing"
                    );
                }
            }
            if m.config_hash != hash {
                if !self.force {
                    return Err(Error::ConfigChanged {
                        stage: stage.to_string(),
                        path,
                        found: m.config_hash,
                        expected: hash,
                    });
                }
                tracing::warn!("discarding {} (made with another config)", path.display());
                clear_except(&path, lock.path())?;
            } else {
                tracing::info!("resuming stage `{stage}` ({:?})", m.status);
            }
        }
        std::fs::create_dir_all(path.join("checkpoints")).map_err(io_err(&path))?;
        let cfg_path = path.join("config.toml");
        let toml = crate::config::to_toml(&self.config).expect("configs serialise to TOML");
        slimflow_tensor_io::atomic_write(&cfg_path, toml.as_bytes())?;
        let dir = StageDir {
            path,
            manifest: self.new_manifest(stage, hash),
            started: Instant::now(),
            lock: Some(lock),
        };
        dir.write_manifest()?;
        Ok(Some(dir))
    }

    fn new_manifest(&self, stage: &str, config_hash: String) -> Manifest {
        Manifest {
            stage: stage.to_string(),
            status: Status::Running,
            config_hash,
            seed: self.config.seed,
            version: env!("CARGO_PKG_VERSION").to_string(),
            torch: "2.11.0".to_string(),
            git_revision: git_revision(),
            device: match &self.dist {
                Some(d) => format!("{:?} ×{} ranks", self.device, d.world()),
                None => format!("{:?}", self.device),
            },
            updated: String::new(),
            wall_seconds: 0.0,
            outputs: BTreeMap::new(),
            error: None,
        }
    }
}

impl StageDir {
    fn write_manifest(&self) -> Result<()> {
        if self.lock.is_none() {
            return Ok(());
        }
        let mut m = self.manifest.clone();
        m.updated = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        m.wall_seconds = self.started.elapsed().as_secs_f64();
        let p = self.path.join("manifest.json");
        let json = serde_json::to_vec_pretty(&m).expect("manifests serialise");
        slimflow_tensor_io::atomic_write(&p, &json)?;
        Ok(())
    }

    /// Records an output.
    pub fn output(&mut self, key: &str, value: impl Into<String>) {
        self.manifest.outputs.insert(key.to_string(), value.into());
    }

    /// Marks the stage with `status` (and the error message for failures).
    pub fn finish(&mut self, status: Status, error: Option<String>) -> Result<()> {
        self.manifest.status = status;
        self.manifest.error = error;
        self.write_manifest()
    }

    /// `checkpoints/` of this stage.
    pub fn checkpoints(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    /// The lock this writer holds on the directory (`None` on a rank that follows rank 0).
    pub fn lock(&self) -> Option<&StageLock> {
        self.lock.as_ref()
    }

    /// Whether this process writes the stage directory (false on ranks other than 0).
    pub fn writes(&self) -> bool {
        self.lock.is_some()
    }
}

/// Runs `body` inside a started stage, recording completion, interruption or failure in its manifest.
pub fn run_stage(
    ctx: &StageCtx,
    stage: &str,
    hash_input: serde_json::Value,
    body: impl FnOnce(&mut StageDir) -> Result<StageOutcome>,
) -> Result<StageOutcome> {
    run_stage_checked(ctx, stage, hash_input, |_| Ok(true), body)
}

/// [`run_stage`] with the check of [`StageCtx::begin_checked`].
pub fn run_stage_checked(
    ctx: &StageCtx,
    stage: &str,
    hash_input: serde_json::Value,
    intact: impl FnOnce(&Path) -> Result<bool>,
    body: impl FnOnce(&mut StageDir) -> Result<StageOutcome>,
) -> Result<StageOutcome> {
    let Some(mut dir) = ctx.begin_checked(stage, &hash_input, intact)? else {
        return Ok(StageOutcome::Skipped);
    };
    let result = body(&mut dir);
    let done = finish_stage(&mut dir, result);
    let Some(d) = &ctx.dist else { return done };
    // the ranks leave the stage together, with rank 0's outcome
    let key = format!("end/{stage}");
    if d.rank() == 0 {
        publish(d, &key, done.as_ref().map(|o| format!("{o:?}")))?;
        return done;
    }
    done?;
    match follow(d, &key, stage)?.as_str() {
        "Completed" => Ok(StageOutcome::Completed),
        "Skipped" => Ok(StageOutcome::Skipped),
        "Interrupted" => Ok(StageOutcome::Interrupted),
        "Partial" => Ok(StageOutcome::Partial),
        other => Err(Error::Invalid(format!(
            "rank 0's outcome of stage `{stage}` is `{other}`, not a stage outcome"
        ))),
    }
}

/// Prefix of a decision that carries rank 0's error instead.
const LEADER_ERROR: &str = "error:";

/// Rank 0 shares its decision `key` (a word, or the error that stopped it) with the other ranks.
fn publish(
    d: &crate::parallel::Dist,
    key: &str,
    decision: std::result::Result<String, &Error>,
) -> Result<()> {
    let text = match decision {
        Ok(word) => word,
        Err(e) => format!("{LEADER_ERROR}{e}"),
    };
    d.decide(key, Some(&text)).map(|_| ())
}

/// Rank 0's decision `key` on a rank that follows it; rank 0's error becomes
/// [`Error::LeaderFailed`].
fn follow(d: &crate::parallel::Dist, key: &str, stage: &str) -> Result<String> {
    let text = d.decide(key, None)?;
    match text.strip_prefix(LEADER_ERROR) {
        Some(message) => Err(Error::LeaderFailed {
            stage: stage.to_string(),
            message: message.to_string(),
        }),
        None => Ok(text),
    }
}

/// Records `result` of a stage's body in its manifest.
fn finish_stage(dir: &mut StageDir, result: Result<StageOutcome>) -> Result<StageOutcome> {
    match result {
        Ok(StageOutcome::Interrupted) => {
            dir.finish(Status::Interrupted, None)?;
            Ok(StageOutcome::Interrupted)
        }
        Ok(StageOutcome::Partial) => {
            // resumable like an interrupted run: the next writer to finish marks it complete
            dir.finish(Status::Interrupted, None)?;
            Ok(StageOutcome::Partial)
        }
        Ok(outcome) => {
            dir.finish(Status::Complete, None)?;
            Ok(outcome)
        }
        Err(e) => {
            // the stage's own error wins: recording it may fail for the same reason (disk full)
            if let Err(m) = dir.finish(Status::Failed, Some(e.to_string())) {
                tracing::warn!("cannot mark the stage failed: {m}");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(run_dir: &Path, force: bool) -> StageCtx {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let config = crate::load_config(&root.join("configs/toy/checkerboard.toml"), &[])
            .expect("the toy config loads");
        StageCtx {
            run_dir: run_dir.to_path_buf(),
            config,
            device: Device::Cpu,
            force,
            rank: 0,
            world: 1,
            dist: None,
        }
    }

    fn manifest(dir: &Path) -> Manifest {
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
    }

    #[test]
    fn a_second_writer_is_refused_even_with_force() {
        let run = tempfile::tempdir().unwrap();
        let ctx = toy(run.path(), false);
        let first = ctx.begin("train", &serde_json::json!(1)).unwrap().unwrap();
        for (force, hash) in [(false, 1), (true, 2)] {
            let err = toy(run.path(), force)
                .begin("train", &serde_json::json!(hash))
                .unwrap_err();
            assert!(matches!(err, Error::Locked { .. }), "{err}");
            assert!(err.to_string().contains(".lock"), "{err}");
        }
        assert_eq!(
            manifest(&first.path).config_hash,
            first.manifest.config_hash
        );
        drop(first);
        assert!(ctx.begin("train", &serde_json::json!(1)).unwrap().is_some());
    }

    #[test]
    fn a_failed_write_is_the_stage_error_and_stale_temporaries_go() {
        let run = tempfile::tempdir().unwrap();
        let ctx = toy(run.path(), false);
        let stage = run.path().join("train");
        // a write that fails (its folder is a file) and names its file
        let out = run_stage(&ctx, "train", serde_json::json!(1), |dir| {
            std::fs::write(dir.path.join("blocked"), b"").unwrap();
            slimflow_tensor_io::atomic_write(&dir.path.join("blocked/state.bin"), b"x")?;
            Ok(StageOutcome::Completed)
        });
        let err = out.unwrap_err().to_string();
        assert!(err.contains("blocked/state.bin"), "{err}");
        let m = manifest(&stage);
        assert_eq!(m.status, Status::Failed);
        assert!(m.error.unwrap().contains("state.bin"));
        // the manifest itself cannot be written any more: the stage's error still wins
        let out = run_stage(&ctx, "train", serde_json::json!(1), |dir| {
            std::fs::remove_file(dir.path.join("manifest.json")).unwrap();
            std::fs::create_dir(dir.path.join("manifest.json")).unwrap();
            slimflow_tensor_io::atomic_write(&dir.path.join("blocked/other.bin"), b"x")?;
            Ok(StageOutcome::Completed)
        });
        let err = out.unwrap_err().to_string();
        assert!(
            err.contains("other.bin") && !err.contains("manifest"),
            "{err}"
        );
        std::fs::remove_dir(stage.join("manifest.json")).unwrap();
        // a temporary left by a killed writer is removed when the next writer starts
        let stale = stage.join("checkpoints/state-00000010.safetensors.tmp4999999");
        std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
        std::fs::write(&stale, b"partial").unwrap();
        let dir = ctx.begin("train", &serde_json::json!(1)).unwrap().unwrap();
        if slimflow_tensor_io::pid_alive(1).is_some() {
            assert!(!stale.exists());
        }
        drop(dir);
    }
}
