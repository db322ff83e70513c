//! SlimFlow's whole training step (`reflow/reflow.py: RectifiedFlow.train_step`, `reflow/losses.py`,
//! `models/ema.py`), replayed through the trainer's own code with the reference's recorded draws:
//!
//! 1. Annealing Reflow: z' = sqrt(1 − β²)·z + β·ε, one flip coin for the whole batch, t = eps +
//!    (1 − eps)·r, the rectified-flow loss, then [`slimflow_trainer::optim::update`] with the SlimFlow
//!    recipe's optimiser semantics ([`recipe_optim`]) and the EMA's first update.
//! 2. The k = 1 distillation loss (LPIPS at 64×64, [`DistillForm::Slimflow`]).
//! 3. The flow-guided term with a frozen teacher of the same weights.
//!
//! The recipe constants the case does not pass (time eps 1e-3, the flow-guided t' range 0.2–0.8) are
//! those of `configs/cifar10/slimflow.toml`; a recipe test checks the file against [`RECIPE`].

use serde_json::Value;
use slimflow_losses::lpips::{Backbone, Lpips, LpipsConfig, Pooling, Resize};
use slimflow_losses::{Batch, Distill, DistillForm, FlowGuided, PremetricConfig, Rf};
use slimflow_models::ncsnpp::{NcsnppConfig, IGNORED_KEYS};
use slimflow_models::{ArchConfig, Model};
use slimflow_schedules::{noise_keep, RectifiedPath, TimeDist, TimeDistribution};
use slimflow_trainer::config::{EmaForm, GradGuard, OptimConfig, WarmupRule};
use slimflow_trainer::ema::Ema;
use slimflow_trainer::optim::{update, zero_grad, Adam};
use slimflow_trainer::run_loop::sorted_variables;
use slimflow_trainer::stage::{batch_flips, hflip, mix_noise};
use tch::{Device, Kind, Tensor};

use crate::args::RunArgs;
use crate::error::Result;
use crate::{each_run, Case, KeyResult};

/// The SlimFlow recipe's settings this case relies on without receiving them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    /// Start of the training-time distribution U(eps, 1) (`reflow.py`: t = r·(1 − eps) + eps), also the
    /// one-step generator's start time in distillation.
    pub time_eps: f64,
    /// The flow-guided t' range.
    pub flow_guided_t: [f64; 2],
    /// The EMA decay warm-up.
    pub ema_warmup: bool,
    /// How an EMA update rounds (`ema.py`'s s − (1 − d)(s − θ)).
    pub ema_form: EmaForm,
    /// The learning-rate warm-up rule.
    pub warmup_rule: WarmupRule,
    /// The clip / non-finite order.
    pub grad_guard: GradGuard,
    /// The distillation form.
    pub distill_form: DistillForm,
}

/// SlimFlow's reference behaviour, as `configs/cifar10/slimflow.toml` sets it.
pub const RECIPE: Recipe = Recipe {
    time_eps: 1e-3,
    flow_guided_t: [0.2, 0.8],
    ema_warmup: true,
    ema_form: EmaForm::ScoreSde,
    warmup_rule: WarmupRule::FromZero,
    grad_guard: GradGuard::ClipThenReplace,
    distill_form: DistillForm::Slimflow,
};

/// The optimiser config of a SlimFlow stage with the given numbers and [`RECIPE`]'s semantics.
pub fn recipe_optim(lr: f64, warmup: u64, grad_clip: f64, ema_decay: f64) -> OptimConfig {
    OptimConfig {
        lr,
        warmup_steps: warmup,
        grad_clip,
        ema_decay,
        ema_warmup: RECIPE.ema_warmup,
        ema_form: RECIPE.ema_form,
        warmup_rule: RECIPE.warmup_rule,
        grad_guard: RECIPE.grad_guard,
        ..OptimConfig::default()
    }
}

/// The network of the case: NCSN++ with `network.config` over SlimFlow's defaults, the weights of
/// `weights_file` loaded strictly, dropout as `network.dropout`.
fn network(case: &Case<'_>) -> Result<Model> {
    let net = &case.json["network"];
    if net["kind"] != "slimflow.NCSNpp" {
        return Err(case.bad(format!("network.kind {} is not implemented", net["kind"])));
    }
    let mut cfg = NcsnppConfig::default();
    let ints = |v: &Value, key: &str| -> Result<Vec<i64>> {
        v.as_array()
            .and_then(|a| a.iter().map(Value::as_i64).collect::<Option<Vec<_>>>())
            .ok_or_else(|| case.bad(format!("network.config.{key} must be a list of integers")))
    };
    let int = |v: &Value, key: &str| -> Result<i64> {
        v.as_i64()
            .ok_or_else(|| case.bad(format!("network.config.{key} must be an integer")))
    };
    for (k, v) in net["config"]
        .as_object()
        .ok_or_else(|| case.bad("no network.config"))?
    {
        match k.as_str() {
            "image_size" => cfg.image_size = int(v, k)?,
            "num_channels" => cfg.num_channels = int(v, k)?,
            "nf" => cfg.nf = int(v, k)?,
            "num_res_blocks" => cfg.num_res_blocks = int(v, k)?,
            "ch_mult" => cfg.ch_mult = ints(v, k)?,
            "attn_resolutions" => cfg.attn_resolutions = ints(v, k)?,
            other => {
                return Err(case.bad(format!(
                    "network.config.{other} is not understood by this runner"
                )))
            }
        }
    }
    cfg.dropout = net["dropout"]
        .as_f64()
        .ok_or_else(|| case.bad("network.dropout must be a number"))?;
    let problems = cfg.problems();
    if !problems.is_empty() {
        return Err(case.bad(problems.join("; ")));
    }
    let mut model = Model::new(&ArchConfig::Ncsnpp(cfg), Device::Cpu)?;
    let file = slimflow_tensor_io::read(&case.file("weights_file")?)
        .map_err(|e| case.bad(e.to_string()))?;
    slimflow_tensor_io::load_strict(&mut model.vs, &file, IGNORED_KEYS)
        .map_err(|e| case.bad(e.to_string()))?;
    Ok(model)
}

/// The LPIPS the `lpips` argument names (`lpips_vgg …`, max or average pooling, from the case
/// directory's `lpips_vgg.weights.safetensors`), resized as `resize` / `align_corners` say.
fn lpips(case: &Case<'_>, args: &RunArgs<'_>) -> Result<Lpips> {
    let what = args.str("lpips")?;
    if !what.starts_with("lpips_vgg") {
        return Err(args.invalid(
            "lpips",
            format!("`{what}` is not implemented (lpips_vgg only)"),
        ));
    }
    let pooling = if what.contains("max pool") {
        Pooling::Max
    } else if what.contains("avg pool") || what.contains("average pool") {
        Pooling::Avg
    } else {
        return Err(args.invalid(
            "lpips",
            format!("`{what}` names no pooling (max pool / avg pool)"),
        ));
    };
    let size = args.u64("resize")? as i64;
    let align_corners = args.bool("align_corners")?;
    let config = LpipsConfig {
        net: Backbone::Vgg,
        pooling,
        resize: Some(Resize {
            size,
            align_corners,
        }),
    };
    // The public `lpips_vgg` case's weights, beside this case's network weights.
    let weights = case.file("weights_file")?;
    let dir = weights.parent().unwrap_or(case.dir);
    Ok(Lpips::load(
        &dir.join("lpips_vgg.weights.safetensors"),
        config,
        Device::Cpu,
    )?)
}

/// Runs the case.
pub fn run(case: &Case<'_>) -> Result<Vec<KeyResult>> {
    // The two LPIPS runs share one network.
    let mut perceptual: Option<Lpips> = None;
    each_run(case, |run, args| {
        if args.has("beta") {
            return reflow_step(case, run, args);
        }
        if args.has("lpips") {
            perceptual = Some(lpips(case, args)?);
            return distill(case, run, args, perceptual.as_ref());
        }
        if args.has("t_raw") && args.has("noise") {
            return flow_guided(case, run, args, perceptual.as_ref());
        }
        Err(case.bad(format!(
            "run `{}` is none of the annealing reflow step, the distillation loss or the flow-guided term",
            run["what"].as_str().unwrap_or("?")
        )))
    })
}

fn reflow_step(case: &Case<'_>, run: &Value, args: &RunArgs<'_>) -> Result<Vec<KeyResult>> {
    let model = network(case)?;
    let x1 = args.tensor(case, "x1")?;
    let z = args.tensor(case, "z")?;
    let eps = args.tensor(case, "eps")?;
    let beta = args.f64(case, "beta")?;
    let flip_u = args.f64(case, "flip_u")?;
    let t_raw = args.tensor(case, "t_raw")?;
    let step = args.u64("step")?;
    let optim = recipe_optim(
        args.f64(case, "lr")?,
        args.u64("warmup")?,
        args.f64(case, "grad_clip")?,
        args.f64(case, "ema_decay")?,
    );
    let before = args.u64("ema_num_updates_before")?;
    let dropout = args.f64(case, "dropout")?;
    if let ArchConfig::Ncsnpp(c) = model.config() {
        if c.dropout != dropout {
            return Err(args.invalid(
                "dropout",
                format!("{dropout} differs from network.dropout {}", c.dropout),
            ));
        }
    }
    if !args.bool("train_mode")? {
        return Err(args.invalid(
            "train_mode",
            "false is not implemented: training objectives run the network in training mode",
        ));
    }

    let noise = mix_noise(&z, &eps, noise_keep(beta), beta);
    let all = batch_flips(flip_u, x1.size()[0] as usize, Device::Cpu);
    let (x0, x1) = (hflip(&noise, &all), hflip(&x1, &all));
    let time = TimeDist::Uniform {
        eps: RECIPE.time_eps,
    };
    let ts: Vec<f64> = crate::compare::values(&t_raw)?
        .iter()
        .map(|&r| time.icdf(r))
        .collect();
    let t = Tensor::from_slice(&ts).to_kind(Kind::Float);
    let x_t = RectifiedPath.sample(&x0, &x1, &t).x_t;
    let batch = Batch {
        x0: x0.shallow_clone(),
        x1,
        labels: None,
    };
    let rf = Rf {
        time,
        premetric: PremetricConfig::L2Squared {},
    };
    let (names, params) = sorted_variables(&model);
    zero_grad(&params)?;
    let terms = rf.loss_at(&model, &batch, &t)?;
    terms.total.backward();
    let mut adam = Adam::new(&optim, &params);
    let mut ema = Ema::for_optim(&optim, &params);
    ema.num_updates = before;
    update(&params, &mut adam, &mut ema, &optim, step, true)?;
    let loss = terms.total.detach();
    case.compare_outputs(run, &|name| {
        Ok(match name {
            "noise" => Some(x0.shallow_clone()),
            "xt" => Some(x_t.shallow_clone()),
            "loss" => Some(loss.shallow_clone()),
            _ => {
                let (values, key) = if let Some(k) = name.strip_prefix("after_step.") {
                    (&params, k)
                } else if let Some(k) = name.strip_prefix("ema.") {
                    (&ema.values, k)
                } else {
                    return Ok(None);
                };
                let i = names.iter().position(|n| n == key).ok_or_else(|| {
                    case.bad(format!(
                        "output `{name}`: the network has no parameter `{key}`"
                    ))
                })?;
                Some(values[i].detach())
            }
        })
    })
}

fn distill(
    case: &Case<'_>,
    run: &Value,
    args: &RunArgs<'_>,
    lpips: Option<&Lpips>,
) -> Result<Vec<KeyResult>> {
    let lpips = lpips.ok_or_else(|| case.bad("no LPIPS"))?;
    let model = network(case)?;
    let batch = Batch {
        x0: args.tensor(case, "z")?,
        x1: args.tensor(case, "x1")?,
        labels: None,
    };
    let objective = Distill {
        eps: args.f64(case, "eps")?,
        form: RECIPE.distill_form,
        premetric: lpips,
        guide: None,
    };
    let loss = objective.distill_term(&model, &batch)?.detach();
    case.compare_outputs(run, &|name| {
        Ok((name == "loss").then(|| loss.shallow_clone()))
    })
}

fn flow_guided(
    case: &Case<'_>,
    run: &Value,
    args: &RunArgs<'_>,
    lpips: Option<&Lpips>,
) -> Result<Vec<KeyResult>> {
    let lpips = lpips.ok_or_else(|| {
        case.bad("the flow-guided run needs the distillation run's LPIPS before it")
    })?;
    args.expect("teacher", &Value::from("same weights, eval mode"))?;
    args.expect("student_mode", &Value::from("train"))?;
    let student = network(case)?;
    let mut teacher = network(case)?;
    teacher.vs.freeze();
    let noise = args.tensor(case, "noise")?;
    let t_raw = args.tensor(case, "t_raw")?;
    let fg = FlowGuided {
        teacher: &teacher,
        eps: RECIPE.time_eps,
        t_range: (RECIPE.flow_guided_t[0], RECIPE.flow_guided_t[1]),
        premetric: lpips,
        form: RECIPE.distill_form,
        source: &slimflow_losses::StandardGaussian,
    };
    let loss = fg.term_with(&student, &noise, &t_raw, None)?.detach();
    case.compare_outputs(run, &|name| {
        Ok((name == "loss").then(|| loss.shallow_clone()))
    })
}
