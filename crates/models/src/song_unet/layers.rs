//! The layers of EDM's `training/networks.py` (Karras et al. 2022), with its parameter names:
//! `Linear`, `Conv2d` (optional up/down resampling by a separable FIR filter, optionally fused),
//! `GroupNorm`, `UNetBlock` and the positional / Fourier timestep embeddings.

use tch::{nn, Kind, Tensor};

/// Fully connected layer: `weight` [out, in], optional `bias` [out].
#[derive(Debug)]
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    bias: Option<Tensor>,
    pub(crate) in_features: i64,
}

impl Linear {
    pub(crate) fn new(p: nn::Path, cin: i64, cout: i64, bias: bool) -> Self {
        let bound = (6.0 / (cin + cout) as f64).sqrt();
        let init = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Linear {
            weight: p.var("weight", &[cout, cin], init),
            bias: bias.then(|| p.var("bias", &[cout], nn::Init::Const(0.0))),
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
    pub(crate) fn new(
        p: nn::Path,
        cin: i64,
        cout: i64,
        kernel: i64,
        bias: bool,
        rs: Resample,
        filter: &[f64],
    ) -> Self {
        let fan = (cin * kernel * kernel + cout * kernel * kernel).max(1) as f64;
        let bound = (6.0 / fan).sqrt();
        let weight = (kernel > 0).then(|| {
            p.var(
                "weight",
                &[cout, cin, kernel, kernel],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )
        });
        let bias = (kernel > 0 && bias).then(|| p.var("bias", &[cout], nn::Init::Const(0.0)));
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

/// Settings shared by every block of a SongUNet.
#[derive(Debug, Clone)]
pub(crate) struct BlockCfg {
    pub emb_channels: i64,
    pub dropout: f64,
    pub filter: Vec<f64>,
}

/// EDM `UNetBlock` as SongUNet configures it: one attention head when enabled, skip scale √½,
/// eps 1e-6, resample projection, additive (not adaptive) embedding.
#[derive(Debug)]
pub(crate) struct UNetBlock {
    norm0: GroupNorm,
    conv0: Conv2d,
    affine: Linear,
    norm1: GroupNorm,
    conv1: Conv2d,
    skip: Option<Conv2d>,
    attn: Option<(GroupNorm, Conv2d, Conv2d)>,
    dropout: f64,
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
        let eps = 1e-6;
        let rs = Resample {
            up,
            down,
            fused: false,
        };
        let skip = (cout != cin || up || down)
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
            dropout: cfg.dropout,
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
        let h = self.norm1.forward(&(h + params)).silu();
        let h = self.conv1.forward(&h.dropout(self.dropout, train));
        let skip = match &self.skip {
            Some(s) => s.forward(orig),
            None => orig.shallow_clone(),
        };
        let mut x = (h + skip) * SKIP_SCALE;
        if let Some((norm2, qkv, proj)) = &self.attn {
            let s = x.size();
            let (b, c) = (s[0], s[1]);
            // One head: [B, C, 3, H·W] → q, k, v each [B, C, H·W].
            let qkv = qkv.forward(&norm2.forward(&x)).reshape([b, c, 3, -1]);
            let (q, k, v) = (qkv.select(2, 0), qkv.select(2, 1), qkv.select(2, 2));
            let k = k / (c as f64).sqrt();
            let w = Tensor::einsum(
                "ncq,nck->nqk",
                &[q.to_kind(Kind::Float), k.to_kind(Kind::Float)],
                None::<i64>,
            )
            .softmax(2, Kind::Float)
            .to_kind(q.kind());
            let a = Tensor::einsum("nqk,nck->ncq", &[w, v], None::<i64>);
            x = (proj.forward(&a.reshape(s.as_slice())) + x) * SKIP_SCALE;
        }
        x
    }
}
