//! EDM denoiser exposed as a velocity field: 2-rectified flow++'s `EDMPrecondVel` (rfpp
//! `network_edm.py`), which lets a 2-RF start from a pretrained EDM teacher.
//!
//! With rfpp's time t_r = 1 − t (t_r = 0 data) and σ = t_r / (1 − t_r): evaluate
//! D = c_skip·x̃ + c_out·F(c_in·x̃, c_noise) on x̃ = x / (1 − t_r) with EDM's coefficients (Table 1,
//! σ_data = 0.5: c_skip = σ_d²/(σ² + σ_d²), c_out = σ·σ_d/sqrt(σ² + σ_d²), c_in = 1/sqrt(σ_d² + σ²),
//! c_noise = ln(σ)/4) and zero augmentation labels; rfpp's velocity is (x − D)/t_r and ours, in our
//! time direction, its negation (D − x)/t_r. The operations follow the reference's order, which
//! matters in float32 near t_r = 0. Parameters sit under `model.` like rfpp's state dict.

use tch::{nn, Kind, Tensor};

use crate::song_unet::{SongUnet, SongUnetConfig};

const SIGMA_DATA: f64 = 0.5;

/// rfpp's `EDMPrecondVel(SongUNet)`.
#[derive(Debug)]
pub struct EdmVelocity {
    unet: SongUnet,
    arch: crate::ArchConfig,
}

impl EdmVelocity {
    /// Builds the wrapped network under `p / "model"`.
    pub fn new(p: &nn::Path, cfg: &SongUnetConfig) -> Self {
        EdmVelocity {
            unet: SongUnet::new(&(p / "model"), cfg),
            arch: crate::ArchConfig::EdmVelocity(cfg.clone()),
        }
    }

    /// The inner network.
    pub fn unet(&self) -> &SongUnet {
        &self.unet
    }

    /// rfpp's velocity v_r = (x − D)/t_r at rfpp time t_r ([B], t_r = 0 data). x: [B, C, R, R];
    /// class_labels: [B, label_dim] one-hot when conditional.
    pub fn forward_rfpp(
        &self,
        x: &Tensor,
        t_r: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let x_in = x.to_kind(Kind::Float);
        let t = t_r.to_kind(Kind::Float).reshape([-1, 1, 1, 1]);
        let xs: Tensor = &x_in / (1.0 - &t);
        let sigma: Tensor = &t / (1.0 - &t);
        let sd2 = SIGMA_DATA * SIGMA_DATA;
        let c_skip = sd2 / (sigma.square() + sd2);
        let c_out = &sigma * SIGMA_DATA / (sigma.square() + sd2).sqrt();
        let c_in = 1.0 / (sigma.square() + sd2).sqrt();
        let c_noise = sigma.log() / 4.0;
        let b = x.size()[0];
        let aug_dim = self.unet.config().augment_dim;
        let augment = (aug_dim > 0).then(|| Tensor::zeros([b, aug_dim], (Kind::Float, x.device())));
        // Preconditioning in float32, the network in its weights' dtype (as EDM does with fp16).
        let f = self
            .unet
            .forward_t(
                &(&c_in * &xs).to_kind(self.unet.kind()),
                &c_noise.flatten(0, -1),
                class_labels,
                augment.as_ref(),
                train,
            )
            .to_kind(Kind::Float);
        let d = c_skip * &xs + c_out * f;
        (x_in - d) / t
    }

    /// Our velocity at our time t = 1 − t_r: the negated rfpp velocity.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let t_r = 1.0 - t.to_kind(Kind::Float);
        -self.forward_rfpp(x, &t_r, class_labels, train)
    }
}

/// As a velocity field: our time t, class labels as indices [B] (one-hot encoded here).
impl crate::VelocityField for EdmVelocity {
    fn forward_t(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor {
        let label_dim = self.unet.config().label_dim;
        let one_hot = labels
            .filter(|_| label_dim > 0)
            .map(|y| y.one_hot(label_dim).to_kind(Kind::Float));
        self.forward(x, t, one_hot.as_ref(), train)
    }

    fn config(&self) -> &crate::ArchConfig {
        &self.arch
    }
}
