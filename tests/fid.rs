//! `slimflow fid-ref` / `slimflow fid` with the parity case's Inception weights on procedural images.

mod common;
#[path = "support/parity.rs"]
mod parity;

use common::{ok, output, slimflow};

#[test]
fn reference_statistics_and_distances() {
    let Some(dir) = parity::parity_dir() else {
        return;
    };
    let weights = dir.join("fid_inception.weights.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("shapes.npz");
    let mut c = slimflow();
    c.args([
        "fid-ref",
        "--dataset",
        "shapes:32,count=24,seed=1",
        "--batch",
        "12",
        "--device",
        "cpu",
        "--weights",
    ])
    .arg(&weights)
    .arg("--out")
    .arg(&stats);
    ok(c);
    let fid = |a: &str, b: &str| -> f64 {
        let mut c = slimflow();
        c.args(["fid", a, b, "--batch", "12", "--device", "cpu", "--weights"])
            .arg(&weights);
        ok(c).trim().parse().unwrap()
    };
    let s = stats.display().to_string();
    // 24 images span 23 of 2048 dimensions: the matrix square root of these singular covariances
    // leaves round-off of a few hundredths, far below the distance to other images
    let same = fid(&s, "shapes:32,count=24,seed=1");
    let other = fid(&s, "shapes:32,count=24,seed=2");
    assert!(other > 1.0 && same.abs() < 0.01 * other, "same {same}, other {other}");
    // grayscale data (replicated to RGB) and bad sources
    let mut c = slimflow();
    c.args(["fid", &s, "nonsense:here", "--device", "cpu", "--weights"])
        .arg(&weights);
    let out = output(c);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonsense"));
    let mut c = slimflow();
    c.args(["fid", &s, "shapes:32,count=4"])
        .env("SLIMFLOW_WEIGHTS_DIR", tmp.path());
    let out = output(c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("slimflow weights fetch inception"), "{err}");
}
