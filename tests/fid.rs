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
    assert!(
        other > 1.0 && same.abs() < 0.01 * other,
        "same {same}, other {other}"
    );
    // samples of an image model, drawn with `slimflow sample`, against the reference statistics
    let model = tmp.path().join("student.safetensors");
    let cfg = slimflow_models::ArchConfig::preset("slimflow-3.4m").unwrap();
    slimflow_models::Model::new(&cfg, tch::Device::Cpu)
        .unwrap()
        .save(&model, &Default::default())
        .unwrap();
    let samples = tmp.path().join("samples.safetensors");
    let mut c = slimflow();
    c.args(["sample", "--config"])
        .arg(common::toy_config())
        .args(["--run"])
        .arg(tmp.path().join("run"))
        .args(["--checkpoint"])
        .arg(&model)
        .args([
            "--n", "10", "--solver", "euler:1", "--device", "cpu", "--out",
        ])
        .arg(&samples);
    ok(c);
    let grid = png::Decoder::new(std::fs::File::open(samples.with_extension("png")).unwrap())
        .read_info()
        .unwrap()
        .info()
        .clone();
    assert_eq!((grid.width, grid.height), (8 * 34 + 2, 2 * 34 + 2));
    let d = fid(&s, &samples.display().to_string());
    assert!(
        d.is_finite() && d > other,
        "untrained samples vs shapes: {d}"
    );

    // bad sources
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
