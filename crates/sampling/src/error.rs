//! Errors of the sampling crate.

/// Why a solve could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A solver setting is outside its domain.
    #[error("invalid solver setting `{name}`: {reason}")]
    InvalidSetting {
        /// Config key.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The adaptive solver needed more steps than allowed.
    #[error(
        "RK45 did not reach t = {to} within {max_steps} steps (at t = {at}); loosen rtol/atol"
    )]
    TooManySteps {
        /// Target time.
        to: f64,
        /// Time reached.
        at: f64,
        /// Step budget.
        max_steps: usize,
    },
    /// The state became NaN or infinite.
    #[error("the ODE state became non-finite at t = {at}")]
    NonFinite {
        /// Time at which it was detected.
        at: f64,
    },
    /// A solve would evaluate the field at a time where it is not defined.
    #[error("the field cannot be evaluated at t = {t}: its domain is {domain}")]
    OutsideDomain {
        /// The offending time.
        t: f64,
        /// Where the field is defined.
        domain: crate::Domain,
    },
    /// A solve would start at an excluded (open) end of the field's domain.
    #[error(
        "cannot start a solve at t = {t}: the field is undefined there (its domain is {domain}); \
         start inside the domain"
    )]
    ExcludedStart {
        /// The requested start time.
        t: f64,
        /// Where the field is defined.
        domain: crate::Domain,
    },
    /// A trajectory given to [`crate::straightness`] is unusable.
    #[error("trajectory: {0}")]
    Trajectory(String),
    /// An error from libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
