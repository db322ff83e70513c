//! Schedules for rectified flows, in slimflow's time convention: t = 0 is noise, t = 1 is data,
//! x_t = t·x1 + (1 − t)·x0.
//!
//! - [`TimeDist`]: training-time distributions (uniform, the U-shaped density of 2-rectified flow++,
//!   logit-normal, discrete k-step, fixed), sampled from a caller-owned RNG through their inverse CDF
//!   so that a run's randomness is one saveable generator.
//! - [`Anneal`]: the β_k schedules of SlimFlow's Annealing Reflow.
//! - [`grid`]: ODE time grids.
//! - [`RectifiedPath`]: x_t, the target velocity and the data prediction x̂1 from a velocity.
//! - [`convert`]: the one place that converts to and from the reversed time of rfpp / EDM.

mod anneal;
pub mod convert;
mod error;
pub mod grid;
mod path;
mod time_dist;

pub use anneal::{noise_keep, Anneal};
pub use error::{Error, Result};
pub use path::{expand_t, x1_from_velocity, PathSample, RectifiedPath};
pub use time_dist::{Density, TimeDist, TimeDistribution};
