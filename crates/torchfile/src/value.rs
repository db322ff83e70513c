//! Unpickled values: Python data, opaque objects, and tensors.

use std::cell::{OnceCell, RefCell};
use std::fmt;
use std::rc::Rc;

/// Element types of PyTorch storages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// float32
    F32,
    /// float64
    F64,
    /// float16
    F16,
    /// bfloat16
    BF16,
    /// int64
    I64,
    /// int32
    I32,
    /// int16
    I16,
    /// int8
    I8,
    /// uint8
    U8,
    /// bool (one byte each)
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// From a storage class name (`FloatStorage`, …) as pickled by `torch.save`.
    pub fn from_storage_name(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        };
        f.write_str(s)
    }
}

/// A storage: a flat typed buffer that tensors view.
#[derive(Debug)]
pub struct Storage {
    /// Element type.
    pub dtype: DType,
    /// Raw little-endian bytes; set once (legacy files store them after the pickle).
    pub bytes: OnceCell<Vec<u8>>,
}

impl Storage {
    pub(crate) fn empty(dtype: DType) -> Self {
        Storage {
            dtype,
            bytes: OnceCell::new(),
        }
    }

    pub(crate) fn with_bytes(dtype: DType, bytes: Vec<u8>) -> Self {
        let s = Storage::empty(dtype);
        let _ = s.bytes.set(bytes);
        s
    }

    /// The bytes, or an empty slice if they were never read.
    pub fn data(&self) -> &[u8] {
        self.bytes.get().map(Vec::as_slice).unwrap_or(&[])
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data().len() / self.dtype.size()
    }
}

/// A strided view of a storage, as `torch._utils._rebuild_tensor_v2` describes it.
#[derive(Clone, Debug)]
pub struct TensorView {
    /// The viewed storage (shared between views of one tensor).
    pub storage: Rc<Storage>,
    /// Offset in elements.
    pub offset: usize,
    /// Sizes.
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// A tensor copied out of a file: dense, row-major, little-endian.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    /// Element type.
    pub dtype: DType,
    /// Sizes.
    pub shape: Vec<usize>,
    /// `shape.iter().product() * dtype.size()` bytes.
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f64 (any dtype); for tests and small tensors.
    pub fn to_f64(&self) -> Vec<f64> {
        let s = self.dtype.size();
        self.data
            .chunks_exact(s)
            .map(|c| match self.dtype {
                DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                DType::F64 => f64::from_le_bytes(c.try_into().expect("8 bytes")),
                DType::F16 => f16_to_f32(u16::from_le_bytes([c[0], c[1]])) as f64,
                DType::BF16 => {
                    f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64
                }
                DType::I64 => i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64,
                DType::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                DType::I16 => i16::from_le_bytes([c[0], c[1]]) as f64,
                DType::I8 => c[0] as i8 as f64,
                DType::U8 | DType::Bool => c[0] as f64,
            })
            .collect()
    }
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: value = f · 2^-24
            let v = f as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Most bytes a view that repeats elements (stride 0, overlapping strides) may materialise beyond
/// the size of its storage.
pub const MAX_REPEATED_VIEW_BYTES: usize = 256 << 20;

impl TensorView {
    /// Elements of the view (`None` if the product overflows).
    pub fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n))
    }

    /// Bytes of the dense copy that [`TensorView::materialize`] makes (`None` on overflow).
    pub fn dense_bytes(&self) -> Option<usize> {
        self.numel()?.checked_mul(self.storage.dtype.size())
    }

    /// Copies the view into a dense row-major tensor; fails if it reads outside its storage or
    /// would materialise more than its storage holds plus [`MAX_REPEATED_VIEW_BYTES`].
    pub fn materialize(&self) -> Result<RawTensor, String> {
        let size = self.storage.dtype.size();
        let have = self.storage.numel();
        let describe = || {
            format!(
                "view (offset {}, shape {:?}, stride {:?})",
                self.offset, self.shape, self.stride
            )
        };
        let numel = self
            .numel()
            .ok_or_else(|| format!("{}: element count overflows", describe()))?;
        if numel == 0 {
            return Ok(RawTensor {
                dtype: self.storage.dtype,
                shape: self.shape.clone(),
                data: Vec::new(),
            });
        }
        let last = self
            .shape
            .iter()
            .zip(&self.stride)
            .map(|(&n, &s)| (n - 1).saturating_mul(s))
            .fold(self.offset, usize::saturating_add);
        if last >= have {
            return Err(format!(
                "{} reads element {last} of a storage with {have}",
                describe()
            ));
        }
        let bytes = numel.saturating_mul(size);
        let storage_bytes = have * size;
        if bytes > storage_bytes.max(MAX_REPEATED_VIEW_BYTES) {
            return Err(format!(
                "{} would materialise {bytes} bytes from a storage of {storage_bytes} bytes \
                 (views that repeat elements may hold at most {MAX_REPEATED_VIEW_BYTES})",
                describe()
            ));
        }
        let contiguous = {
            let mut expect = 1usize;
            let mut ok = true;
            for (&n, &s) in self.shape.iter().zip(&self.stride).rev() {
                if n != 1 && s != expect {
                    ok = false;
                }
                expect = expect.saturating_mul(n);
            }
            ok
        };
        let src = self.storage.data();
        // every index below is at most `last`, checked above
        let data = if contiguous {
            src[self.offset * size..(self.offset + numel) * size].to_vec()
        } else {
            let mut out = Vec::with_capacity(bytes);
            let mut idx = vec![0usize; self.shape.len()];
            for _ in 0..numel {
                let e = self.offset
                    + idx
                        .iter()
                        .zip(&self.stride)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                out.extend_from_slice(&src[e * size..(e + 1) * size]);
                for d in (0..idx.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < self.shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
            out
        };
        Ok(RawTensor {
            dtype: self.storage.dtype,
            shape: self.shape.clone(),
            data,
        })
    }
}

/// An object the machine did not interpret: its constructor, arguments and pickled state.
#[derive(Debug)]
pub struct Object {
    /// The class or function that would have built it (usually a [`Value::Global`]).
    pub callable: Value,
    /// Its arguments.
    pub args: Value,
    /// `__setstate__` / `__dict__` state, if any.
    pub state: Option<Value>,
    /// Items appended to it (list subclasses).
    pub items: Vec<Value>,
    /// Entries set on it (dict subclasses).
    pub entries: Vec<(Value, Value)>,
}

/// An unpickled value. Containers are shared (`Rc`), so cloning is cheap and memo references
/// are not copied; dropping is iterative, so nesting depth does not consume the call stack.
#[derive(Clone)]
pub enum Value {
    /// `None`
    None,
    /// `bool`
    Bool(bool),
    /// An `int` that fits in 64 bits.
    Int(i64),
    /// A wider `int`, little-endian two's complement.
    BigInt(Rc<Vec<u8>>),
    /// `float`
    Float(f64),
    /// `str`
    Str(String),
    /// `bytes`
    Bytes(Rc<Vec<u8>>),
    /// `tuple`
    Tuple(Rc<Vec<Value>>),
    /// `list` (and sets)
    List(Rc<RefCell<Vec<Value>>>),
    /// `dict` / `OrderedDict`, in insertion order.
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A global name `(module, qualname)`, never resolved.
    Global(Rc<(String, String)>),
    /// An uninterpreted object.
    Object(Rc<RefCell<Object>>),
    /// A storage.
    Storage(Rc<Storage>),
    /// A tensor (or parameter).
    Tensor(Rc<TensorView>),
}

impl Value {
    /// A short name of the variant, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Object(_) => "object",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// Tuple or list items.
    pub fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.as_ref().clone()),
            Value::List(l) => Some(l.borrow().clone()),
            _ => None,
        }
    }

    /// The value under string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d
                .borrow()
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        let mut pending = Vec::new();
        detach_children(self, &mut pending);
        while let Some(mut v) = pending.pop() {
            detach_children(&mut v, &mut pending);
        }
    }
}

/// Moves the children of `v` into `out` when `v` holds the last reference to its container, so
/// that dropping `v` itself recurses no further.
fn detach_children(v: &mut Value, out: &mut Vec<Value>) {
    match v {
        Value::Tuple(t) => {
            if let Some(items) = Rc::get_mut(t) {
                out.append(items);
            }
        }
        Value::List(l) => {
            if let Some(items) = Rc::get_mut(l) {
                out.append(items.get_mut());
            }
        }
        Value::Dict(d) => {
            if let Some(entries) = Rc::get_mut(d) {
                for (k, x) in entries.get_mut().drain(..) {
                    out.push(k);
                    out.push(x);
                }
            }
        }
        Value::Object(o) => {
            if let Some(o) = Rc::get_mut(o) {
                let o = o.get_mut();
                out.push(std::mem::replace(&mut o.callable, Value::None));
                out.push(std::mem::replace(&mut o.args, Value::None));
                out.extend(o.state.take());
                out.append(&mut o.items);
                for (k, x) in o.entries.drain(..) {
                    out.push(k);
                    out.push(x);
                }
            }
        }
        _ => {}
    }
}

/// Containers deeper than this, or more items than [`DEBUG_ITEMS`], are elided in `{:?}`.
const DEBUG_DEPTH: usize = 6;
/// Items written by one `{:?}` of a value before the rest is elided.
const DEBUG_ITEMS: usize = 64;

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut budget = DEBUG_ITEMS;
        debug_short(self, f, 0, &mut budget)
    }
}

/// Writes `v` with nesting and item count bounded (the recursion is at most [`DEBUG_DEPTH`] deep).
fn debug_short(
    v: &Value,
    f: &mut fmt::Formatter<'_>,
    depth: usize,
    budget: &mut usize,
) -> fmt::Result {
    let seq = |f: &mut fmt::Formatter<'_>,
               open: &str,
               close: &str,
               items: &mut dyn Iterator<Item = (Option<&Value>, &Value)>,
               budget: &mut usize|
     -> fmt::Result {
        f.write_str(open)?;
        for (i, (k, x)) in items.enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if depth >= DEBUG_DEPTH || *budget == 0 {
                f.write_str("…")?;
                break;
            }
            *budget -= 1;
            if let Some(k) = k {
                debug_short(k, f, depth + 1, budget)?;
                f.write_str(": ")?;
            }
            debug_short(x, f, depth + 1, budget)?;
        }
        f.write_str(close)
    };
    match v {
        Value::None => f.write_str("None"),
        Value::Bool(b) => write!(f, "{}", if *b { "True" } else { "False" }),
        Value::Int(i) => write!(f, "{i}"),
        Value::BigInt(b) => write!(f, "<int of {} bytes>", b.len()),
        Value::Float(x) => write!(f, "{x:?}"),
        Value::Str(s) if s.len() > 80 => {
            let cut = (0..=80).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
            write!(f, "{:?}…", &s[..cut])
        }
        Value::Str(s) => write!(f, "{s:?}"),
        Value::Bytes(b) => write!(f, "<{} bytes>", b.len()),
        Value::Tuple(t) => seq(f, "(", ")", &mut t.iter().map(|x| (None, x)), budget),
        Value::List(l) => match l.try_borrow() {
            Ok(l) => seq(f, "[", "]", &mut l.iter().map(|x| (None, x)), budget),
            Err(_) => f.write_str("[…]"),
        },
        Value::Dict(d) => match d.try_borrow() {
            Ok(d) => seq(
                f,
                "{",
                "}",
                &mut d.iter().map(|(k, x)| (Some(k), x)),
                budget,
            ),
            Err(_) => f.write_str("{…}"),
        },
        Value::Global(g) => write!(f, "{}.{}", g.0, g.1),
        Value::Object(o) => match o.try_borrow() {
            Ok(o) => match &o.callable {
                Value::Global(g) => write!(f, "<{}.{} object>", g.0, g.1),
                other => write!(f, "<object built by a {}>", other.kind()),
            },
            Err(_) => f.write_str("<object>"),
        },
        Value::Storage(s) => write!(f, "<{} storage of {} bytes>", s.dtype, s.data().len()),
        Value::Tensor(t) => write!(f, "<{} tensor {:?}>", t.storage.dtype, t.shape),
    }
}
