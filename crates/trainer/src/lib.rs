//! The stages of the rectified-flow pipeline and the training loop they share.
//!
//! Stages (`stage::*`): `train` (1-RF on independent pairs), `generate-pairs` (teacher ODE solves into
//! a pair store), `reflow` (2-RF; SlimFlow's Annealing Reflow and rfpp's time distribution as
//! options), `distill` (one-step, optionally flow-guided) and `eval`. Each reads its inputs from the
//! run directory and writes outputs plus a manifest; a stage whose manifest says complete for the same
//! config hash is skipped, a partial one resumes from its last checkpoint.
//!
//! The loop ([`run_loop`]) owns the optimizer ([`optim::Adam`], an exact torch.optim.Adam whose
//! moments can be saved), LR warm-up, clipping, zeroing of non-finite gradients, EMA, checkpoints and
//! the interrupt check. All randomness comes from one ChaCha20 generator saved with each checkpoint,
//! so a run killed and resumed ends with the same parameters as an uninterrupted one.

pub mod bench;
pub mod checkpointing;
pub mod config;
pub mod ema;
mod error;
pub mod interrupt;
pub mod optim;
pub mod parallel;
pub mod plan;
pub mod progress;
pub mod run_dir;
pub mod run_loop;
pub mod sink;
pub mod stage;
pub mod summary;
pub mod tensorboard;

pub use config::{load_config, ConfigError, PipelineConfig};
pub use error::{Error, Result};
pub use run_dir::{StageCtx, StageOutcome};
