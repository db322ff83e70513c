//! Checks that keep class labels and the source distribution consistent across the stages: a value
//! that some stage would ignore, or a combination that would silently train the wrong thing, is a
//! config error naming its keys.

use slimflow_data::Toy;

use super::{PairDirection, PairFlip, PipelineConfig, Target};

/// Whether `source` is a centred isotropic Gaussian N(0, std²·I) (the only law the annealing mix
/// sqrt(1 − β²)·z + β·ε and mirror flips preserve, for every β).
pub fn is_gaussian(source: &Toy) -> bool {
    matches!(source, Toy::Gaussian { .. })
}

/// Whether `source` is N(0, I) exactly (what image runs and [`slimflow_data::seeded_normal`] use).
pub fn is_standard(source: &Toy) -> bool {
    *source == Toy::Gaussian { std: 1.0 }
}

impl PipelineConfig {
    /// Class-conditioning and source problems, each as `key: message`.
    pub(super) fn fidelity_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let (teacher, student) = (self.model.label_dim(), self.student_arch().label_dim());
        if teacher != student {
            p.push(format!(
                "reflow.model: the student has label_dim = {student} but the teacher (model) has \
                 label_dim = {teacher}; pairs carry the teacher's labels, so both must be \
                 class-conditional with the same classes or both unconditional"
            ));
        }
        let toy = matches!(self.data.resolve(), Ok(Target::Toy(_)));
        if toy && teacher > 0 {
            p.push(format!(
                "model.label_dim: {teacher} classes, but the 2-D toy target (data.target) has no \
                 class labels; use label_dim = 0"
            ));
        }
        let pairs = &self.pairs;
        if let Some(l) = pairs.labels {
            let name = serde_json::to_value(l)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            if pairs.import.is_some() {
                p.push(format!(
                    "pairs.labels = \"{name}\": imported pairs (pairs.import) bring their own \
                     labels (label.npy / images_labels.csv); remove pairs.labels"
                ));
            } else if teacher == 0 {
                p.push(format!(
                    "pairs.labels = \"{name}\": the teacher is unconditional (model.label_dim = 0), \
                     so its pairs carry no labels; remove pairs.labels"
                ));
            }
            if l == super::PairLabels::Dataset && pairs.direction == PairDirection::FromNoise {
                p.push(
                    "pairs.labels = \"dataset\": pairs from noise (pairs.direction = \"from_noise\") \
                     have no data sample to take a label from; use \"random\" or direction = \
                     \"from_data\""
                        .into(),
                );
            }
        }
        if let Some(l) = self.eval.class_labels {
            if teacher == 0 {
                p.push(format!(
                    "eval.class_labels = \"{}\": the models are unconditional (model.label_dim = \
                     0), so their samples carry no labels; remove eval.class_labels",
                    l.name()
                ));
            } else if l == super::ClassLabels::Balanced && self.eval.samples % teacher as usize != 0
            {
                p.push(format!(
                    "eval.class_labels = \"balanced\": eval.samples = {} is not a multiple of the \
                     {teacher} classes, so the classes cannot have equal counts",
                    self.eval.samples
                ));
            }
        }
        let source = &self.data.source;
        let images = matches!(self.data.resolve(), Ok(Target::Images(_)));
        if images && !is_standard(source) {
            p.push(format!(
                "data.source = {source:?}: image runs (data.dataset) use N(0, I) noise; remove \
                 data.source"
            ));
        }
        if !is_gaussian(source) {
            let rc = &self.reflow;
            if rc.anneal.beta(0, rc.anneal_steps) > 0.0 {
                p.push(format!(
                    "reflow.anneal: Annealing Reflow mixes z' = sqrt(1 − β²)·z + β·ε, which keeps \
                     a Gaussian source's law but not that of data.source = {source:?}; use a \
                     `gaussian` source or no annealing (reflow.anneal = {{ kind = \"fixed\", beta \
                     = 0 }})"
                ));
            }
            if rc.hflip != PairFlip::None {
                p.push(format!(
                    "reflow.hflip: flipping z' mirrors its first coordinate, which changes the law \
                     of data.source = {source:?}; use a `gaussian` source or hflip = false"
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{
        parse_with_overrides, ClassLabels, ConfigError, PairLabels, PipelineConfig,
    };

    const TOY: &str = r#"
name = "t"
[data]
target = { kind = "checkerboard", squares = 4, size = 4.0 }
[model]
arch = "mlp"
hidden = 16
[train]
steps = 1
batch_size = 4
[pairs]
count = 4
[reflow]
steps = 1
batch_size = 4
[distill]
steps = 1
batch_size = 4
[eval]
samples = 4
"#;

    const CONDITIONAL_NET: &str = "model={ arch = \"edm_velocity\", img_resolution = 8, \
        in_channels = 1, out_channels = 1, label_dim = 10, model_channels = 8, channel_mult = [1], \
        num_blocks = 1, attn_resolutions = [], dropout = 0.0 }";

    fn check(overrides: &[&str]) -> Result<PipelineConfig, String> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let cfg: PipelineConfig =
            parse_with_overrides(TOY, Path::new("c.toml"), &o).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e: ConfigError| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn class_conditional_image_runs_validate_and_pick_their_label_source() {
        let cfg = image_config(&[]).unwrap();
        assert_eq!(cfg.pairs.label_source(10), Some(PairLabels::Random));
        let cfg = image_config(&["pairs.direction=\"from_data\""]).unwrap();
        assert_eq!(cfg.pairs.label_source(10), Some(PairLabels::Dataset));
        assert_eq!(cfg.pairs.label_source(0), None);
        let err = image_config(&["pairs.labels=\"dataset\""]).unwrap_err();
        assert!(
            err.contains("pairs.labels = \"dataset\"") && err.contains("from_noise"),
            "{err}"
        );
        let err = image_config(&["pairs.labels=\"random\"", "pairs.import=\"/x\""]).unwrap_err();
        assert!(err.contains("pairs.import"), "{err}");
        // the student must share the teacher's classes
        let err = image_config(&[
            "reflow.init=\"random\"",
            "reflow.model={ arch = \"edm_velocity\", img_resolution = 8, in_channels = 1, \
             out_channels = 1, model_channels = 8, channel_mult = [1], num_blocks = 1, \
             attn_resolutions = [], dropout = 0.0 }",
        ])
        .unwrap_err();
        assert!(
            err.contains("reflow.model") && err.contains("label_dim = 0"),
            "{err}"
        );
    }

    fn image_config(extra: &[&str]) -> Result<PipelineConfig, String> {
        let text = TOY.replace(
            "target = { kind = \"checkerboard\", squares = 4, size = 4.0 }",
            "dataset = \"shapes:8\"",
        );
        let mut o: Vec<String> = vec![CONDITIONAL_NET.to_string()];
        o.extend(extra.iter().map(|s| s.to_string()));
        let cfg: PipelineConfig =
            parse_with_overrides(&text, Path::new("c.toml"), &o).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn eval_class_labels_need_a_class_conditional_model() {
        let cfg = image_config(&[]).unwrap();
        assert_eq!(cfg.eval.class_labels, None);
        let cfg = image_config(&["eval.class_labels=\"balanced\"", "eval.samples=40"]).unwrap();
        assert_eq!(cfg.eval.class_labels, Some(ClassLabels::Balanced));
        let cfg = image_config(&["eval.class_labels=\"random\""]).unwrap();
        assert_eq!(cfg.eval.class_labels, Some(ClassLabels::Random));
        let err = image_config(&["eval.class_labels=\"balanced\"", "eval.samples=45"]).unwrap_err();
        assert!(
            err.contains("eval.class_labels") && err.contains("multiple of the 10 classes"),
            "{err}"
        );
        // an unconditional model would ignore the choice
        let err = check(&["eval.class_labels=\"random\""]).unwrap_err();
        assert!(
            err.contains("eval.class_labels") && err.contains("unconditional"),
            "{err}"
        );
        let err = image_config(&["eval.class_labels=\"per_class\""]).unwrap_err();
        assert!(err.contains("balanced"), "{err}");
    }

    #[test]
    fn labels_where_nothing_carries_them_are_errors() {
        let err = check(&["model.label_dim=3"]).unwrap_err();
        assert!(
            err.contains("model.label_dim") && err.contains("data.target"),
            "{err}"
        );
        let err = check(&["pairs.labels=\"random\""]).unwrap_err();
        assert!(
            err.contains("pairs.labels") && err.contains("unconditional"),
            "{err}"
        );
    }

    #[test]
    fn sources_that_a_stage_cannot_honour_are_errors() {
        let ring = "data.source={ kind = \"gaussian_ring\", modes = 4, radius = 3.0, std = 0.1 }";
        check(&[ring]).unwrap();
        let err = check(&[
            ring,
            "reflow.anneal={ kind = \"linear\" }",
            "reflow.anneal_steps=10",
        ])
        .unwrap_err();
        assert!(
            err.contains("reflow.anneal:") && err.contains("gaussian"),
            "{err}"
        );
        let err = check(&[ring, "reflow.hflip=true"]).unwrap_err();
        assert!(err.contains("reflow.hflip"), "{err}");
        // a scaled Gaussian keeps its law under the annealing mix
        let wide = "data.source={ kind = \"gaussian\", std = 2.0 }";
        check(&[
            wide,
            "reflow.anneal={ kind = \"linear\" }",
            "reflow.anneal_steps=10",
        ])
        .unwrap();
        let err = image_config(&[wide]).unwrap_err();
        assert!(
            err.contains("data.source") && err.contains("N(0, I)"),
            "{err}"
        );
    }
}
