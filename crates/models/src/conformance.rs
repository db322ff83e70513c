//! A reusable conformance check for architectures: one call in a test verifies what every
//! [`crate::VelocityField`] must do. It panics with a message naming the architecture and the
//! property that failed, so it is meant for tests (`#[test] fn conforms() { check(&cfg, Some(n)) }`);
//! [`check_sampling`] does the same for sampling: every solver, the field on its whole domain.
//! [`check_architecture`] runs both on a config's CPU-sized form ([`ArchConfig::cpu_sized`]), which
//! is how `tests/solver_conformance.rs` checks every registered architecture.

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
    // Wiring, not initialisation, is checked: exactly zero-initialised layers (ADM's output
    // convolution) would hide every path behind them, so all parameters are nudged first.
    tch::no_grad(|| {
        for mut v in model.vs.trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.01));
        }
    });
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
    // data-parallel training's DDP reducer waits for a gradient of every trainable parameter
    let mut missing: Vec<String> = model
        .vs
        .variables()
        .into_iter()
        .filter(|(_, p)| p.requires_grad() && !p.grad().defined())
        .map(|(n, _)| n)
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "{name}: no gradient reaches {missing:?} (with several ranks, set \
         performance.grad_reduce = \"after_backward\" for such a network)"
    );
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

    // One directory per call: tests of the same architecture run in parallel in one process.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "slimflow-conformance-{}-{name}-{call}",
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

/// [`check`] and [`check_sampling`] on `config.cpu_sized()`: an architecture's whole conformance
/// test. `expected_params` counts the CPU-sized network.
pub fn check_architecture(config: &ArchConfig, expected_params: Option<i64>) {
    let config = config.cpu_sized();
    check(&config, expected_params);
    check_sampling(&nudged_model(&config));
}

/// `config` built on the CPU with seed 0, every variable then nudged by N(0, 0.01²): outputs depend
/// on every path (a zero-initialised output layer would reduce an EDM wrapper's velocity to its
/// analytic skip term). Panics when the config is invalid.
pub fn nudged_model(config: &ArchConfig) -> Model {
    tch::manual_seed(0);
    let m = Model::new(config, Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", config.name()));
    tch::no_grad(|| {
        for (_, mut v) in m.vs.variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.01));
        }
    });
    m
}

/// Every solver configuration [`check_sampling`] runs: each generic solver with one and several
/// steps, every rfpp variant and EDM's sampler (Heun and Euler), small enough for CPU tests.
pub fn solver_variants() -> Vec<slimflow_sampling::SolverConfig> {
    use slimflow_sampling::{EdmSamplerConfig, RfppMethod, RfppSampler, SolverConfig};
    let mut all = vec![
        SolverConfig::Euler { steps: 1 },
        SolverConfig::Euler { steps: 4 },
        SolverConfig::Heun { steps: 3 },
        SolverConfig::Rk45 {
            rtol: 1e-3,
            atol: 1e-3,
        },
        SolverConfig::XPred { steps: 3 },
    ];
    for method in [RfppMethod::Euler, RfppMethod::Heun] {
        for sampler in [RfppSampler::Default, RfppSampler::New] {
            all.push(SolverConfig::Rfpp {
                method,
                sampler,
                nfe: 3,
            });
        }
    }
    for heun in [true, false] {
        all.push(SolverConfig::Edm(EdmSamplerConfig {
            steps: 3,
            heun,
            ..EdmSamplerConfig::default()
        }));
    }
    all
}

/// Checks that `model` can be sampled: every [`solver_variants`] entry runs from t = 1e-3 to 1 on a
/// batch of two (labels 0 and label_dim − 1 when conditional), returns a finite batch of the data
/// shape in float32 and reports the NFE its solver promises for the model's domain; a backward
/// Heun solve works; the field is finite on a dense time grid over its domain (closed ends
/// included) and refuses its open ends, as a start of a solve too; and a network with its own EDM
/// denoiser agrees with the denoiser derived from its velocity. Panics naming the architecture,
/// solver and property that failed.
pub fn check_sampling(model: &Model) {
    use slimflow_sampling::{
        evaluate, solve, Denoiser, Error, SolverConfig, Velocity, VelocityDenoiser,
    };
    let config = model.config();
    let name = config.name();
    let mut shape = vec![2i64];
    shape.extend(config.data_shape());
    tch::manual_seed(1);
    let z = Tensor::randn(shape.as_slice(), (Kind::Float, model.vs.device()));
    let labels = (config.label_dim() > 0)
        .then(|| Tensor::from_slice(&[0i64, config.label_dim() - 1]).to_device(z.device()));
    let field = model.eval_field(labels.as_ref());
    let domain = field.domain();
    let finite = |x: &Tensor| x.isfinite().all().int64_value(&[]) == 1;

    for cfg in solver_variants() {
        let label = cfg.label();
        let sol = solve(&cfg, &field, &z, 1e-3, 1.0, false)
            .unwrap_or_else(|e| panic!("{name}, {label}: {e}"));
        assert_eq!(sol.x.size(), shape, "{name}, {label}: output shape");
        assert_eq!(sol.x.kind(), Kind::Float, "{name}, {label}: output kind");
        assert!(finite(&sol.x), "{name}, {label}: non-finite samples");
        if let Some(nfe) = cfg.nfe(&domain, 1.0) {
            assert_eq!(sol.nfe, nfe, "{name}, {label}: NFE");
        }
    }
    let back = solve(
        &SolverConfig::Heun { steps: 2 },
        &field,
        &z,
        0.999,
        1e-3,
        false,
    )
    .unwrap_or_else(|e| panic!("{name}, backward Heun: {e}"));
    assert!(finite(&back.x), "{name}: backward Heun non-finite");

    let (lo, hi) = (domain.lo(), domain.hi());
    let mut times: Vec<f64> = (0..=32).map(|i| f64::from(i) / 32.0).collect();
    times.extend([lo.last_evaluation(), hi.last_evaluation(), 1e-5, 1.0 - 1e-5]);
    for t in times {
        let v = evaluate(&field, &z, t);
        if domain.contains(t) {
            let v = v.unwrap_or_else(|e| panic!("{name}: at t = {t}: {e}"));
            assert_eq!(v.size(), shape, "{name}: shape at t = {t}");
            assert!(finite(&v), "{name}: non-finite velocity at t = {t}");
        } else {
            assert!(
                matches!(v, Err(Error::OutsideDomain { .. })),
                "{name}: evaluating at the excluded t = {t} must fail"
            );
        }
    }
    for (end, other) in [(lo, hi), (hi, lo)] {
        let start = solve(
            &SolverConfig::Euler { steps: 1 },
            &field,
            &z,
            end.at(),
            other.at(),
            false,
        );
        if end.is_open() {
            assert!(
                matches!(start, Err(Error::ExcludedStart { .. })),
                "{name}: a solve starting at the excluded t = {} must fail",
                end.at()
            );
        } else {
            let sol = start.unwrap_or_else(|e| panic!("{name}: from t = {}: {e}", end.at()));
            assert!(finite(&sol.x), "{name}: from t = {}", end.at());
        }
    }

    // A native denoiser is the same function as the one derived from the velocity.
    if let Some(native) = field.denoiser() {
        let generic = VelocityDenoiser(&field);
        let x = z.to_kind(Kind::Double) * 3.0;
        for sigma in [0.01, 0.5, 5.0, 50.0] {
            let s = Tensor::full([2], sigma, (Kind::Double, z.device()));
            let (a, b) = tch::no_grad(|| (native.denoise(&x, &s), generic.denoise(&x, &s)));
            let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
            let scale = 1.0 + a.abs().max().double_value(&[]);
            let diff = (&a - &b).abs().max().double_value(&[]);
            assert!(
                diff <= 1e-3 * scale,
                "{name}: denoiser and velocity disagree at σ = {sigma} by {diff}"
            );
        }
    }
}
