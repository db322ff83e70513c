//! Objectives as configuration. A stage says what it minimises with these serde types and builds
//! the objective here, perceptual network included, so stages never assemble losses themselves.

use serde::{Deserialize, Serialize};
use slimflow_schedules::TimeDist;
use slimflow_weights_locate::Net;
use tch::{Device, Tensor};

use crate::error::Result;
use crate::lpips::{Lpips, LpipsConfig, LpipsPreset};
use crate::objective::{LpipsHuber, Objective, Rf};
use crate::premetric::{Premetric, PremetricConfig, Weighted};

/// Where a built objective gets its LPIPS network from.
pub type LpipsLoader<'a> = &'a dyn Fn(LpipsConfig, Device) -> Result<Lpips>;

/// The installed VGG LPIPS weights ([`Lpips::from_installed`]).
fn installed(config: LpipsConfig, device: Device) -> Result<Lpips> {
    Lpips::from_installed(config, device)
}

/// A rectified-flow regression objective (1-RF or reflow).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ObjectiveSpec {
    /// A premetric on the velocity ([`Rf`]).
    Rf {
        /// Training-time distribution.
        time: TimeDist,
        /// Distance between predicted and target velocity.
        premetric: PremetricConfig,
    },
    /// 2-rectified flow++'s LPIPS-Huber ([`LpipsHuber`]).
    LpipsHuber {
        /// Training-time distribution.
        time: TimeDist,
        /// The LPIPS variant.
        lpips: LpipsPreset,
        /// Divide the LPIPS term by (1 − t).
        divide_by_one_minus_t: bool,
    },
}

impl ObjectiveSpec {
    /// The pretrained networks the objective loads.
    pub fn weights(&self) -> Vec<Net> {
        match self {
            ObjectiveSpec::Rf { .. } => Vec::new(),
            ObjectiveSpec::LpipsHuber { .. } => vec![Net::LpipsVgg],
        }
    }

    /// A short name of the loss: `LPIPS-Huber`, or the premetric.
    pub fn describe(&self) -> String {
        match self {
            ObjectiveSpec::Rf { premetric, .. } => format!("{premetric:?}"),
            ObjectiveSpec::LpipsHuber { .. } => "LPIPS-Huber".to_string(),
        }
    }

    /// The objective on `device`, LPIPS from the installed weights.
    pub fn build(&self, device: Device) -> Result<Box<dyn Objective>> {
        self.build_with(device, &installed)
    }

    /// The objective on `device`, LPIPS from `lpips`.
    pub fn build_with(&self, device: Device, lpips: LpipsLoader) -> Result<Box<dyn Objective>> {
        Ok(match *self {
            ObjectiveSpec::Rf { time, premetric } => Box::new(Rf { time, premetric }),
            ObjectiveSpec::LpipsHuber {
                time,
                lpips: preset,
                divide_by_one_minus_t,
            } => Box::new(LpipsHuber {
                lpips: lpips(preset.config(), device)?,
                time,
                divide_by_one_minus_t,
            }),
        })
    }
}

/// An LPIPS term of a distance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LpipsTerm {
    /// LPIPS variant (SlimFlow: `slimflow`).
    pub preset: LpipsPreset,
    /// Weight of the term.
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// A distance between images: `premetric_weight`·premetric [+ weight·LPIPS] (a premetric of weight
/// 0 is left out). Distillation and the flow-guided term use it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistanceSpec {
    /// The pixel premetric.
    pub premetric: PremetricConfig,
    /// Its weight.
    pub premetric_weight: f64,
    /// An LPIPS term.
    pub lpips: Option<LpipsTerm>,
}

impl DistanceSpec {
    /// The pretrained networks the distance loads.
    pub fn weights(&self) -> Vec<Net> {
        self.lpips.map(|_| Net::LpipsVgg).into_iter().collect()
    }

    /// The distance on `device`, LPIPS from the installed weights.
    pub fn build(&self, device: Device) -> Result<Distance> {
        self.build_with(device, &installed)
    }

    /// The distance on `device`, LPIPS from `lpips`.
    pub fn build_with(&self, device: Device, lpips: LpipsLoader) -> Result<Distance> {
        Ok(Distance {
            premetric: (self.premetric_weight > 0.0)
                .then_some((self.premetric_weight, self.premetric)),
            lpips: match self.lpips {
                Some(term) => Some((term.weight, lpips(term.preset.config(), device)?)),
                None => None,
            },
        })
    }
}

/// A built [`DistanceSpec`]: the weighted sum of its terms, premetric first.
#[derive(Debug)]
pub struct Distance {
    premetric: Option<(f64, PremetricConfig)>,
    lpips: Option<(f64, Lpips)>,
}

impl Premetric for Distance {
    fn distance(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let mut sum = Weighted::default();
        if let Some((w, p)) = &self.premetric {
            sum = sum.with(*w, p);
        }
        if let Some((w, l)) = &self.lpips {
            sum = sum.with(*w, l);
        }
        sum.distance(a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::test_net::TestNet;
    use crate::objective::Batch;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use tch::Kind;

    fn random_lpips(config: LpipsConfig, device: Device) -> Result<Lpips> {
        Ok(Lpips::with_random_weights(config, device, 0))
    }

    /// A loader that hands out `net` (once), so a built loss uses a network the test also used.
    fn hand_over(
        net: &std::cell::RefCell<Option<Lpips>>,
    ) -> impl Fn(LpipsConfig, Device) -> Result<Lpips> + '_ {
        |_, _| Ok(net.borrow_mut().take().expect("once"))
    }

    fn images(seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu)) * 2.0 - 1.0
    }

    #[test]
    fn specs_build_the_objective_they_name() {
        let time = TimeDist::Uniform { eps: 1e-3 };
        let m = TestNet::new(&[3, 16, 16], 0);
        let batch = Batch {
            x0: images(1),
            x1: images(2),
            labels: None,
        };
        let rf = ObjectiveSpec::Rf {
            time,
            premetric: PremetricConfig::L1 {},
        };
        let direct = Rf {
            time,
            premetric: PremetricConfig::L1 {},
        };
        let built = rf.build(Device::Cpu).unwrap();
        let rng = || ChaCha20Rng::seed_from_u64(4);
        let a = built
            .loss(&m, &batch, &mut rng())
            .unwrap()
            .values()
            .unwrap();
        let b = direct
            .loss(&m, &batch, &mut rng())
            .unwrap()
            .values()
            .unwrap();
        assert_eq!(a, b);
        assert!(rf.weights().is_empty());
        assert_eq!(rf.describe(), "L1");

        let lh = ObjectiveSpec::LpipsHuber {
            time,
            lpips: LpipsPreset::Slimflow,
            divide_by_one_minus_t: true,
        };
        let direct = LpipsHuber {
            lpips: random_lpips(LpipsPreset::Slimflow.config(), Device::Cpu).unwrap(),
            time,
            divide_by_one_minus_t: true,
        };
        let b = direct
            .loss(&m, &batch, &mut rng())
            .unwrap()
            .values()
            .unwrap();
        // the same network, handed to the builder
        let net = std::cell::RefCell::new(Some(direct.lpips));
        let loader = |config: LpipsConfig, _: Device| {
            assert_eq!(config, LpipsPreset::Slimflow.config());
            Ok(net.borrow_mut().take().expect("loaded once"))
        };
        let built = lh.build_with(Device::Cpu, &loader).unwrap();
        let a = built
            .loss(&m, &batch, &mut rng())
            .unwrap()
            .values()
            .unwrap();
        assert_eq!(
            a.iter().map(|p| p.0).collect::<Vec<_>>(),
            ["huber", "lpips"]
        );
        assert_eq!(a, b);
        assert_eq!(lh.weights(), [Net::LpipsVgg]);
        assert_eq!(lh.describe(), "LPIPS-Huber");
        // the serialised form names the kind
        let json = serde_json::to_value(lh).unwrap();
        assert_eq!(json["kind"], "lpips_huber");
        assert_eq!(serde_json::from_value::<ObjectiveSpec>(json).unwrap(), lh);
    }

    #[test]
    fn a_distance_sums_its_terms_premetric_first_and_drops_a_zero_weight() {
        let (a, b) = (images(3), images(4));
        let lpips = random_lpips(LpipsConfig::default(), Device::Cpu).unwrap();
        let spec = DistanceSpec {
            premetric: PremetricConfig::L2Squared {},
            premetric_weight: 0.5,
            lpips: Some(LpipsTerm {
                preset: LpipsPreset::Slimflow,
                weight: 2.0,
            }),
        };
        let by_hand = Weighted::default()
            .with(0.5, &PremetricConfig::L2Squared {})
            .with(2.0, &lpips)
            .distance(&a, &b)
            .unwrap();
        let lpips_only = Weighted::default()
            .with(2.0, &lpips)
            .distance(&a, &b)
            .unwrap();
        let net = std::cell::RefCell::new(Some(lpips));
        let built = spec.build_with(Device::Cpu, &hand_over(&net)).unwrap();
        assert!(built.distance(&a, &b).unwrap().equal(&by_hand));
        assert_eq!(spec.weights(), [Net::LpipsVgg]);
        let pixel_free = DistanceSpec {
            premetric_weight: 0.0,
            ..spec
        };
        let Distance { lpips: moved, .. } = built;
        let net = std::cell::RefCell::new(moved.map(|(_, l)| l));
        let built = pixel_free
            .build_with(Device::Cpu, &hand_over(&net))
            .unwrap();
        assert!(built.distance(&a, &b).unwrap().equal(&lpips_only));
        // nothing left: an error, not a zero distance
        let empty = DistanceSpec {
            premetric_weight: 0.0,
            lpips: None,
            ..spec
        };
        assert!(empty.build(Device::Cpu).unwrap().distance(&a, &b).is_err());
    }
}
