//! Heun's second-order method (the trapezoidal predictor–corrector of EDM Algorithm 1) on a uniform
//! grid. The correction is applied on every step whose end the field may be evaluated at: on a
//! field defined on [0, 1] that is every step (2N NFE); when the last grid point is an excluded end
//! of the field's domain (the EDM wrapper at t = 1) the last step is the plain Euler prediction, as
//! in EDM's sampler (2N − 1 NFE).

use tch::Tensor;

use crate::error::Result;
use crate::solver::{Solution, Trace};
use crate::velocity::Field;

pub(crate) fn solve(f: &Field, x: &Tensor, grid: &[f64], capture: bool) -> Result<Solution> {
    let mut trace = Trace::new(capture, grid[0], x);
    let mut x = x.shallow_clone();
    for w in grid.windows(2) {
        let (t, t_next) = (w[0], w[1]);
        let h = t_next - t;
        let d = f.at(&x, t)?;
        let x_euler = &x + &d * h;
        x = if f.domain().excludes(t_next) {
            x_euler
        } else {
            let d_next = f.at(&x_euler, t_next)?;
            &x + (d + d_next) * (h / 2.0)
        };
        trace.push(t_next, &x);
    }
    Ok(trace.finish(x, f.nfe()))
}
