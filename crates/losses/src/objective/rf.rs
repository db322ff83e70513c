//! The rectified-flow objective (Liu et al. 2023, eq. 2): t ~ p(t), x_t = t·x1 + (1 − t)·x0,
//! loss = E d(v_θ(x_t, t), x1 − x0). With independent (x0, x1) this trains a 1-RF; on teacher pairs it
//! is reflow (2-RF), with p(t) and d chosen by the recipe (U-shaped t and pseudo-Huber for rfpp).

use rand::RngCore;
use slimflow_sampling::Network;
use slimflow_schedules::TimeDist;
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::objective::{draw_times, velocity_on_path, Batch, Draws, LossTerms, Objective};
use crate::premetric::{Premetric, PremetricConfig};

/// Rectified-flow regression on paired endpoints.
#[derive(Debug, Clone)]
pub struct Rf {
    /// Training-time distribution.
    pub time: TimeDist,
    /// Distance between predicted and target velocity.
    pub premetric: PremetricConfig,
}

impl Rf {
    /// The loss at given times t: [B] (the draws of [`Objective::loss`], made explicit so a
    /// reference step can be replayed).
    pub fn loss_at(&self, student: &dyn Network, batch: &Batch, t: &Tensor) -> Result<LossTerms> {
        let (path, v_hat) = velocity_on_path(student, batch, t)?;
        let per_sample = self.premetric.distance(&v_hat, &path.v)?;
        let total = per_sample.mean(Kind::Float);
        let part = total.detach();
        Ok(LossTerms::new(total, vec![("rf", &part)]))
    }
}

impl Objective for Rf {
    fn draw(&self, _student: &dyn Network, batch: &Batch, rng: &mut dyn RngCore) -> Result<Draws> {
        Ok(Draws(vec![draw_times(&self.time, batch, rng)?]))
    }

    fn loss_with(&self, student: &dyn Network, batch: &Batch, draws: &Draws) -> Result<LossTerms> {
        self.loss_at(student, batch, draws.get(0, "t")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::test_net::TestNet;
    use crate::random::uniform_tensor;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use slimflow_schedules::TimeDistribution;
    use tch::Device;

    #[test]
    fn rf_loss_matches_a_manual_computation_and_reaches_every_parameter() {
        tch::manual_seed(0);
        let m = TestNet::new(&[2], 0);
        let x0 = Tensor::randn([8, 2], (Kind::Float, Device::Cpu));
        let x1 = Tensor::randn([8, 2], (Kind::Float, Device::Cpu));
        let batch = Batch {
            x0: x0.shallow_clone(),
            x1: x1.shallow_clone(),
            labels: None,
        };
        let obj = Rf {
            time: TimeDist::Uniform { eps: 1e-3 },
            premetric: PremetricConfig::L2Squared {},
        };
        let terms = obj
            .loss(&m, &batch, &mut ChaCha20Rng::seed_from_u64(3))
            .unwrap();
        // Same draws by hand.
        let ts = TimeDist::Uniform { eps: 1e-3 }.sample(&mut ChaCha20Rng::seed_from_u64(3), 8);
        let t = uniform_tensor(&ts, Device::Cpu);
        let x_t = t.unsqueeze(1) * &x1 + (1.0 - t.unsqueeze(1)) * &x0;
        let v = m.forward_t(&x_t, &t, None, true);
        let manual = (v - (&x1 - &x0))
            .square()
            .mean(Kind::Float)
            .double_value(&[]);
        assert!((terms.values().unwrap()[0].1 - manual).abs() < 1e-6);
        terms.total.backward();
        for (name, var) in m.vs.variables() {
            assert!(var.grad().defined(), "{name}");
        }
        let bad = Batch {
            x0: Tensor::zeros([8, 3], (Kind::Float, Device::Cpu)),
            x1,
            labels: None,
        };
        assert!(obj
            .loss(&m, &bad, &mut ChaCha20Rng::seed_from_u64(3))
            .is_err());
    }
}
