//! Evaluation of rectified flows.
//!
//! - [`toy`]: distances between sample sets of low-dimensional distributions — sliced Wasserstein-2
//!   and energy distance — against held-out target samples.
//! - [`agreement`]: distance between one-step samples and the many-step ODE solution from the same
//!   noise, the direct measure of distillation quality; straightness comes from `slimflow-sampling`.
//! - [`fid`]: Fréchet distance between feature statistics (float64, pytorch-fid's definition) and
//!   mergeable statistics accumulators.
//! - [`inception`]: pytorch-fid's FID Inception-v3 (pool3 features), loading its weights by name.
//! - [`plot`]: PNG scatter plots of 2-D samples and trajectories.
//! - [`report`]: the per-model evaluation table written as `report.json` and Markdown.

pub mod agreement;
mod error;
pub mod features;
pub mod fid;
pub mod font;
pub mod inception;
pub mod pictures;
pub mod plot;
pub mod report;
pub mod standin;
pub mod toy;

pub use error::{Error, Result};
pub use slimflow_sampling::{straightness, straightness_rfpp, straightness_slimflow};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
