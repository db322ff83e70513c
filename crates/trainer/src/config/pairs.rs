//! `[pairs]`: stage `generate-pairs`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use slimflow_sampling::SolverConfig;

use super::{check, default_eps, note};

/// Stage `generate-pairs`: teacher ODE solves from seeded noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairsConfig {
    /// Number of pairs.
    pub count: u64,
    /// Pairs per shard.
    #[serde(default = "default_shard_size")]
    pub shard_size: u64,
    /// Pairs per teacher batch.
    #[serde(default = "default_pair_batch")]
    pub batch_size: usize,
    /// Solver (reference: RK45 with rtol = atol = 1e-5).
    #[serde(default)]
    pub solver: SolverConfig,
    /// Start time of the solve.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Pair i uses noise seed `seed_base + i`.
    #[serde(default = "default_seed_base")]
    pub seed_base: u64,
    /// The teacher's inference precision (`f32`, `bf16`, `f16`); the ODE state stays float32.
    #[serde(default)]
    pub precision: slimflow_models::Precision,
    /// Stored element type of z and x1 (`f32` or `f16`).
    #[serde(default)]
    pub dtype: slimflow_data::PairDtype,
    /// `from_noise`: x1 = ODE(z) from seeded noise (the papers' reflow pairs); `from_data`: z =
    /// reverse ODE of seeded data samples x1 (pairs anchored on real data).
    #[serde(default)]
    pub direction: PairDirection,
    /// Import reference pairs instead of generating them: a directory (or `.npz`) with SlimFlow's
    /// `z.npy`, `z1.npy` [, `label.npy`].
    #[serde(default)]
    pub import: Option<PathBuf>,
    /// Class labels of a class-conditional teacher's pairs: `random` (uniform over the classes,
    /// drawn per pair from its seed, as rfpp's `generate_edm.py` does; the default for `from_noise`)
    /// or `dataset` (the label of the pair's data sample; `from_data` only, and its default).
    /// Unconditional teachers take no labels, so setting it for one is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<PairLabels>,
}

/// Where the class labels of generated pairs come from (see [`PairsConfig::labels`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairLabels {
    /// Uniform over the classes, per pair from its seed.
    Random,
    /// The label of the pair's data sample (`direction = "from_data"`).
    Dataset,
}

impl PairsConfig {
    /// The effective label source for a teacher with `classes` classes (`None`: unconditional).
    pub fn label_source(&self, classes: i64) -> Option<PairLabels> {
        (classes > 0).then(|| {
            self.labels.unwrap_or(match self.direction {
                PairDirection::FromNoise => PairLabels::Random,
                PairDirection::FromData => PairLabels::Dataset,
            })
        })
    }

    /// Every problem of the section, as `key: message` (the labels are checked against the
    /// teacher with the whole config).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        note(&mut p, "pairs.solver", self.solver.validate());
        let ok = self.batch_size > 0;
        check(&mut p, "pairs.batch_size", ok, "must be positive");
        let ok = self.eps > 0.0 && self.eps < 1.0;
        check(&mut p, "pairs.eps", ok, "must lie in (0, 1)");
        check(
            &mut p,
            "pairs.shard_size",
            self.shard_size > 0,
            "must be positive",
        );
        p
    }
}

/// Which end of the teacher's ODE a pair starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairDirection {
    /// Seeded noise z, integrated forward to x1.
    #[default]
    FromNoise,
    /// Seeded data samples x1, integrated backward to z.
    FromData,
}

fn default_shard_size() -> u64 {
    10_000
}
fn default_pair_batch() -> usize {
    5_000
}
fn default_seed_base() -> u64 {
    1 << 32
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{parse, MINIMAL};
    use super::*;

    #[test]
    fn pairs_take_the_references_defaults_and_are_checked() {
        let c = parse(MINIMAL, &[]).unwrap();
        assert_eq!(
            c.pairs.solver,
            SolverConfig::Rk45 {
                rtol: 1e-5,
                atol: 1e-5
            }
        );
        assert_eq!(
            (
                c.pairs.shard_size,
                c.pairs.batch_size,
                c.pairs.eps,
                c.pairs.seed_base
            ),
            (10_000, 5_000, 1e-3, 1 << 32)
        );
        let e = parse(
            MINIMAL,
            &[
                "pairs.batch_size=0",
                "pairs.solver={ kind = \"euler\", steps = 0 }",
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("pairs.solver: ") && e.contains("pairs.batch_size: must be positive"),
            "{e}"
        );
    }
}
