//! Image networks: input validation, class conditioning and train/eval behaviour.

use slimflow_models::ncsnpp::NcsnppConfig;
use slimflow_models::song_unet::SongUnetConfig;
use slimflow_models::{ArchConfig, Model};
use tch::{Device, Kind, Tensor};

fn conditional_songunet(dropout: f64) -> Model {
    let cfg = ArchConfig::EdmVelocity(SongUnetConfig {
        img_resolution: 16,
        model_channels: 16,
        channel_mult: vec![1, 2],
        num_blocks: 1,
        attn_resolutions: vec![8],
        dropout,
        label_dim: 10,
        ..SongUnetConfig::default()
    });
    let m = Model::new(&cfg, Device::Cpu).unwrap();
    // EDM zero-initialises output layers; perturb so that every path affects the output
    tch::no_grad(|| {
        for (_, mut v) in m.vs.variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.02));
        }
    });
    m
}

fn x(b: i64, c: i64, r: i64) -> Tensor {
    (Tensor::arange(b * c * r * r, (Kind::Float, Device::Cpu)) * 0.11)
        .sin()
        .reshape([b, c, r, r])
}

fn err(m: &Model, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> String {
    m.check_input(x, t, y).unwrap_err().to_string()
}

#[test]
fn wrong_shapes_channels_and_labels_are_named() {
    let m = conditional_songunet(0.0);
    let t = Tensor::full([2], 0.5, (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[1i64, 7]);
    m.check_input(&x(2, 3, 16), &t, Some(&y)).unwrap();

    let e = err(&m, &x(2, 1, 16), &t, Some(&y));
    assert!(
        e.contains("`x`") && e.contains("[B, 3, 16, 16]") && e.contains("[2, 1, 16, 16]"),
        "{e}"
    );
    let e = err(&m, &x(2, 3, 32), &t, Some(&y));
    assert!(e.contains("[B, 3, 16, 16]"), "{e}");
    let e = err(
        &m,
        &x(2, 3, 16),
        &Tensor::zeros([3], (Kind::Float, Device::Cpu)),
        Some(&y),
    );
    assert!(e.contains("`t`") && e.contains("[2]"), "{e}");
    let e = err(&m, &x(2, 3, 16), &t, None);
    assert!(e.contains("`labels`") && e.contains("conditional"), "{e}");
    let e = err(
        &m,
        &x(2, 3, 16),
        &t,
        Some(&Tensor::from_slice(&[1i64, 2, 3])),
    );
    assert!(e.contains("`labels`") && e.contains("[2]"), "{e}");
    let e = err(&m, &x(2, 3, 16), &t, Some(&Tensor::from_slice(&[1i64, 10])));
    assert!(e.contains("[0, 10)") && e.contains("[1, 10]"), "{e}");
    let e = err(
        &m,
        &x(2, 3, 16),
        &t,
        Some(&Tensor::from_slice(&[1.0f32, 2.0])),
    );
    assert!(e.contains("int64"), "{e}");

    let unconditional = Model::new(
        &ArchConfig::Ncsnpp(NcsnppConfig {
            image_size: 16,
            nf: 16,
            ch_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![8],
            ..Default::default()
        }),
        Device::Cpu,
    )
    .unwrap();
    let e = err(&unconditional, &x(2, 3, 16), &t, Some(&y));
    assert!(e.contains("unconditional"), "{e}");
    assert!(ArchConfig::preset("slimflow-15m")
        .unwrap_err()
        .to_string()
        .contains("slimflow-15.7m"));
}

#[test]
fn labels_change_the_output_and_dropout_only_acts_in_training() {
    let m = conditional_songunet(0.3);
    let (xs, t) = (
        x(2, 3, 16),
        Tensor::full([2], 0.4, (Kind::Float, Device::Cpu)),
    );
    let f = |y: &[i64], train: bool| {
        m.net()
            .forward_t(&xs, &t, Some(&Tensor::from_slice(y)), train)
    };
    let a = f(&[0, 0], false);
    assert!(a.equal(&f(&[0, 0], false)), "eval is deterministic");
    let by_label = (&a - f(&[3, 9], false)).abs().max().double_value(&[]);
    assert!(by_label > 1e-6, "labels have no effect");
    let by_dropout = (f(&[0, 0], true) - f(&[0, 0], true))
        .abs()
        .max()
        .double_value(&[]);
    assert!(by_dropout > 1e-6, "dropout inactive in training");
}

/// A small class-conditional ADM with one attention head at 8×8.
fn adm() -> slimflow_models::dhariwal_unet::DhariwalUnetConfig {
    slimflow_models::dhariwal_unet::DhariwalUnetConfig {
        img_resolution: 16,
        model_channels: 32,
        channel_mult: vec![1, 2],
        num_blocks: 1,
        attn_resolutions: vec![8],
        label_dim: 6,
        dropout: 0.0,
        ..Default::default()
    }
}

#[test]
fn bf16_inference_tracks_float32() {
    use slimflow_models::Precision;
    use slimflow_sampling::Velocity;
    for cfg in [
        conditional_songunet(0.0).config().clone(),
        ArchConfig::Ncsnpp(NcsnppConfig {
            image_size: 16,
            nf: 16,
            ch_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![8],
            dropout: 0.0,
            ..Default::default()
        }),
        ArchConfig::DhariwalUnet(adm()),
        ArchConfig::EdmVelocityAdm(adm()),
    ] {
        let mut m = Model::new(&cfg, Device::Cpu).unwrap();
        tch::no_grad(|| {
            for (_, mut v) in m.vs.variables() {
                let _ = v.g_add_(&(v.ones_like() * 0.01));
            }
        });
        let labels = Tensor::from_slice(&[2i64, 5]);
        let labels = (cfg.label_dim() > 0).then_some(&labels);
        let (xs, t) = (x(2, 3, 16), Tensor::from_slice(&[0.2f32, 0.9]));
        let full = m.eval_field(labels).velocity(&xs, &t);
        m.set_precision(Precision::Bf16);
        assert_eq!(m.kind(), Kind::BFloat16);
        let half = m.eval_field(labels).velocity(&xs, &t);
        assert_eq!(
            half.kind(),
            Kind::Float,
            "velocities come back in the caller's dtype"
        );
        let rel = ((&half - &full).norm() / full.norm()).double_value(&[]);
        assert!(
            // bf16 keeps 8 mantissa bits (eps 3.9e-3); over ~20 layers of random weights the
            // error measured 0.5–4.3 % for most draws and 12 % for one NCSN++ draw (the tests of
            // this binary share libtorch's generator, so the draws vary). A wrong path is off by
            // O(1).
            rel < 0.25 && rel > 0.0,
            "{} bf16 relative error {rel}",
            cfg.name()
        );
    }
}
