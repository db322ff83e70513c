//! Training objectives: what a stage minimises, given the student and a batch.
//!
//! The training loop owns everything else (optimizer, EMA, checkpoints); an objective only turns a
//! batch into a scalar loss plus named parts for logging.

pub(crate) mod distill;
mod fgd;
mod lpips_huber;
mod rf;
mod spec;

#[cfg(test)]
mod conditioning_tests;
#[cfg(test)]
pub(crate) mod test_net;

pub use distill::{one_step, Distill, DistillForm};
pub use fgd::FlowGuided;
pub use lpips_huber::{lpips_huber_terms, LpipsHuber};
pub use rf::Rf;
pub use spec::{Distance, DistanceSpec, LpipsTerm, ObjectiveSpec};

use rand::RngCore;
use slimflow_sampling::Network;
use tch::Tensor;

use crate::error::Result;

/// A training batch of paired endpoints.
#[derive(Debug)]
pub struct Batch {
    /// Noise endpoints x0 (for pairs: the stored z, possibly annealed): [B, …].
    pub x0: Tensor,
    /// Data endpoints x1: [B, …].
    pub x1: Tensor,
    /// Class labels [B] (int64) for class-conditional models.
    pub labels: Option<Tensor>,
}

/// A scalar loss to minimise and its named parts (batch means) for logging.
///
/// The parts stay on the loss's device as detached scalars: reading one back waits for the
/// device, so a training loop reads them ([`LossTerms::values`]) only on the steps it logs.
#[derive(Debug)]
pub struct LossTerms {
    /// Scalar loss (with autograd graph to the student).
    pub total: Tensor,
    /// Named batch-mean parts, e.g. `("distill", 0.012)`: detached 0-dim tensors.
    pub parts: Vec<(&'static str, Tensor)>,
}

impl LossTerms {
    /// `total` with `parts` detached from the graph.
    pub fn new(total: Tensor, parts: Vec<(&'static str, &Tensor)>) -> Self {
        let parts = parts.into_iter().map(|(k, v)| (k, v.detach())).collect();
        LossTerms { total, parts }
    }

    /// The parts' values, read back from the device in one transfer.
    pub fn values(&self) -> Result<Vec<(&'static str, f64)>> {
        if self.parts.is_empty() {
            return Ok(Vec::new());
        }
        let stacked: Vec<Tensor> = self
            .parts
            .iter()
            .map(|(_, v)| v.to_kind(tch::Kind::Double).reshape([1]))
            .collect();
        let values = Vec::<f64>::try_from(&Tensor::cat(&stacked, 0).to_device(tch::Device::Cpu))?;
        Ok(self.parts.iter().map(|p| p.0).zip(values).collect())
    }
}

/// The random draws of one loss evaluation, each a tensor whose first dimension is the batch's.
///
/// Drawing is separate from computing so that the draws of a batch do not depend on how the batch
/// is cut: data-parallel ranks draw for the whole (micro-)batch from one shared generator and each
/// keeps the rows of its own samples ([`Draws::narrow`]), so N ranks see the draws one process would.
#[derive(Debug, Default)]
pub struct Draws(pub Vec<Tensor>);

impl Draws {
    /// Rows `start..start + len` of every draw.
    pub fn narrow(&self, start: i64, len: i64) -> Draws {
        Draws(self.0.iter().map(|t| t.narrow(0, start, len)).collect())
    }

    pub(crate) fn get(&self, i: usize, what: &'static str) -> Result<&Tensor> {
        self.0
            .get(i)
            .ok_or_else(|| crate::Error::Invalid(format!("missing draw {i} ({what})")))
    }
}

/// Something a training stage minimises.
pub trait Objective {
    /// The objective's randomness for `batch` (times, fresh noise, labels), from `rng` alone.
    fn draw(&self, student: &dyn Network, batch: &Batch, rng: &mut dyn RngCore) -> Result<Draws>;

    /// Loss on `batch` for `student` (in training mode) given the draws [`Objective::draw`] made
    /// for it, or the same rows of draws made for a larger batch.
    fn loss_with(&self, student: &dyn Network, batch: &Batch, draws: &Draws) -> Result<LossTerms>;

    /// Loss on `batch` for `student` (in training mode); randomness from `rng`.
    fn loss(
        &self,
        student: &dyn Network,
        batch: &Batch,
        rng: &mut dyn RngCore,
    ) -> Result<LossTerms> {
        let draws = self.draw(student, batch, rng)?;
        self.loss_with(student, batch, &draws)
    }
}

pub(crate) fn check_batch(batch: &Batch) -> Result<()> {
    if batch.x0.size() != batch.x1.size() {
        return Err(crate::Error::ShapeMismatch {
            what: "batch x0 vs x1",
            a: batch.x0.size(),
            b: batch.x1.size(),
        });
    }
    Ok(())
}

/// One training time per sample of `batch` from `time` (validated), as a [B] tensor of x1's kind
/// and device.
pub(crate) fn draw_times(
    time: &slimflow_schedules::TimeDist,
    batch: &Batch,
    rng: &mut dyn RngCore,
) -> Result<Tensor> {
    use slimflow_schedules::TimeDistribution;
    check_batch(batch)?;
    time.validate()?;
    let b = batch.x1.size()[0] as usize;
    Ok(
        crate::random::uniform_tensor(&time.sample(rng, b), batch.x1.device())
            .to_kind(batch.x1.kind()),
    )
}

/// The straight path at times t and the student's velocity on it, (path, v̂): the prelude of every
/// rectified-flow regression.
pub(crate) fn velocity_on_path(
    student: &dyn Network,
    batch: &Batch,
    t: &Tensor,
) -> Result<(slimflow_schedules::PathSample, Tensor)> {
    check_batch(batch)?;
    let path = slimflow_schedules::RectifiedPath.sample(&batch.x0, &batch.x1, t);
    let v_hat = student.forward_t(&path.x_t, t, batch.labels.as_ref(), true);
    Ok((path, v_hat))
}
