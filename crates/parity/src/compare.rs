//! The elementwise rule of the parity README: |actual − expected| ≤ atol + rtol·|expected|.

use serde::Serialize;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::Case;

/// The comparison of one output key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyResult {
    /// The io key, e.g. `output.dist`.
    pub key: String,
    /// Largest absolute error.
    pub max_abs: f64,
    /// Largest relative error |a − e| / |e| (over elements with e ≠ 0).
    pub max_rel: f64,
    /// Whether every element met the rule.
    pub pass: bool,
    /// The rule applied.
    pub rule: String,
    /// Flat indices of the elements that broke the rule (the first 64).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<usize>,
}

/// A tensor's values as f64.
pub(crate) fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(
        &t.detach()
            .to_kind(Kind::Double)
            .to_device(Device::Cpu)
            .flatten(0, -1),
    )?)
}

/// Elementwise |a − e| ≤ atol_i + rtol·|e| where atol_i comes from `per_sample` (indexed by the
/// first dimension) when given. A length mismatch or a NaN fails.
pub fn elementwise(
    key: &str,
    actual: &[f64],
    expected: &[f64],
    atol: f64,
    rtol: f64,
    per_sample: Option<&[f64]>,
) -> KeyResult {
    let per = if actual.len() == expected.len() {
        per_sample
            .filter(|p| !p.is_empty())
            .map(|p| (p, expected.len() / p.len()))
    } else {
        None
    };
    let (mut max_abs, mut max_rel, mut pass) = (0f64, 0f64, actual.len() == expected.len());
    let mut failing = Vec::new();
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let err = (a - e).abs();
        max_abs = max_abs.max(err);
        if *e != 0.0 {
            max_rel = max_rel.max(err / e.abs());
        }
        let tol = per
            .map(|(p, chunk)| p[(i / chunk.max(1)).min(p.len() - 1)])
            .unwrap_or(atol);
        // NaN fails: the comparison is false.
        let ok = err <= tol + rtol * e.abs();
        if !ok && failing.len() < 64 {
            failing.push(i);
        }
        pass &= ok;
    }
    if actual.iter().any(|a| a.is_nan()) {
        max_abs = f64::NAN;
    }
    KeyResult {
        key: key.to_string(),
        max_abs,
        max_rel,
        pass,
        rule: format!(
            "atol {atol:e}, rtol {rtol:e}{}",
            if per.is_some() {
                ", per-sample atol"
            } else {
                ""
            }
        ),
        failing,
    }
}

/// The `compare` entry of `key`.
pub(crate) fn entry<'a>(json: &'a Value, key: &str) -> Option<&'a Value> {
    json["compare"].as_array()?.iter().find(|c| c["key"] == key)
}

/// Compares `actual` with the stored `key` by its elementwise `compare` entry.
pub(crate) fn by_entry(case: &Case<'_>, key: &str, actual: &[f64]) -> Result<Option<KeyResult>> {
    let Some(entry) = entry(case.json, key) else {
        return Ok(None);
    };
    if entry["kind"] != "elementwise" {
        return Ok(None);
    }
    let atol = entry["atol"]
        .as_f64()
        .ok_or_else(|| case.bad(format!("compare entry of {key} has no atol")))?;
    let rtol = entry["rtol"]
        .as_f64()
        .ok_or_else(|| case.bad(format!("compare entry of {key} has no rtol")))?;
    let per: Option<Vec<f64>> = entry["per_sample_atol"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect());
    let expected = values(&case.tensor(key)?)?;
    Ok(Some(elementwise(
        key,
        actual,
        &expected,
        atol,
        rtol,
        per.as_deref(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elementwise_rule_and_per_sample_bounds() {
        let r = elementwise("k", &[1.0, 2.0005], &[1.0, 2.0], 1e-4, 1e-4, None);
        // |2.0005 − 2| = 5e-4 > 1e-4 + 2e-4.
        assert!(!r.pass);
        assert!((r.max_abs - 5e-4).abs() < 1e-12);
        assert_eq!(r.failing, vec![1]);
        let r = elementwise(
            "k",
            &[1.0, 2.0005],
            &[1.0, 2.0],
            1e-4,
            1e-4,
            Some(&[1e-6, 1e-3]),
        );
        assert!(r.pass, "the second sample has a looser bound");
        assert!(
            !elementwise("k", &[1.0], &[1.0, 2.0], 1.0, 0.0, None).pass,
            "length mismatch fails"
        );
        assert!(
            !elementwise("k", &[f64::NAN], &[1.0], 1.0, 0.0, None).pass,
            "NaN fails"
        );
    }
}
