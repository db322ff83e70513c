//! LPIPS v0.1 (Zhang et al., CVPR 2018): a learned perceptual distance, as in the `lpips` package
//! (richzhang/PerceptualSimilarity, v0.1.4) with the same parameter names, so its weight files load
//! without renaming.
//!
//! d(x0, x1) = Σ_l mean_{h,w} w_l · (n(f_l(x0)) − n(f_l(x1)))², where f_l are five feature taps of a
//! frozen backbone (VGG16 or AlexNet) applied after the scaling layer (x − shift)/scale,
//! n(f) = f / (sqrt(Σ_c f²) + 1e-10) and w_l ≥ 0 the learned 1×1 "lin" heads. Inputs are [B, 3, H, W]
//! in [-1, 1]; the result is [B]. The network's weights never receive gradients (they are frozen and
//! belong to no optimizer), while gradients flow to the inputs.
//!
//! Variants used by the two papers: SlimFlow uses VGG with max pooling on inputs resized to 64×64
//! (bilinear, align_corners = true); 2-rectified flow++ replaces VGG's max pooling by average pooling
//! (piq's `replace_pooling`) and resizes to 224×224 (align_corners = false).

mod alex;
mod presets;
mod vgg;

pub use presets::LpipsPreset;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::premetric::Premetric;
use slimflow_tensor_io::TensorFile;

/// Which backbone network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backbone {
    /// VGG16 taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (the papers' choice).
    #[default]
    Vgg,
    /// AlexNet taps relu1 … relu5 (LPIPS's default network).
    Alex,
}

/// Spatial pooling inside the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The backbone's max pooling (the `lpips` package; SlimFlow).
    #[default]
    Max,
    /// Average pooling with the same kernel and stride (piq's `replace_pooling`; rfpp).
    Avg,
}

/// Optional bilinear resize of both inputs before the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// Output height and width.
    pub size: i64,
    /// `align_corners` of the bilinear interpolation (SlimFlow: true at 64; rfpp: false at 224).
    pub align_corners: bool,
}

/// LPIPS configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LpipsConfig {
    /// Backbone.
    pub net: Backbone,
    /// Pooling variant.
    pub pooling: Pooling,
    /// Resize before the network (none by default).
    pub resize: Option<Resize>,
}

impl LpipsConfig {
    /// SlimFlow's LPIPS: VGG, max pooling, inputs resized to 64×64 with align_corners = true.
    pub fn slimflow() -> Self {
        LpipsConfig {
            net: Backbone::Vgg,
            pooling: Pooling::Max,
            resize: Some(Resize {
                size: 64,
                align_corners: true,
            }),
        }
    }

    /// 2-rectified flow++'s LPIPS: VGG, average pooling, inputs resized to 224×224 with
    /// align_corners = false.
    pub fn rfpp() -> Self {
        LpipsConfig {
            net: Backbone::Vgg,
            pooling: Pooling::Avg,
            resize: Some(Resize {
                size: 224,
                align_corners: false,
            }),
        }
    }
}

/// The scaling layer's constants (lpips `ScalingLayer`), stored as buffers `scaling_layer.shift|scale`.
const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];

/// A backbone: five feature taps of an image batch.
pub(crate) trait Features: std::fmt::Debug + Send {
    /// Channels of the five taps.
    fn channels(&self) -> [i64; 5];
    /// The five taps of x: [B, 3, H, W] (already scaled).
    fn taps(&self, x: &Tensor) -> Vec<Tensor>;
}

/// The LPIPS network with its (frozen) weights.
#[derive(Debug)]
pub struct Lpips {
    vs: nn::VarStore,
    config: LpipsConfig,
    shift: Tensor,
    scale: Tensor,
    net: Box<dyn Features>,
    lins: Vec<Tensor>,
}

/// Per-sample distance and its five per-layer parts.
#[derive(Debug)]
pub struct LpipsOutput {
    /// Σ over layers: [B].
    pub dist: Tensor,
    /// Per-layer contributions: [5, B].
    pub per_layer: Tensor,
}

impl Lpips {
    /// Builds the network structure on `device` with placeholder weights; call [`Lpips::load`] to
    /// fill them.
    fn build(config: LpipsConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let sl = &root / "scaling_layer";
        let shift = sl.var_copy("shift", &Tensor::from_slice(&SHIFT).view([1, 3, 1, 1]));
        let scale = sl.var_copy("scale", &Tensor::from_slice(&SCALE).view([1, 3, 1, 1]));
        let net: Box<dyn Features> = match config.net {
            Backbone::Vgg => Box::new(vgg::Vgg16::new(&(&root / "net"), config.pooling)),
            Backbone::Alex => Box::new(alex::Alex::new(&(&root / "net"), config.pooling)),
        };
        let lins = net
            .channels()
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                (&root / format!("lin{i}") / "model" / 1).var(
                    "weight",
                    &[1, c, 1, 1],
                    nn::Init::Const(0.0),
                )
            })
            .collect();
        let mut lp = Lpips {
            vs,
            config,
            shift,
            scale,
            net,
            lins,
        };
        lp.vs.freeze();
        lp
    }

    /// The VGG LPIPS network from the installed weights (`slimflow weights fetch lpips-vgg`, in
    /// the weights folder); a missing file is [`Error::NotInstalled`], naming the commands that
    /// provide it.
    pub fn from_installed(config: LpipsConfig, device: Device) -> Result<Self> {
        let path = slimflow_weights_locate::locate(slimflow_weights_locate::Net::LpipsVgg, None)
            .map_err(Error::NotInstalled)?;
        Self::load(&path, config, device)
    }

    /// Loads LPIPS from a weights file with the `lpips` package's key names (`scaling_layer.*`,
    /// `net.slice{1..5}.{i}.*`, `lin{0..4}.model.1.weight`; the duplicate `lins.{k}.*` entries are
    /// accepted when equal to `lin{k}`), strictly: any other missing or unexpected key is an error.
    pub fn load(path: &std::path::Path, config: LpipsConfig, device: Device) -> Result<Self> {
        let file = slimflow_tensor_io::read(path).map_err(Error::Weights)?;
        Self::from_file(&file, config, device)
    }

    /// As [`Lpips::load`], from an already read file.
    pub fn from_file(file: &TensorFile, config: LpipsConfig, device: Device) -> Result<Self> {
        let mut lp = Self::build(config, device);
        let mut kept = Vec::with_capacity(file.tensors.len());
        for (name, t) in &file.tensors {
            if let Some(rest) = name.strip_prefix("lins.") {
                let twin = format!("lin{rest}");
                let original = file.get(&twin).map_err(Error::Weights)?;
                if original.size() != t.size()
                    || !original
                        .to_kind(Kind::Double)
                        .equal(&t.to_kind(Kind::Double))
                {
                    return Err(Error::Invalid(format!(
                        "{}: `{name}` differs from `{twin}` (they must be the same tensor)",
                        file.path.display()
                    )));
                }
                continue;
            }
            kept.push((name.clone(), t.shallow_clone()));
        }
        let strict = TensorFile {
            path: file.path.clone(),
            tensors: kept,
            metadata: file.metadata.clone(),
        };
        slimflow_tensor_io::load_strict(&mut lp.vs, &strict, &[]).map_err(Error::Weights)?;
        Ok(lp)
    }

    /// Assembles LPIPS from the files its authors publish: torchvision's ImageNet backbone
    /// (`vgg16-397923af.pth` / `alexnet-owt-7be5be79.pth`, keys `features.{i}.*`; the classifier is
    /// dropped) and the `lpips` package's heads (`weights/v0.1/{vgg,alex}.pth`, keys
    /// `lin{k}.model.1.weight`). Every convolution and head must be present with its shape.
    pub fn from_torchvision(
        backbone: &TensorFile,
        heads: &TensorFile,
        config: LpipsConfig,
        device: Device,
    ) -> Result<Self> {
        let slice_of = |idx: usize| -> usize {
            let bounds: &[usize] = match config.net {
                Backbone::Vgg => &[4, 9, 16, 23],
                Backbone::Alex => &[2, 5, 8, 10],
            };
            1 + bounds.iter().filter(|&&b| idx >= b).count()
        };
        let mut tensors = Vec::new();
        for (name, t) in &backbone.tensors {
            if name.starts_with("classifier.") {
                continue;
            }
            let Some(rest) = name.strip_prefix("features.") else {
                return Err(Error::Invalid(format!(
                    "{}: `{name}` is not a torchvision backbone key (features.* / classifier.*)",
                    backbone.path.display()
                )));
            };
            let idx = rest
                .split('.')
                .next()
                .and_then(|i| i.parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{}: unexpected backbone key `{name}`",
                        backbone.path.display()
                    ))
                })?;
            tensors.push((
                format!("net.slice{}.{rest}", slice_of(idx)),
                t.shallow_clone(),
            ));
        }
        for (name, t) in &heads.tensors {
            if name.starts_with("lin") && !name.starts_with("lins.") {
                tensors.push((name.clone(), t.shallow_clone()));
            }
        }
        tensors.push((
            "scaling_layer.shift".into(),
            Tensor::from_slice(&SHIFT).view([1, 3, 1, 1]),
        ));
        tensors.push((
            "scaling_layer.scale".into(),
            Tensor::from_slice(&SCALE).view([1, 3, 1, 1]),
        ));
        let file = TensorFile {
            path: PathBuf::from(format!(
                "{} + {}",
                backbone.path.display(),
                heads.path.display()
            )),
            tensors,
            metadata: Default::default(),
        };
        Self::from_file(&file, config, device)
    }

    /// Writes the weights (the `lpips` package's key names) as safetensors, atomically.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let meta = std::collections::BTreeMap::from([(
            "slimflow.lpips.net".to_string(),
            format!("{:?}", self.config.net).to_lowercase(),
        )]);
        slimflow_tensor_io::write(path, &slimflow_tensor_io::named_variables(&self.vs), &meta)
            .map_err(Error::Weights)
    }

    /// LPIPS with He-initialised random backbone weights and uniform random heads, seeded: for
    /// benchmarks and tests only — its distances are not perceptual.
    pub fn with_random_weights(config: LpipsConfig, device: Device, seed: i64) -> Self {
        tch::manual_seed(seed);
        let lp = Self::build(config, device);
        // in name order: the draws (and so the weights) follow from the seed alone
        let mut vars: Vec<_> = lp.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (name, mut v) in vars {
                let opts = (Kind::Float, v.device());
                if name.starts_with("net.") && name.ends_with("weight") {
                    let fan_in: i64 = v.size()[1..].iter().product();
                    v.copy_(&(Tensor::randn(v.size(), opts) * (2.0 / fan_in as f64).sqrt()));
                } else if name.starts_with("net.") {
                    v.copy_(&(Tensor::randn(v.size(), opts) * 0.01));
                } else if name.starts_with("lin") {
                    v.copy_(&Tensor::rand(v.size(), opts));
                }
            }
        });
        lp
    }

    /// The configuration.
    pub fn config(&self) -> &LpipsConfig {
        &self.config
    }

    /// Number of network parameters (backbone and heads; the scaling constants excluded).
    pub fn num_params(&self) -> i64 {
        self.vs
            .variables()
            .iter()
            .filter(|(k, _)| !k.starts_with("scaling_layer"))
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }

    fn check(&self, a: &Tensor, b: &Tensor) -> Result<()> {
        if a.size() != b.size() {
            return Err(Error::ShapeMismatch {
                what: "LPIPS inputs",
                a: a.size(),
                b: b.size(),
            });
        }
        let s = a.size();
        if s.len() != 4 || s[1] != 3 {
            return Err(Error::Invalid(format!(
                "LPIPS needs RGB batches [B, 3, H, W], got {s:?}"
            )));
        }
        let min = match (self.config.net, self.config.resize) {
            // resized before the network: any input size works (SlimFlow upsamples 32 → 64)
            (_, Some(_)) => 1,
            (Backbone::Vgg, None) => 16,
            (Backbone::Alex, None) => 32,
        };
        if s[2].min(s[3]) < min {
            return Err(Error::Invalid(format!(
                "LPIPS inputs must be at least {min}×{min} pixels, got {}×{}",
                s[2], s[3]
            )));
        }
        Ok(())
    }

    /// The distance and its per-layer parts. Inputs in [-1, 1], or in [0, 1] with `normalize`.
    pub fn forward(&self, in0: &Tensor, in1: &Tensor, normalize: bool) -> Result<LpipsOutput> {
        self.check(in0, in1)?;
        let prep = |x: &Tensor| {
            let x = x.to_device(self.vs.device()).to_kind(Kind::Float);
            let x = if normalize { x * 2.0 - 1.0 } else { x };
            let x = match self.config.resize {
                Some(r) if x.size()[2..] != [r.size, r.size] => {
                    x.upsample_bilinear2d([r.size, r.size], r.align_corners, None, None)
                }
                _ => x,
            };
            (x - &self.shift) / &self.scale
        };
        let b = in0.size()[0];
        let unit = |f: &Tensor| {
            f / (f
                .square()
                .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
                .sqrt()
                + 1e-10)
        };
        // Both inputs in one pass ([2B, 3, H, W]) unless only one needs a gradient (a training
        // loss against a fixed target): then the other passes alone without autograd, so the
        // backward does not run through the network for it (half of LPIPS' backward work).
        let grads = (in0.requires_grad(), in1.requires_grad());
        let pairs: Vec<(Tensor, Tensor)> = if grads.0 != grads.1 {
            let pass = |x: &Tensor, grad: bool| {
                let p = prep(x);
                if grad {
                    self.net.taps(&p)
                } else {
                    tch::no_grad(|| self.net.taps(&p))
                }
            };
            let (ta, tb) = (pass(in0, grads.0), pass(in1, grads.1));
            ta.iter()
                .zip(&tb)
                .map(|(a, b)| (unit(a), unit(b)))
                .collect()
        } else {
            let taps = self.net.taps(&Tensor::cat(&[prep(in0), prep(in1)], 0));
            taps.iter()
                .map(|f| {
                    let n = unit(f);
                    (n.narrow(0, 0, b), n.narrow(0, b, b))
                })
                .collect()
        };
        let parts: Vec<Tensor> = pairs
            .iter()
            .zip(&self.lins)
            .map(|((na, nb), w)| {
                let d = (na - nb).square();
                d.conv2d(w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
                    .mean_dim([2i64, 3].as_slice(), false, Kind::Float)
                    .view([b])
            })
            .collect();
        let per_layer = Tensor::stack(&parts, 0);
        let dist = per_layer.sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
        Ok(LpipsOutput { dist, per_layer })
    }
}

impl Premetric for Lpips {
    /// LPIPS between two batches in [-1, 1]: [B].
    fn distance(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(self.forward(a, b, false)?.dist)
    }
}

/// Max or average 2-D pooling with the given kernel and stride (no padding, floor mode).
pub(crate) fn pool(x: &Tensor, pooling: Pooling, kernel: i64, stride: i64) -> Tensor {
    match pooling {
        Pooling::Max => x.max_pool2d([kernel, kernel], [stride, stride], [0, 0], [1, 1], false),
        Pooling::Avg => x.avg_pool2d(
            [kernel, kernel],
            [stride, stride],
            [0, 0],
            false,
            true,
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_lpips(net: Backbone) -> Lpips {
        Lpips::with_random_weights(
            LpipsConfig {
                net,
                ..Default::default()
            },
            Device::Cpu,
            0,
        )
    }

    #[test]
    fn distance_properties_and_gradients() {
        for net in [Backbone::Vgg, Backbone::Alex] {
            let lp = random_lpips(net);
            let x = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
            let y = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
            let same = lp.distance(&x, &x).unwrap();
            assert_eq!(
                same.abs().max().double_value(&[]),
                0.0,
                "{net:?}: LPIPS(x, x) = 0"
            );
            let xy = lp.distance(&x, &y).unwrap();
            let yx = lp.distance(&y, &x).unwrap();
            assert!(xy.allclose(&yx, 1e-6, 1e-5, false), "{net:?}: symmetric");
            assert!(xy.min().double_value(&[]) > 0.0);
            let xg = x.set_requires_grad(true);
            lp.distance(&xg, &y).unwrap().sum(Kind::Float).backward();
            let g = xg.grad();
            assert!(
                g.isfinite().all().int64_value(&[]) == 1
                    && g.abs().sum(Kind::Float).double_value(&[]) > 0.0
            );
            for (name, v) in lp.vs.variables() {
                assert!(
                    !v.requires_grad() && !v.grad().defined(),
                    "{net:?}: {name} must be frozen"
                );
            }
        }
    }

    #[test]
    fn a_fixed_target_passes_without_autograd_and_gives_the_batched_value_and_gradient() {
        let lp = random_lpips(Backbone::Alex);
        let x = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let y = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        // separate passes: only x needs a gradient
        let xa = x.copy().set_requires_grad(true);
        let da = lp.distance(&xa, &y).unwrap();
        da.sum(Kind::Float).backward();
        // one batched pass: both need one
        let xb = x.copy().set_requires_grad(true);
        let yb = y.copy().set_requires_grad(true);
        let db = lp.distance(&xb, &yb).unwrap();
        db.sum(Kind::Float).backward();
        let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        assert!(diff(&da.detach(), &db.detach()) < 1e-6);
        assert!(diff(&xa.grad(), &xb.grad()) < 1e-6);
        assert!(yb.grad().defined(), "the batched pass reached the target");
        // the swapped case: the target side is the one that needs a gradient
        let ys = y.copy().set_requires_grad(true);
        let ds = lp.distance(&x, &ys).unwrap();
        assert!(diff(&ds.detach(), &db.detach()) < 1e-6);
        ds.sum(Kind::Float).backward();
        assert!(diff(&ys.grad(), &yb.grad()) < 1e-6);
    }

    #[test]
    fn parameter_counts_match_the_lpips_package() {
        // lpips.LPIPS(net='vgg').state_dict(): 14 716 160 parameters (parity json `param_count`);
        // AlexNet: 2 469 696 conv + 1 152 lin = 2 470 848.
        assert_eq!(random_lpips(Backbone::Vgg).num_params(), 14_716_160);
        assert_eq!(random_lpips(Backbone::Alex).num_params(), 2_470_848);
    }

    #[test]
    fn bad_inputs_are_rejected() {
        let lp = random_lpips(Backbone::Alex);
        let a = Tensor::zeros([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([2, 1, 64, 64], (Kind::Float, Device::Cpu));
        assert!(lp
            .distance(&a, &b)
            .unwrap_err()
            .to_string()
            .contains("[2, 1, 64, 64]"));
        assert!(lp.distance(&b, &b).unwrap_err().to_string().contains("RGB"));
        let tiny = Tensor::zeros([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        assert!(lp.distance(&tiny, &tiny).is_err());
    }
}
