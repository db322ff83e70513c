//! The layers of EDM's `training/networks.py` (Karras et al. 2022), with its parameter names:
//! `Linear`, `Conv2d` (optional up/down resampling by a separable FIR filter, optionally fused),
//! `GroupNorm` and the unified `UNetBlock` that SongUNet (DDPM++ / NCSN++) and DhariwalUNet (ADM)
//! configure differently, with EDM's weight initialisations.

use tch::{nn, Kind, Tensor};

/// Fully connected layer: `weight` [out, in], optional `bias` [out].
#[derive(Debug)]
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    bias: Option<Tensor>,
    pub(crate) in_features: i64,
}

/// EDM's `weight_init` modes with their `init_weight` / `init_bias` factors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Init {
    /// `xavier_uniform`: U(±sqrt(6/(fan_in + fan_out)))·weight; biases zero (SongUNet).
    Xavier { weight: f64 },
    /// `kaiming_uniform`: U(±sqrt(3/fan_in))·weight, biases U(±sqrt(3/fan_in))·bias (ADM).
    KaimingUniform { weight: f64, bias: f64 },
    /// `kaiming_normal`: N(0, 1/fan_in)·weight; biases zero (ADM's label map).
    KaimingNormal { weight: f64 },
}

impl Init {
    /// SongUNet's default (`init_mode = xavier_uniform`).
    pub(crate) const XAVIER: Init = Init::Xavier { weight: 1.0 };

    fn scaled(lo_up: f64, factor: f64) -> nn::Init {
        if factor == 0.0 {
            nn::Init::Const(0.0)
        } else {
            let b = lo_up * factor.abs();
            nn::Init::Uniform { lo: -b, up: b }
        }
    }

    fn weight(self, fan_in: i64, fan_out: i64) -> nn::Init {
        let (fi, fo) = (fan_in.max(1) as f64, fan_out.max(1) as f64);
        match self {
            Init::Xavier { weight } => Init::scaled((6.0 / (fi + fo)).sqrt(), weight),
            Init::KaimingUniform { weight, .. } => Init::scaled((3.0 / fi).sqrt(), weight),
            Init::KaimingNormal { weight } => nn::Init::Randn {
                mean: 0.0,
                stdev: (1.0 / fi).sqrt() * weight,
            },
        }
    }

    fn bias(self, fan_in: i64) -> nn::Init {
        match self {
            Init::KaimingUniform { bias, .. } => {
                Init::scaled((3.0 / fan_in.max(1) as f64).sqrt(), bias)
            }
            _ => nn::Init::Const(0.0),
        }
    }
}

impl Linear {
    /// SongUNet's linear layer (Xavier-uniform weights, zero bias).
    pub(crate) fn new(p: nn::Path, cin: i64, cout: i64, bias: bool) -> Self {
        Linear::with_init(p, cin, cout, bias, Init::XAVIER)
    }

    pub(crate) fn with_init(p: nn::Path, cin: i64, cout: i64, bias: bool, init: Init) -> Self {
        Linear {
            weight: p.var("weight", &[cout, cin], init.weight(cin, cout)),
            bias: bias.then(|| p.var("bias", &[cout], init.bias(cin))),
            in_features: cin,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.matmul(&self.weight.tr());
        match &self.bias {
            Some(b) => y + b,
            None => y,
        }
    }
}

/// EDM `Conv2d`: optional kernel (0 = pure resampling), optional up/down by the filter
/// outer(f, f)/sum(f)² (buffer `resample_filter`), optionally fused with the convolution.
#[derive(Debug)]
pub(crate) struct Conv2d {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    filter: Option<Tensor>,
    up: bool,
    down: bool,
    fused: bool,
    cin: i64,
    cout: i64,
}

/// What a `Conv2d` does besides its convolution.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Resample {
    pub up: bool,
    pub down: bool,
    pub fused: bool,
}

impl Conv2d {
    /// SongUNet's convolution (Xavier-uniform weights, zero bias).
    pub(crate) fn new(
        p: nn::Path,
        cin: i64,
        cout: i64,
        kernel: i64,
        bias: bool,
        rs: Resample,
        filter: &[f64],
    ) -> Self {
        Conv2d::with_init(p, cin, cout, kernel, bias, rs, filter, Init::XAVIER)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn with_init(
        p: nn::Path,
        cin: i64,
        cout: i64,
        kernel: i64,
        bias: bool,
        rs: Resample,
        filter: &[f64],
        init: Init,
    ) -> Self {
        let (fan_in, fan_out) = (cin * kernel * kernel, cout * kernel * kernel);
        let weight = (kernel > 0).then(|| {
            p.var(
                "weight",
                &[cout, cin, kernel, kernel],
                init.weight(fan_in, fan_out),
            )
        });
        let bias = (kernel > 0 && bias).then(|| p.var("bias", &[cout], init.bias(fan_in)));
        let filter = (rs.up || rs.down).then(|| {
            let f = Tensor::from_slice(filter).to_kind(Kind::Float);
            let n = filter.len() as i64;
            let f2 = f.outer(&f).view([1, 1, n, n]) / f.sum(Kind::Float).square();
            let mut buf = p.zeros_no_train("resample_filter", &[1, 1, n, n]);
            tch::no_grad(|| buf.copy_(&f2));
            buf
        });
        Conv2d {
            weight,
            bias,
            filter,
            up: rs.up,
            down: rs.down,
            fused: rs.fused,
            cin,
            cout,
        }
    }

    /// Multiplies the initial weight by `factor` (EDM's `init_weight`: 1e-5 for `init_zero`
    /// layers, sqrt(0.2) for attention's qkv).
    pub(crate) fn init_weight(self, factor: f64) -> Self {
        if let Some(w) = &self.weight {
            let mut w = w.shallow_clone();
            tch::no_grad(|| {
                let _ = w.g_mul_scalar_(factor);
            });
        }
        self
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let w_pad = self.weight.as_ref().map(|w| w.size()[3] / 2).unwrap_or(0);
        let f_pad = self
            .filter
            .as_ref()
            .map(|f| (f.size()[3] - 1) / 2)
            .unwrap_or(0);
        let tiled = |f: &Tensor, c: i64| f.repeat([c, 1, 1, 1]);
        let mut x = x.shallow_clone();
        match (&self.weight, &self.filter) {
            (Some(w), Some(f)) if self.fused && self.up => {
                let p = (f_pad - w_pad).max(0);
                x = x.conv_transpose2d(
                    &tiled(&(f * 4.0), self.cin),
                    None::<Tensor>,
                    [2, 2],
                    [p, p],
                    [0, 0],
                    self.cin,
                    [1, 1],
                );
                let p = (w_pad - f_pad).max(0);
                x = x.conv2d(w, None::<Tensor>, [1, 1], [p, p], [1, 1], 1);
            }
            (Some(w), Some(f)) if self.fused && self.down => {
                x = x.conv2d(
                    w,
                    None::<Tensor>,
                    [1, 1],
                    [w_pad + f_pad, w_pad + f_pad],
                    [1, 1],
                    1,
                );
                x = x.conv2d(
                    &tiled(f, self.cout),
                    None::<Tensor>,
                    [2, 2],
                    [0, 0],
                    [1, 1],
                    self.cout,
                );
            }
            _ => {
                if let Some(f) = &self.filter {
                    if self.up {
                        x = x.conv_transpose2d(
                            &tiled(&(f * 4.0), self.cin),
                            None::<Tensor>,
                            [2, 2],
                            [f_pad, f_pad],
                            [0, 0],
                            self.cin,
                            [1, 1],
                        );
                    }
                    if self.down {
                        x = x.conv2d(
                            &tiled(f, self.cin),
                            None::<Tensor>,
                            [2, 2],
                            [f_pad, f_pad],
                            [1, 1],
                            self.cin,
                        );
                    }
                }
                if let Some(w) = &self.weight {
                    x = x.conv2d(w, None::<Tensor>, [1, 1], [w_pad, w_pad], [1, 1], 1);
                }
            }
        }
        match &self.bias {
            Some(b) => x + b.view([1, -1, 1, 1]),
            None => x,
        }
    }
}

/// The arguments of EDM's `PositionalEmbedding` (max_positions 10 000): x ⊗ (1/10000)^(i/(C/2 − e))
/// for i < C/2, with e = 1 when `endpoint` (SongUNet) and 0 otherwise (ADM); x float32 `[B]`.
pub(crate) fn positional_args(x: &Tensor, channels: i64, endpoint: bool) -> Tensor {
    let half = channels / 2;
    let i = Tensor::arange(half, (Kind::Float, x.device())) / (half - i64::from(endpoint)) as f64;
    // made on the device: a host scalar copied there would wait for the device every forward pass
    let base = Tensor::full([], f64::from(1.0f32 / 10_000.0), (Kind::Float, x.device()));
    let freqs = base.pow(&i);
    x.outer(&freqs)
}

/// EDM `GroupNorm`: min(32, C/4) groups.
#[derive(Debug)]
pub(crate) struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: i64,
    eps: f64,
}

impl GroupNorm {
    pub(crate) fn new(p: nn::Path, channels: i64, eps: f64) -> Self {
        GroupNorm {
            weight: p.var("weight", &[channels], nn::Init::Const(1.0)),
            bias: p.var("bias", &[channels], nn::Init::Const(0.0)),
            groups: 32.min(channels / 4),
            eps,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(
            self.groups,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            false,
        )
    }
}

/// How a network configures EDM's unified `UNetBlock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockStyle {
    /// SongUNet (DDPM++ / NCSN++): one attention head, skip scale √½, eps 1e-6, a 1×1 projection on
    /// every resampling skip, the embedding added; Xavier init (1e-5 for `init_zero`, √0.2 for qkv).
    Song,
    /// DhariwalUNet (ADM): out_channels/64 attention heads, skip scale 1, eps 1e-5, a projection only
    /// when the channels change, the embedding as scale and shift; Kaiming-uniform init ×√⅓
    /// (zero for `init_zero`).
    Adm,
}

/// Settings shared by every block of a network.
#[derive(Debug, Clone)]
pub(crate) struct BlockCfg {
    pub emb_channels: i64,
    pub dropout: f64,
    pub filter: Vec<f64>,
    pub style: BlockStyle,
}

/// ADM's `init`: kaiming_uniform with init_weight = init_bias = √⅓.
pub(crate) const ADM_INIT: Init = Init::KaimingUniform {
    weight: 0.577_350_269_189_625_8,
    bias: 0.577_350_269_189_625_8,
};
/// ADM's `init_zero`.
pub(crate) const ADM_ZERO: Init = Init::KaimingUniform {
    weight: 0.0,
    bias: 0.0,
};

/// EDM `UNetBlock` in either [`BlockStyle`].
#[derive(Debug)]
pub(crate) struct UNetBlock {
    norm0: GroupNorm,
    conv0: Conv2d,
    affine: Linear,
    norm1: GroupNorm,
    conv1: Conv2d,
    skip: Option<Conv2d>,
    attn: Option<(GroupNorm, Conv2d, Conv2d)>,
    heads: i64,
    dropout: f64,
    style: BlockStyle,
    pub(crate) in_channels: i64,
}

const SKIP_SCALE: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// EDM's `init_zero` weight factor (SongUNet: 1e-5).
pub(crate) const INIT_ZERO: f64 = 1e-5;

impl UNetBlock {
    pub(crate) fn new(
        p: nn::Path,
        cin: i64,
        cout: i64,
        up: bool,
        down: bool,
        attention: bool,
        cfg: &BlockCfg,
    ) -> Self {
        let rs = Resample {
            up,
            down,
            fused: false,
        };
        match cfg.style {
            BlockStyle::Song => Self::song(p, cin, cout, rs, attention, cfg),
            BlockStyle::Adm => Self::adm(p, cin, cout, rs, attention, cfg),
        }
    }

    fn song(
        p: nn::Path,
        cin: i64,
        cout: i64,
        rs: Resample,
        attention: bool,
        cfg: &BlockCfg,
    ) -> Self {
        let eps = 1e-6;
        let skip = (cout != cin || rs.up || rs.down)
            .then(|| Conv2d::new(&p / "skip", cin, cout, 1, true, rs, &cfg.filter));
        let attn = attention.then(|| {
            (
                GroupNorm::new(&p / "norm2", cout, eps),
                Conv2d::new(
                    &p / "qkv",
                    cout,
                    cout * 3,
                    1,
                    true,
                    Resample::default(),
                    &cfg.filter,
                )
                .init_weight(0.2f64.sqrt()),
                Conv2d::new(
                    &p / "proj",
                    cout,
                    cout,
                    1,
                    true,
                    Resample::default(),
                    &cfg.filter,
                )
                .init_weight(INIT_ZERO),
            )
        });
        UNetBlock {
            norm0: GroupNorm::new(&p / "norm0", cin, eps),
            conv0: Conv2d::new(&p / "conv0", cin, cout, 3, true, rs, &cfg.filter),
            affine: Linear::new(&p / "affine", cfg.emb_channels, cout, true),
            norm1: GroupNorm::new(&p / "norm1", cout, eps),
            conv1: Conv2d::new(
                &p / "conv1",
                cout,
                cout,
                3,
                true,
                Resample::default(),
                &cfg.filter,
            )
            .init_weight(INIT_ZERO),
            skip,
            attn,
            heads: 1,
            dropout: cfg.dropout,
            style: BlockStyle::Song,
            in_channels: cin,
        }
    }

    fn adm(
        p: nn::Path,
        cin: i64,
        cout: i64,
        rs: Resample,
        attention: bool,
        cfg: &BlockCfg,
    ) -> Self {
        let eps = 1e-5;
        let f = &cfg.filter;
        let none = Resample::default();
        // `num_heads = out_channels // channels_per_head` (64): no attention below 64 channels.
        let heads = if attention { cout / 64 } else { 0 };
        let skip = (cout != cin || rs.up || rs.down).then(|| {
            let kernel = if cout != cin { 1 } else { 0 };
            Conv2d::with_init(&p / "skip", cin, cout, kernel, true, rs, f, ADM_INIT)
        });
        let attn = (heads > 0).then(|| {
            (
                GroupNorm::new(&p / "norm2", cout, eps),
                Conv2d::with_init(&p / "qkv", cout, cout * 3, 1, true, none, f, ADM_INIT),
                Conv2d::with_init(&p / "proj", cout, cout, 1, true, none, f, ADM_ZERO),
            )
        });
        UNetBlock {
            norm0: GroupNorm::new(&p / "norm0", cin, eps),
            conv0: Conv2d::with_init(&p / "conv0", cin, cout, 3, true, rs, f, ADM_INIT),
            affine: Linear::with_init(&p / "affine", cfg.emb_channels, cout * 2, true, ADM_INIT),
            norm1: GroupNorm::new(&p / "norm1", cout, eps),
            conv1: Conv2d::with_init(&p / "conv1", cout, cout, 3, true, none, f, ADM_ZERO),
            skip,
            attn,
            heads,
            dropout: cfg.dropout,
            style: BlockStyle::Adm,
            in_channels: cin,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let orig = x;
        let h = self.conv0.forward(&self.norm0.forward(x).silu());
        let params = self
            .affine
            .forward(emb)
            .unsqueeze(2)
            .unsqueeze(3)
            .to_kind(h.kind());
        let h = match self.style {
            BlockStyle::Song => self.norm1.forward(&(h + params)).silu(),
            BlockStyle::Adm => {
                let sc = params.chunk(2, 1);
                let (scale, shift) = (&sc[0], &sc[1]);
                shift
                    .addcmul(&self.norm1.forward(&h), &(scale + 1.0))
                    .silu()
            }
        };
        let h = self.conv1.forward(&h.dropout(self.dropout, train));
        let skip = match &self.skip {
            Some(s) => s.forward(orig),
            None => orig.shallow_clone(),
        };
        let scale = match self.style {
            BlockStyle::Song => SKIP_SCALE,
            BlockStyle::Adm => 1.0,
        };
        let scaled = |x: Tensor| if scale == 1.0 { x } else { x * scale };
        let mut x = scaled(h + skip);
        if let Some((norm2, qkv, proj)) = &self.attn {
            let s = x.size();
            let (b, c) = (s[0], s[1]);
            // [B·heads, C/heads, 3, H·W] → q, k, v each [B·heads, C/heads, H·W].
            let qkv =
                qkv.forward(&norm2.forward(&x))
                    .reshape([b * self.heads, c / self.heads, 3, -1]);
            let (q, k, v) = (qkv.select(2, 0), qkv.select(2, 1), qkv.select(2, 2));
            let k = k / ((c / self.heads) as f64).sqrt();
            let w = Tensor::einsum(
                "ncq,nck->nqk",
                &[q.to_kind(Kind::Float), k.to_kind(Kind::Float)],
                None::<i64>,
            )
            .softmax(2, Kind::Float)
            .to_kind(q.kind());
            let a = Tensor::einsum("nqk,nck->ncq", &[w, v], None::<i64>);
            x = scaled(proj.forward(&a.reshape(s.as_slice())) + x);
        }
        x
    }
}
