//! The solver set and the common entry point [`solve`].

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::velocity::Velocity;
use crate::{euler, heun, rk45, x_pred};

/// Which ODE solver to use, with its own settings (config: `solver = { kind = "heun", steps = 10 }`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SolverConfig {
    /// Explicit Euler with `steps` uniform steps (NFE = steps). One step is the one-step generator.
    Euler {
        /// Number of steps N ≥ 1.
        steps: usize,
    },
    /// Heun (2nd order) with `steps` uniform steps (NFE = 2·steps).
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
    /// rfpp's x-prediction sampler with `steps` uniform steps (forward only).
    XPred {
        /// Number of steps N ≥ 1.
        steps: usize,
    },
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
        }
        Ok(())
    }

    /// A short label such as `euler-1`, `heun-10`, `rk45-1e-5`.
    pub fn label(&self) -> String {
        match *self {
            SolverConfig::Euler { steps } => format!("euler-{steps}"),
            SolverConfig::Heun { steps } => format!("heun-{steps}"),
            SolverConfig::Rk45 { rtol, .. } => format!("rk45-{rtol:e}"),
            SolverConfig::XPred { steps } => format!("x_pred-{steps}"),
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
/// Runs without building an autograd graph. `capture` records the trajectory. Fails on invalid
/// settings, on an x-prediction solve that runs backwards, and on a non-finite final state.
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
    let sol = tch::no_grad(|| match *cfg {
        SolverConfig::Euler { steps } => Ok(euler::solve(
            v,
            x,
            &slimflow_schedules::grid::uniform(from, to, steps),
            capture,
        )),
        SolverConfig::Heun { steps } => Ok(heun::solve(
            v,
            x,
            &slimflow_schedules::grid::uniform(from, to, steps),
            capture,
        )),
        SolverConfig::XPred { steps } => {
            if to < from {
                return Err(Error::InvalidSetting {
                    name: "x_pred",
                    reason: "the x-prediction sampler only integrates from noise to data".into(),
                });
            }
            Ok(x_pred::solve(
                v,
                x,
                &slimflow_schedules::grid::uniform(from, to, steps),
                capture,
            ))
        }
        SolverConfig::Rk45 { rtol, atol } => rk45::solve(v, x, from, to, rtol, atol, capture),
    })?;
    let finite = sol.x.isfinite().all().int64_value(&[]) != 0;
    if !finite {
        return Err(Error::NonFinite { at: to });
    }
    Ok(sol)
}
