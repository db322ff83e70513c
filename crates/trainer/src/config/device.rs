//! `device`: where the stages run.

use serde::{Deserialize, Serialize};

/// Where the stages run: `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    /// CUDA device 0 when available, else CPU.
    #[default]
    Auto,
    /// CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("unknown device `{other}` (auto, cpu, cuda, cuda:N)")),
        }
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        match d {
            DeviceChoice::Auto => "auto".into(),
            DeviceChoice::Cpu => "cpu".into(),
            DeviceChoice::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// The libtorch device.
    pub fn device(self) -> tch::Device {
        match self {
            DeviceChoice::Auto => tch::Device::cuda_if_available(),
            DeviceChoice::Cpu => tch::Device::Cpu,
            DeviceChoice::Cuda(n) => tch::Device::Cuda(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{parse, MINIMAL};
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!(
            parse(MINIMAL, &["device=\"cuda:1\""]).unwrap().device,
            DeviceChoice::Cuda(1)
        );
        assert_eq!(
            parse(MINIMAL, &["device=\"cpu\""]).unwrap().device,
            DeviceChoice::Cpu
        );
        let err = parse(MINIMAL, &["device=\"tpu\""]).unwrap_err().to_string();
        assert!(err.contains("unknown device `tpu`"), "{err}");
    }
}
