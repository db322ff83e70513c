//! Network cases: rfpp's `SongUNet` and `DhariwalUNet` (direct calls), `EDMPrecondVel` around each,
//! and SlimFlow's `NCSNpp`, each built from the case's own config and loaded strictly from its
//! weights.

use serde_json::Value;
use slimflow_models::dhariwal_unet::{DhariwalUnet, DhariwalUnetConfig};
use slimflow_models::edm_velocity::EdmVelocity;
use slimflow_models::ncsnpp::{Ncsnpp, NcsnppConfig, IGNORED_KEYS};
use slimflow_models::song_unet::{SongUnet, SongUnetConfig};
use tch::{Kind, Tensor};

use crate::args::RunArgs;
use crate::error::Result;
use crate::{each_run, Case, KeyResult};

/// The case's weights loaded strictly into `vs`.
pub(crate) fn load(case: &Case<'_>, vs: &mut tch::nn::VarStore, ignorable: &[&str]) -> Result<()> {
    let file = slimflow_tensor_io::read(&case.file("weights_file")?)
        .map_err(|e| case.bad(e.to_string()))?;
    slimflow_tensor_io::load_strict(vs, &file, ignorable).map_err(|e| case.bad(e.to_string()))
}

/// The SongUNet config of `constructor_kwargs`, checked.
pub(crate) fn song_config(case: &Case<'_>) -> Result<SongUnetConfig> {
    let cfg: SongUnetConfig = serde_json::from_value(case.json["constructor_kwargs"].clone())
        .map_err(|e| case.bad(format!("constructor_kwargs: {e}")))?;
    let problems = cfg.problems();
    if !problems.is_empty() {
        return Err(case.bad(problems.join("; ")));
    }
    Ok(cfg)
}

/// The DhariwalUNet config of `constructor_kwargs`, checked.
pub(crate) fn adm_config(case: &Case<'_>) -> Result<DhariwalUnetConfig> {
    let cfg: DhariwalUnetConfig = serde_json::from_value(case.json["constructor_kwargs"].clone())
        .map_err(|e| case.bad(format!("constructor_kwargs: {e}")))?;
    let problems = cfg.problems();
    if !problems.is_empty() {
        return Err(case.bad(problems.join("; ")));
    }
    Ok(cfg)
}

/// `class_labels` as the one-hot float [B, label_dim] EDM's networks take: given one-hot (float) or
/// as indices (integer [B]); refused for an unconditional network.
pub fn class_labels(
    case: &Case<'_>,
    args: &RunArgs<'_>,
    label_dim: i64,
    batch: i64,
) -> Result<Option<Tensor>> {
    let Some(y) = args.opt_tensor(case, "class_labels")? else {
        return Ok(None);
    };
    if label_dim == 0 {
        return Err(args.invalid(
            "class_labels",
            "given, but the network is unconditional (label_dim = 0)",
        ));
    }
    let one_hot = match (y.kind(), y.dim()) {
        (Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8, 1) => {
            let idx = y.to_kind(Kind::Int64);
            let (lo, hi) = (idx.min().int64_value(&[]), idx.max().int64_value(&[]));
            if lo < 0 || hi >= label_dim {
                return Err(args.invalid(
                    "class_labels",
                    format!("indices {lo}..={hi} outside 0..{label_dim}"),
                ));
            }
            idx.one_hot(label_dim).to_kind(Kind::Float)
        }
        (_, 2) if y.size()[1] == label_dim => y.to_kind(Kind::Float),
        _ => {
            return Err(args.invalid(
                "class_labels",
                format!(
                    "shape {:?} is neither [B] indices nor [B, {label_dim}] one-hot",
                    y.size()
                ),
            ))
        }
    };
    if one_hot.size()[0] != batch {
        return Err(args.invalid(
            "class_labels",
            format!("{} labels for a batch of {batch}", one_hot.size()[0]),
        ));
    }
    Ok(Some(one_hot))
}

/// `rfpp.SongUNet` called directly: F(x, noise_labels[, class_labels]).
pub fn run_song_unet(case: &Case<'_>) -> Result<Vec<KeyResult>> {
    let cfg = song_config(case)?;
    let mut vs = tch::nn::VarStore::new(case.device);
    let net = SongUnet::new(&vs.root(), &cfg);
    load(case, &mut vs, &[])?;
    run_direct(case, cfg.label_dim, |x, n, y, a| {
        net.forward_t(x, n, y, a, false)
    })
}

/// `rfpp.DhariwalUNet` called directly: F(x, noise_labels[, class_labels]).
pub fn run_dhariwal_unet(case: &Case<'_>) -> Result<Vec<KeyResult>> {
    let cfg = adm_config(case)?;
    let mut vs = tch::nn::VarStore::new(case.device);
    let net = DhariwalUnet::new(&vs.root(), &cfg);
    load(case, &mut vs, &[])?;
    run_direct(case, cfg.label_dim, |x, n, y, a| {
        net.forward_t(x, n, y, a, false)
    })
}

/// The runs of a direct network call F(x, noise_labels, class_labels, augment_labels) → `y`.
fn run_direct(
    case: &Case<'_>,
    label_dim: i64,
    forward: impl Fn(&Tensor, &Tensor, Option<&Tensor>, Option<&Tensor>) -> Tensor,
) -> Result<Vec<KeyResult>> {
    each_run(case, |run, args| {
        let x = args.tensor(case, "x")?;
        let noise = args.tensor(case, "noise_labels")?;
        let labels = class_labels(case, args, label_dim, x.size()[0])?;
        let augment = args.opt_tensor(case, "augment_labels")?;
        let y = tch::no_grad(|| forward(&x, &noise, labels.as_ref(), augment.as_ref()));
        case.compare_outputs(run, &|name| Ok((name == "y").then(|| y.shallow_clone())))
    })
}

/// `rfpp.EDMPrecondVel(SongUNet)` at rfpp's time t_r.
pub fn run_edm_velocity(case: &Case<'_>) -> Result<Vec<KeyResult>> {
    let cfg = song_config(case)?;
    let vs = tch::nn::VarStore::new(case.device);
    let net = EdmVelocity::new(&vs.root(), &cfg);
    run_wrapped(case, vs, &net, cfg.label_dim)
}

/// `rfpp.EDMPrecondVel(DhariwalUNet)` at rfpp's time t_r.
pub fn run_edm_velocity_adm(case: &Case<'_>) -> Result<Vec<KeyResult>> {
    let cfg = adm_config(case)?;
    let vs = tch::nn::VarStore::new(case.device);
    let net = EdmVelocity::adm(&vs.root(), &cfg);
    run_wrapped(case, vs, &net, cfg.label_dim)
}

fn run_wrapped(
    case: &Case<'_>,
    mut vs: tch::nn::VarStore,
    net: &EdmVelocity,
    label_dim: i64,
) -> Result<Vec<KeyResult>> {
    load(case, &mut vs, &[])?;
    each_run(case, |run, args| {
        let x = if args.has("x_t") {
            args.tensor(case, "x_t")?
        } else {
            args.tensor(case, "x")?
        };
        let t = args.tensor(case, "t")?;
        let labels = class_labels(case, args, label_dim, x.size()[0])?;
        let v = tch::no_grad(|| net.forward_rfpp(&x, &t, labels.as_ref(), false));
        case.compare_outputs(run, &|name| {
            Ok(matches!(name, "v" | "y").then(|| v.shallow_clone()))
        })
    })
}

/// SlimFlow's NCSN++ config from a score_sde-style `full_config` (`model`, `data`), refusing
/// anything outside the ported family by name.
pub fn ncsnpp_config(case: &Case<'_>, full: &Value) -> Result<NcsnppConfig> {
    let model = &full["model"];
    let data = &full["data"];
    let expect = [
        ("resblock_type", "biggan"),
        ("progressive", "none"),
        ("progressive_input", "none"),
        ("embedding_type", "positional"),
    ];
    for (k, v) in expect {
        if model[k] != v {
            return Err(case.bad(format!(
                "model.{k} = {} is outside the ported NCSN++ family ({v})",
                model[k]
            )));
        }
    }
    if model["fir"] != false || model["conditional"] != true || model["scale_by_sigma"] != false {
        return Err(case.bad("fir, conditional and scale_by_sigma must be false, true, false"));
    }
    let ints = |v: &Value| -> Vec<i64> {
        v.as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default()
    };
    let cfg = NcsnppConfig {
        image_size: data["image_size"].as_i64().unwrap_or(32),
        num_channels: data["num_channels"].as_i64().unwrap_or(3),
        centered: data["centered"].as_bool().unwrap_or(true),
        nf: model["nf"].as_i64().unwrap_or(128),
        ch_mult: ints(&model["ch_mult"]),
        num_res_blocks: model["num_res_blocks"].as_i64().unwrap_or(4),
        attn_resolutions: ints(&model["attn_resolutions"]),
        dropout: model["dropout"].as_f64().unwrap_or(0.0),
        skip_rescale: model["skip_rescale"].as_bool().unwrap_or(true),
    };
    let problems = cfg.problems();
    if !problems.is_empty() {
        return Err(case.bad(problems.join("; ")));
    }
    Ok(cfg)
}

/// `slimflow.NCSNpp`: F(x, time_cond) (unconditional; class labels are refused).
pub fn run_ncsnpp(case: &Case<'_>) -> Result<Vec<KeyResult>> {
    let cfg = ncsnpp_config(case, &case.json["full_config"])?;
    let mut vs = tch::nn::VarStore::new(case.device);
    let net = Ncsnpp::new(&vs.root(), &cfg);
    load(case, &mut vs, IGNORED_KEYS)?;
    each_run(case, |run, args| {
        let x = args.tensor(case, "x")?;
        let time_cond = args.tensor(case, "time_cond")?;
        class_labels(case, args, 0, x.size()[0])?;
        let y = tch::no_grad(|| net.forward_t(&x, &time_cond, false));
        case.compare_outputs(run, &|name| Ok((name == "y").then(|| y.shallow_clone())))
    })
}
