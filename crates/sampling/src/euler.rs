//! Explicit Euler on a uniform grid: x_{i+1} = x_i + Δt·v(x_i, t_i). One NFE per step.

use tch::Tensor;

use crate::error::Result;
use crate::solver::{Solution, Trace};
use crate::velocity::Field;

/// Never evaluates at the last grid point, so it needs no special case for an excluded end.
pub(crate) fn solve(f: &Field, x: &Tensor, grid: &[f64], capture: bool) -> Result<Solution> {
    let mut trace = Trace::new(capture, grid[0], x);
    let mut x = x.shallow_clone();
    for w in grid.windows(2) {
        let (t, t_next) = (w[0], w[1]);
        x = &x + f.at(&x, t)? * (t_next - t);
        trace.push(t_next, &x);
    }
    Ok(trace.finish(x, f.nfe()))
}
