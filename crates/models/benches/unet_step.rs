//! Forward + backward throughput of the image networks at batch 32, 32×32: the 15.7M SlimFlow
//! student (NCSN++) and the 55.7M EDM DDPM++ teacher (SongUNet in the velocity wrapper). Runs on CUDA
//! too when a GPU is present.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

#[path = "../../../benches/peak_memory.rs"]
mod peak_memory;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use slimflow_models::{ArchConfig, Model};
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 32;

fn step(c: &mut Criterion) {
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    }
    let mut g = c.benchmark_group("unet_forward_backward_b32");
    g.sample_size(10);
    g.throughput(Throughput::Elements(BATCH as u64));
    for device in devices {
        for preset in ["slimflow-15.7m", "edm-ddpmpp-cifar10"] {
            let model =
                Model::new(&ArchConfig::preset(preset).expect("preset"), device).expect("model");
            let x = Tensor::randn([BATCH, 3, 32, 32], (Kind::Float, device));
            let t = Tensor::rand([BATCH], (Kind::Float, device));
            let params = model.vs.trainable_variables();
            let run = || {
                for p in &params {
                    let mut gr = p.grad();
                    if gr.defined() {
                        let _ = gr.zero_();
                    }
                }
                let v = model.net().forward_t(&x, &t, None, true);
                v.square().mean(Kind::Float).backward();
                if device.is_cuda() {
                    tch::Cuda::synchronize(0);
                }
            };
            if device == Device::Cpu {
                run(); // gradients allocated once, as in training
                peak_memory::report(
                    &format!("{preset}/{device:?} forward+backward b{BATCH}"),
                    run,
                );
            }
            g.bench_function(format!("{preset}/{device:?}"), |b| b.iter(run));
            if device.is_cuda() {
                // tch's autocast is CUDA float16 mixed precision
                g.bench_function(format!("{preset}/{device:?}/autocast-f16"), |b| {
                    b.iter(|| tch::autocast(true, run))
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
