//! Errors of the tensor-io crate.

use std::path::PathBuf;

/// What went wrong reading, writing or loading a tensor file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a valid safetensors file, lacks a tensor or holds an unsupported dtype.
    #[error("{}: corrupt or unsupported checkpoint: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Strict loading found keys that do not match the variables.
    #[error("{}: weights do not match the model:{}{}{}", path.display(),
        list("missing keys", missing), list("unexpected keys", unexpected), list("shape mismatches", mismatched))]
    KeyMismatch {
        /// The file.
        path: PathBuf,
        /// Variable names absent from the file.
        missing: Vec<String>,
        /// File keys without a variable.
        unexpected: Vec<String>,
        /// `key: model [..], file [..]`.
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
