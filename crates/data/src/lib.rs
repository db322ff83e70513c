//! Data for rectified flows.
//!
//! - [`Toy`]: 2-D distributions (Gaussian, ring of Gaussians, two moons, checkerboard, rings, spiral)
//!   used as sources and targets; deterministic given the RNG.
//! - [`seeded_normal`]: noise drawn per sample from its own seed, so sample i is the same at any batch
//!   size, shard layout or device (EDM's `StackedRandomGenerator` idea).
//! - [`PairStore`]: (z, x1) pairs for reflow and distillation, in shards written atomically, each
//!   regenerable alone; an interrupted generation resumes at the first missing shard.

mod error;
mod noise;
mod pair_store;
mod toy;

pub mod npy;

pub use error::{Error, Result};
pub use noise::seeded_normal;
pub use pair_store::{PairStore, PairStoreManifest, Pairs};
pub use toy::Toy;
