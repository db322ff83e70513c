//! A run's `args` with a record of which were used: every accessor marks its argument consumed,
//! and [`RunArgs::finish`] fails naming any argument no code asked for.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tch::Tensor;

use crate::error::{Error, Result};

/// The arguments of one run.
pub struct RunArgs<'a> {
    args: &'a Map<String, Value>,
    index: usize,
    path: PathBuf,
    used: RefCell<BTreeSet<String>>,
}

impl<'a> RunArgs<'a> {
    pub(crate) fn new(run: &'a Value, index: usize, path: &Path) -> Result<Self> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let args = match &run["args"] {
            Value::Object(m) => m,
            Value::Null => EMPTY.get_or_init(Map::new),
            other => {
                return Err(Error::BadCase {
                    path: path.to_path_buf(),
                    reason: format!("run {index}: `args` must be an object, got {other}"),
                })
            }
        };
        Ok(RunArgs {
            args,
            index,
            path: path.to_path_buf(),
            used: RefCell::new(BTreeSet::new()),
        })
    }

    fn err(&self, name: &str, msg: impl std::fmt::Display) -> Error {
        Error::BadCase {
            path: self.path.clone(),
            reason: format!("run {}: argument `{name}`: {msg}", self.index),
        }
    }

    /// The raw value (marked consumed), `None` when absent.
    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        let v = self.args.get(name)?;
        self.used.borrow_mut().insert(name.to_string());
        Some(v)
    }

    /// Whether the run passes `name` at all (does not consume it).
    pub fn has(&self, name: &str) -> bool {
        self.args.contains_key(name)
    }

    /// A required io tensor: the argument names an io key.
    pub fn tensor(&self, case: &crate::Case<'_>, name: &str) -> Result<Tensor> {
        self.opt_tensor(case, name)?
            .ok_or_else(|| self.err(name, "required, missing or null"))
    }

    /// An optional io tensor: absent or `null` is `None`.
    pub fn opt_tensor(&self, case: &crate::Case<'_>, name: &str) -> Result<Option<Tensor>> {
        match self.raw(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(key)) => case.tensor(key).map(Some),
            Some(other) => Err(self.err(name, format!("expected an io key, got {other}"))),
        }
    }

    /// A required number (a literal, or a one-element io tensor).
    pub fn f64(&self, case: &crate::Case<'_>, name: &str) -> Result<f64> {
        match self.raw(name) {
            Some(Value::Number(n)) => n
                .as_f64()
                .ok_or_else(|| self.err(name, "not a finite number")),
            Some(Value::String(key)) => {
                let t = case.tensor(key)?;
                if t.numel() != 1 {
                    return Err(self.err(name, format!("{key} has {} elements, not 1", t.numel())));
                }
                Ok(t.to_kind(tch::Kind::Double).double_value(&[]))
            }
            None => Err(self.err(name, "required, missing")),
            Some(other) => Err(self.err(name, format!("expected a number, got {other}"))),
        }
    }

    /// A required non-negative integer literal.
    pub fn u64(&self, name: &str) -> Result<u64> {
        self.raw(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.err(name, "required non-negative integer"))
    }

    /// A required boolean literal.
    pub fn bool(&self, name: &str) -> Result<bool> {
        self.raw(name)
            .and_then(Value::as_bool)
            .ok_or_else(|| self.err(name, "required boolean"))
    }

    /// An optional boolean literal.
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>> {
        match self.raw(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.err(name, format!("expected a boolean, got {other}"))),
        }
    }

    /// A required string literal.
    pub fn str(&self, name: &str) -> Result<&'a str> {
        self.raw(name)
            .and_then(Value::as_str)
            .ok_or_else(|| self.err(name, "required string"))
    }

    /// Consumes `name` when it holds exactly `expected` (or is absent); anything else is an error
    /// saying which value this runner implements.
    pub fn expect(&self, name: &str, expected: &Value) -> Result<()> {
        match self.raw(name) {
            None => Ok(()),
            Some(v) if values_equal(v, expected) => Ok(()),
            Some(v) => Err(self.err(
                name,
                format!("{v} is not implemented (this runner computes {expected})"),
            )),
        }
    }

    /// An error about argument `name`.
    pub fn invalid(&self, name: &str, msg: impl std::fmt::Display) -> Error {
        self.err(name, msg)
    }

    /// Fails naming every argument no accessor consumed.
    pub fn finish(&self) -> Result<()> {
        let used = self.used.borrow();
        let left: Vec<&str> = self
            .args
            .keys()
            .filter(|k| !used.contains(*k))
            .map(String::as_str)
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(Error::BadCase {
                path: self.path.clone(),
                reason: format!(
                    "run {}: argument{} {} not understood by this runner; computing without {} \
                     would compare a different computation",
                    self.index,
                    if left.len() > 1 { "s" } else { "" },
                    left.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if left.len() > 1 { "them" } else { "it" },
                ),
            })
        }
    }
}

/// JSON equality with numbers compared as f64 (1 == 1.0).
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}
