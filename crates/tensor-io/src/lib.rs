//! Safetensors files for tch: tensors with string metadata, atomic writes, SHA-256 of files, and
//! strict loading into a [`nn::VarStore`]; [`upload`] moves host tensors to CUDA without waiting.
//!
//! tch's `VarStore::load` silently ignores keys the model lacks and converts each variable to the
//! file's dtype; [`load_strict`] instead reports every missing key, unexpected key and shape mismatch
//! in one error and casts values to the variable's dtype. Writes go to a temporary file beside the
//! target, are synced, then renamed, so a crash never leaves a torn file under the final name.

mod error;
mod upload;

pub use error::{Error, Result};
pub use upload::upload;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;
use tch::{nn, Device, Kind, Tensor};

/// Metadata key holding the writing library's version.
pub const VERSION_KEY: &str = "slimflow.version";

/// The contents of a safetensors file: tensors (on CPU) sorted by name, and string metadata.
#[derive(Debug)]
pub struct TensorFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Named tensors.
    pub tensors: Vec<(String, Tensor)>,
    /// The `__metadata__` map.
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// The tensor stored under `key`.
    pub fn get(&self, key: &str) -> Result<&Tensor> {
        self.tensors
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, t)| t)
            .ok_or_else(|| Error::Corrupt {
                path: self.path.clone(),
                reason: format!("missing tensor `{key}`"),
            })
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// Reads a safetensors file into CPU tensors.
pub fn read(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| corrupt(format!("header: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(format!("header: {e}")))?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let view = st
            .tensor(&name)
            .map_err(|e| corrupt(format!("tensor `{name}`: {e}")))?;
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            corrupt(format!(
                "tensor `{name}`: unsupported dtype {:?}",
                view.dtype()
            ))
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        tensors.push((name, t));
    }
    Ok(TensorFile {
        path: path.to_path_buf(),
        tensors,
        metadata,
    })
}

/// Raw bytes of a tensor in little-endian order.
fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.to_device(Device::Cpu).contiguous();
    let n = t.numel();
    let mut buf = vec![0u8; n * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut buf, n);
    buf
}

/// Writes tensors and metadata atomically (temp file, fsync, rename). The library version is added
/// to the metadata. The bytes depend only on the inputs: metadata keys are written sorted and the
/// tensors in a fixed order (by decreasing alignment, then name).
pub fn write(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = dtype_of(t.kind()).ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("tensor `{name}` has unsupported kind {:?}", t.kind()),
        })?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), dtype, shape, tensor_bytes(t)));
    }
    let mut meta = metadata.clone();
    meta.insert(VERSION_KEY.into(), env!("CARGO_PKG_VERSION").into());
    let bytes = serialize(&owned, &meta).map_err(|reason| Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    })?;
    atomic_write(path, &bytes)
}

/// Name of a dtype in a safetensors header.
fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F64 => "F64",
        Dtype::F32 => "F32",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
        Dtype::I64 => "I64",
        Dtype::I32 => "I32",
        Dtype::U8 => "U8",
        Dtype::I8 => "I8",
        _ => "BOOL",
    }
}

/// The safetensors encoding of `tensors` (name, dtype, shape, little-endian bytes) and `meta`:
/// header length, JSON header (metadata keys sorted, tensors in data order), padding, data.
fn serialize(
    tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    meta: &BTreeMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let json = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let mut order: Vec<&(String, Dtype, Vec<usize>, Vec<u8>)> = tensors.iter().collect();
    order.sort_by(|a, b| b.1.size().cmp(&a.1.size()).then_with(|| a.0.cmp(&b.0)));
    for w in order.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(format!("tensor `{}` given twice", w[0].0));
        }
    }
    let mut header = String::from("{");
    let entries: Vec<String> = meta
        .iter()
        .map(|(k, v)| format!("{}:{}", json(k), json(v)))
        .collect();
    header.push_str(&format!("\"__metadata__\":{{{}}}", entries.join(",")));
    let mut offset = 0usize;
    for (name, dtype, shape, data) in &order {
        let numel: usize = shape.iter().product();
        if numel * dtype.size() != data.len() {
            return Err(format!(
                "tensor `{name}`: byte length does not match its shape"
            ));
        }
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            ",{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            json(name),
            dtype_name(*dtype),
            dims.join(","),
            offset,
            offset + data.len()
        ));
        offset += data.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, _, _, data) in &order {
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// Writes `bytes` to `path` through `<path>.tmp<pid>` + fsync + rename. On failure the temporary
/// file is removed and the error names `path`.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, bytes, |f, b| f.write_all(b))
}

/// The temporary name [`atomic_write`] uses for `path` in process `pid`.
fn temp_path(path: &Path, pid: u32) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{TEMP_MARK}{pid}"));
    PathBuf::from(tmp)
}

const TEMP_MARK: &str = "tmp";

/// [`atomic_write`] with the write of the bytes into the temporary file done by `fill`.
fn atomic_write_with(
    path: &Path,
    bytes: &[u8],
    fill: impl FnOnce(&mut std::fs::File, &[u8]) -> std::io::Result<()>,
) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
    }
    // per-process temporary name: concurrent writers (sharded generation) never share one
    let tmp = temp_path(path, std::process::id());
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        fill(&mut f, bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}

/// Whether process `pid` of this host is alive; `None` where that cannot be told (no `/proc`).
pub fn pid_alive(pid: u32) -> Option<bool> {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return None;
    }
    Some(proc.join(pid.to_string()).exists())
}

/// Removes the temporary files of interrupted [`atomic_write`]s under `dir` (recursively) whose
/// writing process is no longer alive; returns them. Nothing is removed where liveness cannot be
/// told.
pub fn remove_stale_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if pid_alive(std::process::id()).is_none() {
        return Ok(removed);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(Error::Io { path: d, source }),
        };
        for entry in entries.flatten() {
            let p = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(p);
                continue;
            }
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(temp_pid) else {
                continue;
            };
            if pid_alive(pid) == Some(false) {
                std::fs::remove_file(&p).map_err(|source| Error::Io {
                    path: p.clone(),
                    source,
                })?;
                removed.push(p);
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// The pid in a temporary name `<name>.tmp<pid>`.
fn temp_pid(name: &str) -> Option<u32> {
    let (stem, pid) = name.rsplit_once(&format!(".{TEMP_MARK}"))?;
    if stem.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// SHA-256 (hex) and size in bytes of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    use sha2::Digest;
    use std::io::Read;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Ok((hex::encode(h.finalize()), size));
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
}

/// All variables of a store by name, sorted (trainable and frozen buffers alike).
pub fn named_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Copies `file`'s tensors into `vs`, requiring an exact key and shape match. Keys listed in
/// `ignorable` may appear in the file without a matching variable. Values are cast to each variable's
/// dtype and device.
pub fn load_strict(vs: &mut nn::VarStore, file: &TensorFile, ignorable: &[&str]) -> Result<()> {
    load_matching(vs, file, ignorable, false).map(|_| ())
}

/// What [`load_matching`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Variables copied from the file.
    pub loaded: usize,
    /// Model variables absent from the file (left as initialised).
    pub missing: Vec<String>,
    /// File tensors without a model variable (skipped), ignorable ones excluded.
    pub unexpected: Vec<String>,
    /// `key: model [..], file [..]` (skipped).
    pub mismatched: Vec<String>,
}

/// Like [`load_strict`], but with `partial` the matching tensors are copied and the rest reported
/// instead of refused. Even a partial load fails when nothing matches.
pub fn load_matching(
    vs: &mut nn::VarStore,
    file: &TensorFile,
    ignorable: &[&str],
    partial: bool,
) -> Result<LoadReport> {
    let vars = vs.variables();
    let in_file: HashMap<&str, &Tensor> =
        file.tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut missing: Vec<String> = vars
        .keys()
        .filter(|k| !in_file.contains_key(k.as_str()))
        .cloned()
        .collect();
    let mut unexpected: Vec<String> = file
        .tensors
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !vars.contains_key(*k) && !ignorable.iter().any(|i| k.ends_with(i)))
        .cloned()
        .collect();
    let mut mismatched: Vec<String> = vars
        .iter()
        .filter_map(|(k, v)| {
            let t = in_file.get(k.as_str())?;
            (t.size() != v.size())
                .then(|| format!("{k}: model {:?}, file {:?}", v.size(), t.size()))
        })
        .collect();
    missing.sort();
    unexpected.sort();
    mismatched.sort();
    let clean = missing.is_empty() && unexpected.is_empty() && mismatched.is_empty();
    let matching: Vec<(String, Tensor)> = vars
        .into_iter()
        .filter(|(k, v)| {
            in_file
                .get(k.as_str())
                .is_some_and(|t| t.size() == v.size())
        })
        .collect();
    if !clean && (!partial || matching.is_empty()) {
        return Err(Error::KeyMismatch {
            path: file.path.clone(),
            missing,
            unexpected,
            mismatched,
        });
    }
    tch::no_grad(|| {
        for (k, mut v) in matching.iter().map(|(k, v)| (k, v.shallow_clone())) {
            let src = in_file[k.as_str()].to_kind(v.kind()).to_device(v.device());
            v.f_copy_(&src)?;
        }
        Ok::<_, Error>(())
    })?;
    Ok(LoadReport {
        loaded: matching.len(),
        missing,
        unexpected,
        mismatched,
    })
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips_tensors_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        let a = Tensor::from_slice(&[1.0f32, -2.5, 3.25]).reshape([3, 1]);
        let b = Tensor::from_slice(&[7i64, 8]);
        let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
        write(
            &path,
            &[
                ("a".into(), a.shallow_clone()),
                ("b".into(), b.shallow_clone()),
            ],
            &meta,
        )
        .unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.safetensors"], "no temporary file left");
        let f = read(&path).unwrap();
        assert_eq!(f.metadata["k"], "v");
        assert_eq!(f.metadata[VERSION_KEY], env!("CARGO_PKG_VERSION"));
        assert!(f.get("a").unwrap().equal(&a));
        assert!(f.get("b").unwrap().equal(&b));
        assert!(f.get("c").is_err());
    }

    #[test]
    fn two_writes_of_the_same_tensors_are_byte_identical() {
        let dir = tempfile::tempdir().unwrap();
        let meta: BTreeMap<String, String> = (0..16)
            .map(|i| (format!("key{i:02}"), format!("value \"{i}\"")))
            .collect();
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let b = Tensor::from_slice(&[4i64, 5]);
        let c = Tensor::from_slice(&[1u8, 2, 3]);
        let tensors = vec![
            ("a".to_string(), a.shallow_clone()),
            ("b".to_string(), b.shallow_clone()),
            ("c".to_string(), c.shallow_clone()),
        ];
        let (p1, p2) = (dir.path().join("1"), dir.path().join("2"));
        write(&p1, &tensors, &meta).unwrap();
        let reversed: Vec<(String, Tensor)> = tensors
            .iter()
            .rev()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        write(&p2, &reversed, &meta).unwrap();
        let (x, y) = (std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
        assert_eq!(x, y);
        // the safetensors reference reader accepts it, metadata in sorted order
        let n = u64::from_le_bytes(x[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + n) % 8, 0);
        let header = std::str::from_utf8(&x[8..8 + n]).unwrap();
        let keys: Vec<usize> = (0..16)
            .map(|i| header.find(&format!("key{i:02}")).unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{header}");
        safetensors::SafeTensors::deserialize(&x).unwrap();
        let f = read(&p1).unwrap();
        assert_eq!(f.metadata.len(), 17);
        assert!(f.get("a").unwrap().equal(&a));
        assert!(f.get("b").unwrap().equal(&b));
        assert!(f.get("c").unwrap().equal(&c));
    }

    #[test]
    fn a_failed_write_names_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.safetensors");
        std::fs::write(&path, b"old").unwrap();
        // the device fills up half-way through the temporary file
        let err = atomic_write_with(&path, &[7u8; 4096], |f, b| {
            f.write_all(&b[..2048])?;
            Err(std::io::Error::from_raw_os_error(28))
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("state.safetensors"), "{msg}");
        assert!(matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(28)));
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["state.safetensors"]);
        assert_eq!(std::fs::read(&path).unwrap(), b"old", "target untouched");
    }

    #[test]
    fn stale_temporaries_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("checkpoints");
        std::fs::create_dir_all(&sub).unwrap();
        // a pid above any pid_max (2^22) is never alive
        let dead = sub.join("state-00000010.safetensors.tmp4999999");
        let live = dir
            .path()
            .join(format!("manifest.json.tmp{}", std::process::id()));
        let other = dir.path().join("notes.tmpx");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"partial").unwrap();
        }
        if pid_alive(1).is_none() {
            return; // no /proc: nothing is removed
        }
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), vec![dead.clone()]);
        assert!(!dead.exists() && live.exists() && other.exists());
        assert_eq!(temp_pid("a.tmp12"), Some(12));
        assert_eq!(temp_pid(".tmp12"), None);
        assert_eq!(temp_pid("a.tmp"), None);
    }

    #[test]
    fn truncated_and_garbage_files_are_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        write(
            &path,
            &[("a".into(), Tensor::ones([64], (Kind::Float, Device::Cpu)))],
            &BTreeMap::new(),
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("a.safetensors") && err.contains("corrupt"),
            "{err}"
        );
        std::fs::write(&path, b"not a checkpoint").unwrap();
        assert!(matches!(read(&path), Err(Error::Corrupt { .. })));
        assert!(matches!(
            read(&dir.path().join("missing")),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn strict_load_reports_every_mismatch_and_casts_to_the_model_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let mut vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let _w = root.var("w", &[2, 2], nn::Init::Const(0.0));
        let _b = root.var("b", &[2], nn::Init::Const(0.0));
        // File: `w` in float64 (must become float32), `b` with a wrong shape, an extra key, and `c` missing.
        let _c = root.var("c", &[1], nn::Init::Const(0.0));
        let path = dir.path().join("w.safetensors");
        let w64 = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0]).reshape([2, 2]);
        write(
            &path,
            &[
                ("w".into(), w64.shallow_clone()),
                ("b".into(), Tensor::zeros([3], (Kind::Float, Device::Cpu))),
                (
                    "extra".into(),
                    Tensor::zeros([1], (Kind::Float, Device::Cpu)),
                ),
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        let file = read(&path).unwrap();
        let err = load_strict(&mut vs, &file, &[]).unwrap_err().to_string();
        assert!(err.contains("missing keys (1): c"), "{err}");
        assert!(err.contains("unexpected keys (1): extra"), "{err}");
        assert!(err.contains("b: model [2], file [3]"), "{err}");

        // A matching file loads and keeps the variable dtype.
        write(
            &path,
            &[
                ("w".into(), w64.shallow_clone()),
                ("b".into(), Tensor::ones([2], (Kind::Double, Device::Cpu))),
                ("c".into(), Tensor::ones([1], (Kind::Float, Device::Cpu))),
                (
                    "num_batches_tracked".into(),
                    Tensor::zeros([1], (Kind::Int64, Device::Cpu)),
                ),
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        let file = read(&path).unwrap();
        assert!(
            load_strict(&mut vs, &file, &[]).is_err(),
            "ignorable keys must be declared"
        );
        load_strict(&mut vs, &file, &["num_batches_tracked"]).unwrap();
        let w = &vs.variables()["w"];
        assert_eq!(w.kind(), Kind::Float);
        assert!(w.to_kind(Kind::Double).equal(&w64));
    }
}
