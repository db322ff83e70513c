//! 2-D toy distributions for sources and targets.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::error::{Error, Result};

/// A 2-D distribution (config: `target = { kind = "checkerboard", squares = 4, size = 4.0 }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Toy {
    /// Isotropic Gaussian N(0, std²·I); `std = 1` is the usual source.
    Gaussian {
        /// Standard deviation.
        std: f64,
    },
    /// `modes` Gaussians of std `std` evenly spaced on a circle of `radius`.
    GaussianRing {
        /// Number of modes.
        modes: u32,
        /// Circle radius.
        radius: f64,
        /// Per-mode standard deviation.
        std: f64,
    },
    /// Two interleaving half circles (scikit-learn's `make_moons`, scaled by `scale`), with Gaussian
    /// jitter `noise`.
    TwoMoons {
        /// Jitter standard deviation (before scaling).
        noise: f64,
        /// Overall scale.
        scale: f64,
    },
    /// Uniform on the black squares of a `squares`×`squares` board of side `size` centred at 0.
    Checkerboard {
        /// Squares per side (≥ 2).
        squares: u32,
        /// Side length of the board.
        size: f64,
    },
    /// `count` concentric circles of radii r, 2r, …, with Gaussian jitter `noise`; points spread
    /// proportionally to circumference.
    Rings {
        /// Number of circles.
        count: u32,
        /// Radius of the innermost circle.
        radius: f64,
        /// Jitter standard deviation.
        noise: f64,
    },
}

fn normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    StandardNormal.sample(rng)
}

impl Toy {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        let pos = |x: f64| x.is_finite() && x > 0.0;
        let non_neg = |x: f64| x.is_finite() && x >= 0.0;
        let (ok, what) = match *self {
            Toy::Gaussian { std } => (pos(std), "gaussian needs std > 0"),
            Toy::GaussianRing { modes, radius, std } => (
                modes > 0 && pos(std) && non_neg(radius),
                "gaussian_ring needs modes ≥ 1, std > 0, radius ≥ 0",
            ),
            Toy::TwoMoons { noise, scale } => (
                non_neg(noise) && pos(scale),
                "two_moons needs noise ≥ 0 and scale > 0",
            ),
            Toy::Checkerboard { squares, size } => (
                squares >= 2 && pos(size),
                "checkerboard needs squares ≥ 2 and size > 0",
            ),
            Toy::Rings {
                count,
                radius,
                noise,
            } => (
                count > 0 && pos(radius) && non_neg(noise),
                "rings needs count ≥ 1, radius > 0, noise ≥ 0",
            ),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!("{what}, got {self:?}")))
        }
    }

    /// One point.
    pub fn sample_point<R: Rng + ?Sized>(&self, rng: &mut R) -> [f64; 2] {
        use std::f64::consts::PI;
        match *self {
            Toy::Gaussian { std } => [std * normal(rng), std * normal(rng)],
            Toy::GaussianRing { modes, radius, std } => {
                let k = rng.gen_range(0..modes) as f64;
                let a = 2.0 * PI * k / modes as f64;
                [
                    radius * a.cos() + std * normal(rng),
                    radius * a.sin() + std * normal(rng),
                ]
            }
            Toy::TwoMoons { noise, scale } => {
                let a = PI * rng.gen::<f64>();
                let (x, y) = if rng.gen::<bool>() {
                    (a.cos(), a.sin())
                } else {
                    (1.0 - a.cos(), 0.5 - a.sin())
                };
                // Centre the pair of moons at the origin.
                [
                    scale * (x - 0.5 + noise * normal(rng)),
                    scale * (y - 0.25 + noise * normal(rng)),
                ]
            }
            Toy::Checkerboard { squares, size } => {
                let cell = size / squares as f64;
                loop {
                    let i = rng.gen_range(0..squares);
                    let j = rng.gen_range(0..squares);
                    if (i + j) % 2 == 0 {
                        let x = (i as f64 + rng.gen::<f64>()) * cell - size / 2.0;
                        let y = (j as f64 + rng.gen::<f64>()) * cell - size / 2.0;
                        return [x, y];
                    }
                }
            }
            Toy::Rings {
                count,
                radius,
                noise,
            } => {
                // Ring k (1-based) has circumference ∝ k: pick k with probability k / Σk.
                let total = (count * (count + 1) / 2) as f64;
                let mut u = rng.gen::<f64>() * total;
                let mut k = 1u32;
                while u >= k as f64 && k < count {
                    u -= k as f64;
                    k += 1;
                }
                let a = 2.0 * PI * rng.gen::<f64>();
                let r = radius * k as f64;
                [
                    r * a.cos() + noise * normal(rng),
                    r * a.sin() + noise * normal(rng),
                ]
            }
        }
    }

    /// `n` points as a row-major `Vec` of length 2n.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let [x, y] = self.sample_point(rng);
            out.push(x as f32);
            out.push(y as f32);
        }
        out
    }

    /// `n` points as a float32 tensor [n, 2] on `device`.
    pub fn sample_tensor<R: Rng + ?Sized>(&self, rng: &mut R, n: usize, device: Device) -> Tensor {
        slimflow_tensor_io::upload(
            &Tensor::from_slice(&self.sample(rng, n)).reshape([n as i64, 2]),
            device,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn all() -> Vec<Toy> {
        vec![
            Toy::Gaussian { std: 1.0 },
            Toy::GaussianRing {
                modes: 8,
                radius: 4.0,
                std: 0.2,
            },
            Toy::TwoMoons {
                noise: 0.05,
                scale: 2.0,
            },
            Toy::Checkerboard {
                squares: 4,
                size: 4.0,
            },
            Toy::Rings {
                count: 3,
                radius: 1.0,
                noise: 0.05,
            },
        ]
    }

    #[test]
    fn seeds_reproduce_and_differ() {
        for d in all() {
            let a = d.sample(&mut ChaCha20Rng::seed_from_u64(1), 100);
            let b = d.sample(&mut ChaCha20Rng::seed_from_u64(1), 100);
            let c = d.sample(&mut ChaCha20Rng::seed_from_u64(2), 100);
            assert_eq!(a, b, "{d:?}");
            assert_ne!(a, c, "{d:?}");
            d.validate().unwrap();
        }
    }

    #[test]
    fn checkerboard_points_lie_on_black_squares() {
        let d = Toy::Checkerboard {
            squares: 4,
            size: 4.0,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        for _ in 0..2000 {
            let [x, y] = d.sample_point(&mut rng);
            assert!(x.abs() <= 2.0 && y.abs() <= 2.0);
            let (i, j) = ((x + 2.0).floor() as i64, (y + 2.0).floor() as i64);
            assert_eq!((i + j) % 2, 0, "({x}, {y})");
        }
    }

    #[test]
    fn ring_modes_sit_at_the_radius() {
        let d = Toy::GaussianRing {
            modes: 8,
            radius: 4.0,
            std: 0.01,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        for _ in 0..500 {
            let [x, y] = d.sample_point(&mut rng);
            assert!(((x * x + y * y).sqrt() - 4.0).abs() < 0.1);
            let angle = y.atan2(x) / (std::f64::consts::PI / 4.0);
            assert!((angle - angle.round()).abs() < 0.05);
        }
    }

    #[test]
    fn rings_are_weighted_by_circumference() {
        let d = Toy::Rings {
            count: 3,
            radius: 1.0,
            noise: 0.0,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        let mut counts = [0usize; 3];
        for _ in 0..60_000 {
            let [x, y] = d.sample_point(&mut rng);
            counts[((x * x + y * y).sqrt().round() as usize) - 1] += 1;
        }
        for (k, c) in counts.iter().enumerate() {
            let expected = 60_000.0 * (k + 1) as f64 / 6.0;
            assert!(
                (*c as f64 - expected).abs() < 0.03 * expected,
                "ring {k}: {c}"
            );
        }
    }

    #[test]
    fn moons_are_centred_and_invalid_settings_rejected() {
        let d = Toy::TwoMoons {
            noise: 0.0,
            scale: 1.0,
        };
        let v = d.sample(&mut ChaCha20Rng::seed_from_u64(4), 20_000);
        let mx: f64 = v.iter().step_by(2).map(|&x| x as f64).sum::<f64>() / 20_000.0;
        assert!(mx.abs() < 0.02, "{mx}");
        assert!(Toy::Checkerboard {
            squares: 1,
            size: 1.0
        }
        .validate()
        .is_err());
        assert!(Toy::Gaussian { std: 0.0 }.validate().is_err());
    }
}
