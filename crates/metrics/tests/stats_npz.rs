//! Reference statistics in pytorch-fid's / EDM's `.npz` format.

use std::path::Path;

use slimflow_metrics::fid::{FeatureStats, GaussianStats};
use tch::{Kind, Tensor};

fn numpy_stats() -> std::path::PathBuf {
    // written by NumPy's np.savez (crates/data/tests/fixtures/make_npy.py)
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/tests/fixtures/stats.npz")
}

#[test]
fn numpy_statistics_load_and_round_trip() {
    let a = GaussianStats::load_npz(&numpy_stats()).unwrap();
    assert_eq!(a.mu.size(), [4]);
    assert!(a.frechet_distance(&a).unwrap().abs() < 1e-12);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ref.npz");
    a.save_npz(&p).unwrap();
    let b = GaussianStats::load_npz(&p).unwrap();
    assert!(a.mu.equal(&b.mu) && a.sigma.equal(&b.sigma));

    // statistics accumulated here against the file: symmetric and positive
    let feats = (Tensor::arange(400, (Kind::Double, tch::Device::Cpu)) * 0.7)
        .sin()
        .reshape([100, 4]);
    let mut acc = FeatureStats::new(4);
    acc.add(&feats).unwrap();
    let c = GaussianStats::from_features(&acc).unwrap();
    let (ac, ca) = (
        a.frechet_distance(&c).unwrap(),
        c.frechet_distance(&a).unwrap(),
    );
    // rank-deficient covariance (sines obey a linear recurrence): symmetric to round-off
    assert!(ac > 0.1 && (ac - ca).abs() < 1e-6 * ac, "{ac} vs {ca}");
}

#[test]
fn files_without_mu_and_sigma_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("other.npz");
    let x = Tensor::zeros([3], (Kind::Double, tch::Device::Cpu));
    slimflow_data::npy::write_npz(&p, &[("mean", &x)]).unwrap();
    let msg = GaussianStats::load_npz(&p).unwrap_err().to_string();
    assert!(
        msg.contains("other.npz") && msg.contains("`mu`") && msg.contains("mean"),
        "{msg}"
    );
    let q = dir.path().join("shape.npz");
    slimflow_data::npy::write_npz(&q, &[("mu", &x), ("sigma", &x)]).unwrap();
    assert!(GaussianStats::load_npz(&q)
        .unwrap_err()
        .to_string()
        .contains("[D, D]"));
}
