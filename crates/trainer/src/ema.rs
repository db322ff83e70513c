//! Exponential moving average of parameters: ema ← d·ema + (1 − d)·θ after every optimizer step.
//!
//! With `warmup` the decay of the n-th update (n counted from 1, restarted in every stage) is
//! d_n = min(d, (1 + n)/(10 + n)), the schedule of SlimFlow's (and score_sde's) EMA: the average
//! forgets the random initialisation within the first few thousand updates. Without it the decay is
//! the fixed d from the first update (rfpp's EMA), which suits a student initialised from a trained
//! teacher but keeps d^N of a random initialisation after N updates (0.999999^500000 ≈ 61 %).

use tch::Tensor;

/// EMA copies of an ordered parameter list.
#[derive(Debug)]
pub struct Ema {
    /// Decay d per step (the ceiling of the warm-up).
    pub decay: f64,
    /// Whether the decay warms up as min(d, (1 + n)/(10 + n)).
    pub warmup: bool,
    /// Updates applied so far (n after the last update).
    pub num_updates: u64,
    /// Averaged values, one per parameter.
    pub values: Vec<Tensor>,
}

impl Ema {
    /// Starts the average at the current parameters, with no update applied yet.
    pub fn new(decay: f64, warmup: bool, params: &[Tensor]) -> Self {
        Ema {
            decay,
            warmup,
            num_updates: 0,
            values: params.iter().map(|p| p.detach().copy()).collect(),
        }
    }

    /// The decay of update number `n` (1-based).
    pub fn decay_at(&self, n: u64) -> f64 {
        if self.warmup {
            let n = n as f64;
            self.decay.min((1.0 + n) / (10.0 + n))
        } else {
            self.decay
        }
    }

    /// One update: counts it, then averages with its decay (one multi-tensor operation).
    pub fn update(&mut self, params: &[Tensor]) -> Result<(), slimflow_c10d::C10dError> {
        self.num_updates += 1;
        let d = self.decay_at(self.num_updates);
        // shadow − (1 − d)·(shadow − θ), the reference's form (one rounding less than
        // d·s + (1 − d)·θ)
        slimflow_c10d::foreach::ema(&mut self.values, params, 1.0 - d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_decay_follows_the_closed_form() {
        let p = Tensor::from_slice(&[0.0f64]);
        let mut ema = Ema::new(0.9, false, std::slice::from_ref(&p));
        let p = Tensor::from_slice(&[1.0f64]);
        for _ in 0..3 {
            ema.update(std::slice::from_ref(&p)).unwrap();
        }
        // 1 − 0.9³ = 0.271
        assert!((ema.values[0].double_value(&[0]) - 0.271).abs() < 1e-12);
        assert_eq!(ema.num_updates, 3);
    }

    #[test]
    fn warmup_follows_its_closed_form() {
        // Shadow 0, parameter constant 1: after N updates the shadow is 1 − Π_{n=1..N} d_n with
        // d_n = min(d, (1+n)/(10+n)). The product telescopes while the warm-up binds:
        // Π (1+n)/(10+n) = (2·3·…·(N+1)) / (11·12·…·(N+10)) = 10!·(N+1)! / (N+10)!.
        let p0 = Tensor::from_slice(&[0.0f64]);
        let mut ema = Ema::new(0.999_999, true, std::slice::from_ref(&p0));
        let one = Tensor::from_slice(&[1.0f64]);
        assert!((ema.decay_at(1) - 2.0 / 11.0).abs() < 1e-15);
        let n = 50u64;
        for _ in 0..n {
            ema.update(std::slice::from_ref(&one)).unwrap();
        }
        let mut log_prod = 0.0f64;
        for k in 1..=n {
            log_prod += ((1 + k) as f64).ln() - ((10 + k) as f64).ln();
        }
        let expected = 1.0 - log_prod.exp();
        let got = ema.values[0].double_value(&[0]);
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
        // The closed form of the product itself: 10!·51!/60!.
        let closed: f64 = (1..=10).map(|k| k as f64).product::<f64>()
            / (52..=60).map(|k| k as f64).product::<f64>();
        assert!((log_prod.exp() - closed).abs() <= 1e-12 * closed);
        // The ceiling binds once (1+n)/(10+n) > d: n > (10d − 1)/(1 − d) ≈ 9 000 000 for d = 1 − 1e-6.
        assert_eq!(ema.decay_at(20_000_000), 0.999_999);
        assert!(ema.decay_at(1_000_000) < 0.999_999);
        // Without the warm-up the first update keeps 0.999999 of the start.
        let mut fixed = Ema::new(0.999_999, false, std::slice::from_ref(&p0));
        fixed.update(std::slice::from_ref(&one)).unwrap();
        assert!((fixed.values[0].double_value(&[0]) - 1e-6).abs() < 1e-15);
    }
}
