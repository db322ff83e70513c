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
    // 8 columns of 32 px tiles with 2 px borders (274 × 70), enlarged 2× to reach 512 px
    assert_eq!(
        (grid.width, grid.height),
        (2 * (8 * 34 + 2), 2 * (2 * 34 + 2))
    );
    let d = fid(&s, &samples.display().to_string());
    assert!(
        d.is_finite() && d > other,
        "untrained samples vs shapes: {d}"
    );

    // without Inception weights: the labelled stand-in (its quality is tested in slimflow-metrics;
    // here an untrained network sits in the cache, so nothing is trained)
    let spec = "shapes:32,count=1500";
    let wdir = tmp.path().join("w");
    std::fs::create_dir_all(&wdir).unwrap();
    slimflow_metrics::standin::StandinNet::build(tch::Device::Cpu, 3, 4)
        .save(&wdir.join(slimflow_metrics::standin::cache_file_name(spec, 600)))
        .unwrap();
    let mut c = slimflow();
    c.args([
        "fid",
        "shapes:32,count=50,seed=1",
        "shapes:32,count=50,seed=2",
        "--device",
        "cpu",
    ])
    .args(["--features", &format!("classifier:{spec}")])
    .env("SLIMFLOW_WEIGHTS_DIR", &wdir);
    let line = ok(c);
    assert!(
        line.contains("classifier trained on shapes:32,count=1500 (a stand-in, not FID)"),
        "{line}"
    );
    let value: f64 = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value.is_finite() && value >= -1e-3, "{line}");
    assert_eq!(
        std::fs::read_dir(&wdir).unwrap().count(),
        1,
        "the cached network was used"
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
