//! Data throughput on 2 cores: the image loader (32×32×3, flips, shuffles) and random-access reads
//! from a pair store in the page cache (f32 and f16), in samples/s. Pair generation with the toy
//! teacher needs a network and is measured in the trainer's `toy_step` benchmark.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use slimflow_data::images::DatasetSpec;
use slimflow_data::loader::{Loader, LoaderConfig, Position};
use slimflow_data::{PairDtype, PairStore, PairStoreManifest};
use tch::{Device, Kind, Tensor};

const BATCH: usize = 128;

fn loader(c: &mut Criterion) {
    let set = Arc::new(
        "shapes:32,count=5000"
            .parse::<DatasetSpec>()
            .expect("spec")
            .load()
            .expect("shapes"),
    );
    let mut g = c.benchmark_group("data");
    g.throughput(Throughput::Elements(BATCH as u64));
    let cfg = LoaderConfig {
        batch_size: BATCH,
        seed: 0,
        shuffle: true,
        hflip: true,
        prefetch: 4,
    };
    let mut l = Loader::new(set, cfg, Position::default()).expect("loader");
    g.bench_function("image_loader_32x32x3_b128", |b| {
        b.iter(|| l.next_batch().expect("batch"))
    });

    for dtype in [PairDtype::F32, PairDtype::F16] {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = 20_000u64;
        let m = PairStoreManifest::new(n, 5_000, vec![3, 32, 32], 0, "bench".into(), "{}".into())
            .expect("manifest")
            .with_dtype(dtype);
        let store = PairStore::create_or_resume(dir.path(), m).expect("store");
        for i in 0..store.num_shards() {
            let z = Tensor::randn([5_000, 3, 32, 32], (Kind::Float, Device::Cpu));
            store.write_shard(i, &z, &(&z * 0.5), None).expect("shard");
        }
        let reader = store.reader().expect("reader");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        g.bench_function(format!("pair_reader_random_{dtype:?}_32x32x3_b128"), |b| {
            b.iter(|| {
                let idx: Vec<u64> = (0..BATCH).map(|_| rng.gen_range(0..n)).collect();
                reader.get(&idx).expect("pairs")
            })
        });
    }

    g.finish();
}

criterion_group!(benches, loader);
criterion_main!(benches);
