//! `[data]`: the source (noise) distribution and the target, a 2-D toy or an image dataset.

use serde::{Deserialize, Serialize};
use slimflow_data::Toy;

use super::note;

/// The data: a 2-D toy target or an image dataset, with Gaussian noise as the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Source (noise) distribution of toy runs; standard Gaussian by default. Every stage draws from
    /// it (training, pairs, eval, sampling, the flow-guided term's fresh noise). Image runs use
    /// N(0, I): another source with a dataset is an error, as is Annealing Reflow or flipping with
    /// a non-Gaussian source.
    #[serde(default = "default_source")]
    pub source: Toy,
    /// Toy target distribution (exclusive with `dataset`).
    #[serde(default)]
    pub target: Option<Toy>,
    /// Image dataset spec (`cifar10:DIR`, `shapes:16,count=4096`, `folder:DIR`, …; see `slimflow
    /// data info`), images scaled to [-1, 1] (exclusive with `target`).
    #[serde(default)]
    pub dataset: Option<String>,
    /// Random horizontal flips of the training images (1-RF teacher training; the references use
    /// them on CIFAR-10).
    #[serde(default)]
    pub hflip: bool,
}

/// What the data section resolves to.
#[derive(Debug, Clone)]
pub enum Target<'a> {
    /// A 2-D toy distribution.
    Toy(&'a Toy),
    /// An image dataset.
    Images(slimflow_data::images::DatasetSpec),
}

impl DataConfig {
    /// The target, checked: exactly one of `target` and `dataset`.
    pub fn resolve(&self) -> Result<Target<'_>, String> {
        match (&self.target, &self.dataset) {
            (Some(t), None) => Ok(Target::Toy(t)),
            (None, Some(d)) => d.parse().map(Target::Images).map_err(|e| e.to_string()),
            (Some(_), Some(_)) => Err("set `target` (toy) or `dataset` (images), not both".into()),
            (None, None) => Err("set `target` (a toy distribution) or `dataset` (images)".into()),
        }
    }

    /// The toy target, when this is a toy run.
    pub fn toy(&self) -> Option<&Toy> {
        self.target.as_ref()
    }

    /// Every problem of the section, as `key: message` (whether `[model]` suits the data is
    /// checked with the whole config).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        note(&mut p, "data.source", self.source.validate());
        match self.resolve() {
            Ok(Target::Toy(t)) => note(&mut p, "data.target", t.validate()),
            Ok(Target::Images(_)) => {}
            Err(e) => p.push(format!("data: {e}")),
        }
        p
    }
}

fn default_source() -> Toy {
    Toy::Gaussian { std: 1.0 }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{parse, MINIMAL};

    #[test]
    fn exactly_one_target_is_set() {
        let e = parse(MINIMAL, &["data.dataset=\"shapes:8\""])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data: set `target` (toy) or `dataset` (images), not both"),
            "{e}"
        );
        let text = MINIMAL.replace(
            "target = { kind = \"checkerboard\", squares = 4, size = 4.0 }",
            "hflip = false",
        );
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("data: set `target` (a toy distribution)"), "{e}");
        // An image dataset needs an image architecture.
        let text = MINIMAL.replace(
            "target = { kind = \"checkerboard\", squares = 4, size = 4.0 }",
            "dataset = \"shapes:8\"",
        );
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            e.contains("model: an image dataset needs an image architecture"),
            "{e}"
        );
    }
}
