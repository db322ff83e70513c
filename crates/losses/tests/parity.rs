//! LPIPS against the `lpips` package (cases `lpips_vgg`, `lpips_vgg_avgpool`), loading the parity
//! weights by their original key names.

#[path = "../../../tests/support/parity.rs"]
mod support;

use slimflow_losses::lpips::{Backbone, Lpips, LpipsConfig, Pooling};
use tch::{Device, Kind, Tensor};

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).expect("f64 values")
}

fn run_case(case: &str, pooling: Pooling) {
    let Some(dir) = support::parity_dir() else {
        return;
    };
    let json = support::case_json(&dir, case);
    let weights = dir.join(json["weights_file"].as_str().expect("weights_file"));
    let config = LpipsConfig {
        net: Backbone::Vgg,
        pooling,
        resize: None,
    };
    let lp = Lpips::load(&weights, config, Device::Cpu).expect("weights load strictly");
    assert_eq!(
        lp.num_params(),
        json["param_count"].as_i64().unwrap_or(14_716_160)
    );
    let io =
        slimflow_tensor_io::read(&dir.join(format!("{case}.io.safetensors"))).expect("io file");
    let t = |k: &str| io.get(k).expect(k).shallow_clone();
    let check = |key: &str, actual: &Tensor| {
        let (atol, rtol) = support::tolerance(&json, key);
        let err = support::assert_close(key, &values(actual), &values(&t(key)), atol, rtol);
        eprintln!("{case} {key}: max abs err {err:.3e} (atol {atol:.0e})");
    };
    tch::no_grad(|| {
        let out = lp
            .forward(&t("input.in0"), &t("input.in1"), false)
            .expect("forward");
        check("output.dist", &out.dist);
        check("output.per_layer", &out.per_layer);
        let out01 = lp
            .forward(&t("input.in0_01"), &t("input.in1_01"), true)
            .expect("forward");
        check("output.dist_normalize_true", &out01.dist);
        if pooling == Pooling::Avg {
            // piq's LPIPS on [0, 1] inputs with ImageNet mean/std: the same map as normalize = true.
            check("output.dist_piq", &out01.dist);
        }
    });
}

#[test]
fn lpips_vgg_matches_the_lpips_package() {
    run_case("lpips_vgg", Pooling::Max);
}

#[test]
fn lpips_vgg_avgpool_matches_piq_pooling() {
    run_case("lpips_vgg_avgpool", Pooling::Avg);
}

#[test]
fn weights_with_unexpected_or_inconsistent_keys_are_refused() {
    let Some(dir) = support::parity_dir() else {
        return;
    };
    let file =
        slimflow_tensor_io::read(&dir.join("lpips_vgg.weights.safetensors")).expect("weights");
    let tmp = tempfile::tempdir().unwrap();
    // Drop one conv weight: a missing key, named.
    let mut missing = file
        .tensors
        .iter()
        .filter(|(k, _)| k != "net.slice3.12.weight")
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect::<Vec<_>>();
    let p = tmp.path().join("missing.safetensors");
    slimflow_tensor_io::write(&p, &missing, &Default::default()).unwrap();
    let err = Lpips::load(&p, LpipsConfig::default(), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("net.slice3.12.weight"), "{err}");
    // A `lins.*` alias that disagrees with its `lin*` twin.
    missing.push((
        "net.slice3.12.weight".into(),
        file.get("net.slice3.12.weight").unwrap().shallow_clone(),
    ));
    for (k, t) in missing.iter_mut() {
        if k == "lins.2.model.1.weight" {
            *t = &*t + 1.0;
        }
    }
    slimflow_tensor_io::write(&p, &missing, &Default::default()).unwrap();
    let err = Lpips::load(&p, LpipsConfig::default(), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lins.2.model.1.weight"), "{err}");
    // AlexNet structure cannot take VGG weights.
    let err = Lpips::load(
        &dir.join("lpips_vgg.weights.safetensors"),
        LpipsConfig {
            net: Backbone::Alex,
            ..Default::default()
        },
        Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("missing keys") && err.contains("unexpected keys"),
        "{err}"
    );
}
