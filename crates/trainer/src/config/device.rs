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

    /// [`DeviceChoice::device`], refusing a CUDA device libtorch cannot see, with the fix.
    pub fn resolve(self) -> Result<tch::Device, NoSuchCuda> {
        let device = self.device();
        match device {
            tch::Device::Cuda(asked) => {
                check_cuda(asked, tch::Cuda::device_count()).map(|()| device)
            }
            _ => Ok(device),
        }
    }
}

/// A CUDA device that libtorch does not see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSuchCuda {
    /// The index asked for.
    pub asked: usize,
    /// How many CUDA devices libtorch sees.
    pub visible: i64,
}

impl std::fmt::Display for NoSuchCuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.asked;
        match self.visible {
            0 => write!(
                f,
                "device cuda:{n}: libtorch sees no CUDA device on this machine (no GPU visible, \
                 or a libtorch without CUDA); use `--device cpu`, or `device = \"auto\"`, which \
                 takes CUDA only where there is one"
            ),
            v => write!(
                f,
                "device cuda:{n}: libtorch sees {v} CUDA device(s), cuda:0 to cuda:{}; pick one \
                 of them (CUDA_VISIBLE_DEVICES renumbers them from 0)",
                v - 1
            ),
        }
    }
}

impl std::error::Error for NoSuchCuda {}

/// `Ok` when CUDA device `asked` is among the `visible` ones.
fn check_cuda(asked: usize, visible: i64) -> Result<(), NoSuchCuda> {
    if (asked as i64) < visible {
        Ok(())
    } else {
        Err(NoSuchCuda { asked, visible })
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

    #[test]
    fn an_invisible_cuda_device_is_refused_with_the_fix() {
        assert_eq!(check_cuda(0, 1), Ok(()));
        assert_eq!(check_cuda(3, 4), Ok(()));
        let none = check_cuda(0, 0).unwrap_err().to_string();
        assert!(
            none.contains("no CUDA device") && none.contains("--device cpu"),
            "{none}"
        );
        let past = check_cuda(2, 2).unwrap_err().to_string();
        assert!(
            past.contains("sees 2 CUDA device(s), cuda:0 to cuda:1"),
            "{past}"
        );
        assert_eq!(DeviceChoice::Cpu.resolve(), Ok(tch::Device::Cpu));
    }
}
