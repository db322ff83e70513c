//! The x-prediction ("new") sampler of 2-rectified flow++ (Lee et al. 2024, §4), in our time convention:
//! at t_i predict data x̂1 = x_i + (1 − t_i)·v(x_i, t_i), then re-noise it with the initial noise z:
//! x_{i+1} = t_{i+1}·x̂1 + (1 − t_{i+1})·z. One NFE per step; with one step it equals Euler.

use slimflow_schedules::x1_from_velocity;
use tch::Tensor;

use crate::error::Result;
use crate::solver::{Solution, Trace};
use crate::velocity::{time_tensor, Field};

/// Uniform grid from the solve's start; the start state is also the noise used to re-noise. Never
/// evaluates at the last grid point. (rfpp's own grid and start are [`crate::SolverConfig::Rfpp`].)
pub(crate) fn solve(f: &Field, z: &Tensor, grid: &[f64], capture: bool) -> Result<Solution> {
    let mut trace = Trace::new(capture, grid[0], z);
    let mut x = z.shallow_clone();
    for w in grid.windows(2) {
        let (t, t_next) = (w[0], w[1]);
        let tt = time_tensor(&x, t);
        let x1_hat = x1_from_velocity(&x, &tt, &f.at(&x, t)?);
        x = if t_next >= 1.0 {
            x1_hat
        } else {
            x1_hat * t_next + z * (1.0 - t_next)
        };
        trace.push(t_next, &x);
    }
    Ok(trace.finish(x, f.nfe()))
}
