//! SlimFlow's composite image losses: LPIPS + L1 / LPIPS + L2 as a weighted premetric.

use slimflow_losses::lpips::{Lpips, LpipsConfig};
use slimflow_losses::{Premetric, PremetricConfig, Weighted};
use tch::{Device, Kind, Tensor};

fn images(seed: f64) -> Tensor {
    ((Tensor::arange(2 * 3 * 32 * 32, (Kind::Float, Device::Cpu)) * seed).sin())
        .reshape([2, 3, 32, 32])
}

#[test]
fn weighted_sum_is_the_sum_of_its_parts_per_sample() {
    let lp = Lpips::with_random_weights(LpipsConfig::slimflow(), Device::Cpu, 0);
    let l1 = PremetricConfig::L1 {};
    let l2 = PremetricConfig::L2Squared {};
    let (a, b) = (images(0.37), images(0.91));
    let mix = Weighted::default()
        .with(1.0, &lp)
        .with(0.5, &l1)
        .with(2.0, &l2);
    let got = mix.distance(&a, &b).unwrap();
    let want = lp.distance(&a, &b).unwrap()
        + l1.distance(&a, &b).unwrap() * 0.5
        + l2.distance(&a, &b).unwrap() * 2.0;
    assert_eq!(got.size(), [2]);
    assert!(got.allclose(&want, 1e-6, 1e-7, false));
    // per sample, not batch-reduced: the two samples differ
    let v: Vec<f32> = Vec::try_from(&got).unwrap();
    assert!((v[0] - v[1]).abs() > 1e-6, "{v:?}");
    // zero on identical inputs, gradient to the input only
    let same = mix.distance(&a, &a).unwrap().abs().max().double_value(&[]);
    assert!(same < 1e-6, "{same}");
    let x = a.set_requires_grad(true);
    mix.distance(&x, &b).unwrap().sum(Kind::Float).backward();
    let g = x.grad();
    assert!(
        g.isfinite().all().int64_value(&[]) == 1
            && g.abs().sum(Kind::Float).double_value(&[]) > 0.0
    );
    assert!(Weighted::default()
        .distance(&images(0.1), &images(0.2))
        .is_err());
}
