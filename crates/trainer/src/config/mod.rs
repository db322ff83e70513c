//! The pipeline configuration: one TOML file with a section per stage.
//!
//! Loading applies `--set a.b=value` overrides to the TOML document *before* deserialisation, so
//! overrides pass the same checks as the file; unknown keys are rejected everywhere
//! (`deny_unknown_fields`), and errors name the file, line and key path.
//!
//! Each section lives in its own module with its own `problems()`; [`PipelineConfig::validate`]
//! collects them and adds the checks that need more than one section.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
pub use slimflow_losses::{DistillForm, LpipsPreset};
use slimflow_models::ArchConfig;

mod data;
mod device;
mod distill;
mod eval;
mod fidelity;
mod optim;
mod overrides;
mod pairs;
mod reflow;
mod train;
mod training;

pub use data::{DataConfig, Target};
pub use device::DeviceChoice;
pub use distill::{DistillConfig, LpipsTerm};
pub use eval::{ClassLabels, EvalConfig, FeatureChoice};
pub use fidelity::{is_gaussian, is_standard};
pub use optim::{GradGuard, OptimConfig, WarmupRule};
pub use overrides::parse_with_overrides;
pub use pairs::{PairDirection, PairLabels, PairsConfig};
pub use reflow::{Init, LpipsHuberConfig, PairFlip, ReflowConfig};
pub use train::{TeacherConfig, TrainConfig};
pub use training::{CheckpointConfig, Training};

/// A configuration problem, reported with file, line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or a value/key rejected by the schema.
    #[error("{location}: {message}")]
    Invalid {
        /// `file:line:column` (or `--set key`).
        location: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A `--set` argument is malformed.
    #[error("--set {arg}: {reason}")]
    BadOverride {
        /// The argument.
        arg: String,
        /// What is wrong.
        reason: String,
    },
}

/// The whole pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Run name: the run directory is `runs/<name>` unless given explicitly.
    pub name: String,
    /// Master seed.
    #[serde(default)]
    pub seed: u64,
    /// Device.
    #[serde(default)]
    pub device: DeviceChoice,
    /// Data.
    pub data: DataConfig,
    /// Teacher architecture: a preset name (`"edm-ddpmpp-cifar10"`) or a table (`arch = "ncsnpp"`, …).
    #[serde(deserialize_with = "arch")]
    pub model: ArchConfig,
    /// Import this pretrained teacher instead of training the 1-RF.
    #[serde(default)]
    pub teacher: Option<TeacherConfig>,
    /// Stage `train`.
    pub train: TrainConfig,
    /// Stage `generate-pairs`.
    pub pairs: PairsConfig,
    /// Stage `reflow`.
    pub reflow: ReflowConfig,
    /// Stage `distill`.
    pub distill: DistillConfig,
    /// Stage `eval`.
    pub eval: EvalConfig,
}

impl PipelineConfig {
    /// Semantic checks beyond the schema, all problems at once: each section's, in pipeline
    /// order, and those across sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        note(&mut p, "model", self.model.validate());
        p.extend(self.data.problems());
        if matches!(self.data.resolve(), Ok(Target::Images(_))) {
            let ok = self.model.data_shape().len() == 3;
            let msg = "an image dataset needs an image architecture";
            check(&mut p, "model", ok, msg);
        }
        p.extend(self.fidelity_problems());
        if let Some(t) = &self.teacher {
            p.extend(t.problems());
        }
        p.extend(self.train.problems());
        p.extend(self.pairs.problems());
        p.extend(self.reflow.problems());
        let same_arch = self.reflow.model.as_ref().is_none_or(|m| m == &self.model);
        let msg = "`teacher` needs the student to share the teacher's architecture; use init = \"random\"";
        check(
            &mut p,
            "reflow.init",
            self.reflow.init == Init::Random || same_arch,
            msg,
        );
        p.extend(self.distill.problems());
        p.extend(self.eval.problems());
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                location: "config".into(),
                message: p.join("; "),
            })
        }
    }

    /// The reflow/distill student's architecture.
    pub fn student_arch(&self) -> &ArchConfig {
        self.reflow.model.as_ref().unwrap_or(&self.model)
    }
}

/// Records `key: error` when `r` failed.
fn note<E: std::fmt::Display>(problems: &mut Vec<String>, key: &str, r: Result<(), E>) {
    if let Err(e) = r {
        problems.push(format!("{key}: {e}"));
    }
}

/// Records `key: msg` unless `ok`.
fn check(problems: &mut Vec<String>, key: &str, ok: bool, msg: &str) {
    if !ok {
        problems.push(format!("{key}: {msg}"));
    }
}

/// The start time of solves and of the one-step generator (`pairs`, `distill`, `eval`).
fn default_eps() -> f64 {
    1e-3
}

/// An architecture given as a preset name or as a table.
fn arch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ArchConfig, D::Error> {
    use serde::de::Error as _;
    match toml::Value::deserialize(d)? {
        toml::Value::String(name) => ArchConfig::preset(&name).map_err(D::Error::custom),
        other => ArchConfig::deserialize(other).map_err(D::Error::custom),
    }
}

fn optional_arch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ArchConfig>, D::Error> {
    arch(d).map(Some)
}

/// The resolved config as TOML (written into every stage directory and printed by `--dry-run`).
pub fn to_toml(cfg: &PipelineConfig) -> Result<String, toml::ser::Error> {
    toml::to_string_pretty(cfg)
}

/// Loads and validates a pipeline config file with `--set` overrides.
pub fn load_config(path: &Path, overrides: &[String]) -> Result<PipelineConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let cfg: PipelineConfig = parse_with_overrides(&text, path, overrides)?;
    cfg.validate().map_err(|e| match e {
        ConfigError::Invalid { message, .. } => ConfigError::Invalid {
            location: path.display().to_string(),
            message,
        },
        other => other,
    })?;
    Ok(cfg)
}

/// A small valid config and a parser for the section tests.
#[cfg(test)]
mod test_support {
    use std::path::Path;

    use super::{parse_with_overrides, ConfigError, PipelineConfig};

    pub(super) const MINIMAL: &str = r#"
name = "t"
seed = 1

[data]
target = { kind = "checkerboard", squares = 4, size = 4.0 }

[model]
arch = "mlp"
hidden = 32

[train]
steps = 10
batch_size = 8

[pairs]
count = 16

[reflow]
steps = 10
batch_size = 8

[distill]
steps = 10
batch_size = 8

[eval]
samples = 16
"#;

    /// Parses `text` with `overrides` and validates it.
    pub(super) fn parse(text: &str, overrides: &[&str]) -> Result<PipelineConfig, ConfigError> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let cfg: PipelineConfig = parse_with_overrides(text, Path::new("cfg.toml"), &o)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use slimflow_data::Toy;

    use super::test_support::{parse, MINIMAL};

    #[test]
    fn minimal_config_takes_documented_defaults() {
        let c = parse(MINIMAL, &[]).unwrap();
        assert_eq!(c.train.optim.lr, 2e-4);
        assert_eq!(c.data.source, Toy::Gaussian { std: 1.0 });
        assert_eq!(c.student_arch(), &c.model);
    }

    #[test]
    fn semantic_problems_are_all_listed() {
        let err = parse(
            MINIMAL,
            &[
                "train.batch_size=0",
                "eval.samples=1",
                "reflow.model={ arch = \"mlp\", hidden = 8 }",
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("train.batch_size")
                && err.contains("eval.samples")
                && err.contains("reflow.init"),
            "{err}"
        );
    }
}
