//! A stand-in feature network for Fréchet distances where the FID Inception weights are absent (the
//! demo, the test suite, offline machines): a small CNN classifier trained here, in seconds, on a
//! labelled dataset (the procedural shapes, Fashion-MNIST). Distances in its 128-d penultimate
//! features rank sample quality the way FID does on that data, but they are not FID and are
//! always reported under another name.

use std::path::Path;
use std::sync::Arc;

use slimflow_data::images::ImageSet;
use slimflow_data::loader::{Position, Stream};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Input side after resizing.
const SIZE: i64 = 32;
/// Feature dimension.
pub const FEATURES: i64 = 128;

/// The classifier: 3 conv–ReLU–max-pool blocks (32, 64, 128 channels), a 128-d ReLU layer (the
/// features) and a linear head.
#[derive(Debug)]
pub struct StandinNet {
    vs: nn::VarStore,
    convs: Vec<nn::Conv2D>,
    fc: nn::Linear,
    head: nn::Linear,
    channels: i64,
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadInput(format!("{}: {}", path.display(), reason.into()))
}

/// File name under which the network trained on dataset `spec` for `steps` batches is cached.
pub fn cache_file_name(spec: &str, steps: usize) -> String {
    use sha2::Digest;
    let key = hex::encode(sha2::Sha256::digest(
        format!("{spec}#steps={steps}").as_bytes(),
    ));
    format!("standin-{}.safetensors", &key[..16])
}

impl StandinNet {
    /// An untrained network for `channels`-channel images and `classes` classes.
    pub fn build(device: Device, channels: i64, classes: i64) -> Self {
        let vs = nn::VarStore::new(device);
        let p = vs.root();
        let cfg = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let convs = vec![
            nn::conv2d(&p / "conv0", channels, 32, 3, cfg),
            nn::conv2d(&p / "conv1", 32, 64, 3, cfg),
            nn::conv2d(&p / "conv2", 64, 128, 3, cfg),
        ];
        let fc = nn::linear(&p / "fc", 128 * 16, FEATURES, Default::default());
        let head = nn::linear(&p / "head", FEATURES, classes, Default::default());
        StandinNet {
            vs,
            convs,
            fc,
            head,
            channels,
        }
    }

    fn prepare(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        if s.len() != 4
            || !(s[1] == self.channels || s[1] == 1 || (s[1] == 3 && self.channels == 1))
        {
            return Err(Error::BadInput(format!(
                "stand-in features need [B, {}, H, W] images, got {s:?}",
                self.channels
            )));
        }
        let x = x.to_device(self.vs.device()).to_kind(Kind::Float);
        let x = match (s[1], self.channels) {
            (1, 3) => x.repeat([1, 3, 1, 1]),
            (3, 1) => x.mean_dim([1i64].as_slice(), true, Kind::Float),
            _ => x,
        };
        Ok(if s[2] != SIZE || s[3] != SIZE {
            x.upsample_bilinear2d([SIZE, SIZE], false, None, None)
        } else {
            x
        })
    }

    fn trunk(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for c in &self.convs {
            h = c
                .forward(&h)
                .relu()
                .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
        }
        self.fc.forward(&h.flatten(1, -1)).relu()
    }

    /// Features [B, 128] of images [B, C, H, W] in [-1, 1] (resized to 32×32; grey ↔ RGB adapted).
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        let x = self.prepare(images)?;
        Ok(tch::no_grad(|| self.trunk(&x)))
    }

    /// Trains on a labelled set with Adam (lr 1e-3), `steps` batches of `batch` images with
    /// horizontal flips, seeded. Returns the network and its accuracy on `held_out`.
    pub fn train(
        set: Arc<ImageSet>,
        held_out: &ImageSet,
        steps: usize,
        batch: usize,
        seed: u64,
        device: Device,
    ) -> Result<(Self, f64)> {
        let classes = set.num_classes() as i64;
        if classes < 2 || set.labels.is_none() {
            return Err(Error::BadInput(format!(
                "{}: the stand-in classifier needs a labelled dataset with at least 2 classes",
                set.name
            )));
        }
        tch::manual_seed(seed as i64);
        let net = Self::build(device, set.channels as i64, classes);
        let mut opt = nn::Adam::default()
            .build(&net.vs, 1e-3)
            .map_err(|e| Error::BadInput(e.to_string()))?;
        let cfg = slimflow_data::loader::LoaderConfig {
            batch_size: batch,
            seed,
            shuffle: true,
            hflip: true,
            prefetch: 1,
        };
        let mut stream = Stream::new(set, cfg, Position::default())
            .map_err(|e| Error::BadInput(e.to_string()))?;
        for _ in 0..steps {
            let b = stream.next_batch();
            let x = net.prepare(&b.x)?;
            let y = b.labels.expect("labelled set").to_device(device);
            let loss = net
                .head
                .forward(&net.trunk(&x))
                .cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
        }
        let acc = net.accuracy(held_out)?;
        Ok((net, acc))
    }

    /// Fraction of `set` classified correctly.
    pub fn accuracy(&self, set: &ImageSet) -> Result<f64> {
        let labels = set
            .labels
            .as_ref()
            .ok_or_else(|| Error::BadInput(format!("{} has no labels", set.name)))?;
        let mut correct = 0usize;
        for start in (0..set.len()).step_by(256) {
            let idx: Vec<usize> = (start..(start + 256).min(set.len())).collect();
            let x = self.prepare(&set.batch(&idx))?;
            let pred = tch::no_grad(|| self.head.forward(&self.trunk(&x)).argmax(1, false));
            let pred = Vec::<i64>::try_from(&pred.to_device(Device::Cpu))
                .map_err(|e| Error::BadInput(e.to_string()))?;
            correct += idx
                .iter()
                .zip(pred)
                .filter(|(&i, p)| labels[i] as i64 == *p)
                .count();
        }
        Ok(correct as f64 / set.len().max(1) as f64)
    }

    /// Saves the weights (safetensors; channels and classes in the metadata).
    pub fn save(&self, path: &Path) -> Result<()> {
        let classes = self.head.ws.size()[0];
        let meta = std::collections::BTreeMap::from([
            (
                "slimflow.standin.channels".to_string(),
                self.channels.to_string(),
            ),
            ("slimflow.standin.classes".to_string(), classes.to_string()),
        ]);
        slimflow_tensor_io::write(path, &slimflow_tensor_io::named_variables(&self.vs), &meta)
            .map_err(|e| Error::BadInput(e.to_string()))
    }

    /// Loads weights written by [`StandinNet::save`].
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let file = slimflow_tensor_io::read(path).map_err(|e| Error::BadInput(e.to_string()))?;
        let get = |k: &str| -> Result<i64> {
            file.metadata
                .get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| corrupt(path, format!("no `{k}` metadata: not a stand-in network")))
        };
        let mut net = Self::build(
            device,
            get("slimflow.standin.channels")?,
            get("slimflow.standin.classes")?,
        );
        slimflow_tensor_io::load_strict(&mut net.vs, &file, &[])
            .map_err(|e| Error::BadInput(e.to_string()))?;
        Ok(net)
    }
}
