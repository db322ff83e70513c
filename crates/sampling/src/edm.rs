//! EDM's deterministic sampler (Karras et al. 2022, Algorithm 1 without churn) as rfpp runs it to
//! make its reflow pairs (rfpp `generate_edm.py: edm_sampler`), for any EDM-parameterised network.
//!
//! The sampler works in EDM's σ-space, x_σ = y + σ·n, on the denoiser D(x_σ, σ) ≈ E[y | x_σ]:
//!
//! - Karras grid σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for i < N, then σ_N = 0
//!   (N = 1: σ_0 = σ_max; EDM's formula divides 0 by 0 there). σ_min and σ_max are first clipped to
//!   the denoiser's supported range, as EDM does with the network's `sigma_min`/`sigma_max`.
//! - x_0 = z·σ_0 in float64; the state stays float64, each denoiser output is cast to float64.
//! - dx/dσ = (x − D(x, σ))/σ; Euler x_{i+1} = x_i + (σ_{i+1} − σ_i)·d_i, and with `heun` the
//!   trapezoidal correction on every step but the last (σ_N = 0 cannot be evaluated): 2N − 1 NFE.
//! - rfpp's copy keeps EDM's churn lines but with γ = 0 (they are commented out: t_hat = t_cur), so
//!   x̂ = x + sqrt(t̂² − t²)·S_noise·ε = x exactly; there is no S_churn setting.
//!
//! In slimflow's time convention only at the boundary: the input is our noise z, the output our
//! data x (σ_N = 0, where x_σ = x_ours), and a captured path is (t_i, x_σ_i/(1 + σ_i)) with
//! t_i = 1/(1 + σ_i). Any velocity field becomes a denoiser through our time
//! ([`VelocityDenoiser`]); an EDM network supplies its own preconditioned one.

use serde::{Deserialize, Serialize};
use slimflow_schedules::convert::{edm_sigma, t_from_edm_sigma};
use slimflow_schedules::expand_t;
use tch::{Kind, Tensor};

use crate::domain::{Bound, Domain};
use crate::error::{Error, Result};
use crate::solver::{Solution, Trace};
use crate::velocity::Velocity;

/// An EDM denoiser D(x_σ, σ).
pub trait Denoiser {
    /// The denoised estimate of `x` ([B, …], EDM's σ-space, float64 from the sampler) at noise
    /// levels `sigma` (`[B]`, float64, all > 0). May return any float kind; the sampler casts it.
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> Tensor;

    /// The noise levels (σ_lo, σ_hi) the denoiser supports; EDM's sampler clips its σ range to it.
    /// Default: everything, (0, ∞), as EDM's `EDMPrecond`.
    fn sigma_range(&self) -> (f64, f64) {
        (0.0, f64::INFINITY)
    }
}

/// The denoiser of a velocity field through our time: at σ, t = 1/(1 + σ), the state is
/// x_ours = x_σ/(1 + σ) = t·x_σ, and the field's data prediction D = x_ours + (1 − t)·v(x_ours, t).
pub fn denoise_with_velocity(v: &dyn Velocity, x: &Tensor, sigma: &Tensor) -> Tensor {
    let t = (sigma.to_kind(x.kind()) + 1.0).reciprocal();
    let x_ours = x * expand_t(&t, x);
    let vel = v.velocity(&x_ours, &t);
    &x_ours + (1.0 - expand_t(&t, x)) * vel
}

/// The noise range a velocity field's domain allows: t = hi ⇔ σ_lo, t = lo ⇔ σ_hi, an open end
/// replaced by its nearest evaluation (so the EDM wrapper gives EDM's (0.002, 80)).
pub fn sigma_range_of(domain: &Domain) -> (f64, f64) {
    let sigma = |b: Bound| edm_sigma(b.last_evaluation()).max(0.0);
    (sigma(domain.hi()), sigma(domain.lo()))
}

/// Any [`Velocity`] as a [`Denoiser`] ([`denoise_with_velocity`]).
pub struct VelocityDenoiser<'a>(pub &'a dyn Velocity);

impl std::fmt::Debug for VelocityDenoiser<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VelocityDenoiser(domain {})", self.0.domain())
    }
}

impl Denoiser for VelocityDenoiser<'_> {
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> Tensor {
        denoise_with_velocity(self.0, x, sigma)
    }

    fn sigma_range(&self) -> (f64, f64) {
        sigma_range_of(&self.0.domain())
    }
}

fn default_steps() -> usize {
    18
}
fn default_rho() -> f64 {
    7.0
}
fn default_sigma_min() -> f64 {
    0.002
}
fn default_sigma_max() -> f64 {
    80.0
}
fn default_heun() -> bool {
    true
}

/// Settings of EDM's sampler (config: `{ kind = "edm", steps = 18, rho = 7, sigma_min = 0.002,
/// sigma_max = 80, heun = true }`, those being the defaults: EDM's CIFAR-10 setting, 35 NFE).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdmSamplerConfig {
    /// Number of σ steps N ≥ 1 (rfpp's `--N`).
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Karras grid exponent ρ > 0.
    #[serde(default = "default_rho")]
    pub rho: f64,
    /// Smallest non-zero noise level, > 0.
    #[serde(default = "default_sigma_min")]
    pub sigma_min: f64,
    /// Largest noise level (the start), > sigma_min, finite.
    #[serde(default = "default_sigma_max")]
    pub sigma_max: f64,
    /// Heun's correction on every step but the last (false: Euler, rfpp's `--euler`).
    #[serde(default = "default_heun")]
    pub heun: bool,
}

impl Default for EdmSamplerConfig {
    fn default() -> Self {
        EdmSamplerConfig {
            steps: default_steps(),
            rho: default_rho(),
            sigma_min: default_sigma_min(),
            sigma_max: default_sigma_max(),
            heun: default_heun(),
        }
    }
}

impl EdmSamplerConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &'static str, reason: String| Err(Error::InvalidSetting { name, reason });
        if self.steps == 0 {
            return bad("steps", "must be at least 1".into());
        }
        if !(self.rho.is_finite() && self.rho > 0.0) {
            return bad("rho", format!("must be positive, got {}", self.rho));
        }
        if !(self.sigma_min.is_finite() && self.sigma_min > 0.0) {
            return bad(
                "sigma_min",
                format!(
                    "must be positive (σ = 0 is the data), got {}",
                    self.sigma_min
                ),
            );
        }
        if !(self.sigma_max.is_finite() && self.sigma_max > self.sigma_min) {
            return bad(
                "sigma_max",
                format!(
                    "must be finite and above sigma_min = {}, got {}",
                    self.sigma_min, self.sigma_max
                ),
            );
        }
        Ok(())
    }

    /// Number of denoiser evaluations: 2N − 1 with Heun, N without.
    pub fn nfe(&self) -> usize {
        if self.heun {
            2 * self.steps - 1
        } else {
            self.steps
        }
    }
}

/// The Karras σ grid: `steps + 1` levels from σ_max down to σ_min, then 0.
pub fn karras_sigmas(steps: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let (a, b) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
    let mut s: Vec<f64> = (0..steps)
        .map(|i| {
            let frac = if steps > 1 {
                i as f64 / (steps - 1) as f64
            } else {
                0.0
            };
            (a + frac * (b - a)).powf(rho)
        })
        .collect();
    s.push(0.0);
    s
}

/// EDM's sampler from noise `z` ([B, …], our noise, N(0, I)) to data, with `denoiser` (which owns
/// any class labels). Runs without autograd; returns x in z's kind, the NFE and, with `capture`, the
/// path in our time. Fails on invalid settings or a non-finite result.
pub fn sample(
    denoiser: &dyn Denoiser,
    z: &Tensor,
    cfg: &EdmSamplerConfig,
    capture: bool,
) -> Result<Solution> {
    cfg.validate()?;
    let (lo, hi) = denoiser.sigma_range();
    let sigma_min = cfg.sigma_min.max(lo);
    let sigma_max = cfg.sigma_max.min(hi);
    if !(sigma_min > 0.0 && sigma_min < sigma_max && sigma_max.is_finite()) {
        return Err(Error::InvalidSetting {
            name: "edm",
            reason: format!(
                "σ range [{}, {}] clipped to the denoiser's ({lo}, {hi}) is empty",
                cfg.sigma_min, cfg.sigma_max
            ),
        });
    }
    let sigmas = karras_sigmas(cfg.steps, sigma_min, sigma_max, cfg.rho);
    let out_kind = z.kind();
    let ours = |x: &Tensor, sigma: f64| (x / (1.0 + sigma)).to_kind(out_kind);
    let sol = tch::no_grad(|| {
        let b = z.size()[0];
        let level = |s: f64| Tensor::full([b], s, (Kind::Double, z.device()));
        let mut nfe = 0usize;
        let mut d = |x: &Tensor, s: f64| {
            nfe += 1;
            denoiser.denoise(x, &level(s)).to_kind(Kind::Double)
        };
        let mut x = z.to_kind(Kind::Double) * sigmas[0];
        let mut trace = Trace::new(capture, t_from_edm_sigma(sigmas[0]), &ours(&x, sigmas[0]));
        for (i, w) in sigmas.windows(2).enumerate() {
            let (s, s_next) = (w[0], w[1]);
            let d_cur = (&x - d(&x, s)) / s;
            let mut x_next = &x + &d_cur * (s_next - s);
            if cfg.heun && i + 1 < cfg.steps {
                let d_prime = (&x_next - d(&x_next, s_next)) / s_next;
                x_next = &x + (d_cur * 0.5 + d_prime * 0.5) * (s_next - s);
            }
            x = x_next;
            trace.push(t_from_edm_sigma(s_next), &ours(&x, s_next));
        }
        trace.finish(x.to_kind(out_kind), nfe)
    });
    if sol.x.isfinite().all().int64_value(&[]) == 0 {
        return Err(Error::NonFinite { at: 1.0 });
    }
    Ok(sol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn karras_grid_matches_edm() {
        let s = karras_sigmas(18, 0.002, 80.0, 7.0);
        assert_eq!(s.len(), 19);
        assert!((s[0] - 80.0).abs() < 1e-12);
        assert!((s[17] - 0.002).abs() < 1e-15);
        assert_eq!(s[18], 0.0);
        // rfpp's printed grid for N = 18 (rounded to 4 decimals): 80, 57.586, …, 1.9233, …
        assert!((s[1] - 57.586).abs() < 1e-4, "{}", s[1]);
        assert!((s[9] - 1.9233).abs() < 1e-4, "{}", s[9]);
        assert!(s.windows(2).all(|w| w[1] < w[0]));
        assert_eq!(karras_sigmas(1, 0.002, 80.0, 7.0), vec![80.0, 0.0]);
    }

    #[test]
    fn settings_are_validated() {
        assert!(EdmSamplerConfig::default().validate().is_ok());
        assert_eq!(EdmSamplerConfig::default().nfe(), 35);
        for bad in [
            EdmSamplerConfig {
                steps: 0,
                ..Default::default()
            },
            EdmSamplerConfig {
                sigma_min: 0.0,
                ..Default::default()
            },
            EdmSamplerConfig {
                sigma_max: 0.001,
                ..Default::default()
            },
            EdmSamplerConfig {
                rho: f64::NAN,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
