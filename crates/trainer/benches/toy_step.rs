//! Throughput of the toy pipeline's hot paths on CPU:
//! - one training step (RF loss, backward, clip, Adam, EMA) of the 3×256 MLP at batch 512, with our
//!   saveable Adam against tch's built-in `nn::Adam` as the baseline in the same process;
//! - sampling 2000 points with one Euler step, 100 Euler steps and RK45 (tol 1e-5);
//! - generating 2000 toy pairs from seeded noise with the random-init 3×256 MLP teacher and RK45 at
//!   the reference tolerance 1e-5, in pairs/s.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slimflow_data::{seeded_normal, Toy};
use slimflow_losses::{Batch, Objective, Rf};
use slimflow_models::{ArchConfig, Model};
use slimflow_sampling::{solve, SolverConfig};
use slimflow_trainer::config::OptimConfig;
use slimflow_trainer::optim::{sanitize_and_clip, zero_grad, Adam};
use tch::nn::OptimizerConfig;
use tch::{Device, Tensor};

const BATCH: usize = 512;

fn batch(rng: &mut ChaCha20Rng) -> Batch {
    let target = Toy::Checkerboard {
        squares: 4,
        size: 4.0,
    };
    Batch {
        x0: Toy::Gaussian { std: 1.0 }.sample_tensor(rng, BATCH, Device::Cpu),
        x1: target.sample_tensor(rng, BATCH, Device::Cpu),
        labels: None,
    }
}

fn training_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("toy_train_step");
    g.throughput(Throughput::Elements(BATCH as u64));
    let objective = Rf {
        time: Default::default(),
        premetric: Default::default(),
    };

    let model =
        Model::new(&ArchConfig::preset("mlp-toy").expect("preset"), Device::Cpu).expect("model");
    let params: Vec<Tensor> = model.vs.trainable_variables();
    let mut adam = Adam::new(&OptimConfig::default(), &params);
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    g.bench_function("slimflow_adam", |b| {
        b.iter(|| {
            let terms = objective
                .loss(&model, &batch(&mut rng), &mut rng)
                .expect("loss");
            zero_grad(&params).expect("zero");
            terms.total.backward();
            let _ = sanitize_and_clip(&params, 1.0).expect("clip");
            adam.step(&params, 2e-4).expect("adam");
        })
    });

    let model =
        Model::new(&ArchConfig::preset("mlp-toy").expect("preset"), Device::Cpu).expect("model");
    let mut opt = tch::nn::Adam::default()
        .build(&model.vs, 2e-4)
        .expect("optimizer");
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    g.bench_function("tch_nn_adam_baseline", |b| {
        b.iter(|| {
            let terms = objective
                .loss(&model, &batch(&mut rng), &mut rng)
                .expect("loss");
            opt.zero_grad();
            terms.total.backward();
            opt.clip_grad_norm(1.0);
            opt.step();
        })
    });
    g.finish();
}

fn sampling(c: &mut Criterion) {
    let mut g = c.benchmark_group("toy_sampling_2000");
    g.throughput(Throughput::Elements(2000));
    g.sample_size(10);
    let model =
        Model::new(&ArchConfig::preset("mlp-toy").expect("preset"), Device::Cpu).expect("model");
    let z = Tensor::randn([2000, 2], (tch::Kind::Float, Device::Cpu));
    for (name, solver) in [
        ("euler_1", SolverConfig::Euler { steps: 1 }),
        ("euler_100", SolverConfig::Euler { steps: 100 }),
        (
            "rk45_1e-5",
            SolverConfig::Rk45 {
                rtol: 1e-5,
                atol: 1e-5,
            },
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| solve(&solver, &model.eval_field(None), &z, 1e-3, 1.0, false).expect("solve"))
        });
    }
    g.finish();
}

fn pair_generation(c: &mut Criterion) {
    let mut g = c.benchmark_group("data");
    let teacher =
        Model::new(&ArchConfig::preset("mlp-toy").expect("preset"), Device::Cpu).expect("model");
    let field = teacher.eval_field(None);
    let solver = SolverConfig::Rk45 {
        rtol: 1e-5,
        atol: 1e-5,
    };
    let seeds: Vec<u64> = (0..2000).collect();
    g.throughput(Throughput::Elements(seeds.len() as u64));
    g.sample_size(10);
    g.bench_function("generate_pairs_mlp_toy_rk45_2000", |b| {
        b.iter(|| {
            let z = seeded_normal(&seeds, &[2], Device::Cpu);
            solve(&solver, &field, &z, 1e-3, 1.0, false).expect("solve")
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = training_step, sampling, pair_generation
}
criterion_main!(benches);
