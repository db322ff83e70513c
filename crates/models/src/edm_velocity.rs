//! EDM denoiser exposed as a velocity field: 2-rectified flow++'s `EDMPrecondVel` (rfpp
//! `network_edm.py`), which lets a 2-RF start from a pretrained EDM teacher. The wrapped network is
//! EDM's SongUNet (CIFAR-10, FFHQ, AFHQv2) or DhariwalUNet (ImageNet 64, ADM).
//!
//! With rfpp's time t_r = 1 − t (t_r = 0 data) and σ = t_r / (1 − t_r): evaluate
//! D = c_skip·x̃ + c_out·F(c_in·x̃, c_noise) on x̃ = x / (1 − t_r) with EDM's coefficients (Table 1,
//! σ_data = 0.5: c_skip = σ_d²/(σ² + σ_d²), c_out = σ·σ_d/sqrt(σ² + σ_d²), c_in = 1/sqrt(σ_d² + σ²),
//! c_noise = ln(σ)/4) and zero augmentation labels; rfpp's velocity is (x − D)/t_r and ours, in our
//! time direction, its negation (D − x)/t_r. The operations follow the reference's order, which
//! matters in float32 near t_r = 0. Parameters sit under `model.` like rfpp's state dict.
//!
//! The wrapper is undefined at both ends of our time: at t = 1 (σ = 0) it divides by t_r = 0, at
//! t = 0 (σ = ∞) it takes ln ∞. Its [`slimflow_sampling::Domain`] is therefore open at both ends,
//! reached from EDM's noise range: t = 1/(1 + σ_min) at the data end, 1/(1 + σ_max) at the noise
//! end ([`SIGMA_MIN`], [`SIGMA_MAX`]). The same network is also EDM's denoiser
//! ([`EdmVelocity::denoise`], rfpp's `EDMPrecond`), which EDM's sampler evaluates directly.

use slimflow_sampling::{Bound, Domain};
use slimflow_schedules::convert::t_from_edm_sigma;
use tch::{nn, Kind, Tensor};

use crate::dhariwal_unet::{DhariwalUnet, DhariwalUnetConfig};
use crate::song_unet::{SongUnet, SongUnetConfig};

const SIGMA_DATA: f64 = 0.5;

/// EDM's smallest trained noise level (its sampler's default σ_min).
pub const SIGMA_MIN: f64 = 0.002;
/// EDM's largest noise level (its sampler's default σ_max).
pub const SIGMA_MAX: f64 = 80.0;

/// EDM's preconditioned denoiser (rfpp `EDMPrecond`) with fixed class labels, for
/// [`slimflow_sampling::edm::sample`].
#[derive(Debug, Clone, Copy)]
pub struct EdmDenoiser<'a> {
    net: &'a EdmVelocity,
    class_labels: Option<&'a Tensor>,
}

impl slimflow_sampling::Denoiser for EdmDenoiser<'_> {
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> Tensor {
        self.net.denoise(x, sigma, self.class_labels)
    }
}

/// The network inside the wrapper.
#[derive(Debug)]
enum Inner {
    Song(Box<SongUnet>),
    Adm(Box<DhariwalUnet>),
}

impl Inner {
    fn kind(&self) -> Kind {
        match self {
            Inner::Song(n) => n.kind(),
            Inner::Adm(n) => n.kind(),
        }
    }

    fn label_dim(&self) -> i64 {
        match self {
            Inner::Song(n) => n.config().label_dim,
            Inner::Adm(n) => n.config().label_dim,
        }
    }

    fn augment_dim(&self) -> i64 {
        match self {
            Inner::Song(n) => n.config().augment_dim,
            Inner::Adm(n) => n.config().augment_dim,
        }
    }

    fn forward_t(
        &self,
        x: &Tensor,
        noise_labels: &Tensor,
        class_labels: Option<&Tensor>,
        augment_labels: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        match self {
            Inner::Song(n) => n.forward_t(x, noise_labels, class_labels, augment_labels, train),
            Inner::Adm(n) => n.forward_t(x, noise_labels, class_labels, augment_labels, train),
        }
    }
}

/// rfpp's `EDMPrecondVel(SongUNet)` or `EDMPrecondVel(DhariwalUNet)`.
#[derive(Debug)]
pub struct EdmVelocity {
    unet: Inner,
    arch: crate::ArchConfig,
}

impl EdmVelocity {
    /// Builds the wrapped SongUNet under `p / "model"`.
    pub fn new(p: &nn::Path, cfg: &SongUnetConfig) -> Self {
        EdmVelocity {
            unet: Inner::Song(Box::new(SongUnet::new(&(p / "model"), cfg))),
            arch: crate::ArchConfig::EdmVelocity(cfg.clone()),
        }
    }

    /// Builds the wrapped DhariwalUNet (ADM) under `p / "model"`.
    pub fn adm(p: &nn::Path, cfg: &DhariwalUnetConfig) -> Self {
        EdmVelocity {
            unet: Inner::Adm(Box::new(DhariwalUnet::new(&(p / "model"), cfg))),
            arch: crate::ArchConfig::EdmVelocityAdm(cfg.clone()),
        }
    }

    /// Where the wrapper is defined in our time: (0, 1), reached from t = 1/(1 + σ_max) and
    /// t = 1/(1 + σ_min).
    pub fn time_domain() -> Domain {
        Domain::new(
            Bound::Open {
                at: 0.0,
                near: t_from_edm_sigma(SIGMA_MAX),
            },
            Bound::Open {
                at: 1.0,
                near: t_from_edm_sigma(SIGMA_MIN),
            },
        )
        .expect("EDM's noise range lies inside (0, 1)")
    }

    /// EDM's denoiser D(x, σ) = c_skip·x + c_out·F(c_in·x, ln(σ)/4) on the same network, as rfpp's
    /// `EDMPrecond` computes it (evaluation mode): x [B, C, R, R] in σ-space (any float kind; cast
    /// to float32 like EDM, so a float64 sampler state is fine), σ `[B]` > 0; the preconditioning in
    /// float32, the network in its weights' dtype; returns float32. No augmentation labels
    /// (EDMPrecond passes none); class_labels: [B, label_dim] one-hot, zeros when absent on a
    /// conditional network (as EDMPrecond).
    pub fn denoise(&self, x: &Tensor, sigma: &Tensor, class_labels: Option<&Tensor>) -> Tensor {
        let x = x.to_kind(Kind::Float);
        let sigma = sigma.to_kind(Kind::Float).reshape([-1, 1, 1, 1]);
        let label_dim = self.unet.label_dim();
        let labels = (label_dim > 0).then(|| match class_labels {
            Some(y) => y.to_kind(Kind::Float).reshape([-1, label_dim]),
            None => Tensor::zeros([x.size()[0], label_dim], (Kind::Float, x.device())),
        });
        let sd2 = SIGMA_DATA * SIGMA_DATA;
        let c_skip = sd2 / (sigma.square() + sd2);
        let c_out = &sigma * SIGMA_DATA / (sigma.square() + sd2).sqrt();
        let c_in: Tensor = 1.0 / (sigma.square() + sd2).sqrt();
        let c_noise = sigma.log() / 4.0;
        let f = self
            .unet
            .forward_t(
                &(&c_in * &x).to_kind(self.unet.kind()),
                &c_noise.flatten(0, -1),
                labels.as_ref(),
                None,
                false,
            )
            .to_kind(Kind::Float);
        c_skip * x + c_out * f
    }

    /// This network as EDM's denoiser with fixed `class_labels` ([B, label_dim] one-hot), for
    /// [`slimflow_sampling::edm::sample`].
    pub fn denoiser<'a>(&'a self, class_labels: Option<&'a Tensor>) -> EdmDenoiser<'a> {
        EdmDenoiser {
            net: self,
            class_labels,
        }
    }

    /// rfpp's velocity v_r = (x − D)/t_r at rfpp time t_r (`[B]`, t_r = 0 data). x: [B, C, R, R];
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
        let aug_dim = self.unet.augment_dim();
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

/// EDM and rfpp checkpoints: the wrapped network under `model.`, as a bare SongUNet or DhariwalUNet
/// state dict lacks.
const EDM_IMPORT: crate::import::ImportFacts = crate::import::ImportFacts {
    sources: &[
        crate::import::ImportSource::Edm,
        crate::import::ImportSource::Rfpp,
    ],
    ignored_keys: &[],
    buffers: &[],
    prefix: "model.",
};

impl crate::Architecture for EdmVelocity {
    type Config = SongUnetConfig;

    const IMPORT: crate::import::ImportFacts = EDM_IMPORT;

    fn problems(cfg: &SongUnetConfig) -> Vec<String> {
        cfg.problems()
    }

    fn build(cfg: &SongUnetConfig, p: &nn::Path) -> Box<dyn crate::VelocityField> {
        Box::new(EdmVelocity::new(p, cfg))
    }

    fn data_shape(cfg: &SongUnetConfig) -> Vec<i64> {
        vec![cfg.in_channels, cfg.img_resolution, cfg.img_resolution]
    }

    fn label_dim(cfg: &SongUnetConfig) -> i64 {
        cfg.label_dim
    }

    /// 16×16 with 16 base channels, attention at 8×8.
    fn cpu_sized(cfg: &SongUnetConfig) -> SongUnetConfig {
        SongUnetConfig {
            img_resolution: 16,
            model_channels: 16,
            attn_resolutions: vec![8],
            ..cfg.clone()
        }
    }

    fn size_bound(cfg: &SongUnetConfig) -> crate::SizeBound {
        crate::size::unet_bound(
            cfg.img_resolution,
            cfg.model_channels,
            &cfg.channel_mult,
            cfg.num_blocks,
        )
    }
}

/// The `edm_velocity_adm` architecture: an [`EdmVelocity`] around EDM's DhariwalUNet
/// ([`EdmVelocity::adm`]). A marker type, since the network is an [`EdmVelocity`] either way.
#[derive(Debug, Clone, Copy)]
pub struct EdmVelocityAdm;

/// The wrapped network's checks, shapes and test size; EDM's import facts.
impl crate::Architecture for EdmVelocityAdm {
    type Config = DhariwalUnetConfig;

    const IMPORT: crate::import::ImportFacts = EDM_IMPORT;

    fn problems(cfg: &DhariwalUnetConfig) -> Vec<String> {
        <DhariwalUnet as crate::Architecture>::problems(cfg)
    }

    fn build(cfg: &DhariwalUnetConfig, p: &nn::Path) -> Box<dyn crate::VelocityField> {
        Box::new(EdmVelocity::adm(p, cfg))
    }

    fn data_shape(cfg: &DhariwalUnetConfig) -> Vec<i64> {
        <DhariwalUnet as crate::Architecture>::data_shape(cfg)
    }

    fn label_dim(cfg: &DhariwalUnetConfig) -> i64 {
        <DhariwalUnet as crate::Architecture>::label_dim(cfg)
    }

    fn cpu_sized(cfg: &DhariwalUnetConfig) -> DhariwalUnetConfig {
        <DhariwalUnet as crate::Architecture>::cpu_sized(cfg)
    }

    fn size_bound(cfg: &DhariwalUnetConfig) -> crate::SizeBound {
        <DhariwalUnet as crate::Architecture>::size_bound(cfg)
    }
}

/// As a velocity field: our time t, class labels as indices `[B]` (one-hot encoded here).
impl crate::VelocityField for EdmVelocity {
    fn forward_t(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor {
        let label_dim = self.unet.label_dim();
        let one_hot = labels
            .filter(|_| label_dim > 0)
            .map(|y| y.one_hot(label_dim).to_kind(Kind::Float));
        self.forward(x, t, one_hot.as_ref(), train)
    }

    fn domain(&self) -> Domain {
        EdmVelocity::time_domain()
    }

    fn denoise(&self, x: &Tensor, sigma: &Tensor, labels: Option<&Tensor>) -> Option<Tensor> {
        let label_dim = self.unet.label_dim();
        let one_hot = labels
            .filter(|_| label_dim > 0)
            .map(|y| y.one_hot(label_dim).to_kind(Kind::Float));
        Some(EdmVelocity::denoise(self, x, sigma, one_hot.as_ref()))
    }

    /// EDMPrecond's: every σ > 0.
    fn sigma_range(&self) -> (f64, f64) {
        (0.0, f64::INFINITY)
    }

    fn config(&self) -> &crate::ArchConfig {
        &self.arch
    }
}
