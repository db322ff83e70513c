//! Data for rectified flows.
//!
//! - [`Toy`]: 2-D distributions (Gaussian, ring of Gaussians, two moons, checkerboard, rings, spiral)
//!   used as sources and targets; deterministic given the RNG.
//! - [`seeded_normal`]: noise drawn per sample from its own seed, so sample i is the same at any batch
//!   size, shard layout or device (EDM's `StackedRandomGenerator` idea); [`seeded_source`] the same
//!   for any [`Toy`] source (exactly [`seeded_normal`] for N(0, I)), [`seeded_labels`] uniform class
//!   labels per seed.
//! - [`images`]: image datasets (CIFAR-10 binary, MNIST / Fashion-MNIST IDX, PNG/JPEG folders, the
//!   built-in procedural shapes, EDM dataset archives, downsampled ImageNet `.npz`) named by spec
//!   strings such as `cifar10:DIR,split=test` or `edm:imagenet-64x64.zip`; [`loader`]:
//!   seeded, resumable, prefetched batches in [-1, 1]; [`npy`]: NumPy files.
//! - [`PairStore`]: (z, x1) pairs for reflow and distillation, in shards written atomically, each
//!   regenerable alone; an interrupted generation resumes at the first missing shard.

mod archive;
mod error;
mod noise;
mod pair_store;
mod toy;

pub mod images;
pub mod loader;
pub mod npy;
pub mod rfpp;

pub use error::{Error, Result};
pub use noise::{seeded_labels, seeded_normal, seeded_source};
pub use pair_store::{PairDtype, PairReader, PairStore, PairStoreManifest, Pairs, Verify};
pub use toy::Toy;
