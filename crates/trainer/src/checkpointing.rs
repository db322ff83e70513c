//! Checkpoint policy (pure) and the resumable training state on disk.
//!
//! A state file `checkpoints/state-<step>.safetensors` holds parameters (`param.*`), EMA (`ema.*`),
//! Adam moments (`adam_m.*`, `adam_v.*`) and, in its metadata, the step, Adam's t, the RNG state and
//! the architecture. It is written atomically; on resume the newest file that reads back intact wins,
//! so a truncated latest checkpoint falls back to the previous one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha20Rng;
use slimflow_models::{checkpoint, ArchConfig};
use tch::Tensor;

use crate::error::{io_err, Error, Result};

/// What the policy asks the checkpointer to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write a state at this step.
    Save(u64),
    /// Delete the state at this step.
    Delete(u64),
}

/// Keep-last-N policy: save every `every` steps and at `final_step`, keep the newest `keep` states.
pub fn plan(step: u64, final_step: u64, every: u64, keep: usize, existing: &[u64]) -> Vec<Action> {
    let due = step == final_step || (every > 0 && step % every == 0);
    if !due {
        return Vec::new();
    }
    let mut actions = vec![Action::Save(step)];
    let mut all: Vec<u64> = existing.iter().copied().filter(|&s| s != step).collect();
    all.push(step);
    all.sort_unstable();
    let keep = keep.max(1);
    if all.len() > keep {
        actions.extend(all[..all.len() - keep].iter().map(|&s| Action::Delete(s)));
    }
    actions
}

/// Everything needed to continue a run exactly.
#[derive(Debug)]
pub struct TrainState {
    /// Steps completed.
    pub step: u64,
    /// Parameter values (sorted by name).
    pub params: Vec<(String, Tensor)>,
    /// EMA values (same order).
    pub ema: Vec<Tensor>,
    /// Adam first moments (same order).
    pub adam_m: Vec<Tensor>,
    /// Adam second moments (same order).
    pub adam_v: Vec<Tensor>,
    /// Adam steps.
    pub adam_t: u64,
    /// The loop's generator.
    pub rng: ChaCha20Rng,
    /// The student's architecture.
    pub arch: ArchConfig,
}

/// Path of the state at `step`.
pub fn state_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("state-{step:08}.safetensors"))
}

/// Steps of the state files in `dir`, ascending.
pub fn list_states(dir: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("state-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()
        })
        .collect();
    steps.sort_unstable();
    steps
}

/// Writes a state atomically.
pub fn save_state(dir: &Path, s: &TrainState) -> Result<PathBuf> {
    let mut tensors = Vec::with_capacity(4 * s.params.len());
    for (i, (name, p)) in s.params.iter().enumerate() {
        tensors.push((format!("param.{name}"), p.shallow_clone()));
        tensors.push((format!("ema.{name}"), s.ema[i].shallow_clone()));
        tensors.push((format!("adam_m.{name}"), s.adam_m[i].shallow_clone()));
        tensors.push((format!("adam_v.{name}"), s.adam_v[i].shallow_clone()));
    }
    let meta = BTreeMap::from([
        ("slimflow.step".to_string(), s.step.to_string()),
        ("slimflow.adam_t".to_string(), s.adam_t.to_string()),
        (
            "slimflow.rng".to_string(),
            serde_json::to_string(&s.rng).expect("rng serialises"),
        ),
        (
            checkpoint::ARCH_KEY.to_string(),
            serde_json::to_string(&s.arch).expect("arch serialises"),
        ),
    ]);
    let path = state_path(dir, s.step);
    slimflow_tensor_io::write(&path, &tensors, &meta)?;
    Ok(path)
}

/// Reads a state; `names` are the model's parameter names (sorted), all of which must be present.
pub fn load_state(path: &Path, names: &[String]) -> Result<TrainState> {
    let file = slimflow_tensor_io::read(path)?;
    let bad = |reason: String| Error::BadCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let meta = |key: &str| {
        file.metadata
            .get(key)
            .ok_or_else(|| bad(format!("missing metadata `{key}`")))
    };
    let step = meta("slimflow.step")?
        .parse()
        .map_err(|e| bad(format!("step: {e}")))?;
    let adam_t = meta("slimflow.adam_t")?
        .parse()
        .map_err(|e| bad(format!("adam_t: {e}")))?;
    let rng: ChaCha20Rng =
        serde_json::from_str(meta("slimflow.rng")?).map_err(|e| bad(format!("rng: {e}")))?;
    let arch: ArchConfig =
        serde_json::from_str(meta(checkpoint::ARCH_KEY)?).map_err(|e| bad(format!("arch: {e}")))?;
    let expected = 4 * names.len();
    if file.tensors.len() != expected {
        return Err(bad(format!(
            "holds {} tensors, the model needs {expected}",
            file.tensors.len()
        )));
    }
    let get = |prefix: &str, name: &str| {
        file.get(&format!("{prefix}.{name}"))
            .map(|t| t.shallow_clone())
    };
    let mut s = TrainState {
        step,
        params: Vec::new(),
        ema: Vec::new(),
        adam_m: Vec::new(),
        adam_v: Vec::new(),
        adam_t,
        rng,
        arch,
    };
    for name in names {
        s.params.push((name.clone(), get("param", name)?));
        s.ema.push(get("ema", name)?);
        s.adam_m.push(get("adam_m", name)?);
        s.adam_v.push(get("adam_v", name)?);
    }
    Ok(s)
}

/// The newest state in `dir` that loads; unreadable newer ones are reported and skipped.
pub fn latest_state(dir: &Path, names: &[String]) -> Option<TrainState> {
    for step in list_states(dir).into_iter().rev() {
        let path = state_path(dir, step);
        match load_state(&path, names) {
            Ok(s) => return Some(s),
            Err(e) => tracing::warn!("skipping unreadable checkpoint: {e}"),
        }
    }
    None
}

/// Deletes the state at `step`.
pub fn delete_state(dir: &Path, step: u64) -> Result<()> {
    let p = state_path(dir, step);
    std::fs::remove_file(&p).map_err(io_err(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_last_n_deletes_only_the_oldest() {
        assert_eq!(plan(7, 100, 10, 2, &[]), vec![]);
        assert_eq!(plan(10, 100, 10, 2, &[]), vec![Action::Save(10)]);
        assert_eq!(
            plan(30, 100, 10, 2, &[10, 20]),
            vec![Action::Save(30), Action::Delete(10)]
        );
        assert_eq!(
            plan(40, 100, 10, 1, &[10, 20, 30]),
            vec![
                Action::Save(40),
                Action::Delete(10),
                Action::Delete(20),
                Action::Delete(30)
            ]
        );
        // The final step always saves, even off-cadence.
        assert_eq!(plan(95, 95, 10, 3, &[90]), vec![Action::Save(95)]);
    }

    #[test]
    fn list_states_parses_only_state_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "state-00000010.safetensors",
            "state-00000002.safetensors",
            "state-x.safetensors",
            "state-00000003.safetensors.tmp",
            "other",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(list_states(dir.path()), vec![2, 10]);
    }
}
