//! Per-sample seeded noise and class labels: row i depends only on `seeds[i]`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::toy::Toy;

/// The ChaCha20 stream of a seed that [`seeded_labels`] draws from (the noise uses stream 0), so a
/// pair's label is independent of its noise.
const LABEL_STREAM: u64 = 1;

/// Standard normal noise of shape [seeds.len(), …sample_shape] (float32), row i drawn from a ChaCha20
/// generator seeded with `seeds[i]` alone.
pub fn seeded_normal(seeds: &[u64], sample_shape: &[i64], device: Device) -> Tensor {
    let per: i64 = sample_shape.iter().product();
    let mut values = Vec::with_capacity(seeds.len() * per as usize);
    for &s in seeds {
        let mut rng = ChaCha20Rng::seed_from_u64(s);
        values.extend((0..per).map(|_| {
            let v: f64 = StandardNormal.sample(&mut rng);
            v as f32
        }));
    }
    let mut shape = vec![seeds.len() as i64];
    shape.extend_from_slice(sample_shape);
    slimflow_tensor_io::upload(
        &Tensor::from_slice(&values).reshape(shape.as_slice()),
        device,
    )
}

/// Samples of the flow's source distribution, shape [seeds.len(), …sample_shape] (float32), row i
/// drawn from a ChaCha20 generator seeded with `seeds[i]` alone. The standard Gaussian is exactly
/// [`seeded_normal`] (any shape); `gaussian` with another std scales it; the other 2-D
/// distributions draw one [`Toy::sample_point`] per seed and need `sample_shape = [2]`.
pub fn seeded_source(
    source: &Toy,
    seeds: &[u64],
    sample_shape: &[i64],
    device: Device,
) -> Result<Tensor> {
    match *source {
        Toy::Gaussian { std: 1.0 } => Ok(seeded_normal(seeds, sample_shape, device)),
        Toy::Gaussian { std } => Ok(seeded_normal(seeds, sample_shape, device) * std),
        _ if sample_shape != [2] => Err(Error::Invalid(format!(
            "the source {source:?} is a 2-D distribution but the samples have shape \
             {sample_shape:?}; only `gaussian` sources fit other shapes"
        ))),
        _ => {
            let values: Vec<f32> = seeds
                .iter()
                .flat_map(|&s| source.sample(&mut ChaCha20Rng::seed_from_u64(s), 1))
                .collect();
            Ok(slimflow_tensor_io::upload(
                &Tensor::from_slice(&values).reshape([seeds.len() as i64, 2]),
                device,
            ))
        }
    }
}

/// Class labels [seeds.len()] (int64), uniform over `0..classes`, label i drawn from its own
/// generator (`seeds[i]`, a stream apart from the noise's): the same at any batch or shard layout.
pub fn seeded_labels(seeds: &[u64], classes: u32, device: Device) -> Result<Tensor> {
    if classes == 0 {
        return Err(Error::Invalid("labels need at least one class".into()));
    }
    let labels: Vec<i64> = seeds
        .iter()
        .map(|&s| {
            let mut rng = ChaCha20Rng::seed_from_u64(s);
            rng.set_stream(LABEL_STREAM);
            rng.gen_range(0..classes) as i64
        })
        .collect();
    Ok(slimflow_tensor_io::upload(
        &Tensor::from_slice(&labels),
        device,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn each_row_depends_only_on_its_seed() {
        let a = seeded_normal(&[5, 6, 7], &[2], Device::Cpu);
        let b = seeded_normal(&[6], &[2], Device::Cpu);
        assert!(a.get(1).equal(&b.get(0)));
        assert!(!a.get(0).equal(&a.get(1)));
        assert_eq!(a.size(), vec![3, 2]);
    }

    #[test]
    fn noise_is_standard_normal() {
        let seeds: Vec<u64> = (0..20_000).collect();
        let x = seeded_normal(&seeds, &[2], Device::Cpu);
        let mean = x.mean(Kind::Double).double_value(&[]);
        let var = x.var(true).double_value(&[]);
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var - 1.0).abs() < 0.03, "{var}");
    }

    #[test]
    fn the_standard_gaussian_source_is_seeded_normal() {
        let seeds = [3u64, 99, 1 << 40];
        let a =
            seeded_source(&Toy::Gaussian { std: 1.0 }, &seeds, &[1, 2, 2], Device::Cpu).unwrap();
        assert!(a.equal(&seeded_normal(&seeds, &[1, 2, 2], Device::Cpu)));
        let b = seeded_source(&Toy::Gaussian { std: 2.0 }, &seeds, &[2], Device::Cpu).unwrap();
        assert!(b.allclose(
            &(seeded_normal(&seeds, &[2], Device::Cpu) * 2.0),
            0.0,
            0.0,
            false
        ));
    }

    #[test]
    fn other_sources_are_per_seed_2d_samples() {
        let ring = Toy::GaussianRing {
            modes: 4,
            radius: 3.0,
            std: 0.05,
        };
        let seeds: Vec<u64> = (0..2000).collect();
        let x = seeded_source(&ring, &seeds, &[2], Device::Cpu).unwrap();
        assert_eq!(x.size(), vec![2000, 2]);
        let r = x.square().sum_dim_intlist(1, false, Kind::Float).sqrt();
        assert!((r.mean(Kind::Double).double_value(&[]) - 3.0).abs() < 0.02);
        // row i depends only on seed i
        let one = seeded_source(&ring, &seeds[7..8], &[2], Device::Cpu).unwrap();
        assert!(one.get(0).equal(&x.get(7)));
        assert!(seeded_source(&ring, &seeds, &[1, 2, 2], Device::Cpu).is_err());
    }

    #[test]
    fn labels_are_uniform_per_seed_and_independent_of_the_batch() {
        let seeds: Vec<u64> = (1000..31_000).collect();
        let l = seeded_labels(&seeds, 10, Device::Cpu).unwrap();
        let v = Vec::<i64>::try_from(&l).unwrap();
        let mut counts = [0usize; 10];
        for &c in &v {
            counts[c as usize] += 1;
        }
        for c in counts {
            assert!((c as f64 - 3000.0).abs() < 200.0, "{counts:?}");
        }
        let part = seeded_labels(&seeds[5..9], 10, Device::Cpu).unwrap();
        assert_eq!(Vec::<i64>::try_from(&part).unwrap(), v[5..9].to_vec());
        assert!(seeded_labels(&seeds, 0, Device::Cpu).is_err());
    }
}
