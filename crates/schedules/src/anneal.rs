//! Annealing schedules β_k for SlimFlow's Annealing Reflow (Zhu, Liu, Liu, ECCV 2024, §4.1).
//!
//! The student trains on perturbed pair noise z' = sqrt(1 − β_k²)·z + β_k·ε with fresh ε each step.
//! β = 1 is 1-RF training on random pairs, β = 0 is plain reflow; the schedule moves from the first to
//! the second over K steps.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How β_k moves from 1 to 0 over `total` steps (or stays fixed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Anneal {
    /// β_k = 1 − min(1, k/K) (SlimFlow's default).
    Linear {},
    /// β_k = (1 + cos(π·min(1, k/K)))/2.
    Cosine {},
    /// β_k = exp(−k/K); reaches e⁻¹ at k = K and 0 only asymptotically.
    Exp {},
    /// β_k = `beta` for every k (β = 0: plain reflow; β = 1: random pairs).
    Fixed {
        /// The constant β in [0, 1].
        beta: f64,
    },
}

impl Default for Anneal {
    fn default() -> Self {
        Anneal::Fixed { beta: 0.0 }
    }
}

impl Anneal {
    /// β at step `k` of a schedule spanning `total` steps (K). `total = 0` means "already annealed".
    pub fn beta(&self, k: u64, total: u64) -> f64 {
        let frac = if total == 0 {
            1.0
        } else {
            (k as f64 / total as f64).min(1.0)
        };
        match *self {
            Anneal::Linear {} => 1.0 - frac,
            Anneal::Cosine {} => (1.0 + (std::f64::consts::PI * frac).cos()) / 2.0,
            Anneal::Exp {} => {
                if total == 0 {
                    0.0
                } else {
                    (-(k as f64) / total as f64).exp()
                }
            }
            Anneal::Fixed { beta } => beta,
        }
    }

    /// Checks the parameters (β in [0, 1]).
    pub fn validate(&self) -> Result<()> {
        if let Anneal::Fixed { beta } = *self {
            if !(0.0..=1.0).contains(&beta) {
                return Err(Error::InvalidParameter {
                    name: "beta",
                    value: beta,
                    reason: "must lie in [0, 1]",
                });
            }
        }
        Ok(())
    }

    /// Coefficients (sqrt(1 − β²), β) applied to (z, ε).
    pub fn mix(&self, k: u64, total: u64) -> (f64, f64) {
        let b = self.beta(k, total);
        (noise_keep(b), b)
    }
}

/// The weight sqrt(1 − β²) of the pair noise beside β·ε, which keeps z' standard normal.
pub fn noise_keep(beta: f64) -> f64 {
    (1.0 - beta * beta).max(0.0).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_start_at_one_and_end_at_zero() {
        for a in [Anneal::Linear {}, Anneal::Cosine {}] {
            assert_eq!(a.beta(0, 100), 1.0, "{a:?}");
            assert!(a.beta(100, 100).abs() < 1e-12, "{a:?}");
            assert!(a.beta(1000, 100).abs() < 1e-12, "{a:?} past K");
        }
        assert_eq!(Anneal::Exp {}.beta(0, 100), 1.0);
        assert!((Anneal::Exp {}.beta(100, 100) - (-1f64).exp()).abs() < 1e-12);
    }

    #[test]
    fn linear_and_cosine_midpoints() {
        assert!((Anneal::Linear {}.beta(25, 100) - 0.75).abs() < 1e-12);
        assert!((Anneal::Cosine {}.beta(50, 100) - 0.5).abs() < 1e-12);
        // cosine is above linear in the first half: (1 + cos(π/4))/2 = 0.853553...
        assert!((Anneal::Cosine {}.beta(25, 100) - 0.853_553_390_593_273_7).abs() < 1e-12);
    }

    #[test]
    fn schedules_are_monotone_non_increasing() {
        for a in [Anneal::Linear {}, Anneal::Cosine {}, Anneal::Exp {}] {
            let mut prev = f64::INFINITY;
            for k in 0..=120 {
                let b = a.beta(k, 100);
                assert!(b <= prev + 1e-15, "{a:?} rises at {k}");
                prev = b;
            }
        }
    }

    #[test]
    fn mix_preserves_unit_variance() {
        for k in [0, 10, 50, 99, 100] {
            let (c, b) = Anneal::Cosine {}.mix(k, 100);
            assert!((c * c + b * b - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn fixed_beta_is_validated_and_parsed() {
        assert!(Anneal::Fixed { beta: 1.5 }.validate().is_err());
        assert!(Anneal::Fixed { beta: 0.3 }.validate().is_ok());
        let a: Anneal = serde_json::from_str(r#"{"kind":"fixed","beta":0.25}"#).unwrap();
        assert_eq!(a.beta(7, 10), 0.25);
        assert!(serde_json::from_str::<Anneal>(r#"{"kind":"linear","x":1}"#).is_err());
    }
}
