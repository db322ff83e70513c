//! Per-sample distances between batches: d(a, b) → [B], never reduced over the batch.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// A distance between two batches [B, …] returning one value per sample ([B]).
pub trait Premetric: std::fmt::Debug {
    /// d(a, b) per sample.
    fn distance(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
}

/// The premetrics available in configs (`premetric = { kind = "pseudo_huber" }`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PremetricConfig {
    /// mean over dimensions of (a − b)² (RectifiedFlow's and SlimFlow's reflow loss).
    L2Squared {},
    /// sqrt(mean over dimensions of (a − b)²).
    L2 {},
    /// mean over dimensions of |a − b|.
    L1 {},
    /// (sqrt(‖a − b‖² + c²) − c) / d with d the number of dimensions and c = 0.00054·d
    /// (2-rectified flow++, §3.3).
    PseudoHuber {},
}

/// Squared differences summed over all but the batch dimension, in float32 or wider: [B].
fn sum_sq(a: &Tensor, b: &Tensor) -> Tensor {
    (a - b)
        .square()
        .flatten(1, -1)
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
}

fn dims(a: &Tensor) -> f64 {
    a.size()[1..].iter().product::<i64>() as f64
}

/// A weighted sum of premetrics, Σ_k w_k·d_k(a, b), per sample: SlimFlow's LPIPS + L2 / LPIPS + L1
/// and any other mix (`Weighted::default().with(1.0, &lpips).with(1.0, &PremetricConfig::L1 {})`).
#[derive(Debug, Default)]
pub struct Weighted<'a> {
    /// (weight, premetric) terms.
    pub terms: Vec<(f64, &'a dyn Premetric)>,
}

impl<'a> Weighted<'a> {
    /// Adds a term.
    pub fn with(mut self, weight: f64, metric: &'a dyn Premetric) -> Self {
        self.terms.push((weight, metric));
        self
    }
}

impl Premetric for Weighted<'_> {
    fn distance(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for (w, m) in &self.terms {
            let d = m.distance(a, b)? * *w;
            total = Some(match total {
                Some(t) => t + d,
                None => d,
            });
        }
        total.ok_or_else(|| Error::Invalid("a weighted premetric needs at least one term".into()))
    }
}

impl Default for PremetricConfig {
    fn default() -> Self {
        PremetricConfig::L2Squared {}
    }
}

impl Premetric for PremetricConfig {
    fn distance(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if a.size() != b.size() || a.dim() < 2 {
            return Err(Error::ShapeMismatch {
                what: "premetric inputs must both be [B, …]",
                a: a.size(),
                b: b.size(),
            });
        }
        let d = dims(a);
        Ok(match self {
            PremetricConfig::L2Squared {} => sum_sq(a, b) / d,
            PremetricConfig::L2 {} => (sum_sq(a, b) / d).sqrt(),
            PremetricConfig::L1 {} => {
                (a - b)
                    .abs()
                    .flatten(1, -1)
                    .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                    / d
            }
            PremetricConfig::PseudoHuber {} => {
                let c = 0.00054 * d;
                // sqrt(s + c²) − c written as s/(sqrt(s + c²) + c): the same function without the
                // float32 cancellation of the quadratic regime s ≪ c² (late in training).
                let s = sum_sq(a, b);
                &s / ((&s + c * c).sqrt() + c) / d
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).reshape(shape)
    }

    #[test]
    fn hand_computed_values() {
        // Two samples of 2 dims: differences (3, 4) and (0, 0).
        let a = t(&[3.0, 4.0, 1.0, 1.0], &[2, 2]);
        let b = t(&[0.0, 0.0, 1.0, 1.0], &[2, 2]);
        let l2sq = PremetricConfig::L2Squared {}.distance(&a, &b).unwrap();
        assert_eq!(Vec::<f32>::try_from(&l2sq).unwrap(), vec![12.5, 0.0]);
        let l1 = PremetricConfig::L1 {}.distance(&a, &b).unwrap();
        assert_eq!(Vec::<f32>::try_from(&l1).unwrap(), vec![3.5, 0.0]);
        let l2 = PremetricConfig::L2 {}.distance(&a, &b).unwrap();
        assert!((l2.double_value(&[0]) - 12.5f64.sqrt()).abs() < 1e-6);
        // d = 2, c = 0.00108: (sqrt(25 + c²) − c)/2 = 2.49946002...
        // python: import math; c=0.00054*2; (math.sqrt(25+c*c)-c)/2 = 2.4994600233280...
        let h = PremetricConfig::PseudoHuber {}.distance(&a, &b).unwrap();
        assert!((h.double_value(&[0]) - 2.499_460_023_328).abs() < 1e-6);
        assert_eq!(h.double_value(&[1]), 0.0);
    }

    #[test]
    fn pseudo_huber_regimes() {
        // Image-sized d = 3·32·32: c = 1.65888. Quadratic for ‖δ‖ ≪ c, linear for ‖δ‖ ≫ c.
        let d = 3 * 32 * 32;
        let c = 0.00054 * d as f64;
        let zeros = Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu));
        let small = zeros.ones_like() * (0.01 / (d as f64).sqrt()); // ‖δ‖ = 0.01
        let large = zeros.ones_like() * (1000.0 / (d as f64).sqrt()); // ‖δ‖ = 1000
        let hs = PremetricConfig::PseudoHuber {}
            .distance(&small, &zeros)
            .unwrap()
            .double_value(&[0]);
        let hl = PremetricConfig::PseudoHuber {}
            .distance(&large, &zeros)
            .unwrap()
            .double_value(&[0]);
        assert!((hs - 0.01f64.powi(2) / (2.0 * c) / d as f64).abs() / hs < 1e-3);
        assert!((hl - (1000.0 - c) / d as f64).abs() / hl < 1e-3);
    }

    #[test]
    fn identity_symmetry_and_non_negativity() {
        let a = Tensor::randn([4, 3, 2, 2], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([4, 3, 2, 2], (Kind::Float, Device::Cpu));
        for p in [
            PremetricConfig::L2Squared {},
            PremetricConfig::L2 {},
            PremetricConfig::L1 {},
            PremetricConfig::PseudoHuber {},
        ] {
            let zero = p.distance(&a, &a).unwrap();
            assert_eq!(zero.abs().max().double_value(&[]), 0.0, "{p:?}");
            let ab = p.distance(&a, &b).unwrap();
            let ba = p.distance(&b, &a).unwrap();
            assert!(ab.allclose(&ba, 1e-6, 1e-6, false));
            assert!(ab.min().double_value(&[]) > 0.0);
            assert_eq!(ab.size(), vec![4]);
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let a = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
        let err = PremetricConfig::L2Squared {}
            .distance(&a, &b)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[2, 3]") && err.contains("[2, 4]"), "{err}");
    }
}
