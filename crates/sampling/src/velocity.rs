//! The velocity-field interface seen by solvers.

use std::cell::Cell;

use tch::Tensor;

use crate::domain::Domain;
use crate::edm::Denoiser;
use crate::error::Result;

/// A velocity field v(x, t) in slimflow's time convention (t = 0 noise, t = 1 data).
///
/// x: [B, …]; t: `[B]` (same kind and device as x); returns v: [B, …].
pub trait Velocity {
    /// Evaluates the field. Solvers only call it at times inside [`Velocity::domain`].
    fn velocity(&self, x: &Tensor, t: &Tensor) -> Tensor;

    /// Where the field may be evaluated; the closed interval [0, 1] unless the field says
    /// otherwise (see [`Domain`] for how solvers treat an open end).
    fn domain(&self) -> Domain {
        Domain::UNIT
    }

    /// The field seen as an EDM denoiser D(x_σ, σ), when it has a better one than the generic
    /// conversion through our time ([`crate::edm::VelocityDenoiser`]); EDM's sampler uses it.
    /// An EDM-parameterised network returns its own preconditioned denoiser here, so that the
    /// sampler computes exactly what EDM computes instead of a velocity divided by t_r and
    /// multiplied back.
    fn denoiser(&self) -> Option<&dyn Denoiser> {
        None
    }
}

impl<F> Velocity for F
where
    F: Fn(&Tensor, &Tensor) -> Tensor,
{
    fn velocity(&self, x: &Tensor, t: &Tensor) -> Tensor {
        self(x, t)
    }
}

/// What a training objective needs of a network v_θ(x, t[, labels]).
///
/// Time is slimflow's: t in [0, 1], t = 0 noise, t = 1 data. Implementations turn t into their own
/// network input (an MLP's sinusoidal features of 1000·t, NCSN++'s 999·t, …); callers never
/// pre-scale it.
pub trait Network: std::fmt::Debug {
    /// v_θ(x, t): x [B, …], t `[B]`, labels `[B]` class indices (i64) for a class-conditional
    /// network; `train` enables dropout. Keeps the autograd graph.
    fn forward_t(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor;

    /// Number of classes the network is conditioned on; 0 when unconditional.
    fn label_dim(&self) -> i64;
}

/// Any field with an explicit domain: a closure defined beyond [0, 1], or one that, like the EDM
/// wrapper, is undefined at an end.
#[derive(Debug, Clone)]
pub struct WithDomain<V> {
    /// The field.
    pub field: V,
    /// Where it may be evaluated.
    pub domain: Domain,
}

impl<V: Velocity> Velocity for WithDomain<V> {
    fn velocity(&self, x: &Tensor, t: &Tensor) -> Tensor {
        self.field.velocity(x, t)
    }

    fn domain(&self) -> Domain {
        self.domain
    }

    fn denoiser(&self) -> Option<&dyn Denoiser> {
        self.field.denoiser()
    }
}

/// A `[B]` tensor filled with `t`, of x's kind and device.
pub fn time_tensor(x: &Tensor, t: f64) -> Tensor {
    Tensor::full([x.size()[0]], t, (x.kind(), x.device()))
}

/// Evaluates `v` at the single time `t` for the whole batch, refusing times outside its domain
/// (an excluded end included) with [`crate::Error::OutsideDomain`]. Runs without autograd.
pub fn evaluate(v: &dyn Velocity, x: &Tensor, t: f64) -> Result<Tensor> {
    v.domain().check(t)?;
    Ok(tch::no_grad(|| v.velocity(x, &time_tensor(x, t))))
}

/// What solvers evaluate: the field with its domain fixed for the solve, every evaluation checked
/// against it and counted (the reported NFE is the number of calls, never a formula).
pub(crate) struct Field<'a> {
    v: &'a dyn Velocity,
    domain: Domain,
    nfe: Cell<usize>,
}

impl<'a> Field<'a> {
    pub(crate) fn new(v: &'a dyn Velocity) -> Self {
        Field {
            v,
            domain: v.domain(),
            nfe: Cell::new(0),
        }
    }

    pub(crate) fn domain(&self) -> &Domain {
        &self.domain
    }

    /// v(x, t) for the whole batch.
    pub(crate) fn at(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        self.domain.check(t)?;
        self.nfe.set(self.nfe.get() + 1);
        Ok(self.v.velocity(x, &time_tensor(x, t)))
    }

    pub(crate) fn nfe(&self) -> usize {
        self.nfe.get()
    }
}
