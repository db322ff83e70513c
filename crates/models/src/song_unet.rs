//! Port of EDM's `SongUNet` (NVlabs/edm `training/networks.py`; also rfpp `network_edm.py`): the
//! DDPM++ / NCSN++ U-Net of Song et al. (2021) as parameterised by Karras et al. (2022). Parameter
//! paths are EDM's state-dict keys (`map_layer0.weight`, `enc.16x16_block0.conv0.weight`,
//! `dec.32x32_aux_conv.bias`, …), computed by EDM's naming rule, so official checkpoints load as they
//! are. The network takes EDM's noise labels; time conventions live in the wrappers.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::edm_layers::{
    self as layers, BlockCfg, BlockStyle, Conv2d, GroupNorm, Linear, Resample, UNetBlock,
};

/// Timestep embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingType {
    /// Sinusoidal positional embedding (DDPM++).
    Positional,
    /// Random Fourier features, buffer `map_noise.freqs` (NCSN++).
    Fourier,
}

/// Encoder variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderType {
    /// DDPM++.
    Standard,
    /// Auxiliary down-sampled input added at each level.
    Skip,
    /// Auxiliary residual path (NCSN++).
    Residual,
}

/// Decoder variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderType {
    /// Output from the last level only (DDPM++ and NCSN++).
    Standard,
    /// Outputs summed over levels.
    Skip,
}

/// Constructor arguments of EDM's `SongUNet`, with its names and defaults (DDPM++ CIFAR-10 values
/// from EDM's `train.py --arch=ddpmpp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SongUnetConfig {
    /// Image resolution at input/output.
    pub img_resolution: i64,
    /// Colour channels at input.
    pub in_channels: i64,
    /// Colour channels at output.
    pub out_channels: i64,
    /// Number of class labels, 0 = unconditional.
    pub label_dim: i64,
    /// Augmentation label dimensionality, 0 = none (EDM CIFAR-10: 9).
    pub augment_dim: i64,
    /// Base channel multiplier (128 for CIFAR-10).
    pub model_channels: i64,
    /// Per-resolution channel multipliers ([2, 2, 2] for CIFAR-10 in EDM; [1, 2, 2, 2] in score_sde).
    pub channel_mult: Vec<i64>,
    /// Embedding width multiplier.
    pub channel_mult_emb: i64,
    /// Residual blocks per resolution.
    pub num_blocks: i64,
    /// Resolutions with self-attention.
    pub attn_resolutions: Vec<i64>,
    /// Dropout of intermediate activations (training only).
    pub dropout: f64,
    /// Timestep embedding: positional (DDPM++) or fourier (NCSN++).
    pub embedding_type: EmbeddingType,
    /// Noise-embedding width multiplier: 1 for DDPM++, 2 for NCSN++.
    pub channel_mult_noise: i64,
    /// Encoder: standard (DDPM++) or residual (NCSN++).
    pub encoder_type: EncoderType,
    /// Decoder: standard for both.
    pub decoder_type: DecoderType,
    /// Resampling filter: [1, 1] for DDPM++, [1, 3, 3, 1] for NCSN++.
    pub resample_filter: Vec<f64>,
}

impl Default for SongUnetConfig {
    fn default() -> Self {
        SongUnetConfig {
            img_resolution: 32,
            in_channels: 3,
            out_channels: 3,
            label_dim: 0,
            augment_dim: 0,
            model_channels: 128,
            channel_mult: vec![2, 2, 2],
            channel_mult_emb: 4,
            num_blocks: 4,
            attn_resolutions: vec![16],
            dropout: 0.13,
            embedding_type: EmbeddingType::Positional,
            channel_mult_noise: 1,
            encoder_type: EncoderType::Standard,
            decoder_type: DecoderType::Standard,
            resample_filter: vec![1.0, 1.0],
        }
    }
}

impl SongUnetConfig {
    /// Every problem of the config.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let levels = self.channel_mult.len() as u32;
        if levels == 0 {
            p.push("channel_mult must not be empty".into());
        }
        if self.img_resolution < 1 || (levels > 0 && self.img_resolution % (1 << (levels - 1)) != 0)
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
            ("channel_mult_noise", self.channel_mult_noise),
            ("num_blocks", self.num_blocks),
        ] {
            if v < 1 {
                p.push(format!("{name} must be ≥ 1, got {v}"));
            }
        }
        if self.channel_mult.iter().any(|&m| m < 1) {
            p.push("channel_mult entries must be ≥ 1".into());
        }
        if self.model_channels % 4 != 0 {
            p.push(format!(
                "model_channels must be a multiple of 4 (group norm), got {}",
                self.model_channels
            ));
        }
        if self.label_dim < 0 || self.augment_dim < 0 {
            p.push("label_dim and augment_dim must be ≥ 0".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            p.push(format!("dropout must lie in [0, 1), got {}", self.dropout));
        }
        let resolutions: Vec<i64> = (0..levels.min(16))
            .map(|l| self.img_resolution >> l)
            .collect();
        for r in &self.attn_resolutions {
            if !resolutions.contains(r) {
                p.push(format!(
                    "attn_resolutions: {r} is not one of the network's resolutions {resolutions:?}"
                ));
            }
        }
        if self.resample_filter.is_empty() || self.resample_filter.iter().sum::<f64>() == 0.0 {
            p.push("resample_filter must be non-empty with a non-zero sum".into());
        }
        p
    }
}

#[derive(Debug)]
enum Enc {
    Conv(Conv2d),
    Block(Box<UNetBlock>),
    AuxDown(Conv2d),
    AuxSkip(Conv2d),
    AuxResidual(Conv2d),
}

#[derive(Debug)]
enum Dec {
    Block(Box<UNetBlock>),
    AuxUp(Conv2d),
    AuxNorm(GroupNorm),
    AuxConv(Conv2d),
}

/// Port of EDM `SongUNet`.
#[derive(Debug)]
pub struct SongUnet {
    cfg: SongUnetConfig,
    freqs: Option<Tensor>,
    map_label: Option<Linear>,
    map_augment: Option<Linear>,
    map_layer0: Linear,
    map_layer1: Linear,
    enc: Vec<Enc>,
    dec: Vec<Dec>,
}

impl SongUnet {
    /// Builds the network under `p` (validate the config first).
    pub fn new(p: &nn::Path, cfg: &SongUnetConfig) -> Self {
        let emb_channels = cfg.model_channels * cfg.channel_mult_emb;
        let noise_channels = cfg.model_channels * cfg.channel_mult_noise;
        let bc = BlockCfg {
            emb_channels,
            dropout: cfg.dropout,
            filter: cfg.resample_filter.clone(),
            style: BlockStyle::Song,
        };
        let f = &cfg.resample_filter;
        let freqs = (cfg.embedding_type == EmbeddingType::Fourier).then(|| {
            let mut t = (p / "map_noise").zeros_no_train("freqs", &[noise_channels / 2]);
            tch::no_grad(|| {
                t.copy_(&(Tensor::randn([noise_channels / 2], (Kind::Float, t.device())) * 16.0))
            });
            t
        });
        let map_label = (cfg.label_dim > 0)
            .then(|| Linear::new(p / "map_label", cfg.label_dim, noise_channels, true));
        let map_augment = (cfg.augment_dim > 0)
            .then(|| Linear::new(p / "map_augment", cfg.augment_dim, noise_channels, false));
        let map_layer0 = Linear::new(p / "map_layer0", noise_channels, emb_channels, true);
        let map_layer1 = Linear::new(p / "map_layer1", emb_channels, emb_channels, true);

        let ep = p / "enc";
        let mut enc = Vec::new();
        let mut skips = Vec::new();
        let (mut cout, mut caux) = (cfg.in_channels, cfg.in_channels);
        for (level, &mult) in cfg.channel_mult.iter().enumerate() {
            let res = cfg.img_resolution >> level;
            if level == 0 {
                let cin = cout;
                cout = cfg.model_channels;
                enc.push(Enc::Conv(Conv2d::new(
                    &ep / format!("{res}x{res}_conv"),
                    cin,
                    cout,
                    3,
                    true,
                    Resample::default(),
                    f,
                )));
                skips.push(cout);
            } else {
                enc.push(Enc::Block(Box::new(UNetBlock::new(
                    &ep / format!("{res}x{res}_down"),
                    cout,
                    cout,
                    false,
                    true,
                    false,
                    &bc,
                ))));
                skips.push(cout);
                if cfg.encoder_type == EncoderType::Skip {
                    let down = Resample {
                        down: true,
                        ..Default::default()
                    };
                    enc.push(Enc::AuxDown(Conv2d::new(
                        &ep / format!("{res}x{res}_aux_down"),
                        caux,
                        caux,
                        0,
                        true,
                        down,
                        f,
                    )));
                    enc.push(Enc::AuxSkip(Conv2d::new(
                        &ep / format!("{res}x{res}_aux_skip"),
                        caux,
                        cout,
                        1,
                        true,
                        Resample::default(),
                        f,
                    )));
                }
                if cfg.encoder_type == EncoderType::Residual {
                    let rs = Resample {
                        down: true,
                        fused: true,
                        ..Default::default()
                    };
                    enc.push(Enc::AuxResidual(Conv2d::new(
                        &ep / format!("{res}x{res}_aux_residual"),
                        caux,
                        cout,
                        3,
                        true,
                        rs,
                        f,
                    )));
                    caux = cout;
                }
            }
            for idx in 0..cfg.num_blocks {
                let cin = cout;
                cout = cfg.model_channels * mult;
                let attn = cfg.attn_resolutions.contains(&res);
                enc.push(Enc::Block(Box::new(UNetBlock::new(
                    &ep / format!("{res}x{res}_block{idx}"),
                    cin,
                    cout,
                    false,
                    false,
                    attn,
                    &bc,
                ))));
                skips.push(cout);
            }
        }

        let dp = p / "dec";
        let mut dec = Vec::new();
        let levels = cfg.channel_mult.len();
        for (level, &mult) in cfg.channel_mult.iter().enumerate().rev() {
            let res = cfg.img_resolution >> level;
            if level == levels - 1 {
                dec.push(Dec::Block(Box::new(UNetBlock::new(
                    &dp / format!("{res}x{res}_in0"),
                    cout,
                    cout,
                    false,
                    false,
                    true,
                    &bc,
                ))));
                dec.push(Dec::Block(Box::new(UNetBlock::new(
                    &dp / format!("{res}x{res}_in1"),
                    cout,
                    cout,
                    false,
                    false,
                    false,
                    &bc,
                ))));
            } else {
                dec.push(Dec::Block(Box::new(UNetBlock::new(
                    &dp / format!("{res}x{res}_up"),
                    cout,
                    cout,
                    true,
                    false,
                    false,
                    &bc,
                ))));
            }
            for idx in 0..=cfg.num_blocks {
                let cin = cout + skips.pop().expect("one skip per encoder output");
                cout = cfg.model_channels * mult;
                let attn = idx == cfg.num_blocks && cfg.attn_resolutions.contains(&res);
                dec.push(Dec::Block(Box::new(UNetBlock::new(
                    &dp / format!("{res}x{res}_block{idx}"),
                    cin,
                    cout,
                    false,
                    false,
                    attn,
                    &bc,
                ))));
            }
            if cfg.decoder_type == DecoderType::Skip || level == 0 {
                if cfg.decoder_type == DecoderType::Skip && level < levels - 1 {
                    let up = Resample {
                        up: true,
                        ..Default::default()
                    };
                    dec.push(Dec::AuxUp(Conv2d::new(
                        &dp / format!("{res}x{res}_aux_up"),
                        cfg.out_channels,
                        cfg.out_channels,
                        0,
                        true,
                        up,
                        f,
                    )));
                }
                dec.push(Dec::AuxNorm(GroupNorm::new(
                    &dp / format!("{res}x{res}_aux_norm"),
                    cout,
                    1e-6,
                )));
                dec.push(Dec::AuxConv(
                    Conv2d::new(
                        &dp / format!("{res}x{res}_aux_conv"),
                        cout,
                        cfg.out_channels,
                        3,
                        true,
                        Resample::default(),
                        f,
                    )
                    .init_weight(layers::INIT_ZERO),
                ));
            }
        }
        SongUnet {
            cfg: cfg.clone(),
            freqs,
            map_label,
            map_augment,
            map_layer0,
            map_layer1,
            enc,
            dec,
        }
    }

    /// The config.
    pub fn config(&self) -> &SongUnetConfig {
        &self.cfg
    }

    /// The weights' dtype (the network computes in it).
    pub fn kind(&self) -> Kind {
        self.map_layer0.weight.kind()
    }

    /// Timestep embedding of `noise_labels` `[B]`, halves swapped to [sin, cos] as SongUNet does.
    fn embed(&self, noise_labels: &Tensor) -> Tensor {
        let c = self.cfg.model_channels * self.cfg.channel_mult_noise;
        let x = noise_labels.to_kind(Kind::Float);
        let args = match &self.freqs {
            Some(freqs) => x.outer(&(freqs * (2.0 * std::f64::consts::PI))),
            None => layers::positional_args(&x, c, true),
        };
        Tensor::cat(&[args.sin(), args.cos()], 1)
    }

    /// F(x, noise_labels): x [B, in_channels, R, R]; noise_labels `[B]`; class_labels [B, label_dim]
    /// (one-hot, float) when conditional; augment_labels [B, augment_dim] or none (= zeros).
    pub fn forward_t(
        &self,
        x: &Tensor,
        noise_labels: &Tensor,
        class_labels: Option<&Tensor>,
        augment_labels: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        // The embedding's sines are taken in float32, then everything runs in the weights' dtype.
        let kind = self.kind();
        let mut emb = self.embed(noise_labels).to_kind(kind);
        if let (Some(m), Some(y)) = (&self.map_label, class_labels) {
            emb += m.forward(&(y.to_kind(kind) * (m.in_features as f64).sqrt()));
        }
        if let (Some(m), Some(a)) = (&self.map_augment, augment_labels) {
            emb += m.forward(&a.to_kind(kind));
        }
        let emb = self
            .map_layer1
            .forward(&self.map_layer0.forward(&emb).silu())
            .silu();

        let mut skips: Vec<Tensor> = Vec::new();
        let mut x = x.shallow_clone();
        let mut aux = x.shallow_clone();
        for layer in &self.enc {
            match layer {
                Enc::AuxDown(c) => aux = c.forward(&aux),
                Enc::AuxSkip(c) => {
                    x = &x + c.forward(&aux);
                    *skips.last_mut().expect("a block precedes") = x.shallow_clone();
                }
                Enc::AuxResidual(c) => {
                    x = (&x + c.forward(&aux)) / std::f64::consts::SQRT_2;
                    aux = x.shallow_clone();
                    *skips.last_mut().expect("a block precedes") = x.shallow_clone();
                }
                Enc::Conv(c) => {
                    x = c.forward(&x);
                    skips.push(x.shallow_clone());
                }
                Enc::Block(b) => {
                    x = b.forward(&x, &emb, train);
                    skips.push(x.shallow_clone());
                }
            }
        }
        let mut out: Option<Tensor> = None;
        let mut tmp: Option<Tensor> = None;
        for layer in &self.dec {
            match layer {
                Dec::AuxUp(c) => out = out.map(|a| c.forward(&a)),
                Dec::AuxNorm(n) => tmp = Some(n.forward(&x)),
                Dec::AuxConv(c) => {
                    let t = c.forward(&tmp.take().expect("aux_norm precedes aux_conv").silu());
                    out = Some(match out {
                        Some(a) => t + a,
                        None => t,
                    });
                }
                Dec::Block(b) => {
                    if x.size()[1] != b.in_channels {
                        x = Tensor::cat(&[x, skips.pop().expect("a skip per decoder block")], 1);
                    }
                    x = b.forward(&x, &emb, train);
                }
            }
        }
        out.expect("the decoder ends with an output layer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edm_velocity::EdmVelocity;
    use tch::Device;

    /// The small DDPM++-style config of the parity case `songunet_ddpmpp`.
    fn small(ncsnpp: bool) -> SongUnetConfig {
        let base = SongUnetConfig {
            img_resolution: 16,
            model_channels: 32,
            channel_mult: vec![1, 2],
            num_blocks: 1,
            attn_resolutions: vec![8],
            dropout: 0.0,
            ..SongUnetConfig::default()
        };
        if ncsnpp {
            SongUnetConfig {
                augment_dim: 9,
                embedding_type: EmbeddingType::Fourier,
                channel_mult_noise: 2,
                encoder_type: EncoderType::Residual,
                resample_filter: vec![1.0, 3.0, 3.0, 1.0],
                ..base
            }
        } else {
            base
        }
    }

    fn count(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    #[test]
    fn parameter_counts_match_the_reference() {
        // Parity json `param_count`: SongUNet 749 891; EDMPrecondVel(SongUNet, NCSN++-style) 755 459.
        let vs = nn::VarStore::new(Device::Cpu);
        let net = SongUnet::new(&vs.root(), &small(false));
        assert_eq!(count(&vs), 749_891);
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let y = net.forward_t(&x, &Tensor::from_slice(&[0.1f32, 2.0]), None, None, false);
        assert_eq!(y.size(), vec![2, 3, 16, 16]);
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = EdmVelocity::new(&vs.root(), &small(true));
        assert_eq!(count(&vs), 755_459);
        assert!(vs.variables().contains_key("model.map_noise.freqs"));
        assert!(vs
            .variables()
            .contains_key("model.enc.8x8_aux_residual.weight"));
    }

    #[test]
    fn velocity_is_the_negated_rfpp_velocity_at_reversed_time() {
        let vs = nn::VarStore::new(Device::Cpu);
        let v = EdmVelocity::new(&vs.root(), &small(true));
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0.25f32, 0.75]);
        let ours = v.forward(&x, &t, None, false);
        let theirs = v.forward_rfpp(&x, &(1.0 - &t), None, false);
        assert!(ours.allclose(&(-theirs), 1e-6, 1e-6, false));
    }

    #[test]
    fn invalid_configs_are_listed() {
        let bad = SongUnetConfig {
            channel_mult: vec![],
            model_channels: 30,
            dropout: 1.5,
            ..SongUnetConfig::default()
        };
        let p = bad.problems();
        assert!(p.len() >= 3, "{p:?}");
        assert!(SongUnetConfig::default().problems().is_empty());
    }
}
