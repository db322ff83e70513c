//! Fréchet distance between Gaussian feature statistics (Heusel et al. 2017), as pytorch-fid computes
//! FID, in float64 throughout:
//!
//! d² = ‖μ1 − μ2‖² + Tr(Σ1) + Tr(Σ2) − 2·Tr(sqrt(Σ1·Σ2)).
//!
//! Tr(sqrt(Σ1·Σ2)) is computed as Σ_i sqrt(λ_i) of the symmetric PSD matrix Σ1^½·Σ2·Σ1^½ (same
//! eigenvalues as Σ1·Σ2), with Σ1^½ from a symmetric eigendecomposition and round-off negative
//! eigenvalues clamped to 0. This is always real and finite, so pytorch-fid's fallbacks (adding
//! 1e-6·I when `sqrtm` is not finite, dropping an imaginary part) are not needed; on the parity case
//! it agrees with scipy's `sqrtm` result to 1.3e-11.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Running mean/covariance statistics of features, mergeable across batches and processes
/// (n, Σx, Σxxᵀ in float64, as EDM's `fid.py` accumulates them).
#[derive(Debug)]
pub struct FeatureStats {
    n: u64,
    sum: Tensor,
    sum_outer: Tensor,
}

impl FeatureStats {
    /// Empty statistics of `dim`-dimensional features.
    pub fn new(dim: i64) -> Self {
        let opts = (Kind::Double, tch::Device::Cpu);
        FeatureStats {
            n: 0,
            sum: Tensor::zeros([dim], opts),
            sum_outer: Tensor::zeros([dim, dim], opts),
        }
    }

    /// Adds a batch of features [B, D].
    pub fn add(&mut self, feats: &Tensor) -> Result<()> {
        let d = self.sum.size()[0];
        if feats.dim() != 2 || feats.size()[1] != d {
            return Err(Error::BadInput(format!(
                "features must be [B, {d}], got {:?}",
                feats.size()
            )));
        }
        let x = feats.to_kind(Kind::Double).to_device(tch::Device::Cpu);
        self.n += x.size()[0] as u64;
        self.sum += x.sum_dim_intlist([0i64].as_slice(), false, Kind::Double);
        self.sum_outer += x.transpose(0, 1).matmul(&x);
        Ok(())
    }

    /// Adds another accumulator's statistics.
    pub fn merge(&mut self, other: &FeatureStats) -> Result<()> {
        if other.sum.size() != self.sum.size() {
            return Err(Error::BadInput(
                "cannot merge statistics of different dimensions".into(),
            ));
        }
        self.n += other.n;
        self.sum += &other.sum;
        self.sum_outer += &other.sum_outer;
        Ok(())
    }

    /// The running sums `(n, Σx [D], Σxxᵀ [D, D])`, float64, e.g. to add up accumulators of several
    /// processes; [`FeatureStats::from_sums`] makes an accumulator from them again.
    pub fn sums(&self) -> (u64, &Tensor, &Tensor) {
        (self.n, &self.sum, &self.sum_outer)
    }

    /// The accumulator holding the given sums (as [`FeatureStats::sums`] returns them).
    pub fn from_sums(n: u64, sum: &Tensor, sum_outer: &Tensor) -> Result<Self> {
        let d = sum.size();
        if d.len() != 1 || sum_outer.size() != [d[0], d[0]] {
            return Err(Error::BadInput(format!(
                "feature sums of shapes {:?} and {:?} do not fit together",
                d,
                sum_outer.size()
            )));
        }
        let cpu = |t: &Tensor| t.to_kind(Kind::Double).to_device(tch::Device::Cpu);
        Ok(FeatureStats {
            n,
            sum: cpu(sum),
            sum_outer: cpu(sum_outer),
        })
    }

    /// Number of features seen.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// (μ, Σ) with the unbiased covariance (np.cov, N − 1). Needs at least two features.
    pub fn mean_cov(&self) -> Result<(Tensor, Tensor)> {
        if self.n < 2 {
            return Err(Error::BadInput(format!(
                "need at least 2 features for a covariance, have {}",
                self.n
            )));
        }
        let n = self.n as f64;
        let mu = &self.sum / n;
        let sigma = (&self.sum_outer - mu.unsqueeze(1).matmul(&mu.unsqueeze(0)) * n) / (n - 1.0);
        Ok((mu, sigma))
    }
}

/// Symmetric PSD square root via eigendecomposition (negative round-off eigenvalues clamped).
fn sqrt_psd(a: &Tensor) -> Tensor {
    let (e, v) = a.linalg_eigh("L");
    let s = e.clamp_min(0.0).sqrt();
    (&v * s.unsqueeze(0)).matmul(&v.transpose(0, 1))
}

/// Tr(sqrt(Σ1·Σ2)).
pub fn trace_sqrt_product(sigma1: &Tensor, sigma2: &Tensor) -> f64 {
    let s1h = sqrt_psd(sigma1);
    let m = s1h.matmul(sigma2).matmul(&s1h);
    let m = (&m + m.transpose(0, 1)) / 2.0;
    m.linalg_eigvalsh("L")
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double)
        .double_value(&[])
}

/// The Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2); inputs are cast to float64.
pub fn frechet_distance(
    mu1: &Tensor,
    sigma1: &Tensor,
    mu2: &Tensor,
    sigma2: &Tensor,
) -> Result<f64> {
    let d = mu1.size();
    if d.len() != 1
        || mu2.size() != d
        || sigma1.size() != [d[0], d[0]]
        || sigma2.size() != [d[0], d[0]]
    {
        return Err(Error::BadInput(format!(
            "statistics shapes disagree: mu1 {:?}, sigma1 {:?}, mu2 {:?}, sigma2 {:?}",
            mu1.size(),
            sigma1.size(),
            mu2.size(),
            sigma2.size()
        )));
    }
    let f = |t: &Tensor| t.to_kind(Kind::Double).to_device(tch::Device::Cpu);
    let (mu1, sigma1, mu2, sigma2) = (f(mu1), f(sigma1), f(mu2), f(sigma2));
    for (name, t) in [
        ("mu1", &mu1),
        ("sigma1", &sigma1),
        ("mu2", &mu2),
        ("sigma2", &sigma2),
    ] {
        if t.isfinite().all().int64_value(&[]) == 0 {
            return Err(Error::BadInput(format!("{name} contains NaN or infinity")));
        }
    }
    let diff = (&mu1 - &mu2).square().sum(Kind::Double).double_value(&[]);
    let tr = |t: &Tensor| t.trace().double_value(&[]);
    Ok(diff + tr(&sigma1) + tr(&sigma2) - 2.0 * trace_sqrt_product(&sigma1, &sigma2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn random_stats(seed: i64, shift: f64) -> (Tensor, Tensor) {
        tch::manual_seed(seed);
        let x = Tensor::randn([300, 8], (Kind::Double, Device::Cpu))
            .matmul(&Tensor::randn([8, 8], (Kind::Double, Device::Cpu)))
            + shift;
        let mut s = FeatureStats::new(8);
        s.add(&x).unwrap();
        s.mean_cov().unwrap()
    }

    #[test]
    fn identical_statistics_give_zero_and_the_distance_is_symmetric() {
        let (m1, s1) = random_stats(1, 0.0);
        let (m2, s2) = random_stats(2, 0.5);
        assert!(frechet_distance(&m1, &s1, &m1, &s1).unwrap().abs() < 1e-9);
        let ab = frechet_distance(&m1, &s1, &m2, &s2).unwrap();
        let ba = frechet_distance(&m2, &s2, &m1, &s1).unwrap();
        assert!(ab > 1.0 && (ab - ba).abs() < 1e-9 * ab, "{ab} {ba}");
    }

    #[test]
    fn diagonal_covariances_match_the_closed_form() {
        // d² = ‖Δμ‖² + Σ_i (sqrt(a_i) − sqrt(b_i))².
        let a = [1.0f64, 4.0, 0.25];
        let b = [9.0f64, 1.0, 0.25];
        let mu1 = Tensor::from_slice(&[0.0f64, 1.0, 2.0]);
        let mu2 = Tensor::from_slice(&[1.0f64, 1.0, 0.0]);
        let d = frechet_distance(
            &mu1,
            &Tensor::from_slice(&a).diag(0),
            &mu2,
            &Tensor::from_slice(&b).diag(0),
        )
        .unwrap();
        let expected = 5.0 + (1.0f64 - 3.0).powi(2) + (2.0f64 - 1.0).powi(2);
        assert!((d - expected).abs() < 1e-12, "{d} vs {expected}");
    }

    #[test]
    fn merged_statistics_equal_one_pass_and_bad_inputs_are_errors() {
        tch::manual_seed(3);
        let x = Tensor::randn([100, 4], (Kind::Double, Device::Cpu));
        let mut all = FeatureStats::new(4);
        all.add(&x).unwrap();
        let (mut a, mut b) = (FeatureStats::new(4), FeatureStats::new(4));
        a.add(&x.narrow(0, 0, 37)).unwrap();
        b.add(&x.narrow(0, 37, 63)).unwrap();
        a.merge(&b).unwrap();
        let (m1, s1) = all.mean_cov().unwrap();
        let (m2, s2) = a.mean_cov().unwrap();
        assert!(m1.allclose(&m2, 1e-12, 1e-12, false) && s1.allclose(&s2, 1e-12, 1e-12, false));
        assert_eq!(a.count(), 100);
        assert!(FeatureStats::new(4).mean_cov().is_err());
        assert!(a
            .add(&Tensor::zeros([2, 5], (Kind::Double, Device::Cpu)))
            .is_err());
        let nan = Tensor::full([4], f64::NAN, (Kind::Double, Device::Cpu));
        assert!(frechet_distance(&nan, &s1, &m1, &s1).is_err());
        assert!(frechet_distance(&m1, &s1, &m1.narrow(0, 0, 3), &s1).is_err());
    }

    #[test]
    fn reference_statistics_that_are_no_covariance_are_reported_with_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mu, sigma) = random_stats(3, 0.0);
        let good = GaussianStats { mu, sigma };
        assert!(good.covariance_problems().is_empty());
        let path = dir.path().join("ref.npz");
        let asym = good.sigma.copy();
        let _ = asym.get(0).get(1).fill_(100.0);
        let bad = GaussianStats {
            mu: good.mu.copy(),
            sigma: asym,
        };
        let p = bad.covariance_problems();
        assert!(p.iter().any(|m| m.contains("not symmetric")), "{p:?}");
        let indefinite = GaussianStats {
            mu: good.mu.copy(),
            sigma: -good.sigma.copy(),
        };
        let p = indefinite.covariance_problems();
        assert!(
            p.iter().any(|m| m.contains("not positive semi-definite")),
            "{p:?}"
        );
        bad.save_npz(&path).unwrap();
        assert!(GaussianStats::load_npz(&path).is_ok());
        let nan = good.sigma.copy();
        let _ = nan.get(2).get(2).fill_(f64::NAN);
        GaussianStats {
            mu: good.mu.copy(),
            sigma: nan,
        }
        .save_npz(&path)
        .unwrap();
        let e = GaussianStats::load_npz(&path).unwrap_err().to_string();
        assert!(
            e.contains("ref.npz") && e.contains("`sigma` contains NaN"),
            "{e}"
        );
    }
}

/// Gaussian statistics (μ, Σ) of a feature set, as stored in pytorch-fid's and EDM's reference
/// `.npz` files (`mu`: \[D\], `sigma`: \[D, D\], float64).
#[derive(Debug)]
pub struct GaussianStats {
    /// Mean \[D\].
    pub mu: Tensor,
    /// Covariance [D, D].
    pub sigma: Tensor,
}

impl GaussianStats {
    /// From accumulated features (unbiased covariance).
    pub fn from_features(stats: &FeatureStats) -> Result<Self> {
        let (mu, sigma) = stats.mean_cov()?;
        Ok(GaussianStats { mu, sigma })
    }

    /// Reads `mu` and `sigma` from a `.npz` (other members, e.g. EDM's, are ignored).
    pub fn load_npz(path: &std::path::Path) -> Result<Self> {
        let arrays =
            slimflow_data::npy::read_npz(path).map_err(|e| Error::BadInput(e.to_string()))?;
        let get = |key: &str| {
            arrays
                .iter()
                .find(|(n, _)| n == key)
                .map(|(_, t)| t.to_kind(Kind::Double))
                .ok_or_else(|| {
                    let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
                    Error::BadInput(format!(
                        "{}: no `{key}` array (has: {})",
                        path.display(),
                        names.join(", ")
                    ))
                })
        };
        let (mu, sigma) = (get("mu")?, get("sigma")?);
        let d = mu.size();
        if d.len() != 1 || sigma.size() != [d[0], d[0]] {
            return Err(Error::BadInput(format!(
                "{}: mu {:?} and sigma {:?} are not [D] and [D, D]",
                path.display(),
                mu.size(),
                sigma.size()
            )));
        }
        for (name, t) in [("mu", &mu), ("sigma", &sigma)] {
            if t.isfinite().all().int64_value(&[]) == 0 {
                return Err(Error::BadInput(format!(
                    "{}: `{name}` contains NaN or infinity",
                    path.display()
                )));
            }
        }
        let stats = GaussianStats { mu, sigma };
        for p in stats.covariance_problems() {
            tracing::warn!("{}: {p}", path.display());
        }
        Ok(stats)
    }

    /// What makes `sigma` no covariance matrix: asymmetry or negative eigenvalues beyond round-off
    /// (relative 1e-6). The distance still uses it: its lower triangle as a symmetric matrix,
    /// negative eigenvalues as 0.
    pub fn covariance_problems(&self) -> Vec<String> {
        let s = self.sigma.to_kind(Kind::Double).to_device(tch::Device::Cpu);
        let scale = s.abs().max().double_value(&[]).max(f64::MIN_POSITIVE);
        let asym = (&s - s.transpose(0, 1)).abs().max().double_value(&[]);
        let mut p = Vec::new();
        if asym > 1e-6 * scale {
            p.push(format!(
                "`sigma` is not symmetric (max |Σ − Σᵀ| = {asym:.3e}, largest entry {scale:.3e}); \
                 the FID uses its lower triangle"
            ));
        }
        let eig = s.linalg_eigvalsh("L");
        let (lo, hi) = (eig.min().double_value(&[]), eig.max().double_value(&[]));
        if lo < -1e-6 * hi.abs().max(scale) {
            p.push(format!(
                "`sigma` is not positive semi-definite (smallest eigenvalue {lo:.3e}, largest \
                 {hi:.3e}); the FID treats negative eigenvalues as 0"
            ));
        }
        p
    }

    /// Writes `mu` and `sigma` (float64) as a `.npz` that `np.load` and pytorch-fid read.
    pub fn save_npz(&self, path: &std::path::Path) -> Result<()> {
        let (mu, sigma) = (
            self.mu.to_kind(Kind::Double),
            self.sigma.to_kind(Kind::Double),
        );
        slimflow_data::npy::write_npz(path, &[("mu", &mu), ("sigma", &sigma)])
            .map_err(|e| Error::BadInput(e.to_string()))
    }

    /// The Fréchet distance to `other`.
    pub fn frechet_distance(&self, other: &GaussianStats) -> Result<f64> {
        frechet_distance(&self.mu, &self.sigma, &other.mu, &other.sigma)
    }
}
