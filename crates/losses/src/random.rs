//! Tensors drawn from the caller's RNG (never from libtorch's global generator).

use rand::{Rng, RngCore};
use rand_distr::{Distribution, StandardNormal};
use tch::{Device, Tensor};

use crate::error::Result;

/// Standard normal float32 tensor of `shape` from `rng`.
pub fn normal_tensor<R: Rng + ?Sized>(rng: &mut R, shape: &[i64], device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let x: f64 = StandardNormal.sample(rng);
            x as f32
        })
        .collect();
    slimflow_tensor_io::upload(&Tensor::from_slice(&v).reshape(shape), device)
}

/// The flow's source distribution, from which objectives draw fresh noise (the flow-guided term's
/// ε) with the caller's RNG. [`StandardGaussian`] is N(0, I); a trainer with another source (a 2-D
/// toy distribution) implements it for that.
pub trait NoiseSource: std::fmt::Debug {
    /// Samples of shape `shape` = [B, …] (float32) on `device`.
    fn sample(&self, rng: &mut dyn RngCore, shape: &[i64], device: Device) -> Result<Tensor>;
}

/// N(0, I), drawn by [`normal_tensor`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StandardGaussian;

impl NoiseSource for StandardGaussian {
    fn sample(&self, rng: &mut dyn RngCore, shape: &[i64], device: Device) -> Result<Tensor> {
        Ok(normal_tensor(rng, shape, device))
    }
}

/// Float32 tensor [values.len()] on `device` from f64 values (e.g. sampled times).
pub fn uniform_tensor(values: &[f64], device: Device) -> Tensor {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    slimflow_tensor_io::upload(&Tensor::from_slice(&v), device)
}
