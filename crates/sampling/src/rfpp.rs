//! The samplers of 2-rectified flow++ (rfpp `generate.py: sample_ode_generative` with the start of
//! its `sample`), translated to our time t = 1 − t_r.
//!
//! rfpp's flags map one to one: `--solver euler|heun` is [`RfppMethod`], `--sampler default|new` is
//! [`RfppSampler`], `--N` is the NFE. What rfpp does, in our time:
//!
//! - **Steps.** Euler takes N steps. Heun needs N odd and takes (N + 1)/2 steps: Heun's correction
//!   on every step but the last, which is a plain Euler (or x-prediction) step, so N NFE exactly.
//! - **Grid.** rfpp's t_r grid is i/N for i = N, …, 1, then 0, with the first point replaced by
//!   1 − 1e-5; in our time [1e-5, 1/N, 2/N, …, (N−1)/N, 1] — uniform on [0, 1], *not* on [1e-5, 1].
//!   Here the first point is the solve's start (`from`), so the start rfpp uses is `from = 1e-5`;
//!   backwards (rfpp's inversion, t_r from 1e-3 up to 1) the grid is [from, (N−1)/N, …, 1/N, 0]
//!   with rfpp's `from = 1 − 1e-3`. In general the points after the first are the uniform N-step
//!   grid from the start's end of [0, 1] (0 forwards, 1 backwards) to `to`, and `from` must lie in
//!   that grid's first cell.
//! - **Start.** rfpp scales the noise to the state at its first time, `z * (1 − 1e-5)`, and the
//!   "new" sampler re-noises with that scaled noise: forwards the state at `from` is (1 − from)·z.
//!   (Backwards rfpp noises its data input itself, so it is taken as given.)
//! - **"default" sampler**: Euler x ← x + Δt·v, Heun predictor x + Δt·v, corrected with the mean of
//!   the two velocities.
//! - **"new" sampler** (forward only, as rfpp asserts): predict the data x̂1 = x + (1 − t)·v and
//!   re-noise it, x ← t_next·x̂1 + (1 − t_next)·z; Heun's predictor is that re-noised point and its
//!   correction re-predicts x̂1 from the current state with the mean velocity.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::solver::{Solution, Trace};
use crate::velocity::Field;

/// rfpp's `--solver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RfppMethod {
    /// N Euler steps.
    #[default]
    Euler,
    /// (N + 1)/2 Heun steps, the last without correction; N must be odd.
    Heun,
}

/// rfpp's `--sampler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RfppSampler {
    /// Integrate the ODE.
    #[default]
    Default,
    /// Re-noise the x-prediction with the initial noise at every step.
    New,
}

/// Number of steps for `nfe` evaluations (rfpp: `N = (N + 1) // 2` for Heun).
pub(crate) fn steps(method: RfppMethod, nfe: usize) -> usize {
    match method {
        RfppMethod::Euler => nfe,
        RfppMethod::Heun => nfe.div_ceil(2),
    }
}

/// rfpp's time grid from `from` to `to` with `steps` steps (see the module docs).
pub(crate) fn grid(from: f64, to: f64, steps: usize) -> Result<Vec<f64>> {
    let anchor = if to > from { 0.0 } else { 1.0 };
    let n = steps.max(1);
    let mut g: Vec<f64> = (0..=n)
        .map(|i| {
            if i == n {
                to
            } else {
                anchor + (to - anchor) * i as f64 / n as f64
            }
        })
        .collect();
    let dir = (to - from).signum();
    let first = g[1];
    if dir * (from - anchor) < 0.0 || dir * (first - from) <= 0.0 {
        return Err(Error::InvalidSetting {
            name: "rfpp",
            reason: format!(
                "rfpp's grid is uniform from {anchor} to {to}; the start {from} must lie in its \
                 first cell, between {anchor} and {first} (rfpp starts at 1e-5 to sample, at \
                 1 − 1e-3 to invert)"
            ),
        });
    }
    g[0] = from;
    Ok(g)
}

/// Runs rfpp's loop on `grid` from the state `x` (already scaled to the start); `z` is the noise the
/// "new" sampler re-noises with.
pub(crate) fn solve(
    f: &Field,
    x: &Tensor,
    grid: &[f64],
    method: RfppMethod,
    sampler: RfppSampler,
    capture: bool,
) -> Result<Solution> {
    let z = x.shallow_clone();
    let mut trace = Trace::new(capture, grid[0], x);
    let mut x = x.shallow_clone();
    let last = grid.len() - 2;
    let renoise = |x1_hat: Tensor, t_next: f64| -> Tensor {
        if t_next >= 1.0 {
            x1_hat
        } else {
            x1_hat * t_next + &z * (1.0 - t_next)
        }
    };
    for (i, w) in grid.windows(2).enumerate() {
        let (t, t_next) = (w[0], w[1]);
        let dt = t_next - t;
        let mut v = f.at(&x, t)?;
        if method == RfppMethod::Heun && i < last {
            let x_pred = match sampler {
                RfppSampler::Default => &x + &v * dt,
                RfppSampler::New => renoise(&x + &v * (1.0 - t), t_next),
            };
            let v_next = f.at(&x_pred, t_next)?;
            v = (v + v_next) / 2.0;
        }
        x = match sampler {
            RfppSampler::Default => &x + v * dt,
            RfppSampler::New => renoise(&x + v * (1.0 - t), t_next),
        };
        trace.push(t_next, &x);
    }
    Ok(trace.finish(x, f.nfe()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_rfpps_translated() {
        // rfpp N = 4: t_r = [1 − 1e-5, 0.75, 0.5, 0.25, 0] ⇒ t = [1e-5, 0.25, 0.5, 0.75, 1].
        assert_eq!(
            grid(1e-5, 1.0, 4).unwrap(),
            vec![1e-5, 0.25, 0.5, 0.75, 1.0]
        );
        // Inversion: t_r = [1e-3, 0.25, 0.5, 0.75, 1] ⇒ t = [0.999, 0.75, 0.5, 0.25, 0].
        assert_eq!(
            grid(1.0 - 1e-3, 0.0, 4).unwrap(),
            vec![1.0 - 1e-3, 0.75, 0.5, 0.25, 0.0]
        );
        assert_eq!(grid(1e-3, 1.0, 1).unwrap(), vec![1e-3, 1.0]);
        assert!(grid(0.3, 1.0, 4).is_err());
        assert_eq!(steps(RfppMethod::Heun, 5), 3);
        assert_eq!(steps(RfppMethod::Heun, 1), 1);
        assert_eq!(steps(RfppMethod::Euler, 6), 6);
    }
}
