//! Training-time distributions t ~ p(t) on [0, 1] (t = 0 noise, t = 1 data).
//!
//! Every distribution is sampled by pushing u ~ U(0, 1), drawn from the caller's RNG, through its
//! inverse CDF: the training loop owns one generator whose state is saved with the checkpoint, so a
//! resumed run draws exactly the times an uninterrupted one would.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Lower and upper bound of rfpp's affine map of the U-shaped density (`t_dist.py`: t_min, t_max).
pub const U_SHAPED_BOUNDS: (f64, f64) = (1e-5, 1.0 - 1e-5);

/// A distribution of training times with a CDF and its inverse.
pub trait TimeDistribution {
    /// P(T ≤ t).
    fn cdf(&self, t: f64) -> f64;
    /// The smallest t with P(T ≤ t) ≥ u, for u in [0, 1].
    fn icdf(&self, u: f64) -> f64;
    /// `n` samples, each icdf(u) with u ~ U(0, 1) from `rng`.
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.icdf(rng.gen::<f64>())).collect()
    }
}

/// A time distribution with a Lebesgue density.
pub trait Density {
    /// The density p(t).
    fn pdf(&self, t: f64) -> f64;
}

/// The closed set of training-time distributions, as written in configs (`kind = "u_shaped"`, …).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TimeDist {
    /// U(eps, 1): RectifiedFlow's and SlimFlow's default (eps = 1e-3).
    Uniform {
        /// Smallest time; keeps the network away from t = 0.
        eps: f64,
    },
    /// 2-rectified flow++'s U-shaped density p(u) ∝ e^{a·u} + e^{a·(1−u)} on [0, 1], mapped affinely to
    /// [1e-5, 1 − 1e-5] (Lee et al. 2024, §3.2; rfpp `t_dist.py`, a = 4 in the paper).
    UShaped {
        /// Concentration at the ends; a → 0 is uniform.
        a: f64,
    },
    /// t = sigmoid(m + s·n), n ~ N(0, 1) (Esser et al. 2024).
    LogitNormal {
        /// Location m of the underlying normal.
        mean: f64,
        /// Scale s > 0 of the underlying normal.
        std: f64,
    },
    /// Uniform over the `steps` left endpoints of the uniform grid from eps to 1 (k-step distillation).
    Discrete {
        /// Number of grid intervals k ≥ 1.
        steps: u32,
        /// First grid time.
        eps: f64,
    },
    /// Always the same t (one-step distillation uses t = eps).
    Fixed {
        /// The time in [0, 1].
        t: f64,
    },
}

impl Default for TimeDist {
    fn default() -> Self {
        TimeDist::Uniform { eps: 1e-3 }
    }
}

fn invalid(name: &'static str, value: f64, reason: &'static str) -> Error {
    Error::InvalidParameter {
        name,
        value,
        reason,
    }
}

impl TimeDist {
    /// Checks every parameter against its domain.
    pub fn validate(&self) -> Result<()> {
        match *self {
            TimeDist::Uniform { eps } | TimeDist::Discrete { eps, .. } => {
                if !(0.0..1.0).contains(&eps) {
                    return Err(invalid("eps", eps, "must lie in [0, 1)"));
                }
                if let TimeDist::Discrete { steps: 0, .. } = self {
                    return Err(invalid("steps", 0.0, "must be at least 1"));
                }
            }
            TimeDist::UShaped { a } => {
                if !(0.0..=500.0).contains(&a) {
                    return Err(invalid("a", a, "must lie in [0, 500]"));
                }
            }
            TimeDist::LogitNormal { mean, std } => {
                if !mean.is_finite() {
                    return Err(invalid("mean", mean, "must be finite"));
                }
                if !(std.is_finite() && std > 0.0) {
                    return Err(invalid("std", std, "must be positive"));
                }
            }
            TimeDist::Fixed { t } => {
                if !(0.0..=1.0).contains(&t) {
                    return Err(invalid("t", t, "must lie in [0, 1]"));
                }
            }
        }
        Ok(())
    }
}

/// Base U-shaped CDF on [0, 1]: F(u) = (e^{a u} − 1 + e^a − e^{a(1−u)}) / (2(e^a − 1)).
fn u_shaped_cdf01(a: f64, u: f64) -> f64 {
    let u = u.clamp(0.0, 1.0);
    if a < 1e-9 {
        return u;
    }
    let em1 = a.exp_m1();
    ((a * u).exp_m1() + em1 - (a * (1.0 - u)).exp() + 1.0) / (2.0 * em1)
}

/// Base U-shaped density on [0, 1]: f(u) = a(e^{a u} + e^{a(1−u)}) / (2(e^a − 1)).
fn u_shaped_pdf01(a: f64, u: f64) -> f64 {
    if !(0.0..=1.0).contains(&u) {
        return 0.0;
    }
    if a < 1e-9 {
        return 1.0;
    }
    a * ((a * u).exp() + (a * (1.0 - u)).exp()) / (2.0 * a.exp_m1())
}

/// Inverse of [`u_shaped_cdf01`]: ln(y)/a with y = (c + sqrt(c² + 4e^a))/2, c = (2p − 1)(e^a − 1).
fn u_shaped_icdf01(a: f64, p: f64) -> f64 {
    let p = p.clamp(0.0, 1.0);
    if a < 1e-9 {
        return p;
    }
    let c = (2.0 * p - 1.0) * a.exp_m1();
    let y = (c + (c * c + 4.0 * a.exp()).sqrt()) / 2.0;
    (y.ln() / a).clamp(0.0, 1.0)
}

/// Standard normal CDF Φ(x).
fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// Standard normal quantile Φ⁻¹(p): Acklam's rational approximation refined by one Halley step
/// (relative error below 1e-15 over (0, 1)).
fn normal_icdf(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const P_LOW: f64 = 0.02425;
    let x = if p < P_LOW {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    // Halley refinement.
    let e = normal_cdf(x) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

fn logit(t: f64) -> f64 {
    (t / (1.0 - t)).ln()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl TimeDistribution for TimeDist {
    fn cdf(&self, t: f64) -> f64 {
        match *self {
            TimeDist::Uniform { eps } => ((t - eps) / (1.0 - eps)).clamp(0.0, 1.0),
            TimeDist::UShaped { a } => {
                let (lo, hi) = U_SHAPED_BOUNDS;
                u_shaped_cdf01(a, (t - lo) / (hi - lo))
            }
            TimeDist::LogitNormal { mean, std } => {
                if t <= 0.0 {
                    0.0
                } else if t >= 1.0 {
                    1.0
                } else {
                    normal_cdf((logit(t) - mean) / std)
                }
            }
            TimeDist::Discrete { steps, eps } => {
                if t < eps {
                    return 0.0;
                }
                let h = (1.0 - eps) / steps as f64;
                // Number of grid points eps + i·h (i < steps) that are ≤ t.
                let count = (((t - eps) / h) + 1e-12).floor() + 1.0;
                (count.min(steps as f64)) / steps as f64
            }
            TimeDist::Fixed { t: t0 } => {
                if t >= t0 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }

    fn icdf(&self, u: f64) -> f64 {
        let u = u.clamp(0.0, 1.0);
        match *self {
            TimeDist::Uniform { eps } => eps + (1.0 - eps) * u,
            TimeDist::UShaped { a } => {
                let (lo, hi) = U_SHAPED_BOUNDS;
                lo + (hi - lo) * u_shaped_icdf01(a, u)
            }
            TimeDist::LogitNormal { mean, std } => sigmoid(mean + std * normal_icdf(u)),
            TimeDist::Discrete { steps, eps } => {
                let i = ((u * steps as f64).floor() as u32).min(steps - 1);
                eps + (1.0 - eps) * i as f64 / steps as f64
            }
            TimeDist::Fixed { t } => t,
        }
    }
}

impl Density for TimeDist {
    /// Density for the continuous kinds; 0 for `discrete` and `fixed`, which have none.
    fn pdf(&self, t: f64) -> f64 {
        match *self {
            TimeDist::Uniform { eps } => {
                if (eps..=1.0).contains(&t) {
                    1.0 / (1.0 - eps)
                } else {
                    0.0
                }
            }
            TimeDist::UShaped { a } => {
                let (lo, hi) = U_SHAPED_BOUNDS;
                u_shaped_pdf01(a, (t - lo) / (hi - lo)) / (hi - lo)
            }
            TimeDist::LogitNormal { mean, std } => {
                if t <= 0.0 || t >= 1.0 {
                    return 0.0;
                }
                let z = (logit(t) - mean) / std;
                (-0.5 * z * z).exp() / (std * (2.0 * std::f64::consts::PI).sqrt() * t * (1.0 - t))
            }
            TimeDist::Discrete { .. } | TimeDist::Fixed { .. } => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// Kolmogorov–Smirnov statistic of `samples` against `cdf`.
    fn ks(mut samples: Vec<f64>, cdf: impl Fn(f64) -> f64) -> f64 {
        samples.sort_by(|a, b| a.total_cmp(b));
        let n = samples.len() as f64;
        samples
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = cdf(x);
                (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
            })
            .fold(0.0, f64::max)
    }

    /// KS critical value at significance 1e-3: 1.95 / sqrt(n).
    fn ks_limit(n: usize) -> f64 {
        1.95 / (n as f64).sqrt()
    }

    const N: usize = 100_000;

    #[test]
    fn continuous_samplers_match_their_cdfs() {
        let dists = [
            TimeDist::Uniform { eps: 1e-3 },
            TimeDist::UShaped { a: 4.0 },
            TimeDist::UShaped { a: 2.0 },
            TimeDist::LogitNormal {
                mean: 0.0,
                std: 1.0,
            },
            TimeDist::LogitNormal {
                mean: -0.5,
                std: 0.7,
            },
        ];
        for (i, d) in dists.iter().enumerate() {
            let mut rng = ChaCha20Rng::seed_from_u64(11 + i as u64);
            let d_stat = ks(d.sample(&mut rng, N), |t| d.cdf(t));
            assert!(d_stat < ks_limit(N), "{d:?}: KS {d_stat}");
        }
    }

    #[test]
    fn ks_detects_a_wrong_distribution() {
        // U-shaped samples tested against the uniform CDF must fail: the test has power.
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let s = TimeDist::UShaped { a: 4.0 }.sample(&mut rng, N);
        let uniform = TimeDist::Uniform { eps: 0.0 };
        assert!(ks(s, |t| uniform.cdf(t)) > 10.0 * ks_limit(N));
    }

    #[test]
    fn logit_normal_matches_an_independent_normal_sampler() {
        use rand_distr_free_normal as normal;
        // Box–Muller normals pushed through the sigmoid, compared with the icdf-based sampler.
        let d = TimeDist::LogitNormal {
            mean: 0.3,
            std: 1.2,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let s: Vec<f64> = (0..N)
            .map(|_| sigmoid(0.3 + 1.2 * normal(&mut rng)))
            .collect();
        assert!(ks(s, |t| d.cdf(t)) < ks_limit(N));
    }

    fn rand_distr_free_normal(rng: &mut ChaCha20Rng) -> f64 {
        let u1: f64 = 1.0 - rng.gen::<f64>();
        let u2: f64 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    #[test]
    fn densities_integrate_to_one() {
        for d in [
            TimeDist::Uniform { eps: 1e-3 },
            TimeDist::UShaped { a: 4.0 },
            TimeDist::LogitNormal {
                mean: 0.0,
                std: 1.0,
            },
        ] {
            let n = 200_000;
            let integral: f64 = (0..n)
                .map(|i| d.pdf((i as f64 + 0.5) / n as f64) / n as f64)
                .sum();
            assert!((integral - 1.0).abs() < 1e-4, "{d:?}: {integral}");
        }
    }

    #[test]
    fn icdf_inverts_cdf_and_is_monotone() {
        for d in [
            TimeDist::Uniform { eps: 1e-3 },
            TimeDist::UShaped { a: 4.0 },
            TimeDist::LogitNormal {
                mean: 0.5,
                std: 0.5,
            },
        ] {
            let mut prev = f64::NEG_INFINITY;
            for i in 1..1000 {
                let u = i as f64 / 1000.0;
                let t = d.icdf(u);
                assert!(t > prev, "{d:?} not increasing at {u}");
                prev = t;
                assert!((d.cdf(t) - u).abs() < 1e-9, "{d:?} at {u}");
            }
        }
    }

    #[test]
    fn u_shaped_density_is_symmetric() {
        let d = TimeDist::UShaped { a: 4.0 };
        for i in 0..=50 {
            let t = i as f64 / 50.0;
            assert!((d.pdf(t) - d.pdf(1.0 - t)).abs() < 1e-9);
        }
        // (e^0.04 + e^3.96)/(2e^2) = 3.62
        assert!(d.pdf(0.01) > 3.5 * d.pdf(0.5));
    }

    #[test]
    fn normal_quantile_is_accurate() {
        // scipy.stats.norm.ppf([0.001, 0.025, 0.5, 0.9]) =
        // [-3.090232306167813, -1.959963984540054, 0.0, 1.2815515655446004]
        let expected = [
            (0.001, -3.090_232_306_167_813),
            (0.025, -1.959_963_984_540_054),
            (0.5, 0.0),
            (0.9, 1.281_551_565_544_600_4),
        ];
        for (p, x) in expected {
            assert!((normal_icdf(p) - x).abs() < 1e-12, "{p}");
        }
    }

    #[test]
    fn discrete_and_fixed() {
        let d = TimeDist::Discrete { steps: 4, eps: 0.0 };
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let s = d.sample(&mut rng, 40_000);
        for v in [0.0, 0.25, 0.5, 0.75] {
            let frac = s.iter().filter(|&&x| (x - v).abs() < 1e-12).count() as f64 / 40_000.0;
            assert!((frac - 0.25).abs() < 0.01, "{v}: {frac}");
        }
        assert_eq!(d.cdf(0.3), 0.5);
        let f = TimeDist::Fixed { t: 1e-3 };
        assert!(f.sample(&mut rng, 10).iter().all(|&t| t == 1e-3));
    }

    #[test]
    fn seeds_reproduce() {
        let d = TimeDist::UShaped { a: 4.0 };
        let a = d.sample(&mut ChaCha20Rng::seed_from_u64(9), 100);
        let b = d.sample(&mut ChaCha20Rng::seed_from_u64(9), 100);
        let c = d.sample(&mut ChaCha20Rng::seed_from_u64(10), 100);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn validation_rejects_bad_parameters() {
        assert!(TimeDist::Uniform { eps: 1.0 }.validate().is_err());
        assert!(TimeDist::UShaped { a: -1.0 }.validate().is_err());
        assert!(TimeDist::LogitNormal {
            mean: 0.0,
            std: 0.0
        }
        .validate()
        .is_err());
        assert!(TimeDist::Discrete { steps: 0, eps: 0.0 }
            .validate()
            .is_err());
        assert!(TimeDist::Fixed { t: 2.0 }.validate().is_err());
        assert!(TimeDist::default().validate().is_ok());
    }
}
