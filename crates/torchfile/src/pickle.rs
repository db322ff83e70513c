//! A pickle machine that builds [`Value`]s and never executes code.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::value::{Object, Value};

/// What went wrong at which byte of a pickle stream.
#[derive(Debug)]
pub(crate) struct PickleError {
    pub offset: usize,
    pub reason: String,
}

type PResult<T> = std::result::Result<T, PickleError>;

/// Called for `BINPERSID` / `PERSID` and for `REDUCE` on globals; lets the caller rebuild storages and
/// tensors.
pub(crate) trait Hooks {
    /// Resolves a persistent id (a storage reference in torch files).
    fn persistent_load(&mut self, pid: Value) -> std::result::Result<Value, String>;
    /// Applies a known reducer, or returns `None` to keep the call opaque.
    fn reduce(
        &mut self,
        module: &str,
        name: &str,
        args: &Value,
    ) -> std::result::Result<Option<Value>, String>;
}

enum Slot {
    Value(Value),
    Mark,
}

type Entries = Rc<RefCell<Vec<(Value, Value)>>>;

/// A hashable dict key: strings, ints and bools compare within their own kind; other keys are
/// never merged.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Key {
    fn of(v: &Value) -> Option<Key> {
        match v {
            Value::Str(s) => Some(Key::Str(s.clone())),
            Value::Int(i) => Some(Key::Int(*i)),
            Value::Bool(b) => Some(Key::Bool(*b)),
            _ => None,
        }
    }
}

/// Positions of a dict's keys, so that `SETITEM(S)` is linear in the number of items; holds the
/// dict so that its address is not reused while indexed.
struct DictIndex {
    _dict: Entries,
    positions: HashMap<Key, usize>,
}

/// Runs one pickle starting at `start`; returns the value and the offset after `STOP`.
pub(crate) fn run(data: &[u8], start: usize, hooks: &mut dyn Hooks) -> PResult<(Value, usize)> {
    Machine {
        data,
        pos: start,
        op_at: start,
        stack: Vec::new(),
        memo: HashMap::new(),
        dicts: HashMap::new(),
        hooks,
    }
    .run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_at: usize,
    stack: Vec<Slot>,
    memo: HashMap<u32, Value>,
    dicts: HashMap<usize, DictIndex>,
    hooks: &'a mut dyn Hooks,
}

impl Machine<'_> {
    fn err<T>(&self, reason: impl Into<String>) -> PResult<T> {
        Err(PickleError {
            offset: self.op_at,
            reason: reason.into(),
        })
    }

    fn take(&mut self, n: usize) -> PResult<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => self.err(format!(
                "truncated: needs {n} bytes at offset {}, file has {}",
                self.pos,
                self.data.len()
            )),
        }
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> PResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> PResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> PResult<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len_usize(&mut self, v: u64) -> PResult<usize> {
        match usize::try_from(v) {
            Ok(n) if n <= self.data.len() - self.pos => Ok(n),
            _ => self.err(format!(
                "length {v} runs past the end of the data ({} bytes left)",
                self.data.len() - self.pos
            )),
        }
    }
    fn line(&mut self) -> PResult<String> {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let s = String::from_utf8_lossy(&rest[..i]).into_owned();
                self.pos += i + 1;
                Ok(s)
            }
            None => self.err("unterminated text argument"),
        }
    }
    fn utf8(&mut self, n: usize) -> PResult<Value> {
        let b = self.take(n)?.to_vec();
        match String::from_utf8(b) {
            Ok(s) => Ok(Value::Str(s)),
            Err(_) => self.err("string is not valid UTF-8"),
        }
    }

    fn push(&mut self, v: Value) {
        self.stack.push(Slot::Value(v));
    }
    fn pop(&mut self) -> PResult<Value> {
        match self.stack.pop() {
            Some(Slot::Value(v)) => Ok(v),
            Some(Slot::Mark) => self.err("found a MARK where a value was expected"),
            None => self.err("stack underflow"),
        }
    }
    fn top(&mut self) -> PResult<&mut Value> {
        match self.stack.last_mut() {
            Some(Slot::Value(v)) => Ok(v),
            _ => Err(PickleError {
                offset: self.op_at,
                reason: "stack underflow".into(),
            }),
        }
    }
    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Slot::Value(v)) => items.push(v),
                Some(Slot::Mark) => break,
                None => return self.err("MARK missing"),
            }
        }
        items.reverse();
        Ok(items)
    }
    fn memo_get(&self, i: u32) -> PResult<Value> {
        match self.memo.get(&i) {
            Some(v) => Ok(v.clone()),
            None => self.err(format!("memo entry {i} was never stored")),
        }
    }
    fn memo_put(&mut self, i: u32) -> PResult<()> {
        let v = match self.stack.last() {
            Some(Slot::Value(v)) => v.clone(),
            _ => return self.err("PUT with an empty stack"),
        };
        self.memo.insert(i, v);
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> PResult<()> {
        match self.top()? {
            Value::List(l) => {
                l.borrow_mut().extend(items);
                Ok(())
            }
            Value::Object(o) => {
                // list subclasses built by NEWOBJ: keep the items as the object's list state
                o.borrow_mut().items.extend(items);
                Ok(())
            }
            other => {
                let kind = other.kind();
                self.err(format!("APPEND to a {kind}"))
            }
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> PResult<()> {
        if items.len() % 2 != 0 {
            return self.err("SETITEMS with an odd number of values");
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        let top = self.top()?.clone();
        match &top {
            Value::Dict(d) => {
                let index = self.dicts.entry(Rc::as_ptr(d) as usize).or_insert_with(|| {
                    let mut positions = HashMap::new();
                    for (i, (k, _)) in d.borrow().iter().enumerate() {
                        if let Some(k) = Key::of(k) {
                            positions.entry(k).or_insert(i);
                        }
                    }
                    DictIndex {
                        _dict: d.clone(),
                        positions,
                    }
                });
                let mut d = d.borrow_mut();
                for (k, v) in pairs {
                    match Key::of(&k) {
                        Some(key) => match index.positions.get(&key) {
                            Some(&i) => d[i].1 = v,
                            None => {
                                index.positions.insert(key, d.len());
                                d.push((k, v));
                            }
                        },
                        None => d.push((k, v)),
                    }
                }
                Ok(())
            }
            Value::Object(o) => {
                o.borrow_mut().entries.extend(pairs);
                Ok(())
            }
            other => {
                let kind = other.kind();
                self.err(format!("SETITEM on a {kind}"))
            }
        }
    }

    fn reduce(&mut self, callable: Value, args: Value) -> PResult<Value> {
        if let Value::Global(g) = &callable {
            let (module, name) = (g.0.clone(), g.1.clone());
            match self.hooks.reduce(&module, &name, &args) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(reason) => return self.err(format!("{module}.{name}: {reason}")),
            }
        }
        Ok(Value::Object(Rc::new(RefCell::new(Object {
            callable,
            args,
            state: None,
            items: Vec::new(),
            entries: Vec::new(),
        }))))
    }

    fn build(&mut self, state: Value) -> PResult<()> {
        match self.top()? {
            Value::Object(o) => {
                o.borrow_mut().state = Some(state);
                Ok(())
            }
            // Attributes of dict subclasses (OrderedDict's `_metadata`), of parameters (hooks)
            // and the like are not data: dropped.
            _ => {
                let _ = state;
                Ok(())
            }
        }
    }

    fn run(mut self) -> PResult<(Value, usize)> {
        loop {
            self.op_at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return self.err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME length: frames are only a buffering hint
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok((v, self.pos));
                }
                b'(' => self.stack.push(Slot::Mark),
                b'0' => {
                    self.stack.pop();
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as u64
                    } else {
                        self.u32()? as u64
                    };
                    let n = self.len_usize(n)?;
                    let b = self.take(n)?.to_vec();
                    self.push(long_value(&b));
                }
                b'I' => {
                    let s = self.line()?;
                    let v = match s.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => match s.parse::<i64>() {
                            Ok(i) => Value::Int(i),
                            Err(_) => return self.err(format!("bad INT `{s}`")),
                        },
                    };
                    self.push(v);
                }
                b'L' => {
                    let s = self.line()?;
                    match s.trim_end_matches('L').parse::<i64>() {
                        Ok(i) => self.push(Value::Int(i)),
                        Err(_) => return self.err(format!("bad LONG `{s}`")),
                    }
                }
                b'G' => {
                    let v = f64::from_bits(u64::from_be_bytes(
                        self.take(8)?.try_into().expect("8 bytes"),
                    ));
                    self.push(Value::Float(v));
                }
                b'F' => {
                    let s = self.line()?;
                    match s.parse::<f64>() {
                        Ok(f) => self.push(Value::Float(f)),
                        Err(_) => return self.err(format!("bad FLOAT `{s}`")),
                    }
                }
                b'X' => {
                    let n = self.u32()? as u64;
                    let n = self.len_usize(n)?;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = self.len_usize(n)?;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                b'V' => {
                    let s = self.line()?;
                    self.push(Value::Str(s));
                }
                b'T' | b'U' => {
                    // BINSTRING / SHORT_BINSTRING (protocol ≤ 2 byte strings)
                    let n = if op == b'T' {
                        self.u32()? as u64
                    } else {
                        self.u8()? as u64
                    };
                    let n = self.len_usize(n)?;
                    let b = self.take(n)?.to_vec();
                    self.push(match String::from_utf8(b) {
                        Ok(s) => Value::Str(s),
                        Err(e) => Value::Bytes(Rc::new(e.into_bytes())),
                    });
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as u64,
                        b'C' => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len_usize(n)?;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(Rc::new(b)));
                }
                b')' => self.push(Value::Tuple(Rc::new(Vec::new()))),
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(Rc::new(items)));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)));
                }
                b']' => self.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'}' => self.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Rc::new(RefCell::new(Vec::new()))));
                    self.set_items(items)?;
                }
                0x8f => self.push(Value::List(Rc::new(RefCell::new(Vec::new())))), // EMPTY_SET
                0x90 => {
                    // ADDITEMS
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(Rc::new((module, name))));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.as_str(), name.as_str()) {
                        (Some(m), Some(n)) => {
                            let g = Value::Global(Rc::new((m.to_string(), n.to_string())));
                            self.push(g)
                        }
                        _ => return self.err("STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v);
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args)
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.reduce(cls, args)?;
                    self.push(v);
                }
                0x92 => {
                    // NEWOBJ_EX: kwargs are dropped
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.reduce(cls, args)?;
                    self.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    self.build(state)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    match self.hooks.persistent_load(pid) {
                        Ok(v) => self.push(v),
                        Err(reason) => return self.err(reason),
                    }
                }
                b'P' => {
                    let s = self.line()?;
                    match self.hooks.persistent_load(Value::Str(s)) {
                        Ok(v) => self.push(v),
                        Err(reason) => return self.err(reason),
                    }
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                b'p' => {
                    let s = self.line()?;
                    match s.parse::<u32>() {
                        Ok(i) => self.memo_put(i)?,
                        Err(_) => return self.err(format!("bad PUT index `{s}`")),
                    }
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.push(v);
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.push(v);
                }
                b'g' => {
                    let s = self.line()?;
                    match s.parse::<u32>() {
                        Ok(i) => {
                            let v = self.memo_get(i)?;
                            self.push(v);
                        }
                        Err(_) => return self.err(format!("bad GET index `{s}`")),
                    }
                }
                other => return self.err(format!("unsupported pickle opcode 0x{other:02x}")),
            }
        }
    }
}

/// Decodes a little-endian two's-complement integer of any width.
fn long_value(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() <= 8 {
        let neg = b[b.len() - 1] & 0x80 != 0;
        let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
        a[..b.len()].copy_from_slice(b);
        Value::Int(i64::from_le_bytes(a))
    } else {
        Value::BigInt(Rc::new(b.to_vec()))
    }
}
