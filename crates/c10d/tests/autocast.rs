//! The autocast dtype setting round-trips without a GPU.

use slimflow_c10d::autocast::{self, DeviceType};
use tch::Kind;

#[test]
fn cuda_autocast_dtype_round_trips() {
    autocast::set_dtype(DeviceType::Cuda, Kind::BFloat16).expect("set bf16");
    assert_eq!(
        autocast::dtype(DeviceType::Cuda).expect("get"),
        Kind::BFloat16
    );
    autocast::set_dtype(DeviceType::Cuda, Kind::Half).expect("set f16");
    assert_eq!(autocast::dtype(DeviceType::Cuda).expect("get"), Kind::Half);
    autocast::set_dtype(DeviceType::Cpu, Kind::BFloat16).expect("set cpu");
    assert_eq!(
        autocast::dtype(DeviceType::Cpu).expect("get"),
        Kind::BFloat16
    );
    assert!(autocast::set_dtype(DeviceType::Cuda, Kind::Int64).is_err());
    autocast::set_enabled(DeviceType::Cuda, true).expect("enable");
    assert!(autocast::is_enabled(DeviceType::Cuda).expect("enabled"));
    autocast::set_enabled(DeviceType::Cuda, false).expect("disable");
    assert!(!autocast::is_enabled(DeviceType::Cuda).expect("disabled"));
}
