//! Velocity-field networks v_θ(x, t) for rectified flows (t = 0 noise, t = 1 data).
//!
//! - [`VelocityField`]: the interface every architecture implements (x, t, optional class labels,
//!   train/eval); [`Model`] owns a network with its parameters and is what stages pass around.
//! - [`ArchConfig`]: the registry of architectures, keyed by the `arch` field of a config; validated
//!   before any layer is built (tch's constructors panic on bad shapes).
//! - [`song_unet`]: port of EDM's `SongUNet` (DDPM++ / NCSN++) with EDM's parameter names, and
//!   [`dhariwal_unet`]: EDM's `DhariwalUNet` (ADM); [`edm_velocity`]: rfpp's EDM-denoiser-as-velocity
//!   wrapper around either; [`ncsnpp`]: SlimFlow's NCSN++ with its `all_modules.<i>` parameter names.
//! - [`checkpoint`]: self-describing checkpoints — the architecture config in the metadata of a
//!   safetensors file that [`slimflow_tensor_io`] writes atomically and loads strictly (every missing
//!   key, unexpected key and shape mismatch reported; values cast to the model's dtype).
//!   [`Model`] also implements [`slimflow_sampling::Network`], what the objectives train.
//! - [`import`]: official EDM / rfpp / RectifiedFlow checkpoints into these architectures, read
//!   without executing pickled code.

pub mod checkpoint;
pub mod conformance;
pub mod dhariwal_unet;
mod edm_layers;
pub mod edm_velocity;
mod error;
mod field;
pub mod import;
mod mlp;
pub mod ncsnpp;
mod registry;
pub mod size;
pub mod song_unet;

pub use error::{Error, Result};
pub use field::{EvalField, Model, Precision, VelocityField};
pub use mlp::{Mlp, MlpConfig};
pub use registry::{ArchConfig, Architecture, Preset, PRESETS};
pub use size::SizeBound;
