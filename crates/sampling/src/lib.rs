//! ODE samplers for rectified flows: integrate dx/dt = v(x, t) from t = eps (noise) to t = 1 (data),
//! or backwards from data to noise when `to < from`.
//!
//! Any [`Velocity`] works, including plain closures, so solvers are tested on analytic fields. The
//! closed set of solvers is [`SolverConfig`]: each variant carries exactly its own settings, so an
//! adaptive solver with a step count cannot be written. [`straightness`] measures how far a
//! trajectory is from a straight line (Liu et al. 2023, eq. 4). [`Network`] is what training
//! objectives need of a network (with labels and train mode), kept here so that losses build without
//! any architecture.
//!
//! A field declares where it may be evaluated ([`Velocity::domain`], a [`Domain`]); every solver
//! stays inside it and reaches an excluded end with one Euler (prediction) step. The references'
//! own samplers are here exactly: rfpp's ([`SolverConfig::Rfpp`], [`rfpp`]) and EDM's σ-space
//! sampler for EDM-parameterised networks ([`edm::sample`], [`SolverConfig::Edm`]).

mod domain;
pub mod edm;
mod error;
mod euler;
mod heun;
pub mod rfpp;
mod rk45;
mod solver;
mod straightness;
mod velocity;
mod x_pred;

pub use domain::{Bound, Domain};
pub use edm::{Denoiser, EdmSamplerConfig, VelocityDenoiser};
pub use error::{Error, Result};
pub use rfpp::{RfppMethod, RfppSampler};
pub use solver::{solve, Solution, SolverConfig};
pub use straightness::{straightness, straightness_rfpp, straightness_slimflow};
pub use velocity::{evaluate, time_tensor, Network, Velocity, WithDomain};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
