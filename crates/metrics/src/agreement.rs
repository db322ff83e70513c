//! Agreement between a one-step sample and the many-step ODE solution from the same noise.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// E‖a − b‖² (mean over samples of the squared Euclidean norm over all other dimensions), a, b: [B, …].
pub fn mean_squared_distance(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.size() != b.size() || a.dim() < 2 {
        return Err(Error::BadInput(format!(
            "shapes {:?} and {:?} differ",
            a.size(),
            b.size()
        )));
    }
    Ok((a - b)
        .to_kind(Kind::Double)
        .square()
        .flatten(1, -1)
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed() {
        let a = Tensor::from_slice(&[0.0f32, 0.0, 1.0, 1.0]).reshape([2, 2]);
        let b = Tensor::from_slice(&[3.0f32, 4.0, 1.0, 1.0]).reshape([2, 2]);
        assert_eq!(mean_squared_distance(&a, &b).unwrap(), 12.5);
        assert!(mean_squared_distance(&a, &b.reshape([4, 1])).is_err());
    }
}
