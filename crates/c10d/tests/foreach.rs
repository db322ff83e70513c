//! The multi-tensor operations against the same arithmetic written tensor by tensor with tch,
//! bit for bit (on the CPU libtorch runs the per-tensor kernels), and their refusals.

use slimflow_c10d::foreach::{self, AdamStep};
use slimflow_c10d::C10dError;
use tch::{Device, Kind, Tensor};

fn lists(seed: i64) -> Vec<Tensor> {
    tch::manual_seed(seed);
    [vec![7, 5], vec![3, 2, 3, 3], vec![11], vec![]]
        .iter()
        .map(|s| Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu)))
        .collect()
}

fn bits(ts: &[Tensor]) -> Vec<Vec<u32>> {
    ts.iter()
        .map(|t| {
            Vec::<f32>::try_from(&t.flatten(0, -1))
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        })
        .collect()
}

fn copies(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter().map(|t| t.copy()).collect()
}

/// Parameters, gradients and moments of Adam's scales, from seeds `seed..seed + 4`.
fn adam_inputs(seed: i64) -> [Vec<Tensor>; 4] {
    let scaled = |s: i64, f: &dyn Fn(&Tensor) -> Tensor| lists(s).iter().map(f).collect();
    [
        lists(seed),
        scaled(seed + 1, &|t| t * 1e-3),
        scaled(seed + 2, &|t| t * 1e-2),
        scaled(seed + 3, &|t| t.square() * 1e-4),
    ]
}

/// The scalars of Adam's step `t` at `lr` (β = 0.9, 0.999; ε = 1e-8).
fn adam_step(t: f64, lr: f64) -> AdamStep {
    AdamStep {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        bias_correction2_sqrt: (1.0f64 - 0.999f64.powf(t)).powf(0.5),
        neg_step_size: -(lr / (1.0 - 0.9f64.powf(t))),
    }
}

#[test]
fn adam_is_the_single_tensor_update() {
    let [p, g, m, v] = adam_inputs(1);
    let s = adam_step(3.0, 2e-4);
    let (fp, mut fm, mut fv) = (copies(&p), copies(&m), copies(&v));
    foreach::adam(&fp, &g, &mut fm, &mut fv, s).unwrap();
    // torch's single-tensor Adam, tensor by tensor (tch's addcmul_/addcdiv_ take no value, so the
    // scalar goes into the first factor: the CPU kernels compute self + (value·t1)·t2 and
    // self + (value·t1)/t2)
    let (sp, mut sm, mut sv) = (copies(&p), copies(&m), copies(&v));
    for i in 0..p.len() {
        let _ = sm[i].lerp_(&g[i], 1.0 - s.beta1);
        let _ = sv[i]
            .g_mul_scalar_(s.beta2)
            .addcmul_(&(&g[i] * (1.0 - s.beta2)), &g[i]);
        let mut d = sv[i].sqrt();
        let _ = d
            .g_div_scalar_(s.bias_correction2_sqrt)
            .g_add_scalar_(s.eps);
        let _ = sp[i]
            .shallow_clone()
            .addcdiv_(&(&sm[i] * s.neg_step_size), &d);
    }
    assert_eq!(bits(&fm), bits(&sm), "first moments");
    assert_eq!(bits(&fv), bits(&sv), "second moments");
    assert_eq!(bits(&fp), bits(&sp), "parameters");
    assert_ne!(bits(&fp), bits(&p), "the parameters moved");
}

#[test]
fn ema_norm_mul_and_zero_match_their_definitions() {
    let p = lists(5);
    let shadow = lists(6);
    let mut fs = copies(&shadow);
    foreach::ema(&mut fs, &p, 0.25).unwrap();
    let single: Vec<Tensor> = shadow
        .iter()
        .zip(&p)
        .map(|(s, p)| {
            let mut d = s - p;
            let _ = d.g_mul_scalar_(0.25);
            s - d
        })
        .collect();
    assert_eq!(bits(&fs), bits(&single));

    // s·d + (1 − d)·p; tch has no `add_` with alpha to write torch's exact rounding (fused on
    // vectorised paths), so the bits are pinned by the trainer's EMA test on torch-recorded values
    let mut fs = copies(&shadow);
    foreach::ema_mul_add(&mut fs, &p, 0.75).unwrap();
    for ((f, s), p) in fs.iter().zip(&shadow).zip(&p) {
        let want = s * 0.75 + p * 0.25;
        let err = (f - &want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]).max(1.0);
        assert!(err <= 2.0 * f64::from(f32::EPSILON) * scale, "{err}");
    }
    assert_ne!(bits(&fs), bits(&shadow), "the average moved");

    let norm = foreach::total_norm(&p).unwrap();
    assert_eq!(norm.size(), Vec::<i64>::new());
    let squares: f64 = p
        .iter()
        .map(|t| t.square().sum(Kind::Double).double_value(&[]))
        .sum();
    assert!((norm.double_value(&[]) - squares.sqrt()).abs() < 1e-5 * squares.sqrt());
    assert_eq!(foreach::total_norm(&[]).unwrap().double_value(&[]), 0.0);

    let scaled = copies(&p);
    foreach::mul(&scaled, &Tensor::from(0.5f32)).unwrap();
    let half: Vec<Tensor> = p.iter().map(|t| t * 0.5).collect();
    assert_eq!(bits(&scaled), bits(&half));

    foreach::zero(&scaled).unwrap();
    assert!(scaled
        .iter()
        .all(|t| t.abs().sum(Kind::Float).double_value(&[]) == 0.0));
    // empty lists do nothing
    foreach::zero(&[]).unwrap();
    foreach::ema(&mut [], &[], 0.5).unwrap();
    foreach::ema_mul_add(&mut [], &[], 0.5).unwrap();
}

#[test]
fn mismatched_lists_are_refused_not_read_past() {
    let p = lists(7);
    let short = copies(&lists(8)[..2]);
    let e = foreach::ema(&mut copies(&p), &short, 0.5).unwrap_err();
    assert!(matches!(e, C10dError::Foreach { op: "ema", .. }), "{e}");
    assert!(
        e.to_string()
            .contains("2 tensors where the other lists have 4"),
        "{e}"
    );
    let s = AdamStep {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        bias_correction2_sqrt: 1.0,
        neg_step_size: -1.0,
    };
    let (mut m, mut v) = (copies(&p), copies(&p));
    assert!(foreach::adam(&p, &short, &mut m, &mut v, s).is_err());
    // pairs libtorch cannot combine (a shape mismatch) are its error, returned as one
    let params = vec![
        Tensor::ones([2], (Kind::Float, Device::Cpu)),
        Tensor::ones([2], (Kind::Float, Device::Cpu)),
    ];
    let shadow = vec![
        Tensor::ones([2], (Kind::Float, Device::Cpu)),
        Tensor::ones([3], (Kind::Float, Device::Cpu)),
    ];
    let e = foreach::ema(&mut copies(&shadow), &params, 0.5).unwrap_err();
    assert!(matches!(e, C10dError::Foreach { op: "ema", .. }), "{e}");
}

#[test]
fn foreach_on_cuda_matches_the_cpu_and_refuses_mixed_devices() {
    if !tch::Cuda::is_available() {
        eprintln!("SKIP foreach_on_cuda: no CUDA device visible");
        return;
    }
    let cuda = Device::Cuda(0);
    let on = |ts: &[Tensor]| -> Vec<Tensor> { ts.iter().map(|t| t.to_device(cuda)).collect() };
    let back =
        |ts: &[Tensor]| -> Vec<Tensor> { ts.iter().map(|t| t.to_device(Device::Cpu)).collect() };
    let [p, g, m, v] = adam_inputs(11);
    let s = adam_step(2.0, 1e-3);
    let (cp, mut cm, mut cv) = (copies(&p), copies(&m), copies(&v));
    foreach::adam(&cp, &g, &mut cm, &mut cv, s).unwrap();
    let (gp, gg) = (on(&p), on(&g));
    let (mut gm, mut gv) = (on(&m), on(&v));
    foreach::adam(&gp, &gg, &mut gm, &mut gv, s).unwrap();
    // the CUDA kernels round differently (fused multiply-adds): equal to float32 rounding
    for (a, b) in back(&gp).iter().zip(&cp) {
        let d = (a - b).abs().max().double_value(&[]);
        assert!(
            d < 1e-6,
            "parameters differ by {d:e} between CUDA and the CPU"
        );
    }
    let n_cpu = foreach::total_norm(&g).unwrap().double_value(&[]);
    let n_cuda = foreach::total_norm(&gg).unwrap();
    assert_eq!(n_cuda.device(), cuda, "the norm stays on the device");
    assert!((n_cuda.double_value(&[]) - n_cpu).abs() <= 1e-6 * n_cpu);
    // a list spanning two devices takes libtorch's per-tensor path or its error, never a crash
    let mixed = vec![p[0].copy(), p[1].to_device(cuda)];
    match foreach::zero(&mixed) {
        Ok(()) => assert!(mixed
            .iter()
            .all(|t| t.abs().sum(Kind::Float).double_value(&[]) == 0.0)),
        Err(e) => assert!(matches!(e, C10dError::Foreach { op: "zero", .. }), "{e}"),
    }
}
