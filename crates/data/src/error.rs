//! Errors of the data crate.

use std::path::PathBuf;

/// What went wrong reading or writing data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A distribution or store parameter is invalid.
    #[error("invalid data setting: {0}")]
    Invalid(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A store file is malformed or inconsistent with its manifest.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An existing store was made with other settings.
    #[error("{}: the existing pair store was made with other settings ({reason}); remove it or choose another directory", path.display())]
    Mismatch {
        /// The store directory.
        path: PathBuf,
        /// Which setting differs.
        reason: String,
    },
    /// A tensor-file error while reading, writing or hashing a shard.
    #[error(transparent)]
    Tensor(#[from] slimflow_tensor_io::Error),
    /// An error from libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
