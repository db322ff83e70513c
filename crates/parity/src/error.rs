//! Errors of the parity runner.

use std::path::PathBuf;

/// What can go wrong running a case.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The case is malformed, or names something this runner does not implement.
    #[error("{path}: {reason}")]
    BadCase {
        /// The case file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A computation failed.
    #[error("{0}")]
    Compute(String),
    /// libtorch failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

macro_rules! from_display {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Compute(e.to_string())
            }
        }
    )*};
}
from_display!(
    slimflow_tensor_io::Error,
    slimflow_models::Error,
    slimflow_losses::Error,
    slimflow_metrics::Error,
    slimflow_sampling::Error,
    slimflow_schedules::Error,
    slimflow_trainer::Error
);
