//! torch's multi-tensor (`_foreach_*`) operations for optimizer steps, which tch does not bind.
//!
//! Each function makes the calls torch 2.11 makes in `_multi_tensor_adam`, in the foreach
//! `clip_grad_norm_` and in an EMA of the form shadow − w·(shadow − θ), so every element goes
//! through the same kernels and roundings as there. On CUDA a list costs one kernel launch per
//! chunk of tensors instead of one per tensor, and nothing is read back to the host; on the CPU
//! libtorch runs the per-tensor operations, those of torch's single-tensor code.
//!
//! The lists must have equal lengths (checked here); tensors libtorch cannot combine are its
//! error. One device and dtype per list takes the multi-tensor kernels, anything else libtorch's
//! per-tensor path. Empty lists are a no-op.

use tch::{Device, Kind, Tensor};

use crate::{C10dError, Result};

/// The scalars of one Adam step (the same for every tensor of the step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// sqrt(1 − β2ᵗ).
    pub bias_correction2_sqrt: f64,
    /// −lr/(1 − β1ᵗ).
    pub neg_step_size: f64,
}

fn err(op: &'static str) -> impl Fn(String) -> C10dError {
    move |message| C10dError::Foreach { op, message }
}

/// One Adam update of `params` from `grads`, with moments `exp_avgs` and `exp_avg_sqs`:
/// m ← lerp(m, g, 1 − β1); v ← β2·v + (1 − β2)·g·g; p ← p + s·m/(sqrt(v)/c2 + ε), s = −lr/c1.
pub fn adam(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &mut [Tensor],
    exp_avg_sqs: &mut [Tensor],
    step: AdamStep,
) -> Result<()> {
    if params.is_empty() {
        return Ok(());
    }
    crate::ffi::foreach_adam(
        [params, grads, exp_avgs, exp_avg_sqs],
        (step.beta1, step.beta2, step.eps),
        step.bias_correction2_sqrt,
        step.neg_step_size,
    )
    .map_err(err("adam"))
}

/// shadow ← shadow − weight·(shadow − params), element by element.
pub fn ema(shadow: &mut [Tensor], params: &[Tensor], weight: f64) -> Result<()> {
    if shadow.is_empty() && params.is_empty() {
        return Ok(());
    }
    crate::ffi::foreach_ema(shadow, params, weight).map_err(err("ema"))
}

/// shadow ← shadow·decay + (1 − decay)·params, element by element, as `mul_(decay)` then
/// `add_(params, alpha = 1 − decay)` (rfpp's EMA).
pub fn ema_mul_add(shadow: &mut [Tensor], params: &[Tensor], decay: f64) -> Result<()> {
    if shadow.is_empty() && params.is_empty() {
        return Ok(());
    }
    crate::ffi::foreach_ema_mul_add(shadow, params, decay).map_err(err("ema_mul_add"))
}

/// The 2-norm of all `tensors` taken as one vector, as `clip_grad_norm_` computes it (the norm
/// of the stacked per-tensor norms), as a 0-dim tensor of their dtype left on their device; 0
/// (float32, CPU) for an empty list.
pub fn total_norm(tensors: &[Tensor]) -> Result<Tensor> {
    let mut out = Tensor::zeros([], (Kind::Float, Device::Cpu));
    if tensors.is_empty() {
        return Ok(out);
    }
    crate::ffi::foreach_total_norm(tensors, &mut out).map_err(err("total_norm"))?;
    Ok(out)
}

/// tensors[i] ← tensors[i]·factor, with `factor` a 0-dim tensor on their device (no host read).
pub fn mul(tensors: &[Tensor], factor: &Tensor) -> Result<()> {
    if tensors.is_empty() {
        return Ok(());
    }
    crate::ffi::foreach_mul_tensor(tensors, factor).map_err(err("mul"))
}

/// tensors[i] ← 0.
pub fn zero(tensors: &[Tensor]) -> Result<()> {
    if tensors.is_empty() {
        return Ok(());
    }
    crate::ffi::foreach_zero(tensors).map_err(err("zero"))
}
