//! `Model::to_channels_last`: the convolution kernels get NHWC strides, the networks compute the
//! same velocities and gradients up to summation order, and checkpoints stay in the default layout.

use std::collections::BTreeMap;

use slimflow_models::{ArchConfig, Model};
use tch::{Device, Kind, Tensor};

fn archs() -> Vec<ArchConfig> {
    ["slimflow-3.4m", "edm-ncsnpp-cifar10", "edm-adm-imagenet64"]
        .iter()
        .map(|n| ArchConfig::preset(n).unwrap().cpu_sized())
        .collect()
}

/// libtorch's generator is process-wide and drives every initialisation: the tests take turns.
fn turn() -> std::sync::MutexGuard<'static, ()> {
    static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SEEDED.lock().unwrap_or_else(|e| e.into_inner())
}

/// A seeded network with every weight perturbed (EDM zero-initialises its output layers).
fn model(arch: &ArchConfig) -> Model {
    tch::manual_seed(3);
    let m = Model::new(arch, Device::Cpu).unwrap();
    // in name order: the same draws land on the same weights in every model
    let mut vars: Vec<(String, Tensor)> = m.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (_, v) in &mut vars {
            let _ = v.g_add_(&(v.randn_like() * 0.02));
        }
    });
    m
}

fn inputs(m: &Model) -> (Tensor, Tensor, Option<Tensor>) {
    let mut shape = vec![2];
    shape.extend(m.config().data_shape());
    let n: i64 = shape.iter().product();
    let x = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .reshape(shape.as_slice());
    let t = Tensor::from_slice(&[0.3f32, 0.8]);
    let labels = (m.config().label_dim() > 0).then(|| Tensor::from_slice(&[1i64, 4]));
    (x, t, labels)
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - b).abs().max().double_value(&[]) / scale
}

#[test]
fn channels_last_networks_compute_the_same_velocities_and_gradients() {
    let _turn = turn();
    for arch in archs() {
        let name = arch.name();
        let plain = model(&arch);
        let mut nhwc = model(&arch);
        let converted = nhwc.to_channels_last();
        assert!(converted > 0, "{name}: no convolution converted");
        for (key, v) in nhwc.vs.variables() {
            // (with one channel, e.g. a resampling filter, every stride order is the same layout)
            if v.dim() == 4 && v.size()[1] > 1 {
                let s = v.stride();
                assert_eq!(s[1], 1, "{name} {key}: channels are not innermost: {s:?}");
            }
        }
        let (x, t, labels) = inputs(&plain);
        let y0 = plain.net().forward_t(&x, &t, labels.as_ref(), false);
        let y1 = nhwc.net().forward_t(&x, &t, labels.as_ref(), false);
        let r = max_rel(&y1, &y0);
        assert!(r < 1e-5, "{name}: velocity differs by {r:.3e} (relative)");
        // gradients reach the converted kernels and agree (eval mode: a dropout mask is drawn in
        // memory order, so it differs between layouts)
        for m in [&plain, &nhwc] {
            let y = m.net().forward_t(&x, &t, labels.as_ref(), false);
            y.square().mean(Kind::Float).backward();
        }
        // relative to the largest gradient entry: some gradients are zero in exact arithmetic
        // (an attention key bias shifts every logit alike) and hold rounding noise alone
        let (g0, g1) = (plain.vs.variables(), nhwc.vs.variables());
        let scale = g0
            .values()
            .filter(|v| v.grad().defined())
            .map(|v| v.grad().abs().max().double_value(&[]))
            .fold(0.0, f64::max);
        assert!(scale > 0.0, "{name}: no gradient");
        for (key, v) in &g0 {
            // buffers (a resampling filter) take no gradient in either layout
            assert_eq!(v.grad().defined(), g1[key].grad().defined(), "{name} {key}");
            if !v.grad().defined() {
                continue;
            }
            let d = (g1[key].grad() - v.grad()).abs().max().double_value(&[]) / scale;
            assert!(
                d < 1e-5,
                "{name} {key}: gradient differs by {d:.3e} of the largest"
            );
        }
    }
}

#[test]
fn a_channels_last_model_saves_the_default_layout() {
    let _turn = turn();
    let arch = &archs()[0];
    let mut m = model(arch);
    let before: BTreeMap<String, Vec<f32>> =
        m.vs.variables()
            .into_iter()
            .map(|(k, v)| (k, Vec::<f32>::try_from(&v.flatten(0, -1)).unwrap()))
            .collect();
    m.to_channels_last();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    m.save(&path, &BTreeMap::new()).unwrap();
    let loaded = Model::load(&path, Device::Cpu).unwrap();
    for (k, v) in loaded.vs.variables() {
        assert!(v.is_contiguous(), "{k} loads in the default layout");
        assert_eq!(
            Vec::<f32>::try_from(&v.flatten(0, -1)).unwrap(),
            before[&k],
            "{k} round-trips bit for bit"
        );
    }
}
