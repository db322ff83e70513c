//! Writing `torch.save`-compatible zip files (loadable with `torch.load(f, weights_only=True)`).

use std::io::{Seek, Write};
use std::path::Path;

use crate::value::{DType, RawTensor};
use crate::{Error, Result};

/// A tree to save: what a state dict or a nested checkpoint is made of.
#[derive(Clone, Debug)]
pub enum Node {
    /// A dict with string keys, in order.
    Dict(Vec<(String, Node)>),
    /// A list.
    List(Vec<Node>),
    /// An int.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A tensor (dense, row-major).
    Tensor(RawTensor),
}

fn storage_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "FloatStorage",
        DType::F64 => "DoubleStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::I64 => "LongStorage",
        DType::I32 => "IntStorage",
        DType::I16 => "ShortStorage",
        DType::I8 => "CharStorage",
        DType::U8 => "ByteStorage",
        DType::Bool => "BoolStorage",
    }
}

struct Pickler<'a> {
    out: Vec<u8>,
    storages: Vec<&'a RawTensor>,
}

impl<'a> Pickler<'a> {
    fn int(&mut self, v: i64) {
        if let Ok(small) = i32::try_from(v) {
            self.out.push(b'J');
            self.out.extend_from_slice(&small.to_le_bytes());
        } else {
            self.out.extend_from_slice(&[0x8a, 8]);
            self.out.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn str(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }
    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn int_tuple(&mut self, v: impl IntoIterator<Item = i64>) {
        self.out.push(b'(');
        for x in v {
            self.int(x);
        }
        self.out.push(b't');
    }
    fn node(&mut self, n: &'a Node) {
        match n {
            Node::Dict(entries) => {
                self.out.push(b'}');
                if !entries.is_empty() {
                    self.out.push(b'(');
                    for (k, v) in entries {
                        self.str(k);
                        self.node(v);
                    }
                    self.out.push(b'u');
                }
            }
            Node::List(items) => {
                self.out.push(b']');
                if !items.is_empty() {
                    self.out.push(b'(');
                    for v in items {
                        self.node(v);
                    }
                    self.out.push(b'e');
                }
            }
            Node::Int(i) => self.int(*i),
            Node::Float(f) => {
                self.out.push(b'G');
                self.out.extend_from_slice(&f.to_bits().to_be_bytes());
            }
            Node::Str(s) => self.str(s),
            Node::Tensor(t) => {
                let key = self.storages.len();
                self.storages.push(t);
                self.global("torch._utils", "_rebuild_tensor_v2");
                self.out.push(b'(');
                // persistent id: ('storage', <Type>Storage, key, 'cpu', numel)
                self.out.push(b'(');
                self.str("storage");
                self.global("torch", storage_name(t.dtype));
                self.str(&key.to_string());
                self.str("cpu");
                self.int(t.numel() as i64);
                self.out.extend_from_slice(b"tQ");
                self.int(0);
                self.int_tuple(t.shape.iter().map(|&s| s as i64));
                let mut stride = vec![1i64; t.shape.len()];
                for d in (0..t.shape.len().saturating_sub(1)).rev() {
                    stride[d] = stride[d + 1] * t.shape[d + 1] as i64;
                }
                self.int_tuple(stride);
                self.out.push(0x89);
                self.global("collections", "OrderedDict");
                self.out.extend_from_slice(b")R");
                self.out.extend_from_slice(b"tR");
            }
        }
    }
}

/// Writes `root` as a `torch.save` zip archive (via a temporary file renamed into place).
pub fn save(path: &Path, root: &Node) -> Result<()> {
    for t in tensors(root) {
        if t.data.len() != t.numel() * t.dtype.size() {
            return Err(Error::Tensor {
                origin: path.display().to_string(),
                name: format!("{:?}", t.shape),
                reason: format!(
                    "{} bytes for {} {} elements",
                    t.data.len(),
                    t.numel(),
                    t.dtype
                ),
            });
        }
    }
    let mut p = Pickler {
        out: vec![0x80, 2],
        storages: Vec::new(),
    };
    p.node(root);
    p.out.push(b'.');
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let zip_io = |e: zip::result::ZipError| io(std::io::Error::other(e.to_string()));
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let mut zip = zip::ZipWriter::new(file);
    let stem = "archive";
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64);
    let entry = |zip: &mut zip::ZipWriter<std::fs::File>, name: &str, bytes: &[u8]| {
        zip.start_file(format!("{stem}/{name}"), opts)
            .map_err(zip_io)?;
        zip.write_all(bytes).map_err(io)
    };
    entry(&mut zip, "data.pkl", &p.out)?;
    entry(&mut zip, "byteorder", b"little")?;
    for (i, t) in p.storages.iter().enumerate() {
        entry(&mut zip, &format!("data/{i}"), &t.data)?;
    }
    entry(&mut zip, "version", b"3\n")?;
    let mut file = zip.finish().map_err(zip_io)?;
    file.flush().map_err(io)?;
    file.rewind().map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)
}

fn tensors(n: &Node) -> Vec<&RawTensor> {
    match n {
        Node::Tensor(t) => vec![t],
        Node::Dict(e) => e.iter().flat_map(|(_, v)| tensors(v)).collect(),
        Node::List(items) => items.iter().flat_map(tensors).collect(),
        _ => Vec::new(),
    }
}
