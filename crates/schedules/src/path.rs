//! The rectified (straight-line) probability path x_t = t·x1 + (1 − t)·x0 with target velocity
//! v = x1 − x0 (Liu et al. 2023, eq. 1; flow_matching's `CondOTProbPath`).

use tch::Tensor;

/// Reshapes a per-sample time `t: [B]` to `[B, 1, …, 1]` so it broadcasts against `x: [B, …]`.
pub fn expand_t(t: &Tensor, x: &Tensor) -> Tensor {
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, x.dim().saturating_sub(1)));
    t.reshape(shape.as_slice())
}

/// Predicted data from a velocity at time t: x̂1 = x_t + (1 − t)·v (x: [B, …], t: [B]).
pub fn x1_from_velocity(x_t: &Tensor, t: &Tensor, v: &Tensor) -> Tensor {
    let t = expand_t(t, x_t);
    x_t + (1.0 - t) * v
}

/// One draw from the path for a batch: endpoints, times, the point x_t and the target velocity.
#[derive(Debug)]
pub struct PathSample {
    /// Noise endpoint x0: [B, …].
    pub x0: Tensor,
    /// Data endpoint x1: [B, …].
    pub x1: Tensor,
    /// Times t: [B].
    pub t: Tensor,
    /// x_t = t·x1 + (1 − t)·x0: [B, …].
    pub x_t: Tensor,
    /// Target velocity dx_t/dt = x1 − x0: [B, …].
    pub v: Tensor,
}

/// The straight path between paired x0 and x1.
#[derive(Debug, Clone, Copy, Default)]
pub struct RectifiedPath;

impl RectifiedPath {
    /// Builds x_t and the target velocity for endpoints `x0`, `x1` ([B, …]) at times `t` ([B]).
    pub fn sample(&self, x0: &Tensor, x1: &Tensor, t: &Tensor) -> PathSample {
        let te = expand_t(t, x1);
        let x_t = &te * x1 + (1.0 - &te) * x0;
        PathSample {
            x0: x0.shallow_clone(),
            x1: x1.shallow_clone(),
            t: t.shallow_clone(),
            x_t,
            v: x1 - x0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn path_interpolates_and_predicts_data_exactly() {
        let x0 = Tensor::from_slice(&[1.0f64, -2.0, 0.5, 3.0]).reshape([2, 2]);
        let x1 = Tensor::from_slice(&[3.0f64, 2.0, -1.5, 1.0]).reshape([2, 2]);
        let t = Tensor::from_slice(&[0.25f64, 0.75]);
        let s = RectifiedPath.sample(&x0, &x1, &t);
        // 0.25·3 + 0.75·1 = 1.5; 0.25·2 + 0.75·(−2) = −1.0; 0.75·(−1.5) + 0.25·0.5 = −1.0; 0.75 + 0.75 = 1.5
        let expected = Tensor::from_slice(&[1.5f64, -1.0, -1.0, 1.5]).reshape([2, 2]);
        assert!(s.x_t.allclose(&expected, 1e-12, 1e-12, false));
        let x1_hat = x1_from_velocity(&s.x_t, &t, &s.v);
        assert!(x1_hat.allclose(&x1, 1e-12, 1e-12, false));
        assert_eq!(s.v.kind(), Kind::Double);
    }

    #[test]
    fn expand_t_broadcasts_over_images() {
        let x = Tensor::zeros([3, 2, 4, 4], (Kind::Float, tch::Device::Cpu));
        let t = Tensor::from_slice(&[0.1f32, 0.2, 0.3]);
        assert_eq!(expand_t(&t, &x).size(), vec![3, 1, 1, 1]);
    }
}
