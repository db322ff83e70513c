//! The feature network of an image Fréchet distance: pytorch-fid's Inception (FID proper) or the
//! stand-in classifier (a labelled distance that is never called FID). Both take images in [-1, 1].

use std::path::Path;
use std::sync::Arc;

// What `stats_of_set` reads, so callers need not name the data crate.
use serde::{Deserialize, Serialize};
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

/// Which feature network an evaluation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureChoice {
    /// Inception when its weights are installed, else the stand-in.
    #[default]
    Auto,
    /// pytorch-fid's Inception (FID).
    Inception,
    /// A small classifier trained on the dataset's labels (a stand-in, never called FID).
    Standin,
}

/// What [`choose`] needs to build either network.
#[derive(Debug, Clone, Copy)]
pub struct FeatureRequest<'a> {
    /// The network wanted.
    pub choice: FeatureChoice,
    /// Inception weights; `None`: the installed file (`slimflow weights fetch inception`).
    pub inception_weights: Option<&'a Path>,
    /// The labelled dataset spec the stand-in trains on.
    pub standin_spec: &'a str,
    /// Training batches of the stand-in.
    pub standin_steps: usize,
    /// Where the trained stand-in is cached.
    pub cache_dir: &'a Path,
}

/// The network [`choose`] built, and what the caller may want to tell the user.
#[derive(Debug)]
pub struct Chosen {
    /// The network.
    pub net: FeatureNet,
    /// `Auto` found no Inception weights and took the stand-in.
    pub inception_missing: bool,
    /// The stand-in was trained now (not read from the cache): its held-out accuracy.
    pub standin_accuracy: Option<f64>,
}

/// The feature network of `request`: Inception from its weights, or the stand-in classifier loaded
/// from the cache or trained; `Auto` takes Inception when the weights are installed. Missing
/// Inception weights are [`Error::NotInstalled`], naming the commands that provide them.
pub fn choose(request: &FeatureRequest, device: Device) -> Result<Chosen> {
    use slimflow_weights_locate::{locate, Net};
    let inception_path = || match request.inception_weights {
        Some(p) => Ok(p.to_path_buf()),
        None => locate(Net::Inception, None).map_err(Error::NotInstalled),
    };
    let standin = |inception_missing| -> Result<Chosen> {
        let spec = request.standin_spec;
        let (net, acc) = standin_for(spec, request.cache_dir, request.standin_steps, device)?;
        Ok(Chosen {
            net: FeatureNet::Standin {
                net,
                spec: spec.to_string(),
            },
            inception_missing,
            standin_accuracy: acc,
        })
    };
    let inception = |path: std::path::PathBuf| -> Result<Chosen> {
        Ok(Chosen {
            net: FeatureNet::Inception(Box::new(FidInception::load(&path, device)?)),
            inception_missing: false,
            standin_accuracy: None,
        })
    };
    match request.choice {
        FeatureChoice::Inception => inception(inception_path()?),
        FeatureChoice::Standin => standin(false),
        FeatureChoice::Auto => match inception_path() {
            Ok(path) => inception(path),
            Err(_) => standin(true),
        },
    }
}

#[cfg(test)]
mod chooser_tests {
    use super::*;

    #[test]
    fn an_explicit_inception_file_that_is_missing_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("inception.safetensors");
        let request = FeatureRequest {
            choice: FeatureChoice::Inception,
            inception_weights: Some(&missing),
            standin_spec: "shapes:8",
            standin_steps: 1,
            cache_dir: dir.path(),
        };
        let e = choose(&request, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("inception.safetensors"), "{e}");
        // Auto with given weights does not fall back either: it was asked for that file.
        let auto = FeatureRequest {
            choice: FeatureChoice::Auto,
            ..request
        };
        assert!(choose(&auto, Device::Cpu).is_err());
    }

    #[test]
    fn the_standin_is_trained_once_then_read_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let request = FeatureRequest {
            choice: FeatureChoice::Standin,
            inception_weights: None,
            standin_spec: "shapes:16,count=64",
            standin_steps: 2,
            cache_dir: dir.path(),
        };
        let first = choose(&request, Device::Cpu).unwrap();
        assert!(first.standin_accuracy.is_some() && !first.inception_missing);
        assert_eq!(first.net.metric_name(), "FD-standin");
        let second = choose(&request, Device::Cpu).unwrap();
        assert_eq!(second.standin_accuracy, None);
        let set: ImageSet = request
            .standin_spec
            .parse::<DatasetSpec>()
            .unwrap()
            .load()
            .unwrap();
        let x = set.batch(&[0, 1]);
        assert!(first
            .net
            .features(&x)
            .unwrap()
            .equal(&second.net.features(&x).unwrap()));
    }
}
