//! Straightness of a trajectory (Liu et al. 2023, eq. 4; SlimFlow §5):
//! S = mean_i E‖(x_{i+1} − x_i)/Δt_i − (x_N − x_0)/(t_N − t_0)‖², zero exactly for straight paths
//! traversed at constant speed.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Straightness of `path` (pairs (t_i, x_i), x_i: [B, …]); the expectation is the mean over the batch
/// of the squared Euclidean norm over all other dimensions.
pub fn straightness(path: &[(f64, Tensor)]) -> Result<f64> {
    if path.len() < 2 {
        return Err(Error::Trajectory("need at least two points".into()));
    }
    let (t0, x0) = &path[0];
    let (tn, xn) = &path[path.len() - 1];
    let overall = (xn - x0).to_kind(Kind::Double) / (tn - t0);
    let mut total = 0.0;
    for w in path.windows(2) {
        let dt = w[1].0 - w[0].0;
        if dt == 0.0 {
            return Err(Error::Trajectory("two points share a time".into()));
        }
        let local = (&w[1].1 - &w[0].1).to_kind(Kind::Double) / dt;
        let diff = (local - &overall).square().flatten(1, -1).sum_dim_intlist(
            [1i64].as_slice(),
            false,
            Kind::Double,
        );
        total += diff.mean(Kind::Double).double_value(&[]);
    }
    Ok(total / (path.len() - 1) as f64)
}
