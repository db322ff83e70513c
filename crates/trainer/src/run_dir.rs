//! Run directories and stage manifests.
//!
//! `<run>/<stage>/` holds `manifest.json`, `config.toml` (the resolved config), `checkpoints/`,
//! `metrics.jsonl` and the stage's outputs. The manifest records status, the config hash (over the
//! settings the stage depends on and the SHA-256 of its input files), seed, versions and wall time.

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
}

impl StageCtx {
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
        let hash = hex::encode(Sha256::digest(hash_input.to_string().as_bytes()));
        let path = self.stage_path(stage);
        if let Some(m) = self.manifest(stage)? {
            if m.config_hash == hash && m.status == Status::Complete {
                tracing::info!(
                    "stage `{stage}` already complete ({}), skipping",
                    path.display()
                );
                return Ok(None);
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
                std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
            } else {
                tracing::info!("resuming stage `{stage}` ({:?})", m.status);
            }
        }
        std::fs::create_dir_all(path.join("checkpoints")).map_err(io_err(&path))?;
        let cfg_path = path.join("config.toml");
        let toml = crate::config::to_toml(&self.config).expect("configs serialise to TOML");
        std::fs::write(&cfg_path, toml).map_err(io_err(&cfg_path))?;
        let dir = StageDir {
            path,
            manifest: Manifest {
                stage: stage.to_string(),
                status: Status::Running,
                config_hash: hash,
                seed: self.config.seed,
                version: env!("CARGO_PKG_VERSION").to_string(),
                torch: "2.11.0".to_string(),
                git_revision: git_revision(),
                device: format!("{:?}", self.device),
                updated: String::new(),
                wall_seconds: 0.0,
                outputs: BTreeMap::new(),
                error: None,
            },
            started: Instant::now(),
        };
        dir.write_manifest()?;
        Ok(Some(dir))
    }
}

impl StageDir {
    fn write_manifest(&self) -> Result<()> {
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
}

/// Runs `body` inside a started stage, recording completion, interruption or failure in its manifest.
pub fn run_stage(
    ctx: &StageCtx,
    stage: &str,
    hash_input: serde_json::Value,
    body: impl FnOnce(&mut StageDir) -> Result<StageOutcome>,
) -> Result<StageOutcome> {
    let Some(mut dir) = ctx.begin(stage, &hash_input)? else {
        return Ok(StageOutcome::Skipped);
    };
    match body(&mut dir) {
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
            dir.finish(Status::Failed, Some(e.to_string()))?;
            Err(e)
        }
    }
}
