//! Port of the score_sde `NCSNpp` as SlimFlow uses it (yuanzhi-zhu/SlimFlow `models/ncsnpp.py`,
//! configs `configs/rectified_flow/cifar10_rf_gaussian.py`): BigGAN residual blocks with naive
//! (non-FIR) resampling, DDPM attention, positional time embedding, no progressive paths,
//! `skip_rescale`. Parameters live in one flat list `all_modules.<i>` in construction order, exactly
//! like the reference, so SlimFlow checkpoints load without renaming (after dropping DataParallel's
//! `module.` prefix). SlimFlow calls the network with 999·t.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// The configuration keys of score_sde's `config.model` / `config.data` that this family uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NcsnppConfig {
    /// `data.image_size`.
    pub image_size: i64,
    /// `data.num_channels`.
    pub num_channels: i64,
    /// `data.centered`: inputs already in [-1, 1] (otherwise mapped by 2x − 1 inside).
    pub centered: bool,
    /// `model.nf`: base channels (SlimFlow teacher 128; students 128 / 96 / 64 / 64).
    pub nf: i64,
    /// `model.ch_mult`.
    pub ch_mult: Vec<i64>,
    /// `model.num_res_blocks`.
    pub num_res_blocks: i64,
    /// `model.attn_resolutions`.
    pub attn_resolutions: Vec<i64>,
    /// `model.dropout`.
    pub dropout: f64,
    /// `model.skip_rescale`: residual sums divided by √2.
    pub skip_rescale: bool,
}

impl Default for NcsnppConfig {
    /// SlimFlow's CIFAR-10 teacher (`cifar10_rf_gaussian`).
    fn default() -> Self {
        NcsnppConfig {
            image_size: 32,
            num_channels: 3,
            centered: true,
            nf: 128,
            ch_mult: vec![1, 2, 2, 2],
            num_res_blocks: 4,
            attn_resolutions: vec![16],
            dropout: 0.15,
            skip_rescale: true,
        }
    }
}

impl NcsnppConfig {
    /// Every problem of the config.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let levels = self.ch_mult.len() as u32;
        if levels == 0 || self.ch_mult.iter().any(|&m| m < 1) {
            p.push("ch_mult must be non-empty with entries ≥ 1".into());
        }
        if self.image_size < 1 || (levels > 0 && self.image_size % (1 << (levels - 1)) != 0) {
            p.push(format!(
                "image_size {} must be divisible by 2^(levels − 1)",
                self.image_size
            ));
        }
        for (name, v) in [
            ("num_channels", self.num_channels),
            ("num_res_blocks", self.num_res_blocks),
        ] {
            if v < 1 {
                p.push(format!("{name} must be ≥ 1, got {v}"));
            }
        }
        if self.nf < 4 || self.nf % 2 != 0 {
            p.push(format!("nf must be even and ≥ 4, got {}", self.nf));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            p.push(format!("dropout must lie in [0, 1), got {}", self.dropout));
        }
        let resolutions: Vec<i64> = (0..levels.min(16)).map(|l| self.image_size >> l).collect();
        for r in &self.attn_resolutions {
            if !resolutions.contains(r) {
                p.push(format!(
                    "attn_resolutions: {r} is not one of the network's resolutions {resolutions:?}"
                ));
            }
        }
        p
    }
}

fn group_norm(p: nn::Path, c: i64) -> (Tensor, Tensor, i64) {
    (
        p.var("weight", &[c], nn::Init::Const(1.0)),
        p.var("bias", &[c], nn::Init::Const(0.0)),
        (c / 4).min(32),
    )
}

fn apply_gn(x: &Tensor, gn: &(Tensor, Tensor, i64)) -> Tensor {
    x.group_norm(gn.2, Some(&gn.0), Some(&gn.1), 1e-6, false)
}

/// score_sde's `default_init(scale)`: variance scaling, fan_avg, uniform; scale 0 becomes 1e-10.
fn default_init(scale: f64, fan_in: i64, fan_out: i64) -> nn::Init {
    let scale = if scale == 0.0 { 1e-10 } else { scale };
    let bound = (3.0 * scale / ((fan_in + fan_out) as f64 / 2.0)).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A k×k convolution ("same" padding) with score_sde's initialisation at `scale` and zero bias.
fn conv_scaled(p: nn::Path, cin: i64, cout: i64, k: i64, scale: f64) -> nn::Conv2D {
    let ws_init = default_init(scale, cin * k * k, cout * k * k);
    let cfg = nn::ConvConfig {
        padding: k / 2,
        ws_init,
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64) -> nn::Conv2D {
    conv_scaled(p, cin, cout, k, 1.0)
}

fn linear(p: nn::Path, cin: i64, cout: i64) -> nn::Linear {
    let cfg = nn::LinearConfig {
        ws_init: default_init(1.0, cin, cout),
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, cin, cout, cfg)
}

/// `init_scale` of the zero-initialised output layers (SlimFlow / score_sde configs: 0.0).
const INIT_SCALE: f64 = 0.0;

/// `ResnetBlockBigGANpp` with naive resampling.
#[derive(Debug)]
struct ResBlock {
    gn0: (Tensor, Tensor, i64),
    conv0: nn::Conv2D,
    dense0: nn::Linear,
    gn1: (Tensor, Tensor, i64),
    conv1: nn::Conv2D,
    conv2: Option<nn::Conv2D>,
    up: bool,
    down: bool,
}

impl ResBlock {
    fn new(p: nn::Path, cin: i64, cout: i64, temb: i64, up: bool, down: bool) -> Self {
        ResBlock {
            gn0: group_norm(&p / "GroupNorm_0", cin),
            conv0: conv(&p / "Conv_0", cin, cout, 3),
            dense0: linear(&p / "Dense_0", temb, cout),
            gn1: group_norm(&p / "GroupNorm_1", cout),
            conv1: conv_scaled(&p / "Conv_1", cout, cout, 3, INIT_SCALE),
            conv2: (cin != cout || up || down).then(|| conv(&p / "Conv_2", cin, cout, 1)),
            up,
            down,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        dropout: f64,
        rescale: bool,
        train: bool,
    ) -> Tensor {
        let resample = |t: &Tensor| {
            let s = t.size();
            let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
            if self.up {
                // naive_upsample_2d: nearest ×2. [B, C, H, 1, W, 1] → [B, C, 2H, 2W]
                t.reshape([b, c, h, 1, w, 1])
                    .repeat([1, 1, 1, 2, 1, 2])
                    .reshape([b, c, h * 2, w * 2])
            } else if self.down {
                // naive_downsample_2d: 2×2 mean. [B, C, H/2, 2, W/2, 2] → [B, C, H/2, W/2]
                t.reshape([b, c, h / 2, 2, w / 2, 2]).mean_dim(
                    [3i64, 5].as_slice(),
                    false,
                    t.kind(),
                )
            } else {
                t.shallow_clone()
            }
        };
        let h = resample(&apply_gn(x, &self.gn0).silu());
        let x = resample(x);
        let h = h.apply(&self.conv0) + temb.silu().apply(&self.dense0).unsqueeze(2).unsqueeze(3);
        let h = apply_gn(&h, &self.gn1)
            .silu()
            .dropout(dropout, train)
            .apply(&self.conv1);
        let x = match &self.conv2 {
            Some(c) => x.apply(c),
            None => x,
        };
        if rescale {
            (x + h) / std::f64::consts::SQRT_2
        } else {
            x + h
        }
    }
}

/// `NIN`: a 1×1 linear map with weight `W` [in, out] and bias `b`.
#[derive(Debug)]
struct Nin {
    w: Tensor,
    b: Tensor,
}

impl Nin {
    /// `NIN(c, c, init_scale=scale)`: score_sde's `default_init(scale)` weight, zero bias.
    fn new(p: nn::Path, c: i64, scale: f64) -> Self {
        Nin {
            w: p.var("W", &[c, c], default_init(scale, c, c)),
            b: p.var("b", &[c], nn::Init::Const(0.0)),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        // [B, C, H, W] → [B, H, W, C] · W + b → [B, C', H, W]
        (x.permute([0, 2, 3, 1]).matmul(&self.w) + &self.b).permute([0, 3, 1, 2])
    }
}

/// `AttnBlockpp`.
#[derive(Debug)]
struct Attn {
    gn: (Tensor, Tensor, i64),
    nin: [Nin; 4],
}

impl Attn {
    fn new(p: nn::Path, c: i64) -> Self {
        Attn {
            gn: group_norm(&p / "GroupNorm_0", c),
            nin: [
                Nin::new(&p / "NIN_0", c, 0.1),
                Nin::new(&p / "NIN_1", c, 0.1),
                Nin::new(&p / "NIN_2", c, 0.1),
                Nin::new(&p / "NIN_3", c, INIT_SCALE),
            ],
        }
    }

    fn forward(&self, x: &Tensor, rescale: bool) -> Tensor {
        let s = x.size();
        let (b, c, hh, ww) = (s[0], s[1], s[2], s[3]);
        let h = apply_gn(x, &self.gn);
        let (q, k, v) = (
            self.nin[0].forward(&h),
            self.nin[1].forward(&h),
            self.nin[2].forward(&h),
        );
        let w = Tensor::einsum("bchw,bcij->bhwij", &[q, k], None::<i64>) * (c as f64).powf(-0.5);
        let w = w
            .reshape([b, hh, ww, hh * ww])
            .softmax(-1, w.kind())
            .reshape([b, hh, ww, hh, ww]);
        let h = self.nin[3].forward(&Tensor::einsum("bhwij,bcij->bchw", &[w, v], None::<i64>));
        if rescale {
            (x + h) / std::f64::consts::SQRT_2
        } else {
            x + h
        }
    }
}

#[derive(Debug)]
enum Layer {
    Res(Box<ResBlock>),
    Attn(Box<Attn>),
}

/// SlimFlow's NCSN++.
#[derive(Debug)]
pub struct Ncsnpp {
    cfg: NcsnppConfig,
    arch: crate::ArchConfig,
    temb0: nn::Linear,
    temb1: nn::Linear,
    conv_in: nn::Conv2D,
    down: Vec<Vec<Layer>>,
    mid: [Layer; 3],
    up: Vec<Vec<Layer>>,
    gn_out: (Tensor, Tensor, i64),
    conv_out: nn::Conv2D,
}

/// Hands out `all_modules.<i>` in construction order.
struct Counter<'a> {
    p: nn::Path<'a>,
    i: usize,
}

impl<'a> Counter<'a> {
    fn next(&mut self) -> nn::Path<'a> {
        let p = &self.p / self.i;
        self.i += 1;
        p
    }
}

/// Reference state-dict keys with no parameter here: the unused `sigmas` buffer.
pub const IGNORED_KEYS: &[&str] = &["sigmas"];

impl Ncsnpp {
    /// Builds the network under `p` (validate the config first).
    pub fn new(p: &nn::Path, cfg: &NcsnppConfig) -> Self {
        let nf = cfg.nf;
        let temb = 4 * nf;
        let mut m = Counter {
            p: p / "all_modules",
            i: 0,
        };
        let temb0 = linear(m.next(), nf, temb);
        let temb1 = linear(m.next(), temb, temb);
        let conv_in = conv(m.next(), cfg.num_channels, nf, 3);
        let levels = cfg.ch_mult.len();
        let res_at = |l: usize| cfg.image_size >> l;
        let mut hs_c = vec![nf];
        let mut in_ch = nf;
        let mut down = Vec::new();
        for (l, &mult) in cfg.ch_mult.iter().enumerate() {
            let mut layers = Vec::new();
            for _ in 0..cfg.num_res_blocks {
                let out = nf * mult;
                layers.push(Layer::Res(Box::new(ResBlock::new(
                    m.next(),
                    in_ch,
                    out,
                    temb,
                    false,
                    false,
                ))));
                in_ch = out;
                if cfg.attn_resolutions.contains(&res_at(l)) {
                    layers.push(Layer::Attn(Box::new(Attn::new(m.next(), in_ch))));
                }
                hs_c.push(in_ch);
            }
            if l != levels - 1 {
                layers.push(Layer::Res(Box::new(ResBlock::new(
                    m.next(),
                    in_ch,
                    in_ch,
                    temb,
                    false,
                    true,
                ))));
                hs_c.push(in_ch);
            }
            down.push(layers);
        }
        let mid = [
            Layer::Res(Box::new(ResBlock::new(
                m.next(),
                in_ch,
                in_ch,
                temb,
                false,
                false,
            ))),
            Layer::Attn(Box::new(Attn::new(m.next(), in_ch))),
            Layer::Res(Box::new(ResBlock::new(
                m.next(),
                in_ch,
                in_ch,
                temb,
                false,
                false,
            ))),
        ];
        let mut up = Vec::new();
        for (l, &mult) in cfg.ch_mult.iter().enumerate().rev() {
            let mut layers = Vec::new();
            for _ in 0..=cfg.num_res_blocks {
                let out = nf * mult;
                let skip = hs_c.pop().expect("one skip per down output");
                layers.push(Layer::Res(Box::new(ResBlock::new(
                    m.next(),
                    in_ch + skip,
                    out,
                    temb,
                    false,
                    false,
                ))));
                in_ch = out;
            }
            if cfg.attn_resolutions.contains(&res_at(l)) {
                layers.push(Layer::Attn(Box::new(Attn::new(m.next(), in_ch))));
            }
            if l != 0 {
                layers.push(Layer::Res(Box::new(ResBlock::new(
                    m.next(),
                    in_ch,
                    in_ch,
                    temb,
                    true,
                    false,
                ))));
            }
            up.push(layers);
        }
        let gn_out = group_norm(m.next(), in_ch);
        let conv_out = conv_scaled(m.next(), in_ch, cfg.num_channels, 3, INIT_SCALE);
        Ncsnpp {
            cfg: cfg.clone(),
            arch: crate::ArchConfig::Ncsnpp(cfg.clone()),
            temb0,
            temb1,
            conv_in,
            down,
            mid,
            up,
            gn_out,
            conv_out,
        }
    }

    /// The config.
    pub fn config(&self) -> &NcsnppConfig {
        &self.cfg
    }

    /// The network on x [B, C, R, R] with `time_cond` `[B]` (SlimFlow passes 999·t).
    pub fn forward_t(&self, x: &Tensor, time_cond: &Tensor, train: bool) -> Tensor {
        let (drop, rescale) = (self.cfg.dropout, self.cfg.skip_rescale);
        // get_timestep_embedding: [sin, cos] of time_cond · exp(−k·ln(10000)/(half − 1)).
        let half = self.cfg.nf / 2;
        let freqs = (Tensor::arange(half, (Kind::Float, x.device()))
            * -(10_000f64.ln() / (half - 1) as f64))
            .exp();
        let args = time_cond.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
        let temb = Tensor::cat(&[args.sin(), args.cos()], 1)
            .to_kind(self.temb0.ws.kind())
            .apply(&self.temb0);
        let temb = temb.silu().apply(&self.temb1);
        let x = if self.cfg.centered {
            x.shallow_clone()
        } else {
            x * 2.0 - 1.0
        };
        let run = |layer: &Layer, h: &Tensor| match layer {
            Layer::Res(r) => r.forward(h, &temb, drop, rescale, train),
            Layer::Attn(a) => a.forward(h, rescale),
        };
        let mut hs = vec![x.apply(&self.conv_in)];
        for layers in &self.down {
            let mut i = 0;
            while i < layers.len() {
                let mut h = run(&layers[i], hs.last().expect("non-empty"));
                i += 1;
                if let Some(Layer::Attn(_)) = layers.get(i) {
                    h = run(&layers[i], &h);
                    i += 1;
                }
                hs.push(h);
            }
        }
        let mut h = hs.last().expect("non-empty").shallow_clone();
        for layer in &self.mid {
            h = run(layer, &h);
        }
        for layers in &self.up {
            for layer in layers {
                h = match layer {
                    Layer::Res(r) if !r.up => run(
                        layer,
                        &Tensor::cat(&[h, hs.pop().expect("a skip per block")], 1),
                    ),
                    _ => run(layer, &h),
                };
            }
        }
        apply_gn(&h, &self.gn_out).silu().apply(&self.conv_out)
    }
}

impl crate::Architecture for Ncsnpp {
    type Config = NcsnppConfig;

    const IMPORT: crate::import::ImportFacts = crate::import::ImportFacts {
        sources: &[crate::import::ImportSource::Ncsnpp],
        ignored_keys: IGNORED_KEYS,
        buffers: IGNORED_KEYS,
        prefix: "",
    };

    fn problems(cfg: &NcsnppConfig) -> Vec<String> {
        cfg.problems()
    }

    fn build(cfg: &NcsnppConfig, p: &nn::Path) -> Box<dyn crate::VelocityField> {
        Box::new(Ncsnpp::new(p, cfg))
    }

    fn data_shape(cfg: &NcsnppConfig) -> Vec<i64> {
        vec![cfg.num_channels, cfg.image_size, cfg.image_size]
    }

    /// Unconditional.
    fn label_dim(_: &NcsnppConfig) -> i64 {
        0
    }

    /// 16×16 with 16 base channels, attention at 8×8.
    fn cpu_sized(cfg: &NcsnppConfig) -> NcsnppConfig {
        NcsnppConfig {
            image_size: 16,
            nf: 16,
            attn_resolutions: vec![8],
            ..cfg.clone()
        }
    }

    fn size_bound(cfg: &NcsnppConfig) -> crate::SizeBound {
        crate::size::unet_bound(cfg.image_size, cfg.nf, &cfg.ch_mult, cfg.num_res_blocks)
    }
}

/// As a velocity field: SlimFlow's time rule, the network receives 999·t (reflow.py
/// `model_forward_wrapper`). Unconditional.
impl crate::VelocityField for Ncsnpp {
    fn forward_t(&self, x: &Tensor, t: &Tensor, _labels: Option<&Tensor>, train: bool) -> Tensor {
        Ncsnpp::forward_t(self, x, &(t.to_kind(Kind::Float) * 999.0), train)
    }

    fn config(&self) -> &crate::ArchConfig {
        &self.arch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn small_config_matches_the_reference_parameter_count_and_keys() {
        let cfg = NcsnppConfig {
            image_size: 16,
            nf: 32,
            ch_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![8],
            dropout: 0.0,
            ..Default::default()
        };
        assert!(cfg.problems().is_empty());
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Ncsnpp::new(&vs.root(), &cfg);
        // Parity json `param_count` of `ncsnpp_small`: 749 891.
        let n: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(n, 749_891);
        let vars = vs.variables();
        for key in [
            "all_modules.6.NIN_3.W",
            "all_modules.13.Conv_2.weight",
            "all_modules.17.bias",
            "all_modules.0.weight",
        ] {
            assert!(vars.contains_key(key), "{key}");
        }
        assert!(!vars.contains_key("all_modules.18.weight"));
        let y = net.forward_t(
            &Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu)),
            &Tensor::from_slice(&[10.0f32, 900.0]),
            false,
        );
        assert_eq!(y.size(), vec![2, 3, 16, 16]);
    }
}
