//! What the three training stages (`train`, `reflow`, `distill`) share: `steps`, `batch_size`,
//! `[<stage>.optim]` and `[<stage>.checkpoint]`, declared once by `training_section!` and read
//! through [`Training`].
//!
//! The shared keys stay plain fields of each section rather than an embedded struct: serde's
//! `flatten` does not work with `deny_unknown_fields`, and it would change the unknown-key
//! messages (which list every key of the section, in declaration order) and the key paths in
//! errors. The macro keeps each section one ordinary struct, so its keys, their order in the
//! canonical TOML and its error messages are those of the struct written out by hand.

use serde::{Deserialize, Serialize};

use super::{check, OptimConfig};

/// Checkpoint and logging cadence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Save a resumable state every this many steps (and at the end and on interrupt).
    pub every: u64,
    /// How many state checkpoints to keep.
    pub keep_last: usize,
    /// Append a metrics line every this many steps.
    pub log_every: u64,
    /// Write a sample grid (`samples/step-N.png`, image models only) every this many steps; 0 never.
    pub sample_every: u64,
    /// Euler steps of those samples (1 shows the one-step generator).
    pub sample_steps: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every: 1000,
            keep_last: 2,
            log_every: 100,
            sample_every: 0,
            sample_steps: 1,
        }
    }
}

/// The settings every training stage has.
pub trait Training {
    /// Optimizer steps.
    fn steps(&self) -> u64;
    /// Batch size (the effective one, over `optim.accumulate` micro-batches).
    fn batch_size(&self) -> usize;
    /// Optimizer.
    fn optim(&self) -> &OptimConfig;
    /// Checkpoints and logging.
    fn checkpoint(&self) -> &CheckpointConfig;

    /// Every problem of the shared settings of the section `section`, as `key: message`.
    fn training_problems(&self, section: &str) -> Vec<String> {
        let mut p = Vec::new();
        let (bs, o) = (self.batch_size(), self.optim());
        let msg =
            "must be positive (with 0 steps the stage would mark an untrained model complete)";
        check(&mut p, &format!("{section}.steps"), self.steps() > 0, msg);
        check(
            &mut p,
            &format!("{section}.batch_size"),
            bs > 0,
            "must be positive",
        );
        let ok = o.accumulate >= 1 && bs % o.accumulate.max(1) == 0;
        let msg = "optim.accumulate must be ≥ 1 and divide batch_size";
        check(&mut p, &format!("{section}.optim.accumulate"), ok, msg);
        p.extend(o.problems(&format!("{section}.optim")));
        p
    }
}

/// Declares the section of a training stage: `steps` and `batch_size`, then the stage's own
/// fields, then `optim` and `checkpoint` (the order of the canonical TOML and of the unknown-key
/// messages), with the derives and `deny_unknown_fields` of every section and an `impl Training`.
macro_rules! training_section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: $ty:ty,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Optimizer steps.
            pub steps: u64,
            /// Batch size.
            pub batch_size: usize,
            $(
                $(#[$field_meta])*
                pub $field: $ty,
            )*
            /// Optimizer.
            #[serde(default)]
            pub optim: $crate::config::OptimConfig,
            /// Checkpoints and logging.
            #[serde(default)]
            pub checkpoint: $crate::config::CheckpointConfig,
        }

        impl $crate::config::Training for $name {
            fn steps(&self) -> u64 {
                self.steps
            }
            fn batch_size(&self) -> usize {
                self.batch_size
            }
            fn optim(&self) -> &$crate::config::OptimConfig {
                &self.optim
            }
            fn checkpoint(&self) -> &$crate::config::CheckpointConfig {
                &self.checkpoint
            }
        }
    };
}
pub(super) use training_section;

#[cfg(test)]
mod tests {
    use super::super::test_support::{parse, MINIMAL};
    use super::super::PipelineConfig;
    use super::*;

    #[test]
    fn the_shared_settings_are_checked_in_every_training_stage() {
        let c: PipelineConfig = parse(MINIMAL, &[]).unwrap();
        let stages: [(&str, &dyn Training); 3] = [
            ("train", &c.train),
            ("reflow", &c.reflow),
            ("distill", &c.distill),
        ];
        for (name, s) in stages {
            assert_eq!((s.steps(), s.batch_size()), (10, 8));
            assert_eq!(s.checkpoint(), &CheckpointConfig::default());
            assert!(s.training_problems(name).is_empty());
            let e = parse(MINIMAL, &[&format!("{name}.optim.accumulate=3")])
                .unwrap_err()
                .to_string();
            let want = format!(
                "{name}.optim.accumulate: optim.accumulate must be ≥ 1 and divide batch_size"
            );
            assert!(e.contains(&want), "{e}");
            let e = parse(MINIMAL, &[&format!("{name}.batch_size=0")])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{name}.batch_size: must be positive")),
                "{e}"
            );
            let e = parse(MINIMAL, &[&format!("{name}.checkpoint.every_n=3")])
                .unwrap_err()
                .to_string();
            assert!(e.contains("expected one of `every`, `keep_last`"), "{e}");
        }
    }
}
