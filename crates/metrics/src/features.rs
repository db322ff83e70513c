//! The feature network of an image Fréchet distance: pytorch-fid's Inception (FID proper) or the
//! stand-in classifier (a labelled distance that is never called FID). Both take images in [-1, 1].

use std::path::Path;
use std::sync::Arc;

// What `stats_of_set` reads, so callers need not name the data crate.
pub use slimflow_data::images::{DatasetSpec, ImageSet};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::fid::{FeatureStats, GaussianStats};
use crate::inception::FidInception;
use crate::standin::{cache_file_name, StandinNet};

/// A feature extractor for Fréchet distances.
#[derive(Debug)]
pub enum FeatureNet {
    /// pytorch-fid's Inception-v3 pool3 (2048-d): FID.
    Inception(Box<FidInception>),
    /// The stand-in classifier's penultimate layer (128-d), trained on `spec`.
    Standin {
        /// The network.
        net: StandinNet,
        /// The dataset spec it was trained on.
        spec: String,
    },
}

impl FeatureNet {
    /// Feature dimension.
    pub fn dim(&self) -> i64 {
        match self {
            FeatureNet::Inception(_) => 2048,
            FeatureNet::Standin { .. } => crate::standin::FEATURES,
        }
    }

    /// How its distances are reported: `FID`, or `FD-standin` (a stand-in, not FID).
    pub fn metric_name(&self) -> &'static str {
        match self {
            FeatureNet::Inception(_) => "FID",
            FeatureNet::Standin { .. } => "FD-standin",
        }
    }

    /// A sentence saying what the distance is, for reports.
    pub fn describe(&self) -> String {
        match self {
            FeatureNet::Inception(_) => {
                "FID: Fréchet distance of pytorch-fid Inception-v3 pool3 features".into()
            }
            FeatureNet::Standin { spec, .. } => format!(
                "FD-standin: Fréchet distance in the features of a small classifier trained on \
                 {spec} (a stand-in for machines without the Inception weights; not FID)"
            ),
        }
    }

    /// Features [B, dim] of images [B, C, H, W] in [-1, 1] (grey images are repeated to RGB for
    /// Inception).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            FeatureNet::Inception(net) => {
                let x = if x.size()[1] == 1 {
                    x.repeat([1, 3, 1, 1])
                } else {
                    x.shallow_clone()
                };
                net.pool3(&((x.to_kind(Kind::Float) + 1.0) / 2.0))
            }
            FeatureNet::Standin { net, .. } => net.features(x),
        }
    }

    /// Gaussian statistics of `set`'s images, `batch` at a time.
    pub fn stats_of_set(
        &self,
        set: &ImageSet,
        batch: usize,
        device: Device,
    ) -> Result<GaussianStats> {
        let mut acc = FeatureStats::new(self.dim());
        let idx: Vec<usize> = (0..set.len()).collect();
        for chunk in idx.chunks(batch.max(1)) {
            acc.add(&self.features(&set.batch(chunk).to_device(device))?)?;
        }
        GaussianStats::from_features(&acc)
    }
}

/// The stand-in classifier for dataset `spec`: loaded from `cache_dir` when trained before, else
/// trained (seeded, `steps` batches of 64) on the spec's train split, checked on its test split and
/// cached. Returns the network and, when trained now, its held-out accuracy.
pub fn standin_for(
    spec: &str,
    cache_dir: &Path,
    steps: usize,
    device: Device,
) -> Result<(StandinNet, Option<f64>)> {
    let cache = cache_dir.join(cache_file_name(spec, steps));
    if cache.is_file() {
        return Ok((StandinNet::load(&cache, device)?, None));
    }
    let parsed: DatasetSpec = spec
        .parse()
        .map_err(|e: slimflow_data::Error| Error::BadInput(e.to_string()))?;
    let load = |s: &DatasetSpec| s.load().map_err(|e| Error::BadInput(e.to_string()));
    let train = Arc::new(load(&parsed)?);
    let mut test_spec = parsed.clone();
    test_spec.options.push(("split".into(), "test".into()));
    let held_out = load(&test_spec)?;
    let (net, acc) = StandinNet::train(train, &held_out, steps, 64, 0, device)?;
    std::fs::create_dir_all(cache_dir).map_err(|source| Error::Io {
        path: cache_dir.to_path_buf(),
        source,
    })?;
    net.save(&cache)?;
    Ok((net, Some(acc)))
}
