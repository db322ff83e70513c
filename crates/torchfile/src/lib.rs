//! Reads tensors out of PyTorch checkpoint files without executing pickled code.
//!
//! Published weights for the networks this project reproduces come as `torch.save` files (zip format
//! since PyTorch 1.6, the legacy stream format before that) or, for EDM, as plain pickles of whole
//! modules whose classes embed their own source code. Loading those in Python runs whatever the file
//! says; tch can read only flat zip-format state dicts. This crate interprets the pickle opcodes
//! itself: globals stay names, only the reducers that rebuild tensors, storages and ordered dicts are
//! understood, and everything else becomes an inert [`Object`] whose state can still be walked.
//!
//! [`load`] returns a [`TorchFile`]; [`TorchFile::state_dict`] flattens it (or a sub-tree such as
//! `ema`) into `nn.Module.state_dict()`-style dotted names with dense [`RawTensor`]s. [`save`] writes
//! the other direction: a zip archive that `torch.load(f, weights_only=True)` accepts.

mod pickle;
mod value;
mod write;

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub use value::{DType, Object, RawTensor, Storage, TensorView, Value};
pub use write::{save, Node};

/// Errors reading a PyTorch file; each names the file and, where it applies, the byte offset or key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not a PyTorch file this reader understands.
    #[error("{origin}: offset {offset}: {reason}")]
    Format {
        /// The file (or `file:entry` inside an archive).
        origin: String,
        /// Byte offset of the failing record.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// A requested key does not exist.
    #[error("{origin}: no entry `{key}`; top-level entries: {available}")]
    MissingKey {
        /// The file.
        origin: String,
        /// The requested path.
        key: String,
        /// What exists instead, comma-separated.
        available: String,
    },
    /// A tensor view is inconsistent with its storage.
    #[error("{origin}: tensor `{name}`: {reason}")]
    Tensor {
        /// The file.
        origin: String,
        /// The tensor's dotted name.
        name: String,
        /// What was wrong.
        reason: String,
    },
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// Which container a file used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `torch.save` zip archive (PyTorch ≥ 1.6).
    Zip,
    /// `torch.save` legacy stream (magic number, pickles, raw storages).
    Legacy,
    /// A plain pickle whose tensors carry their storages as bytes (`pickle.dump` of modules).
    Pickle,
}

/// A loaded file: its root object.
#[derive(Debug)]
pub struct TorchFile {
    /// Where it came from (for messages).
    pub origin: String,
    /// Container format.
    pub format: Format,
    /// The unpickled root object.
    pub root: Value,
}

/// Reads and parses a file.
pub fn load(path: &Path) -> Result<TorchFile> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&bytes, &path.display().to_string())
}

/// Parses the bytes of a PyTorch file; `origin` names it in errors.
pub fn parse(bytes: &[u8], origin: &str) -> Result<TorchFile> {
    let (format, root) = parse_value(bytes, origin, 0)?;
    Ok(TorchFile {
        origin: origin.to_string(),
        format,
        root,
    })
}

const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const MAX_NESTING: usize = 4;

fn format_err(origin: &str, offset: usize, reason: impl Into<String>) -> Error {
    Error::Format {
        origin: origin.to_string(),
        offset,
        reason: reason.into(),
    }
}

fn parse_value(bytes: &[u8], origin: &str, depth: usize) -> Result<(Format, Value)> {
    if depth > MAX_NESTING {
        return Err(format_err(origin, 0, "storages nested too deeply"));
    }
    if bytes.starts_with(b"PK\x03\x04") {
        return parse_zip(bytes, origin, depth).map(|v| (Format::Zip, v));
    }
    if bytes.first() != Some(&0x80) {
        let hint = if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
            "a tar archive: the pre-0.4 PyTorch format is not supported; re-save it with torch.save"
        } else {
            "not a pickle or zip archive (does not start with 0x80 or PK)"
        };
        return Err(format_err(origin, 0, hint));
    }
    let mut plain = Loader::new(origin, depth, Source::Plain);
    let (first, end) = run(bytes, 0, &mut plain)?;
    if matches!(&first, Value::BigInt(b) if b.as_slice() == LEGACY_MAGIC) {
        parse_legacy(bytes, end, origin, depth).map(|v| (Format::Legacy, v))
    } else {
        Ok((Format::Pickle, first))
    }
}

fn run(bytes: &[u8], start: usize, loader: &mut Loader) -> Result<(Value, usize)> {
    pickle::run(bytes, start, loader).map_err(|e| format_err(&loader.origin, e.offset, e.reason))
}

fn parse_legacy(bytes: &[u8], mut pos: usize, origin: &str, depth: usize) -> Result<Value> {
    let mut plain = Loader::new(origin, depth, Source::Plain);
    let (protocol, end) = run(bytes, pos, &mut plain)?;
    if protocol.as_int() != Some(1001) {
        return Err(format_err(
            origin,
            pos,
            format!("legacy protocol {protocol:?}, expected 1001"),
        ));
    }
    pos = end;
    let (sys_info, end) = run(bytes, pos, &mut plain)?;
    if let Some(Value::Bool(false)) = sys_info.get("little_endian") {
        return Err(format_err(
            origin,
            pos,
            "big-endian files are not supported",
        ));
    }
    pos = end;
    let mut loader = Loader::new(origin, depth, Source::Legacy(HashMap::new()));
    let (root, end) = run(bytes, pos, &mut loader)?;
    pos = end;
    let (keys, end) = run(bytes, pos, &mut plain)?;
    pos = end;
    let keys = keys
        .items()
        .ok_or_else(|| format_err(origin, end, "storage key list is not a list"))?;
    let Source::Legacy(storages) = loader.source else {
        unreachable!("legacy loader")
    };
    for key in keys {
        let key = match &key {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            other => {
                return Err(format_err(
                    origin,
                    pos,
                    format!("storage key is a {}", other.kind()),
                ))
            }
        };
        let header = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| format_err(origin, pos, format!("truncated before storage `{key}`")))?;
        let numel = u64::from_le_bytes(header.try_into().expect("8 bytes"));
        pos += 8;
        let storage = storages.get(&key).ok_or_else(|| {
            format_err(
                origin,
                pos,
                format!("data for storage `{key}` that no tensor uses"),
            )
        })?;
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(storage.dtype.size()))
            .filter(|&n| n <= bytes.len() - pos)
            .ok_or_else(|| {
                format_err(
                    origin,
                    pos - 8,
                    format!(
                        "storage `{key}` claims {numel} {} elements, only {} bytes remain",
                        storage.dtype,
                        bytes.len() - pos
                    ),
                )
            })?;
        if storage.bytes.set(bytes[pos..pos + len].to_vec()).is_err() {
            return Err(format_err(
                origin,
                pos,
                format!("storage `{key}` appears twice"),
            ));
        }
        pos += len;
    }
    resolve_lazy(&root, origin)?;
    Ok(root)
}

fn parse_zip(bytes: &[u8], origin: &str, depth: usize) -> Result<Value> {
    let zip_err = |reason: String| format_err(origin, 0, reason);
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| zip_err(format!("zip: {e}")))?;
    let pkl = archive
        .file_names()
        .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .map(str::to_string)
        .ok_or_else(|| zip_err("zip archive without data.pkl: not a torch.save file".into()))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let read_entry = |archive: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str| {
        let mut f = archive
            .by_name(name)
            .map_err(|e| zip_err(format!("entry `{name}`: {e}")))?;
        let mut out = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut out)
            .map_err(|e| zip_err(format!("entry `{name}`: {e}")))?;
        Ok::<_, Error>(out)
    };
    if archive
        .file_names()
        .any(|n| n == format!("{prefix}byteorder"))
    {
        let order = read_entry(&mut archive, &format!("{prefix}byteorder"))?;
        if order != b"little" {
            return Err(zip_err(format!(
                "byte order `{}` is not supported",
                String::from_utf8_lossy(&order)
            )));
        }
    }
    let data = read_entry(&mut archive, &pkl)?;
    let mut loader = Loader::new(
        &format!("{origin}:{pkl}"),
        depth,
        Source::Zip {
            archive,
            prefix,
            loaded: HashMap::new(),
        },
    );
    let (root, _) = run(&data, 0, &mut loader)?;
    Ok(root)
}

/// Checks that every legacy storage received its data.
fn resolve_lazy(root: &Value, origin: &str) -> Result<()> {
    let mut missing = None;
    visit_tensors(root, &mut |t| {
        if t.storage.bytes.get().is_none() {
            missing = Some(());
        }
    });
    match missing {
        Some(()) => Err(format_err(origin, 0, "a tensor's storage has no data")),
        None => Ok(()),
    }
}

fn visit_tensors(v: &Value, f: &mut dyn FnMut(&TensorView)) {
    fn go(v: &Value, f: &mut dyn FnMut(&TensorView), depth: usize) {
        if depth > 256 {
            return;
        }
        match v {
            Value::Tensor(t) => f(t),
            Value::Tuple(items) => items.iter().for_each(|x| go(x, f, depth + 1)),
            Value::List(items) => items.borrow().iter().for_each(|x| go(x, f, depth + 1)),
            Value::Dict(d) => d.borrow().iter().for_each(|(_, x)| go(x, f, depth + 1)),
            Value::Object(o) => {
                let o = o.borrow();
                go(&o.args, f, depth + 1);
                if let Some(s) = &o.state {
                    go(s, f, depth + 1);
                }
                o.items.iter().for_each(|x| go(x, f, depth + 1));
                o.entries.iter().for_each(|(_, x)| go(x, f, depth + 1));
            }
            _ => {}
        }
    }
    go(v, f, 0)
}

enum Source<'a> {
    /// No persistent ids allowed (plain pickles; storages arrive as bytes).
    Plain,
    /// Legacy stream: storages are filled in after the pickle.
    Legacy(HashMap<String, Rc<Storage>>),
    /// Zip archive: storages are entries `<prefix>data/<key>`.
    Zip {
        archive: zip::ZipArchive<Cursor<&'a [u8]>>,
        prefix: String,
        loaded: HashMap<String, Rc<Storage>>,
    },
}

struct Loader<'a> {
    origin: String,
    depth: usize,
    source: Source<'a>,
}

impl<'a> Loader<'a> {
    fn new(origin: &str, depth: usize, source: Source<'a>) -> Self {
        Loader {
            origin: origin.to_string(),
            depth,
            source,
        }
    }
}

fn storage_dtype(v: &Value) -> std::result::Result<DType, String> {
    match v {
        Value::Global(g) if g.1 == "UntypedStorage" => Ok(DType::U8),
        Value::Global(g) => DType::from_storage_name(&g.1)
            .ok_or_else(|| format!("unsupported storage type {}.{}", g.0, g.1)),
        Value::Str(s) => DType::from_storage_name(s.rsplit('.').next().unwrap_or(s))
            .ok_or_else(|| format!("unsupported storage type {s}")),
        other => Err(format!("storage type is a {}", other.kind())),
    }
}

fn usize_list(v: &Value, what: &str) -> std::result::Result<Vec<usize>, String> {
    v.items()
        .ok_or_else(|| format!("{what} is a {}, expected a tuple", v.kind()))?
        .iter()
        .map(|x| {
            x.as_int()
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(|| format!("{what} holds {x:?}, expected a non-negative int"))
        })
        .collect()
}

impl pickle::Hooks for Loader<'_> {
    fn persistent_load(&mut self, pid: Value) -> std::result::Result<Value, String> {
        let items = pid
            .items()
            .ok_or_else(|| format!("persistent id is a {}", pid.kind()))?;
        if items.first().and_then(Value::as_str) != Some("storage") || items.len() < 5 {
            return Err(format!("unsupported persistent id {pid:?}"));
        }
        let dtype = storage_dtype(&items[1])?;
        let key = match &items[2] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            other => return Err(format!("storage key is a {}", other.kind())),
        };
        let numel = items[4]
            .as_int()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or("storage size is not a non-negative int")?;
        match &mut self.source {
            Source::Plain => Err("persistent storage reference in a plain pickle".into()),
            Source::Legacy(map) => {
                if items.len() > 5 && !matches!(items[5], Value::None) {
                    return Err("storage views (files from PyTorch < 0.4) are not supported".into());
                }
                // The bytes follow the pickle; they are filled in by `parse_legacy`.
                let s = map
                    .entry(key)
                    .or_insert_with(|| Rc::new(Storage::empty(dtype)))
                    .clone();
                Ok(Value::Storage(s))
            }
            Source::Zip {
                archive,
                prefix,
                loaded,
            } => {
                if let Some(s) = loaded.get(&key) {
                    return Ok(Value::Storage(s.clone()));
                }
                let name = format!("{prefix}data/{key}");
                let mut f = archive
                    .by_name(&name)
                    .map_err(|e| format!("storage entry `{name}`: {e}"))?;
                let mut bytes = Vec::with_capacity(f.size() as usize);
                f.read_to_end(&mut bytes)
                    .map_err(|e| format!("storage entry `{name}`: {e}"))?;
                let want = numel.saturating_mul(dtype.size());
                if bytes.len() < want {
                    return Err(format!(
                        "storage entry `{name}` has {} bytes, its header says {numel} {dtype} elements ({want} bytes)",
                        bytes.len()
                    ));
                }
                bytes.truncate(want);
                let s = Rc::new(Storage::with_bytes(dtype, bytes));
                loaded.insert(key, s.clone());
                Ok(Value::Storage(s))
            }
        }
    }

    fn reduce(
        &mut self,
        module: &str,
        name: &str,
        args: &Value,
    ) -> std::result::Result<Option<Value>, String> {
        let a = args.items().unwrap_or_default();
        let v = match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                if a.len() < 4 {
                    return Err(format!("expects at least 4 arguments, got {}", a.len()));
                }
                let storage = match &a[0] {
                    Value::Storage(s) => s.clone(),
                    other => return Err(format!("storage argument is a {}", other.kind())),
                };
                let offset = a[1]
                    .as_int()
                    .and_then(|i| usize::try_from(i).ok())
                    .ok_or("storage offset is not a non-negative int")?;
                let shape = usize_list(&a[2], "size")?;
                let stride = usize_list(&a[3], "stride")?;
                if shape.len() != stride.len() {
                    return Err(format!(
                        "size {shape:?} and stride {stride:?} differ in rank"
                    ));
                }
                Value::Tensor(Rc::new(TensorView {
                    storage,
                    offset,
                    shape,
                    stride,
                }))
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                match a.first() {
                    Some(t @ Value::Tensor(_)) => t.clone(),
                    _ => return Ok(None),
                }
            }
            ("torch._tensor", "_rebuild_from_type_v2" | "_rebuild_from_type") => {
                let (Some(Value::Global(f)), Some(inner)) = (a.first(), a.get(2)) else {
                    return Ok(None);
                };
                let (m, n) = (f.0.clone(), f.1.clone());
                return self.reduce(&m, &n, inner);
            }
            ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => {
                let pairs = a
                    .first()
                    .and_then(Value::items)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| {
                        let kv = p.items()?;
                        (kv.len() == 2).then(|| (kv[0].clone(), kv[1].clone()))
                    })
                    .collect();
                Value::Dict(Rc::new(std::cell::RefCell::new(pairs)))
            }
            ("builtins" | "__builtin__", "set" | "frozenset" | "list") => Value::List(Rc::new(
                std::cell::RefCell::new(a.first().and_then(Value::items).unwrap_or_default()),
            )),
            ("torch", "Size") | ("builtins" | "__builtin__", "tuple") => Value::Tuple(Rc::new(
                a.first().and_then(Value::items).unwrap_or_default(),
            )),
            ("torch", "device") => a.first().cloned().unwrap_or(Value::None),
            ("torch.storage", "_load_from_bytes") => {
                let Some(Value::Bytes(b)) = a.first() else {
                    return Err("expects bytes".into());
                };
                let origin = format!("{} (embedded storage)", self.origin);
                let (_, v) = parse_value(b, &origin, self.depth + 1).map_err(|e| e.to_string())?;
                match v {
                    Value::Storage(_) | Value::Tensor(_) => v,
                    other => return Err(format!("embedded bytes hold a {}", other.kind())),
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(v))
    }
}

/// The dict that describes an object: a module's `__dict__`, a persistence meta's `state`, or a
/// plain dict.
fn object_dict(v: &Value) -> Option<Value> {
    match v {
        Value::Dict(_) => Some(v.clone()),
        Value::Object(o) => {
            let o = o.borrow();
            // EDM's `persistence` classes: `_reconstruct_persistent_obj(meta)`, state in meta
            if let Value::Global(g) = &o.callable {
                if g.1 == "_reconstruct_persistent_obj" {
                    if let Some(state) = o.args.items().and_then(|a| a.first()?.get("state")) {
                        return object_dict(&state);
                    }
                }
            }
            match &o.state {
                Some(s @ Value::Dict(_)) => Some(s.clone()),
                // `(dict, slots)` state
                Some(Value::Tuple(t)) => t.iter().find(|x| matches!(x, Value::Dict(_))).cloned(),
                _ if !o.entries.is_empty() => Some(Value::Dict(Rc::new(std::cell::RefCell::new(
                    o.entries.clone(),
                )))),
                _ => None,
            }
        }
        _ => None,
    }
}

fn key_string(k: &Value) -> Option<String> {
    match k {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl TorchFile {
    /// The names directly under the root (dict keys or module attributes).
    pub fn top_level_keys(&self) -> Vec<String> {
        children(&self.root).into_iter().map(|(k, _)| k).collect()
    }

    /// The sub-tree at a dotted path (`ema`, `model.enc`), through dicts, lists and modules.
    pub fn select(&self, path: &str) -> Result<Value> {
        let mut cur = self.root.clone();
        for part in path.split('.').filter(|p| !p.is_empty()) {
            let next = children(&cur).into_iter().find(|(k, _)| k == part);
            cur = match next {
                Some((_, v)) => v,
                None => {
                    return Err(Error::MissingKey {
                        origin: self.origin.clone(),
                        key: path.to_string(),
                        available: self.top_level_keys().join(", "),
                    })
                }
            };
        }
        Ok(cur)
    }

    /// All tensors under `path` (or the root) with `nn.Module.state_dict()`-style dotted names, in
    /// file order. Non-tensor leaves (step counters, configs) are skipped.
    pub fn state_dict(&self, path: Option<&str>) -> Result<Vec<(String, RawTensor)>> {
        let start = match path {
            Some(p) => self.select(p)?,
            None => self.root.clone(),
        };
        let mut out = Vec::new();
        self.flatten(&start, String::new(), 0, &mut out)?;
        Ok(out)
    }

    fn flatten(
        &self,
        v: &Value,
        prefix: String,
        depth: usize,
        out: &mut Vec<(String, RawTensor)>,
    ) -> Result<()> {
        if depth > 128 {
            return Err(format_err(
                &self.origin,
                0,
                format!("`{prefix}` nests more than 128 levels (a cyclic structure?)"),
            ));
        }
        if let Value::Tensor(t) = v {
            let raw = t.materialize().map_err(|reason| Error::Tensor {
                origin: self.origin.clone(),
                name: prefix.clone(),
                reason,
            })?;
            out.push((prefix, raw));
            return Ok(());
        }
        for (k, child) in children(v) {
            self.flatten(&child, join(&prefix, &k), depth + 1, out)?;
        }
        Ok(())
    }
}

/// Named children of a value: dict entries, list items, or a module's parameters, persistent
/// buffers and submodules (in `state_dict` order).
fn children(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::List(_) | Value::Tuple(_) => v
            .items()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, x)| (i.to_string(), x))
            .collect(),
        _ => {
            let Some(Value::Dict(d)) = object_dict(v) else {
                return Vec::new();
            };
            let d = d.borrow();
            let get = |name: &str| {
                d.iter()
                    .find(|(k, _)| k.as_str() == Some(name))
                    .map(|(_, v)| v.clone())
            };
            let entries = |v: Option<Value>| match v {
                Some(Value::Dict(e)) => e
                    .borrow()
                    .iter()
                    .filter_map(|(k, v)| Some((key_string(k)?, v.clone())))
                    .filter(|(_, v)| !matches!(v, Value::None))
                    .collect::<Vec<_>>(),
                _ => Vec::new(),
            };
            if let Some(params) = get("_parameters").filter(|_| matches!(v, Value::Object(_))) {
                let skip: Vec<String> = get("_non_persistent_buffers_set")
                    .and_then(|s| s.items())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect();
                let mut out = entries(Some(params));
                out.extend(
                    entries(get("_buffers"))
                        .into_iter()
                        .filter(|(k, _)| !skip.contains(k)),
                );
                out.extend(entries(get("_modules")));
                out
            } else {
                d.iter()
                    .filter_map(|(k, v)| Some((key_string(k)?, v.clone())))
                    .collect()
            }
        }
    }
}
