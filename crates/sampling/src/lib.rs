//! ODE samplers for rectified flows: integrate dx/dt = v(x, t) from t = eps (noise) to t = 1 (data),
//! or backwards from data to noise when `to < from`.
//!
//! Any [`Velocity`] works, including plain closures, so solvers are tested on analytic fields. The
//! closed set of solvers is [`SolverConfig`]: each variant carries exactly its own settings, so an
//! adaptive solver with a step count cannot be written. [`straightness`] measures how far a
//! trajectory is from a straight line (Liu et al. 2023, eq. 4).

mod error;
mod euler;
mod heun;
mod rk45;
mod solver;
mod straightness;
mod velocity;
mod x_pred;

pub use error::{Error, Result};
pub use solver::{solve, Solution, SolverConfig};
pub use straightness::straightness;
pub use velocity::{time_tensor, Velocity};
