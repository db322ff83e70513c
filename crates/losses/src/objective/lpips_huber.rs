//! 2-rectified flow++'s LPIPS-Huber objective (Lee et al. 2024, §3.3), in our time convention:
//!
//! loss = t·H(v̂, v) + LPIPS(x̂1, x1) [÷ (1 − t) with `divide_by_one_minus_t`],
//!
//! with H the pseudo-Huber premetric, x̂1 = x_t + (1 − t)·v̂ the predicted data and LPIPS applied after
//! its configured resize (rfpp: 224×224, average-pooled VGG). rfpp writes it in its own t_r = 1 − t as
//! (1 − t_r)·Huber + LPIPS / t_r; the division applies to the LPIPS term only.

use rand::RngCore;
use slimflow_sampling::Network;
use slimflow_schedules::{x1_from_velocity, TimeDist};
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::lpips::Lpips;
use crate::objective::{draw_times, velocity_on_path, Batch, Draws, LossTerms, Objective};
use crate::premetric::{Premetric, PremetricConfig};

/// The LPIPS-Huber reflow objective.
#[derive(Debug)]
pub struct LpipsHuber {
    /// The (frozen) perceptual network.
    pub lpips: Lpips,
    /// Training-time distribution (rfpp: U-shaped, a = 4).
    pub time: TimeDist,
    /// Divide the LPIPS term by (1 − t) (rfpp's "divide by t" option, in its t_r).
    pub divide_by_one_minus_t: bool,
}

/// The two per-sample terms: (t·H(v̂, v), LPIPS(x̂1, x1) [÷ (1 − t)]), each [B].
/// x_t, v_hat, v, x1: [B, 3, H, W]; t: [B].
pub fn lpips_huber_terms(
    lpips: &Lpips,
    x_t: &Tensor,
    t: &Tensor,
    v_hat: &Tensor,
    v: &Tensor,
    x1: &Tensor,
    divide_by_one_minus_t: bool,
) -> Result<(Tensor, Tensor)> {
    let huber = PremetricConfig::PseudoHuber {}.distance(v_hat, v)? * t;
    let x1_hat = x1_from_velocity(x_t, t, v_hat);
    let perceptual = lpips.distance(&x1_hat, x1)?;
    let perceptual = if divide_by_one_minus_t {
        perceptual / (1.0 - t)
    } else {
        perceptual
    };
    Ok((huber, perceptual))
}

impl LpipsHuber {
    /// The loss at given times t: [B] (the draws of [`Objective::loss`], made explicit).
    pub fn loss_at(&self, student: &dyn Network, batch: &Batch, t: &Tensor) -> Result<LossTerms> {
        let (path, v_hat) = velocity_on_path(student, batch, t)?;
        let (huber, perceptual) = lpips_huber_terms(
            &self.lpips,
            &path.x_t,
            t,
            &v_hat,
            &path.v,
            &batch.x1,
            self.divide_by_one_minus_t,
        )?;
        let total = (&huber + &perceptual).mean(Kind::Float);
        Ok(LossTerms::new(
            total,
            vec![
                ("huber", &huber.mean(Kind::Float)),
                ("lpips", &perceptual.mean(Kind::Float)),
            ],
        ))
    }
}

impl Objective for LpipsHuber {
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
    use crate::lpips::LpipsConfig;
    use tch::Device;

    #[test]
    fn lpips_huber_reduces_to_its_parts_at_the_extremes() {
        let lp = Lpips::with_random_weights(LpipsConfig::default(), Device::Cpu, 0);
        let opts = (Kind::Float, Device::Cpu);
        tch::manual_seed(1);
        let x0 = Tensor::randn([2, 3, 32, 32], opts);
        let x1 = Tensor::rand([2, 3, 32, 32], opts) * 2.0 - 1.0;
        let v = &x1 - &x0;
        let v_hat = &v + Tensor::randn([2, 3, 32, 32], opts) * 0.1;
        let huber_full = PremetricConfig::PseudoHuber {}
            .distance(&v_hat, &v)
            .unwrap();
        // t = 0: only the perceptual term on x̂1 = x0 + v̂.
        let t0 = Tensor::zeros([2], opts);
        let (h, p) = lpips_huber_terms(&lp, &x0, &t0, &v_hat, &v, &x1, false).unwrap();
        assert_eq!(h.abs().max().double_value(&[]), 0.0);
        let direct = lp.distance(&(&x0 + &v_hat), &x1).unwrap();
        assert!(p.allclose(&direct, 1e-6, 1e-6, false));
        assert!(p.min().double_value(&[]) > 0.0);
        // t = 1: x̂1 = x_t = x1, so LPIPS vanishes and only H(v̂, v) remains.
        let t1 = Tensor::ones([2], opts);
        let (h, p) = lpips_huber_terms(&lp, &x1, &t1, &v_hat, &v, &x1, false).unwrap();
        assert_eq!(p.abs().max().double_value(&[]), 0.0);
        assert!(h.allclose(&huber_full, 1e-6, 1e-6, false));
        // The division scales the perceptual term by 1/(1 − t).
        let th = Tensor::full([2], 0.5, opts);
        let x_half = (&x0 + &x1) * 0.5;
        let (_, p) = lpips_huber_terms(&lp, &x_half, &th, &v_hat, &v, &x1, false).unwrap();
        let (_, pd) = lpips_huber_terms(&lp, &x_half, &th, &v_hat, &v, &x1, true).unwrap();
        assert!(pd.allclose(&(p * 2.0), 1e-6, 1e-5, false));
    }
}
