//! Errors of the models crate.

use std::path::PathBuf;

/// What went wrong building, running, saving or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The architecture config is invalid; every problem is listed.
    #[error("invalid architecture config: {}", .0.join("; "))]
    InvalidConfig(Vec<String>),
    /// A user-supplied tensor has the wrong shape.
    #[error("bad input `{name}`: expected {expected}, got shape {got:?}")]
    BadInput {
        /// Which argument.
        name: &'static str,
        /// What was expected.
        expected: String,
        /// The shape received.
        got: Vec<i64>,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file is not a valid safetensors file or lacks slimflow metadata.
    #[error("{}: corrupt or unsupported checkpoint: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Strict loading found keys that do not match the model.
    #[error("{}: weights do not match the model:{}{}{}", path.display(),
        list("missing keys", missing), list("unexpected keys", unexpected), list("shape mismatches", mismatched))]
    KeyMismatch {
        /// The file.
        path: PathBuf,
        /// Model keys absent from the file.
        missing: Vec<String>,
        /// File keys the model does not have.
        unexpected: Vec<String>,
        /// `key: expected [..], file has [..]`.
        mismatched: Vec<String>,
    },
    /// An error from libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

fn list(title: &str, items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!("\n  {title} ({}): {}", items.len(), items.join(", "))
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
