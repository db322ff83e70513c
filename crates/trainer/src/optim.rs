//! Adam exactly as `torch.optim.Adam` computes it (no weight decay, no amsgrad), with moments that can
//! be saved and restored — tch's `nn::Optimizer` cannot export its state.
//!
//! step t: m ← lerp(m, g, 1 − β1); v ← β2·v + (1 − β2)·g·g;
//! p ← p + (−lr/(1 − β1ᵗ))·m / (sqrt(v)/sqrt(1 − β2ᵗ) + ε).
//!
//! Adam, the clip, the EMA and zeroing run as torch's multi-tensor (`_foreach_*`) operations
//! ([`slimflow_c10d::foreach`]), called as `_multi_tensor_adam` and the foreach `clip_grad_norm_`
//! call them: one launch per chunk of tensors on CUDA, and on the CPU the per-tensor kernels of
//! torch's single-tensor code, so a step is bit-identical to torch's on the same device and threads.
//! The clip's coefficient is multiplied in on the device and the gradient norm stays there, so an
//! update waits for the device only under [`GradGuard::SkipStep`], whose skip is a host decision.

use slimflow_c10d::foreach::{self, AdamStep};
use tch::Tensor;

use crate::config::{GradGuard, OptimConfig, WarmupRule};
use crate::ema::Ema;
use crate::error::Result;

/// Adam state over an ordered list of parameters.
#[derive(Debug)]
pub struct Adam {
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Steps taken.
    pub t: u64,
    /// First moments, one per parameter.
    pub m: Vec<Tensor>,
    /// Second moments, one per parameter.
    pub v: Vec<Tensor>,
}

impl Adam {
    /// Zero moments for `params`.
    pub fn new(cfg: &OptimConfig, params: &[Tensor]) -> Self {
        Adam {
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            t: 0,
            m: params.iter().map(|p| p.zeros_like()).collect(),
            v: params.iter().map(|p| p.zeros_like()).collect(),
        }
    }

    /// One update with learning rate `lr` using each parameter's `.grad()`. Parameters without a
    /// gradient are skipped, moments included (torch: `if p.grad is None: continue`).
    pub fn step(&mut self, params: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        // torch reads the step back as a float and uses Python's `**` (C `pow`), not powi
        let t = self.t as f64;
        let step = AdamStep {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            bias_correction2_sqrt: (1.0 - self.beta2.powf(t)).powf(0.5),
            neg_step_size: -(lr / (1.0 - self.beta1.powf(t))),
        };
        let (mut p, mut g, mut m, mut v) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((param, mi), vi) in params.iter().zip(&self.m).zip(&self.v) {
            let grad = param.grad();
            if grad.defined() {
                p.push(param.shallow_clone());
                g.push(grad);
                m.push(mi.shallow_clone());
                v.push(vi.shallow_clone());
            }
        }
        foreach::adam(&p, &g, &mut m, &mut v, step)?;
        Ok(())
    }
}

/// Learning rate of update `step` (0-based) with linear warm-up over `warmup` steps:
/// lr·min(1, (step + 1)/warmup) ([`WarmupRule::FromFirst`]) or lr·min(1, step/warmup)
/// ([`WarmupRule::FromZero`], score_sde's rule: the first update runs at lr 0).
pub fn warmup_lr(lr: f64, step: u64, warmup: u64, rule: WarmupRule) -> f64 {
    if warmup == 0 {
        return lr;
    }
    let k = match rule {
        WarmupRule::FromFirst => step + 1,
        WarmupRule::FromZero => step,
    };
    lr * (k as f64 / warmup as f64).min(1.0)
}

/// The defined gradients of `params`.
pub(crate) fn grads(params: &[Tensor]) -> Vec<Tensor> {
    params
        .iter()
        .map(|p| p.grad())
        .filter(|g| g.defined())
        .collect()
}

/// Applies `guard` and the norm clip at `max_norm` (0: no clip) to the gradients; returns the
/// gradient norm before clipping as a 0-dim tensor on the gradients' device (after zeroing for
/// [`GradGuard::ZeroThenClip`]; possibly non-finite for [`GradGuard::ClipThenReplace`]).
///
/// The clip is torch's `clip_grad_norm_`: coefficient min(1, max_norm/(norm + 1e-6)), with the
/// norm in the gradients' dtype as torch computes it, so a float32 norm whose squares overflow is
/// +inf: the coefficient is then 0 (every entry zeroed) and [`GradGuard::SkipStep`] skips the
/// step. The norm is read back to the host only by [`GradGuard::SkipStep`], whose decision is the
/// host's (as rfpp's check before `optimizer.step()` is); the other guards run on the device.
pub fn guard_and_clip(params: &[Tensor], max_norm: f64, guard: GradGuard) -> Result<Tensor> {
    Ok(guard_clip_decide(params, max_norm, guard)?.0)
}

/// [`guard_and_clip`], and whether [`GradGuard::SkipStep`] skips the update (decided from its one
/// read-back of the norm).
fn guard_clip_decide(params: &[Tensor], max_norm: f64, guard: GradGuard) -> Result<(Tensor, bool)> {
    tch::no_grad(|| {
        let grads = grads(params);
        if grads.is_empty() {
            return Ok((
                Tensor::zeros([], (tch::Kind::Float, tch::Device::Cpu)),
                false,
            ));
        }
        if guard == GradGuard::ZeroThenClip {
            for g in &grads {
                let _ = g.shallow_clone().nan_to_num_(0.0, 0.0, 0.0);
            }
        }
        let norm = foreach::total_norm(&grads)?;
        if guard == GradGuard::SkipStep && !norm.double_value(&[]).is_finite() {
            return Ok((norm, true));
        }
        if max_norm > 0.0 {
            // torch: max_norm / (norm + 1e-6) as reciprocal·max_norm, clamped at 1 and always
            // multiplied in (×1 is exact). A NaN norm stays NaN, so with ClipThenReplace the
            // replacement below zeroes every entry; +inf gives 0.
            let coef = ((&norm + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
            foreach::mul(&grads, &coef)?;
        }
        if guard == GradGuard::ClipThenReplace {
            for g in &grads {
                let _ = g.shallow_clone().nan_to_num_(0.0, 1e5, -1e5);
            }
        }
        Ok((norm, false))
    })
}

/// Replaces NaN/±inf gradient entries by 0, then clips the global gradient norm to `max_norm`;
/// returns the norm before clipping (after zeroing). [`guard_and_clip`] with
/// [`GradGuard::ZeroThenClip`].
pub fn sanitize_and_clip(params: &[Tensor], max_norm: f64) -> Result<Tensor> {
    guard_and_clip(params, max_norm, GradGuard::ZeroThenClip)
}

/// What one optimizer update did.
#[derive(Debug)]
pub struct UpdateInfo {
    /// The learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping: a 0-dim tensor on the gradients' device, read back by the
    /// caller when it logs.
    pub grad_norm: Tensor,
}

/// The update of training step `step` (0-based) once its gradients are in place, in the order every
/// stage uses: warm-up lr, guard and clip, then (when `apply`, i.e. not skipped by the fp16 loss
/// scale, and not skipped by [`GradGuard::SkipStep`]) Adam and the EMA.
pub fn update(
    params: &[Tensor],
    adam: &mut Adam,
    ema: &mut Ema,
    cfg: &OptimConfig,
    step: u64,
    apply: bool,
) -> Result<UpdateInfo> {
    let (grad_norm, skip) = guard_clip_decide(params, cfg.grad_clip, cfg.grad_guard)?;
    let lr = warmup_lr(cfg.lr, step, cfg.warmup_steps, cfg.warmup_rule);
    if apply && !skip {
        adam.step(params, lr)?;
        ema.update(params)?;
    }
    Ok(UpdateInfo { lr, grad_norm })
}

/// Zeroes every defined gradient.
pub fn zero_grad(params: &[Tensor]) -> Result<()> {
    foreach::zero(&grads(params))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn two_steps_match_torch_adam() {
        // torch: p = torch.tensor([1.0, -2.0], requires_grad=True); opt = torch.optim.Adam([p], lr=0.1)
        // (float64) step 1 with grad [0.5, -1.0], step 2 with grad [0.25, 2.0]; torch 2.11 prints
        // [0.900000002, -1.900000001] then [0.8067820404774624, -1.9366103534720749].
        let p = Tensor::from_slice(&[1.0f64, -2.0]).set_requires_grad(true);
        let cfg = OptimConfig {
            lr: 0.1,
            ..OptimConfig::default()
        };
        let mut adam = Adam::new(&cfg, std::slice::from_ref(&p));
        for g in [[0.5f64, -1.0], [0.25, 2.0]] {
            zero_grad(std::slice::from_ref(&p)).unwrap();
            (&p * Tensor::from_slice(&g)).sum(Kind::Double).backward();
            adam.step(std::slice::from_ref(&p), 0.1).unwrap();
        }
        let got = Vec::<f64>::try_from(&p.detach()).unwrap();
        // m = [0.9·0.05 + 0.025, 0.9·(−0.1) + 0.2] = [0.07, 0.11]
        // v = [0.999·0.00025 + 0.001·0.0625, 0.999·0.001 + 0.001·4] = [0.00031225, 0.004999]
        let expected = [0.806_782_040_477_462_4, -1.936_610_353_472_074_9];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-12, "{got:?} vs {expected:?}");
        }
    }

    #[test]
    fn clipped_float32_steps_are_bit_identical_to_torch() {
        // torch 2.11 (CPU, float32): p = torch.tensor(P0, requires_grad=True);
        // opt = torch.optim.Adam([p], lr=1e-3); for g in G: p.grad = g;
        // clip_grad_norm_([p], 1.0); opt.step(). Gradients at ε's scale included, where the update
        // lr·m/(sqrt(v) + ε) is most sensitive to rounding.
        let p0 = [0.5f32, -0.25, 1.5, -2.0, 0.125, 3.0e-3, -7.5e-4, 0.0];
        let grads = [
            [0.3f32, -1.2, 4e-9, -2e-9, 5.0, -0.02, 1e-8, 0.0],
            [-0.1, 0.7, 3e-9, 1e-9, -4.0, 0.03, -1.2e-8, 2.5],
            [0.05, -0.4, -5e-9, 7e-9, 2.0, -0.01, 2e-8, -1.5],
        ];
        let expected_p: [u32; 8] = [
            0x3eff0d5f, 0xbe7e5bfc, 0x3fbffc55, 0xc00000a5, 0x3dfd3258, 0x3b7adda3, 0xba8aa662,
            0xba2986ae,
        ];
        let expected_m: [u32; 8] = [
            0x3b9d7630, 0xbcafca23, 0xaeab637c, 0x2f910ccc, 0x3da8357b, 0xb9165026, 0x3046157d,
            0xbc45a1ee,
        ];
        let expected_v: [u32; 8] = [
            0x368d6a66, 0x38d30c6c, 0x1db8f3bc, 0x1e14028c, 0x3b148e0f, 0x3396ab22, 0x1fab1892,
            0x3a23ebeb,
        ];
        let p = Tensor::from_slice(&p0).set_requires_grad(true);
        let params = [p.shallow_clone()];
        let cfg = OptimConfig {
            lr: 1e-3,
            ..OptimConfig::default()
        };
        let mut adam = Adam::new(&cfg, &params);
        for g in grads {
            zero_grad(&params).unwrap();
            (&p * Tensor::from_slice(&g)).sum(Kind::Float).backward();
            let _ = guard_and_clip(&params, 1.0, GradGuard::ClipThenReplace).unwrap();
            adam.step(&params, 1e-3).unwrap();
        }
        let bits = |t: &Tensor| -> Vec<u32> {
            Vec::<f32>::try_from(&t.detach())
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(bits(&p), expected_p, "parameters");
        assert_eq!(bits(&adam.m[0]), expected_m, "first moments");
        assert_eq!(bits(&adam.v[0]), expected_v, "second moments");
    }

    #[test]
    fn non_finite_gradients_are_zeroed_and_norm_clipped() {
        let p = Tensor::from_slice(&[1.0f32, 1.0, 1.0]).set_requires_grad(true);
        (&p * Tensor::from_slice(&[f32::NAN, 3.0, 4.0]))
            .sum(Kind::Float)
            .backward();
        let norm = sanitize_and_clip(std::slice::from_ref(&p), 1.0).unwrap();
        assert!((norm.double_value(&[]) - 5.0).abs() < 1e-5);
        let g = Vec::<f32>::try_from(&p.grad()).unwrap();
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 0.6).abs() < 1e-5 && (g[2] - 0.8).abs() < 1e-5);
        let _ = Device::Cpu;
    }

    #[test]
    fn warmup_is_linear_then_flat() {
        assert_eq!(warmup_lr(1.0, 0, 4, WarmupRule::FromFirst), 0.25);
        assert_eq!(warmup_lr(1.0, 3, 4, WarmupRule::FromFirst), 1.0);
        assert_eq!(warmup_lr(1.0, 100, 4, WarmupRule::FromFirst), 1.0);
        assert_eq!(warmup_lr(0.5, 0, 0, WarmupRule::FromFirst), 0.5);
        // score_sde: lr·min(step/warmup, 1), 0 at the first update; 2e-4·30/40 at step 30.
        assert_eq!(warmup_lr(1.0, 0, 4, WarmupRule::FromZero), 0.0);
        assert_eq!(warmup_lr(1.0, 3, 4, WarmupRule::FromZero), 0.75);
        assert_eq!(warmup_lr(1.0, 4, 4, WarmupRule::FromZero), 1.0);
        assert!((warmup_lr(2e-4, 30, 40, WarmupRule::FromZero) - 1.5e-4).abs() < 1e-18);
    }

    #[test]
    fn clip_then_replace_lets_one_bad_entry_zero_the_update() {
        let p = Tensor::from_slice(&[1.0f32, 1.0, 1.0]).set_requires_grad(true);
        (&p * Tensor::from_slice(&[f32::NAN, 3.0, 4.0]))
            .sum(Kind::Float)
            .backward();
        let norm =
            guard_and_clip(std::slice::from_ref(&p), 1.0, GradGuard::ClipThenReplace).unwrap();
        assert!(norm.double_value(&[]).is_nan());
        assert_eq!(Vec::<f32>::try_from(&p.grad()).unwrap(), vec![0.0; 3]);
        // +inf alone: the coefficient is 0, inf·0 = NaN → 0; the finite entries become 0 too.
        let q = Tensor::from_slice(&[1.0f32, 1.0]).set_requires_grad(true);
        (&q * Tensor::from_slice(&[f32::INFINITY, 2.0]))
            .sum(Kind::Float)
            .backward();
        let _ = guard_and_clip(std::slice::from_ref(&q), 1.0, GradGuard::ClipThenReplace).unwrap();
        assert_eq!(Vec::<f32>::try_from(&q.grad()).unwrap(), vec![0.0; 2]);
        // Without a clip, ±inf is replaced by ±1e5 and finite entries stay.
        let r = Tensor::from_slice(&[1.0f32, 1.0, 1.0]).set_requires_grad(true);
        (&r * Tensor::from_slice(&[f32::NEG_INFINITY, 2.0, f32::NAN]))
            .sum(Kind::Float)
            .backward();
        let _ = guard_and_clip(std::slice::from_ref(&r), 0.0, GradGuard::ClipThenReplace).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&r.grad()).unwrap(),
            vec![-1e5, 2.0, 0.0]
        );
        // Finite gradients: every guard clips alike.
        for guard in [
            GradGuard::ZeroThenClip,
            GradGuard::ClipThenReplace,
            GradGuard::SkipStep,
        ] {
            let p = Tensor::from_slice(&[1.0f32, 1.0]).set_requires_grad(true);
            (&p * Tensor::from_slice(&[3.0f32, 4.0]))
                .sum(Kind::Float)
                .backward();
            let n = guard_and_clip(std::slice::from_ref(&p), 1.0, guard).unwrap();
            assert!((n.double_value(&[]) - 5.0).abs() < 1e-6);
            let g = Vec::<f32>::try_from(&p.grad()).unwrap();
            assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
        }
    }

    #[test]
    fn skip_step_leaves_weights_moments_and_ema_untouched() {
        let p = Tensor::from_slice(&[1.0f32, 1.0]).set_requires_grad(true);
        let params = [p.shallow_clone()];
        let cfg = OptimConfig {
            warmup_steps: 0,
            grad_clip: 0.0,
            grad_guard: GradGuard::SkipStep,
            ..OptimConfig::default()
        };
        let mut adam = Adam::new(&cfg, &params);
        let mut ema = Ema::new(0.5, false, &params);
        (&p * Tensor::from_slice(&[f32::NAN, 2.0]))
            .sum(Kind::Float)
            .backward();
        let info = update(&params, &mut adam, &mut ema, &cfg, 0, true).unwrap();
        assert!(info.grad_norm.double_value(&[]).is_nan());
        assert_eq!(adam.t, 0);
        assert_eq!(ema.num_updates, 0);
        assert_eq!(Vec::<f32>::try_from(&p.detach()).unwrap(), vec![1.0, 1.0]);
        // A finite gradient then steps.
        zero_grad(&params).unwrap();
        (&p * Tensor::from_slice(&[1.0f32, 2.0]))
            .sum(Kind::Float)
            .backward();
        update(&params, &mut adam, &mut ema, &cfg, 1, true).unwrap();
        assert_eq!((adam.t, ema.num_updates), (1, 1));
        assert!(p.double_value(&[0]) < 1.0);
    }
}
