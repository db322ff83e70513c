//! The FID Inception-v3 feature extractor: pytorch-fid's port of the TensorFlow FID network
//! (`pytorch_fid.inception.InceptionV3` with `use_fid_inception=True`, 2048-d pool3 output), with
//! pytorch-fid's state-dict names (`blocks.<b>.<j>.…`), so its weight files load unchanged.
//!
//! Differences from torchvision's Inception3 that FID depends on: the branch pools of Mixed_5b–5d,
//! 6b–6e and 7b average without counting padding, and Mixed_7c's branch pool is a max pool.
//! Preprocessing is pytorch-fid's: images in [0, 1], bilinear resize to 299×299
//! (align_corners = false), then 2x − 1. BatchNorm runs in eval mode (eps = 1e-3).

use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Conv (no bias) → BatchNorm(eps 1e-3) → ReLU, torchvision's `BasicConv2d`.
#[derive(Debug)]
struct BasicConv {
    conv: nn::Conv<[i64; 2]>,
    bn: nn::BatchNorm,
}

impl BasicConv {
    fn new(p: nn::Path, cin: i64, cout: i64, k: [i64; 2], stride: i64, pad: [i64; 2]) -> Self {
        let cfg = nn::ConvConfigND::<[i64; 2]> {
            stride: [stride, stride],
            padding: pad,
            bias: false,
            ..Default::default()
        };
        let conv = nn::conv(&p / "conv", cin, cout, k, cfg);
        let bn = nn::batch_norm2d(
            &p / "bn",
            cout,
            nn::BatchNormConfig {
                eps: 1e-3,
                ..Default::default()
            },
        );
        BasicConv { conv, bn }
    }

    fn sq(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, pad: i64) -> Self {
        Self::new(p, cin, cout, [k, k], stride, [pad, pad])
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.apply(&self.conv).apply_t(&self.bn, false).relu()
    }
}

/// How an Inception block pools its pool branch.
#[derive(Debug, Clone, Copy)]
enum BranchPool {
    /// 3×3 average, stride 1, padding 1, padding not counted (FID blocks).
    AvgNoPad,
    /// 3×3 max, stride 1, padding 1 (FIDInceptionE_2).
    Max,
}

fn branch_pool(x: &Tensor, pool: BranchPool) -> Tensor {
    match pool {
        BranchPool::AvgNoPad => x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None),
        BranchPool::Max => x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false),
    }
}

fn max_pool_3s2(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// The blocks Mixed_5b … Mixed_7c.
// Eleven values built once per network: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Mixed {
    /// InceptionA (FID variant).
    A {
        b1: BasicConv,
        b5: [BasicConv; 2],
        b3: [BasicConv; 3],
        pool: BasicConv,
    },
    /// InceptionB (grid reduction).
    B {
        b3: BasicConv,
        b3dbl: [BasicConv; 3],
    },
    /// InceptionC (FID variant).
    C {
        b1: BasicConv,
        b7: [BasicConv; 3],
        b7dbl: [BasicConv; 5],
        pool: BasicConv,
    },
    /// InceptionD (grid reduction).
    D {
        b3: [BasicConv; 2],
        b7x3: [BasicConv; 4],
    },
    /// InceptionE (FID variants E_1 / E_2 by their branch pool).
    E {
        b1: BasicConv,
        b3_1: BasicConv,
        b3_2: [BasicConv; 2],
        b3dbl: [BasicConv; 2],
        b3dbl_3: [BasicConv; 2],
        pool: BasicConv,
        kind: BranchPool,
    },
}

impl Mixed {
    fn a(p: &nn::Path, cin: i64, pool_features: i64) -> Self {
        let c = |n: &str, i, o, k, pad| BasicConv::sq(p / n, i, o, k, 1, pad);
        Mixed::A {
            b1: c("branch1x1", cin, 64, 1, 0),
            b5: [
                c("branch5x5_1", cin, 48, 1, 0),
                c("branch5x5_2", 48, 64, 5, 2),
            ],
            b3: [
                c("branch3x3dbl_1", cin, 64, 1, 0),
                c("branch3x3dbl_2", 64, 96, 3, 1),
                c("branch3x3dbl_3", 96, 96, 3, 1),
            ],
            pool: c("branch_pool", cin, pool_features, 1, 0),
        }
    }

    fn b(p: &nn::Path, cin: i64) -> Self {
        Mixed::B {
            b3: BasicConv::sq(p / "branch3x3", cin, 384, 3, 2, 0),
            b3dbl: [
                BasicConv::sq(p / "branch3x3dbl_1", cin, 64, 1, 1, 0),
                BasicConv::sq(p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
                BasicConv::sq(p / "branch3x3dbl_3", 96, 96, 3, 2, 0),
            ],
        }
    }

    fn c(p: &nn::Path, cin: i64, c7: i64) -> Self {
        let one = |n: &str, i, o| BasicConv::sq(p / n, i, o, 1, 1, 0);
        let row = |n: &str, i, o| BasicConv::new(p / n, i, o, [1, 7], 1, [0, 3]);
        let col = |n: &str, i, o| BasicConv::new(p / n, i, o, [7, 1], 1, [3, 0]);
        Mixed::C {
            b1: one("branch1x1", cin, 192),
            b7: [
                one("branch7x7_1", cin, c7),
                row("branch7x7_2", c7, c7),
                col("branch7x7_3", c7, 192),
            ],
            b7dbl: [
                one("branch7x7dbl_1", cin, c7),
                col("branch7x7dbl_2", c7, c7),
                row("branch7x7dbl_3", c7, c7),
                col("branch7x7dbl_4", c7, c7),
                row("branch7x7dbl_5", c7, 192),
            ],
            pool: one("branch_pool", cin, 192),
        }
    }

    fn d(p: &nn::Path, cin: i64) -> Self {
        Mixed::D {
            b3: [
                BasicConv::sq(p / "branch3x3_1", cin, 192, 1, 1, 0),
                BasicConv::sq(p / "branch3x3_2", 192, 320, 3, 2, 0),
            ],
            b7x3: [
                BasicConv::sq(p / "branch7x7x3_1", cin, 192, 1, 1, 0),
                BasicConv::new(p / "branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3]),
                BasicConv::new(p / "branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0]),
                BasicConv::sq(p / "branch7x7x3_4", 192, 192, 3, 2, 0),
            ],
        }
    }

    fn e(p: &nn::Path, cin: i64, kind: BranchPool) -> Self {
        let row = |n: &str, i, o| BasicConv::new(p / n, i, o, [1, 3], 1, [0, 1]);
        let col = |n: &str, i, o| BasicConv::new(p / n, i, o, [3, 1], 1, [1, 0]);
        Mixed::E {
            b1: BasicConv::sq(p / "branch1x1", cin, 320, 1, 1, 0),
            b3_1: BasicConv::sq(p / "branch3x3_1", cin, 384, 1, 1, 0),
            b3_2: [row("branch3x3_2a", 384, 384), col("branch3x3_2b", 384, 384)],
            b3dbl: [
                BasicConv::sq(p / "branch3x3dbl_1", cin, 448, 1, 1, 0),
                BasicConv::sq(p / "branch3x3dbl_2", 448, 384, 3, 1, 1),
            ],
            b3dbl_3: [
                row("branch3x3dbl_3a", 384, 384),
                col("branch3x3dbl_3b", 384, 384),
            ],
            pool: BasicConv::sq(p / "branch_pool", cin, 192, 1, 1, 0),
            kind,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let chain = |convs: &[BasicConv], x: &Tensor| {
            convs.iter().fold(x.shallow_clone(), |h, c| c.forward(&h))
        };
        match self {
            Mixed::A { b1, b5, b3, pool } => Tensor::cat(
                &[
                    b1.forward(x),
                    chain(b5, x),
                    chain(b3, x),
                    pool.forward(&branch_pool(x, BranchPool::AvgNoPad)),
                ],
                1,
            ),
            Mixed::B { b3, b3dbl } => {
                Tensor::cat(&[b3.forward(x), chain(b3dbl, x), max_pool_3s2(x)], 1)
            }
            Mixed::C {
                b1,
                b7,
                b7dbl,
                pool,
            } => Tensor::cat(
                &[
                    b1.forward(x),
                    chain(b7, x),
                    chain(b7dbl, x),
                    pool.forward(&branch_pool(x, BranchPool::AvgNoPad)),
                ],
                1,
            ),
            Mixed::D { b3, b7x3 } => {
                Tensor::cat(&[chain(b3, x), chain(b7x3, x), max_pool_3s2(x)], 1)
            }
            Mixed::E {
                b1,
                b3_1,
                b3_2,
                b3dbl,
                b3dbl_3,
                pool,
                kind,
            } => {
                let h3 = b3_1.forward(x);
                let h3 = Tensor::cat(&[b3_2[0].forward(&h3), b3_2[1].forward(&h3)], 1);
                let hd = chain(b3dbl, x);
                let hd = Tensor::cat(&[b3dbl_3[0].forward(&hd), b3dbl_3[1].forward(&hd)], 1);
                Tensor::cat(
                    &[b1.forward(x), h3, hd, pool.forward(&branch_pool(x, *kind))],
                    1,
                )
            }
        }
    }
}

/// pytorch-fid's FID Inception-v3 up to pool3.
#[derive(Debug)]
pub struct FidInception {
    vs: nn::VarStore,
    stem0: [BasicConv; 3],
    stem1: [BasicConv; 2],
    mixed: Vec<Mixed>,
}

/// Keys in pytorch-fid's state dict that have no counterpart here (BatchNorm's step counter).
pub const IGNORED_KEYS: &[&str] = &["num_batches_tracked"];

/// Where each top-level module of torchvision's `Inception3` sits in pytorch-fid's `InceptionV3`
/// (`blocks.<block>.<index>`); the pooling layers in between hold no parameters.
const OFFICIAL_MODULES: [(&str, &str); 16] = [
    ("Conv2d_1a_3x3", "blocks.0.0"),
    ("Conv2d_2a_3x3", "blocks.0.1"),
    ("Conv2d_2b_3x3", "blocks.0.2"),
    ("Conv2d_3b_1x1", "blocks.1.0"),
    ("Conv2d_4a_3x3", "blocks.1.1"),
    ("Mixed_5b", "blocks.2.0"),
    ("Mixed_5c", "blocks.2.1"),
    ("Mixed_5d", "blocks.2.2"),
    ("Mixed_6a", "blocks.2.3"),
    ("Mixed_6b", "blocks.2.4"),
    ("Mixed_6c", "blocks.2.5"),
    ("Mixed_6d", "blocks.2.6"),
    ("Mixed_6e", "blocks.2.7"),
    ("Mixed_7a", "blocks.3.0"),
    ("Mixed_7b", "blocks.3.1"),
    ("Mixed_7c", "blocks.3.2"),
];

/// Our name for a key of the published weight file; `None` for keys the FID network does not use
/// (`fc.*`, `AuxLogits.*`). Unknown modules keep their name, so a strict load reports them.
pub fn official_key(name: &str) -> Option<String> {
    let (module, rest) = name.split_once('.')?;
    if module == "fc" || module == "AuxLogits" {
        return None;
    }
    Some(match OFFICIAL_MODULES.iter().find(|(m, _)| *m == module) {
        Some((_, ours)) => format!("{ours}.{rest}"),
        None => name.to_string(),
    })
}

impl FidInception {
    fn build(device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let b = vs.root() / "blocks";
        let (b0, b1, b2, b3) = (&b / 0, &b / 1, &b / 2, &b / 3);
        let stem0 = [
            BasicConv::sq(&b0 / 0, 3, 32, 3, 2, 0),
            BasicConv::sq(&b0 / 1, 32, 32, 3, 1, 0),
            BasicConv::sq(&b0 / 2, 32, 64, 3, 1, 1),
        ];
        let stem1 = [
            BasicConv::sq(&b1 / 0, 64, 80, 1, 1, 0),
            BasicConv::sq(&b1 / 1, 80, 192, 3, 1, 0),
        ];
        let mixed = vec![
            Mixed::a(&(&b2 / 0), 192, 32),
            Mixed::a(&(&b2 / 1), 256, 64),
            Mixed::a(&(&b2 / 2), 288, 64),
            Mixed::b(&(&b2 / 3), 288),
            Mixed::c(&(&b2 / 4), 768, 128),
            Mixed::c(&(&b2 / 5), 768, 160),
            Mixed::c(&(&b2 / 6), 768, 160),
            Mixed::c(&(&b2 / 7), 768, 192),
            Mixed::d(&(&b3 / 0), 768),
            Mixed::e(&(&b3 / 1), 1280, BranchPool::AvgNoPad),
            Mixed::e(&(&b3 / 2), 2048, BranchPool::Max),
        ];
        let mut net = FidInception {
            vs,
            stem0,
            stem1,
            mixed,
        };
        net.vs.freeze();
        net
    }

    /// The network with seeded He-initialised convolutions and identity batch norms: for
    /// benchmarks and tests only — its features are not FID features.
    pub fn with_random_weights(device: Device, seed: i64) -> Self {
        tch::manual_seed(seed);
        let net = Self::build(device);
        tch::no_grad(|| {
            for (name, mut v) in net.vs.variables() {
                if name.ends_with("conv.weight") {
                    let fan_in: i64 = v.size()[1..].iter().product();
                    v.copy_(&(v.randn_like() * (2.0 / fan_in as f64).sqrt()));
                } else if name.ends_with("running_var") || name.ends_with("bn.weight") {
                    let _ = v.fill_(1.0);
                } else if name.ends_with("running_mean") || name.ends_with("bn.bias") {
                    let _ = v.fill_(0.0);
                }
            }
        });
        net
    }

    /// Loads the network from a file with pytorch-fid's key names, strictly (only BatchNorm's
    /// `num_batches_tracked` may be extra); values are cast to float32.
    pub fn load(path: &std::path::Path, device: Device) -> Result<Self> {
        let file = slimflow_tensor_io::read(path).map_err(|e| Error::BadInput(e.to_string()))?;
        Self::from_file(&file, device)
    }

    /// Loads from tensors named either like pytorch-fid's `InceptionV3` module (`blocks.*`) or like
    /// its published `pt_inception-2015-12-05-6726825d.pth` (torchvision `Inception3` names such as
    /// `Mixed_5b.branch1x1.conv.weight`; the 1008-class `fc` is dropped), strictly.
    pub fn from_file(file: &slimflow_tensor_io::TensorFile, device: Device) -> Result<Self> {
        let mut net = Self::build(device);
        let official = file
            .tensors
            .iter()
            .any(|(k, _)| k.starts_with("Conv2d_1a_3x3."));
        let mapped;
        let file = if official {
            mapped = slimflow_tensor_io::TensorFile {
                path: file.path.clone(),
                tensors: file
                    .tensors
                    .iter()
                    .filter_map(|(k, t)| Some((official_key(k)?, t.shallow_clone())))
                    .collect(),
                metadata: file.metadata.clone(),
            };
            &mapped
        } else {
            file
        };
        slimflow_tensor_io::load_strict(&mut net.vs, file, IGNORED_KEYS)
            .map_err(|e| Error::BadInput(e.to_string()))?;
        Ok(net)
    }

    /// Writes the weights (`blocks.*` names, running statistics included) as safetensors.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        slimflow_tensor_io::write(
            path,
            &slimflow_tensor_io::named_variables(&self.vs),
            &Default::default(),
        )
        .map_err(|e| Error::BadInput(e.to_string()))
    }

    /// Number of parameters (convolutions and BatchNorm affine terms; running statistics excluded).
    pub fn num_params(&self) -> i64 {
        self.vs
            .variables()
            .iter()
            .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }

    /// pool3 features [B, 2048] of images [B, 3, H, W] in [0, 1].
    pub fn pool3(&self, images: &Tensor) -> Result<Tensor> {
        let s = images.size();
        if s.len() != 4 || s[1] != 3 {
            return Err(Error::BadInput(format!(
                "FID Inception needs RGB images [B, 3, H, W] in [0, 1], got {s:?}"
            )));
        }
        Ok(tch::no_grad(|| {
            let x = images.to_device(self.vs.device()).to_kind(Kind::Float);
            let x = if s[2] != 299 || s[3] != 299 {
                x.upsample_bilinear2d([299, 299], false, None, None)
            } else {
                x
            };
            let mut h = x * 2.0 - 1.0;
            for c in &self.stem0 {
                h = c.forward(&h);
            }
            h = max_pool_3s2(&h);
            for c in &self.stem1 {
                h = c.forward(&h);
            }
            h = max_pool_3s2(&h);
            for m in &self.mixed {
                h = m.forward(&h);
            }
            h.mean_dim([2i64, 3].as_slice(), false, Kind::Float)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_matches_pytorch_fid() {
        let net = FidInception::build(Device::Cpu);
        // pytorch_fid InceptionV3 (2048-d): 21 785 568 parameters (parity json `param_count`).
        assert_eq!(net.num_params(), 21_785_568);
        let x = Tensor::rand([1, 3, 64, 64], (Kind::Float, Device::Cpu));
        assert_eq!(net.pool3(&x).unwrap().size(), vec![1, 2048]);
        assert!(net
            .pool3(&Tensor::rand([1, 1, 64, 64], (Kind::Float, Device::Cpu)))
            .is_err());
    }
}
