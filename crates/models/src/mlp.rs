//! A multilayer perceptron velocity field for low-dimensional data (the 2-D toy problems).
//!
//! v(x, t) = W_out·σ(…σ(W_1·[x, e(t)] + c(y))…) with σ = SiLU, e(t) sinusoidal features of 1000·t
//! (the DDPM positional embedding, max period 10 000) and c(y) an optional class embedding.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

use crate::field::VelocityField;
use crate::registry::{ArchConfig, Architecture};

/// Configuration of [`Mlp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Dimension of x (2 for the toy distributions).
    pub data_dim: i64,
    /// Width of every hidden layer.
    pub hidden: i64,
    /// Number of hidden layers (≥ 1).
    pub depth: i64,
    /// Number of sinusoidal time features (even).
    pub time_embed_dim: i64,
    /// Number of classes; 0 for an unconditional field.
    pub label_dim: i64,
    /// Dropout probability after each hidden activation, active in training mode only.
    pub dropout: f64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            data_dim: 2,
            hidden: 256,
            depth: 3,
            time_embed_dim: 32,
            label_dim: 0,
            dropout: 0.0,
        }
    }
}

impl MlpConfig {
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.data_dim < 1 {
            p.push(format!("data_dim must be ≥ 1, got {}", self.data_dim));
        }
        if self.hidden < 1 {
            p.push(format!("hidden must be ≥ 1, got {}", self.hidden));
        }
        if self.depth < 1 {
            p.push(format!("depth must be ≥ 1, got {}", self.depth));
        }
        if self.time_embed_dim < 2 || self.time_embed_dim % 2 != 0 {
            p.push(format!(
                "time_embed_dim must be even and ≥ 2, got {}",
                self.time_embed_dim
            ));
        }
        if self.label_dim < 0 {
            p.push(format!("label_dim must be ≥ 0, got {}", self.label_dim));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            p.push(format!("dropout must lie in [0, 1), got {}", self.dropout));
        }
        p
    }
}

impl Architecture for Mlp {
    type Config = MlpConfig;

    fn problems(cfg: &MlpConfig) -> Vec<String> {
        cfg.problems()
    }

    fn build(cfg: &MlpConfig, p: &nn::Path) -> Box<dyn VelocityField> {
        Box::new(Mlp::new(p, cfg))
    }

    fn data_shape(cfg: &MlpConfig) -> Vec<i64> {
        vec![cfg.data_dim]
    }

    fn label_dim(cfg: &MlpConfig) -> i64 {
        cfg.label_dim
    }

    /// Already CPU-sized.
    fn cpu_sized(cfg: &MlpConfig) -> MlpConfig {
        cfg.clone()
    }

    /// Exact parameter count; one hidden activation per layer and sample.
    fn size_bound(cfg: &MlpConfig) -> crate::SizeBound {
        let f = |v: i64| v.max(0) as f64;
        let (d, h, n) = (f(cfg.data_dim), f(cfg.hidden), f(cfg.depth));
        let first = (d + f(cfg.time_embed_dim) + 1.0) * h;
        let hidden = (n - 1.0).max(0.0) * (h + 1.0) * h;
        crate::SizeBound {
            params: first + hidden + (h + 1.0) * d + f(cfg.label_dim) * h,
            activations_per_sample: n * h,
        }
    }
}

/// The MLP velocity field. Keys: `layers.{i}.weight|bias`, `label_embed.weight`.
#[derive(Debug)]
pub struct Mlp {
    config: ArchConfig,
    cfg: MlpConfig,
    layers: Vec<nn::Linear>,
    label_embed: Option<nn::Embedding>,
}

impl Mlp {
    /// Builds the network under `p` (the config must have been validated).
    pub fn new(p: &nn::Path, cfg: &MlpConfig) -> Self {
        let lp = p / "layers";
        let mut layers = Vec::new();
        let mut fan_in = cfg.data_dim + cfg.time_embed_dim;
        for i in 0..cfg.depth {
            layers.push(nn::linear(&lp / i, fan_in, cfg.hidden, Default::default()));
            fan_in = cfg.hidden;
        }
        layers.push(nn::linear(
            &lp / cfg.depth,
            fan_in,
            cfg.data_dim,
            Default::default(),
        ));
        let label_embed = (cfg.label_dim > 0).then(|| {
            nn::embedding(
                p / "label_embed",
                cfg.label_dim,
                cfg.hidden,
                Default::default(),
            )
        });
        Mlp {
            config: ArchConfig::Mlp(cfg.clone()),
            cfg: cfg.clone(),
            layers,
            label_embed,
        }
    }

    /// Sinusoidal features of 1000·t: `[B]` → [B, time_embed_dim].
    fn time_features(&self, t: &Tensor) -> Tensor {
        let half = self.cfg.time_embed_dim / 2;
        let freqs = (Tensor::arange(half, (Kind::Float, t.device()))
            * (-(10_000f64.ln()) / half as f64))
            .exp();
        let args = (t.to_kind(Kind::Float) * 1000.0).unsqueeze(1) * freqs.unsqueeze(0); // [B, half]
        Tensor::cat(&[args.cos(), args.sin()], 1)
    }
}

impl VelocityField for Mlp {
    fn forward_t(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor {
        let emb = self.time_features(t).to_kind(x.kind());
        let mut h = Tensor::cat(&[x.shallow_clone(), emb], 1);
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h);
            if i == last {
                break;
            }
            if i == 0 {
                if let (Some(e), Some(y)) = (&self.label_embed, labels) {
                    h += e.forward(y);
                }
            }
            h = h.silu();
            if self.cfg.dropout > 0.0 {
                h = h.dropout(self.cfg.dropout, train);
            }
        }
        h
    }

    fn config(&self) -> &ArchConfig {
        &self.config
    }
}
