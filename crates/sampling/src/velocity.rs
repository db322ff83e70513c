//! The velocity-field interface seen by solvers.

use tch::Tensor;

/// A velocity field v(x, t) in slimflow's time convention (t = 0 noise, t = 1 data).
///
/// x: [B, …]; t: [B] (same kind and device as x); returns v: [B, …].
pub trait Velocity {
    /// Evaluates the field.
    fn velocity(&self, x: &Tensor, t: &Tensor) -> Tensor;
}

impl<F> Velocity for F
where
    F: Fn(&Tensor, &Tensor) -> Tensor,
{
    fn velocity(&self, x: &Tensor, t: &Tensor) -> Tensor {
        self(x, t)
    }
}

/// A [B] tensor filled with `t`, of x's kind and device.
pub fn time_tensor(x: &Tensor, t: f64) -> Tensor {
    Tensor::full([x.size()[0]], t, (x.kind(), x.device()))
}
