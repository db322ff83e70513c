//! Exponential moving average of parameters: ema ← d·ema + (1 − d)·θ after every optimizer step.
//!
//! With `warmup` the decay of the n-th update (n counted from 1, restarted in every stage) is
//! d_n = min(d, (1 + n)/(10 + n)), the schedule of SlimFlow's (and score_sde's) EMA: the average
//! forgets the random initialisation within the first few thousand updates. Without it the decay is
//! the fixed d from the first update (rfpp's EMA), which suits a student initialised from a trained
//! teacher but keeps d^N of a random initialisation after N updates (0.999999^500000 ≈ 61 %).
//!
//! The update is rounded as the recipe's reference rounds it ([`EmaForm`]), and rfpp's delayed
//! start (`--ema_after_steps k`: no average before update k + 2, then a fresh copy of the
//! parameters) is `after_steps`. Before its start the average follows the parameters, so a stage
//! saved then writes what rfpp would: the raw weights.

use tch::Tensor;

use crate::config::{EmaForm, OptimConfig};

/// EMA copies of an ordered parameter list.
#[derive(Debug)]
pub struct Ema {
    /// Decay d per step (the ceiling of the warm-up).
    pub decay: f64,
    /// Whether the decay warms up as min(d, (1 + n)/(10 + n)).
    pub warmup: bool,
    /// The arithmetic of an update.
    pub form: EmaForm,
    /// rfpp's delayed start: averaging begins at update `after_steps + 2`.
    pub after_steps: Option<u64>,
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
            form: EmaForm::ScoreSde,
            after_steps: None,
            num_updates: 0,
            values: params.iter().map(|p| p.detach().copy()).collect(),
        }
    }

    /// The EMA `optim` describes (decay, warm-up, form, start), over `params`.
    pub fn for_optim(optim: &OptimConfig, params: &[Tensor]) -> Self {
        Ema {
            form: optim.ema_form,
            after_steps: optim.ema_after_steps,
            ..Ema::new(optim.ema_decay, optim.ema_warmup, params)
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
        let n = self.num_updates;
        if let Some(k) = self.after_steps {
            // rfpp tests `i_effective > k` before update n, with n − 1 updates done
            if n <= k + 2 {
                self.follow(params)?;
            }
            if n <= k + 1 {
                return Ok(());
            }
        }
        let d = self.decay_at(n);
        match self.form {
            EmaForm::ScoreSde => slimflow_c10d::foreach::ema(&mut self.values, params, 1.0 - d),
            EmaForm::Rfpp => slimflow_c10d::foreach::ema_mul_add(&mut self.values, params, d),
        }
    }

    /// Copies the parameters into the average.
    fn follow(&mut self, params: &[Tensor]) -> Result<(), slimflow_c10d::C10dError> {
        tch::no_grad(|| {
            for (v, p) in self.values.iter_mut().zip(params) {
                v.f_copy_(p)
                    .map_err(|e| slimflow_c10d::C10dError::Foreach {
                        op: "ema copy",
                        message: e.to_string(),
                    })?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(t: &Tensor) -> Vec<u32> {
        Vec::<f32>::try_from(t)
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    }

    // Inputs as decimal float32 literals (19 entries: two 8-wide vectors and a tail), with the
    // bits torch 2.11 (CPU, 1 thread) gives for rfpp's `ema.mul_(d).add_(p, alpha=1 - d)`.
    const S0: [f32; 19] = [
        0.0, 0.1808077, 0.6742879, 1.791397, 3.983523, 0.2403188, 0.3982827, 0.5240443, 0.3611925,
        -0.7491787, -0.132459, -0.4003334, -0.9631309, -1.99048, -3.570591, -0.16731, -0.1776268,
        0.00681464, 0.735921,
    ];
    const P: [[f32; 19]; 4] = [
        [
            0.2103677,
            0.489954,
            0.9857192,
            1.716236,
            2.457497,
            0.0718695,
            -0.03916352,
            -0.4335309,
            -1.460117,
            -3.711103,
            -0.2499808,
            -0.4683679,
            -0.7467654,
            -0.9114478,
            -0.4120092,
            0.06591505,
            0.2973187,
            0.8451334,
            1.962489,
        ],
        [
            0.2273244, 0.3486389, 0.3908848, 0.0631748, -1.327941, -0.1626563, -0.440603,
            -0.9925198, -1.939001, -3.261057, -0.1376714, -0.1057871, 0.1561728, 1.005565,
            3.125372, 0.2385381, 0.4989108, 0.9064404, 1.384754,
        ],
        [
            0.03528, -0.1132133, -0.5633273, -1.647969, -3.892476, -0.2476366, -0.4369541,
            -0.6389906, -0.6351771, 0.1871904, 0.1012125, 0.3540539, 0.9155264, 1.998066, 3.7893,
            0.1918503, 0.2418066, 0.1343703, -0.4661178,
        ],
        [
            -0.1892006,
            -0.4709776,
            -0.9996188,
            -1.843977,
            -2.878287,
            -0.104941,
            -0.03157164,
            0.3020236,
            1.252626,
            3.463336,
            0.2470421,
            0.4883793,
            0.8331493,
            1.153554,
            0.9693636,
            -0.03122376,
            -0.2376135,
            -0.7612393,
            -1.888443,
        ],
    ];

    #[test]
    fn the_rfpp_form_rounds_as_rfpp_does() {
        let one = [
            934311966, 1043934657, 1059889197, 1071991872, 1082060682, 1047925175, 1053550074,
            1057366398, 1052300890, 3208633750, 3188172394, 3201104228, 3212217940, 3221144707,
            3227811683, 3190508851, 3191199578, 1004670099, 1060924764,
        ];
        let s0 = Tensor::from_slice(&S0);
        let p = [Tensor::from_slice(&P[0])];
        let mut rfpp = Ema::new(0.9999, false, std::slice::from_ref(&s0));
        rfpp.form = EmaForm::Rfpp;
        rfpp.update(&p).unwrap();
        assert_eq!(bits(&rfpp.values[0]), one);
        // the score_sde form rounds 5 of these 19 entries otherwise
        let mut score = Ema::new(0.9999, false, std::slice::from_ref(&s0));
        score.update(&p).unwrap();
        let differ = bits(&score.values[0])
            .iter()
            .zip(one)
            .filter(|(a, b)| **a != *b)
            .count();
        assert_eq!(differ, 5);
    }

    #[test]
    fn rfpps_delayed_start_follows_the_parameters_then_copies_and_averages() {
        // --ema_after_steps 1: updates 1 and 2 leave no average (it follows the parameters);
        // update 3 copies p3 and averages it with itself; update 4 averages p4 in
        let e3 = [
            1024491971, 3186089056, 3205510712, 3218272421, 3229163092, 3195901043, 3202332787,
            3206780131, 3206716151, 1044360919, 1036994687, 1052067470, 1063935984, 1073725600,
            1081246691, 1044673639, 1048026150, 1040816222, 3203311358,
        ];
        let e4 = [
            1024485945, 3186093857, 3205511444, 3218272585, 3229162666, 3195900085, 3202331427,
            3206778552, 3206712983, 1044382905, 1036996644, 1052067921, 1063935846, 1073724892,
            1081245508, 1044672141, 1048022932, 1040810211, 3203316131,
        ];
        let optim = OptimConfig {
            ema_decay: 0.9999,
            ema_form: EmaForm::Rfpp,
            ema_after_steps: Some(1),
            ..OptimConfig::default()
        };
        let mut ema = Ema::for_optim(&optim, &[Tensor::from_slice(&S0)]);
        for (n, p) in P.iter().enumerate() {
            let p = Tensor::from_slice(p);
            ema.update(std::slice::from_ref(&p)).unwrap();
            match n + 1 {
                1 | 2 => assert_eq!(bits(&ema.values[0]), bits(&p), "update {}", n + 1),
                3 => assert_eq!(bits(&ema.values[0]), e3),
                _ => assert_eq!(bits(&ema.values[0]), e4),
            }
        }
        assert_eq!(ema.num_updates, 4);
    }

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
