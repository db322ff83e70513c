//! Errors of the losses crate.

/// Why a loss could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The two inputs of a premetric (or a batch's parts) disagree in shape.
    #[error("shape mismatch: {what}: {a:?} vs {b:?}")]
    ShapeMismatch {
        /// Which inputs.
        what: &'static str,
        /// First shape.
        a: Vec<i64>,
        /// Second shape.
        b: Vec<i64>,
    },
    /// A setting is invalid.
    #[error("invalid loss setting: {0}")]
    Invalid(String),
    /// A weights file could not be read or does not match the network.
    #[error(transparent)]
    Weights(slimflow_tensor_io::Error),
    /// Installed weights are missing or unverified (the message names the commands that provide
    /// them).
    #[error(transparent)]
    NotInstalled(slimflow_weights_locate::Error),
    /// A time distribution is invalid.
    #[error(transparent)]
    Schedule(#[from] slimflow_schedules::Error),
    /// An error from libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
