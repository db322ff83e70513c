//! Distances between two sample sets of a low-dimensional distribution.

use ndarray::{Array2, ArrayView1, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Copies a [N, D] tensor into an f64 array.
pub fn to_array(x: &Tensor) -> Result<Array2<f64>> {
    if x.dim() != 2 {
        return Err(Error::BadInput(format!(
            "expected [N, D] samples, got {:?}",
            x.size()
        )));
    }
    let (n, d) = (x.size()[0] as usize, x.size()[1] as usize);
    let flat: Vec<f64> = Vec::<f64>::try_from(
        &x.to_kind(Kind::Double)
            .to_device(tch::Device::Cpu)
            .flatten(0, -1),
    )?;
    Array2::from_shape_vec((n, d), flat).map_err(|e| Error::BadInput(e.to_string()))
}

fn check(a: &Array2<f64>, b: &Array2<f64>) -> Result<()> {
    if a.ncols() != b.ncols() || a.nrows() < 2 || b.nrows() < 2 {
        return Err(Error::BadInput(format!(
            "need two sample sets of the same dimension with ≥ 2 points, got {:?} and {:?}",
            a.dim(),
            b.dim()
        )));
    }
    if a.iter().chain(b.iter()).any(|v| !v.is_finite()) {
        return Err(Error::BadInput("samples contain NaN or infinity".into()));
    }
    Ok(())
}

/// Quantile at level `p` of sorted values (linear interpolation, numpy's default).
fn quantile(sorted: &[f64], p: f64) -> f64 {
    let pos = p * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (pos - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Sliced Wasserstein-2 distance: sqrt(E_θ W2²(θᵀa, θᵀb)) over `projections` directions drawn
/// uniformly on the sphere from `seed`; each 1-D W2² compares the two quantile functions on a grid of
/// max(N, M) levels. Zero iff the projected distributions agree; in the units of the data.
pub fn sliced_wasserstein(a: &Tensor, b: &Tensor, projections: usize, seed: u64) -> Result<f64> {
    let (a, b) = (to_array(a)?, to_array(b)?);
    check(&a, &b)?;
    let d = a.ncols();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let dirs: Vec<Vec<f64>> = (0..projections.max(1))
        .map(|_| {
            let v: Vec<f64> = (0..d).map(|_| StandardNormal.sample(&mut rng)).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect();
    let levels = a.nrows().max(b.nrows());
    let total: f64 = dirs
        .par_iter()
        .map(|dir| {
            let dir = ArrayView1::from(dir.as_slice());
            let mut pa: Vec<f64> = a.dot(&dir).to_vec();
            let mut pb: Vec<f64> = b.dot(&dir).to_vec();
            pa.sort_by(|x, y| x.total_cmp(y));
            pb.sort_by(|x, y| x.total_cmp(y));
            (0..levels)
                .map(|i| {
                    let p = (i as f64 + 0.5) / levels as f64;
                    (quantile(&pa, p) - quantile(&pb, p)).powi(2)
                })
                .sum::<f64>()
                / levels as f64
        })
        .sum();
    Ok((total / dirs.len() as f64).sqrt())
}

fn mean_pairwise(a: &Array2<f64>, b: &Array2<f64>, same: bool) -> f64 {
    let rows: Vec<ArrayView1<f64>> = a.axis_iter(Axis(0)).collect();
    let sum: f64 = rows
        .par_iter()
        .enumerate()
        .map(|(i, x)| {
            b.axis_iter(Axis(0))
                .enumerate()
                .filter(|(j, _)| !same || *j != i)
                .map(|(_, y)| (x - &y).mapv(|v| v * v).sum().sqrt())
                .sum::<f64>()
        })
        .sum();
    let pairs = if same {
        (a.nrows() * (a.nrows() - 1)) as f64
    } else {
        (a.nrows() * b.nrows()) as f64
    };
    sum / pairs
}

/// Energy distance 2E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ (Székely & Rizzo), with unbiased within-set terms;
/// zero iff the distributions agree. O(N·M) work, parallel over rows.
pub fn energy_distance(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (to_array(a)?, to_array(b)?);
    check(&a, &b)?;
    Ok(2.0 * mean_pairwise(&a, &b, false)
        - mean_pairwise(&a, &a, true)
        - mean_pairwise(&b, &b, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn gaussian(n: i64, shift: f64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn([n, 2], (Kind::Double, Device::Cpu)) + shift
    }

    #[test]
    fn sliced_wasserstein_of_a_shift_equals_the_projected_shift() {
        // Shifting by s along x: every projection moves by s·cos θ, so SW2 = s·sqrt(E cos²θ) = s/√2.
        let a = gaussian(4000, 0.0, 1);
        let b = &a + Tensor::from_slice(&[3.0f64, 0.0]);
        let sw = sliced_wasserstein(&a, &b, 2000, 0).unwrap();
        assert!((sw - 3.0 / 2f64.sqrt()).abs() < 0.05, "{sw}");
        assert_eq!(sliced_wasserstein(&a, &a, 50, 0).unwrap(), 0.0);
    }

    #[test]
    fn distances_separate_near_and_far_distributions() {
        let a = gaussian(1500, 0.0, 1);
        let same = gaussian(1500, 0.0, 2);
        let far = gaussian(1500, 1.0, 3);
        let sw_same = sliced_wasserstein(&a, &same, 100, 0).unwrap();
        let sw_far = sliced_wasserstein(&a, &far, 100, 0).unwrap();
        assert!(sw_same < 0.1 && sw_far > 0.5, "{sw_same} {sw_far}");
        let e_same = energy_distance(&a, &same).unwrap();
        let e_far = energy_distance(&a, &far).unwrap();
        assert!(e_same.abs() < 0.02 && e_far > 0.3, "{e_same} {e_far}");
    }

    #[test]
    fn energy_distance_of_two_points() {
        // a = {0, 0}, b = {1, 1} on a line (2-D with y = 0): 2·1 − 0 − 0 = 2.
        let a = Tensor::from_slice(&[0.0f64, 0.0, 0.0, 0.0]).reshape([2, 2]);
        let b = Tensor::from_slice(&[1.0f64, 0.0, 1.0, 0.0]).reshape([2, 2]);
        assert!((energy_distance(&a, &b).unwrap() - 2.0).abs() < 1e-12);
    }

    #[test]
    fn bad_inputs_are_rejected() {
        let a = gaussian(10, 0.0, 1);
        let b = Tensor::zeros([10, 3], (Kind::Double, Device::Cpu));
        assert!(sliced_wasserstein(&a, &b, 10, 0).is_err());
        let nan = Tensor::full([10, 2], f64::NAN, (Kind::Double, Device::Cpu));
        assert!(energy_distance(&a, &nan).is_err());
        assert!(to_array(&Tensor::zeros([3], (Kind::Double, Device::Cpu))).is_err());
    }
}
