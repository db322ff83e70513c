//! `[train]` (the 1-RF teacher) and `[teacher]` (a pretrained teacher imported instead).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use slimflow_losses::{ObjectiveSpec, PremetricConfig};
use slimflow_schedules::TimeDist;

use super::training::training_section;
use super::{check, note, Training};

training_section! {
    /// Stage `train`: a 1-rectified flow on independent (noise, data) pairs.
    pub struct TrainConfig {
        /// Training-time distribution.
        #[serde(default)]
        pub time: TimeDist,
        /// Velocity premetric.
        #[serde(default)]
        pub premetric: PremetricConfig,
    }
}

impl TrainConfig {
    /// The objective: the premetric on the velocity (1-RF).
    pub fn objective(&self) -> ObjectiveSpec {
        ObjectiveSpec::Rf {
            time: self.time,
            premetric: self.premetric,
        }
    }

    /// Every problem of the section, as `key: message`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        note(&mut p, "train.time", self.time.validate());
        p.extend(self.training_problems("train"));
        p
    }
}

/// A pretrained teacher imported instead of training the 1-RF (stage `train` then converts it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// Which reference wrote the file: `edm` (EDM snapshot `.pkl`), `rfpp` (`flow_model_*_ema.pth`)
    /// or `ncsnpp` (RectifiedFlow / SlimFlow score_sde checkpoint); `[model]` is its architecture.
    pub from: String,
    /// The checkpoint file.
    pub file: PathBuf,
    /// Sub-tree of the file (`ema`, `net`, `model_state_dict`, …); the source's default when absent.
    #[serde(default)]
    pub key: Option<String>,
}

impl TeacherConfig {
    /// Every problem of the section, as `key: message`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let ok = self
            .from
            .parse::<slimflow_models::import::ImportSource>()
            .is_ok();
        check(&mut p, "teacher.from", ok, "use edm, rfpp or ncsnpp");
        p
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{parse, MINIMAL};

    #[test]
    fn teachers_name_a_known_source() {
        let set = |from: &str| format!("teacher={{ from = \"{from}\", file = \"t.pkl\" }}");
        let c = parse(MINIMAL, &[&set("edm")]).unwrap();
        assert_eq!(c.teacher.map(|t| t.from), Some("edm".into()));
        let e = parse(MINIMAL, &[&set("sd")]).unwrap_err().to_string();
        assert!(e.contains("teacher.from: use edm, rfpp or ncsnpp"), "{e}");
    }
}
