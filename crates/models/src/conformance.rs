//! A reusable conformance check for architectures: one call in a test verifies what every
//! [`crate::VelocityField`] must do. It panics with a message naming the architecture and the
//! property that failed, so it is meant for tests (`#[test] fn conforms() { check(&cfg, Some(n)) }`).

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use crate::{ArchConfig, Model};

/// Checks `config`: it validates and builds; the parameter count equals `expected_params` when
/// given; a batch of the declared data shape maps to the same shape; the output depends on t; every
/// trainable parameter receives a gradient (at least 90 % of them non-zero on the first step, since
/// zero-initialised layers may block a few); a save → load round trip reproduces the
/// output bit for bit; a wrongly shaped input is refused.
pub fn check(config: &ArchConfig, expected_params: Option<i64>) {
    let name = config.name();
    config
        .validate()
        .unwrap_or_else(|e| panic!("{name}: invalid config: {e}"));
    tch::manual_seed(0);
    let model = Model::new(config, Device::Cpu).unwrap_or_else(|e| panic!("{name}: build: {e}"));
    if let Some(n) = expected_params {
        assert_eq!(model.num_params(), n, "{name}: parameter count");
    }
    let mut shape = vec![2i64];
    shape.extend(config.data_shape());
    let x = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu));
    let labels =
        (config.label_dim() > 0).then(|| Tensor::from_slice(&[0i64, config.label_dim() - 1]));
    let t0 = Tensor::from_slice(&[0.1f32, 0.1]);
    let t1 = Tensor::from_slice(&[0.9f32, 0.9]);
    model
        .check_input(&x, &t0, labels.as_ref())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let v0 = model.net().forward_t(&x, &t0, labels.as_ref(), false);
    assert_eq!(v0.size(), x.size(), "{name}: output shape");
    assert!(
        v0.isfinite().all().int64_value(&[]) == 1,
        "{name}: non-finite output"
    );
    let v1 = model.net().forward_t(&x, &t1, labels.as_ref(), false);
    assert!(
        (&v0 - &v1).abs().max().double_value(&[]) > 0.0,
        "{name}: output ignores t"
    );

    let v = model.net().forward_t(&x, &t0, labels.as_ref(), true);
    // A loss linear in v: zero-initialised output layers (score_sde's 1e-10 scale) would make a
    // quadratic loss's gradients underflow float32 deep in the network.
    (v * Tensor::randn(x.size().as_slice(), (Kind::Float, Device::Cpu)))
        .sum(Kind::Float)
        .backward();
    let params = model.vs.trainable_variables();
    let reached = params
        .iter()
        .filter(|p| p.grad().defined() && p.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0)
        .count();
    assert!(
        reached * 10 >= params.len() * 9,
        "{name}: only {reached} of {} parameters get a gradient",
        params.len()
    );

    let dir = std::env::temp_dir().join(format!(
        "slimflow-conformance-{}-{name}",
        std::process::id()
    ));
    let path = dir.join("model.safetensors");
    model
        .save(&path, &BTreeMap::new())
        .unwrap_or_else(|e| panic!("{name}: save: {e}"));
    let back = Model::load(&path, Device::Cpu).unwrap_or_else(|e| panic!("{name}: load: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(back.config(), config, "{name}: config round trip");
    let w = back.net().forward_t(&x, &t0, labels.as_ref(), false);
    assert!(w.equal(&v0), "{name}: save → load changes the output");

    let mut bad = shape.clone();
    bad[1] += 1;
    let wrong = Tensor::zeros(bad.as_slice(), (Kind::Float, Device::Cpu));
    assert!(
        model.check_input(&wrong, &t0, labels.as_ref()).is_err(),
        "{name}: wrong input shape accepted"
    );
}
