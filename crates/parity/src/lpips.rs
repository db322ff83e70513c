//! LPIPS (the `lpips` package's VGG, max or average pooling; piq's variant on [0, 1] inputs), with
//! the optional `input_transform` resize that both papers apply before the network.

use serde_json::Value;
use slimflow_losses::lpips::{Backbone, Lpips, LpipsConfig, Pooling, Resize};

use crate::args::RunArgs;
use crate::error::Result;
use crate::{each_run, Case, KeyResult};

/// `lpips.LPIPS(vgg)`.
pub fn run_max(case: &Case<'_>) -> Result<Vec<KeyResult>> {
    run(case, Pooling::Max)
}

/// `lpips.LPIPS(vgg)+avgpool`.
pub fn run_avg(case: &Case<'_>) -> Result<Vec<KeyResult>> {
    run(case, Pooling::Avg)
}

fn run(case: &Case<'_>, pooling: Pooling) -> Result<Vec<KeyResult>> {
    let weights = slimflow_tensor_io::read(&case.file("weights_file")?)
        .map_err(|e| case.bad(e.to_string()))?;
    each_run(case, |run, args| {
        let config = LpipsConfig {
            net: Backbone::Vgg,
            pooling,
            resize: input_transform(args)?,
        };
        let lp = Lpips::from_file(&weights, config, case.device)?;
        // lpips' call is (in0, in1, normalize); piq's is (x, y) on [0, 1] with ImageNet statistics,
        // which is lpips with normalize = true.
        let (a, b, normalize) = if args.has("in0") {
            (
                args.tensor(case, "in0")?,
                args.tensor(case, "in1")?,
                args.opt_bool("normalize")?.unwrap_or(false),
            )
        } else {
            (args.tensor(case, "x")?, args.tensor(case, "y")?, true)
        };
        let res = tch::no_grad(|| lp.forward(&a, &b, normalize))?;
        case.compare_outputs(run, &|name| {
            Ok(match name {
                "dist" => Some(res.dist.shallow_clone()),
                "per_layer" => Some(res.per_layer.shallow_clone()),
                _ => None,
            })
        })
    })
}

/// The `input_transform` argument: absent, `null` or `"none"` (no resize), or an object
/// `{ resize = N | [N, N], mode = "bilinear", align_corners = bool, antialias = false }`. Any other
/// form or key is refused by name.
pub fn input_transform(args: &RunArgs<'_>) -> Result<Option<Resize>> {
    const NAME: &str = "input_transform";
    let obj = match args.raw(NAME) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s == "none" || s == "identity" => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(args.invalid(
                NAME,
                format!("{other} is not a transform this runner knows (expected null or {{resize, mode, align_corners}})"),
            ))
        }
    };
    let mut size = None;
    let mut align_corners = None;
    for (k, v) in obj {
        match (k.as_str(), v) {
            ("resize" | "size", Value::Number(n)) => size = n.as_i64(),
            ("resize" | "size", Value::Array(a))
                if a.len() == 2 && a[0] == a[1] && a[0].as_i64().is_some() =>
            {
                size = a[0].as_i64()
            }
            ("mode", Value::String(m)) if m == "bilinear" => {}
            ("align_corners", Value::Bool(b)) => align_corners = Some(*b),
            ("antialias", Value::Bool(false)) => {}
            _ => {
                return Err(args.invalid(
                    NAME,
                    format!("`{k}` = {v} is not implemented (bilinear square resizes only)"),
                ))
            }
        }
    }
    let size = size
        .filter(|s| *s > 0)
        .ok_or_else(|| args.invalid(NAME, "needs a positive `resize`"))?;
    Ok(Some(Resize {
        size,
        // torch's F.interpolate default for bilinear.
        align_corners: align_corners.unwrap_or(false),
    }))
}
