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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub use value::{DType, Object, RawTensor, Storage, TensorView, Value, MAX_REPEATED_VIEW_BYTES};
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

/// Deepest nesting of containers (dicts, lists, modules) below the walked root; deeper values,
/// and cyclic ones, are refused.
pub const MAX_DEPTH: usize = 128;
/// Most values one walk of a file visits; a sub-tree shared through memo references counts once
/// per path that reaches it, so a few hundred bytes cannot ask for an exponential walk.
pub const MAX_VISITS: usize = 1 << 22;
/// Most tensors one [`TorchFile::state_dict`] returns.
pub const MAX_TENSORS: usize = 100_000;
/// Deflate's largest expansion (one 258-byte match per two bits, about 1032:1).
const MAX_DEFLATE_RATIO: u64 = 1032;
/// Largest buffer reserved before a compressed member's bytes arrive.
const INITIAL_CAPACITY: u64 = 64 << 20;

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
    let mut members = Members::new(bytes.len() as u64);
    if archive
        .file_names()
        .any(|n| n == format!("{prefix}byteorder"))
    {
        let order = members
            .read(&mut archive, &format!("{prefix}byteorder"), None)
            .map_err(zip_err)?;
        if order != b"little" {
            return Err(zip_err(format!(
                "byte order `{}` is not supported",
                String::from_utf8_lossy(&order)
            )));
        }
    }
    let data = members.read(&mut archive, &pkl, None).map_err(zip_err)?;
    let mut loader = Loader::new(
        &format!("{origin}:{pkl}"),
        depth,
        Source::Zip {
            archive,
            prefix,
            loaded: HashMap::new(),
            members,
        },
    );
    let (root, _) = run(&data, 0, &mut loader)?;
    Ok(root)
}

/// Reads members of one in-memory archive. A member's header sizes are trusted only as far as the
/// archive justifies them: a stored member holds at most its bytes in the file, a deflated one at
/// most [`MAX_DEFLATE_RATIO`] times those; and no two members may share bytes (overlapping members
/// would let a small file decompress the same data many times).
struct Members {
    archive_len: u64,
    /// Data ranges already read: start → (end, member name).
    ranges: BTreeMap<u64, (u64, String)>,
}

impl Members {
    fn new(archive_len: u64) -> Self {
        Members {
            archive_len,
            ranges: BTreeMap::new(),
        }
    }

    /// Member `name`, at most `want` bytes of it (all of it when `None`).
    fn read(
        &mut self,
        archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
        name: &str,
        want: Option<usize>,
    ) -> std::result::Result<Vec<u8>, String> {
        let f = archive
            .by_name(name)
            .map_err(|e| format!("entry `{name}`: {e}"))?;
        let start = f.data_start();
        let packed = f
            .compressed_size()
            .min(self.archive_len.saturating_sub(start));
        let end = start + packed;
        let before = self.ranges.range(..end).next_back();
        if let Some((&s, (e, other))) = before {
            if *e > start && !(s == start && other == name) {
                return Err(format!(
                    "entry `{name}` (bytes {start}..{end}) overlaps entry `{other}` (bytes {s}..{e}): not a torch.save archive"
                ));
            }
        }
        self.ranges.insert(start, (end, name.to_string()));
        let justified = match f.compression() {
            zip::CompressionMethod::Stored => packed,
            _ => packed.saturating_mul(MAX_DEFLATE_RATIO),
        };
        let limit = match want {
            Some(w) if w as u64 > justified => {
                return Err(format!(
                    "entry `{name}` ({packed} bytes, {:?}) cannot hold the {w} bytes its header asks for",
                    f.compression()
                ))
            }
            Some(w) => w as u64,
            None => justified,
        };
        let reserve = match f.compression() {
            zip::CompressionMethod::Stored => limit,
            _ => limit.min(INITIAL_CAPACITY),
        };
        let mut out = Vec::with_capacity(reserve as usize);
        f.take(limit.saturating_add(u64::from(want.is_none())))
            .read_to_end(&mut out)
            .map_err(|e| format!("entry `{name}`: {e}"))?;
        if want.is_none() && out.len() as u64 > limit {
            return Err(format!(
                "entry `{name}` decompresses to more than {limit} bytes, more than its {packed} compressed bytes can hold"
            ));
        }
        Ok(out)
    }
}

/// Checks that every legacy storage received its data.
fn resolve_lazy(root: &Value, origin: &str) -> Result<()> {
    let mut missing = false;
    visit_tensors(root, origin, &mut |t| {
        if t.storage.bytes.get().is_none() {
            missing = true;
        }
    })?;
    if missing {
        return Err(format_err(origin, 0, "a tensor's storage has no data"));
    }
    Ok(())
}

/// Calls `f` on every tensor reachable from `v` (through objects' arguments and state too),
/// iteratively, within [`MAX_DEPTH`] and [`MAX_VISITS`].
fn visit_tensors(v: &Value, origin: &str, f: &mut dyn FnMut(&TensorView)) -> Result<()> {
    let mut stack = vec![(v.clone(), 0usize)];
    let mut visits = 0usize;
    while let Some((v, depth)) = stack.pop() {
        visits += 1;
        if visits > MAX_VISITS {
            return Err(format_err(
                origin,
                0,
                format!("more than {MAX_VISITS} values to walk (sub-trees shared by many paths?)"),
            ));
        }
        let mut kids = Vec::new();
        match &v {
            Value::Tensor(t) => f(t),
            Value::Tuple(items) => kids.extend(items.iter().cloned()),
            Value::List(items) => kids.extend(items.borrow().iter().cloned()),
            Value::Dict(d) => kids.extend(d.borrow().iter().map(|(_, x)| x.clone())),
            Value::Object(o) => {
                let o = o.borrow();
                kids.push(o.args.clone());
                kids.extend(o.state.clone());
                kids.extend(o.items.iter().cloned());
                kids.extend(o.entries.iter().map(|(_, x)| x.clone()));
            }
            _ => {}
        }
        if !kids.is_empty() && depth >= MAX_DEPTH {
            return Err(format_err(
                origin,
                0,
                format!("values nest more than {MAX_DEPTH} levels (a cyclic structure?)"),
            ));
        }
        stack.extend(kids.into_iter().rev().map(|x| (x, depth + 1)));
    }
    Ok(())
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
        members: Members,
    },
}

struct Loader<'a> {
    origin: String,
    depth: usize,
    source: Source<'a>,
    /// Embedded storages already parsed, by the address of their bytes (held, so it stays theirs).
    embedded: HashMap<usize, (Rc<Vec<u8>>, Value)>,
}

impl<'a> Loader<'a> {
    fn new(origin: &str, depth: usize, source: Source<'a>) -> Self {
        Loader {
            origin: origin.to_string(),
            depth,
            source,
            embedded: HashMap::new(),
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
                members,
            } => {
                if let Some(s) = loaded.get(&key) {
                    return Ok(Value::Storage(s.clone()));
                }
                let name = format!("{prefix}data/{key}");
                let want = numel.checked_mul(dtype.size()).ok_or_else(|| {
                    format!("storage `{key}`: {numel} {dtype} elements overflow a byte count")
                })?;
                let bytes = members
                    .read(archive, &name, Some(want))
                    .map_err(|e| format!("storage {e}"))?;
                if bytes.len() < want {
                    return Err(format!(
                        "storage entry `{name}` has {} bytes, its header says {numel} {dtype} elements ({want} bytes)",
                        bytes.len()
                    ));
                }
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
                // `(func, type, args, state)`: unwrapped iteratively (its args may be itself)
                let mut a = a;
                for _ in 0..MAX_NESTING {
                    let (Some(Value::Global(f)), Some(inner)) = (a.first(), a.get(2)) else {
                        return Ok(None);
                    };
                    let (m, n) = (f.0.clone(), f.1.clone());
                    if m == "torch._tensor" && n.starts_with("_rebuild_from_type") {
                        a = inner.items().unwrap_or_default();
                        continue;
                    }
                    let inner = inner.clone();
                    return self.reduce(&m, &n, &inner);
                }
                return Err("tensor subclass wrappers nested too deeply".into());
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
                let at = Rc::as_ptr(b) as usize;
                if let Some((_, v)) = self.embedded.get(&at) {
                    return Ok(Some(v.clone()));
                }
                let origin = format!("{} (embedded storage)", self.origin);
                let (_, v) = parse_value(b, &origin, self.depth + 1).map_err(|e| e.to_string())?;
                match v {
                    Value::Storage(_) | Value::Tensor(_) => {
                        self.embedded.insert(at, (b.clone(), v.clone()));
                        v
                    }
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
    let mut cur = v.clone();
    // EDM's `persistence` classes: `_reconstruct_persistent_obj(meta)`, state in meta; followed
    // iteratively, a bounded number of times (the state may lead back to the object)
    for _ in 0..MAX_DEPTH {
        let next = match &cur {
            Value::Dict(_) => return Some(cur),
            Value::Object(o) => {
                let o = o.borrow();
                let persistent = match &o.callable {
                    Value::Global(g) if g.1 == "_reconstruct_persistent_obj" => {
                        o.args.items().and_then(|a| a.first()?.get("state"))
                    }
                    _ => None,
                };
                match persistent {
                    Some(state) => state,
                    None => {
                        return match &o.state {
                            Some(s @ Value::Dict(_)) => Some(s.clone()),
                            // `(dict, slots)` state
                            Some(Value::Tuple(t)) => {
                                t.iter().find(|x| matches!(x, Value::Dict(_))).cloned()
                            }
                            _ if !o.entries.is_empty() => Some(Value::Dict(Rc::new(
                                std::cell::RefCell::new(o.entries.clone()),
                            ))),
                            _ => None,
                        };
                    }
                }
            }
            _ => return None,
        };
        cur = next;
    }
    None
}

fn key_string(k: &Value) -> Option<String> {
    match k {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
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
    /// file order. Non-tensor leaves (step counters, configs) are skipped. The walk is iterative and
    /// bounded: [`MAX_DEPTH`] levels, [`MAX_VISITS`] values, [`MAX_TENSORS`] tensors, and dense
    /// copies that add up to at most the storages' bytes plus [`MAX_REPEATED_VIEW_BYTES`].
    pub fn state_dict(&self, path: Option<&str>) -> Result<Vec<(String, RawTensor)>> {
        let start = match path {
            Some(p) => self.select(p)?,
            None => self.root.clone(),
        };
        let mut out = Vec::new();
        self.flatten(&start, &mut out)?;
        Ok(out)
    }

    fn flatten(&self, start: &Value, out: &mut Vec<(String, RawTensor)>) -> Result<()> {
        let mut stack: Vec<(Option<Rc<Name>>, Value, usize)> = vec![(None, start.clone(), 0)];
        let mut visits = 0usize;
        let mut storages = HashSet::new();
        let (mut storage_bytes, mut dense_bytes) = (0usize, 0usize);
        let too_many = |what: String| format_err(&self.origin, 0, what);
        while let Some((name, v, depth)) = stack.pop() {
            if let Value::Tensor(t) = &v {
                let name = Name::full(&name);
                if out.len() >= MAX_TENSORS {
                    return Err(too_many(format!(
                        "more than {MAX_TENSORS} tensors (the same tensors reached by many paths?)"
                    )));
                }
                if storages.insert(Rc::as_ptr(&t.storage) as usize) {
                    storage_bytes = storage_bytes.saturating_add(t.storage.data().len());
                }
                let bytes = t.dense_bytes().unwrap_or(usize::MAX);
                let allowed = storage_bytes.saturating_add(MAX_REPEATED_VIEW_BYTES);
                // (a view past its own bound is refused by `materialize`, with its numbers)
                let own = t.storage.data().len().max(MAX_REPEATED_VIEW_BYTES);
                if bytes <= own && dense_bytes.saturating_add(bytes) > allowed {
                    return Err(Error::Tensor {
                        origin: self.origin.clone(),
                        name,
                        reason: format!(
                            "the tensors so far copy {dense_bytes} bytes and this one {bytes} more, past the {storage_bytes} bytes of their storages plus {MAX_REPEATED_VIEW_BYTES} (the same data reached by many paths?)"
                        ),
                    });
                }
                let raw = t.materialize().map_err(|reason| Error::Tensor {
                    origin: self.origin.clone(),
                    name: name.clone(),
                    reason,
                })?;
                dense_bytes += raw.data.len();
                out.push((name, raw));
                continue;
            }
            let kids = children(&v);
            if kids.is_empty() {
                continue;
            }
            if depth >= MAX_DEPTH {
                return Err(too_many(format!(
                    "`{}` nests more than {MAX_DEPTH} levels (a cyclic structure?)",
                    Name::full(&name)
                )));
            }
            visits += kids.len();
            if visits > MAX_VISITS {
                return Err(too_many(format!(
                    "more than {MAX_VISITS} values on the way to the tensors (sub-trees shared by many paths?)"
                )));
            }
            for (k, child) in kids.into_iter().rev() {
                let node = Name {
                    parent: name.clone(),
                    key: k,
                };
                stack.push((Some(Rc::new(node)), child, depth + 1));
            }
        }
        Ok(())
    }
}

/// A dotted name under construction, shared by the entries below it.
struct Name {
    parent: Option<Rc<Name>>,
    key: String,
}

impl Name {
    fn full(name: &Option<Rc<Name>>) -> String {
        let mut parts = Vec::new();
        let mut cur = name.as_deref();
        while let Some(n) = cur {
            parts.push(n.key.as_str());
            cur = n.parent.as_deref();
        }
        parts.reverse();
        parts.join(".")
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
            let Some(dict) = object_dict(v) else {
                return Vec::new();
            };
            let Value::Dict(d) = &dict else {
                return Vec::new();
            };
            let d = d.borrow();
            let get = |name: &str| {
                d.iter()
                    .find(|(k, _)| k.as_str() == Some(name))
                    .map(|(_, v)| v.clone())
            };
            let entries = |v: Option<Value>| match &v {
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
