//! Explicit Euler on a uniform grid: x_{i+1} = x_i + Δt·v(x_i, t_i). One NFE per step.

use tch::Tensor;

use crate::solver::{Solution, Trace};
use crate::velocity::{time_tensor, Velocity};

pub(crate) fn solve(v: &dyn Velocity, x: &Tensor, grid: &[f64], capture: bool) -> Solution {
    let mut trace = Trace::new(capture, grid[0], x);
    let mut x = x.shallow_clone();
    for w in grid.windows(2) {
        let (t, t_next) = (w[0], w[1]);
        x = &x + v.velocity(&x, &time_tensor(&x, t)) * (t_next - t);
        trace.push(t_next, &x);
    }
    trace.finish(x, grid.len() - 1)
}
