//! The solver set and the common entry point [`solve`].

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::domain::Domain;
use crate::edm::{self, EdmSamplerConfig, VelocityDenoiser};
use crate::error::{Error, Result};
use crate::rfpp::{self, RfppMethod, RfppSampler};
use crate::velocity::{Field, Velocity};
use crate::{euler, heun, rk45, x_pred};

/// Which ODE solver to use, with its own settings (config: `solver = { kind = "heun", steps = 10 }`).
///
/// The first four are generic solvers on a grid uniform on the solve's span; the last two are the
/// references' own samplers, exactly: `rfpp` (rfpp's grid, start and step rules for a trained
/// 2-RF) and `edm` (EDM's σ-space sampler, which makes rfpp's pairs from an EDM network).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SolverConfig {
    /// Explicit Euler with `steps` uniform steps (NFE = steps). One step is the one-step generator.
    Euler {
        /// Number of steps N ≥ 1.
        steps: usize,
    },
    /// Heun (2nd order) with `steps` uniform steps (NFE = 2·steps; 2·steps − 1 when the field is
    /// undefined at the end, whose step then is the plain Euler prediction).
    Heun {
        /// Number of steps N ≥ 1.
        steps: usize,
    },
    /// Adaptive Dormand–Prince 5(4) (scipy's `RK45`, the reference solver of RectifiedFlow / SlimFlow pair
    /// generation with rtol = atol = 1e-5).
    Rk45 {
        /// Relative tolerance.
        rtol: f64,
        /// Absolute tolerance.
        atol: f64,
    },
    /// rfpp's x-prediction sampler with `steps` steps uniform on the solve's span, starting from
    /// the given state, which is also the noise it re-noises with (forward only; NFE = steps).
    /// rfpp's exact grid and start are `rfpp` with `sampler = "new"`.
    XPred {
        /// Number of steps N ≥ 1.
        steps: usize,
    },
    /// rfpp's `generate.py` sampler for a trained 2-RF, its flags one to one
    /// (`{ kind = "rfpp", method = "heun", sampler = "new", nfe = 9 }` is
    /// `--solver heun --sampler new --N 9`): rfpp's grid [from, 1/N', …, 1] (N' steps; rfpp starts
    /// at from = 1e-5), start state (1 − from)·z, Heun with (nfe + 1)/2 steps and no correction on
    /// the last. See [`RfppMethod`] and [`RfppSampler`].
    Rfpp {
        /// `euler` (default) or `heun`.
        #[serde(default)]
        method: RfppMethod,
        /// `default` (ODE steps, the default) or `new` (x-prediction re-noised; forward only).
        #[serde(default)]
        sampler: RfppSampler,
        /// Number of network evaluations ≥ 1 (odd for Heun).
        nfe: usize,
    },
    /// EDM's deterministic σ-space sampler (rfpp `generate_edm.py: edm_sampler`), forward only, from
    /// noise at σ_max to data at σ = 0 whatever the solve's start
    /// (`{ kind = "edm", steps = 18, rho = 7, sigma_min = 0.002, sigma_max = 80, heun = true }`,
    /// every key optional). Uses the field's own denoiser when it has one
    /// ([`Velocity::denoiser`]), else [`VelocityDenoiser`]. See [`crate::edm`].
    Edm(EdmSamplerConfig),
}

impl Default for SolverConfig {
    fn default() -> Self {
        SolverConfig::Rk45 {
            rtol: 1e-5,
            atol: 1e-5,
        }
    }
}

impl SolverConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        match *self {
            SolverConfig::Euler { steps }
            | SolverConfig::Heun { steps }
            | SolverConfig::XPred { steps } => {
                if steps == 0 {
                    return Err(Error::InvalidSetting {
                        name: "steps",
                        reason: "must be at least 1".into(),
                    });
                }
            }
            SolverConfig::Rk45 { rtol, atol } => {
                for (name, v) in [("rtol", rtol), ("atol", atol)] {
                    if !(v.is_finite() && v > 0.0) {
                        return Err(Error::InvalidSetting {
                            name,
                            reason: format!("must be positive, got {v}"),
                        });
                    }
                }
            }
            SolverConfig::Rfpp { method, nfe, .. } => {
                if nfe == 0 {
                    return Err(Error::InvalidSetting {
                        name: "nfe",
                        reason: "must be at least 1".into(),
                    });
                }
                if method == RfppMethod::Heun && nfe % 2 == 0 {
                    return Err(Error::InvalidSetting {
                        name: "nfe",
                        reason: format!(
                            "rfpp's Heun needs an odd NFE ((nfe + 1)/2 steps, the last without \
                             correction), got {nfe}"
                        ),
                    });
                }
            }
            SolverConfig::Edm(c) => c.validate()?,
        }
        Ok(())
    }

    /// The NFE of a solve ending at `to` on a field with `domain`, for the fixed-step solvers
    /// (`None` for the adaptive RK45).
    pub fn nfe(&self, domain: &Domain, to: f64) -> Option<usize> {
        match *self {
            SolverConfig::Euler { steps } | SolverConfig::XPred { steps } => Some(steps),
            SolverConfig::Heun { steps } => Some(2 * steps - usize::from(domain.excludes(to))),
            SolverConfig::Rk45 { .. } => None,
            SolverConfig::Rfpp { nfe, .. } => Some(nfe),
            SolverConfig::Edm(c) => Some(c.nfe()),
        }
    }

    /// A short label such as `euler-1`, `heun-10`, `rk45-1e-5`, `rfpp_new_heun-9`, `edm_heun-18`.
    pub fn label(&self) -> String {
        match *self {
            SolverConfig::Euler { steps } => format!("euler-{steps}"),
            SolverConfig::Heun { steps } => format!("heun-{steps}"),
            SolverConfig::Rk45 { rtol, .. } => format!("rk45-{rtol:e}"),
            SolverConfig::XPred { steps } => format!("x_pred-{steps}"),
            SolverConfig::Rfpp {
                method,
                sampler,
                nfe,
            } => {
                let new = if sampler == RfppSampler::New {
                    "new_"
                } else {
                    ""
                };
                let m = match method {
                    RfppMethod::Euler => "euler",
                    RfppMethod::Heun => "heun",
                };
                format!("rfpp_{new}{m}-{nfe}")
            }
            SolverConfig::Edm(c) => {
                format!("edm_{}-{}", if c.heun { "heun" } else { "euler" }, c.steps)
            }
        }
    }
}

/// The result of a solve.
#[derive(Debug)]
pub struct Solution {
    /// Final state x(to): [B, …].
    pub x: Tensor,
    /// Number of velocity evaluations (network forward passes).
    pub nfe: usize,
    /// (t, x(t)) at every step, start included, when capture was requested.
    pub path: Option<Vec<(f64, Tensor)>>,
}

/// Collects the optional trajectory.
pub(crate) struct Trace(Option<Vec<(f64, Tensor)>>);

impl Trace {
    pub(crate) fn new(capture: bool, t0: f64, x0: &Tensor) -> Self {
        Trace(capture.then(|| vec![(t0, x0.copy())]))
    }

    pub(crate) fn push(&mut self, t: f64, x: &Tensor) {
        if let Some(p) = &mut self.0 {
            p.push((t, x.copy()));
        }
    }

    pub(crate) fn finish(self, x: Tensor, nfe: usize) -> Solution {
        Solution {
            x,
            nfe,
            path: self.0,
        }
    }
}

/// Integrates dx/dt = v(x, t) from `from` to `to` starting at `x` (backwards when `to < from`).
///
/// Runs without building an autograd graph. `capture` records the trajectory. The field is only
/// evaluated inside its [`Velocity::domain`]: starting at an excluded end
/// ([`Error::ExcludedStart`]) or at or towards a time outside the domain
/// ([`Error::OutsideDomain`]) fails; an excluded end is reached by a last Euler step (see each
/// variant). `edm` ignores `from` (its start is σ_max) and must end at t = 1; `rfpp` starts from
/// (1 − from)·x forwards. Fails also on invalid settings, on an x-prediction or EDM solve that runs
/// backwards, and on a non-finite final state.
pub fn solve(
    cfg: &SolverConfig,
    v: &dyn Velocity,
    x: &Tensor,
    from: f64,
    to: f64,
    capture: bool,
) -> Result<Solution> {
    cfg.validate()?;
    if !(from.is_finite() && to.is_finite()) || from == to {
        return Err(Error::InvalidSetting {
            name: "time span",
            reason: format!("need two distinct finite times, got {from} → {to}"),
        });
    }
    let forward_only = |name: &'static str, what: &str| -> Result<()> {
        if to < from {
            return Err(Error::InvalidSetting {
                name,
                reason: format!("{what} only integrates from noise to data"),
            });
        }
        Ok(())
    };
    let field = Field::new(v);
    let domain = *field.domain();
    // EDM's sampler has its own start (σ_max) and evaluates through its σ range.
    if !matches!(cfg, SolverConfig::Edm(_)) {
        if domain.excludes(from) {
            return Err(Error::ExcludedStart { t: from, domain });
        }
        domain.check(from)?;
        if !domain.reaches(to) {
            return Err(Error::OutsideDomain { t: to, domain });
        }
    }
    let uniform = |steps| slimflow_schedules::grid::uniform(from, to, steps);
    let sol = tch::no_grad(|| match *cfg {
        SolverConfig::Euler { steps } => euler::solve(&field, x, &uniform(steps), capture),
        SolverConfig::Heun { steps } => heun::solve(&field, x, &uniform(steps), capture),
        SolverConfig::XPred { steps } => {
            forward_only("x_pred", "the x-prediction sampler")?;
            x_pred::solve(&field, x, &uniform(steps), capture)
        }
        SolverConfig::Rk45 { rtol, atol } => rk45::solve(&field, x, from, to, rtol, atol, capture),
        SolverConfig::Rfpp {
            method,
            sampler,
            nfe,
        } => {
            if sampler == RfppSampler::New {
                forward_only("rfpp", "rfpp's \"new\" sampler")?;
            }
            let grid = rfpp::grid(from, to, rfpp::steps(method, nfe))?;
            // rfpp's `sample` scales the noise to the straight path's point at its start.
            let start = if to > from {
                x * (1.0 - from)
            } else {
                x.shallow_clone()
            };
            rfpp::solve(&field, &start, &grid, method, sampler, capture)
        }
        SolverConfig::Edm(c) => {
            forward_only("edm", "EDM's sampler")?;
            if to != 1.0 {
                return Err(Error::InvalidSetting {
                    name: "edm",
                    reason: format!("EDM's sampler ends at the data, t = 1 (σ = 0), not at {to}"),
                });
            }
            let generic = VelocityDenoiser(v);
            edm::sample(v.denoiser().unwrap_or(&generic), x, &c, capture)
        }
    })?;
    let finite = sol.x.isfinite().all().int64_value(&[]) != 0;
    if !finite {
        return Err(Error::NonFinite { at: to });
    }
    Ok(sol)
}
