//! What a row of the stage table ([`STAGES`]) says about a stage, and look-ups in the table. The
//! CLI's stage subcommands and `pipeline`, the plan and preflight, the run summary, the models
//! `eval` compares and `cargo xtask` (through `slimflow stages --json`) all read the table, so a
//! stage is its file, its row and its config section.

use serde::Serialize;

use super::STAGES;
use crate::config::PipelineConfig;
use crate::error::Result;
use crate::run_dir::{StageCtx, StageOutcome};

/// One pipeline stage.
#[derive(Debug)]
pub struct Stage {
    /// Its name: the CLI subcommand and the directory `<run>/<name>/`.
    pub name: &'static str,
    /// The config section (top-level TOML table) holding its settings.
    pub section: &'static str,
    /// One line for the CLI help.
    pub about: &'static str,
    /// Files of earlier stages it reads.
    pub inputs: &'static [Input],
    /// Whether it also reads the model of every stage that makes one (`eval`).
    pub reads_models: bool,
    /// Its main output files, relative to its directory.
    pub outputs: &'static [&'static str],
    /// The model it makes, if any.
    pub model: Option<ModelOutput>,
    /// A Markdown file among its outputs that the CLI prints after it has run.
    pub report: Option<&'static str>,
    /// Runs (or resumes, or skips) it.
    pub run: fn(&StageCtx) -> Result<StageOutcome>,
    /// The work it does in total, in words (`--dry-run`'s plan).
    pub work: fn(&PipelineConfig) -> String,
    /// What it needs before it can start; checked up front while it is not complete.
    pub preflight: fn(&PipelineConfig) -> Vec<Need>,
}

/// A file a stage reads from an earlier stage's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Input {
    /// The stage that writes it.
    pub producer: &'static str,
    /// Its path inside the producer's directory.
    pub file: &'static str,
    /// What it is, in words (error messages).
    pub what: &'static str,
    /// The condition under which it is read, in words; `None`: always.
    pub when: Option<&'static str>,
}

/// The model a stage makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelOutput {
    /// Its name in the evaluation table (`1-RF`, …).
    pub label: &'static str,
    /// Its file inside the stage directory.
    pub file: &'static str,
}

/// A requirement found by a stage's preflight. Shared ones are checked once for all stages.
#[derive(Debug, Clone, PartialEq)]
pub enum Need {
    /// An image run's dataset loads and its labels fit the model.
    Dataset,
    /// A pretrained network installed; the text names what needs it.
    Weights(slimflow_weights::Net, &'static str),
    /// A problem the stage found itself.
    Problem(String),
}

/// The stage named `name`.
pub fn find(name: &str) -> Option<&'static Stage> {
    STAGES.iter().find(|s| s.name == name)
}

/// The stages that make a model, with it, in pipeline order.
pub fn models() -> impl Iterator<Item = (&'static Stage, &'static ModelOutput)> {
    STAGES
        .iter()
        .filter_map(|s| s.model.as_ref().map(|m| (s, m)))
}

impl Stage {
    /// Every file it reads: its own inputs, then (for `reads_models`) each stage's model, of which
    /// at least one must exist.
    pub fn all_inputs(&self) -> Vec<Input> {
        let models = models().filter(|_| self.reads_models).map(|(s, m)| Input {
            producer: s.name,
            file: m.file,
            what: "a trained model",
            when: Some("at least one of them"),
        });
        self.inputs.iter().copied().chain(models).collect()
    }

    /// Its static part, as `slimflow stages --json` prints it.
    pub fn info(&self) -> StageInfo {
        StageInfo {
            name: self.name,
            section: self.section,
            about: self.about,
            inputs: self.all_inputs(),
            outputs: self.outputs,
            model: self.model,
            report: self.report,
        }
    }
}

/// A stage without its functions: what other programs (`cargo xtask`) learn from the binary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageInfo {
    /// See [`Stage::name`].
    pub name: &'static str,
    /// See [`Stage::section`].
    pub section: &'static str,
    /// See [`Stage::about`].
    pub about: &'static str,
    /// [`Stage::all_inputs`].
    pub inputs: Vec<Input>,
    /// See [`Stage::outputs`].
    pub outputs: &'static [&'static str],
    /// See [`Stage::model`].
    pub model: Option<ModelOutput>,
    /// See [`Stage::report`].
    pub report: Option<&'static str>,
}

/// Whether `stage` declares `rel` of `producer` (described as `what`) among its inputs.
pub(crate) fn declares(stage: &str, producer: &str, what: &str, rel: &str) -> bool {
    find(stage).is_some_and(|s| {
        s.inputs
            .iter()
            .any(|i| i.producer == producer && i.file == rel && i.what == what)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sections_are_unique() {
        for (i, a) in STAGES.iter().enumerate() {
            for b in &STAGES[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.section, b.section);
            }
        }
    }

    #[test]
    fn inputs_come_from_earlier_stages_and_are_their_outputs() {
        for (i, s) in STAGES.iter().enumerate() {
            for input in s.all_inputs() {
                let at = STAGES.iter().position(|p| p.name == input.producer);
                assert!(
                    at.is_some_and(|at| at < i),
                    "{}: {} is not an earlier stage",
                    s.name,
                    input.producer
                );
                let producer = &STAGES[at.unwrap_or_default()];
                assert!(
                    producer.outputs.contains(&input.file),
                    "{}: {} does not write {}",
                    s.name,
                    producer.name,
                    input.file
                );
            }
        }
    }

    #[test]
    fn models_and_reports_are_outputs() {
        for s in STAGES {
            let files = s.model.map(|m| m.file).into_iter().chain(s.report);
            for f in files {
                assert!(s.outputs.contains(&f), "{}: {f}", s.name);
            }
        }
        let labels: Vec<&str> = models().map(|(_, m)| m.label).collect();
        for (i, l) in labels.iter().enumerate() {
            assert!(!labels[i + 1..].contains(l), "model label {l} twice");
        }
    }

    #[test]
    fn info_lists_every_model_as_an_input_of_the_stages_that_read_them() {
        let makers: Vec<&str> = models().map(|(s, _)| s.name).collect();
        assert!(!makers.is_empty());
        for s in STAGES.iter().filter(|s| s.reads_models) {
            let info = s.info();
            let producers: Vec<&str> = info.inputs[s.inputs.len()..]
                .iter()
                .map(|i| i.producer)
                .collect();
            assert_eq!(producers, makers, "{}", s.name);
        }
        assert!(STAGES.iter().all(|s| find(s.name).is_some()));
        assert!(find("nope").is_none());
    }
}
