//! The pair store: (z, x1[, label]) pairs from a teacher, for reflow and distillation.
//!
//! Layout: `pairs.json` (the manifest) and, per shard i, `pairs-00000i.safetensors` holding `z` and
//! `x1` ([n, …sample_shape], float32 or float16), `seed` ([n] int64) and, for class-conditional
//! teachers, `label` ([n] int64), plus `pairs-00000i.sha256` ("<hex digest> <size>"). Pair j was made
//! from noise seed `seed_base + j`, so any shard can be regenerated alone and the store is the same
//! whatever the number of writers.
//!
//! Crash safety: a shard file is written to a temporary name and renamed, then its checksum file the
//! same way; a shard counts as present only when both exist and the sizes agree, so a killed writer
//! leaves at worst a shard that is redone. Opening verifies every shard ([`Verify::Fast`]: presence
//! and sizes; [`Verify::Full`]: every byte against its SHA-256, shards hashed in parallel; the
//! stages and `data info` verify in full). [`PairStore::damaged_shards`] lists shards whose bytes
//! no longer match, so that they can be removed and regenerated. Shard i belongs to writer
//! `i mod world`, so W processes (`--rank R --world W`) fill disjoint shards of one store.
//!
//! Reads: [`PairStore::load`] returns every pair; [`PairReader`] reads any pairs by index with
//! positioned reads from the page cache, without loading the store.

use std::collections::BTreeMap;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

const MANIFEST: &str = "pairs.json";
const FORMAT: u32 = 2;

/// Element type of stored samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairDtype {
    /// float32.
    #[default]
    F32,
    /// float16: half the disk and page cache, ample for 8-bit images.
    F16,
}

impl PairDtype {
    fn kind(self) -> Kind {
        match self {
            PairDtype::F32 => Kind::Float,
            PairDtype::F16 => Kind::Half,
        }
    }
    fn size(self) -> usize {
        match self {
            PairDtype::F32 => 4,
            PairDtype::F16 => 2,
        }
    }
    fn safetensors_name(self) -> &'static str {
        match self {
            PairDtype::F32 => "F32",
            PairDtype::F16 => "F16",
        }
    }
}

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
    /// SHA-256 of the teacher checkpoint file (or where imported pairs came from).
    pub teacher_sha256: String,
    /// The solver that produced x1 (its config as JSON).
    pub solver: String,
    /// Stored element type of z and x1.
    #[serde(default)]
    pub dtype: PairDtype,
    /// Number of classes of the `label` entries; 0 when unconditional.
    #[serde(default)]
    pub num_classes: u32,
}

impl PairStoreManifest {
    /// A manifest for `count` unlabelled float32 pairs of `sample_shape`.
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
            dtype: PairDtype::F32,
            num_classes: 0,
        })
    }

    /// Stores samples as `dtype`.
    pub fn with_dtype(mut self, dtype: PairDtype) -> Self {
        self.dtype = dtype;
        self
    }

    /// Stores a class label per pair.
    pub fn with_classes(mut self, num_classes: u32) -> Self {
        self.num_classes = num_classes;
        self
    }

    /// Elements per sample (product of the sample shape).
    pub fn sample_numel(&self) -> usize {
        self.sample_shape.iter().product::<i64>().max(0) as usize
    }
}

/// How thoroughly [`PairStore::verify`] checks shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Every shard and checksum file present, sizes as recorded.
    Fast,
    /// And every byte against its SHA-256.
    Full,
}

/// Pairs in index order.
#[derive(Debug)]
pub struct Pairs {
    /// Noise z: [N, …] float32.
    pub z: Tensor,
    /// Teacher endpoints x1: [N, …] float32.
    pub x1: Tensor,
    /// Noise seeds: [N] int64.
    pub seed: Tensor,
    /// Class labels [N] int64, for conditional stores.
    pub labels: Option<Tensor>,
}

/// A pair-store directory.
#[derive(Debug, Clone)]
pub struct PairStore {
    dir: PathBuf,
    manifest: PairStoreManifest,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_manifest(dir: &Path) -> Result<Option<PairStoreManifest>> {
    let path = dir.join(MANIFEST);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let m: PairStoreManifest =
                serde_json::from_str(&s).map_err(|e| corrupt(&path, format!("manifest: {e}")))?;
            if m.format != FORMAT {
                return Err(corrupt(
                    &path,
                    format!(
                        "store format {} (this version reads {FORMAT}); regenerate the pairs",
                        m.format
                    ),
                ));
            }
            for (key, value) in [("count", m.count), ("shard_size", m.shard_size)] {
                if value == 0 {
                    return Err(corrupt(&path, format!("`{key}` must be positive, got 0")));
                }
            }
            Ok(Some(m))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { path, source }),
    }
}

impl PairStore {
    /// Opens the store in `dir` if it exists with the same manifest, or creates it. A store made with
    /// other settings is an error (never silently mixed).
    pub fn create_or_resume(dir: &Path, manifest: PairStoreManifest) -> Result<Self> {
        if manifest.format != FORMAT {
            return Err(Error::Invalid(format!("manifest format must be {FORMAT}")));
        }
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
                slimflow_tensor_io::atomic_write(&dir.join(MANIFEST), &json)?;
            }
        }
        Ok(PairStore {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Opens an existing store (the manifest only; see [`PairStore::verify`]).
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = read_manifest(dir)?.ok_or_else(|| {
            corrupt(
                &dir.join(MANIFEST),
                "no pair-store manifest (run generate-pairs first)",
            )
        })?;
        Ok(PairStore {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Path of shard `i`'s checksum file.
    pub fn checksum_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("pairs-{i:06}.sha256"))
    }

    /// Noise seeds of shard `i`.
    pub fn shard_seeds(&self, i: usize) -> Vec<u64> {
        self.shard_range(i)
            .map(|j| self.manifest.seed_base + j)
            .collect()
    }

    /// Shards owned by writer `rank` of `world` (i mod world = rank).
    pub fn shards_for(&self, rank: usize, world: usize) -> Result<Vec<usize>> {
        if world == 0 || rank >= world {
            return Err(Error::Invalid(format!(
                "rank {rank} of world {world}: need 0 ≤ rank < world"
            )));
        }
        Ok((0..self.num_shards())
            .filter(|i| i % world == rank)
            .collect())
    }

    /// The recorded (digest, size) of shard `i`, if its checksum file exists and parses.
    fn recorded(&self, i: usize) -> Result<Option<(String, u64)>> {
        let path = self.checksum_path(i);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let mut parts = text.split_whitespace();
        match (
            parts.next(),
            parts.next().and_then(|s| s.parse::<u64>().ok()),
        ) {
            (Some(h), Some(n)) if h.len() == 64 => Ok(Some((h.to_string(), n))),
            _ => Err(corrupt(&path, format!("not `<sha256> <size>`: {text:?}"))),
        }
    }

    /// Whether shard `i` is complete: file and checksum present with matching size.
    fn is_complete(&self, i: usize) -> bool {
        match (self.recorded(i), std::fs::metadata(self.shard_path(i))) {
            (Ok(Some((_, n))), Ok(m)) => m.len() == n,
            _ => false,
        }
    }

    /// Shards not yet (completely) written.
    pub fn missing_shards(&self) -> Vec<usize> {
        (0..self.num_shards())
            .filter(|&i| !self.is_complete(i))
            .collect()
    }

    /// Checks every shard; the error names the first bad shard and what is wrong with it.
    pub fn verify(&self, mode: Verify) -> Result<()> {
        for i in 0..self.num_shards() {
            self.verify_fast(i)?;
        }
        if mode == Verify::Full {
            if let Some((_, e)) = self
                .hash_mismatches(0..self.num_shards())
                .into_iter()
                .next()
            {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Shards among `shards` whose bytes do not match their recorded SHA-256 (or that cannot be
    /// read), in order, with the error; shards hashed in parallel.
    fn hash_mismatches(&self, shards: Range<usize>) -> Vec<(usize, Error)> {
        use rayon::prelude::*;
        let mut bad: Vec<(usize, Error)> = shards
            .into_par_iter()
            .filter_map(|i| self.verify_hash(i).err().map(|e| (i, e)))
            .collect();
        bad.sort_by_key(|b| b.0);
        bad
    }

    fn verify_hash(&self, i: usize) -> Result<()> {
        let path = self.shard_path(i);
        let Some((digest, _)) = self.recorded(i)? else {
            return Ok(());
        };
        let (got, _) = slimflow_tensor_io::sha256_file(&path)?;
        if got != digest {
            return Err(corrupt(
                &path,
                format!("SHA-256 {got} does not match the recorded {digest}: the shard is damaged (re-run generate-pairs to regenerate it)"),
            ));
        }
        Ok(())
    }

    /// Complete shards (file and checksum present, sizes agreeing) whose bytes no longer match
    /// their SHA-256, with what is wrong.
    pub fn damaged_shards(&self) -> Vec<(usize, Error)> {
        self.hash_mismatches(0..self.num_shards())
            .into_iter()
            .filter(|(i, _)| self.is_complete(*i))
            .collect()
    }

    /// Removes shard `i` (checksum file first, so it never counts as present without its data).
    pub fn remove_shard(&self, i: usize) -> Result<()> {
        for path in [self.checksum_path(i), self.shard_path(i)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::Io { path, source }),
            }
        }
        Ok(())
    }

    /// Presence and size of shard `i`.
    fn verify_fast(&self, i: usize) -> Result<()> {
        let path = self.shard_path(i);
        let (_, size) = self.recorded(i)?.ok_or_else(|| {
            corrupt(
                &path,
                "shard missing or unfinished: the store is incomplete (re-run generate-pairs to finish it)",
            )
        })?;
        let len = std::fs::metadata(&path)
            .map_err(|_| corrupt(&path, "shard file missing (its checksum file exists)"))?
            .len();
        if len != size {
            return Err(corrupt(
                &path,
                format!(
                    "short or overlong shard: {len} bytes, its checksum file records {size} (data ends at offset {len})"
                ),
            ));
        }
        Ok(())
    }

    /// Writes shard `i` atomically (shard file, then checksum file). z and x1: [n, …sample_shape]
    /// with n the shard's length; labels [n] int64 exactly when the store has classes.
    pub fn write_shard(
        &self,
        i: usize,
        z: &Tensor,
        x1: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<()> {
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
        let kind = self.manifest.dtype.kind();
        let cpu = |t: &Tensor| t.to_kind(kind).to_device(Device::Cpu);
        let seeds: Vec<i64> = self.shard_seeds(i).iter().map(|&s| s as i64).collect();
        let mut tensors = vec![
            ("z".to_string(), cpu(z)),
            ("x1".to_string(), cpu(x1)),
            ("seed".to_string(), Tensor::from_slice(&seeds)),
        ];
        match (labels, self.manifest.num_classes) {
            (None, 0) => {}
            (Some(l), c) if c > 0 => {
                let l = l.to_kind(Kind::Int64).to_device(Device::Cpu);
                let in_range = l.size() == [n]
                    && (n == 0
                        || (l.min().int64_value(&[]) >= 0 && l.max().int64_value(&[]) < c as i64));
                if !in_range {
                    return Err(Error::Invalid(format!(
                        "shard {i}: labels must be [{n}] class indices below {c}, got {:?}",
                        l.size()
                    )));
                }
                tensors.push(("label".to_string(), l));
            }
            (Some(_), _) => {
                return Err(Error::Invalid(format!(
                    "shard {i}: labels given to an unconditional store"
                )))
            }
            (None, c) => {
                return Err(Error::Invalid(format!(
                    "shard {i}: the store has {c} classes but no labels were given"
                )))
            }
        }
        let path = self.shard_path(i);
        slimflow_tensor_io::write(&path, &tensors, &BTreeMap::new())?;
        let (digest, size) = slimflow_tensor_io::sha256_file(&path)?;
        slimflow_tensor_io::atomic_write(
            &self.checksum_path(i),
            format!("{digest} {size}\n").as_bytes(),
        )?;
        Ok(())
    }

    /// A random-access reader over the (fast-verified) store.
    pub fn reader(&self) -> Result<PairReader> {
        self.verify(Verify::Fast)?;
        let shards = (0..self.num_shards())
            .map(|i| ShardIndex::open(self, i))
            .collect::<Result<_>>()?;
        Ok(PairReader {
            store: self.clone(),
            shards,
        })
    }

    /// Loads every pair (float32 on `device`) after a fast verification.
    pub fn load(&self, device: Device) -> Result<Pairs> {
        let reader = self.reader()?;
        let all: Vec<u64> = (0..self.manifest.count).collect();
        let mut p = reader.get(&all)?;
        p.z = p.z.to_device(device);
        p.x1 = p.x1.to_device(device);
        Ok(p)
    }
}

impl PairStore {
    /// Writes `z0.npy`, `z1.npy` (float32) and, for labelled stores, `label.npy` (int64) into
    /// `out` — SlimFlow's pair layout — streaming shard by shard.
    pub fn export_npy(&self, out: &Path) -> Result<Vec<PathBuf>> {
        use crate::npy::NpyWriter;
        let reader = self.reader()?;
        std::fs::create_dir_all(out).map_err(io(out))?;
        let m = &self.manifest;
        let mut shape = vec![m.count as i64];
        shape.extend_from_slice(&m.sample_shape);
        let paths = [
            out.join("z0.npy"),
            out.join("z1.npy"),
            out.join("label.npy"),
        ];
        let mut z0 = NpyWriter::create(&paths[0], Kind::Float, &shape)?;
        let mut z1 = NpyWriter::create(&paths[1], Kind::Float, &shape)?;
        let mut label = (m.num_classes > 0)
            .then(|| NpyWriter::create(&paths[2], Kind::Int64, &[m.count as i64]))
            .transpose()?;
        for i in 0..self.num_shards() {
            let idx: Vec<u64> = self.shard_range(i).collect();
            let p = reader.get(&idx)?;
            z0.append(&p.z)?;
            z1.append(&p.x1)?;
            if let (Some(w), Some(l)) = (label.as_mut(), p.labels.as_ref()) {
                w.append(l)?;
            }
        }
        z0.finish()?;
        z1.finish()?;
        let mut written = paths[..2].to_vec();
        if let Some(w) = label {
            w.finish()?;
            written.push(paths[2].clone());
        }
        Ok(written)
    }

    /// A store in `out` from SlimFlow-style arrays: `z0` noise and `z1` teacher endpoints
    /// ([N, …], any float dtype), optional `label` ([N] integers). Pair j gets seed j (the noise
    /// came with the file, so seeds only number the pairs).
    pub fn import_npy(
        z0: &Path,
        z1: &Path,
        label: Option<&Path>,
        out: &Path,
        shard_size: u64,
        dtype: PairDtype,
    ) -> Result<PairStore> {
        let a = crate::npy::read_npy(z0)?;
        let b = crate::npy::read_npy(z1)?;
        if a.size() != b.size() || a.dim() < 2 {
            return Err(Error::Invalid(format!(
                "{} is {:?} but {} is {:?}: pairs need equal shapes [N, …]",
                z0.display(),
                a.size(),
                z1.display(),
                b.size()
            )));
        }
        for (p, t) in [(z0, &a), (z1, &b)] {
            if !t.is_floating_point() || t.isfinite().all().int64_value(&[]) == 0 {
                return Err(corrupt(p, "pairs must be finite floating-point values"));
            }
        }
        let n = a.size()[0];
        let labels = match label {
            Some(p) => {
                let l = crate::npy::read_npy(p)?;
                if l.size() != [n] || l.is_floating_point() {
                    return Err(corrupt(
                        p,
                        format!(
                            "labels must be [{n}] integers, got {:?} {:?}",
                            l.size(),
                            l.kind()
                        ),
                    ));
                }
                let l = l.to_kind(Kind::Int64);
                if l.min().int64_value(&[]) < 0 {
                    return Err(corrupt(p, "negative class label"));
                }
                Some(l)
            }
            None => None,
        };
        let (digest, _) = slimflow_tensor_io::sha256_file(z1)?;
        let mut manifest = PairStoreManifest::new(
            n as u64,
            shard_size,
            a.size()[1..].to_vec(),
            0,
            digest,
            format!("{{\"imported\": \"{}\"}}", z1.display()),
        )?
        .with_dtype(dtype);
        if let Some(l) = &labels {
            manifest = manifest.with_classes(l.max().int64_value(&[]) as u32 + 1);
        }
        let store = PairStore::create_or_resume(out, manifest)?;
        for i in store.missing_shards() {
            let r = store.shard_range(i);
            let (s, len) = (r.start as i64, (r.end - r.start) as i64);
            let l = labels.as_ref().map(|l| l.narrow(0, s, len));
            store.write_shard(i, &a.narrow(0, s, len), &b.narrow(0, s, len), l.as_ref())?;
        }
        Ok(store)
    }
}

#[derive(Debug)]
struct ShardIndex {
    path: PathBuf,
    file: std::fs::File,
    /// Byte offsets of the z, x1, seed and label data in the file.
    z: u64,
    x1: u64,
    seed: u64,
    label: Option<u64>,
}

impl ShardIndex {
    fn open(store: &PairStore, i: usize) -> Result<Self> {
        let path = store.shard_path(i);
        let file = std::fs::File::open(&path).map_err(io(&path))?;
        let len = file.metadata().map_err(io(&path))?.len();
        let mut head = [0u8; 8];
        file.read_exact_at(&mut head, 0)
            .map_err(|_| corrupt(&path, "offset 0: shorter than a safetensors header"))?;
        let n = u64::from_le_bytes(head);
        if n > len.saturating_sub(8) || n > 1 << 24 {
            return Err(corrupt(
                &path,
                format!("offset 0: header length {n} exceeds the file"),
            ));
        }
        let mut json = vec![0u8; n as usize];
        file.read_exact_at(&mut json, 8).map_err(io(&path))?;
        let header: serde_json::Value = serde_json::from_slice(&json)
            .map_err(|e| corrupt(&path, format!("offset 8: header: {e}")))?;
        let m = &store.manifest;
        let rows = (store.shard_range(i).end - store.shard_range(i).start) as usize;
        let numel = m.sample_numel();
        let data = 8 + n;
        let entry = |name: &str, dtype: &str, per_row: usize, elem: usize| -> Result<Option<u64>> {
            let Some(e) = header.get(name) else {
                return Ok(None);
            };
            let got_dtype = e["dtype"].as_str().unwrap_or_default();
            if got_dtype != dtype {
                return Err(corrupt(
                    &path,
                    format!("`{name}` is {got_dtype}, the manifest says {dtype}"),
                ));
            }
            let offs: Vec<u64> = e["data_offsets"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
                .unwrap_or_default();
            let want = (rows * per_row * elem) as u64;
            match offs.as_slice() {
                [a, b] if b - a == want && data + b <= len => Ok(Some(data + a)),
                _ => Err(corrupt(
                    &path,
                    format!("`{name}` does not hold {rows} rows of {per_row} values (offsets {offs:?}, file {len} bytes)"),
                )),
            }
        };
        let dt = m.dtype.safetensors_name();
        let need = |name: &str, v: Option<u64>| {
            v.ok_or_else(|| corrupt(&path, format!("no `{name}` tensor")))
        };
        let z = need("z", entry("z", dt, numel, m.dtype.size())?)?;
        let x1 = need("x1", entry("x1", dt, numel, m.dtype.size())?)?;
        let seed = need("seed", entry("seed", "I64", 1, 8)?)?;
        let label = entry("label", "I64", 1, 8)?;
        if label.is_some() != (m.num_classes > 0) {
            return Err(corrupt(
                &path,
                format!(
                    "labels present: {}, the manifest has {} classes",
                    label.is_some(),
                    m.num_classes
                ),
            ));
        }
        Ok(ShardIndex {
            path,
            file,
            z,
            x1,
            seed,
            label,
        })
    }
}

/// Random access to a pair store's pairs (positioned reads; the OS page cache does the caching).
#[derive(Debug)]
pub struct PairReader {
    store: PairStore,
    shards: Vec<ShardIndex>,
}

impl PairReader {
    /// Number of pairs.
    pub fn len(&self) -> u64 {
        self.store.manifest.count
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pairs `indices` (any order, repeats allowed), z and x1 as float32 on the CPU.
    pub fn get(&self, indices: &[u64]) -> Result<Pairs> {
        let m = &self.store.manifest;
        let row = m.sample_numel() * m.dtype.size();
        let mut z = vec![0u8; indices.len() * row];
        let mut x1 = vec![0u8; indices.len() * row];
        let mut seed = vec![0u8; indices.len() * 8];
        let mut label = vec![
            0u8;
            if m.num_classes > 0 {
                indices.len() * 8
            } else {
                0
            }
        ];
        for (k, &j) in indices.iter().enumerate() {
            if j >= m.count {
                return Err(Error::Invalid(format!(
                    "pair {j} out of range: the store holds {}",
                    m.count
                )));
            }
            let s = &self.shards[(j / m.shard_size) as usize];
            let r = j % m.shard_size;
            let read = |buf: &mut [u8], at: u64| {
                s.file
                    .read_exact_at(buf, at)
                    .map_err(|e| corrupt(&s.path, format!("offset {at}: {e}")))
            };
            read(&mut z[k * row..(k + 1) * row], s.z + r * row as u64)?;
            read(&mut x1[k * row..(k + 1) * row], s.x1 + r * row as u64)?;
            read(&mut seed[k * 8..(k + 1) * 8], s.seed + r * 8)?;
            if let Some(l) = s.label {
                read(&mut label[k * 8..(k + 1) * 8], l + r * 8)?;
            }
        }
        let mut shape = vec![indices.len() as i64];
        shape.extend_from_slice(&m.sample_shape);
        let kind = m.dtype.kind();
        let floats = |b: &[u8]| -> Result<Tensor> {
            Ok(Tensor::f_from_data_size(b, &shape, kind)?.to_kind(Kind::Float))
        };
        let n = [indices.len() as i64];
        Ok(Pairs {
            z: floats(&z)?,
            x1: floats(&x1)?,
            seed: Tensor::f_from_data_size(&seed, &n, Kind::Int64)?,
            labels: (m.num_classes > 0)
                .then(|| Tensor::f_from_data_size(&label, &n, Kind::Int64))
                .transpose()?,
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
        assert_eq!(store.shards_for(1, 2).unwrap(), vec![1]);
        assert_eq!(store.shards_for(0, 2).unwrap(), vec![0, 2]);
        assert!(store.shards_for(2, 2).is_err());
        let z = Tensor::ones([4, 2], (Kind::Float, Device::Cpu));
        store.write_shard(0, &z, &(&z * 2.0), None).unwrap();
        assert_eq!(store.missing_shards(), vec![1, 2]);
        assert!(store
            .load(Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("pairs-000001"));
        let again = PairStore::create_or_resume(dir.path(), manifest(10)).unwrap();
        assert_eq!(again.missing_shards(), vec![1, 2]);
        again.write_shard(1, &z, &z, None).unwrap();
        let z2 = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
        again.write_shard(2, &z2, &z2, None).unwrap();
        let pairs = PairStore::open(dir.path())
            .unwrap()
            .load(Device::Cpu)
            .unwrap();
        assert_eq!(pairs.z.size(), vec![10, 2]);
        assert_eq!(pairs.seed.int64_value(&[9]), 109);
        assert_eq!(pairs.x1.double_value(&[0, 0]), 2.0);
        assert!(pairs.labels.is_none());
    }

    #[test]
    fn flipped_bytes_are_found_and_the_shard_can_be_redone() {
        let dir = tempfile::tempdir().unwrap();
        let store = PairStore::create_or_resume(dir.path(), manifest(8)).unwrap();
        let z = Tensor::ones([4, 2], (Kind::Float, Device::Cpu));
        store.write_shard(0, &z, &z, None).unwrap();
        store.write_shard(1, &z, &(&z * 3.0), None).unwrap();
        let original = std::fs::read(store.shard_path(1)).unwrap();
        let mut bytes = original.clone();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40; // a data byte of `z`, `x1` or `seed`: sizes unchanged
        std::fs::write(store.shard_path(1), &bytes).unwrap();
        store.verify(Verify::Fast).unwrap();
        let err = store.verify(Verify::Full).unwrap_err().to_string();
        assert!(
            err.contains("pairs-000001.safetensors") && err.contains("damaged"),
            "{err}"
        );
        let damaged = store.damaged_shards();
        assert_eq!(damaged.iter().map(|d| d.0).collect::<Vec<_>>(), vec![1]);
        store.remove_shard(1).unwrap();
        assert_eq!(store.missing_shards(), vec![1]);
        store.write_shard(1, &z, &(&z * 3.0), None).unwrap();
        assert_eq!(std::fs::read(store.shard_path(1)).unwrap(), original);
        store.verify(Verify::Full).unwrap();
    }

    #[test]
    fn a_zero_shard_size_is_an_error_naming_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        PairStore::create_or_resume(dir.path(), manifest(8)).unwrap();
        let path = dir.path().join(MANIFEST);
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace("\"shard_size\": 4", "\"shard_size\": 0");
        std::fs::write(&path, text).unwrap();
        let err = PairStore::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("pairs.json") && err.contains("`shard_size`"),
            "{err}"
        );
        assert!(PairStore::create_or_resume(dir.path(), manifest(8)).is_err());
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
        assert!(store.write_shard(0, &wrong, &wrong, None).is_err());
        let labels = Tensor::from_slice(&[0i64, 1, 0, 1]);
        let ok = Tensor::ones([4, 2], (Kind::Float, Device::Cpu));
        assert!(store
            .write_shard(0, &ok, &ok, Some(&labels))
            .unwrap_err()
            .to_string()
            .contains("unconditional"));
        assert!(PairStore::open(&dir.path().join("nope")).is_err());
    }
}
