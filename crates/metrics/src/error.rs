//! Errors of the metrics crate.

use std::path::PathBuf;

/// Why a metric, plot or report failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Inputs have unusable shapes or sizes.
    #[error("bad metric input: {0}")]
    BadInput(String),
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// PNG encoding failed.
    #[error("{}: PNG encoding: {source}", path.display())]
    Png {
        /// The file.
        path: PathBuf,
        /// The encoder error.
        #[source]
        source: png::EncodingError,
    },
    /// Pretrained weights are not installed (the message names the commands that provide them).
    #[error(transparent)]
    NotInstalled(slimflow_weights_locate::Error),
    /// An error from libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
