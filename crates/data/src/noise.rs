//! Per-sample seeded Gaussian noise.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use tch::{Device, Kind, Tensor};

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
    Tensor::from_slice(&values)
        .reshape(shape.as_slice())
        .to_kind(Kind::Float)
        .to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
