//! The velocity-field interface and the owning [`Model`].

use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::checkpoint;
use crate::error::{Error, Result};
use crate::registry::ArchConfig;

/// A network v_θ(x, t[, labels]) in slimflow's time convention.
///
/// Implementations take t in [0, 1] (t = 0 noise) and turn it into their own noise-label input (an
/// MLP's sinusoidal features of 1000·t, SlimFlow's NCSN++ 999·t, …); callers never pre-scale t.
pub trait VelocityField: std::fmt::Debug + Send {
    /// x: [B, …] (the architecture's data shape), t: `[B]`, labels: `[B]` class indices (i64) when the
    /// architecture is class-conditional; `train` enables dropout.
    fn forward_t(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor;

    /// The architecture config this network was built from.
    fn config(&self) -> &ArchConfig;

    /// Where the network may be evaluated (see [`slimflow_sampling::Domain`]): the closed [0, 1]
    /// unless its time parameterisation breaks down at an end, as the EDM wrapper's does.
    fn domain(&self) -> slimflow_sampling::Domain {
        slimflow_sampling::Domain::UNIT
    }

    /// EDM's denoiser D(x_σ, σ) (x in σ-space, σ: `[B]`, labels as in [`VelocityField::forward_t`]),
    /// evaluation mode, for networks that are EDM-parameterised; `None` for the others, which EDM's
    /// sampler then drives through their velocity ([`slimflow_sampling::edm::denoise_with_velocity`]).
    fn denoise(&self, _x: &Tensor, _sigma: &Tensor, _labels: Option<&Tensor>) -> Option<Tensor> {
        None
    }

    /// The noise levels EDM's sampler may use on this network (it clips its σ range to them):
    /// by default those of the domain ([`slimflow_sampling::edm::sigma_range_of`]); a network with
    /// its own [`VelocityField::denoise`] states its denoiser's range.
    fn sigma_range(&self) -> (f64, f64) {
        slimflow_sampling::edm::sigma_range_of(&self.domain())
    }
}

/// A network together with its parameters; what stages build, train, save and load.
#[derive(Debug)]
pub struct Model {
    /// Parameter store; variable names are the checkpoint keys.
    pub vs: nn::VarStore,
    net: Box<dyn VelocityField>,
}

impl Model {
    /// Validates `config` and builds a freshly initialised network on `device`.
    pub fn new(config: &ArchConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let bound = config.size_bound();
        let what = format!("`{}` with {:.3e} parameters", config.name(), bound.params);
        crate::size::check_bytes(
            &what,
            bound.param_bytes(),
            crate::size::memory_limit(device),
        )
        .map_err(|e| Error::InvalidConfig(vec![e]))?;
        let vs = nn::VarStore::new(device);
        let net = config.build(&vs.root());
        Ok(Model { vs, net })
    }

    /// Loads a self-describing checkpoint written by [`Model::save`] (strictly: see
    /// [`slimflow_tensor_io::load_strict`]).
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let file = slimflow_tensor_io::read(path)?;
        let arch = file
            .metadata
            .get(checkpoint::ARCH_KEY)
            .ok_or_else(|| Error::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "no `{}` metadata: not a slimflow model checkpoint",
                    checkpoint::ARCH_KEY
                ),
            })?;
        let config: ArchConfig = serde_json::from_str(arch).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("architecture metadata: {e}"),
        })?;
        let mut model = Model::new(&config, device).map_err(|e| match e {
            Error::InvalidConfig(p) => Error::Corrupt {
                path: path.to_path_buf(),
                reason: format!("architecture metadata: {}", p.join("; ")),
            },
            other => other,
        })?;
        slimflow_tensor_io::load_strict(&mut model.vs, &file, &[])?;
        Ok(model)
    }

    /// Writes the parameters with the architecture config (and `extra` metadata) atomically.
    pub fn save(&self, path: &Path, extra: &BTreeMap<String, String>) -> Result<()> {
        checkpoint::write_model(
            path,
            self.config(),
            &slimflow_tensor_io::named_variables(&self.vs),
            extra,
        )
    }

    /// Stores every 4-D parameter (the convolution kernels) channels-last (NHWC strides, the same
    /// NCHW shape and values). libtorch's convolutions then run their channels-last kernels and
    /// hand channels-last activations on, which is what tensor cores want on CUDA; outputs equal
    /// the default layout's up to float summation order. Checkpoints are written in the default
    /// layout either way. Returns how many parameters were converted.
    pub fn to_channels_last(&mut self) -> usize {
        let mut n = 0;
        tch::no_grad(|| {
            for (_, mut v) in self.vs.variables() {
                if v.dim() == 4 {
                    // an NHWC-contiguous copy viewed back as NCHW: channels-last strides
                    let nhwc = v.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                    v.set_data(&nhwc);
                    n += 1;
                }
            }
        });
        n
    }

    /// The network.
    pub fn net(&self) -> &dyn VelocityField {
        self.net.as_ref()
    }

    /// The architecture config.
    pub fn config(&self) -> &ArchConfig {
        self.net.config()
    }

    /// Number of trainable scalar parameters.
    pub fn num_params(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    /// Checks a user-supplied batch against the architecture before a forward pass.
    pub fn check_input(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<()> {
        self.config().check_input(x, t, labels)
    }

    /// Evaluation-mode view usable by solvers (optionally with fixed class labels).
    pub fn eval_field<'a>(&'a self, labels: Option<&'a Tensor>) -> EvalField<'a> {
        EvalField {
            net: self.net(),
            labels,
            kind: self.kind(),
        }
    }

    /// The weights' element type.
    pub fn kind(&self) -> Kind {
        self.vs
            .variables()
            .values()
            .next()
            .map(|t| t.kind())
            .unwrap_or(Kind::Float)
    }

    /// Casts the weights to `precision` for inference (pair generation, sampling, evaluation):
    /// bfloat16 halves memory traffic on GPUs with bf16 units. [`EvalField`] then casts its inputs
    /// to match and returns velocities in the caller's dtype. Training keeps float32 weights.
    pub fn set_precision(&mut self, precision: Precision) {
        self.vs.set_kind(precision.kind());
    }
}

/// What objectives see of a model: its network in training or evaluation mode.
impl slimflow_sampling::Network for Model {
    fn forward_t(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor {
        self.net.forward_t(x, t, labels, train)
    }

    fn label_dim(&self) -> i64 {
        self.config().label_dim()
    }
}

/// Element type of a network's weights and activations at inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// float32 (default).
    #[default]
    F32,
    /// bfloat16: float32's range with an 8-bit mantissa.
    Bf16,
    /// float16.
    F16,
}

impl Precision {
    /// The tch element type.
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::F16 => Kind::Half,
        }
    }
}

/// A network in evaluation mode, seen by solvers as a plain [`slimflow_sampling::Velocity`].
#[derive(Debug)]
pub struct EvalField<'a> {
    net: &'a dyn VelocityField,
    labels: Option<&'a Tensor>,
    kind: Kind,
}

impl slimflow_sampling::Velocity for EvalField<'_> {
    fn domain(&self) -> slimflow_sampling::Domain {
        self.net.domain()
    }

    /// Always itself: [`slimflow_sampling::Denoiser`] for an `EvalField` uses the network's own
    /// denoiser when it has one and the conversion through our time otherwise.
    fn denoiser(&self) -> Option<&dyn slimflow_sampling::Denoiser> {
        Some(self)
    }

    fn velocity(&self, x: &Tensor, t: &Tensor) -> Tensor {
        if x.kind() == self.kind {
            return self.net.forward_t(x, t, self.labels, false);
        }
        self.net
            .forward_t(
                &x.to_kind(self.kind),
                &t.to_kind(self.kind),
                self.labels,
                false,
            )
            .to_kind(x.kind())
    }
}

impl slimflow_sampling::Denoiser for EvalField<'_> {
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> Tensor {
        match self.net.denoise(x, sigma, self.labels) {
            Some(d) => d,
            None => slimflow_sampling::edm::denoise_with_velocity(self, x, sigma),
        }
    }

    fn sigma_range(&self) -> (f64, f64) {
        self.net.sigma_range()
    }
}
