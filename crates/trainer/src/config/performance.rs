//! `[performance]`: how the stages compute, not what. Results equal the defaults' up to float
//! summation order and, in training with dropout, the dropout masks (drawn in memory order, so a
//! different draw under channels-last). These settings are in no stage's config hash: a run may
//! resume with them changed.

use serde::{Deserialize, Serialize};

use super::DeviceChoice;

/// Layout, autotuning and gradient-reduction choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerformanceConfig {
    /// Convolution kernels (and so activations) channels-last: NHWC strides, which tensor cores
    /// want on CUDA. On the CPU libtorch's kernels are often slower so; `slimflow bench --set
    /// performance.channels_last=true` measures it.
    #[serde(default)]
    pub channels_last: bool,
    /// cuDNN autotuning (`torch.backends.cudnn.benchmark`): each new convolution shape is timed
    /// once and the fastest algorithm kept. CUDA only.
    #[serde(default)]
    pub cudnn_benchmark: bool,
    /// How the ranks of a data-parallel job average the gradients (see [`GradReduce`]).
    #[serde(default, skip_serializing_if = "GradReduce::is_default")]
    pub grad_reduce: GradReduce,
}

/// How the ranks of a data-parallel job average the gradients (one process: nothing to average).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradReduce {
    /// c10d's DDP `Reducer`: bucket by bucket during the backward pass, overlapping it. Every
    /// parameter must receive a gradient in every step (as DDP without `find_unused_parameters`).
    #[default]
    Overlap,
    /// One bucketed all-reduce after the backward pass: no overlap, and parameters without a
    /// gradient are simply left out.
    AfterBackward,
}

impl GradReduce {
    fn is_default(&self) -> bool {
        *self == GradReduce::default()
    }
}

impl PerformanceConfig {
    /// Settings the configured device cannot honour.
    pub(super) fn problems(&self, device: DeviceChoice) -> Vec<String> {
        let mut p = Vec::new();
        if self.cudnn_benchmark && device == DeviceChoice::Cpu {
            p.push(
                "performance.cudnn_benchmark: cuDNN autotuning needs a CUDA device, and `device` \
                 is \"cpu\"; remove the key or run on CUDA"
                    .to_string(),
            );
        }
        p
    }

    /// Applies the process-wide settings for a run on `device` (a resolved `device = "auto"`
    /// included): cuDNN autotuning, refused on the CPU rather than ignored.
    pub fn apply_globals(&self, device: tch::Device) -> Result<(), String> {
        if self.cudnn_benchmark {
            if !device.is_cuda() {
                return Err(format!(
                    "performance.cudnn_benchmark = true needs a CUDA device, but this run is on \
                     {} (no GPU visible to `device = \"auto\"`?); remove the key or run on \
                     CUDA",
                    format!("{device:?}").to_lowercase()
                ));
            }
            tch::Cuda::cudnn_set_benchmark(true);
        }
        Ok(())
    }

    /// Applies the per-model settings (channels-last kernels) to a model the stages run.
    pub fn prepare(&self, model: &mut slimflow_models::Model) {
        if self.channels_last {
            model.to_channels_last();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cudnn_autotuning_is_refused_on_the_cpu_not_ignored() {
        let on = PerformanceConfig {
            cudnn_benchmark: true,
            ..PerformanceConfig::default()
        };
        assert!(on.problems(DeviceChoice::Cpu)[0].contains("performance.cudnn_benchmark"));
        assert!(on.problems(DeviceChoice::Auto).is_empty());
        let e = on.apply_globals(tch::Device::Cpu).unwrap_err();
        assert!(e.contains("needs a CUDA device"), "{e}");
        assert!(PerformanceConfig::default()
            .apply_globals(tch::Device::Cpu)
            .is_ok());
        let parsed: PerformanceConfig = toml::from_str("channels_last = true").unwrap();
        assert!(parsed.channels_last && !parsed.cudnn_benchmark);
        assert!(toml::from_str::<PerformanceConfig>("channel_last = true").is_err());
    }
}
