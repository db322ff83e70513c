//! Checks of what the settings imply in memory and work, before anything is allocated: lower bounds
//! (see [`slimflow_models::size`]) against the memory limit of the configured device, and caps on
//! counts whose bookkeeping alone would not fit.

use slimflow_models::size::{check_bytes, memory_limit};
use slimflow_models::ArchConfig;
use slimflow_sampling::SolverConfig;

use super::{PipelineConfig, Target, Training};

/// Most steps (or NFE) of a fixed-step solver: its time grid and per-step bookkeeping are held in
/// memory, and more steps than this change no result.
pub const MAX_SOLVER_STEPS: usize = 1_000_000;

/// Most shards of a pair store (files are named `pairs-NNNNNN`).
pub const MAX_SHARDS: u64 = 1_000_000;

/// Bytes of a float32 tensor of `n` scalars.
fn f32_bytes(n: f64) -> f64 {
    4.0 * n
}

/// Scalars of one data sample of `arch`.
fn sample_numel(arch: &ArchConfig) -> f64 {
    arch.data_shape().iter().map(|&d| d.max(0) as f64).product()
}

/// The steps (or NFE) of a fixed-step solver.
fn solver_steps(s: &SolverConfig) -> Option<usize> {
    match s {
        SolverConfig::Euler { steps }
        | SolverConfig::Heun { steps }
        | SolverConfig::XPred { steps } => Some(*steps),
        SolverConfig::Rfpp { nfe, .. } => Some(*nfe),
        SolverConfig::Edm(e) => Some(e.steps),
        SolverConfig::Rk45 { .. } => None,
    }
}

impl PipelineConfig {
    /// Every setting whose memory or work cannot be met, as `key: message`.
    pub(super) fn resource_problems(&self) -> Vec<String> {
        let limit = memory_limit(self.device.device());
        let mut p = Vec::new();
        let mut mem = Vec::new();
        let mut need = |key: &str, what: String, bytes: f64| {
            if let Err(e) = check_bytes(&what, bytes, limit) {
                mem.push(format!("{key}: {e}"));
            }
        };
        // Training holds parameters, gradients, two Adam moments and the EMA copy.
        let teacher = self.model.size_bound();
        let student_arch = self.student_arch();
        let student = student_arch.size_bound();
        let train = |b: slimflow_models::SizeBound| 5.0 * b.param_bytes();
        need(
            "model",
            format!("training {:.3e} parameters", teacher.params),
            train(teacher),
        );
        if self.reflow.model.is_some() {
            let what = format!("training {:.3e} parameters", student.params);
            need("reflow.model", what, train(student));
        }
        let stages: [(&str, &dyn Training, &ArchConfig); 3] = [
            ("train", &self.train, &self.model),
            ("reflow", &self.reflow, student_arch),
            ("distill", &self.distill, student_arch),
        ];
        for (name, s, arch) in stages {
            let micro = (s.batch_size() / s.optim().accumulate.max(1)) as f64;
            let b = arch.size_bound();
            let bytes = b.activation_bytes(micro) + f32_bytes(3.0 * micro * sample_numel(arch));
            let what = format!("a batch of {micro} samples");
            need(&format!("{name}.batch_size"), what, bytes);
        }
        let pb = self.pairs.batch_size as f64;
        let bytes = teacher.activation_bytes(pb) + f32_bytes(3.0 * pb * sample_numel(&self.model));
        need("pairs.batch_size", format!("a batch of {pb} pairs"), bytes);
        let shard = self.pairs.shard_size as f64;
        let bytes = f32_bytes(2.0 * shard * sample_numel(&self.model));
        need(
            "pairs.shard_size",
            format!("a shard of {shard} pairs"),
            bytes,
        );
        let shards = self.pairs.count.div_ceil(self.pairs.shard_size.max(1));
        if shards > MAX_SHARDS {
            p.push(format!(
                "pairs.count: {} pairs in shards of {} make {shards} shards, more than the {MAX_SHARDS} \
                 a store holds",
                self.pairs.count, self.pairs.shard_size
            ));
        }
        // Toy evaluation solves all samples at once; image evaluation holds the samples and solves
        // batches of them.
        let n = self.eval.samples as f64;
        let numel = sample_numel(student_arch);
        if self.data.toy().is_some() {
            let bytes = student.activation_bytes(n) + f32_bytes(3.0 * n * numel);
            need("eval.samples", format!("{n} samples at once"), bytes);
        } else {
            need("eval.samples", format!("{n} samples"), f32_bytes(n * numel));
            let eb = self.eval.batch_size as f64;
            let bytes = student.activation_bytes(eb) + f32_bytes(3.0 * eb * numel);
            need("eval.batch_size", format!("a batch of {eb} samples"), bytes);
        }
        let traj =
            self.eval.straightness_samples as f64 * (self.eval.straightness_steps as f64 + 1.0);
        let what = format!(
            "{} trajectories of {} steps",
            self.eval.straightness_samples, self.eval.straightness_steps
        );
        need("eval.straightness_steps", what, f32_bytes(traj * numel));
        if let Some(bytes) = self.dataset_bytes() {
            let spec = self.data.dataset.as_deref().unwrap_or_default();
            need("data.dataset", format!("`{spec}` in memory"), bytes);
        }
        for (key, solver) in [
            ("pairs.solver", &self.pairs.solver),
            ("eval.solver", &self.eval.solver),
        ] {
            if let Some(steps) = solver_steps(solver).filter(|&s| s > MAX_SOLVER_STEPS) {
                p.push(format!(
                    "{key}: {steps} steps, more than the {MAX_SOLVER_STEPS} a solve may take"
                ));
            }
        }
        mem.extend(p);
        mem
    }

    /// A lower bound of the dataset's bytes in memory, from its spec.
    fn dataset_bytes(&self) -> Option<f64> {
        match self.data.resolve() {
            Ok(Target::Images(spec)) => Some(spec.bytes_bound()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{parse, MINIMAL};

    fn err(sets: &[&str]) -> String {
        let mut all = vec!["device=\"cpu\""];
        all.extend(sets);
        parse(MINIMAL, &all)
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn settings_that_cannot_fit_in_memory_are_refused_with_their_key() {
        for (set, key) in [
            ("model.hidden=200000", "model: training"),
            ("model.depth=10000000", "model: training"),
            (
                "train.batch_size=1000000000",
                "train.batch_size: a batch of",
            ),
            (
                "reflow.batch_size=1000000000",
                "reflow.batch_size: a batch of",
            ),
            ("eval.samples=100000000", "eval.samples: "),
            ("pairs.batch_size=1000000000", "pairs.batch_size: "),
            ("pairs.shard_size=100000000000", "pairs.shard_size: "),
            (
                "eval.straightness_steps=1000000000000",
                "eval.straightness_steps: ",
            ),
        ] {
            let e = err(&[set]);
            assert!(e.contains(key) && e.contains("memory limit"), "{set}: {e}");
        }
    }

    #[test]
    fn counts_past_their_caps_are_refused() {
        let e = err(&["pairs.count=1000000000000"]);
        assert!(e.contains("pairs.count: ") && e.contains("shards"), "{e}");
        let e = err(&["pairs.solver={ kind = \"heun\", steps = 1000000000 }"]);
        assert!(
            e.contains("pairs.solver: 1000000000 steps, more than"),
            "{e}"
        );
        let e = err(&["eval.solver={ kind = \"euler\", steps = 1000000000 }"]);
        assert!(e.contains("eval.solver: "), "{e}");
    }

    #[test]
    fn image_datasets_too_large_for_memory_are_refused() {
        let text = MINIMAL.replace(
            "target = { kind = \"checkerboard\", squares = 4, size = 4.0 }",
            "dataset = \"shapes:16\"",
        );
        let image_model = [
            "model={ arch = \"ncsnpp\", image_size = 16, nf = 16, ch_mult = [1, 2], \
             num_res_blocks = 1, attn_resolutions = [] }",
        ];
        parse(&text, &image_model).unwrap();
        for spec in [
            "shapes:16,size=100000",
            "shapes:16,count=1000000000",
            "shapes:16,pad=100000",
            "cifar10:x,pad=1000000",
        ] {
            let set = format!("data.dataset=\"{spec}\"");
            let sets = [image_model[0], &set];
            let e = parse(&text, &sets).unwrap_err().to_string();
            assert!(e.contains("data.dataset: ") && e.contains(spec), "{e}");
        }
    }
}
