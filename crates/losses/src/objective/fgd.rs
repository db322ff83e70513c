//! SlimFlow's flow-guided regulariser (Zhu et al. 2024, §4.2, eq. 9), in our time convention.
//!
//! On fresh noise ε: the student's one-step prediction x̂1_s = ε + (1 − eps)·v_s with v_s = v_θ(ε, eps);
//! a time t' ~ U(lo, hi) (0.2, 0.8 in the paper); the point x' = ε + (t' − eps)·v_s on the student's
//! straight line (no gradient); the frozen 2-RF's prediction from there, x̂1* = x' + (1 − t')·v_T(x', t')
//! (no gradient). The term is d(x̂1_s, x̂1*): the one-step generator is pulled towards what the
//! 2-rectified flow would produce from the student's own intermediate points. With eps → 0 this is the
//! paper's d(ε + v_s, ε + v*) with v* = x' + (1 − t')·v_T − ε.

use rand::{Rng, RngCore};
use slimflow_sampling::Network;
use slimflow_schedules::x1_from_velocity;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::objective::DistillForm;
use crate::objective::{Batch, Draws};
use crate::premetric::Premetric;
use crate::random::{uniform_tensor, NoiseSource};

/// The flow-guided term with its frozen 2-RF teacher.
#[derive(Debug)]
pub struct FlowGuided<'a> {
    /// The frozen 2-rectified flow (never receives gradients).
    pub teacher: &'a dyn Network,
    /// Start time of the one-step generator.
    pub eps: f64,
    /// Range of t' (SlimFlow: 0.2 to 0.8).
    pub t_range: (f64, f64),
    /// Distance between the two predictions.
    pub premetric: &'a dyn Premetric,
    /// `euler`: the student's prediction ε + (1 − eps)·v_s and x' = ε + (t' − eps)·v_s (points of our
    /// one-step sampler's line); `slimflow`: ε + v_s and x' = ε + t'·v_s (the reference).
    pub form: DistillForm,
    /// The flow's source distribution, from which ε is drawn ([`crate::StandardGaussian`]: N(0, I)).
    pub source: &'a dyn NoiseSource,
}

impl FlowGuided<'_> {
    /// The term's batch mean (with graph to the student), drawing ε from the source, t' ~ U(lo, hi)
    /// and, for a class-conditional student, ε's labels uniformly over its classes (ε is fresh noise,
    /// not a pair, so it has no label of its own; student and teacher see the same labels).
    pub fn term(
        &self,
        student: &dyn Network,
        batch: &Batch,
        rng: &mut dyn RngCore,
    ) -> Result<Tensor> {
        let draws = self.draw(student, batch, rng)?;
        self.term_drawn(student, &draws)
    }

    /// The term's draws for `batch`: ε [B, …], the raw times [B] on [0, 1) and, for a
    /// class-conditional student, ε's labels [B].
    pub fn draw(
        &self,
        student: &dyn Network,
        batch: &Batch,
        rng: &mut dyn RngCore,
    ) -> Result<Draws> {
        let x1 = &batch.x1;
        let b = x1.size()[0] as usize;
        let noise = self
            .source
            .sample(rng, &x1.size(), x1.device())?
            .to_kind(x1.kind());
        let raw: Vec<f64> = (0..b).map(|_| rng.gen::<f64>()).collect();
        let t_raw = uniform_tensor(&raw, x1.device()).to_kind(x1.kind());
        let mut draws = vec![noise, t_raw];
        let classes = student.label_dim();
        if classes > 0 {
            let l: Vec<i64> = (0..b).map(|_| rng.gen_range(0..classes)).collect();
            draws.push(slimflow_tensor_io::upload(
                &Tensor::from_slice(&l),
                x1.device(),
            ));
        }
        Ok(Draws(draws))
    }

    /// The term for the draws of [`FlowGuided::draw`] (or rows of them).
    pub fn term_drawn(&self, student: &dyn Network, draws: &Draws) -> Result<Tensor> {
        let noise = draws.get(0, "flow-guided noise")?;
        let t_raw = draws.get(1, "flow-guided t")?;
        let labels = draws.0.get(2);
        self.term_with(student, noise, t_raw, labels)
    }

    /// The term for given draws: `noise` ε [B, …] and `t_raw` [B] uniform on [0, 1), mapped to
    /// t' = lo + (hi − lo)·t_raw.
    pub fn term_with(
        &self,
        student: &dyn Network,
        noise: &Tensor,
        t_raw: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.check_range()?;
        let (lo, hi) = self.t_range;
        let t = t_raw * (hi - lo) + lo;
        let eps_t = Tensor::full([noise.size()[0]], self.eps, (noise.kind(), noise.device()));
        let v_s = student.forward_t(noise, &eps_t, labels, true);
        let (pred, start) = match self.form {
            DistillForm::Euler => (noise + &v_s * (1.0 - self.eps), self.eps),
            DistillForm::Slimflow => (noise + &v_s, 0.0),
        };
        let target = tch::no_grad(|| {
            let v = v_s.detach();
            let x_mid = noise + slimflow_schedules::expand_t(&(&t - start), &v) * &v;
            let v_t = self.teacher.forward_t(&x_mid, &t, labels, false);
            x1_from_velocity(&x_mid, &t, &v_t)
        });
        Ok(self.premetric.distance(&pred, &target)?.mean(Kind::Float))
    }

    fn check_range(&self) -> Result<()> {
        let (lo, hi) = self.t_range;
        if !(self.eps <= lo && lo < hi && hi <= 1.0) {
            return Err(Error::Invalid(format!(
                "flow-guided t range ({lo}, {hi}) must satisfy eps ≤ lo < hi ≤ 1"
            )));
        }
        Ok(())
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
    fn teacher_gets_no_gradient_and_student_does() {
        let student = TestNet::new(&[2], 0);
        let teacher = TestNet::new(&[2], 0);
        let fg = FlowGuided {
            teacher: &teacher,
            eps: 1e-3,
            t_range: (0.2, 0.8),
            premetric: &PremetricConfig::L2Squared {},
            form: DistillForm::Euler,
            source: &crate::StandardGaussian,
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
        let student = TestNet::new(&[2], 0);
        let mut teacher = TestNet::new(&[2], 0);
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
            form: DistillForm::Euler,
            source: &crate::StandardGaussian,
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
