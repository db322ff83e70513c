//! Importing reference checkpoints (EDM, rfpp, RectifiedFlow / SlimFlow NCSN++) as slimflow models.
//!
//! Sources and what is taken from them by default:
//! - `edm`: an EDM snapshot (`network-snapshot-*.pkl`, a pickle of the whole `EDMPrecond`) → its `ema`
//!   network; a `training-state-*.pt` → `net`. Names `model.<SongUNet path>` match [`EdmVelocity`].
//! - `rfpp`: `flow_model_*_ema.pth` (a flat `EDMPrecondVel` state dict) or `training_state_*.pth` →
//!   `model_state_dict`.
//! - `ncsnpp`: a score_sde-style checkpoint `{model, ema, optimizer, step}` (RectifiedFlow's and
//!   SlimFlow's NCSN++, SlimFlow's ImageNet DhariwalUNet) → the EMA weights. Its `ema` holds
//!   `shadow_params`, an unnamed list in `model.parameters()` order; the names come from the file's
//!   own `model` state dict (buffers such as `sigmas` or `resample_filter` removed, then taken from
//!   `model` as they are).
//! - ADM (`edm-imagenet-64x64-cond-adm.pkl`) loads with `edm` into `edm_velocity_adm` by EDM's names.
//!
//! DataParallel's `module.` prefix is stripped; a bare SongUNet state dict gains the `model.` prefix.
//! Files are read with [`slimflow_torchfile`], which never executes pickled code, or as safetensors.
//! Every missing key, unexpected key and shape mismatch is reported by name; a partial load happens
//! only when asked for.
//!
//! [`EdmVelocity`]: crate::edm_velocity::EdmVelocity

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use slimflow_tensor_io::{LoadReport, TensorFile};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::{ArchConfig, Model};

/// Which reference implementation wrote the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportSource {
    /// NVlabs/edm snapshots and training states.
    Edm,
    /// sangyun884/rfpp checkpoints (EDM-velocity wrapper).
    Rfpp,
    /// RectifiedFlow / SlimFlow (score_sde NCSN++) checkpoints.
    Ncsnpp,
}

impl FromStr for ImportSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "edm" => Ok(ImportSource::Edm),
            "rfpp" => Ok(ImportSource::Rfpp),
            "ncsnpp" => Ok(ImportSource::Ncsnpp),
            other => Err(Error::InvalidConfig(vec![format!(
                "unknown import source `{other}` (known: edm, rfpp, ncsnpp)"
            )])),
        }
    }
}

impl ImportSource {
    /// The preset used when no architecture is given.
    pub fn default_preset(self) -> &'static str {
        match self {
            ImportSource::Edm | ImportSource::Rfpp => "edm-ddpmpp-cifar10",
            ImportSource::Ncsnpp => "rf-ncsnpp-cifar10",
        }
    }

    /// The preset for a file when no architecture is given: EDM's published snapshots by their
    /// names (`edm-imagenet-64x64-cond-adm.pkl` → `edm-adm-imagenet64`, `edm-ffhq-64x64-uncond-ve.pkl`
    /// → `edm-ncsnpp-ffhq64`, …), otherwise [`ImportSource::default_preset`].
    pub fn preset_for_file(self, path: &Path) -> &'static str {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let known: &[(&str, &str)] = &[
            ("imagenet-64x64-cond-adm", "edm-adm-imagenet64"),
            ("ffhq-64x64-uncond-ve", "edm-ncsnpp-ffhq64"),
            ("afhqv2-64x64-uncond-ve", "edm-ncsnpp-afhqv2-64"),
            ("cifar10-32x32-uncond-ve", "edm-ncsnpp-cifar10"),
            ("cifar10-32x32-uncond-vp", "edm-ddpmpp-cifar10"),
        ];
        match self {
            ImportSource::Edm | ImportSource::Rfpp => known
                .iter()
                .find(|(pat, _)| name.contains(pat))
                .map_or(self.default_preset(), |(_, preset)| preset),
            ImportSource::Ncsnpp => self.default_preset(),
        }
    }

    /// Sub-trees tried in order when no key is given (the root is the fallback).
    fn default_keys(self) -> &'static [&'static str] {
        match self {
            ImportSource::Edm => &["ema", "net"],
            ImportSource::Rfpp => &["model_state_dict"],
            ImportSource::Ncsnpp => &["ema", "model"],
        }
    }
}

/// How reference checkpoints map onto an architecture ([`crate::Architecture::IMPORT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportFacts {
    /// Sources whose checkpoints load into it (none: it is not importable).
    pub sources: &'static [ImportSource],
    /// Keys of reference files it has no variable for, skipped when loading (score_sde's `sigmas`).
    pub ignored_keys: &'static [&'static str],
    /// Buffers of a file's `model` state dict, which an EMA's `shadow_params` does not hold.
    pub buffers: &'static [&'static str],
    /// Prefix of its variable names that a bare reference state dict lacks (rfpp's wrapper keeps
    /// the network under `model.`); added to every name when no name has it. Empty: none.
    pub prefix: &'static str,
}

impl ImportFacts {
    /// Not importable.
    pub const NONE: ImportFacts = ImportFacts {
        sources: &[],
        ignored_keys: &[],
        buffers: &[],
        prefix: "",
    };
}

/// What to import and how.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Where the file comes from.
    pub source: ImportSource,
    /// The architecture to load into.
    pub arch: ArchConfig,
    /// Sub-tree of the file (`ema`, `model`, …); `None` picks the source's default.
    pub key: Option<String>,
    /// Load what matches and report the rest instead of refusing.
    pub allow_partial: bool,
}

/// The result of [`import`].
#[derive(Debug)]
pub struct Imported {
    /// The loaded model.
    pub model: Model,
    /// The sub-tree read (empty for the root).
    pub key: String,
    /// Tensors found under it.
    pub tensors_read: usize,
    /// Whether names came from pairing an EMA `shadow_params` list with the model's parameters.
    pub from_shadow_params: bool,
    /// File dtypes that were cast to the model's, e.g. `float16 (12 tensors)`.
    pub cast_from: Vec<String>,
    /// Loaded, missing, unexpected and mismatched keys.
    pub report: LoadReport,
}

/// Tensors under `key` of a PyTorch or safetensors file, as named CPU tensors (names as written).
pub fn read_tensors(path: &Path, key: Option<&str>) -> Result<TensorFile> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        if let Some(k) = key.filter(|k| !k.is_empty()) {
            return Err(Error::InvalidConfig(vec![format!(
                "{}: safetensors files are flat; --key `{k}` does not apply",
                path.display()
            )]));
        }
        return Ok(slimflow_tensor_io::read(path)?);
    }
    let file = slimflow_torchfile::load(path).map_err(|e| torchfile_error(path, e))?;
    let raw = file.state_dict(key).map_err(|e| torchfile_error(path, e))?;
    to_tensor_file(path, raw)
}

fn torchfile_error(path: &Path, e: slimflow_torchfile::Error) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn to_tensor_file(
    path: &Path,
    raw: Vec<(String, slimflow_torchfile::RawTensor)>,
) -> Result<TensorFile> {
    use slimflow_torchfile::DType;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, t) in raw {
        let kind = match t.dtype {
            DType::F32 => Kind::Float,
            DType::F64 => Kind::Double,
            DType::F16 => Kind::Half,
            DType::BF16 => Kind::BFloat16,
            DType::I64 => Kind::Int64,
            DType::I32 => Kind::Int,
            DType::I16 => Kind::Int16,
            DType::I8 => Kind::Int8,
            DType::U8 => Kind::Uint8,
            DType::Bool => Kind::Bool,
        };
        let shape: Vec<i64> = t.shape.iter().map(|&s| s as i64).collect();
        let tensor = Tensor::f_from_data_size(&t.data, &shape, kind)?;
        tensors.push((name, tensor));
    }
    Ok(TensorFile {
        path: path.to_path_buf(),
        tensors,
        metadata: BTreeMap::new(),
    })
}

/// A tensor as a [`slimflow_torchfile::RawTensor`] (dense, little-endian) — e.g. to write a
/// `torch.load`-compatible file with [`slimflow_torchfile::save`].
pub fn raw_tensor(t: &Tensor) -> Result<slimflow_torchfile::RawTensor> {
    use slimflow_torchfile::DType;
    let dtype = match t.kind() {
        Kind::Float => DType::F32,
        Kind::Double => DType::F64,
        Kind::Half => DType::F16,
        Kind::BFloat16 => DType::BF16,
        Kind::Int64 => DType::I64,
        Kind::Int => DType::I32,
        Kind::Int16 => DType::I16,
        Kind::Int8 => DType::I8,
        Kind::Uint8 => DType::U8,
        Kind::Bool => DType::Bool,
        other => {
            return Err(Error::InvalidConfig(vec![format!(
                "no PyTorch storage type for {other:?}"
            )]))
        }
    };
    let t = t.to_device(Device::Cpu).contiguous();
    let mut data = vec![0u8; t.numel() * dtype.size()];
    t.f_copy_data_u8(&mut data, t.numel())?;
    Ok(slimflow_torchfile::RawTensor {
        dtype,
        shape: t.size().iter().map(|&s| s as usize).collect(),
        data,
    })
}

fn strip_module_prefix(names: &mut [(String, Tensor)]) {
    for (n, _) in names.iter_mut() {
        while let Some(rest) = n.strip_prefix("module.") {
            *n = rest.to_string();
        }
    }
}

/// Imports `path` into a fresh model on `device`.
pub fn import(path: &Path, opts: &ImportOptions, device: Device) -> Result<Imported> {
    let facts = opts.arch.import_facts();
    if !facts.sources.contains(&opts.source) {
        return Err(Error::InvalidConfig(vec![format!(
            "--from {:?} checkpoints load into {} architectures, not `{}`",
            opts.source,
            ArchConfig::importable_from(opts.source).join(" or "),
            opts.arch.name()
        )
        .to_lowercase()]));
    }
    let is_pytorch = path.extension().is_none_or(|e| e != "safetensors");
    let key = match (&opts.key, is_pytorch) {
        (Some(k), _) => k.clone(),
        (None, false) => String::new(),
        (None, true) => {
            let file = slimflow_torchfile::load(path).map_err(|e| torchfile_error(path, e))?;
            let top = file.top_level_keys();
            opts.source
                .default_keys()
                .iter()
                .find(|k| top.iter().any(|t| t == *k))
                .map(|k| k.to_string())
                .unwrap_or_default()
        }
    };
    let mut file = read_tensors(
        path,
        Some(&key).filter(|k| !k.is_empty()).map(|k| k.as_str()),
    )?;
    let tensors_read = file.tensors.len();
    let from_shadow_params = !file.tensors.is_empty()
        && file
            .tensors
            .iter()
            .all(|(n, _)| n.starts_with("shadow_params."));
    if from_shadow_params {
        name_shadow_params(path, &key, &mut file, facts.buffers)?;
    }
    strip_module_prefix(&mut file.tensors);
    let prefix = facts.prefix;
    if !prefix.is_empty() && !file.tensors.iter().any(|(n, _)| n.starts_with(prefix)) {
        for (n, _) in file.tensors.iter_mut() {
            *n = format!("{prefix}{n}");
        }
    }
    let mut cast: BTreeMap<String, usize> = BTreeMap::new();
    for (_, t) in &file.tensors {
        if t.kind() != Kind::Float && t.is_floating_point() {
            *cast.entry(format!("{:?}", t.kind())).or_default() += 1;
        }
    }
    let mut model = Model::new(&opts.arch, device)?;
    let report = slimflow_tensor_io::load_matching(
        &mut model.vs,
        &file,
        facts.ignored_keys,
        opts.allow_partial,
    )?;
    Ok(Imported {
        model,
        key,
        tensors_read,
        from_shadow_params,
        cast_from: cast
            .into_iter()
            .map(|(k, n)| format!("{k} ({n} tensors)"))
            .collect(),
        report,
    })
}

/// Pairs an EMA's unnamed `shadow_params` with the parameter names of the file's `model` state dict;
/// the model's `buffers` (not trained, so not in the EMA) are taken from `model` as they are.
fn name_shadow_params(
    path: &Path,
    key: &str,
    file: &mut TensorFile,
    buffers: &[&str],
) -> Result<()> {
    let model = read_tensors(path, Some("model")).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: format!(
            "`{key}` holds unnamed shadow_params; naming them needs the file's `model` state dict: {e}"
        ),
    })?;
    let names: Vec<String> = model
        .tensors
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !buffers.iter().any(|i| n.ends_with(i)))
        .collect();
    if names.len() != file.tensors.len() {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "`{key}` has {} shadow_params but `model` has {} parameters",
                file.tensors.len(),
                names.len()
            ),
        });
    }
    let mut shadow: Vec<(usize, Tensor)> = file
        .tensors
        .drain(..)
        .map(|(n, t)| {
            let i = n["shadow_params.".len()..]
                .parse::<usize>()
                .unwrap_or(usize::MAX);
            (i, t)
        })
        .collect();
    shadow.sort_by_key(|(i, _)| *i);
    for ((_, t), name) in shadow.into_iter().zip(names) {
        let want = model
            .tensors
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m.size())
            .unwrap_or_default();
        if t.size() != want {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "shadow_params do not line up with `model`: `{name}` is {want:?} there, {:?} in `{key}`",
                    t.size()
                ),
            });
        }
        file.tensors.push((name, t));
    }
    for (name, t) in &model.tensors {
        if buffers.iter().any(|b| name.ends_with(b)) {
            file.tensors.push((name.clone(), t.shallow_clone()));
        }
    }
    Ok(())
}
