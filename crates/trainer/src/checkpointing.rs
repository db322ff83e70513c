//! Checkpoint policy (pure) and the resumable training state on disk.
//!
//! A state file `checkpoints/state-<step>.safetensors` holds parameters (`param.*`), EMA (`ema.*`),
//! Adam moments (`adam_m.*`, `adam_v.*`) and, in its metadata, the step, Adam's t, the RNG state and
//! the architecture, plus `slimflow.sha256`: a SHA-256 over every tensor (name, dtype, shape, bytes)
//! and the other metadata. It is written atomically; on resume the newest file that reads back
//! intact wins: one that is truncated, fails its checksum, names another step than its file name or
//! holds non-finite values is reported and skipped, falling back to the previous one.

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
    if !due(step, final_step, every) {
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

/// Whether a state is due after `step`: every `every` steps and at `final_step`.
pub fn due(step: u64, final_step: u64, every: u64) -> bool {
    step == final_step || (every > 0 && step % every == 0)
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
    /// The float16 loss scale and its clean steps since the last change (float16 autocast runs).
    pub loss_scale: Option<(f64, u64)>,
}

impl TrainState {
    /// The first tensor holding NaN or infinite values, as `param.NAME`, `ema.NAME`,
    /// `adam_m.NAME` or `adam_v.NAME`.
    pub fn non_finite(&self) -> Option<String> {
        let groups: [(&str, Vec<&Tensor>); 4] = [
            ("param", self.params.iter().map(|p| &p.1).collect()),
            ("ema", self.ema.iter().collect()),
            ("adam_m", self.adam_m.iter().collect()),
            ("adam_v", self.adam_v.iter().collect()),
        ];
        for (prefix, values) in groups {
            for ((name, _), t) in self.params.iter().zip(values) {
                if t.is_floating_point() && t.isfinite().all().int64_value(&[]) == 0 {
                    return Some(format!("{prefix}.{name}"));
                }
            }
        }
        None
    }
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

/// Metadata key of a state's content checksum.
pub const DIGEST_KEY: &str = "slimflow.sha256";

/// SHA-256 (hex) over `tensors` (sorted by name: name, dtype, shape, bytes) and `meta` without the
/// checksum and version keys.
fn content_digest(tensors: &[(String, Tensor)], meta: &BTreeMap<String, String>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in sorted {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        h.update(format!("{name}\0{:?}\0{:?}\0", t.kind(), t.size()).as_bytes());
        let n = t.numel();
        let mut buf = vec![0u8; n * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut buf, n);
        h.update(&buf);
    }
    for (k, v) in meta {
        if k != DIGEST_KEY && k != slimflow_tensor_io::VERSION_KEY {
            h.update(format!("{k}\0{v}\0").as_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// Metadata key of the float16 loss scale: `"<value> <clean steps>"`.
const LOSS_SCALE_KEY: &str = "slimflow.loss_scale";

/// Writes a state atomically, with its content checksum.
pub fn save_state(dir: &Path, s: &TrainState) -> Result<PathBuf> {
    let mut tensors = Vec::with_capacity(4 * s.params.len());
    for (i, (name, p)) in s.params.iter().enumerate() {
        tensors.push((format!("param.{name}"), p.shallow_clone()));
        tensors.push((format!("ema.{name}"), s.ema[i].shallow_clone()));
        tensors.push((format!("adam_m.{name}"), s.adam_m[i].shallow_clone()));
        tensors.push((format!("adam_v.{name}"), s.adam_v[i].shallow_clone()));
    }
    let mut meta = BTreeMap::from([
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
    if let Some((value, clean)) = s.loss_scale {
        meta.insert(LOSS_SCALE_KEY.to_string(), format!("{value:e} {clean}"));
    }
    meta.insert(DIGEST_KEY.to_string(), content_digest(&tensors, &meta));
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
    match file.metadata.get(DIGEST_KEY) {
        Some(want) => {
            let got = content_digest(&file.tensors, &file.metadata);
            if &got != want {
                return Err(bad(format!(
                    "checksum mismatch (content SHA-256 {got}, recorded {want}): the file is damaged"
                )));
            }
        }
        None => tracing::debug!("{}: no checksum recorded", path.display()),
    }
    let step: u64 = meta("slimflow.step")?
        .parse()
        .map_err(|e| bad(format!("step: {e}")))?;
    let named = path.file_name().and_then(|n| n.to_str()).and_then(|n| {
        n.strip_prefix("state-")?
            .strip_suffix(".safetensors")?
            .parse::<u64>()
            .ok()
    });
    if let Some(named) = named {
        if named != step {
            return Err(bad(format!(
                "its metadata says step {step} but its name says step {named}"
            )));
        }
    }
    let adam_t = meta("slimflow.adam_t")?
        .parse()
        .map_err(|e| bad(format!("adam_t: {e}")))?;
    let rng: ChaCha20Rng =
        serde_json::from_str(meta("slimflow.rng")?).map_err(|e| bad(format!("rng: {e}")))?;
    let arch: ArchConfig =
        serde_json::from_str(meta(checkpoint::ARCH_KEY)?).map_err(|e| bad(format!("arch: {e}")))?;
    let loss_scale = match file.metadata.get(LOSS_SCALE_KEY) {
        None => None,
        Some(text) => {
            let parsed = text.split_once(' ').and_then(|(v, c)| {
                let v: f64 = v
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite() && *v >= 1.0)?;
                Some((v, c.parse::<u64>().ok()?))
            });
            Some(parsed.ok_or_else(|| {
                bad(format!(
                    "{LOSS_SCALE_KEY} = {text:?}: expected a scale ≥ 1 and a step count"
                ))
            })?)
        }
    };
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
        loss_scale,
    };
    for name in names {
        s.params.push((name.clone(), get("param", name)?));
        s.ema.push(get("ema", name)?);
        s.adam_m.push(get("adam_m", name)?);
        s.adam_v.push(get("adam_v", name)?);
    }
    if let Some(tensor) = s.non_finite() {
        return Err(bad(format!("`{tensor}` holds NaN or infinite values")));
    }
    Ok(s)
}

/// The newest state in `dir` that loads and is intact, with its path; newer ones that are
/// unreadable, damaged or non-finite are reported (which and why) and skipped.
pub fn latest_good(dir: &Path, names: &[String]) -> Option<(PathBuf, TrainState)> {
    for step in list_states(dir).into_iter().rev() {
        let path = state_path(dir, step);
        match load_state(&path, names) {
            Ok(s) => return Some((path, s)),
            Err(e) => tracing::warn!("skipping checkpoint: {e}; falling back to an older one"),
        }
    }
    None
}

/// The newest state in `dir` that loads and is intact (see [`latest_good`]).
pub fn latest_state(dir: &Path, names: &[String]) -> Option<TrainState> {
    latest_good(dir, names).map(|(_, s)| s)
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

    fn state(step: u64, value: f32) -> TrainState {
        use rand::SeedableRng;
        let t = || Tensor::from_slice(&[value, 1.0, 2.0]);
        TrainState {
            step,
            params: vec![("w".to_string(), t())],
            ema: vec![t()],
            adam_m: vec![t()],
            adam_v: vec![t()],
            adam_t: step,
            rng: ChaCha20Rng::seed_from_u64(step),
            arch: ArchConfig::preset("mlp-toy-small").unwrap(),
            loss_scale: None,
        }
    }

    #[test]
    fn the_loss_scale_travels_with_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["w".to_string()];
        let mut s = state(10, 0.5);
        s.loss_scale = Some((32768.0, 17));
        save_state(dir.path(), &s).unwrap();
        let back = load_state(&state_path(dir.path(), 10), &names).unwrap();
        assert_eq!(back.loss_scale, Some((32768.0, 17)));
        // a state without one (float32 runs, older states) reads as none
        save_state(dir.path(), &state(20, 0.5)).unwrap();
        let back = load_state(&state_path(dir.path(), 20), &names).unwrap();
        assert_eq!(back.loss_scale, None);
    }

    #[test]
    fn damaged_mislabelled_and_non_finite_states_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["w".to_string()];
        save_state(dir.path(), &state(10, 0.5)).unwrap();
        assert_eq!(latest_state(dir.path(), &names).unwrap().step, 10);
        // NaN values with a valid checksum: not "last good"
        save_state(dir.path(), &state(20, f32::NAN)).unwrap();
        let err = load_state(&state_path(dir.path(), 20), &names)
            .unwrap_err()
            .to_string();
        assert!(err.contains("NaN"), "{err}");
        // a flipped data byte
        let p30 = save_state(dir.path(), &state(30, 0.5)).unwrap();
        let mut bytes = std::fs::read(&p30).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0x01;
        std::fs::write(&p30, &bytes).unwrap();
        let err = load_state(&p30, &names).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        // a state under another step's name
        std::fs::copy(state_path(dir.path(), 10), state_path(dir.path(), 40)).unwrap();
        let err = load_state(&state_path(dir.path(), 40), &names)
            .unwrap_err()
            .to_string();
        assert!(err.contains("step 10") && err.contains("step 40"), "{err}");
        let (path, s) = latest_good(dir.path(), &names).unwrap();
        assert_eq!((path, s.step), (state_path(dir.path(), 10), 10));
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
