//! LPIPS-VGG forward + backward (gradient to one input) throughput: at 224×224 batch 16 (rfpp's
//! setting, which dominates its training cost) and at 64×64 batch 64 (SlimFlow's). Random weights:
//! the cost does not depend on their values. Runs on CUDA too when a GPU is present.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

#[path = "../../../benches/peak_memory.rs"]
mod peak_memory;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use slimflow_losses::lpips::{Lpips, LpipsConfig, Pooling};
use slimflow_losses::Premetric;
use tch::{Device, Kind, Tensor};

fn lpips(c: &mut Criterion) {
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    }
    let mut g = c.benchmark_group("lpips_vgg_forward_backward");
    g.sample_size(10);
    for device in devices {
        for (size, batch, pooling) in [(224i64, 16i64, Pooling::Avg), (64, 64, Pooling::Max)] {
            let lp = Lpips::with_random_weights(
                LpipsConfig {
                    pooling,
                    ..Default::default()
                },
                device,
                0,
            );
            let a = (Tensor::rand([batch, 3, size, size], (Kind::Float, device)) * 2.0 - 1.0)
                .set_requires_grad(true);
            let b = Tensor::rand([batch, 3, size, size], (Kind::Float, device)) * 2.0 - 1.0;
            g.throughput(Throughput::Elements(batch as u64));
            let run = || {
                lp.distance(&a, &b)
                    .expect("lpips")
                    .sum(Kind::Float)
                    .backward();
                if device.is_cuda() {
                    tch::Cuda::synchronize(0);
                }
            };
            let name = format!("{size}px_b{batch}/{device:?}");
            if device == Device::Cpu {
                run();
                peak_memory::report(&format!("lpips {name}"), run);
            }
            g.bench_function(&name, |bench| bench.iter(run));
            if device.is_cuda() {
                // tch's autocast is CUDA float16 mixed precision
                g.bench_function(format!("{name}/autocast-f16"), |bench| {
                    bench.iter(|| tch::autocast(true, run))
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, lpips);
criterion_main!(benches);
