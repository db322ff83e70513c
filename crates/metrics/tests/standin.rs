//! The stand-in feature network: learns the procedural shapes, and its Fréchet distance separates
//! sets the way a sample-quality measure must.

use std::sync::Arc;

use slimflow_data::images::DatasetSpec;
use slimflow_metrics::fid::{FeatureStats, GaussianStats};
use slimflow_metrics::standin::{StandinNet, FEATURES};
use tch::Device;

fn load(spec: &str) -> slimflow_data::images::ImageSet {
    spec.parse::<DatasetSpec>().unwrap().load().unwrap()
}

fn stats(net: &StandinNet, set: &slimflow_data::images::ImageSet) -> GaussianStats {
    let mut acc = FeatureStats::new(FEATURES);
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(200) {
        acc.add(&net.features(&set.batch(chunk)).unwrap()).unwrap();
    }
    GaussianStats::from_features(&acc).unwrap()
}

#[test]
fn learns_shapes_and_ranks_sets() {
    let train = Arc::new(load("shapes:32,count=2000,seed=7"));
    let test = load("shapes:32,count=400,seed=7,split=test");
    let (net, acc) = StandinNet::train(train, &test, 600, 64, 0, Device::Cpu).unwrap();
    assert!(acc > 0.9, "held-out accuracy {acc}");

    let reference = stats(&net, &load("shapes:32,count=1000,seed=1"));
    let same_kind = stats(&net, &load("shapes:32,count=1000,seed=2"));
    // the same shapes, blurred to 8×8 and back: a degraded generator
    let blurred = stats(&net, &load("shapes:32,count=1000,seed=2,size=8").resize(32));
    let (d_same, d_blur) = (
        reference.frechet_distance(&same_kind).unwrap(),
        reference.frechet_distance(&blurred).unwrap(),
    );
    eprintln!(
        "stand-in: held-out accuracy {acc:.3}, FD fresh samples {d_same:.4}, blurred {d_blur:.4}"
    );
    assert!(
        d_blur > 3.0 * d_same,
        "fresh samples {d_same}, blurred {d_blur}"
    );

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("standin.safetensors");
    net.save(&p).unwrap();
    let back = StandinNet::load(&p, Device::Cpu).unwrap();
    let x = load("shapes:32,count=4,seed=3").batch(&[0, 1, 2, 3]);
    assert!(back.features(&x).unwrap().equal(&net.features(&x).unwrap()));
    assert!(StandinNet::load(&dir.path().join("missing.safetensors"), Device::Cpu).is_err());
}
