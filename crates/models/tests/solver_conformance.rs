//! Every registered architecture, shrunk to CPU size where the preset is large, through every
//! solver variant and over its whole time domain ([`slimflow_models::conformance::check_sampling`]).

use slimflow_models::conformance::{check_sampling, solver_variants};
use slimflow_models::dhariwal_unet::DhariwalUnetConfig;
use slimflow_models::edm_velocity::EdmVelocity;
use slimflow_models::ncsnpp::NcsnppConfig;
use slimflow_models::song_unet::SongUnetConfig;
use slimflow_models::{ArchConfig, MlpConfig, Model, PRESETS};
use slimflow_sampling::{solve, Bound, Error, SolverConfig, Velocity};
use tch::{Device, Kind, Tensor};

/// The preset's architecture at 16×16 with 16 base channels and attention at 8×8: the same kind,
/// levels, blocks per level and options (embedding, encoder/decoder, filters, augmentation),
/// CPU-sized.
fn shrink(cfg: ArchConfig) -> ArchConfig {
    match cfg {
        ArchConfig::Mlp(c) => ArchConfig::Mlp(c),
        ArchConfig::Ncsnpp(c) => ArchConfig::Ncsnpp(NcsnppConfig {
            image_size: 16,
            nf: 16,
            attn_resolutions: vec![8],
            dropout: 0.0,
            ..c
        }),
        ArchConfig::EdmVelocity(c) => ArchConfig::EdmVelocity(SongUnetConfig {
            img_resolution: 16,
            model_channels: 16,
            attn_resolutions: vec![8],
            dropout: 0.0,
            ..c
        }),
        // 32 base channels: ADM attends only with ≥ 64 channels (the 8×8 level here).
        ArchConfig::DhariwalUnet(c) => ArchConfig::DhariwalUnet(shrink_adm(c)),
        ArchConfig::EdmVelocityAdm(c) => ArchConfig::EdmVelocityAdm(shrink_adm(c)),
    }
}

fn shrink_adm(c: DhariwalUnetConfig) -> DhariwalUnetConfig {
    DhariwalUnetConfig {
        img_resolution: 16,
        model_channels: 32,
        attn_resolutions: vec![8],
        label_dim: c.label_dim.min(10),
        dropout: 0.0,
        ..c
    }
}

/// Built with a fixed seed; zero-initialised output layers are nudged so the outputs depend on
/// every path (otherwise an EDM network's velocity would be its analytic skip term only).
fn build(cfg: &ArchConfig) -> Model {
    // Tiny tensors: intra-op threads only contend (a forward is ~6× slower with two threads on a
    // shared two-core machine), and the tests of this file already run in parallel.
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let m = Model::new(cfg, Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", cfg.name()));
    tch::no_grad(|| {
        for (_, mut v) in m.vs.variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.01));
        }
    });
    m
}

#[test]
fn every_preset_samples_with_every_solver() {
    // Presets that differ only in width shrink to the same network: run each once.
    let mut configs: Vec<ArchConfig> = Vec::new();
    for p in PRESETS {
        let cfg = shrink((p.config)());
        if !configs.contains(&cfg) {
            configs.push(cfg);
        }
    }
    // Class-conditional variants: labels travel through every solver and the EDM denoiser.
    configs.push(ArchConfig::Mlp(MlpConfig {
        label_dim: 3,
        hidden: 32,
        ..MlpConfig::default()
    }));
    configs.push(shrink(ArchConfig::EdmVelocity(SongUnetConfig {
        label_dim: 4,
        ..SongUnetConfig::default()
    })));
    let mut kinds = std::collections::BTreeSet::new();
    for cfg in &configs {
        kinds.insert(cfg.name());
        check_sampling(&build(cfg));
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        vec![
            "dhariwal_unet",
            "edm_velocity",
            "edm_velocity_adm",
            "mlp",
            "ncsnpp"
        ],
        "every architecture kind is covered"
    );
    assert_eq!(solver_variants().len(), 11);
}

#[test]
fn the_edm_wrapper_is_open_at_both_ends_with_edms_noise_range() {
    let cfg = shrink(ArchConfig::preset("edm-ncsnpp-cifar10").unwrap());
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
    let ncsnpp = build(&shrink(ArchConfig::preset("slimflow-3.4m").unwrap()));
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
