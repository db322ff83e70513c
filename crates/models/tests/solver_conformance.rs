//! Every registered architecture through [`check_architecture`] (build, gradients, save → load,
//! every solver variant, the whole time domain), CPU-sized; then every preset not already covered
//! through [`check_sampling`].

use serde_json::json;
use slimflow_models::conformance::{check_architecture, check_sampling, nudged_model};
use slimflow_models::edm_velocity::EdmVelocity;
use slimflow_models::{ArchConfig, Model, PRESETS};
use slimflow_sampling::{solve, Bound, Error, SolverConfig, Velocity};
use tch::{Device, Kind, Tensor};

/// One `#[test]` per entry, `name: {config as JSON}, parameters of its CPU-sized network;`, in
/// `conforms::`, and [`conformance_entries`] listing the configs.
macro_rules! conformance {
    ($($test:ident: $config:tt, $params:expr;)*) => {
        mod conforms {
            $(
                #[test]
                fn $test() {
                    super::run_entry(serde_json::json!($config), $params);
                }
            )*
        }

        fn conformance_entries() -> Vec<ArchConfig> {
            vec![$(parse(json!($config))),*]
        }
    };
}

// Each architecture's conformance entry: a config in its `[model]` form (the check makes it
// CPU-sized). A new architecture adds its line here; `every_architecture_has_an_entry` insists.
conformance! {
    mlp: {"arch": "mlp"}, Some(141_058);
    mlp_conditional: {"arch": "mlp", "label_dim": 3, "hidden": 32}, None;
    ncsnpp: {"arch": "ncsnpp"}, None;
    edm_velocity: {"arch": "edm_velocity", "label_dim": 4}, None;
    // The parity cases' config (828 771 parameters with 10 classes) minus 5 · 128 label weights.
    dhariwal_unet: {
        "arch": "dhariwal_unet", "channel_mult": [1, 2], "num_blocks": 1, "label_dim": 5
    }, Some(828_131);
    edm_velocity_adm: {
        "arch": "edm_velocity_adm", "channel_mult": [1, 2], "num_blocks": 1, "label_dim": 5
    }, Some(828_131);
}

fn parse(config: serde_json::Value) -> ArchConfig {
    serde_json::from_value(config.clone()).unwrap_or_else(|e| panic!("{config}: {e}"))
}

fn run_entry(config: serde_json::Value, params: Option<i64>) {
    single_threaded();
    check_architecture(&parse(config), params);
}

/// Tiny tensors: intra-op threads only contend (a forward is ~6× slower with two threads on a
/// shared two-core machine), and the tests of this file already run in parallel.
fn single_threaded() {
    tch::set_num_threads(1);
}

fn build(cfg: &ArchConfig) -> Model {
    single_threaded();
    nudged_model(cfg)
}

#[test]
fn every_architecture_has_an_entry() {
    let covered: Vec<&str> = conformance_entries().iter().map(|c| c.name()).collect();
    for name in ArchConfig::names() {
        assert!(covered.contains(&name), "no conformance entry for `{name}`");
    }
}

#[test]
fn every_preset_samples_with_every_solver() {
    // Presets that differ only in width are the same network CPU-sized, and the entries' configs
    // are sampled by their own tests: each remaining one runs once.
    let mut seen: Vec<ArchConfig> = conformance_entries()
        .iter()
        .map(|c| c.cpu_sized())
        .collect();
    for p in PRESETS {
        let cfg = (p.config)().cpu_sized();
        if !seen.contains(&cfg) {
            check_sampling(&build(&cfg));
            seen.push(cfg);
        }
    }
    assert_eq!(slimflow_models::conformance::solver_variants().len(), 11);
}

#[test]
fn the_edm_wrapper_is_open_at_both_ends_with_edms_noise_range() {
    let cfg = ArchConfig::preset("edm-ncsnpp-cifar10")
        .unwrap()
        .cpu_sized();
    let m = build(&cfg);
    let field = m.eval_field(None);
    let d = field.domain();
    assert_eq!(d, EdmVelocity::time_domain());
    assert_eq!(
        d.hi(),
        Bound::Open {
            at: 1.0,
            near: 1.0 / 1.002
        }
    );
    assert_eq!(
        d.lo(),
        Bound::Open {
            at: 0.0,
            near: 1.0 / 81.0
        }
    );
    // The wrapper's raw output at t = 1 is what the domain guards against.
    let z = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    let raw = m.net().forward_t(
        &z,
        &Tensor::ones([2], (Kind::Float, Device::Cpu)),
        None,
        false,
    );
    assert_eq!(
        raw.isfinite().all().int64_value(&[]),
        0,
        "t = 1 divides by zero"
    );
    let err = solve(
        &SolverConfig::Heun { steps: 2 },
        &field,
        &z,
        1.0,
        1e-3,
        false,
    )
    .unwrap_err();
    assert!(matches!(err, Error::ExcludedStart { t, .. } if t == 1.0));
    assert!(err.to_string().contains("(0, 1)"), "{err}");
    // Heun to t = 1 ends with the prediction step: 2N − 1 NFE; RK45 gets there too.
    let sol = solve(
        &SolverConfig::Heun { steps: 4 },
        &field,
        &z,
        1e-3,
        1.0,
        false,
    )
    .unwrap();
    assert_eq!(sol.nfe, 7);
    let rk = SolverConfig::Rk45 {
        rtol: 1e-3,
        atol: 1e-3,
    };
    assert!(solve(&rk, &field, &z, 1e-3, 1.0, false).is_ok());
    // Other architectures are closed at both ends.
    let ncsnpp = build(&ArchConfig::preset("slimflow-3.4m").unwrap().cpu_sized());
    assert_eq!(
        ncsnpp.eval_field(None).domain(),
        slimflow_sampling::Domain::UNIT
    );
    let sol = solve(
        &SolverConfig::Heun { steps: 4 },
        &ncsnpp.eval_field(None),
        &z,
        1e-3,
        1.0,
        false,
    )
    .unwrap();
    assert_eq!(sol.nfe, 8);
}
