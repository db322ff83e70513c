//! The pair store: (z, x1) pairs from a teacher, for reflow and distillation.
//!
//! Layout: `pairs.json` (the manifest) and shards `pairs-000123.safetensors` holding `z` and `x1`
//! ([n, …sample_shape], float32) and `seed` ([n], int64). Pair i was made from noise seed
//! `seed_base + i`, so any shard can be regenerated alone. Shards are written atomically (temp file +
//! rename), so a shard file that exists is complete; generation resumes at the missing shards.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slimflow_models::checkpoint;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

const MANIFEST: &str = "pairs.json";
const FORMAT: u32 = 1;

/// What a pair store holds and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairStoreManifest {
    /// Store format version.
    pub format: u32,
    /// Number of pairs.
    pub count: u64,
    /// Pairs per shard (the last shard may be shorter).
    pub shard_size: u64,
    /// Shape of one sample, e.g. [2] or [3, 32, 32].
    pub sample_shape: Vec<i64>,
    /// Pair i uses noise seed `seed_base + i`.
    pub seed_base: u64,
    /// SHA-256 of the teacher checkpoint file.
    pub teacher_sha256: String,
    /// The solver that produced x1 (its config as JSON).
    pub solver: String,
}

impl PairStoreManifest {
    /// A manifest for `count` pairs of `sample_shape`.
    pub fn new(
        count: u64,
        shard_size: u64,
        sample_shape: Vec<i64>,
        seed_base: u64,
        teacher_sha256: String,
        solver: String,
    ) -> Result<Self> {
        if count == 0 || shard_size == 0 {
            return Err(Error::Invalid(
                "pair count and shard size must be positive".into(),
            ));
        }
        Ok(PairStoreManifest {
            format: FORMAT,
            count,
            shard_size,
            sample_shape,
            seed_base,
            teacher_sha256,
            solver,
        })
    }
}

/// All pairs of a store, in index order.
#[derive(Debug)]
pub struct Pairs {
    /// Noise z: [N, …].
    pub z: Tensor,
    /// Teacher endpoints x1: [N, …].
    pub x1: Tensor,
    /// Noise seeds: [N] int64.
    pub seed: Tensor,
}

/// A pair-store directory.
#[derive(Debug, Clone)]
pub struct PairStore {
    dir: PathBuf,
    manifest: PairStoreManifest,
}

fn read_manifest(dir: &Path) -> Result<Option<PairStoreManifest>> {
    let path = dir.join(MANIFEST);
    match std::fs::read_to_string(&path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path,
                reason: format!("manifest: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { path, source }),
    }
}

impl PairStore {
    /// Opens the store in `dir` if it exists with the same manifest, or creates it. A store made with
    /// other settings is an error (never silently mixed).
    pub fn create_or_resume(dir: &Path, manifest: PairStoreManifest) -> Result<Self> {
        match read_manifest(dir)? {
            Some(existing) if existing == manifest => {}
            Some(existing) => {
                let reason = if existing.teacher_sha256 != manifest.teacher_sha256 {
                    "teacher checkpoint differs".to_string()
                } else {
                    format!("manifest {existing:?} vs requested {manifest:?}")
                };
                return Err(Error::Mismatch {
                    path: dir.to_path_buf(),
                    reason,
                });
            }
            None => {
                let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
                checkpoint::atomic_write(&dir.join(MANIFEST), &json)?;
            }
        }
        Ok(PairStore {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Opens an existing store.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = read_manifest(dir)?.ok_or_else(|| Error::Corrupt {
            path: dir.join(MANIFEST),
            reason: "no pair-store manifest (run generate-pairs first)".into(),
        })?;
        if manifest.format != FORMAT {
            return Err(Error::Corrupt {
                path: dir.join(MANIFEST),
                reason: format!("unsupported format {}", manifest.format),
            });
        }
        Ok(PairStore {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &PairStoreManifest {
        &self.manifest
    }

    /// Number of shards.
    pub fn num_shards(&self) -> usize {
        self.manifest.count.div_ceil(self.manifest.shard_size) as usize
    }

    /// Pair indices of shard `i`.
    pub fn shard_range(&self, i: usize) -> Range<u64> {
        let start = i as u64 * self.manifest.shard_size;
        start..(start + self.manifest.shard_size).min(self.manifest.count)
    }

    /// Path of shard `i`.
    pub fn shard_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("pairs-{i:06}.safetensors"))
    }

    /// Noise seeds of shard `i`.
    pub fn shard_seeds(&self, i: usize) -> Vec<u64> {
        self.shard_range(i)
            .map(|j| self.manifest.seed_base + j)
            .collect()
    }

    /// Shards not yet written.
    pub fn missing_shards(&self) -> Vec<usize> {
        (0..self.num_shards())
            .filter(|&i| !self.shard_path(i).exists())
            .collect()
    }

    /// Writes shard `i` atomically. z and x1: [n, …sample_shape] with n the shard's length.
    pub fn write_shard(&self, i: usize, z: &Tensor, x1: &Tensor) -> Result<()> {
        let n = (self.shard_range(i).end - self.shard_range(i).start) as i64;
        let mut shape = vec![n];
        shape.extend_from_slice(&self.manifest.sample_shape);
        for (name, t) in [("z", z), ("x1", x1)] {
            if t.size() != shape {
                return Err(Error::Invalid(format!(
                    "shard {i}: `{name}` has shape {:?}, expected {shape:?}",
                    t.size()
                )));
            }
        }
        let seeds: Vec<i64> = self.shard_seeds(i).iter().map(|&s| s as i64).collect();
        let tensors = vec![
            (
                "z".to_string(),
                z.to_kind(Kind::Float).to_device(Device::Cpu),
            ),
            (
                "x1".to_string(),
                x1.to_kind(Kind::Float).to_device(Device::Cpu),
            ),
            ("seed".to_string(), Tensor::from_slice(&seeds)),
        ];
        checkpoint::write(&self.shard_path(i), &tensors, &BTreeMap::new())?;
        Ok(())
    }

    /// Loads every pair, checking that each shard is present and consistent with the manifest.
    pub fn load(&self, device: Device) -> Result<Pairs> {
        let (mut zs, mut xs, mut seeds) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..self.num_shards() {
            let path = self.shard_path(i);
            if !path.exists() {
                return Err(Error::Corrupt {
                    path,
                    reason: "shard missing: the store is incomplete (re-run generate-pairs to finish it)".into(),
                });
            }
            let file = checkpoint::read(&path)?;
            let n = (self.shard_range(i).end - self.shard_range(i).start) as i64;
            let mut shape = vec![n];
            shape.extend_from_slice(&self.manifest.sample_shape);
            let z = file.get("z")?;
            let x1 = file.get("x1")?;
            let seed = file.get("seed")?;
            if z.size() != shape || x1.size() != shape || seed.size() != [n] {
                return Err(Error::Corrupt {
                    path,
                    reason: format!(
                        "expected {n} pairs of shape {:?}",
                        self.manifest.sample_shape
                    ),
                });
            }
            let expected: Vec<i64> = self.shard_seeds(i).iter().map(|&s| s as i64).collect();
            if !seed.equal(&Tensor::from_slice(&expected)) {
                return Err(Error::Corrupt {
                    path,
                    reason: "seeds do not match the manifest's seed_base".into(),
                });
            }
            zs.push(z.shallow_clone());
            xs.push(x1.shallow_clone());
            seeds.push(seed.shallow_clone());
        }
        Ok(Pairs {
            z: Tensor::cat(&zs, 0).to_device(device),
            x1: Tensor::cat(&xs, 0).to_device(device),
            seed: Tensor::cat(&seeds, 0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(count: u64) -> PairStoreManifest {
        PairStoreManifest::new(count, 4, vec![2], 100, "abc".into(), "{}".into()).unwrap()
    }

    #[test]
    fn shards_cover_the_count_and_resume_skips_written_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = PairStore::create_or_resume(dir.path(), manifest(10)).unwrap();
        assert_eq!(store.num_shards(), 3);
        assert_eq!(store.shard_range(2), 8..10);
        assert_eq!(store.shard_seeds(2), vec![108, 109]);
        let z = Tensor::ones([4, 2], (Kind::Float, Device::Cpu));
        store.write_shard(0, &z, &(&z * 2.0)).unwrap();
        assert_eq!(store.missing_shards(), vec![1, 2]);
        assert!(store
            .load(Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("pairs-000001"));
        let again = PairStore::create_or_resume(dir.path(), manifest(10)).unwrap();
        assert_eq!(again.missing_shards(), vec![1, 2]);
        again.write_shard(1, &z, &z).unwrap();
        let z2 = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
        again.write_shard(2, &z2, &z2).unwrap();
        let pairs = PairStore::open(dir.path())
            .unwrap()
            .load(Device::Cpu)
            .unwrap();
        assert_eq!(pairs.z.size(), vec![10, 2]);
        assert_eq!(pairs.seed.int64_value(&[9]), 109);
        assert_eq!(pairs.x1.double_value(&[0, 0]), 2.0);
    }

    #[test]
    fn mismatched_settings_and_bad_shards_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = PairStore::create_or_resume(dir.path(), manifest(10)).unwrap();
        let mut other = manifest(10);
        other.teacher_sha256 = "def".into();
        let err = PairStore::create_or_resume(dir.path(), other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("teacher checkpoint differs"), "{err}");
        let wrong = Tensor::ones([3, 2], (Kind::Float, Device::Cpu));
        assert!(store.write_shard(0, &wrong, &wrong).is_err());
        std::fs::write(store.shard_path(0), b"garbage").unwrap();
        std::fs::write(store.shard_path(1), b"garbage").unwrap();
        std::fs::write(store.shard_path(2), b"garbage").unwrap();
        assert!(store
            .load(Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("pairs-000000"));
        assert!(PairStore::open(&dir.path().join("nope")).is_err());
    }
}
