//! One-step distillation (Liu et al. 2023, §2.3; SlimFlow §4.2): from pairs (z, x1), predict data in one
//! step and minimise d(x̂1, x1). Optionally adds SlimFlow's flow-guided term λ·FGD.
//!
//! Two forms of the prediction ([`DistillForm`]): `euler`, x̂1 = z + (1 − eps)·v_θ(z, eps), exactly
//! the one Euler step of our sampler from eps to 1; and `slimflow`, the reference's
//! `teacher_loss_new`: the network sees the pair's point at t = eps, x_eps = eps·x1 + (1 − eps)·z,
//! and x̂1 = z + v_θ(x_eps, eps). They differ by O(eps) (1e-3); the recipe follows the reference.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use slimflow_sampling::Network;
use slimflow_schedules::x1_from_velocity;
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::objective::{check_batch, Batch, Draws, FlowGuided, LossTerms, Objective};
use crate::premetric::Premetric;

/// Which one-step prediction distillation (and the flow-guided term) trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistillForm {
    /// x̂1 = z + (1 − eps)·v(z, eps): the sampler's one step.
    #[default]
    Euler,
    /// SlimFlow's: x̂1 = z + v(eps·x1 + (1 − eps)·z, eps); flow-guided x' = ε + t'·v_s.
    Slimflow,
}

/// One-step distillation on pairs, with an optional flow-guided regulariser.
#[derive(Debug)]
pub struct Distill<'a> {
    /// Start time of the one-step generator.
    pub eps: f64,
    /// The prediction's form.
    pub form: DistillForm,
    /// Distance between predicted and stored data.
    pub premetric: &'a dyn Premetric,
    /// SlimFlow's flow-guided term and its weight λ.
    pub guide: Option<(FlowGuided<'a>, f64)>,
}

/// x̂1 of the one-step generator from noise z: [B, …].
pub fn one_step(
    student: &dyn Network,
    z: &Tensor,
    eps: f64,
    labels: Option<&Tensor>,
    train: bool,
) -> Tensor {
    let t = Tensor::full([z.size()[0]], eps, (z.kind(), z.device()));
    let v = student.forward_t(z, &t, labels, train);
    x1_from_velocity(z, &t, &v)
}

impl Distill<'_> {
    /// The distillation term alone (batch mean, with graph to the student).
    pub fn distill_term(&self, student: &dyn Network, batch: &Batch) -> Result<Tensor> {
        check_batch(batch)?;
        let (z, x1, labels) = (&batch.x0, &batch.x1, batch.labels.as_ref());
        let x1_hat = match self.form {
            DistillForm::Euler => one_step(student, z, self.eps, labels, true),
            DistillForm::Slimflow => {
                let t = Tensor::full([z.size()[0]], self.eps, (z.kind(), z.device()));
                let x_eps = x1 * self.eps + z * (1.0 - self.eps);
                z + student.forward_t(&x_eps, &t, labels, true)
            }
        };
        Ok(self.premetric.distance(&x1_hat, x1)?.mean(Kind::Float))
    }
}

impl Objective for Distill<'_> {
    fn draw(&self, student: &dyn Network, batch: &Batch, rng: &mut dyn RngCore) -> Result<Draws> {
        match &self.guide {
            Some((guide, _)) => guide.draw(student, batch, rng),
            None => Ok(Draws::default()),
        }
    }

    fn loss_with(&self, student: &dyn Network, batch: &Batch, draws: &Draws) -> Result<LossTerms> {
        let distill = self.distill_term(student, batch)?;
        Ok(match &self.guide {
            Some((guide, weight)) => {
                let g = guide.term_drawn(student, draws)?;
                let total = &distill + &g * *weight;
                LossTerms::new(total, vec![("distill", &distill), ("flow_guided", &g)])
            }
            None => LossTerms::new(distill.shallow_clone(), vec![("distill", &distill)]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::test_net::TestNet;
    use crate::premetric::PremetricConfig;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use tch::Device;

    #[test]
    fn distill_loss_is_the_one_step_error() {
        let m = TestNet::new(&[2], 0);
        let z = Tensor::randn([6, 2], (Kind::Float, Device::Cpu));
        let x1 = Tensor::randn([6, 2], (Kind::Float, Device::Cpu));
        let obj = Distill {
            eps: 1e-3,
            form: DistillForm::Euler,
            premetric: &PremetricConfig::L2Squared {},
            guide: None,
        };
        let batch = Batch {
            x0: z.shallow_clone(),
            x1: x1.shallow_clone(),
            labels: None,
        };
        let terms = obj
            .loss(&m, &batch, &mut ChaCha20Rng::seed_from_u64(0))
            .unwrap();
        let t = Tensor::full([6], 1e-3, (Kind::Float, Device::Cpu));
        let v = m.forward_t(&z, &t, None, false);
        let manual = (&z + v * (1.0 - 1e-3) - &x1)
            .square()
            .mean(Kind::Float)
            .double_value(&[]);
        assert!((terms.total.double_value(&[]) - manual).abs() < 1e-6);
        assert_eq!(terms.parts.len(), 1);
    }
}
