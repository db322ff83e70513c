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
    /// A checkpoint lacks slimflow metadata or cannot be imported.
    #[error("{}: corrupt or unsupported checkpoint: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading, writing or strictly loading a tensor file failed.
    #[error(transparent)]
    TensorIo(#[from] slimflow_tensor_io::Error),
    /// An error from libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
