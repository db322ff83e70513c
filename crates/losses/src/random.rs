//! Tensors drawn from the caller's RNG (never from libtorch's global generator).

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use tch::{Device, Kind, Tensor};

/// Standard normal float32 tensor of `shape` from `rng`.
pub fn normal_tensor<R: Rng + ?Sized>(rng: &mut R, shape: &[i64], device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let x: f64 = StandardNormal.sample(rng);
            x as f32
        })
        .collect();
    Tensor::from_slice(&v)
        .reshape(shape)
        .to_kind(Kind::Float)
        .to_device(device)
}

/// Float32 tensor [values.len()] on `device` from f64 values (e.g. sampled times).
pub fn uniform_tensor(values: &[f64], device: Device) -> Tensor {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_slice(&v).to_device(device)
}
