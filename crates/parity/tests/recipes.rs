//! The CIFAR-10 recipes train what the references train: the settings the parity cases replay (and
//! the ones they cannot see) are read back from `configs/cifar10/*.toml` and checked here, so a
//! recipe edit that departs from the reference fails a test.

use std::path::PathBuf;

use slimflow_losses::PremetricConfig;
use slimflow_parity::slimflow_step::RECIPE;
use slimflow_sampling::edm::EdmSamplerConfig;
use slimflow_sampling::rfpp::{RfppMethod, RfppSampler};
use slimflow_sampling::SolverConfig;
use slimflow_schedules::{Anneal, TimeDist};
use slimflow_trainer::config::{EmaForm, GradGuard, Init, PairFlip, WarmupRule};
use slimflow_trainer::{load_config, PipelineConfig};

fn recipe(name: &str) -> PipelineConfig {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../configs/cifar10/{name}.toml"));
    load_config(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn slimflow_recipe_is_the_replayed_step() {
    let cfg = recipe("slimflow");
    for (stage, o) in [
        ("train", &cfg.train.optim),
        ("reflow", &cfg.reflow.optim),
        ("distill", &cfg.distill.optim),
    ] {
        assert_eq!(
            o.ema_warmup, RECIPE.ema_warmup,
            "{stage}: EMA warm-up (ema.py)"
        );
        assert_eq!(o.ema_decay, 0.999_999, "{stage}: ema_rate");
        assert_eq!(
            (o.ema_form, o.ema_after_steps),
            (RECIPE.ema_form, None),
            "{stage}: ema.py's update, from the first step"
        );
        assert_eq!(
            o.grad_guard, RECIPE.grad_guard,
            "{stage}: clip then nan_to_num"
        );
        assert_eq!(o.grad_clip, 1.0, "{stage}: grad_clip");
        assert_eq!(o.lr, 2e-4, "{stage}: lr");
        if o.warmup_steps > 0 {
            assert_eq!(o.warmup_rule, RECIPE.warmup_rule, "{stage}: lr·step/warmup");
        }
    }
    assert_eq!(cfg.train.optim.warmup_steps, 5000);
    // Annealing reflow from scratch: warm-up applies; fine-tuning (distill) has none.
    assert_eq!(cfg.reflow.optim.warmup_steps, 5000);
    assert_eq!(cfg.distill.optim.warmup_steps, 0);
    assert_eq!(cfg.reflow.init, Init::Random);
    assert_eq!(cfg.reflow.hflip, PairFlip::PerBatch);
    assert_eq!(cfg.reflow.anneal, Anneal::Linear {});
    assert_eq!(cfg.reflow.anneal_steps, 300_000);
    assert_eq!(
        cfg.reflow.time,
        TimeDist::Uniform {
            eps: RECIPE.time_eps
        }
    );
    assert_eq!(cfg.reflow.premetric, PremetricConfig::L2Squared {});
    assert_eq!(cfg.distill.form, RECIPE.distill_form);
    assert_eq!(cfg.distill.eps, RECIPE.time_eps);
    assert_eq!(cfg.distill.flow_guided_t, RECIPE.flow_guided_t);
    assert_eq!(cfg.distill.flow_guided_weight, 1.0);
    assert_eq!(cfg.distill.premetric_weight, 0.0);
    assert!(cfg.distill.lpips.is_some_and(|l| l.weight == 1.0));
    assert_eq!(
        cfg.pairs.solver,
        SolverConfig::Rk45 {
            rtol: 1e-5,
            atol: 1e-5
        }
    );
    assert_eq!(cfg.pairs.count, 50_000);
}

#[test]
fn rfpp_recipe_is_rfpp_train_py() {
    let cfg = recipe("rfpp");
    let o = &cfg.reflow.optim;
    assert_eq!(o.grad_clip, 0.0, "rfpp does not clip");
    assert_eq!(
        o.grad_guard,
        GradGuard::SkipStep,
        "train.py skips non-finite updates"
    );
    assert!(!o.ema_warmup, "EMA.py: fixed decay");
    assert_eq!(o.ema_decay, 0.9999);
    // EMA.py:58 mul_(d).add_(p, 1 - d); train.py:66, 170 `--ema_after_steps 1`
    for (stage, o) in [
        ("train", &cfg.train.optim),
        ("reflow", o),
        ("distill", &cfg.distill.optim),
    ] {
        assert_eq!(o.ema_form, EmaForm::Rfpp, "{stage}");
        assert_eq!(o.ema_after_steps, Some(1), "{stage}");
    }
    assert_eq!(o.warmup_rule, WarmupRule::FromZero);
    assert_eq!((o.lr, o.warmup_steps), (2e-4, 5000));
    assert_eq!((cfg.reflow.steps, cfg.reflow.batch_size), (800_000, 512));
    assert_eq!(cfg.reflow.init, Init::Teacher);
    assert_eq!(cfg.reflow.time, TimeDist::UShaped { a: 4.0 });
    assert_eq!(cfg.reflow.premetric, PremetricConfig::PseudoHuber {});
    assert!(cfg
        .reflow
        .lpips_huber
        .is_some_and(|l| l.divide_by_one_minus_t));
    assert_eq!(
        cfg.pairs.solver,
        SolverConfig::Edm(EdmSamplerConfig {
            steps: 18,
            rho: 7.0,
            sigma_min: 0.002,
            sigma_max: 80.0,
            heun: true,
        })
    );
    assert_eq!(cfg.pairs.count, 1_000_000);
    assert_eq!(
        cfg.eval.solver,
        SolverConfig::Rfpp {
            method: RfppMethod::Euler,
            sampler: RfppSampler::New,
            nfe: 5
        }
    );
    assert_eq!(cfg.eval.eps, 1e-5);
}
