//! What a network needs in memory, checked before anything is allocated: libtorch aborts, and
//! tch's constructors panic, when an allocation fails.
//!
//! The figures are lower bounds (every parameter once; one feature map per sample at the widest
//! full-resolution layer), so a setting refused here cannot fit whatever the implementation does.
//! They are compared with [`memory_limit`], the process's limit from `slimflow-memory`
//! (`SLIMFLOW_MEMORY_LIMIT`, else the physical memory on the CPU and a 1 TiB cap on CUDA).

use tch::Device;

pub use slimflow_memory::{check_bytes, human_bytes, parse_bytes, CUDA_MEMORY_CAP};

/// Lower bounds of a network's memory needs, in scalars (f64: configs may imply counts past u64).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SizeBound {
    /// Parameters.
    pub params: f64,
    /// Activations of one sample in one forward pass.
    pub activations_per_sample: f64,
}

impl SizeBound {
    /// Bytes of the parameters in float32.
    pub fn param_bytes(&self) -> f64 {
        4.0 * self.params
    }

    /// Bytes of the activations of a batch of `batch` samples in float32.
    pub fn activation_bytes(&self, batch: f64) -> f64 {
        4.0 * self.activations_per_sample * batch
    }
}

/// A U-Net's bound: at each level of `levels` channel counts (from `channels` · `mult`), `blocks`
/// residual blocks of two 3×3 convolutions; one full-resolution feature map per sample.
pub(crate) fn unet_bound(resolution: i64, channels: i64, mult: &[i64], blocks: i64) -> SizeBound {
    let c = channels.max(0) as f64;
    let params = mult
        .iter()
        .map(|&m| 2.0 * 9.0 * (c * m.max(0) as f64).powi(2) * blocks.max(0) as f64)
        .sum();
    let first = mult.first().copied().unwrap_or(1).max(0) as f64;
    SizeBound {
        params,
        activations_per_sample: c * first * (resolution.max(0) as f64).powi(2),
    }
}

/// The memory a process may use on `device`, in bytes (see the module documentation).
pub fn memory_limit(device: Device) -> f64 {
    slimflow_memory::limit_bytes(!matches!(device, Device::Cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_too_large_to_hold_are_refused_before_building() {
        use crate::{ArchConfig, MlpConfig, Model};
        let huge = ArchConfig::Mlp(MlpConfig {
            hidden: 200_000,
            ..MlpConfig::default()
        });
        let e = Model::new(&huge, Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains("parameters") && e.contains("memory limit"),
            "{e}"
        );
        // A checkpoint whose metadata names such a network is refused by name, not built.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let small = Model::new(&ArchConfig::preset("mlp-toy-small").unwrap(), Device::Cpu).unwrap();
        let vars = slimflow_tensor_io::named_variables(&small.vs);
        crate::checkpoint::write_model(&path, &huge, &vars, &Default::default()).unwrap();
        let e = Model::load(&path, Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains("m.safetensors") && e.contains("memory limit"),
            "{e}"
        );
        // Every preset fits the CUDA cap.
        for p in crate::PRESETS {
            let b = (p.config)().size_bound();
            assert!(b.param_bytes() < 4e9, "{}: {b:?}", p.name);
        }
    }
}
