//! Class conditioning reaches the network in every objective: the same batch and draws with other
//! labels give another loss, and the flow-guided term draws ε's labels (and ε itself, from the
//! configured source) exactly as documented.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use slimflow_sampling::Network;
use slimflow_schedules::TimeDist;
use tch::{Device, Kind, Tensor};

use crate::lpips::{Lpips, LpipsConfig};
use crate::objective::test_net::TestNet;
use crate::objective::{Batch, Distill, DistillForm, FlowGuided, Objective, Rf};
use crate::premetric::PremetricConfig;
use crate::random::{uniform_tensor, NoiseSource, StandardGaussian};
use crate::{LpipsHuber, Result};

/// A network of 2-D points conditioned on 3 classes.
fn conditional_net() -> TestNet {
    TestNet::new(&[2], 3)
}

fn batch(shape: &[i64], labels: &[i64]) -> Batch {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    Batch {
        x0: crate::normal_tensor(&mut rng, shape, Device::Cpu),
        x1: crate::normal_tensor(&mut rng, shape, Device::Cpu).clamp(-1.0, 1.0),
        labels: Some(Tensor::from_slice(labels)),
    }
}

/// The loss of `objective` on the batch with labels `a` and with labels `b`, same draws.
fn losses_with(
    objective: &dyn Objective,
    model: &dyn Network,
    shape: &[i64],
    a: &[i64],
    b: &[i64],
) -> (f64, f64) {
    let f = |labels: &[i64]| {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        objective
            .loss(model, &batch(shape, labels), &mut rng)
            .unwrap()
            .total
            .double_value(&[])
    };
    assert_eq!(f(a), f(a), "the loss is a function of the draws");
    (f(a), f(b))
}

const A: [i64; 6] = [0, 1, 2, 0, 1, 2];
const B: [i64; 6] = [2, 2, 1, 1, 0, 0];

#[test]
fn rf_and_distill_pass_the_batch_labels() {
    let m = conditional_net();
    let rf = Rf {
        time: TimeDist::Uniform { eps: 1e-3 },
        premetric: PremetricConfig::L2Squared {},
    };
    let (a, b) = losses_with(&rf, &m, &[6, 2], &A, &B);
    assert!((a - b).abs() > 1e-6, "rf: {a} vs {b}");
    for form in [DistillForm::Euler, DistillForm::Slimflow] {
        let d = Distill {
            eps: 1e-3,
            form,
            premetric: &PremetricConfig::L2Squared {},
            guide: None,
        };
        let (a, b) = losses_with(&d, &m, &[6, 2], &A, &B);
        assert!((a - b).abs() > 1e-6, "distill {form:?}: {a} vs {b}");
    }
}

#[test]
fn lpips_huber_passes_the_batch_labels() {
    let m = TestNet::new(&[3, 16, 16], 3);
    let lp = Lpips::with_random_weights(LpipsConfig::default(), Device::Cpu, 0);
    let obj = LpipsHuber {
        lpips: lp,
        time: TimeDist::Uniform { eps: 1e-3 },
        divide_by_one_minus_t: false,
    };
    let (a, b) = losses_with(&obj, &m, &[6, 3, 16, 16], &A, &B);
    assert!((a - b).abs() > 1e-7, "lpips-huber: {a} vs {b}");
}

/// A source that is not N(0, I): every entry the constant `c`.
#[derive(Debug)]
struct Constant(f64);

impl NoiseSource for Constant {
    fn sample(&self, _: &mut dyn rand::RngCore, shape: &[i64], device: Device) -> Result<Tensor> {
        Ok(Tensor::full(shape, self.0, (Kind::Float, device)))
    }
}

#[test]
fn flow_guided_draws_uniform_labels_and_source_noise_for_its_fresh_samples() {
    let student = conditional_net();
    let teacher = conditional_net();
    let b = batch(&[6, 2], &A);
    for source in [&StandardGaussian as &dyn NoiseSource, &Constant(2.5)] {
        let fg = FlowGuided {
            teacher: &teacher,
            eps: 1e-3,
            t_range: (0.2, 0.8),
            premetric: &PremetricConfig::L2Squared {},
            form: DistillForm::Euler,
            source,
        };
        let term = fg
            .term(&student, &b, &mut ChaCha20Rng::seed_from_u64(5))
            .unwrap()
            .double_value(&[]);
        // the same draws by hand: ε from the source, then t', then one label per sample
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let noise = source.sample(&mut rng, &[6, 2], Device::Cpu).unwrap();
        let raw: Vec<f64> = (0..6).map(|_| rng.gen::<f64>()).collect();
        let labels: Vec<i64> = (0..6).map(|_| rng.gen_range(0..3)).collect();
        let t_raw = uniform_tensor(&raw, Device::Cpu);
        let with = |l: &[i64]| {
            fg.term_with(&student, &noise, &t_raw, Some(&Tensor::from_slice(l)))
                .unwrap()
                .double_value(&[])
        };
        assert!(
            (term - with(&labels)).abs() < 1e-9,
            "{term} vs {}",
            with(&labels)
        );
        let other: Vec<i64> = labels.iter().map(|l| (l + 1) % 3).collect();
        assert!(
            (term - with(&other)).abs() > 1e-7,
            "labels reach both networks"
        );
    }
    // the batch's own labels are not ε's: changing them leaves the term alone
    let fg = FlowGuided {
        teacher: &teacher,
        eps: 1e-3,
        t_range: (0.2, 0.8),
        premetric: &PremetricConfig::L2Squared {},
        form: DistillForm::Euler,
        source: &StandardGaussian,
    };
    let run = |labels: &[i64]| {
        fg.term(
            &student,
            &batch(&[6, 2], labels),
            &mut ChaCha20Rng::seed_from_u64(5),
        )
        .unwrap()
        .double_value(&[])
    };
    assert_eq!(run(&A), run(&B));
}
