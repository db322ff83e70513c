//! SlimFlow's flow-guided regulariser (Zhu et al. 2024, §4.2, eq. 9), in our time convention.
//!
//! On fresh noise ε: the student's one-step prediction x̂1_s = ε + (1 − eps)·v_s with v_s = v_θ(ε, eps);
//! a time t' ~ U(lo, hi) (0.2, 0.8 in the paper); the point x' = ε + (t' − eps)·v_s on the student's
//! straight line (no gradient); the frozen 2-RF's prediction from there, x̂1* = x' + (1 − t')·v_T(x', t')
//! (no gradient). The term is d(x̂1_s, x̂1*): the one-step generator is pulled towards what the
//! 2-rectified flow would produce from the student's own intermediate points. With eps → 0 this is the
//! paper's d(ε + v_s, ε + v*) with v* = x' + (1 − t')·v_T − ε.

use rand::{Rng, RngCore};
use slimflow_models::Model;
use slimflow_schedules::x1_from_velocity;
use tch::{Kind, Tensor};

use crate::distill_one_step;
use crate::error::{Error, Result};
use crate::objective::Batch;
use crate::premetric::Premetric;
use crate::random::{normal_tensor, uniform_tensor};

/// The flow-guided term with its frozen 2-RF teacher.
#[derive(Debug)]
pub struct FlowGuided<'a> {
    /// The frozen 2-rectified flow (never receives gradients).
    pub teacher: &'a Model,
    /// Start time of the one-step generator.
    pub eps: f64,
    /// Range of t' (SlimFlow: 0.2 to 0.8).
    pub t_range: (f64, f64),
    /// Distance between the two predictions.
    pub premetric: &'a dyn Premetric,
}

impl FlowGuided<'_> {
    /// The term's batch mean (with graph to the student).
    pub fn term(&self, student: &Model, batch: &Batch, rng: &mut dyn RngCore) -> Result<Tensor> {
        let (lo, hi) = self.t_range;
        if !(self.eps <= lo && lo < hi && hi <= 1.0) {
            return Err(Error::Invalid(format!(
                "flow-guided t range ({lo}, {hi}) must satisfy eps ≤ lo < hi ≤ 1"
            )));
        }
        let x1 = &batch.x1;
        let b = x1.size()[0] as usize;
        let eps_noise = normal_tensor(rng, &x1.size(), x1.device()).to_kind(x1.kind());
        let x1_student =
            distill_one_step(student, &eps_noise, self.eps, batch.labels.as_ref(), true);
        let ts: Vec<f64> = (0..b).map(|_| rng.gen_range(lo..hi)).collect();
        let t = uniform_tensor(&ts, x1.device()).to_kind(x1.kind());
        let target = tch::no_grad(|| {
            // v_s from the student's prediction: x̂1_s = ε + (1 − eps)·v_s.
            let v_s = (x1_student.detach() - &eps_noise) / (1.0 - self.eps);
            let x_mid = &eps_noise + slimflow_schedules::expand_t(&(&t - self.eps), &v_s) * &v_s;
            let v_t = self
                .teacher
                .net()
                .forward_t(&x_mid, &t, batch.labels.as_ref(), false);
            x1_from_velocity(&x_mid, &t, &v_t)
        });
        Ok(self
            .premetric
            .distance(&x1_student, &target)?
            .mean(Kind::Float))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::premetric::PremetricConfig;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use slimflow_models::ArchConfig;
    use tch::Device;

    #[test]
    fn teacher_gets_no_gradient_and_student_does() {
        let cfg = ArchConfig::preset("mlp-toy-small").unwrap();
        let student = Model::new(&cfg, Device::Cpu).unwrap();
        let teacher = Model::new(&cfg, Device::Cpu).unwrap();
        let fg = FlowGuided {
            teacher: &teacher,
            eps: 1e-3,
            t_range: (0.2, 0.8),
            premetric: &PremetricConfig::L2Squared {},
        };
        let batch = Batch {
            x0: Tensor::zeros([16, 2], (Kind::Float, Device::Cpu)),
            x1: Tensor::zeros([16, 2], (Kind::Float, Device::Cpu)),
            labels: None,
        };
        let term = fg
            .term(&student, &batch, &mut ChaCha20Rng::seed_from_u64(1))
            .unwrap();
        assert!(term.double_value(&[]) > 0.0);
        term.backward();
        for (name, var) in teacher.vs.variables() {
            assert!(
                !var.grad().defined() || var.grad().abs().sum(Kind::Float).double_value(&[]) == 0.0,
                "teacher {name}"
            );
        }
        for (name, var) in student.vs.variables() {
            assert!(var.grad().defined(), "student {name}");
        }
    }

    #[test]
    fn term_vanishes_when_the_teacher_continues_the_students_line() {
        // A teacher whose field is the student's own constant velocity reproduces x̂1_s exactly. With
        // the student = teacher = a field that ignores x and t this holds for any weights: use zero
        // weights so v ≡ bias.
        let cfg = ArchConfig::preset("mlp-toy-small").unwrap();
        let student = Model::new(&cfg, Device::Cpu).unwrap();
        let mut teacher = Model::new(&cfg, Device::Cpu).unwrap();
        tch::no_grad(|| {
            for (name, mut v) in student.vs.variables() {
                if name.ends_with("weight") {
                    let _ = v.zero_();
                }
            }
        });
        teacher.vs.copy(&student.vs).unwrap();
        let fg = FlowGuided {
            teacher: &teacher,
            eps: 1e-3,
            t_range: (0.2, 0.8),
            premetric: &PremetricConfig::L2Squared {},
        };
        let batch = Batch {
            x0: Tensor::zeros([8, 2], (Kind::Float, Device::Cpu)),
            x1: Tensor::zeros([8, 2], (Kind::Float, Device::Cpu)),
            labels: None,
        };
        let term = fg
            .term(&student, &batch, &mut ChaCha20Rng::seed_from_u64(2))
            .unwrap();
        assert!(term.double_value(&[]) < 1e-10);
        let bad = FlowGuided {
            t_range: (0.8, 0.2),
            ..fg
        };
        assert!(bad
            .term(&student, &batch, &mut ChaCha20Rng::seed_from_u64(2))
            .is_err());
    }
}
