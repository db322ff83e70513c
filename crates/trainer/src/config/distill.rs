//! `[distill]`: stage `distill`, the one-step generator (optionally flow-guided).

use slimflow_losses::{DistanceSpec, DistillForm, LpipsTerm, PremetricConfig};

use super::training::training_section;
use super::{check, default_eps, Training};

fn one() -> f64 {
    1.0
}

training_section! {
    /// Stage `distill`: one-step distillation of the 2-RF.
    pub struct DistillConfig {
        /// Start time of the one-step generator.
        #[serde(default = "default_eps")]
        pub eps: f64,
        /// The prediction trained: `euler` (our sampler's one step) or `slimflow` (the reference's).
        #[serde(default)]
        pub form: DistillForm,
        /// Distance between prediction and pair endpoint (weighted by `premetric_weight`).
        #[serde(default)]
        pub premetric: PremetricConfig,
        /// Weight of `premetric` in the distance (0 leaves LPIPS alone).
        #[serde(default = "one")]
        pub premetric_weight: f64,
        /// An LPIPS term added to the distance (SlimFlow: `{ preset = "slimflow" }`; needs the VGG
        /// LPIPS weights).
        #[serde(default)]
        pub lpips: Option<LpipsTerm>,
        /// Weight λ of SlimFlow's flow-guided term (0 disables it).
        #[serde(default)]
        pub flow_guided_weight: f64,
        /// Range of t' for the flow-guided term.
        #[serde(default = "default_fg_range")]
        pub flow_guided_t: [f64; 2],
    }
}

fn default_fg_range() -> [f64; 2] {
    [0.2, 0.8]
}

impl DistillConfig {
    /// The distance distillation (and the flow-guided term) minimises.
    pub fn distance(&self) -> DistanceSpec {
        DistanceSpec {
            premetric: self.premetric,
            premetric_weight: self.premetric_weight,
            lpips: self.lpips,
        }
    }

    /// Every problem of the section, as `key: message`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.training_problems("distill");
        let ok = self.eps > 0.0 && self.eps < 1.0;
        check(&mut p, "distill.eps", ok, "must lie in (0, 1)");
        let [lo, hi] = self.flow_guided_t;
        let ok = self.eps <= lo && lo < hi && hi <= 1.0;
        check(
            &mut p,
            "distill.flow_guided_t",
            ok,
            "need eps ≤ lo < hi ≤ 1",
        );
        let ok = self.premetric_weight >= 0.0
            && self.lpips.is_none_or(|l| l.weight >= 0.0)
            && (self.premetric_weight > 0.0 || self.lpips.is_some_and(|l| l.weight > 0.0));
        let msg = "weights must be ≥ 0 with at least one positive";
        check(&mut p, "distill.premetric_weight", ok, msg);
        let ok = self.flow_guided_weight >= 0.0;
        check(&mut p, "distill.flow_guided_weight", ok, "must be ≥ 0");
        p
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{parse, MINIMAL};
    use super::*;

    #[test]
    fn the_distance_needs_a_positive_weight() {
        let err = |sets: &[&str]| parse(MINIMAL, sets).unwrap_err().to_string();
        let e = err(&["distill.premetric_weight=0.0"]);
        assert!(
            e.contains("distill.premetric_weight: weights must be ≥ 0"),
            "{e}"
        );
        let c = parse(
            MINIMAL,
            &[
                "distill.premetric_weight=0.0",
                "distill.lpips={ preset = \"slimflow\" }",
                "distill.form=\"slimflow\"",
            ],
        )
        .unwrap();
        let lpips = c.distill.lpips.unwrap();
        assert_eq!(
            (lpips.preset, lpips.weight),
            (slimflow_losses::LpipsPreset::Slimflow, 1.0)
        );
        assert_eq!(c.distill.form, DistillForm::Slimflow);
        let e = err(&["distill.flow_guided_t=[0.9, 0.1]"]);
        assert!(e.contains("distill.flow_guided_t"), "{e}");
        let e = err(&["distill.flow_guided_weight=-1.0"]);
        assert!(e.contains("distill.flow_guided_weight: must be ≥ 0"), "{e}");
    }
}
