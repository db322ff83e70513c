//! rfpp's U-shaped time distribution (`t_dist.py`): analytic pdf, cdf and quantiles, and the
//! sampler's empirical quantiles within the case's statistical bound.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slimflow_schedules::{Density, TimeDist, TimeDistribution};
use tch::Tensor;

use crate::compare::{entry, values};
use crate::error::Result;
use crate::{each_run, Case, KeyResult};

/// Runs the case.
pub fn run(case: &Case<'_>) -> Result<Vec<KeyResult>> {
    each_run(case, |run, args| {
        let a = args.f64(case, "a")?;
        let d = TimeDist::UShaped { a };
        d.validate()?;
        let levels = values(&args.tensor(case, "levels")?)?;
        let grid = values(&args.tensor(case, "t_grid")?)?;
        let mut out = Vec::new();
        for (name, key) in crate::run_outputs(run) {
            let actual: Vec<f64> = match name {
                "analytic_quantiles" => levels.iter().map(|&p| d.icdf(p)).collect(),
                "pdf" => grid.iter().map(|&t| d.pdf(t)).collect(),
                "cdf" => grid.iter().map(|&t| d.cdf(t)).collect(),
                "empirical_quantiles" => {
                    out.push(empirical_quantiles(case, key, &d, &levels)?);
                    continue;
                }
                other => {
                    return Err(case.bad(format!("output `{other}` is not computed by this runner")))
                }
            };
            out.extend(case.compare(key, &Tensor::from_slice(&actual))?);
        }
        Ok(out)
    })
}

/// The statistical rule: |q_impl − q_ref| ≤ k·sqrt(1 + n_ref/n_impl)·stderr.
fn empirical_quantiles(
    case: &Case<'_>,
    key: &str,
    d: &TimeDist,
    levels: &[f64],
) -> Result<KeyResult> {
    let entry =
        entry(case.json, key).ok_or_else(|| case.bad(format!("no compare entry for {key}")))?;
    let k = entry["k_sigma"].as_f64().unwrap_or(5.0);
    let n_ref = entry["n_ref"].as_f64().unwrap_or(1e6);
    let stderr_key = entry["stderr_key"]
        .as_str()
        .ok_or_else(|| case.bad(format!("compare entry of {key} has no stderr_key")))?;
    let stderr = values(&case.tensor(stderr_key)?)?;
    let expected = values(&case.tensor(key)?)?;
    if expected.len() != levels.len() || stderr.len() != levels.len() {
        return Err(case.bad(format!(
            "{key}: levels, quantiles and stderr differ in length"
        )));
    }
    let n = 1_000_000usize;
    let mut s = d.sample(&mut ChaCha20Rng::seed_from_u64(20_240_601), n);
    s.sort_by(|x, y| x.total_cmp(y));
    let factor = k * (1.0 + n_ref / n as f64).sqrt();
    let (mut max_abs, mut max_rel, mut pass) = (0f64, 0f64, true);
    for ((p, e), se) in levels.iter().zip(&expected).zip(&stderr) {
        let pos = p * (n - 1) as f64;
        let lo = pos.floor() as usize;
        let q = s[lo] + (pos - lo as f64) * (s[(lo + 1).min(n - 1)] - s[lo]);
        let err = (q - e).abs();
        max_abs = max_abs.max(err);
        max_rel = max_rel.max(err / e.abs().max(f64::MIN_POSITIVE));
        pass &= err <= factor * se;
    }
    Ok(KeyResult {
        key: key.to_string(),
        max_abs,
        max_rel,
        pass,
        rule: format!("statistical: {k} σ, n = {n}"),
        failing: Vec::new(),
    })
}
