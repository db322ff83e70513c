//! `[eval]`: stage `eval`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use slimflow_metrics::features::FeatureChoice;
use slimflow_sampling::SolverConfig;

use super::{check, default_eps, note};

/// Stage `eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Generated and held-out target samples per model.
    pub samples: usize,
    /// Many-step solver.
    #[serde(default)]
    pub solver: SolverConfig,
    /// Euler steps of the trajectories used for straightness.
    #[serde(default = "default_straightness_steps")]
    pub straightness_steps: usize,
    /// Start time of all solves.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Random directions of the sliced Wasserstein distance.
    #[serde(default = "default_projections")]
    pub projections: usize,
    /// Half-width of the plotted square.
    #[serde(default = "default_extent")]
    pub plot_extent: f64,
    /// Image features of the Fréchet distance: `auto` (FID with the Inception weights when
    /// installed, else the stand-in classifier), `inception` (FID; error when missing) or `standin`.
    #[serde(default)]
    pub features: FeatureChoice,
    /// Samples of the straightness trajectories (images: a subset keeps it cheap).
    #[serde(default = "default_straightness_samples")]
    pub straightness_samples: usize,
    /// Images per sampling / feature batch.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Reference statistics: a `.npz` path (`mu`, `sigma`: pytorch-fid's, EDM's or `slimflow
    /// fid-ref`'s) or the name of EDM's published file in the weights cache (`fid-ref-cifar10-32x32`,
    /// `fid-ref-imagenet-64x64`, `fid-ref-ffhq-64x64`, `fid-ref-afhqv2-64x64`; `slimflow weights
    /// fetch NAME`); computed from the dataset when absent. Inception features only.
    #[serde(default)]
    pub reference: Option<PathBuf>,
    /// Training batches of the stand-in classifier (when it is used and not cached yet).
    #[serde(default = "default_standin_steps")]
    pub standin_steps: usize,
    /// Class of each evaluation sample of a class-conditional model: `random` (the default: uniform,
    /// drawn from the sample's seed, as EDM's `generate.py` does for its FID) or `balanced` (sample
    /// i gets class i mod K: exactly samples / K per class). Unconditional models take no labels,
    /// so setting it for one is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_labels: Option<ClassLabels>,
}

impl EvalConfig {
    /// Every problem of the section, as `key: message` (the class labels are checked against the
    /// model with the whole config).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        note(&mut p, "eval.solver", self.solver.validate());
        check(&mut p, "eval.samples", self.samples >= 2, "need at least 2");
        let ok = self.eps > 0.0 && self.eps < 1.0;
        check(&mut p, "eval.eps", ok, "must lie in (0, 1)");
        check(
            &mut p,
            "eval.projections",
            self.projections >= 1,
            "need at least 1",
        );
        let ok = self.plot_extent.is_finite() && self.plot_extent > 0.0;
        check(
            &mut p,
            "eval.plot_extent",
            ok,
            "must be finite and positive",
        );
        check(
            &mut p,
            "eval.batch_size",
            self.batch_size >= 1,
            "must be positive",
        );
        let ok = self.straightness_steps >= 1;
        check(&mut p, "eval.straightness_steps", ok, "need at least 1");
        p
    }
}

/// How the evaluation draws class labels (see [`EvalConfig::class_labels`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassLabels {
    /// Uniform over the classes, per sample from its seed (EDM `generate.py`).
    #[default]
    Random,
    /// Sample i gets class i mod K, so each class has exactly samples / K.
    Balanced,
}

impl ClassLabels {
    /// The name used in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            ClassLabels::Random => "random",
            ClassLabels::Balanced => "balanced",
        }
    }
}

fn default_eval_batch() -> usize {
    500
}
fn default_standin_steps() -> usize {
    600
}

fn default_straightness_samples() -> usize {
    256
}

fn default_straightness_steps() -> usize {
    100
}
fn default_projections() -> usize {
    256
}
fn default_extent() -> f64 {
    4.0
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{parse, MINIMAL};
    use super::*;

    #[test]
    fn eval_takes_its_defaults_and_is_checked() {
        let e = parse(MINIMAL, &[]).unwrap().eval;
        assert_eq!(
            (
                e.straightness_steps,
                e.projections,
                e.batch_size,
                e.standin_steps
            ),
            (100, 256, 500, 600)
        );
        assert_eq!(e.features, FeatureChoice::Auto);
        let err = parse(MINIMAL, &["eval.samples=1", "eval.straightness_steps=0"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("eval.samples: need at least 2; eval.straightness_steps: need at least 1"),
            "{err}"
        );
    }
}
