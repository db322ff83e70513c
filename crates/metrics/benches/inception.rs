//! FID Inception feature extraction (resize to 299, pool3) in images/s for 32×32 inputs at batch 50,
//! on CPU and, when present, CUDA. Random weights: the cost does not depend on their values.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use slimflow_metrics::inception::FidInception;
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 50;

fn inception(c: &mut Criterion) {
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    }
    let mut g = c.benchmark_group("fid_inception_pool3");
    g.sample_size(10);
    g.throughput(Throughput::Elements(BATCH as u64));
    for device in devices {
        let net = FidInception::with_random_weights(device, 0);
        let x = Tensor::rand([BATCH, 3, 32, 32], (Kind::Float, device));
        g.bench_function(format!("32px_b{BATCH}/{device:?}"), |b| {
            b.iter(|| {
                let f = net.pool3(&x).expect("features");
                if device.is_cuda() {
                    tch::Cuda::synchronize(0);
                }
                f
            })
        });
    }
    g.finish();
}

criterion_group!(benches, inception);
criterion_main!(benches);
