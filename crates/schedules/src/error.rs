//! Errors of the schedules crate.

/// A schedule was configured with values outside its domain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A parameter is outside its valid range; `name` is the config key.
    #[error("invalid `{name}` = {value}: {reason}")]
    InvalidParameter {
        /// Config key of the parameter.
        name: &'static str,
        /// The rejected value.
        value: f64,
        /// What the valid range is.
        reason: &'static str,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
