//! Straightness of a trajectory x_0..x_N, in three definitions that give different numbers for the
//! same path, so each is labelled wherever it is reported:
//!
//! - [`straightness`] (ours; Liu et al. 2023, eq. 4 as a Riemann sum on the actual grid):
//!   S = mean_i E‖(x_{i+1} − x_i)/Δt_i − (x_N − x_0)/(t_N − t_0)‖², squared Euclidean norm summed
//!   over all dimensions. Zero exactly for straight paths traversed at constant speed.
//! - [`straightness_rfpp`] (2-rectified flow++ `utils.py: straightness`): the grid is taken as
//!   uniform, Δt = 1/N whatever the solver's times, and the squared difference is *averaged* over
//!   dimensions: S = mean_i mean_{b,dims} (N·(x_{i+1} − x_i) − (x_N − x_0))².
//! - [`straightness_slimflow`] (SlimFlow `image_sampling.py`, on a 100-step Euler path): the
//!   *unsquared* Euclidean norm, S = Σ_i (1/N)·mean_b ‖N·(x_{i+1} − x_i) − (x_N − x_0)‖₂.
//!
//! On a uniform grid of [0, 1], ours = dims × rfpp's; SlimFlow's scales like the square root of ours.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

fn check(path: &[(f64, Tensor)]) -> Result<()> {
    if path.len() < 2 {
        return Err(Error::Trajectory("need at least two points".into()));
    }
    Ok(())
}

/// Per step i, the [B, D] difference between the step's velocity (with Δt from `dt(i)`) and the
/// overall displacement divided by `span`.
fn deviations(
    path: &[(f64, Tensor)],
    span: f64,
    dt: impl Fn(usize) -> Result<f64>,
) -> Result<Vec<Tensor>> {
    let (_, x0) = &path[0];
    let (_, xn) = &path[path.len() - 1];
    let overall = (xn - x0).to_kind(Kind::Double).flatten(1, -1) / span;
    path.windows(2)
        .enumerate()
        .map(|(i, w)| {
            let local = (&w[1].1 - &w[0].1).to_kind(Kind::Double).flatten(1, -1) / dt(i)?;
            Ok(local - &overall)
        })
        .collect()
}

/// Our straightness of `path` (pairs (t_i, x_i), x_i: [B, …]); the expectation is the mean over the
/// batch of the squared Euclidean norm over all other dimensions.
pub fn straightness(path: &[(f64, Tensor)]) -> Result<f64> {
    check(path)?;
    let span = path[path.len() - 1].0 - path[0].0;
    let devs = deviations(path, span, |i| {
        let dt = path[i + 1].0 - path[i].0;
        if dt == 0.0 {
            Err(Error::Trajectory("two points share a time".into()))
        } else {
            Ok(dt)
        }
    })?;
    let total: f64 = devs
        .iter()
        .map(|d| {
            d.square()
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
                .mean(Kind::Double)
                .double_value(&[])
        })
        .sum();
    Ok(total / devs.len() as f64)
}

/// rfpp's straightness of `path` (its times are ignored: Δt = 1/N).
pub fn straightness_rfpp(path: &[(f64, Tensor)]) -> Result<f64> {
    check(path)?;
    let n = (path.len() - 1) as f64;
    let devs = deviations(path, 1.0, |_| Ok(1.0 / n))?;
    let total: f64 = devs
        .iter()
        .map(|d| d.square().mean(Kind::Double).double_value(&[]))
        .sum();
    Ok(total / n)
}

/// SlimFlow's straightness of `path` (its times are ignored: Δt = 1/N).
pub fn straightness_slimflow(path: &[(f64, Tensor)]) -> Result<f64> {
    check(path)?;
    let n = (path.len() - 1) as f64;
    let devs = deviations(path, 1.0, |_| Ok(1.0 / n))?;
    let total: f64 = devs
        .iter()
        .map(|d| {
            d.square()
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
                .sqrt()
                .mean(Kind::Double)
                .double_value(&[])
        })
        .sum();
    Ok(total / n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// x(t) on a uniform grid of [0, 1] with N steps, for one sample of D = 2 dims.
    fn path(n: usize, x: impl Fn(f64) -> [f64; 2]) -> Vec<(f64, Tensor)> {
        (0..=n)
            .map(|i| {
                let t = i as f64 / n as f64;
                (
                    t,
                    Tensor::from_slice(&x(t))
                        .reshape([1, 2])
                        .to_device(Device::Cpu),
                )
            })
            .collect()
    }

    #[test]
    fn the_three_definitions_on_a_known_path() {
        // A straight path at constant speed is 0 in every definition.
        let line = path(4, |t| [3.0 * t, -t]);
        for s in [straightness, straightness_rfpp, straightness_slimflow] {
            assert!(s(&line).unwrap().abs() < 1e-12);
        }
        // Two steps: (0,0) → (1,0) → (1,1). Overall displacement (1,1); step velocities ·2:
        // (2,0) and (0,2); deviations (1,−1) and (−1,1): squared norm 2 each, norm √2 each.
        let bent = path(2, |t| {
            if t < 0.75 {
                [2.0 * t.min(0.5), 0.0]
            } else {
                [1.0, 1.0]
            }
        });
        // ours: mean over steps of the squared norm = 2.
        assert!((straightness(&bent).unwrap() - 2.0).abs() < 1e-12);
        // rfpp: mean over steps and dims of the squares = 1.
        assert!((straightness_rfpp(&bent).unwrap() - 1.0).abs() < 1e-12);
        // SlimFlow: Σ (1/2)·√2 = √2.
        assert!((straightness_slimflow(&bent).unwrap() - 2f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn rfpp_and_slimflow_ignore_the_grid_times() {
        // The same states on a non-uniform grid: ours changes, the references' do not.
        let uniform = path(2, |t| {
            if t < 0.75 {
                [2.0 * t.min(0.5), 0.0]
            } else {
                [1.0, 1.0]
            }
        });
        let mut skewed: Vec<(f64, Tensor)> = uniform.iter().map(|(t, x)| (*t, x.copy())).collect();
        skewed[1].0 = 0.25;
        assert!((straightness(&skewed).unwrap() - straightness(&uniform).unwrap()).abs() > 0.1);
        assert_eq!(
            straightness_rfpp(&skewed).unwrap(),
            straightness_rfpp(&uniform).unwrap()
        );
        assert_eq!(
            straightness_slimflow(&skewed).unwrap(),
            straightness_slimflow(&uniform).unwrap()
        );
        assert!(straightness(&uniform[..1]).is_err());
    }
}
