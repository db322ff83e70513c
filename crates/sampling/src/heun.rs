//! Heun's second-order method (the trapezoidal predictor–corrector of EDM Algorithm 1) on a uniform
//! grid. The correction is applied on every step, including the last (our field is defined at t = 1),
//! so N steps cost 2N NFE.

use tch::Tensor;

use crate::solver::{Solution, Trace};
use crate::velocity::{time_tensor, Velocity};

pub(crate) fn solve(v: &dyn Velocity, x: &Tensor, grid: &[f64], capture: bool) -> Solution {
    let mut trace = Trace::new(capture, grid[0], x);
    let mut x = x.shallow_clone();
    for w in grid.windows(2) {
        let (t, t_next) = (w[0], w[1]);
        let h = t_next - t;
        let d = v.velocity(&x, &time_tensor(&x, t));
        let x_euler = &x + &d * h;
        let d_next = v.velocity(&x_euler, &time_tensor(&x, t_next));
        x = &x + (d + d_next) * (h / 2.0);
        trace.push(t_next, &x);
    }
    trace.finish(x, 2 * (grid.len() - 1))
}
