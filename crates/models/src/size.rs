//! What a network needs in memory, checked before anything is allocated: libtorch aborts, and
//! tch's constructors panic, when an allocation fails.
//!
//! The figures are lower bounds (every parameter once; one feature map per sample at the widest
//! full-resolution layer), so a setting refused here cannot fit whatever the implementation does.
//! They are compared with [`memory_limit`]:
//! - `SLIMFLOW_MEMORY_LIMIT` when set (bytes, or with a `K`, `M`, `G` or `T` suffix: powers of 1024);
//! - on the CPU, the physical memory (`MemTotal` of `/proc/meminfo`);
//! - on CUDA, [`CUDA_MEMORY_CAP`]: tch does not report device memory, so only settings that fit
//!   no accelerator are refused.

use tch::Device;

/// The limit on CUDA devices (1 TiB) unless `SLIMFLOW_MEMORY_LIMIT` is set.
pub const CUDA_MEMORY_CAP: f64 = 1024.0 * 1024.0 * 1024.0 * 1024.0;

/// The limit when the physical memory cannot be read (1 TiB).
const UNKNOWN_MEMORY: f64 = CUDA_MEMORY_CAP;

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
    if let Some(v) = std::env::var("SLIMFLOW_MEMORY_LIMIT")
        .ok()
        .and_then(|v| parse_bytes(&v))
    {
        return v;
    }
    match device {
        Device::Cpu => physical_memory().unwrap_or(UNKNOWN_MEMORY),
        _ => CUDA_MEMORY_CAP,
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn physical_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// `123`, `64G`, `512M`, `1.5T` (powers of 1024; an optional trailing `B` or `iB`).
pub fn parse_bytes(s: &str) -> Option<f64> {
    let s = s.trim();
    let s = s
        .strip_suffix("iB")
        .or_else(|| s.strip_suffix('B'))
        .unwrap_or(s);
    let (num, scale) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let p = match c.to_ascii_uppercase() {
                'K' => 1,
                'M' => 2,
                'G' => 3,
                'T' => 4,
                _ => return None,
            };
            (&s[..i], 1024f64.powi(p))
        }
        _ => (s, 1.0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then_some(v * scale)
}

/// `12.3 GB` (decimal units).
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else if v >= 1000.0 {
        format!("{b:.3e} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `Err("… needs X, more than the limit of Y on DEVICE")` when `bytes` exceeds `limit`.
pub fn check_bytes(what: &str, bytes: f64, limit: f64) -> Result<(), String> {
    if bytes <= limit {
        Ok(())
    } else {
        Err(format!(
            "{what} needs at least {}, more than the memory limit of {} (physical memory on the \
             CPU, {} on CUDA; set SLIMFLOW_MEMORY_LIMIT to change it)",
            human_bytes(bytes),
            human_bytes(limit),
            human_bytes(CUDA_MEMORY_CAP)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_and_print() {
        assert_eq!(parse_bytes("64G"), Some(64.0 * 1024f64.powi(3)));
        assert_eq!(parse_bytes("512MiB"), Some(512.0 * 1024f64.powi(2)));
        assert_eq!(parse_bytes("1000"), Some(1000.0));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes("-1G"), None);
        assert_eq!(human_bytes(160e9), "160.0 GB");
        assert_eq!(human_bytes(12.0), "12 B");
        assert!(check_bytes("x", 2.0, 1.0).unwrap_err().contains("2 B"));
        assert!(check_bytes("x", 1.0, 1.0).is_ok());
    }

    #[test]
    fn the_cpu_limit_is_the_physical_memory() {
        if std::env::var_os("SLIMFLOW_MEMORY_LIMIT").is_none() {
            let m = memory_limit(Device::Cpu);
            assert!(m > 1e8, "{m}");
            assert_eq!(memory_limit(Device::Cuda(0)), CUDA_MEMORY_CAP);
        }
    }

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
