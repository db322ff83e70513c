//! `[reflow]`: stage `reflow`, the 2-rectified flow (SlimFlow's Annealing Reflow and rfpp's
//! LPIPS-Huber loss as options).

use serde::{Deserialize, Serialize};
use slimflow_losses::{LpipsPreset, ObjectiveSpec, PremetricConfig};
use slimflow_models::ArchConfig;
use slimflow_schedules::{Anneal, TimeDist};

use super::training::training_section;
use super::{check, note, optional_arch, Training};

/// How the reflow student starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// Copy the teacher's weights (same architecture required).
    #[default]
    Teacher,
    /// Fresh random weights (SlimFlow's slim students).
    Random,
}

/// rfpp's LPIPS-Huber reflow loss (replaces `premetric` when present).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LpipsHuberConfig {
    /// LPIPS variant (rfpp: `rfpp`).
    #[serde(default = "rfpp_preset")]
    pub lpips: LpipsPreset,
    /// Divide the LPIPS term by (1 − t) (rfpp's "divide by t" option in its own time).
    #[serde(default)]
    pub divide_by_one_minus_t: bool,
}

fn rfpp_preset() -> LpipsPreset {
    LpipsPreset::Rfpp
}

training_section! {
    /// Stage `reflow`: a 2-rectified flow on teacher pairs.
    pub struct ReflowConfig {
        /// Student architecture (a preset name such as `"slimflow-15.7m"` or a table); the teacher's
        /// (`[model]`) when absent.
        #[serde(default, deserialize_with = "optional_arch")]
        pub model: Option<ArchConfig>,
        /// Initialisation.
        #[serde(default)]
        pub init: Init,
        /// Training-time distribution (rfpp: `u_shaped`, a = 4).
        #[serde(default)]
        pub time: TimeDist,
        /// Velocity premetric (rfpp: `pseudo_huber`).
        #[serde(default)]
        pub premetric: PremetricConfig,
        /// rfpp's LPIPS-Huber loss (images; needs the VGG LPIPS weights); its velocity term is the
        /// pseudo-Huber `premetric`, which must then say so.
        #[serde(default)]
        pub lpips_huber: Option<LpipsHuberConfig>,
        /// SlimFlow's Annealing Reflow schedule β_k (default: fixed β = 0, plain reflow).
        #[serde(default)]
        pub anneal: Anneal,
        /// Steps K over which β anneals.
        #[serde(default)]
        pub anneal_steps: u64,
        /// Flip (z', x1) together with probability ½ (images: horizontally; 2-D: the first coordinate):
        /// `false`/`"none"`, `true`/`"per_sample"` (one coin per pair) or `"per_batch"` (one coin for the
        /// whole batch, as SlimFlow's `train_step` does).
        #[serde(default)]
        pub hflip: PairFlip,
    }
}

impl ReflowConfig {
    /// The objective: LPIPS-Huber when configured, else the premetric on the velocity.
    pub fn objective(&self) -> ObjectiveSpec {
        match self.lpips_huber {
            Some(l) => ObjectiveSpec::LpipsHuber {
                time: self.time,
                lpips: l.lpips,
                divide_by_one_minus_t: l.divide_by_one_minus_t,
            },
            None => ObjectiveSpec::Rf {
                time: self.time,
                premetric: self.premetric,
            },
        }
    }

    /// Every problem of the section, as `key: message` (whether `init` suits the student is
    /// checked with the whole config).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(m) = &self.model {
            note(&mut p, "reflow.model", m.validate());
        }
        note(&mut p, "reflow.time", self.time.validate());
        note(&mut p, "reflow.anneal", self.anneal.validate());
        let annealed = !matches!(self.anneal, Anneal::Fixed { .. });
        check(
            &mut p,
            "reflow.anneal_steps",
            !annealed || self.anneal_steps > 0,
            "an annealing schedule needs anneal_steps > 0 (with 0, β stays 0: plain reflow)",
        );
        check(
            &mut p,
            "reflow.anneal_steps",
            annealed || self.anneal_steps == 0,
            "anneal_steps is set but reflow.anneal is a fixed β; set reflow.anneal's kind",
        );
        if self.lpips_huber.is_some() {
            check(
                &mut p,
                "reflow.premetric",
                self.premetric == PremetricConfig::PseudoHuber {},
                "lpips_huber's velocity term is rfpp's pseudo-Huber; set reflow.premetric = \
                 { kind = \"pseudo_huber\" } (any other premetric would not be used)",
            );
        }
        p.extend(self.training_problems("reflow"));
        p
    }
}

/// How reflow flips its pairs (see [`ReflowConfig::hflip`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PairFlip {
    /// No flips.
    #[default]
    None,
    /// An independent coin per pair.
    PerSample,
    /// One coin per batch: the whole batch is flipped or not (SlimFlow `reflow/reflow.py`).
    PerBatch,
}

impl<'de> Deserialize<'de> for PairFlip {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(false) => Ok(PairFlip::None),
            Raw::Bool(true) => Ok(PairFlip::PerSample),
            Raw::Name(n) => match n.as_str() {
                "none" => Ok(PairFlip::None),
                "per_sample" => Ok(PairFlip::PerSample),
                "per_batch" => Ok(PairFlip::PerBatch),
                other => Err(serde::de::Error::custom(format!(
                    "unknown flip `{other}`: use false, true, \"none\", \"per_sample\" or \"per_batch\""
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{parse, MINIMAL};
    use super::*;

    #[test]
    fn values_that_would_be_ignored_are_refused() {
        let err = |sets: &[&str]| parse(MINIMAL, sets).unwrap_err().to_string();
        // An annealing schedule over 0 steps is β = 0 throughout: plain reflow.
        let e = err(&["reflow.anneal={ kind = \"linear\" }"]);
        assert!(
            e.contains("reflow.anneal_steps") && e.contains("β stays 0"),
            "{e}"
        );
        // anneal_steps with a fixed β does nothing.
        let e = err(&["reflow.anneal_steps=100"]);
        assert!(e.contains("reflow.anneal_steps"), "{e}");
        // LPIPS-Huber's velocity term is pseudo-Huber; another premetric would be unused.
        let e = err(&["reflow.lpips_huber={ lpips = \"rfpp\" }"]);
        assert!(
            e.contains("reflow.premetric") && e.contains("pseudo_huber"),
            "{e}"
        );
        assert!(parse(
            MINIMAL,
            &[
                "reflow.lpips_huber={ lpips = \"rfpp\" }",
                "reflow.premetric={ kind = \"pseudo_huber\" }"
            ]
        )
        .is_ok());
    }

    #[test]
    fn reflow_flips_take_booleans_and_names() {
        let flip =
            |v: &str| parse(MINIMAL, &[&format!("reflow.hflip={v}")]).map(|c| c.reflow.hflip);
        assert_eq!(flip("true").unwrap(), PairFlip::PerSample);
        assert_eq!(flip("false").unwrap(), PairFlip::None);
        assert_eq!(flip("\"per_batch\"").unwrap(), PairFlip::PerBatch);
        assert_eq!(flip("\"none\"").unwrap(), PairFlip::None);
        let e = flip("\"sometimes\"").unwrap_err().to_string();
        assert!(e.contains("per_batch") && e.contains("sometimes"), "{e}");
    }

    #[test]
    fn lpips_huber_defaults_to_rfpps_lpips() {
        let c = parse(
            MINIMAL,
            &[
                "reflow.lpips_huber={}",
                "reflow.premetric={ kind = \"pseudo_huber\" }",
            ],
        )
        .unwrap();
        let l = c.reflow.lpips_huber.unwrap();
        assert_eq!(l.lpips, LpipsPreset::Rfpp);
        assert!(!l.divide_by_one_minus_t);
    }
}
