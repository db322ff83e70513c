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
mod performance;
mod reflow;
mod resources;
mod train;
mod training;

pub use data::{DataConfig, Target};
pub use device::{DeviceChoice, NoSuchCuda};
pub use distill::DistillConfig;
pub use eval::{ClassLabels, EvalConfig};
pub use fidelity::{is_gaussian, is_standard};
pub use optim::{Autocast, EmaForm, GradGuard, OptimConfig, WarmupRule};
pub use overrides::parse_with_overrides;
pub use pairs::{PairDirection, PairLabels, PairsConfig};
pub use performance::{GradReduce, PerformanceConfig};
pub use reflow::{Init, LpipsHuberConfig, PairFlip, ReflowConfig};
pub use slimflow_losses::LpipsTerm;
pub use slimflow_metrics::features::FeatureChoice;
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

/// Whether `p` is the default (left out of the written config).
fn is_default(p: &PerformanceConfig) -> bool {
    *p == PerformanceConfig::default()
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
    /// How the stages compute (layout, autotuning); not part of any stage's hash.
    #[serde(default, skip_serializing_if = "is_default")]
    pub performance: PerformanceConfig,
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
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                location: "config".into(),
                message: p.join("; "),
            })
        }
    }

    /// Every problem [`PipelineConfig::validate`] reports, as `key: message`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let plain = {
            let mut c = Path::new(&self.name).components();
            matches!((c.next(), c.next()), (Some(std::path::Component::Normal(n)), None) if n == self.name.as_str())
        };
        let msg = "must be a plain directory name (no `/`, `..` or absolute path): the run goes to runs/<name>";
        check(&mut p, "name", plain, msg);
        note(&mut p, "model", self.model.validate());
        p.extend(self.performance.problems(self.device));
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
        p.extend(self.shape_problems());
        p.extend(self.resource_problems());
        p
    }

    /// Whether the networks' data shapes agree with the data and with each other.
    fn shape_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let teacher = self.model.data_shape();
        if self.data.toy().is_some() && teacher != [2] {
            p.push(format!(
                "model: the toy target is 2-D ([2]) but the network's data shape is {teacher:?}"
            ));
        }
        let student = self.student_arch().data_shape();
        if student != teacher {
            p.push(format!(
                "reflow.model: the student's data shape {student:?} differs from the pairs' \
                 {teacher:?} (the teacher's, `model`)"
            ));
        }
        p
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
    let problems = cfg.problems();
    match problems.split_first() {
        None => Ok(cfg),
        Some((first, rest)) => Err(locate_problems(first, rest, &text, path, overrides)),
    }
}

/// The problems of [`PipelineConfig::problems`], each with its place: `file:line` of its key (of
/// its section when the key takes its default), or the `--set` that gave it.
fn locate_problems(
    first: &str,
    rest: &[String],
    text: &str,
    path: &Path,
    overrides: &[String],
) -> ConfigError {
    let file = path.display().to_string();
    let place = |p: &str| overrides::locate(text, &file, overrides, p);
    let message = std::iter::once(first.to_string())
        .chain(rest.iter().map(|p| format!("{}: {p}", place(p))))
        .collect::<Vec<_>>()
        .join("; ");
    ConfigError::Invalid {
        location: place(first),
        message,
    }
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
    fn meaningless_values_are_refused_by_key() {
        for (set, want) in [
            ("distill.eps=-1.0", "distill.eps: must lie in (0, 1)"),
            ("pairs.eps=0.0", "pairs.eps: must lie in (0, 1)"),
            ("train.steps=0", "train.steps: must be positive"),
            ("reflow.steps=0", "reflow.steps: must be positive"),
            ("distill.steps=0", "distill.steps: must be positive"),
            ("eval.projections=0", "eval.projections: need at least 1"),
            ("eval.plot_extent=nan", "eval.plot_extent: must be finite"),
            ("eval.plot_extent=-1.0", "eval.plot_extent: must be finite"),
            ("name=\"../../x\"", "name: must be a plain directory name"),
            ("name=\"/tmp/x\"", "name: must be a plain directory name"),
            ("name=\"a/b\"", "name: must be a plain directory name"),
            ("name=\"..\"", "name: must be a plain directory name"),
            ("name=\"\"", "name: must be a plain directory name"),
            (
                "model={ arch = \"mlp\", data_dim = 3 }",
                "model: the toy target is 2-D",
            ),
            (
                "reflow.model={ arch = \"mlp\", data_dim = 3 }",
                "reflow.model: the student's data shape [3] differs from the pairs' [2]",
            ),
        ] {
            let e = parse(MINIMAL, &[set]).unwrap_err().to_string();
            assert!(e.contains(want), "{set}: {e}");
        }
        assert_eq!(
            parse(MINIMAL, &["name=\"run-1.b\""]).unwrap().name,
            "run-1.b"
        );
    }

    #[test]
    fn semantic_problems_name_the_line_of_their_key_or_their_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg.toml");
        let line =
            |text: &str, start: &str| text.lines().position(|l| l.starts_with(start)).unwrap() + 1;
        let text = MINIMAL.replace(
            "[eval]\nsamples = 16",
            "[eval]\nsamples = 16\nplot_extent = nan",
        );
        std::fs::write(&path, &text).unwrap();
        let e = super::load_config(&path, &[]).unwrap_err().to_string();
        let want = format!(
            "cfg.toml:{}: eval.plot_extent: ",
            line(&text, "plot_extent")
        );
        assert!(e.contains(&want), "{e}");
        // A key given by --set is placed at the --set; one left at its default, at its section.
        let sets = [
            "eval.plot_extent=1.0".to_string(),
            "eval.projections=0".into(),
        ];
        let e = super::load_config(&path, &sets).unwrap_err().to_string();
        assert!(
            e.starts_with("--set eval.projections: eval.projections"),
            "{e}"
        );
        let text = MINIMAL.replace(
            "[eval]\nsamples = 16",
            "[eval]\nsamples = 16\nprojections = 0",
        );
        std::fs::write(&path, &text).unwrap();
        let sets = ["train.steps=0".to_string()];
        let e = super::load_config(&path, &sets).unwrap_err().to_string();
        let want = format!(
            "--set train.steps: train.steps: must be positive (with 0 steps the stage would mark \
             an untrained model complete); {}:{}: eval.projections",
            path.display(),
            line(&text, "projections")
        );
        assert!(e.contains(&want), "{e}");
        std::fs::write(
            &path,
            MINIMAL.replace("[pairs]\ncount = 16", "[pairs]\ncount = 16\neps = 0.0"),
        )
        .unwrap();
        let e = super::load_config(&path, &[]).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "cfg.toml:{}: pairs.eps",
                line(MINIMAL, "[pairs]") + 2
            )),
            "{e}"
        );
        std::fs::write(&path, MINIMAL).unwrap();
        let e = super::load_config(&path, &["eval.eps=2.0".to_string()])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--set eval.eps: "), "{e}");
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
