//! Model checkpoints: safetensors files (written by [`slimflow_tensor_io`]) whose metadata carries
//! the architecture config, so that [`crate::Model::load`] needs nothing but the file.

use std::collections::BTreeMap;
use std::path::Path;

use tch::Tensor;

use crate::error::Result;

/// Metadata key holding the architecture config (JSON) of a model checkpoint.
pub const ARCH_KEY: &str = "slimflow.arch";

/// Writes a model checkpoint: `tensors` under their variable names plus the architecture config
/// (JSON under [`ARCH_KEY`]) and `extra` metadata, so that `Model::load` needs nothing else.
pub fn write_model(
    path: &Path,
    arch: &crate::ArchConfig,
    tensors: &[(String, Tensor)],
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let mut metadata = extra.clone();
    metadata.insert(
        ARCH_KEY.to_string(),
        serde_json::to_string(arch).expect("architecture configs serialise"),
    );
    Ok(slimflow_tensor_io::write(path, tensors, &metadata)?)
}
