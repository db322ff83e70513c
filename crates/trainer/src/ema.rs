//! Exponential moving average of parameters: ema ← d·ema + (1 − d)·θ after every optimizer step.

use tch::Tensor;

/// EMA copies of an ordered parameter list.
#[derive(Debug)]
pub struct Ema {
    /// Decay d per step.
    pub decay: f64,
    /// Averaged values, one per parameter.
    pub values: Vec<Tensor>,
}

impl Ema {
    /// Starts the average at the current parameters.
    pub fn new(decay: f64, params: &[Tensor]) -> Self {
        Ema {
            decay,
            values: params.iter().map(|p| p.detach().copy()).collect(),
        }
    }

    /// One update.
    pub fn update(&mut self, params: &[Tensor]) {
        tch::no_grad(|| {
            for (e, p) in self.values.iter_mut().zip(params) {
                let _ = e
                    .g_mul_scalar_(self.decay)
                    .g_add_(&(p * (1.0 - self.decay)));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_follows_the_closed_form() {
        let p = Tensor::from_slice(&[0.0f64]);
        let mut ema = Ema::new(0.9, std::slice::from_ref(&p));
        let p = Tensor::from_slice(&[1.0f64]);
        for _ in 0..3 {
            ema.update(std::slice::from_ref(&p));
        }
        // 1 − 0.9³ = 0.271
        assert!((ema.values[0].double_value(&[0]) - 0.271).abs() < 1e-12);
    }
}
