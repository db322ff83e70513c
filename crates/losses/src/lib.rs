//! Losses for rectified flows, in slimflow's time convention (t = 0 noise, t = 1 data).
//!
//! - [`Premetric`]: per-sample distances d(a, b) → [B] (unreduced, so callers can weight by t):
//!   squared L2, root-mean L2, L1, the pseudo-Huber of 2-rectified flow++, and [`Lpips`] (VGG or
//!   AlexNet, max or average pooling, optional resize) loading the `lpips` package's weights by name;
//!   [`Weighted`] sums any of them (SlimFlow's LPIPS + L1 / LPIPS + L2).
//! - Objectives ([`Objective`]): rectified-flow regression on (x0, x1) pairs ([`Rf`]), one-step
//!   distillation ([`Distill`]) and SlimFlow's flow-guided regulariser ([`FlowGuided`]), training
//!   any [`slimflow_sampling::Network`]. A stage names its objective as configuration
//!   ([`ObjectiveSpec`], [`DistanceSpec`]) and builds it here, perceptual network included.
//!
//! Randomness (times, fresh noise) comes from the caller's RNG so that the training loop's saved
//! generator state reproduces a run exactly.

mod error;
pub mod lpips;
pub mod objective;
mod premetric;
mod random;

pub use error::{Error, Result};
pub use lpips::{Lpips, LpipsConfig, LpipsPreset};
pub use objective::{
    lpips_huber_terms, Batch, Distance, DistanceSpec, Distill, DistillForm, Draws, FlowGuided,
    LossTerms, LpipsHuber, LpipsTerm, Objective, ObjectiveSpec, Rf,
};
pub use premetric::{Premetric, PremetricConfig, Weighted};
pub use random::{normal_tensor, uniform_tensor, NoiseSource, StandardGaussian};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
