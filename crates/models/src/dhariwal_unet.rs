//! Port of EDM's `DhariwalUNet` (NVlabs/edm `training/networks.py`; also rfpp `network_edm.py` and
//! SlimFlow `models/edm_networks.py`): the ADM U-Net of Dhariwal & Nichol (2021) as parameterised by
//! Karras et al. (2022), the ImageNet 64×64 network of EDM, 2-rectified flow++ and SlimFlow.
//! Parameter paths are EDM's state-dict keys (`map_layer0.weight`, `map_label.weight`,
//! `enc.32x32_block1.qkv.weight`, `dec.8x8_in0.affine.bias`, `out_conv.weight`, …), so official
//! checkpoints load as they are.
//!
//! What distinguishes it from SongUNet: class labels are added after the mapping MLP (no √label_dim
//! factor, no bias), the positional embedding has no endpoint and no half swap, blocks use scale-and-
//! shift conditioning with 64 channels per attention head (none below 64 channels), skips project
//! only when the channels change, and every decoder block at an attention resolution attends.
//!
//! As a velocity field directly ([`crate::ArchConfig::DhariwalUnet`]) it takes SlimFlow's time input
//! 999·t (`reflow/reflow.py`: `model(x, t*999, label)`); inside rfpp's EDM-velocity wrapper
//! ([`crate::ArchConfig::EdmVelocityAdm`]) it takes EDM's noise labels ln(σ)/4.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::edm_layers::{
    positional_args, BlockCfg, BlockStyle, Conv2d, GroupNorm, Init, Linear, Resample, UNetBlock,
    ADM_INIT, ADM_ZERO,
};

/// Constructor arguments of EDM's `DhariwalUNet`, with its names and defaults (EDM's ImageNet 64
/// ADM: `train.py --arch=adm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhariwalUnetConfig {
    /// Image resolution at input/output.
    pub img_resolution: i64,
    /// Colour channels at input.
    pub in_channels: i64,
    /// Colour channels at output.
    pub out_channels: i64,
    /// Number of class labels, 0 = unconditional (ImageNet: 1000).
    pub label_dim: i64,
    /// Augmentation label dimensionality, 0 = none.
    pub augment_dim: i64,
    /// Base channel multiplier.
    pub model_channels: i64,
    /// Per-resolution channel multipliers.
    pub channel_mult: Vec<i64>,
    /// Embedding width multiplier.
    pub channel_mult_emb: i64,
    /// Residual blocks per resolution.
    pub num_blocks: i64,
    /// Resolutions with self-attention (blocks with fewer than 64 channels have none, as in EDM).
    pub attn_resolutions: Vec<i64>,
    /// Dropout of intermediate activations (training only).
    pub dropout: f64,
    /// Probability of dropping the class label in training (classifier-free guidance).
    pub label_dropout: f64,
}

impl Default for DhariwalUnetConfig {
    fn default() -> Self {
        DhariwalUnetConfig {
            img_resolution: 64,
            in_channels: 3,
            out_channels: 3,
            label_dim: 0,
            augment_dim: 0,
            model_channels: 192,
            channel_mult: vec![1, 2, 3, 4],
            channel_mult_emb: 4,
            num_blocks: 3,
            attn_resolutions: vec![32, 16, 8],
            dropout: 0.10,
            label_dropout: 0.0,
        }
    }
}

/// One layer of the encoder or decoder, in EDM's order.
#[derive(Debug, Clone, PartialEq)]
struct Layer {
    name: String,
    cin: i64,
    cout: i64,
    kind: LayerKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum LayerKind {
    Conv,
    Block { up: bool, down: bool, attn: bool },
}

impl DhariwalUnetConfig {
    /// EDM's construction order: the encoder (`enc.*`), then the decoder (`dec.*`).
    fn plan(&self) -> (Vec<Layer>, Vec<Layer>) {
        let block = |name: String, cin, cout, up, down, attn| Layer {
            name,
            cin,
            cout,
            kind: LayerKind::Block { up, down, attn },
        };
        let mut enc = Vec::new();
        let mut cout = self.in_channels;
        for (level, &mult) in self.channel_mult.iter().enumerate() {
            let res = self.img_resolution >> level;
            if level == 0 {
                let cin = cout;
                cout = self.model_channels * mult;
                enc.push(Layer {
                    name: format!("{res}x{res}_conv"),
                    cin,
                    cout,
                    kind: LayerKind::Conv,
                });
            } else {
                enc.push(block(
                    format!("{res}x{res}_down"),
                    cout,
                    cout,
                    false,
                    true,
                    false,
                ));
            }
            for idx in 0..self.num_blocks {
                let cin = cout;
                cout = self.model_channels * mult;
                let attn = self.attn_resolutions.contains(&res);
                enc.push(block(
                    format!("{res}x{res}_block{idx}"),
                    cin,
                    cout,
                    false,
                    false,
                    attn,
                ));
            }
        }
        let mut skips: Vec<i64> = enc.iter().map(|l| l.cout).collect();
        let mut dec = Vec::new();
        let levels = self.channel_mult.len();
        for (level, &mult) in self.channel_mult.iter().enumerate().rev() {
            let res = self.img_resolution >> level;
            if level == levels - 1 {
                dec.push(block(
                    format!("{res}x{res}_in0"),
                    cout,
                    cout,
                    false,
                    false,
                    true,
                ));
                dec.push(block(
                    format!("{res}x{res}_in1"),
                    cout,
                    cout,
                    false,
                    false,
                    false,
                ));
            } else {
                dec.push(block(
                    format!("{res}x{res}_up"),
                    cout,
                    cout,
                    true,
                    false,
                    false,
                ));
            }
            for idx in 0..=self.num_blocks {
                let cin = cout + skips.pop().unwrap_or(0);
                cout = self.model_channels * mult;
                let attn = self.attn_resolutions.contains(&res);
                dec.push(block(
                    format!("{res}x{res}_block{idx}"),
                    cin,
                    cout,
                    false,
                    false,
                    attn,
                ));
            }
        }
        (enc, dec)
    }

    /// Every problem of the config.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let levels = self.channel_mult.len() as u32;
        if levels == 0 {
            p.push("channel_mult must not be empty".into());
        }
        if levels > 16
            || self.img_resolution < 1
            || (levels > 0 && self.img_resolution % (1 << (levels - 1)) != 0)
        {
            p.push(format!(
                "img_resolution {} must be divisible by 2^(levels − 1)",
                self.img_resolution
            ));
        }
        for (name, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("model_channels", self.model_channels),
            ("channel_mult_emb", self.channel_mult_emb),
            ("num_blocks", self.num_blocks),
        ] {
            if v < 1 {
                p.push(format!("{name} must be ≥ 1, got {v}"));
            }
        }
        if self.channel_mult.iter().any(|&m| m < 1) {
            p.push("channel_mult entries must be ≥ 1".into());
        }
        if self.label_dim < 0 || self.augment_dim < 0 {
            p.push("label_dim and augment_dim must be ≥ 0".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            p.push(format!("dropout must lie in [0, 1), got {}", self.dropout));
        }
        if !(0.0..1.0).contains(&self.label_dropout) {
            p.push(format!(
                "label_dropout must lie in [0, 1), got {}",
                self.label_dropout
            ));
        }
        if self.label_dropout > 0.0 && self.label_dim == 0 {
            p.push("label_dropout needs a class-conditional network (label_dim > 0)".into());
        }
        let levels_res: Vec<i64> = (0..levels.min(16))
            .map(|l| self.img_resolution >> l)
            .collect();
        for r in &self.attn_resolutions {
            if !levels_res.contains(r) {
                p.push(format!(
                    "attn_resolutions: {r} is not one of the network's resolutions {levels_res:?}"
                ));
            }
        }
        if p.is_empty() {
            // Group norm takes min(32, C/4) groups, which must divide C (EDM asserts the same).
            let (enc, dec) = self.plan();
            let mut bad: Vec<i64> = enc
                .iter()
                .chain(&dec)
                .filter(|l| matches!(l.kind, LayerKind::Block { .. }))
                .flat_map(|l| [l.cin, l.cout])
                .filter(|&c| c < 4 || c % (c / 4).min(32) != 0)
                .collect();
            bad.sort_unstable();
            bad.dedup();
            if !bad.is_empty() {
                p.push(format!(
                    "group norm needs channel counts divisible by min(32, C/4); these are not: \
                     {bad:?} (model_channels {} × channel_mult {:?}, decoder inputs include skips)",
                    self.model_channels, self.channel_mult
                ));
            }
        }
        p
    }
}

#[derive(Debug)]
enum Part {
    Conv(Conv2d),
    Block(Box<UNetBlock>),
}

/// Port of EDM `DhariwalUNet`.
#[derive(Debug)]
pub struct DhariwalUnet {
    cfg: DhariwalUnetConfig,
    map_augment: Option<Linear>,
    map_layer0: Linear,
    map_layer1: Linear,
    map_label: Option<Linear>,
    enc: Vec<Part>,
    dec: Vec<Part>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    arch: crate::ArchConfig,
}

impl DhariwalUnet {
    /// Builds the network under `p` (validate the config first).
    pub fn new(p: &nn::Path, cfg: &DhariwalUnetConfig) -> Self {
        let emb_channels = cfg.model_channels * cfg.channel_mult_emb;
        let bc = BlockCfg {
            emb_channels,
            dropout: cfg.dropout,
            filter: vec![1.0, 1.0],
            style: BlockStyle::Adm,
        };
        let map_augment = (cfg.augment_dim > 0).then(|| {
            Linear::with_init(
                p / "map_augment",
                cfg.augment_dim,
                cfg.model_channels,
                false,
                ADM_ZERO,
            )
        });
        let map_layer0 = Linear::with_init(
            p / "map_layer0",
            cfg.model_channels,
            emb_channels,
            true,
            ADM_INIT,
        );
        let map_layer1 =
            Linear::with_init(p / "map_layer1", emb_channels, emb_channels, true, ADM_INIT);
        // kaiming_normal × √label_dim: N(0, 1).
        let map_label = (cfg.label_dim > 0).then(|| {
            Linear::with_init(
                p / "map_label",
                cfg.label_dim,
                emb_channels,
                false,
                Init::KaimingNormal {
                    weight: (cfg.label_dim as f64).sqrt(),
                },
            )
        });
        let build = |root: nn::Path, layers: &[Layer]| -> Vec<Part> {
            layers
                .iter()
                .map(|l| match l.kind {
                    LayerKind::Conv => Part::Conv(Conv2d::with_init(
                        &root / l.name.as_str(),
                        l.cin,
                        l.cout,
                        3,
                        true,
                        Resample::default(),
                        &bc.filter,
                        ADM_INIT,
                    )),
                    LayerKind::Block { up, down, attn } => Part::Block(Box::new(UNetBlock::new(
                        &root / l.name.as_str(),
                        l.cin,
                        l.cout,
                        up,
                        down,
                        attn,
                        &bc,
                    ))),
                })
                .collect()
        };
        let (enc_plan, dec_plan) = cfg.plan();
        let cout = dec_plan.last().map_or(cfg.model_channels, |l| l.cout);
        DhariwalUnet {
            cfg: cfg.clone(),
            map_augment,
            map_layer0,
            map_layer1,
            map_label,
            enc: build(p / "enc", &enc_plan),
            dec: build(p / "dec", &dec_plan),
            out_norm: GroupNorm::new(p / "out_norm", cout, 1e-5),
            out_conv: Conv2d::with_init(
                p / "out_conv",
                cout,
                cfg.out_channels,
                3,
                true,
                Resample::default(),
                &bc.filter,
                ADM_ZERO,
            ),
            arch: crate::ArchConfig::DhariwalUnet(cfg.clone()),
        }
    }

    /// The config.
    pub fn config(&self) -> &DhariwalUnetConfig {
        &self.cfg
    }

    /// The weights' dtype (the network computes in it).
    pub fn kind(&self) -> Kind {
        self.map_layer0.weight.kind()
    }

    /// F(x, noise_labels): x [B, in_channels, R, R]; noise_labels `[B]`; class_labels [B, label_dim]
    /// (one-hot, float) when conditional (absent: no label term, as zeros give); augment_labels
    /// [B, augment_dim] or none.
    pub fn forward_t(
        &self,
        x: &Tensor,
        noise_labels: &Tensor,
        class_labels: Option<&Tensor>,
        augment_labels: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let kind = self.kind();
        let args = positional_args(
            &noise_labels.to_kind(Kind::Float),
            self.cfg.model_channels,
            false,
        );
        let mut emb = Tensor::cat(&[args.cos(), args.sin()], 1).to_kind(kind);
        if let (Some(m), Some(a)) = (&self.map_augment, augment_labels) {
            emb += m.forward(&a.to_kind(kind));
        }
        let mut emb = self
            .map_layer1
            .forward(&self.map_layer0.forward(&emb).silu());
        if let (Some(m), Some(y)) = (&self.map_label, class_labels) {
            let y = y.to_kind(kind);
            let y = if train && self.cfg.label_dropout > 0.0 {
                let keep = Tensor::rand([x.size()[0], 1], (Kind::Float, x.device()))
                    .ge(self.cfg.label_dropout)
                    .to_kind(kind);
                y * keep
            } else {
                y
            };
            emb += m.forward(&y);
        }
        let emb = emb.silu();

        let mut skips: Vec<Tensor> = Vec::new();
        let mut x = x.shallow_clone();
        for part in &self.enc {
            x = match part {
                Part::Conv(c) => c.forward(&x),
                Part::Block(b) => b.forward(&x, &emb, train),
            };
            skips.push(x.shallow_clone());
        }
        for part in &self.dec {
            if let Part::Block(b) = part {
                if x.size()[1] != b.in_channels {
                    if let Some(s) = skips.pop() {
                        x = Tensor::cat(&[x, s], 1);
                    }
                }
                x = b.forward(&x, &emb, train);
            }
        }
        self.out_conv.forward(&self.out_norm.forward(&x).silu())
    }
}

impl crate::Architecture for DhariwalUnet {
    type Config = DhariwalUnetConfig;

    /// SlimFlow's ImageNet students, score_sde-style checkpoints.
    const IMPORT: crate::import::ImportFacts = crate::import::ImportFacts {
        sources: &[crate::import::ImportSource::Ncsnpp],
        ignored_keys: &[],
        buffers: &["resample_filter"],
        prefix: "",
    };

    fn problems(cfg: &DhariwalUnetConfig) -> Vec<String> {
        cfg.problems()
    }

    fn build(cfg: &DhariwalUnetConfig, p: &nn::Path) -> Box<dyn crate::VelocityField> {
        Box::new(DhariwalUnet::new(p, cfg))
    }

    fn data_shape(cfg: &DhariwalUnetConfig) -> Vec<i64> {
        vec![cfg.in_channels, cfg.img_resolution, cfg.img_resolution]
    }

    fn label_dim(cfg: &DhariwalUnetConfig) -> i64 {
        cfg.label_dim
    }

    /// 16×16 with 32 base channels (ADM attends only with ≥ 64 channels: the 8×8 level here) and
    /// at most 10 classes.
    fn cpu_sized(cfg: &DhariwalUnetConfig) -> DhariwalUnetConfig {
        DhariwalUnetConfig {
            img_resolution: 16,
            model_channels: 32,
            attn_resolutions: vec![8],
            label_dim: cfg.label_dim.min(10),
            ..cfg.clone()
        }
    }

    fn size_bound(cfg: &DhariwalUnetConfig) -> crate::SizeBound {
        crate::size::unet_bound(
            cfg.img_resolution,
            cfg.model_channels,
            &cfg.channel_mult,
            cfg.num_blocks,
        )
    }
}

/// As a velocity field directly, SlimFlow's way: noise labels 999·t, class labels as indices `[B]`
/// (one-hot encoded here).
impl crate::VelocityField for DhariwalUnet {
    fn forward_t(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor {
        let one_hot = labels
            .filter(|_| self.cfg.label_dim > 0)
            .map(|y| y.one_hot(self.cfg.label_dim).to_kind(Kind::Float));
        DhariwalUnet::forward_t(
            self,
            x,
            &(t.to_kind(Kind::Float) * 999.0),
            one_hot.as_ref(),
            None,
            train,
        )
    }

    fn config(&self) -> &crate::ArchConfig {
        &self.arch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The small config of the parity cases `dhariwal_unet` / `dhariwal_vel`.
    pub(crate) fn small() -> DhariwalUnetConfig {
        DhariwalUnetConfig {
            img_resolution: 16,
            label_dim: 10,
            model_channels: 32,
            channel_mult: vec![1, 2],
            num_blocks: 1,
            attn_resolutions: vec![8],
            dropout: 0.0,
            ..DhariwalUnetConfig::default()
        }
    }

    #[test]
    fn small_config_has_the_reference_parameter_count_and_keys() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = DhariwalUnet::new(&vs.root(), &small());
        // Parity json `param_count` (828 771 parameters) and `weights_tensor_count` (149 tensors,
        // resampling filters included).
        let n: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(n, 828_771);
        assert_eq!(vs.variables().len(), 149);
        let keys = vs.variables();
        for k in [
            "map_label.weight",
            "enc.16x16_conv.weight",
            "enc.8x8_down.skip.resample_filter",
            "enc.8x8_block0.qkv.weight",
            "dec.8x8_in0.proj.bias",
            "dec.16x16_up.conv0.resample_filter",
            "dec.16x16_block1.skip.weight",
            "out_conv.weight",
        ] {
            assert!(keys.contains_key(k), "{k}: {:?}", keys.keys());
        }
        // 32 channels at 16×16: no attention there; the down-skip has no kernel.
        assert!(!keys.contains_key("enc.8x8_down.skip.weight"));
        assert!(!keys.contains_key("dec.16x16_block0.qkv.weight"));
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let y = Tensor::eye(10, (Kind::Float, Device::Cpu)).narrow(0, 0, 2);
        let out = net.forward_t(
            &x,
            &Tensor::from_slice(&[0.1f32, 2.0]),
            Some(&y),
            None,
            false,
        );
        assert_eq!(out.size(), vec![2, 3, 16, 16]);
    }

    #[test]
    fn invalid_configs_are_listed() {
        let bad = DhariwalUnetConfig {
            channel_mult: vec![],
            dropout: 1.5,
            label_dropout: 0.5,
            ..DhariwalUnetConfig::default()
        };
        assert!(bad.problems().len() >= 3, "{:?}", bad.problems());
        let odd = DhariwalUnetConfig {
            model_channels: 36,
            ..small()
        };
        let p = odd.problems();
        assert!(p.iter().any(|m| m.contains("group norm")), "{p:?}");
        let attn = DhariwalUnetConfig {
            attn_resolutions: vec![3],
            ..small()
        };
        assert!(attn.problems()[0].contains("attn_resolutions"));
        assert!(DhariwalUnetConfig::default().problems().is_empty());
        assert!(small().problems().is_empty());
    }
}
