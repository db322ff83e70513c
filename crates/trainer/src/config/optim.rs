//! `[<stage>.optim]`: Adam and the schedule around it, shared by the three training stages.

use serde::{Deserialize, Serialize};

use super::check;

/// Adam and the schedule around it (defaults: the references' Adam, see DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Learning rate (RectifiedFlow / SlimFlow / rfpp: 2e-4).
    pub lr: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Linear LR warm-up steps (references: 5000; 0 when fine-tuning).
    pub warmup_steps: u64,
    /// Gradient-norm clip (1.0); 0 disables.
    pub grad_clip: f64,
    /// EMA decay per step (rfpp 0.9999, SlimFlow 0.999999).
    pub ema_decay: f64,
    /// Save the EMA weights (true) or the raw weights as the stage's model.
    pub use_ema: bool,
    /// Micro-batches per optimizer step (gradient accumulation); `batch_size` stays the effective
    /// batch and must be divisible by it.
    pub accumulate: usize,
    /// Mixed precision of the forward passes on CUDA (libtorch autocast): `false`, `true` or
    /// `"f16"` (float16 with dynamic loss scaling), `"bf16"` (bfloat16, no loss scale needed: its
    /// range is float32's). Ignored on CPU.
    pub autocast: Autocast,
    /// Initial dynamic loss scale of `autocast` (default 65536; rfpp's ImageNet run: 32768,
    /// `--loss_scaling`). Halved (down to 1) with the update skipped when a gradient overflows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// Clean optimizer steps after which the loss scale doubles (default 2000; rfpp: 10 000 backward
    /// passes, i.e. 10 000 / `accumulate` steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale_window: Option<u64>,
    /// EMA decay warm-up min(ema_decay, (1 + n)/(10 + n)) over the n-th update of the stage
    /// (SlimFlow / score_sde); off: the fixed decay from the first update (rfpp).
    pub ema_warmup: bool,
    /// The arithmetic of one EMA update (see [`EmaForm`]).
    #[serde(skip_serializing_if = "EmaForm::is_default")]
    pub ema_form: EmaForm,
    /// rfpp's `--ema_after_steps k`: the EMA starts, as a copy of the parameters, at the first
    /// update made after more than k completed ones (update k + 2) and follows the parameters
    /// exactly before that. Unset: it starts from the initial weights at the first update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ema_after_steps: Option<u64>,
    /// How the learning rate ramps up over `warmup_steps` (see [`WarmupRule`]).
    pub warmup_rule: WarmupRule,
    /// Order of the gradient-norm clip and the non-finite guard (see [`GradGuard`]).
    pub grad_guard: GradGuard,
}

/// `autocast`: the reduced precision of the forward passes on CUDA.
///
/// Written as `false` / `true` (float16) so that configs from before bfloat16 keep their hashes,
/// and `"bf16"`; `"f16"` and `"off"` are read too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Autocast {
    /// float32 throughout.
    #[default]
    Off,
    /// float16 with a dynamic loss scale.
    F16,
    /// bfloat16.
    Bf16,
}

impl Autocast {
    /// The libtorch dtype of the autocast regions, if any.
    pub fn kind(self) -> Option<tch::Kind> {
        match self {
            Autocast::Off => None,
            Autocast::F16 => Some(tch::Kind::Half),
            Autocast::Bf16 => Some(tch::Kind::BFloat16),
        }
    }
}

impl Serialize for Autocast {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Autocast::Off => s.serialize_bool(false),
            Autocast::F16 => s.serialize_bool(true),
            Autocast::Bf16 => s.serialize_str("bf16"),
        }
    }
}

impl<'de> Deserialize<'de> for Autocast {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Flag(bool),
            Name(String),
        }
        match Repr::deserialize(d)? {
            Repr::Flag(false) => Ok(Autocast::Off),
            Repr::Flag(true) => Ok(Autocast::F16),
            Repr::Name(n) => match n.as_str() {
                "off" => Ok(Autocast::Off),
                "f16" => Ok(Autocast::F16),
                "bf16" => Ok(Autocast::Bf16),
                other => Err(serde::de::Error::custom(format!(
                    "autocast = {other:?}: expected false, true or \"f16\" (float16), or \"bf16\""
                ))),
            },
        }
    }
}

/// How one EMA update rounds: the references write the same average two ways, and over a run of
/// 10⁵–10⁶ updates the roundings differ bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmaForm {
    /// s ← s − (1 − d)·(s − θ): score_sde's `ExponentialMovingAverage`, which SlimFlow uses.
    #[default]
    ScoreSde,
    /// s ← s·d + (1 − d)·θ as `mul_(d).add_(θ, alpha = 1 − d)`: rfpp's `EMA.py`.
    Rfpp,
}

impl EmaForm {
    fn is_default(&self) -> bool {
        *self == EmaForm::default()
    }
}

/// The learning rate of update k (0-based) during the warm-up of W steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmupRule {
    /// lr·min(1, (k + 1)/W): every update moves the weights.
    #[default]
    FromFirst,
    /// lr·min(1, k/W): the first update runs at lr 0 (score_sde's `optimization_manager`, used by
    /// SlimFlow's every stage).
    FromZero,
}

/// What happens to a gradient with non-finite entries, and in which order with the norm clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradGuard {
    /// Zero NaN/±inf entries, then clip the norm of what is left: one bad entry costs only itself.
    #[default]
    ZeroThenClip,
    /// Clip first (a non-finite norm turns every entry into NaN), then replace NaN by 0 and ±inf by
    /// ±1e5 (the order of SlimFlow's `optimization_manager`): one bad entry zeroes the whole update.
    /// (The reference's replacement loop sees an exhausted parameter generator and does nothing, so
    /// there a non-finite gradient reaches Adam; with finite gradients both are the same.)
    ClipThenReplace,
    /// Skip the whole update (no Adam step, no EMA update) when any entry is non-finite, else clip
    /// (rfpp's `train.py`, which checks every gradient before `optimizer.step()`).
    SkipStep,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 5000,
            grad_clip: 1.0,
            ema_decay: 0.9999,
            use_ema: true,
            accumulate: 1,
            autocast: Autocast::Off,
            loss_scale: None,
            loss_scale_window: None,
            ema_warmup: false,
            warmup_rule: WarmupRule::FromFirst,
            grad_guard: GradGuard::ZeroThenClip,
            ema_form: EmaForm::ScoreSde,
            ema_after_steps: None,
        }
    }
}

impl OptimConfig {
    /// Every problem of the table at `key` (e.g. `train.optim`), as `key[.field]: message`.
    /// (`accumulate` is checked with the stage's batch size, see [`super::Training`].)
    pub fn problems(&self, key: &str) -> Vec<String> {
        let mut p = Vec::new();
        let unit = 0.0..1.0;
        let ok = self.lr.is_finite()
            && self.lr > 0.0
            && unit.contains(&self.beta1)
            && unit.contains(&self.beta2)
            && self.eps > 0.0
            && self.grad_clip >= 0.0
            && unit.contains(&self.ema_decay);
        let msg = "need lr > 0, β in [0, 1), eps > 0, grad_clip ≥ 0, ema_decay in [0, 1)";
        check(&mut p, key, ok, msg);
        let ok = self.warmup_steps > 0 || self.warmup_rule == WarmupRule::default();
        let msg = "warmup_rule is set but warmup_steps = 0";
        check(&mut p, &format!("{key}.warmup_rule"), ok, msg);
        let ok = self.use_ema || !self.ema_warmup;
        let msg = "ema_warmup is set but use_ema = false (the EMA is not saved)";
        check(&mut p, &format!("{key}.ema_warmup"), ok, msg);
        for (name, set) in [
            ("ema_form", !self.ema_form.is_default()),
            ("ema_after_steps", self.ema_after_steps.is_some()),
        ] {
            let msg = format!("{name} is set but use_ema = false (the EMA is not saved)");
            check(&mut p, &format!("{key}.{name}"), self.use_ema || !set, &msg);
        }
        let ok = !(self.ema_warmup && self.ema_after_steps.is_some());
        let msg = "ema_after_steps (rfpp's delayed start) and ema_warmup (score_sde's decay \
                   schedule) are two different EMA schedules: set one";
        check(&mut p, &format!("{key}.ema_after_steps"), ok, msg);
        for (name, set) in [
            ("loss_scale", self.loss_scale.is_some()),
            ("loss_scale_window", self.loss_scale_window.is_some()),
        ] {
            let msg = format!(
                "{name} is set but autocast is not float16 (only float16 autocast scales the loss)"
            );
            check(
                &mut p,
                &format!("{key}.{name}"),
                self.autocast == Autocast::F16 || !set,
                &msg,
            );
        }
        let ok = self.loss_scale.is_none_or(|s| s.is_finite() && s >= 1.0);
        check(&mut p, &format!("{key}.loss_scale"), ok, "must be ≥ 1");
        let ok = self.loss_scale_window.is_none_or(|w| w >= 1);
        check(
            &mut p,
            &format!("{key}.loss_scale_window"),
            ok,
            "must be ≥ 1",
        );
        p
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{parse, MINIMAL};
    use super::*;

    #[test]
    fn settings_that_would_be_ignored_are_refused() {
        let err = |sets: &[&str]| parse(MINIMAL, sets).unwrap_err().to_string();
        // A warm-up rule without warm-up steps, an EMA warm-up of an unsaved EMA.
        let e = err(&[
            "distill.optim.warmup_steps=0",
            "distill.optim.warmup_rule=\"from_zero\"",
        ]);
        assert!(e.contains("distill.optim.warmup_rule"), "{e}");
        let e = err(&["train.optim.use_ema=false", "train.optim.ema_warmup=true"]);
        assert!(e.contains("train.optim.ema_warmup"), "{e}");
        // rfpp's EMA settings on an unsaved EMA, and its delayed start with score_sde's schedule
        let e = err(&["train.optim.use_ema=false", "train.optim.ema_form=\"rfpp\""]);
        assert!(
            e.contains("train.optim.ema_form: ema_form is set but use_ema = false"),
            "{e}"
        );
        let e = err(&[
            "reflow.optim.use_ema=false",
            "reflow.optim.ema_after_steps=1",
        ]);
        assert!(e.contains("reflow.optim.ema_after_steps"), "{e}");
        let e = err(&[
            "reflow.optim.ema_warmup=true",
            "reflow.optim.ema_after_steps=1",
        ]);
        assert!(e.contains("two different EMA schedules"), "{e}");
        let e = err(&["reflow.optim.ema_form=\"lerp\""]);
        assert!(e.contains("ema_form") || e.contains("lerp"), "{e}");
        // A loss scale without float16 autocast scales nothing.
        let e = err(&["reflow.optim.loss_scale=32768.0"]);
        assert!(
            e.contains("reflow.optim.loss_scale") && e.contains("autocast is not float16"),
            "{e}"
        );
        let e = err(&[
            "reflow.optim.autocast=\"bf16\"",
            "reflow.optim.loss_scale=32768.0",
        ]);
        assert!(e.contains("autocast is not float16"), "{e}");
        let e = err(&["distill.optim.loss_scale_window=10"]);
        assert!(e.contains("distill.optim.loss_scale_window"), "{e}");
        let e = err(&["reflow.optim.autocast=true", "reflow.optim.loss_scale=0.5"]);
        assert!(e.contains("reflow.optim.loss_scale: must be ≥ 1"), "{e}");
        let c = parse(
            MINIMAL,
            &[
                "reflow.optim.autocast=true",
                "reflow.optim.loss_scale=32768.0",
                "reflow.optim.loss_scale_window=2500",
            ],
        )
        .unwrap();
        assert_eq!(c.reflow.optim.loss_scale, Some(32768.0));
        assert_eq!(c.reflow.optim.loss_scale_window, Some(2500));
    }

    #[test]
    fn autocast_reads_flags_and_names_and_writes_the_old_flags() {
        for (text, want) in [
            ("false", Autocast::Off),
            ("true", Autocast::F16),
            ("\"off\"", Autocast::Off),
            ("\"f16\"", Autocast::F16),
            ("\"bf16\"", Autocast::Bf16),
        ] {
            let c = parse(MINIMAL, &[&format!("train.optim.autocast={text}")]).unwrap();
            assert_eq!(c.train.optim.autocast, want, "{text}");
        }
        // float16 and off serialise as before, so existing runs keep their config hashes
        let json = |a: Autocast| serde_json::to_string(&a).unwrap();
        assert_eq!(json(Autocast::Off), "false");
        assert_eq!(json(Autocast::F16), "true");
        assert_eq!(json(Autocast::Bf16), "\"bf16\"");
        assert_eq!(Autocast::Bf16.kind(), Some(tch::Kind::BFloat16));
        let e = parse(MINIMAL, &["train.optim.autocast=\"fp8\""])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train.optim.autocast") || e.contains("fp8"),
            "{e}"
        );
    }

    #[test]
    fn the_slimflow_semantics_parse_by_name() {
        let c = parse(
            MINIMAL,
            &["reflow.optim={ warmup_steps = 10, warmup_rule = \"from_zero\", ema_warmup = true, grad_guard = \"clip_then_replace\" }"],
        )
        .unwrap();
        assert_eq!(c.reflow.optim.warmup_rule, WarmupRule::FromZero);
        assert_eq!(c.reflow.optim.grad_guard, GradGuard::ClipThenReplace);
        assert!(c.reflow.optim.ema_warmup);
    }

    #[test]
    fn problems_are_keyed_under_the_table() {
        let bad = OptimConfig {
            lr: 0.0,
            loss_scale: Some(2.0),
            ..OptimConfig::default()
        };
        let p = bad.problems("x.optim");
        assert!(p[0].starts_with("x.optim: need lr > 0"), "{p:?}");
        assert!(p[1].starts_with("x.optim.loss_scale: "), "{p:?}");
        assert!(OptimConfig::default().problems("x.optim").is_empty());
    }
}
